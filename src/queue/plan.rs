//! Where a leased message's due recipients go: grouped by next hop (route, MX host set or
//! domain, smart host, local), tenant lane and egress source, or postponed to a later day (a
//! warming source's cap). Sans-IO: time comes in as Unix milliseconds, and what the dispatcher
//! knows (routes, MX placements, back-off pauses) through [`Lookups`], so the choice is
//! unit-tested on simulated time.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use compact_str::CompactString;

use crate::egress::Egress;
use crate::egress::warmup::{Overflow, Warmup, next_day_ms};
use crate::spool::{Envelope, RecipientState};

/// Where mail for a recipient domain goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// `host:port` of a relay.
    SmartHost(String),
    /// MX delivery to this recipient domain (normalized).
    Mx(String),
    /// The local mailboxes (`[local] domains` with `[local] mailboxes`).
    Local,
    /// MX delivery to the domains that share one MX host set: its rollup key
    /// (`crate::egress::site::rollup_key`).
    Rollup(String),
}

/// Where a group of recipients goes, in which lane and from which source: mail of a tenant
/// that has shaping rules of its own gets its own connections and rate to the destination, and
/// each egress source has its own connections and limits to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hop {
    pub via: Via,
    /// The tenant, when `[[shaping.rule]] tenants` names it; None: the shared lane.
    pub lane: Option<CompactString>,
    /// The `[[source]]` it leaves from; None: the system's default address.
    pub source: Option<CompactString>,
}

impl Hop {
    /// The destination's name in logs: the domain, MX host set, or the smart host's `host:port`.
    pub fn name(&self) -> &str {
        match &self.via {
            Via::SmartHost(a) | Via::Mx(a) | Via::Rollup(a) => a,
            Via::Local => "local",
        }
    }

    /// The destination the delivery log names: the smart host, `local`, or None for MX
    /// delivery (each recipient's domain).
    pub fn logged_name(&self) -> Option<&str> {
        match &self.via {
            Via::SmartHost(a) => Some(a),
            Via::Local => Some("local"),
            Via::Mx(_) | Via::Rollup(_) => None,
        }
    }
}

/// Where a domain's MX mail is queued (`crate::delivery::rollup` looks it up).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The rollup key of its MX host set; None: per domain (no MX hosts known: the lookup
    /// failed, null MX, no MX; the connection attempt reports it).
    pub key: Option<String>,
    /// The named site its MX hosts belong to.
    pub site: Option<String>,
}

/// The recipients of one message for one hop, and what the hop's destination is made from if
/// it does not exist yet.
#[derive(Debug, PartialEq)]
pub struct Group {
    pub rcpts: Vec<u32>,
    /// A recipient domain of the group (MX lookups and shaping rules of a rolled-up
    /// destination use the domain that created it: all its domains share the MX hosts).
    pub domain: String,
    /// The named site (`[[site]]` or the provider table).
    pub site: Option<String>,
}

/// Recipients of a message that wait without an attempt (a warming source's cap for the day).
#[derive(Debug, PartialEq)]
pub struct Postponed {
    pub rcpts: Vec<u32>,
    /// Unix milliseconds of their next attempt.
    pub until: u64,
    pub reason: String,
}

/// Recipients of a message bounced without an attempt: an automation rule bounces its tenant's
/// mail for the site (`bounce_tenant`), with the provider's reply.
#[derive(Debug, PartialEq)]
pub struct Bounced {
    pub rcpts: Vec<u32>,
    pub reply: String,
}

/// The site a group's shaping is keyed by (with its source): its named site, else the MX host
/// set, the domain, the smart host, or `local`.
pub fn site_key<'a>(via: &'a Via, site: Option<&'a str>) -> &'a str {
    site.unwrap_or(match via {
        Via::SmartHost(a) | Via::Mx(a) | Via::Rollup(a) => a,
        Via::Local => "local",
    })
}

/// What the plan needs to know of the dispatcher's world.
pub trait Lookups {
    /// Where mail for `domain` goes by `[[route]]` and the local domains (MX in normal form).
    fn via(&self, domain: &str) -> Via;
    /// Its MX placement, when its mail is rolled up and the placement is known.
    fn placement(&self, domain: &str) -> Option<Placement>;
    /// The pool of the route for `domain`, if it names one.
    fn route_pool(&self, domain: &str) -> Option<&str>;
    /// Whether connections to this hop are in a back-off pause.
    fn paused(&self, hop: &Hop) -> bool;
    /// Until when (Unix ms) and why an automation rule suspends `source` for `site`.
    fn suspended(&self, source: Option<&str>, site: &str) -> Option<(u64, String)>;
    /// The reply `tenant`'s mail for `site` is bounced with, while a rule says so.
    fn bounced(&self, tenant: &str, site: &str) -> Option<String>;
}

/// The message's plan.
#[derive(Debug, Default)]
pub struct Plan {
    pub groups: BTreeMap<Hop, Group>,
    pub postponed: Vec<Postponed>,
    pub bounced: Vec<Bounced>,
}

/// The choices that depend on configuration: pools and sources, warm-up, tenant lanes.
pub struct Planner {
    pub egress: Arc<Egress>,
    pub warmup: Option<Arc<Warmup>>,
    /// Tenants with `[[shaping.rule]] tenants` lanes of their own.
    pub lanes: HashSet<String>,
}

impl Planner {
    /// The message's recipients that are due at `now_ms`, grouped by where (in which lane, from
    /// which source) they go; a group whose source has no room today is postponed.
    pub fn plan(&self, env: &Envelope, now_ms: u64, at: &impl Lookups) -> Plan {
        let lane = env.tenant().filter(|t| self.lanes.contains(*t)).map(CompactString::from);
        let mut groups: BTreeMap<(Via, Option<&str>), Group> = BTreeMap::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.state != RecipientState::Queued || r.next_attempt > now_ms {
                continue;
            }
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            let (via, site) = match at.via(domain) {
                Via::Mx(d) => match at.placement(&d) {
                    Some(Placement { key: Some(key), site }) => (Via::Rollup(key), site),
                    _ => (Via::Mx(d), None),
                },
                via => (via, None),
            };
            let pool = match via {
                Via::Local => None,
                _ if !self.egress.is_enabled() => None,
                _ => self.egress.pool_for(env.pool(), env.tenant(), || at.route_pool(domain)),
            };
            groups
                .entry((via, pool))
                .or_insert_with(|| Group {
                    rcpts: Vec::new(),
                    domain: crate::domain::normalize(domain),
                    site,
                })
                .rcpts
                .push(i as u32);
        }
        let mut plan = Plan::default();
        for ((via, pool), group) in groups {
            let shaped = site_key(&via, group.site.as_deref());
            if let Some(reply) = env.tenant().and_then(|t| at.bounced(t, shaped)) {
                plan.bounced.push(Bounced { rcpts: group.rcpts, reply });
                continue;
            }
            let source = match pool {
                None => None,
                Some(p) => {
                    let site = group.site.as_deref().unwrap_or(match &via {
                        Via::Rollup(key) => key,
                        _ => &group.domain,
                    });
                    match self.choose_source(p, &via, &lane, (site, shaped), now_ms, at) {
                        Ok(s) => s,
                        Err((until, reason)) => {
                            plan.postponed.push(Postponed { rcpts: group.rcpts, until, reason });
                            continue;
                        }
                    }
                }
            };
            // A suspended source × site: the mail waits for the suspension's end, unattempted.
            if let Some((until, reason)) = at.suspended(source.as_deref(), shaped) {
                plan.postponed.push(Postponed { rcpts: group.rcpts, until, reason });
                continue;
            }
            plan.groups.insert(Hop { via, lane: lane.clone(), source }, group);
        }
        plan
    }

    /// The next source of `pool` for a group going to `via`, by weight among the sources whose
    /// connections to it are not in a back-off pause or suspended by a rule. A warming source whose cap for the site
    /// is reached (`overflow = "pool"`) is skipped too; when the pick has no room today, the
    /// group waits for the next day (Err: until when, and why).
    fn choose_source(
        &self,
        pool: &str,
        via: &Via,
        lane: &Option<CompactString>,
        (site, shaped): (&str, &str),
        now_ms: u64,
        at: &impl Lookups,
    ) -> Result<Option<CompactString>, (u64, String)> {
        let warmup = self.warmup.as_deref();
        let allowed = |s: &crate::egress::Source| {
            let hop = Hop { via: via.clone(), lane: lane.clone(), source: Some(s.name.clone()) };
            let full = warmup.is_some_and(|w| {
                w.overflow(&s.name) == Some(Overflow::Pool) && !w.has_room(&s.name, site, now_ms)
            });
            !full && !at.paused(&hop) && at.suspended(Some(&s.name), shaped).is_none()
        };
        let Some(source) = self.egress.choose(pool, allowed) else { return Ok(None) };
        if let Some(w) = warmup {
            if !w.has_room(&source.name, site, now_ms) {
                crate::metrics::WARMUP_POSTPONED.with_label_values(&[&source.name]).inc();
                let cap = w.cap(&source.name, now_ms).unwrap_or(0);
                let why = format!(
                    "4.7.0 warm-up: source {} has sent its {cap} messages to {site} today",
                    source.name
                );
                return Err((next_day_ms(now_ms), why));
            }
            w.count(&source.name, site, now_ms);
        }
        Ok(Some(source.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::warmup::WarmupConfig;
    use crate::egress::{PoolConfig, PoolMember, SourceConfig};
    use crate::spool::{QueueId, Recipient, Tags};
    use std::collections::HashMap;

    const DAY: u64 = 86_400_000;
    const T0: u64 = 20_000 * DAY + 3_600_000;

    /// The dispatcher's world in a table: `*.smart` by smart host, `*.local` local, the rest
    /// MX; domains under `google` placed in the google site, under `shared` rolled up.
    #[derive(Default)]
    struct World {
        paused: HashSet<Hop>,
        /// (source, site) suspended until; (tenant, site) bounced.
        suspended: HashMap<(Option<String>, String), u64>,
        bounced: HashSet<(String, String)>,
    }

    impl Lookups for World {
        fn via(&self, domain: &str) -> Via {
            let d = crate::domain::normalize(domain);
            if d.ends_with(".smart") {
                Via::SmartHost("relay.test:25".into())
            } else if d.ends_with(".local") {
                Via::Local
            } else {
                Via::Mx(d)
            }
        }
        fn placement(&self, domain: &str) -> Option<Placement> {
            if domain.ends_with(".google") {
                Some(Placement {
                    key: Some("aspmx.l.google.com".into()),
                    site: Some("google".into()),
                })
            } else if domain.ends_with(".shared") {
                Some(Placement { key: Some("mx1.shared,mx2.shared".into()), site: None })
            } else {
                None
            }
        }
        fn route_pool(&self, domain: &str) -> Option<&str> {
            domain.ends_with(".smart").then_some("relay")
        }
        fn paused(&self, hop: &Hop) -> bool {
            self.paused.contains(hop)
        }
        fn suspended(&self, source: Option<&str>, site: &str) -> Option<(u64, String)> {
            let until = self.suspended.get(&(source.map(Into::into), site.to_string()))?;
            Some((*until, format!("4.7.0 suspended for {site}")))
        }
        fn bounced(&self, tenant: &str, site: &str) -> Option<String> {
            self.bounced
                .contains(&(tenant.to_string(), site.to_string()))
                .then(|| "421 4.7.0 [TS03] deferred".to_string())
        }
    }

    fn envelope(rcpts: &[(&str, u64)], tenant: Option<&str>) -> Envelope {
        let recipients = rcpts
            .iter()
            .map(|(a, next)| Recipient {
                address: (*a).into(),
                orcpt: None,
                notify: None,
                state: RecipientState::Queued,
                attempts: 0,
                next_attempt: *next,
                last_reply: None,
                delay_notified: false,
            })
            .collect();
        Envelope {
            id: QueueId(1),
            received_at: T0,
            sender: "s@example.com".into(),
            recipients,
            message_id: None,
            size: 1,
            helo: "h".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            body_type: None,
            smtputf8: false,
            ret: None,
            envid: None,
            tags: tenant.map(|t| Box::new(Tags { tenant: Some(t.into()), ..Tags::default() })),
        }
    }

    fn planner(warm: Option<Overflow>) -> Planner {
        let source = |n: &str, warmup: Option<&str>| SourceConfig {
            name: n.into(),
            address: None,
            ehlo: None,
            warmup: warmup.map(Into::into),
        };
        let pool = |n: &str, members: &[&str]| PoolConfig {
            name: n.into(),
            sources: members
                .iter()
                .map(|m| PoolMember { name: m.to_string(), weight: 1 })
                .collect(),
        };
        let sources = [source("new", warm.map(|_| "w")), source("old", None), source("r", None)];
        let plans = std::collections::BTreeMap::from([(
            "w".to_string(),
            WarmupConfig { schedule: vec![1], overflow: warm.unwrap_or_default() },
        )]);
        let pools = [pool("bulk", &["new", "old"]), pool("relay", &["r"])];
        let egress =
            Egress::new(&sources, &pools, &plans, Some("bulk"), [], [(0, "relay")]).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "sluice-plan-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let warmup = warm.map(|_| {
            let plans = HashMap::from([("new".to_string(), plans["w"].clone())]);
            // Counters are only saved by `save`, which these tests never call.
            Arc::new(Warmup::open(&dir.join("w.json"), plans, T0))
        });
        Planner { egress: Arc::new(egress), warmup, lanes: HashSet::from(["vip".to_string()]) }
    }

    fn hops(p: &Plan) -> Vec<(String, Option<String>, Vec<u32>)> {
        p.groups
            .iter()
            .map(|(h, g)| {
                (h.name().to_string(), h.source.as_deref().map(Into::into), g.rcpts.clone())
            })
            .collect()
    }

    /// Only recipients due at the simulated time are planned; later ones come when it is.
    #[test]
    fn only_recipients_due_now_are_planned() {
        let p = planner(None);
        let env = envelope(&[("a@x.shared", T0), ("b@y.shared", T0 + 60_000)], None);
        let now = hops(&p.plan(&env, T0, &World::default()));
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].2, [0]);
        let later = p.plan(&env, T0 + 60_000, &World::default());
        assert_eq!(
            later.groups.values().map(|g| g.rcpts.clone()).collect::<Vec<_>>(),
            [vec![0, 1]]
        );
    }

    /// Domains on one MX host set share a hop; a named site's domain carries the site; a route
    /// goes by its smart host and its pool; local mail takes no source.
    #[test]
    fn groups_follow_rollup_sites_routes_and_pools() {
        let p = planner(None);
        let env = envelope(
            &[
                ("a@x.shared", T0),
                ("b@y.shared", T0),
                ("c@g.google", T0),
                ("d@q.smart", T0),
                ("e@m.local", T0),
                ("f@plain.test", T0),
            ],
            None,
        );
        let plan = p.plan(&env, T0, &World::default());
        let by: HashMap<String, (Option<String>, Vec<u32>)> =
            hops(&plan).into_iter().map(|(n, s, r)| (n, (s, r))).collect();
        assert_eq!(by["mx1.shared,mx2.shared"].1, [0, 1]);
        assert_eq!(by["aspmx.l.google.com"].1, [2]);
        assert_eq!(by["relay.test:25"], (Some("r".into()), vec![3]), "the route's pool");
        assert_eq!(by["local"], (None, vec![4]));
        assert_eq!(by["plain.test"].1, [5], "no placement: per domain");
        let google = plan.groups.iter().find(|(h, _)| h.name() == "aspmx.l.google.com").unwrap();
        assert_eq!(google.1.site.as_deref(), Some("google"));
        // A tenant with a lane of its own.
        let vip = p.plan(&envelope(&[("a@x.shared", T0)], Some("vip")), T0, &World::default());
        assert_eq!(vip.groups.keys().next().unwrap().lane.as_deref(), Some("vip"));
    }

    /// A source whose connections to the hop are paused is skipped while another has room.
    #[test]
    fn a_paused_source_is_skipped() {
        let p = planner(None);
        let mut world = World::default();
        let via = Via::Rollup("mx1.shared,mx2.shared".into());
        world.paused.insert(Hop { via, lane: None, source: Some("new".into()) });
        for _ in 0..4 {
            let plan = p.plan(&envelope(&[("a@x.shared", T0)], None), T0, &world);
            assert_eq!(plan.groups.keys().next().unwrap().source.as_deref(), Some("old"));
        }
    }

    /// Warm-up on simulated days: with `overflow = "wait"` the warming source's share past its
    /// cap (1 per site per day) waits until the next UTC midnight; the next day it sends again.
    #[test]
    fn warm_up_caps_postpone_to_the_next_day_and_lift_then() {
        let p = planner(Some(Overflow::Wait));
        let world = World::default();
        let mut sources = Vec::new();
        let mut postponed = Vec::new();
        for _ in 0..4 {
            let plan = p.plan(&envelope(&[("a@x.shared", T0)], None), T0, &world);
            sources.extend(plan.groups.keys().map(|h| h.source.clone().unwrap()));
            postponed.extend(plan.postponed);
        }
        assert_eq!(sources.iter().filter(|s| *s == "new").count(), 1, "{sources:?}");
        assert_eq!(postponed.len(), 1, "new's second turn waits");
        assert_eq!(postponed[0].until, 20_001 * DAY);
        assert!(postponed[0].reason.contains("warm-up: source new"), "{}", postponed[0].reason);
        // Day 2 is past the one-day schedule: no cap.
        let next = 20_001 * DAY;
        let day2: Vec<_> = (0..4)
            .map(|_| p.plan(&envelope(&[("a@x.shared", next)], None), next, &world))
            .collect();
        assert!(day2.iter().all(|p| p.postponed.is_empty()));
    }

    /// With `overflow = "pool"` the capped source is skipped and the warmed one takes its share.
    #[test]
    fn warm_up_overflow_goes_to_the_pool() {
        let p = planner(Some(Overflow::Pool));
        let world = World::default();
        let picks: Vec<String> = (0..6)
            .map(|_| {
                let plan = p.plan(&envelope(&[("a@x.shared", T0)], None), T0, &world);
                assert!(plan.postponed.is_empty());
                plan.groups.keys().next().unwrap().source.clone().unwrap().to_string()
            })
            .collect();
        assert_eq!(picks.iter().filter(|s| *s == "new").count(), 1, "{picks:?}");
    }

    /// A rule's suspension of one source × site sends the pool's mail to the other source;
    /// with every source suspended the mail waits, unattempted, until the suspension ends.
    #[test]
    fn suspended_sources_are_skipped_then_waited_for() {
        let p = planner(None);
        let mut world = World::default();
        let site = "mx1.shared,mx2.shared".to_string();
        world.suspended.insert((Some("new".into()), site.clone()), T0 + 1_800_000);
        for _ in 0..4 {
            let plan = p.plan(&envelope(&[("a@x.shared", T0)], None), T0, &world);
            assert_eq!(plan.groups.keys().next().unwrap().source.as_deref(), Some("old"));
        }
        world.suspended.insert((Some("old".into()), site), T0 + 600_000);
        let plan = p.plan(&envelope(&[("a@x.shared", T0)], None), T0, &world);
        assert!(plan.groups.is_empty());
        assert_eq!(plan.postponed.len(), 1);
        assert!([T0 + 600_000, T0 + 1_800_000].contains(&plan.postponed[0].until));
        // Mail without a pool (local) is not keyed by a source there.
        let local = p.plan(&envelope(&[("e@m.local", T0)], None), T0, &world);
        assert_eq!(local.groups.len(), 1);
    }

    /// `bounce_tenant`: only that tenant's mail for that site is bounced.
    #[test]
    fn a_tenants_bounce_takes_its_mail_for_the_site_only() {
        let p = planner(None);
        let mut world = World::default();
        world.bounced.insert(("acme".into(), "google".into()));
        let env = envelope(&[("c@g.google", T0), ("a@x.shared", T0)], Some("acme"));
        let plan = p.plan(&env, T0, &world);
        assert_eq!(plan.bounced.len(), 1);
        assert_eq!(plan.bounced[0].rcpts, [0]);
        assert_eq!(plan.groups.len(), 1, "its mail for other sites goes on");
        let other = p.plan(&envelope(&[("c@g.google", T0)], Some("zeta")), T0, &world);
        assert!(other.bounced.is_empty() && other.groups.len() == 1);
    }
}
