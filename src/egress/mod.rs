//! Egress: the local addresses mail leaves from. A `[[source]]` is one address to bind (and the
//! EHLO name to give from it); a `[[pool]]` is a weighted set of sources. Each message's pool is,
//! first match wins: the injection field `pool`, its tenant's `[tenant.NAME] pool`, its route's
//! `[[route]] pool`, `default_pool`; without any, mail leaves from the system's default address
//! as it always did. Within a pool, each (message, destination) group takes the next source by
//! smooth weighted round-robin among the sources allowed to send now, so shares follow the
//! weights exactly over any run of picks, not just on average.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use compact_str::CompactString;
use serde::Deserialize;

pub mod site;
pub mod warmup;

/// `[[source]]`: one local address to send from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// Local IPv4 or IPv6 address to bind; absent: the system chooses (only `ehlo` differs).
    pub address: Option<IpAddr>,
    /// The name given in EHLO from this source (its PTR name); absent: `hostname`.
    pub ehlo: Option<String>,
    /// Its `[warmup.NAME]`: a new address sends a growing number of messages per site per day.
    pub warmup: Option<String>,
}

/// `[[pool]]`: sources chosen by weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub sources: Vec<PoolMember>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMember {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Longest source or pool name: they are metric labels and log fields.
const MAX_NAME: usize = 64;

/// A source, resolved.
#[derive(Debug, PartialEq, Eq)]
pub struct Source {
    pub name: CompactString,
    pub address: Option<IpAddr>,
    pub ehlo: Option<String>,
}

/// A pool: its members (index into the sources, weight) and the round-robin state.
#[derive(Debug)]
struct Pool {
    members: Vec<(usize, i64)>,
    /// Smooth weighted round-robin: each member's current weight.
    current: Mutex<Vec<i64>>,
}

/// A configuration mistake: the key it is at and what is wrong.
pub type Invalid = (String, String);

/// Sources and pools, and which pool each tenant and the default use.
#[derive(Debug, Default)]
pub struct Egress {
    sources: Vec<Arc<Source>>,
    pools: HashMap<CompactString, Pool>,
    tenants: HashMap<CompactString, CompactString>,
    default_pool: Option<CompactString>,
    /// The warm-up of each warming source, by source name.
    warmups: HashMap<String, warmup::WarmupConfig>,
}

impl Egress {
    /// Checks and builds the sources and pools; `tenants` are (tenant, pool) pairs from
    /// `[tenant.NAME] pool`, `routes` the `[[route]] pool` names by route index.
    pub fn new<'a>(
        sources: &[SourceConfig],
        pools: &[PoolConfig],
        warmups: &std::collections::BTreeMap<String, warmup::WarmupConfig>,
        default_pool: Option<&str>,
        tenants: impl IntoIterator<Item = (&'a str, &'a str)>,
        routes: impl IntoIterator<Item = (usize, &'a str)>,
    ) -> Result<Egress, Invalid> {
        let mut out = Egress::default();
        for (i, s) in sources.iter().enumerate() {
            let key = |k: &str| format!("source[{i}].{k}");
            check_name(&s.name).map_err(|e| (key("name"), e))?;
            if out.sources.iter().any(|x| x.name == s.name) {
                return Err((key("name"), format!("{:?} is defined twice", s.name)));
            }
            if let Some(a) = s.address
                && (a.is_unspecified() || a.is_multicast())
            {
                return Err((key("address"), format!("{a} is not a local unicast address")));
            }
            if let Some(e) = &s.ehlo
                && !crate::domain::is_hostname(e)
            {
                return Err((key("ehlo"), format!("{e:?} is not a host name")));
            }
            if let Some(w) = &s.warmup {
                let Some(plan) = warmups.get(w) else {
                    return Err((key("warmup"), format!("no [warmup.{w}] is defined")));
                };
                if plan.schedule.is_empty() || plan.schedule.len() > warmup::MAX_DAYS {
                    let why =
                        format!("1 to {} entries (messages per site per day)", warmup::MAX_DAYS);
                    return Err((format!("warmup.{w}.schedule"), why));
                }
                out.warmups.insert(s.name.clone(), plan.clone());
            }
            out.sources.push(Arc::new(Source {
                name: s.name.as_str().into(),
                address: s.address,
                ehlo: s.ehlo.clone(),
            }));
        }
        for (i, p) in pools.iter().enumerate() {
            let key = |k: &str| format!("pool[{i}].{k}");
            check_name(&p.name).map_err(|e| (key("name"), e))?;
            if out.pools.contains_key(p.name.as_str()) {
                return Err((key("name"), format!("{:?} is defined twice", p.name)));
            }
            if p.sources.is_empty() {
                return Err((key("sources"), "at least one source is needed".into()));
            }
            let mut members = Vec::new();
            for (j, m) in p.sources.iter().enumerate() {
                let key = |k: &str| format!("pool[{i}].sources[{j}].{k}");
                let Some(at) = out.sources.iter().position(|s| s.name == m.name) else {
                    return Err((key("name"), format!("no [[source]] is named {:?}", m.name)));
                };
                if m.weight == 0 || m.weight > 1_000_000 {
                    return Err((key("weight"), "must be 1 to 1000000".into()));
                }
                if members.iter().any(|(s, _)| *s == at) {
                    return Err((key("name"), format!("{:?} is in the pool twice", m.name)));
                }
                members.push((at, i64::from(m.weight)));
            }
            let current = Mutex::new(vec![0; members.len()]);
            out.pools.insert(p.name.as_str().into(), Pool { members, current });
        }
        let known = |key: String, name: &str| match out.pools.contains_key(name) {
            true => Ok(()),
            false => Err((key, format!("no [[pool]] is named {name:?}"))),
        };
        if let Some(d) = default_pool {
            known("default_pool".into(), d)?;
        }
        for (i, p) in routes {
            known(format!("route[{i}].pool"), p)?;
        }
        let mut tenant_pools = HashMap::new();
        for (t, p) in tenants {
            known(format!("tenant.{t}.pool"), p)?;
            tenant_pools.insert(t.into(), p.into());
        }
        out.tenants = tenant_pools;
        out.default_pool = default_pool.map(Into::into);
        Ok(out)
    }

    /// Whether any pool is configured (without one, mail leaves as it always did).
    pub fn is_enabled(&self) -> bool {
        !self.pools.is_empty()
    }

    pub fn has_pool(&self, name: &str) -> bool {
        self.pools.contains_key(name)
    }

    /// The warm-up of each warming source.
    pub fn warmups(&self) -> &HashMap<String, warmup::WarmupConfig> {
        &self.warmups
    }

    pub fn sources(&self) -> &[Arc<Source>] {
        &self.sources
    }

    pub fn source(&self, name: &str) -> Option<&Arc<Source>> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The pool of a message: the one it was injected with, its tenant's, its route's (asked
    /// only when needed), else the default. A pool named in the spool that the configuration
    /// no longer has falls through to the next rule.
    pub fn pool_for<'a>(
        &'a self,
        injected: Option<&'a str>,
        tenant: Option<&str>,
        route: impl FnOnce() -> Option<&'a str>,
    ) -> Option<&'a str> {
        injected
            .filter(|p| self.has_pool(p))
            .or_else(|| tenant.and_then(|t| self.tenants.get(t)).map(CompactString::as_str))
            .or_else(|| route().filter(|p| self.has_pool(p)))
            .or(self.default_pool.as_deref())
    }

    /// The next source of `pool` by weight among those `allowed` (e.g. not paused for this
    /// destination); if none is allowed, among all of them (the caller defers the work).
    pub fn choose(&self, pool: &str, allowed: impl Fn(&Source) -> bool) -> Option<Arc<Source>> {
        let p = self.pools.get(pool)?;
        let ok: Vec<bool> = p.members.iter().map(|&(s, _)| allowed(&self.sources[s])).collect();
        let any = ok.iter().any(|&b| b);
        let mut current = p.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (k, &(_, weight)) in p.members.iter().enumerate() {
            if any && !ok[k] {
                continue;
            }
            current[k] += weight;
            total += weight;
            if best.is_none_or(|b| current[k] > current[b]) {
                best = Some(k);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(self.sources[p.members[b].0].clone())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(format!("{name:?}: 1 to {MAX_NAME} letters, digits, '-', '_' or '.'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, address: &str) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            address: Some(address.parse().unwrap()),
            ehlo: None,
            warmup: None,
        }
    }

    fn pool(name: &str, members: &[(&str, u32)]) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            sources: members
                .iter()
                .map(|(n, w)| PoolMember { name: n.to_string(), weight: *w })
                .collect(),
        }
    }

    fn egress() -> Egress {
        let sources = [source("a", "127.0.0.2"), source("b", "127.0.0.3"), source("c", "::1")];
        let pools = [pool("bulk", &[("a", 1), ("b", 3)]), pool("tx", &[("c", 1)])];
        Egress::new(
            &sources,
            &pools,
            &Default::default(),
            Some("bulk"),
            [("acme", "tx")],
            [(0, "tx")],
        )
        .unwrap()
    }

    #[test]
    fn smooth_weighted_round_robin_follows_the_weights_in_every_window() {
        let e = egress();
        let picks: Vec<CompactString> =
            (0..400).map(|_| e.choose("bulk", |_| true).unwrap().name.clone()).collect();
        // Every window of 4 consecutive picks holds exactly one `a` and three `b`.
        for w in picks.chunks(4) {
            assert_eq!(w.iter().filter(|n| *n == "a").count(), 1, "{w:?}");
        }
        // And `a` is never picked twice in a row (smooth, not 1 then 3 in a block).
        assert!(picks.windows(2).all(|w| !(w[0] == "a" && w[1] == "a")));
    }

    #[test]
    fn sources_not_allowed_are_skipped_unless_none_is() {
        let e = egress();
        for _ in 0..10 {
            assert_eq!(e.choose("bulk", |s| s.name != "b").unwrap().name, "a");
        }
        // Nothing allowed: still a pick by weight (the caller defers it).
        let n: Vec<_> = (0..8).map(|_| e.choose("bulk", |_| false).unwrap().name.clone()).collect();
        assert_eq!(n.iter().filter(|n| *n == "b").count(), 6, "{n:?}");
        assert!(e.choose("nope", |_| true).is_none());
    }

    #[test]
    fn pool_precedence_injection_then_tenant_then_route_then_default() {
        let e = egress();
        let route = || Some("tx");
        assert_eq!(e.pool_for(Some("bulk"), Some("acme"), route), Some("bulk"));
        assert_eq!(e.pool_for(None, Some("acme"), || None), Some("tx"));
        assert_eq!(e.pool_for(None, Some("other"), route), Some("tx"));
        assert_eq!(e.pool_for(None, None, || None), Some("bulk"));
        // A pool the configuration no longer has falls through.
        assert_eq!(e.pool_for(Some("gone"), None, || None), Some("bulk"));
        assert_eq!(Egress::default().pool_for(None, None, || None), None);
    }

    #[test]
    fn mistakes_name_their_key() {
        let s = [source("a", "127.0.0.2")];
        type Case<'a> = (&'a [SourceConfig], &'a [PoolConfig], Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (&[source("a", "0.0.0.0")], &[], None, "source[0].address"),
            (&[source("a", "127.0.0.2"), source("a", "127.0.0.3")], &[], None, "source[1].name"),
            (&[source("a b", "127.0.0.2")], &[], None, "source[0].name"),
            (&s, &[pool("p", &[("x", 1)])], None, "pool[0].sources[0].name"),
            (&s, &[pool("p", &[("a", 0)])], None, "pool[0].sources[0].weight"),
            (&s, &[pool("p", &[("a", 1), ("a", 2)])], None, "pool[0].sources[1].name"),
            (&s, &[pool("p", &[])], None, "pool[0].sources"),
            (&s, &[pool("p", &[("a", 1)]), pool("p", &[("a", 1)])], None, "pool[1].name"),
            (&s, &[pool("p", &[("a", 1)])], Some("q"), "default_pool"),
        ];
        for (sources, pools, default, want) in cases {
            let err =
                Egress::new(sources, pools, &Default::default(), *default, [], []).unwrap_err();
            assert_eq!(err.0, *want, "{err:?}");
        }
        let p = [pool("p", &[("a", 1)])];
        let err = Egress::new(&s, &p, &Default::default(), None, [("acme", "q")], []).unwrap_err();
        assert_eq!(err.0, "tenant.acme.pool");
        let err = Egress::new(&s, &p, &Default::default(), None, [], [(3, "q")]).unwrap_err();
        assert_eq!(err.0, "route[3].pool");
        let mut bad = source("a", "127.0.0.2");
        bad.ehlo = Some("not a name".into());
        let none = Default::default();
        assert_eq!(Egress::new(&[bad], &[], &none, None, [], []).unwrap_err().0, "source[0].ehlo");
        let mut warm = source("a", "127.0.0.2");
        warm.warmup = Some("slow".into());
        let err = Egress::new(&[warm.clone()], &[], &none, None, [], []).unwrap_err();
        assert_eq!(err.0, "source[0].warmup");
        let empty = std::collections::BTreeMap::from([(
            "slow".to_string(),
            warmup::WarmupConfig { schedule: vec![], overflow: warmup::Overflow::Pool },
        )]);
        let err = Egress::new(&[warm], &[], &empty, None, [], []).unwrap_err();
        assert_eq!(err.0, "warmup.slow.schedule");
    }
}
