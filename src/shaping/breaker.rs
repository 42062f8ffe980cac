//! Reputation circuit breakers: a tenant or a campaign whose recent mail bounces hard, gets
//! blocked or draws complaints too often is stopped before it burns the sending IPs. Outcomes
//! are counted per tenant and per campaign (of a tenant) in a sliding window; once a scope has
//! the minimum sample and a rate passes its limit, the breaker opens: its queued mail is held
//! (not bounced) and new mail for it is refused (`452 4.7.1`, HTTP 429) until an operator
//! resumes it (`sluice tenant resume`, `sluice campaign resume`). Open breakers are kept in
//! `<data_dir>/circuits.json`, so a restart does not re-arm them by itself.
//!
//! Sans-IO apart from that file: time comes in as Unix milliseconds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{default_true, duration};

/// `[circuit_breaker]`, and `[tenant.NAME.circuit_breaker]` (which replaces it for the tenant
/// and its campaigns; keys it leaves out take the defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The sliding window the rates are measured over.
    #[serde(default = "hour", deserialize_with = "duration")]
    pub window: Duration,
    /// Hard bounces (invalid recipient, bad domain, inactive mailbox) per recipient with a
    /// final outcome, once `min_sample` recipients have one.
    #[serde(default = "tenth")]
    pub hard_bounce_rate: f64,
    #[serde(default = "five_hundred")]
    pub min_sample: u64,
    /// Complaints (ARF) per delivered recipient, once `complaint_min_sample` were delivered.
    #[serde(default = "complaint_rate")]
    pub complaint_rate: f64,
    #[serde(default = "thousand")]
    pub complaint_min_sample: u64,
    /// Blocks (`spam_block`, `policy` failures) per recipient with a final outcome (`min_sample`).
    #[serde(default = "block_rate")]
    pub block_rate: f64,
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}
fn tenth() -> f64 {
    0.10
}
fn five_hundred() -> u64 {
    500
}
fn complaint_rate() -> f64 {
    0.003
}
fn thousand() -> u64 {
    1000
}
fn block_rate() -> f64 {
    0.05
}

crate::units::default_from_serde!(BreakerConfig);

impl BreakerConfig {
    /// What is wrong with the values, as (key, message).
    pub fn check(&self, key: &str) -> Result<(), (String, String)> {
        let rate = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err((format!("{key}.{name}"), "a share from 0 to 1 (e.g. 0.1)".to_string()))
            }
        };
        rate("hard_bounce_rate", self.hard_bounce_rate)?;
        rate("complaint_rate", self.complaint_rate)?;
        rate("block_rate", self.block_rate)?;
        if self.window < Duration::from_secs(60) || self.window > Duration::from_secs(7 * 86_400) {
            return Err((format!("{key}.window"), "from 1m to 7d".into()));
        }
        if self.min_sample == 0 || self.complaint_min_sample == 0 {
            return Err((format!("{key}.min_sample"), "at least 1".into()));
        }
        Ok(())
    }
}

/// A final outcome of one recipient, or a complaint about one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    HardBounce,
    Blocked,
    /// Any other final failure (counts in the sample only).
    OtherFailure,
    Complaint,
}

impl Outcome {
    /// The outcome a failure of this bounce category counts as.
    pub fn of_failure(category: crate::bounce::Category) -> Outcome {
        use crate::bounce::Category as C;
        match category {
            C::InvalidRecipient | C::BadDomain | C::InactiveMailbox => Outcome::HardBounce,
            C::SpamBlock | C::Policy => Outcome::Blocked,
            _ => Outcome::OtherFailure,
        }
    }
}

/// What a breaker covers: a tenant, or one campaign of a tenant (`""` for mail without one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Scope {
    Tenant { tenant: String },
    Campaign { tenant: String, campaign: String },
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Tenant { .. } => "tenant",
            Scope::Campaign { .. } => "campaign",
        }
    }

    fn tenant(&self) -> &str {
        match self {
            Scope::Tenant { tenant } | Scope::Campaign { tenant, .. } => tenant,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Tenant { tenant } => write!(f, "tenant {tenant}"),
            Scope::Campaign { tenant, campaign } if tenant.is_empty() => {
                write!(f, "campaign {campaign}")
            }
            Scope::Campaign { tenant, campaign } => write!(f, "campaign {campaign} of {tenant}"),
        }
    }
}

/// An open breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    #[serde(flatten)]
    pub scope: Scope,
    /// Why, with the numbers: "hard bounce rate 0.2000 over 500 recipients (limit 0.1)".
    pub reason: String,
    /// Unix ms.
    pub since: u64,
}

/// Buckets of a window: `BUCKETS` of `window / BUCKETS` each.
const BUCKETS: u64 = 60;
/// Scopes counted at most (campaign names are the sender's): the least recently used go.
const MAX_SCOPES: usize = 20_000;

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    finals: u64,
    delivered: u64,
    hard: u64,
    blocked: u64,
    complaints: u64,
}

#[derive(Debug, Default)]
struct Window {
    /// (bucket number, counts), oldest first.
    buckets: VecDeque<(u64, Counts)>,
    last: u64,
}

impl Window {
    fn add(&mut self, outcome: Outcome, bucket: u64, now: u64) {
        while self.buckets.front().is_some_and(|(b, _)| *b + BUCKETS <= bucket) {
            self.buckets.pop_front();
        }
        if self.buckets.back().is_none_or(|(b, _)| *b != bucket) {
            self.buckets.push_back((bucket, Counts::default()));
        }
        let c = &mut self.buckets.back_mut().expect("pushed").1;
        match outcome {
            Outcome::Delivered => {
                c.finals += 1;
                c.delivered += 1;
            }
            Outcome::HardBounce => {
                c.finals += 1;
                c.hard += 1;
            }
            Outcome::Blocked => {
                c.finals += 1;
                c.blocked += 1;
            }
            Outcome::OtherFailure => c.finals += 1,
            Outcome::Complaint => c.complaints += 1,
        }
        self.last = now;
    }

    fn total(&self) -> Counts {
        self.buckets.iter().fold(Counts::default(), |mut t, (_, c)| {
            t.finals += c.finals;
            t.delivered += c.delivered;
            t.hard += c.hard;
            t.blocked += c.blocked;
            t.complaints += c.complaints;
            t
        })
    }
}

/// The breakers: windows per scope, and the open ones (saved).
#[derive(Debug)]
pub struct Breakers {
    default: BreakerConfig,
    tenants: BTreeMap<String, BreakerConfig>,
    windows: HashMap<Scope, Window>,
    open: BTreeMap<Scope, Trip>,
    path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    open: Vec<Trip>,
}

impl Breakers {
    /// Breakers with `default` and per-tenant configurations; open ones are read from (and
    /// saved to) `path`.
    pub fn open(
        default: BreakerConfig,
        tenants: BTreeMap<String, BreakerConfig>,
        path: Option<PathBuf>,
    ) -> Breakers {
        let saved: Saved = path
            .as_deref()
            .map(|p| crate::state_file::read_json(p, "circuit breakers"))
            .unwrap_or_default();
        let open = saved.open.into_iter().map(|t| (t.scope.clone(), t)).collect();
        Breakers { default, tenants, windows: HashMap::new(), open, path }
    }

    fn config(&self, tenant: &str) -> &BreakerConfig {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }

    fn scopes(tenant: Option<&str>, campaign: Option<&str>) -> Vec<Scope> {
        let mut out = Vec::with_capacity(2);
        if let Some(t) = tenant {
            out.push(Scope::Tenant { tenant: t.to_string() });
        }
        if let Some(c) = campaign {
            let tenant = tenant.unwrap_or("").to_string();
            out.push(Scope::Campaign { tenant, campaign: c.to_string() });
        }
        out
    }

    /// Counts an outcome of mail of `tenant` / `campaign`; returns the breakers it opened.
    pub fn record(
        &mut self,
        tenant: Option<&str>,
        campaign: Option<&str>,
        outcome: Outcome,
        now: u64,
    ) -> Vec<Trip> {
        let mut opened = Vec::new();
        for scope in Self::scopes(tenant, campaign) {
            let cfg = self.config(scope.tenant()).clone();
            if !cfg.enabled || self.open.contains_key(&scope) {
                continue;
            }
            if !self.windows.contains_key(&scope) && self.windows.len() >= MAX_SCOPES {
                self.evict();
            }
            let bucket_ms = (cfg.window.as_millis() as u64 / BUCKETS).max(1);
            let w = self.windows.entry(scope.clone()).or_default();
            w.add(outcome, now / bucket_ms, now);
            if let Some(reason) = tripped(&cfg, &w.total()) {
                let trip = Trip { scope: scope.clone(), reason, since: now };
                self.windows.remove(&scope);
                self.open.insert(scope, trip.clone());
                opened.push(trip);
            }
        }
        if !opened.is_empty() {
            self.save();
        }
        opened
    }

    fn evict(&mut self) {
        let mut by_age: Vec<(u64, Scope)> =
            self.windows.iter().map(|(s, w)| (w.last, s.clone())).collect();
        by_age.sort();
        for (_, s) in by_age.into_iter().take(MAX_SCOPES / 10) {
            self.windows.remove(&s);
        }
    }

    /// The open breaker that holds mail of `tenant` / `campaign`, if any.
    pub fn holding(&self, tenant: Option<&str>, campaign: Option<&str>) -> Option<&Trip> {
        if self.open.is_empty() {
            return None;
        }
        Self::scopes(tenant, campaign).iter().find_map(|s| self.open.get(s))
    }

    /// Closes (re-arms) the breakers of `scope`: for a campaign without a tenant given, that
    /// campaign of every tenant. Returns the ones closed; their windows start empty.
    pub fn resume(&mut self, kind: &str, name: &str, tenant: Option<&str>) -> Vec<Trip> {
        let closed: Vec<Scope> = self
            .open
            .keys()
            .filter(|s| match (s, kind) {
                (Scope::Tenant { tenant: t }, "tenant") => t == name,
                (Scope::Campaign { tenant: t, campaign: c }, "campaign") => {
                    c == name && tenant.is_none_or(|want| want == t)
                }
                _ => false,
            })
            .cloned()
            .collect();
        let trips: Vec<Trip> = closed.iter().filter_map(|s| self.open.remove(s)).collect();
        if !trips.is_empty() {
            self.save();
        }
        trips
    }

    /// The open breakers.
    pub fn list(&self) -> Vec<Trip> {
        self.open.values().cloned().collect()
    }

    /// Open breakers per scope kind (tenant, campaign).
    pub fn counts(&self) -> [(&'static str, usize); 2] {
        let n = |k: &str| self.open.keys().filter(|s| s.kind() == k).count();
        [("tenant", n("tenant")), ("campaign", n("campaign"))]
    }

    /// Writes the open breakers (atomically, durably); a failure is logged, the breakers stay
    /// open in memory.
    fn save(&self) {
        let Some(path) = &self.path else { return };
        let saved = Saved { open: self.open.values().cloned().collect() };
        match serde_json::to_vec_pretty(&saved) {
            Ok(bytes) => {
                if let Err(e) = crate::state_file::write_atomic(path, &bytes) {
                    tracing::error!(path = %path.display(), error = %e, "could not save the circuit breakers");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not encode the circuit breakers"),
        }
    }
}

/// The breakers as the rest of sluice uses them: every opening and closing is a delivery log
/// event (`circuit_open`, `circuit_closed`) and moves `sluice_circuit_open{scope}`.
pub struct Circuits {
    breakers: std::sync::Mutex<Breakers>,
    log: crate::delivery_log::DeliveryLog,
}

impl Circuits {
    pub fn new(breakers: Breakers, log: crate::delivery_log::DeliveryLog) -> Circuits {
        let c = Circuits { breakers: std::sync::Mutex::new(breakers), log };
        c.gauges(&c.lock());
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breakers> {
        self.breakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gauges(&self, b: &Breakers) {
        for (kind, n) in b.counts() {
            crate::metrics::CIRCUIT_OPEN.with_label_values(&[kind]).set(n as i64);
        }
    }

    fn event(&self, event: &'static str, t: &Trip) {
        tracing::warn!(scope = %t.scope, reason = %t.reason, "{event}");
        if !self.log.enabled() {
            return;
        }
        let mut e = crate::delivery_log::LogEntry::new(event, "");
        e.scope = Some(t.scope.kind());
        match &t.scope {
            Scope::Tenant { tenant } => e.tenant = Some(tenant.clone()),
            Scope::Campaign { tenant, campaign } => {
                e.tenant = (!tenant.is_empty()).then(|| tenant.clone());
                e.campaign = Some(campaign.clone());
            }
        }
        e.reason = Some(t.reason.clone());
        self.log.log(e);
    }

    /// Counts an outcome; true when it opened a breaker.
    pub fn record(&self, tenant: Option<&str>, campaign: Option<&str>, outcome: Outcome) -> bool {
        let mut b = self.lock();
        let opened = b.record(tenant, campaign, outcome, crate::spool::unix_millis());
        if opened.is_empty() {
            return false;
        }
        self.gauges(&b);
        drop(b);
        for t in &opened {
            self.event("circuit_open", t);
        }
        true
    }

    /// Why mail of `tenant` / `campaign` is held now (a reply text, without codes).
    pub fn holding(&self, tenant: Option<&str>, campaign: Option<&str>) -> Option<String> {
        let b = self.lock();
        let t = b.holding(tenant, campaign)?;
        Some(format!(
            "sending paused: the circuit breaker of {} is open ({}); an operator resumes it",
            t.scope, t.reason
        ))
    }

    /// Closes breakers (see [`Breakers::resume`]).
    pub fn resume(&self, kind: &str, name: &str, tenant: Option<&str>) -> Vec<Trip> {
        let mut b = self.lock();
        let closed = b.resume(kind, name, tenant);
        self.gauges(&b);
        drop(b);
        for t in &closed {
            self.event("circuit_closed", t);
        }
        closed
    }

    pub fn list(&self) -> Vec<Trip> {
        self.lock().list()
    }
}

/// Why the counts open a breaker under `cfg`, if they do: the first rate past its limit with
/// its minimum sample.
fn tripped(cfg: &BreakerConfig, c: &Counts) -> Option<String> {
    let checks = [
        ("hard bounce rate", c.hard, c.finals, cfg.hard_bounce_rate, cfg.min_sample, "recipients"),
        ("block rate", c.blocked, c.finals, cfg.block_rate, cfg.min_sample, "recipients"),
        (
            "complaint rate",
            c.complaints,
            c.delivered,
            cfg.complaint_rate,
            cfg.complaint_min_sample,
            "delivered",
        ),
    ];
    checks.into_iter().find_map(|(what, n, of, limit, min, unit)| {
        let rate = n as f64 / of.max(1) as f64;
        (of >= min && rate > limit)
            .then(|| format!("{what} {rate:.4} over {of} {unit} (limit {limit})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn small() -> BreakerConfig {
        BreakerConfig { min_sample: 100, complaint_min_sample: 200, ..BreakerConfig::default() }
    }

    #[test]
    fn a_campaign_trips_after_the_minimum_sample_and_its_sibling_does_not() {
        let mut b = Breakers::open(small(), BTreeMap::new(), None);
        let mut opened = Vec::new();
        // 20 % hard bounces in "spring"; "summer" of the same tenant is clean.
        for i in 0..99 {
            let o = if i % 5 == 0 { Outcome::HardBounce } else { Outcome::Delivered };
            opened.extend(b.record(Some("acme"), Some("spring"), o, T0 + i));
            for _ in 0..2 {
                opened.extend(b.record(Some("acme"), Some("summer"), Outcome::Delivered, T0 + i));
            }
        }
        assert!(opened.is_empty(), "below the minimum sample: {opened:?}");
        let trip = b.record(Some("acme"), Some("spring"), Outcome::Delivered, T0 + 100);
        assert_eq!(trip.len(), 1);
        assert_eq!(
            trip[0].scope,
            Scope::Campaign { tenant: "acme".into(), campaign: "spring".into() }
        );
        assert!(
            trip[0].reason.starts_with("hard bounce rate 0.2000 over 100"),
            "{}",
            trip[0].reason
        );
        assert!(b.holding(Some("acme"), Some("spring")).is_some());
        assert!(b.holding(Some("acme"), Some("summer")).is_none());
        assert!(b.holding(Some("acme"), None).is_none(), "the tenant: 20 of 298");
        // Resume re-arms it with an empty window.
        assert_eq!(b.resume("campaign", "spring", None).len(), 1);
        assert!(b.holding(Some("acme"), Some("spring")).is_none());
        assert!(b.record(Some("acme"), Some("spring"), Outcome::HardBounce, T0 + 200).is_empty());
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let mut b = Breakers::open(small(), BTreeMap::new(), None);
        for i in 0..50 {
            b.record(Some("acme"), None, Outcome::HardBounce, T0 + i);
        }
        // An hour later the bounces are gone: 100 clean outcomes do not trip it.
        let later = T0 + 3_600_000;
        for i in 0..100 {
            assert!(b.record(Some("acme"), None, Outcome::Delivered, later + i).is_empty());
        }
    }

    #[test]
    fn complaints_count_per_delivered_and_blocks_per_final_outcome() {
        let mut b = Breakers::open(small(), BTreeMap::new(), None);
        for i in 0..200 {
            b.record(Some("c"), None, Outcome::Delivered, T0 + i);
        }
        let trips = b.record(Some("c"), None, Outcome::Complaint, T0 + 300);
        assert!(trips[0].reason.starts_with("complaint rate 0.0050 over 200"), "{trips:?}");
        let mut b = Breakers::open(small(), BTreeMap::new(), None);
        let mut trips = Vec::new();
        for i in 0..100 {
            let o = if i < 6 { Outcome::Blocked } else { Outcome::Delivered };
            trips.extend(b.record(Some("blk"), None, o, T0 + i));
        }
        assert!(trips[0].reason.starts_with("block rate 0.0600"), "{trips:?}");
    }

    #[test]
    fn a_tenant_may_turn_its_breaker_off_and_open_ones_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("sluice-breaker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("circuits.json");
        let off = BreakerConfig { enabled: false, ..small() };
        let tenants = BTreeMap::from([("trusted".to_string(), off)]);
        let mut b = Breakers::open(small(), tenants.clone(), Some(path.clone()));
        for i in 0..100 {
            assert!(b.record(Some("trusted"), None, Outcome::HardBounce, T0 + i).is_empty());
            b.record(Some("bad"), None, Outcome::HardBounce, T0 + i);
        }
        assert!(
            b.holding(Some("bad"), Some("any")).is_some(),
            "a tenant's breaker holds its campaigns"
        );
        let again = Breakers::open(small(), tenants, Some(path));
        assert_eq!(again.list().len(), 1);
        assert_eq!(again.counts(), [("tenant", 1), ("campaign", 0)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
