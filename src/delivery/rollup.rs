//! MX rollup for the dispatcher: which destination an MX domain's mail joins (its site, from its
//! MX hosts: `crate::egress::site`), cached per domain, and the limits a named site shares
//! between its destinations ([`Share`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dns::{MxAnswer, Resolver};
use crate::egress::site::{Sites, rollup_key};
use crate::rate::Gcra;

/// How long a domain's placement is trusted (MX records change rarely; a changed set is picked
/// up within this).
const PLACEMENT_TTL: Duration = Duration::from_secs(300);
/// A failed lookup is retried sooner.
const FAILED_TTL: Duration = Duration::from_secs(30);
/// Domains remembered at most (a queue for a million domains must not grow this without bound).
const MAX_PLACEMENTS: usize = 100_000;

pub use crate::queue::plan::Placement;

/// Placements by domain, with their expiry.
#[derive(Default)]
pub struct Placements {
    map: Mutex<HashMap<String, (Placement, Instant)>>,
}

impl Placements {
    /// The domain's placement, if known and fresh.
    pub fn get(&self, domain: &str, now: Instant) -> Option<Placement> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(domain).filter(|(_, until)| *until > now).map(|(p, _)| p.clone())
    }

    pub fn insert(&self, domain: String, p: Placement, now: Instant) {
        let ttl = if p.key.is_some() { PLACEMENT_TTL } else { FAILED_TTL };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_PLACEMENTS {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= MAX_PLACEMENTS {
                map.clear();
            }
        }
        map.insert(domain, (p, now + ttl));
    }

    /// Looks the domains up (at most 64 at once) and remembers where each goes.
    pub async fn resolve(&self, dns: &Arc<dyn Resolver>, sites: &Arc<Sites>, domains: Vec<String>) {
        let mut set = tokio::task::JoinSet::new();
        let mut todo = domains.into_iter();
        loop {
            while set.len() < 64 {
                let Some(d) = todo.next() else { break };
                let (dns, sites) = (dns.clone(), sites.clone());
                set.spawn(async move {
                    let p = place(dns.as_ref(), &sites, &d).await;
                    (d, p)
                });
            }
            let Some(done) = set.join_next().await else { return };
            if let Ok((d, p)) = done {
                self.insert(d, p, Instant::now());
            }
        }
    }
}

/// Where `domain` goes, from its MX hosts.
pub async fn place(dns: &dyn Resolver, sites: &Sites, domain: &str) -> Placement {
    let hosts = match dns.mx(domain).await {
        Ok(MxAnswer::Hosts(h)) if !h.is_empty() => h,
        Ok(MxAnswer::Implicit) => vec![domain.to_string()],
        _ => return Placement { key: None, site: None },
    };
    Placement { key: Some(rollup_key(&hosts)), site: sites.named(&hosts).map(|s| s.name.clone()) }
}

/// A limit a named site shares between its destinations: connections open, and the pace of
/// messages and of new connections.
#[derive(Debug)]
pub struct Share {
    connections: usize,
    open: Mutex<usize>,
    rate: Option<Mutex<Gcra>>,
    connect_rate: Option<Mutex<Gcra>>,
}

impl Share {
    pub fn new(connections: Option<usize>, rate: Option<f64>, connect_rate: Option<f64>) -> Self {
        Share {
            connections: connections.unwrap_or(usize::MAX),
            open: Mutex::new(0),
            rate: rate.map(|r| Mutex::new(Gcra::new(r))),
            connect_rate: connect_rate.map(|r| Mutex::new(Gcra::new(r))),
        }
    }

    /// The messages per second the share allows, if it paces them.
    pub fn rate(&self) -> Option<f64> {
        self.rate.as_ref().map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).rate())
    }

    /// Takes a connection slot from every share, or none (and false) if one is full.
    pub fn take_all(shares: &[Arc<Share>]) -> bool {
        for (i, s) in shares.iter().enumerate() {
            let mut open = s.open.lock().unwrap_or_else(|e| e.into_inner());
            if *open >= s.connections {
                drop(open);
                Self::put_all(&shares[..i]);
                return false;
            }
            *open += 1;
        }
        true
    }

    pub fn put_all(shares: &[Arc<Share>]) {
        for s in shares {
            let mut open = s.open.lock().unwrap_or_else(|e| e.into_inner());
            *open = open.saturating_sub(1);
        }
    }

    /// How long the next message must wait for every share's rate (each is charged).
    pub fn message_wait(shares: &[Arc<Share>], now: Instant) -> Duration {
        Self::wait(shares.iter().filter_map(|s| s.rate.as_ref()), now)
    }

    /// How long a new connection must wait for every share's connect rate.
    pub fn connect_wait(shares: &[Arc<Share>], now: Instant) -> Duration {
        Self::wait(shares.iter().filter_map(|s| s.connect_rate.as_ref()), now)
    }

    fn wait<'a>(gcras: impl Iterator<Item = &'a Mutex<Gcra>>, now: Instant) -> Duration {
        gcras
            .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).reserve(now))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::MemoryResolver;

    #[test]
    fn domains_of_one_mx_set_share_a_key_and_providers_a_site() {
        let mut d = MemoryResolver::default();
        let set = |h: &[&str]| MxAnswer::Hosts(h.iter().map(|s| s.to_string()).collect());
        d.mx.insert("a.example".into(), set(&["mx1.host.example", "mx2.host.example"]));
        d.mx.insert("b.example".into(), set(&["MX2.host.example.", "mx1.host.example"]));
        d.mx.insert("g.example".into(), set(&["aspmx.l.google.com", "alt1.aspmx.l.google.com"]));
        d.mx.insert("n.example".into(), MxAnswer::NullMx);
        d.servfail.push("flaky.example".into());
        let sites = Sites::new(&[], true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let p = |dom: &str| rt.block_on(place(&d, &sites, dom));
        assert_eq!(p("a.example"), p("b.example"));
        assert_eq!(p("a.example").key.as_deref(), Some("mx1.host.example,mx2.host.example"));
        assert_eq!(p("a.example").site, None);
        assert_eq!(p("g.example").site.as_deref(), Some("google"));
        for unknown in ["n.example", "flaky.example", "nowhere.example"] {
            assert_eq!(p(unknown), Placement { key: None, site: None }, "{unknown}");
        }
    }

    #[test]
    fn shares_give_all_slots_or_none() {
        let a = Arc::new(Share::new(Some(1), None, None));
        let b = Arc::new(Share::new(Some(2), None, None));
        let both = [a.clone(), b.clone()];
        assert!(Share::take_all(&both));
        assert!(!Share::take_all(&both), "a is full");
        assert!(Share::take_all(std::slice::from_ref(&b)), "b was not charged by the refused take");
        assert!(!Share::take_all(std::slice::from_ref(&b)));
        Share::put_all(&both);
        assert!(Share::take_all(&both));
    }

    #[test]
    fn placements_expire_and_stay_bounded() {
        let p = Placements::default();
        let now = Instant::now();
        let some = Placement { key: Some("k".into()), site: None };
        p.insert("a.example".into(), some.clone(), now);
        assert_eq!(p.get("a.example", now), Some(some));
        assert_eq!(p.get("a.example", now + PLACEMENT_TTL), None);
        p.insert("f.example".into(), Placement { key: None, site: None }, now);
        assert_eq!(p.get("f.example", now + FAILED_TTL), None, "failures are retried sooner");
        for i in 0..MAX_PLACEMENTS + 10 {
            p.insert(format!("d{i}.example"), Placement { key: None, site: None }, now);
        }
        assert!(p.map.lock().unwrap().len() <= MAX_PLACEMENTS);
    }
}
