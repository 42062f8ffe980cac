//! Automation rules: providers throttle with replies long before they block, so replies that
//! match a rule (`[[automation]]`, over the shipped `config/automation_rules.toml`) often enough
//! in a sliding window act on the source × site that got them: suspend its new connections,
//! reduce or set its connection and rate limits, or bounce the tenant's mail queued for the
//! site. Lowered limits come back gradually: each `recover_every` without a matching reply adds
//! `recover_step` of the limit they had before the first action, never all at once.
//!
//! Sans-IO: time comes in as Unix milliseconds and the dispatcher applies what [`Automation`]
//! says; every action and recovery step comes back as an [`Event`] for the log and metrics.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer};

use crate::bounce::classify::ReplyPattern;
use crate::proto::smtp::Reply;
use crate::units::{duration, opt_duration, rate};

/// The rules shipped with sluice (`[delivery] builtin_automation = false` leaves them out).
pub const DEFAULT_RULES: &str = include_str!("../../config/automation_rules.toml");

/// How many source × site keys (and rule windows) are tracked at most: a flood of distinct
/// destinations cannot grow the state without bound.
const MAX_KEYS: usize = 10_000;
/// Sends remembered per key to measure its rate before a first action.
const RATE_SAMPLES: usize = 256;
const RATE_SPAN_MS: u64 = 60_000;

/// One `[[automation]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutomationConfig {
    pub name: String,
    /// The named site (`[[site]]` or the provider table) it watches ...
    pub site: Option<String>,
    /// ... or MX host patterns (`*.mail.example`); neither: every destination.
    #[serde(default)]
    pub mx: Vec<String>,
    /// Regular expressions on the reply, as in `[bounce] rules`: all given must match.
    #[serde(rename = "match")]
    pub matching: MatchSpec,
    /// `"3/5m"`: this many matching replies within this window, per source × site.
    pub threshold: Threshold,
    /// No new connections from that source to that site for this long.
    #[serde(default, deserialize_with = "opt_duration")]
    pub suspend: Option<Duration>,
    /// Multiply the current connection and rate limits by this (0 < reduce < 1) ...
    pub reduce: Option<f64>,
    /// ... or set them.
    pub set: Option<SetLimits>,
    /// Bounce the tenant's mail queued for the site, with the reply.
    #[serde(default)]
    pub bounce_tenant: bool,
    /// After an action, each period without a matching reply gives back `recover_step` of the
    /// limits the source × site had before.
    #[serde(default = "ten_minutes", deserialize_with = "duration")]
    pub recover_every: Duration,
    #[serde(default = "tenth")]
    pub recover_step: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// On the enhanced status code, e.g. `^4\.7\.28$`.
    pub code: Option<String>,
    /// On the three-digit reply code.
    pub reply: Option<String>,
    /// On the reply text (lines joined by spaces).
    pub text: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLimits {
    pub connections: Option<usize>,
    #[serde(default, deserialize_with = "rate")]
    pub rate: Option<f64>,
}

/// `count/window`, e.g. `"3/5m"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub count: u32,
    pub window: Duration,
}

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid threshold {s:?} (e.g. \"3/5m\": 3 replies within 5 minutes)");
        let (n, w) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let window = humantime::parse_duration(w.trim()).map_err(|_| bad())?;
        if count == 0 || count > 10_000 || window.is_zero() {
            return Err(format!("threshold {s:?}: 1 to 10000 replies within a positive window"));
        }
        Ok(Threshold { count, window })
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

fn tenth() -> f64 {
    0.1
}

/// A rule that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AutomationError {
    #[error("[[automation]] {name:?}: bad match.{field} pattern: {error}")]
    Pattern { name: String, field: &'static str, error: String },
    #[error("[[automation]] {name:?}: {why}")]
    Invalid { name: String, why: String },
    #[error("shipped automation rules: {0}")]
    Shipped(String),
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    cfg: AutomationConfig,
    pattern: ReplyPattern,
}

impl Rule {
    fn new(
        cfg: AutomationConfig,
        site_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Rule, AutomationError> {
        let invalid = |why: String| AutomationError::Invalid { name: cfg.name.clone(), why };
        if cfg.name.is_empty() || cfg.name.len() > 64 {
            return Err(invalid("a name of 1 to 64 characters is needed".into()));
        }
        if cfg.suspend.is_none() && cfg.reduce.is_none() && cfg.set.is_none() && !cfg.bounce_tenant
        {
            return Err(invalid("no action: give suspend, reduce, set or bounce_tenant".into()));
        }
        if cfg.reduce.is_some() && cfg.set.is_some() {
            return Err(invalid("give reduce or set, not both".into()));
        }
        if cfg.reduce.is_some_and(|r| !(r > 0.0 && r < 1.0)) {
            return Err(invalid("reduce must be between 0 and 1 (0.5 halves the limits)".into()));
        }
        if cfg.set.as_ref().is_some_and(|s| s.connections == Some(0)) {
            return Err(invalid("set.connections must be at least 1".into()));
        }
        if !(cfg.recover_step > 0.0 && cfg.recover_step <= 1.0) {
            return Err(invalid("recover_step must be above 0 and at most 1".into()));
        }
        if cfg.recover_every.is_zero() {
            return Err(invalid("recover_every must be positive".into()));
        }
        if let Some(site) = cfg.site.as_deref().filter(|s| !site_exists(s)) {
            return Err(invalid(format!("unknown site {site:?} (a [[site]] or a shipped one)")));
        }
        let m = &cfg.matching;
        let pattern = ReplyPattern::new(m.code.as_deref(), m.reply.as_deref(), m.text.as_deref())
            .map_err(|e| AutomationError::Pattern {
                name: cfg.name.clone(),
                field: e.field,
                error: e.error,
            })?
            .ok_or_else(|| invalid("match needs a code, reply or text pattern".into()))?;
        Ok(Rule { cfg, pattern })
    }

    /// Whether the rule watches this destination: its site, or an MX host pattern matching
    /// the host that answered (or one of the destination's MX hosts).
    fn watches(&self, scope: &Scope<'_>) -> bool {
        let c = &self.cfg;
        if c.site.is_none() && c.mx.is_empty() {
            return true;
        }
        let site = c.site.is_some() && c.site.as_deref() == scope.named_site;
        let host_fits = |h: &str| {
            let h = crate::domain::normalize(h);
            c.mx.iter().any(|p| crate::domain::pattern_matches(p, &h))
        };
        let mx = match scope.mx_host {
            Some(h) => host_fits(h),
            None => scope.key.site.split(',').any(host_fits),
        };
        site || mx
    }
}

/// The rules in force: the operator's, then the shipped ones not replaced by name.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    automation: Vec<AutomationConfig>,
}

impl Rules {
    /// `user` rules, then (with `builtin`) the shipped ones whose names they do not take.
    /// `site_exists` says which site names are known.
    pub fn new(
        user: &[AutomationConfig],
        builtin: bool,
        site_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Rules, AutomationError> {
        let mut rules = Vec::new();
        for cfg in user {
            if rules.iter().any(|r: &Rule| r.cfg.name == cfg.name) {
                return Err(AutomationError::Invalid {
                    name: cfg.name.clone(),
                    why: "two rules have this name".into(),
                });
            }
            rules.push(Rule::new(cfg.clone(), site_exists)?);
        }
        if builtin {
            for cfg in shipped()? {
                // A shipped rule for a provider site left out (`builtin_sites = false`) is too.
                let site_known = cfg.site.as_deref().is_none_or(site_exists);
                if site_known && !user.iter().any(|u| u.name == cfg.name) {
                    rules.push(
                        Rule::new(cfg, site_exists)
                            .map_err(|e| AutomationError::Shipped(e.to_string()))?,
                    );
                }
            }
        }
        Ok(Rules { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Each rule's name and the actions it can log (for metrics that exist from the start).
    pub fn actions(&self) -> Vec<(&str, Vec<ActionKind>)> {
        self.rules
            .iter()
            .map(|r| {
                let c = &r.cfg;
                let mut kinds = Vec::new();
                if c.suspend.is_some() {
                    kinds.extend([ActionKind::Suspend, ActionKind::Resume]);
                }
                if c.reduce.is_some() {
                    kinds.push(ActionKind::Reduce);
                }
                if c.set.is_some() {
                    kinds.push(ActionKind::Set);
                }
                if c.reduce.is_some() || c.set.is_some() {
                    kinds.push(ActionKind::Recover);
                }
                if c.bounce_tenant {
                    kinds.push(ActionKind::BounceTenant);
                }
                (c.name.as_str(), kinds)
            })
            .collect()
    }

    /// The names of the rules whose patterns match `reply` (whatever they watch).
    pub fn matching(&self, reply: &Reply) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|r| r.pattern.matches(reply))
            .map(|r| r.cfg.name.as_str())
            .collect()
    }
}

/// The shipped rules.
pub fn shipped() -> Result<Vec<AutomationConfig>, AutomationError> {
    toml::from_str::<RulesFile>(DEFAULT_RULES)
        .map(|f| f.automation)
        .map_err(|e| AutomationError::Shipped(e.to_string()))
}

/// What the rules act on: a source (None: the default address) and a site (a named site, an
/// MX host set's rollup key, a domain, or a smart host).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub source: Option<CompactString>,
    pub site: String,
}

/// The destination an attempt went to, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub key: &'a Key,
    /// Its named site, if any.
    pub named_site: Option<&'a str>,
    /// The MX host that answered, if known.
    pub mx_host: Option<&'a str>,
    /// The tenant of the message the reply was about.
    pub tenant: Option<&'a str>,
    /// The destination's configured connection limit and rate (messages per second; None:
    /// unlimited): the base a reduction starts from and recovery returns to. Without a
    /// configured rate, the rate sent over the last minute is the base.
    pub connections: usize,
    pub rate: Option<f64>,
    /// When the attempt began (Unix ms): replies to mail sent before the key's last action
    /// say nothing about the limits that action set, so they hold recovery back but do not
    /// count towards another action.
    pub started: u64,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Suspend,
    Reduce,
    Set,
    BounceTenant,
    /// One recovery step of the limits.
    Recover,
    /// A suspension ended.
    Resume,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Suspend => "suspend",
            ActionKind::Reduce => "reduce",
            ActionKind::Set => "set",
            ActionKind::BounceTenant => "bounce_tenant",
            ActionKind::Recover => "recover",
            ActionKind::Resume => "resume",
        }
    }
}

/// An action or a recovery step, for the delivery log and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub rule: String,
    pub key: Key,
    pub action: ActionKind,
    /// The limits after it: connections (None: as configured), messages per second (None: as
    /// configured), and the connection limit as a share of the configured one.
    pub connections: Option<usize>,
    pub rate: Option<f64>,
    pub factor: f64,
    /// The end of a suspension (Unix ms), or of a tenant's bounce for the site.
    pub until: Option<u64>,
    /// The tenant whose mail is bounced, and the reply that fired the rule.
    pub tenant: Option<String>,
    pub reply: Option<String>,
    /// True when the limits are back to the configured ones (the key is no longer throttled).
    pub recovered: bool,
}

/// The shaping state of one throttled source × site.
#[derive(Debug, Clone)]
struct Throttle {
    rule: String,
    /// The limits before the first action, which recovery returns to.
    base_connections: usize,
    base_rate: Option<f64>,
    /// The lowered limits (None: as configured).
    connections: Option<f64>,
    rate: Option<f64>,
    suspended_until: Option<u64>,
    /// The last matching reply or recovery step: the next step is `recover_every` after it.
    since: u64,
    /// The last action.
    acted: u64,
    recover_every: u64,
    recover_step: f64,
}

impl Throttle {
    fn factor(&self) -> f64 {
        self.connections.map_or(1.0, |c| c / self.base_connections.max(1) as f64)
    }

    fn lowered(&self) -> bool {
        self.connections.is_some() || self.rate.is_some()
    }

    fn event(&self, key: &Key, action: ActionKind) -> Event {
        Event {
            rule: self.rule.clone(),
            key: key.clone(),
            action,
            connections: self.connections.map(|c| (c as usize).max(1)),
            rate: self.rate,
            factor: self.factor(),
            until: self.suspended_until,
            tenant: None,
            reply: None,
            recovered: !self.lowered() && self.suspended_until.is_none(),
        }
    }
}

/// A source × site's current shaping, for `sluice queue destinations`.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub rule: String,
    pub factor: f64,
    pub connections: Option<usize>,
    pub rate: Option<f64>,
    pub suspended_until: Option<u64>,
}

/// The rules' state: match windows, throttled keys, recent sends, tenants' bounces.
#[derive(Debug, Default)]
pub struct Automation {
    rules: Rules,
    /// Times of recent matches per (rule, key), at most the rule's count.
    windows: HashMap<(usize, Key), VecDeque<u64>>,
    throttles: HashMap<Key, Throttle>,
    /// Recent send times per key (its rate before an action).
    sends: HashMap<Key, VecDeque<u64>>,
    /// Tenants whose mail for a site is bounced until a time, with the reply.
    bounces: HashMap<(String, String), (u64, String)>,
}

impl Automation {
    pub fn new(rules: Rules) -> Self {
        Automation { rules, ..Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Nothing is suspended, lowered or bounced now (the planner's fast path).
    pub fn quiet(&self) -> bool {
        self.throttles.is_empty() && self.bounces.is_empty()
    }

    /// One attempt's non-success replies from `scope`; each rule counts at most once per
    /// attempt. Returns the actions taken.
    pub fn observe(&mut self, scope: &Scope<'_>, replies: &[&Reply], now: u64) -> Vec<Event> {
        let mut events = Vec::new();
        // Each reply's lines joined once, not once per rule.
        let parts: Vec<(u16, &str, String)> = replies
            .iter()
            .map(|r| (r.code, r.enhanced.as_deref().unwrap_or(""), r.text.replace('\n', " ")))
            .collect();
        for i in 0..self.rules.rules.len() {
            let rule = &self.rules.rules[i];
            let matched = parts.iter().position(|(c, e, t)| rule.pattern.matches_parts(*c, e, t));
            let Some(reply) = matched.map(|p| replies[p]) else { continue };
            if !rule.watches(scope) {
                continue;
            }
            let span = rule.cfg.threshold.window.as_millis() as u64;
            let count = rule.cfg.threshold.count as usize;
            // Any match holds the recovery of its key back. Replies to mail sent before the
            // last action do not count; and the rule judges the limits an action set over a
            // whole window before it acts again (at most one action per window, as TCP halves
            // its window at most once per round trip).
            let mut settling = false;
            if let Some(t) = self.throttles.get_mut(scope.key) {
                t.since = now;
                if scope.started < t.acted {
                    continue;
                }
                settling = now < t.acted + span;
            }
            let wkey = (i, scope.key.clone());
            if !self.windows.contains_key(&wkey) && self.windows.len() >= MAX_KEYS {
                self.prune_windows(now);
                if self.windows.len() >= MAX_KEYS {
                    continue;
                }
            }
            let window = self.windows.entry(wkey.clone()).or_default();
            while window.front().is_some_and(|&t| t + span <= now) {
                window.pop_front();
            }
            window.push_back(now);
            if window.len() > count {
                window.pop_front();
            }
            if window.len() < count || settling {
                continue;
            }
            self.windows.remove(&wkey);
            events.extend(self.fire(i, scope, reply, now));
        }
        events
    }

    /// A message was sent to `key` (an attempt was made): its rate before an action.
    pub fn sent(&mut self, key: &Key, now: u64) {
        // Once per message: the key is cloned only the first time it is seen.
        if let Some(s) = self.sends.get_mut(key) {
            if s.len() == RATE_SAMPLES {
                s.pop_front();
            }
            s.push_back(now);
            return;
        }
        if self.sends.len() >= MAX_KEYS {
            self.sends.retain(|_, s| s.back().is_some_and(|&t| t + RATE_SPAN_MS > now));
            if self.sends.len() >= MAX_KEYS {
                return;
            }
        }
        self.sends.insert(key.clone(), VecDeque::from([now]));
    }

    /// Messages per second sent to `key` over the last minute (None: too few to tell).
    fn observed_rate(&self, key: &Key, now: u64) -> Option<f64> {
        let s = self.sends.get(key)?;
        let recent: Vec<u64> = s.iter().copied().filter(|&t| t + RATE_SPAN_MS > now).collect();
        let (first, n) = (*recent.first()?, recent.len());
        if n < 2 {
            return None;
        }
        let span = (now.saturating_sub(first)).max(1000) as f64 / 1000.0;
        Some(n as f64 / span)
    }

    fn fire(&mut self, i: usize, scope: &Scope<'_>, reply: &Reply, now: u64) -> Vec<Event> {
        let cfg = self.rules.rules[i].cfg.clone();
        let observed = scope.rate.or_else(|| self.observed_rate(scope.key, now));
        if !self.throttles.contains_key(scope.key) && self.throttles.len() >= MAX_KEYS {
            return Vec::new();
        }
        let t = self.throttles.entry(scope.key.clone()).or_insert_with(|| Throttle {
            rule: cfg.name.clone(),
            base_connections: scope.connections.max(1),
            base_rate: observed,
            connections: None,
            rate: None,
            suspended_until: None,
            since: now,
            acted: now,
            recover_every: 0,
            recover_step: 0.0,
        });
        t.rule = cfg.name.clone();
        t.since = now;
        t.acted = now;
        t.recover_every = cfg.recover_every.as_millis() as u64;
        t.recover_step = cfg.recover_step;
        let mut events = Vec::new();
        if let Some(d) = cfg.suspend {
            let until = now + d.as_millis() as u64;
            t.suspended_until = Some(t.suspended_until.map_or(until, |u| u.max(until)));
            events.push(t.event(scope.key, ActionKind::Suspend));
        }
        if let Some(r) = cfg.reduce {
            let c = t.connections.unwrap_or(t.base_connections as f64);
            t.connections = Some((c * r).max(1.0));
            if let Some(rate) = t.rate.or(t.base_rate) {
                t.rate = Some(rate * r);
            }
            events.push(t.event(scope.key, ActionKind::Reduce));
        }
        if let Some(s) = &cfg.set {
            if let Some(c) = s.connections {
                t.connections = Some(c as f64);
            }
            if let Some(r) = s.rate {
                t.base_rate = t.base_rate.or(Some(r));
                t.rate = Some(r);
            }
            events.push(t.event(scope.key, ActionKind::Set));
        }
        if cfg.bounce_tenant
            && let Some(tenant) = scope.tenant
        {
            let until = now + cfg.threshold.window.as_millis() as u64;
            let line = reply.to_line();
            let key = (tenant.to_string(), scope.key.site.clone());
            if self.bounces.len() < MAX_KEYS || self.bounces.contains_key(&key) {
                self.bounces.insert(key, (until, line.clone()));
            }
            let mut e = t.event(scope.key, ActionKind::BounceTenant);
            e.until = Some(until);
            e.tenant = Some(tenant.to_string());
            events.push(e);
        }
        let line = reply.to_line();
        for e in &mut events {
            e.reply = Some(line.clone());
        }
        if !t.lowered() && t.suspended_until.is_none() {
            self.throttles.remove(scope.key); // bounce_tenant alone changes no limit
        }
        events
    }

    /// Ends suspensions that are over and takes recovery steps that are due; forgets what has
    /// expired. Called on every dispatcher scan.
    pub fn tick(&mut self, now: u64) -> Vec<Event> {
        let mut events = Vec::new();
        for (key, t) in self.throttles.iter_mut() {
            if t.suspended_until.is_some_and(|u| u <= now) {
                t.suspended_until = None;
                t.since = t.since.max(now.min(t.since + t.recover_every));
                events.push(t.event(key, ActionKind::Resume));
            }
            if t.suspended_until.is_some() {
                continue;
            }
            while t.lowered() && now >= t.since + t.recover_every {
                t.since += t.recover_every;
                let step = t.recover_step;
                let base = t.base_connections as f64;
                t.connections = t.connections.map(|c| c + step * base).filter(|&c| c < base);
                t.rate = match (t.rate, t.base_rate) {
                    (Some(r), Some(b)) => Some(r + step * b).filter(|&r| r < b),
                    _ => None,
                };
                events.push(t.event(key, ActionKind::Recover));
            }
        }
        self.throttles.retain(|_, t| t.lowered() || t.suspended_until.is_some());
        self.bounces.retain(|_, (until, _)| *until > now);
        if self.windows.len() > MAX_KEYS / 2 {
            self.prune_windows(now);
        }
        events
    }

    fn prune_windows(&mut self, now: u64) {
        let rules = &self.rules.rules;
        self.windows.retain(|(i, _), w| {
            let span = rules[*i].cfg.threshold.window.as_millis() as u64;
            w.back().is_some_and(|&t| t + span > now)
        });
    }

    /// Until when (Unix ms) `key` is suspended, and by which rule.
    pub fn suspended(&self, key: &Key, now: u64) -> Option<(u64, &str)> {
        let t = self.throttles.get(key)?;
        t.suspended_until.filter(|&u| u > now).map(|u| (u, t.rule.as_str()))
    }

    /// The connection limit of `key` now, when a rule has lowered it.
    pub fn connections(&self, key: &Key) -> Option<usize> {
        self.throttles.get(key)?.connections.map(|c| (c as usize).max(1))
    }

    /// The rate of `key` now (messages per second), when a rule has lowered it.
    pub fn rate(&self, key: &Key) -> Option<f64> {
        self.throttles.get(key)?.rate
    }

    /// The reply `tenant`'s mail for `site` is bounced with, while a rule says so.
    pub fn bounced(&self, tenant: &str, site: &str, now: u64) -> Option<&str> {
        let (until, reply) = self.bounces.get(&(tenant.to_string(), site.to_string()))?;
        (*until > now).then_some(reply.as_str())
    }

    /// The shaping of `key`, when a rule has acted on it.
    pub fn view(&self, key: &Key) -> Option<View> {
        let t = self.throttles.get(key)?;
        Some(View {
            rule: t.rule.clone(),
            factor: t.factor(),
            connections: t.connections.map(|c| (c as usize).max(1)),
            rate: t.rate,
            suspended_until: t.suspended_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const T0: u64 = 1_800_000_000_000;

    fn rule(toml_text: &str) -> AutomationConfig {
        let mut all: RulesFile = toml::from_str(&format!("[[automation]]\n{toml_text}")).unwrap();
        all.automation.remove(0)
    }

    fn engine(rules: &[&str]) -> Automation {
        let cfgs: Vec<AutomationConfig> = rules.iter().map(|r| rule(r)).collect();
        Automation::new(Rules::new(&cfgs, false, &|s| s == "google").unwrap())
    }

    fn key(source: &str, site: &str) -> Key {
        Key { source: Some(source.into()), site: site.into() }
    }

    fn scope<'a>(k: &'a Key) -> Scope<'a> {
        Scope {
            key: k,
            named_site: Some(&k.site),
            mx_host: None,
            tenant: Some("acme"),
            connections: 10,
            rate: None,
            started: T0,
        }
    }

    fn reply(line: &str) -> Reply {
        let mut wire = bytes::BytesMut::from(format!("{line}\r\n").as_str());
        crate::proto::smtp::client::parse_reply(&mut wire).unwrap().unwrap()
    }

    const GMAIL_RATE: &str = "name = \"gmail-rate\"\nsite = \"google\"\nmatch = { code = '^4\\.7\\.28$' }\nthreshold = \"3/5m\"\nreduce = 0.5\nrecover_every = \"10m\"\nrecover_step = 0.1\n";

    #[test]
    fn threshold_counts_matches_in_a_sliding_window_per_source_and_site() {
        let mut a = engine(&[GMAIL_RATE]);
        let r = reply("421 4.7.28 unusual rate of unsolicited mail");
        let other = reply("421 4.7.0 try again later");
        let (k1, k2) = (key("ip1", "google"), key("ip2", "google"));
        assert!(a.observe(&scope(&k1), &[&r], T0).is_empty());
        assert!(a.observe(&scope(&k2), &[&r], T0).is_empty(), "another source: its own window");
        assert!(a.observe(&scope(&k1), &[&other], T0 + 1).is_empty(), "no match");
        assert!(a.observe(&scope(&k1), &[&r], T0 + 2 * MIN).is_empty());
        // The first match has left the window: still two.
        assert!(a.observe(&scope(&k1), &[&r], T0 + 5 * MIN).is_empty());
        let e = a.observe(&scope(&k1), &[&r], T0 + 5 * MIN + 1);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].action, e[0].connections, e[0].key.clone()),
            (ActionKind::Reduce, Some(5), k1.clone())
        );
        assert_eq!(a.connections(&k1), Some(5));
        assert_eq!(a.connections(&k2), None);
        // One attempt's many replies count once.
        let mut b = engine(&[GMAIL_RATE]);
        assert!(b.observe(&scope(&k1), &[&r, &r, &r], T0).is_empty());
    }

    #[test]
    fn limits_come_back_in_steps_never_at_once_and_a_match_holds_them() {
        let mut a = engine(&[GMAIL_RATE]);
        let k = key("ip1", "google");
        // 2 messages a second for the last minute.
        for s in 0..120 {
            a.sent(&k, T0 + s * 500);
        }
        let r = reply("421 4.7.28 unusual rate");
        let now = T0 + MIN;
        for _ in 0..3 {
            a.observe(&scope(&k), &[&r], now);
        }
        assert_eq!(a.connections(&k), Some(5));
        let rate = a.rate(&k).unwrap();
        assert!((rate - 1.0).abs() < 0.05, "half the observed 2/s: {rate}");
        let mut conns = vec![a.connections(&k)];
        let mut t = now;
        // A matching reply 5 minutes in (below the threshold) delays the first step.
        t += 5 * MIN;
        a.observe(&scope(&k), &[&r], t);
        assert!(a.tick(t + 10 * MIN - 1).is_empty());
        t += 10 * MIN;
        for _ in 0..6 {
            let e = a.tick(t);
            assert_eq!(e.len(), 1, "one step per period");
            assert_eq!(e[0].action, ActionKind::Recover);
            conns.push(a.connections(&k));
            t += 10 * MIN;
        }
        // +10 % of 10 connections per step: 5, 6, 7, 8, 9, back to the configured limit.
        assert_eq!(conns, [Some(5), Some(6), Some(7), Some(8), Some(9), None, None]);
        assert_eq!(a.view(&k), None, "recovered: no longer throttled");
    }

    /// Replies to mail sent before an action reflect the old limits: they hold recovery back
    /// but do not count towards another action; and a rule acts at most once per window.
    #[test]
    fn replies_to_mail_sent_before_an_action_do_not_count_towards_the_next() {
        let mut a = engine(&[GMAIL_RATE]);
        let k = key("ip1", "google");
        let r = reply("421 4.7.28 unusual rate");
        let mut s = scope(&k);
        for _ in 0..3 {
            a.observe(&s, &[&r], T0 + 1000);
        }
        assert_eq!(a.connections(&k), Some(5));
        for _ in 0..5 {
            assert!(a.observe(&s, &[&r], T0 + 2000).is_empty(), "sent before the action");
        }
        s.started = T0 + 1500;
        for _ in 0..3 {
            assert!(a.observe(&s, &[&r], T0 + 3000).is_empty(), "within the window of the action");
        }
        // A window after the action the threshold is still met: the rule acts again.
        let later = T0 + 1000 + 5 * MIN;
        s.started = later;
        assert_eq!(a.observe(&s, &[&r], later).len(), 1);
        assert_eq!(a.connections(&k), Some(2), "5 halved, rounded down");
    }

    #[test]
    fn suspension_holds_new_connections_until_it_ends() {
        let mut a = engine(&[
            "name = \"block\"\nmatch = { text = 'S3150' }\nthreshold = \"1/1h\"\nsuspend = \"30m\"\n",
        ]);
        let k = key("ip1", "mx.example");
        let e = a.observe(&scope(&k), &[&reply("550 5.7.1 blocked (S3150)")], T0);
        assert_eq!(e[0].action, ActionKind::Suspend);
        assert_eq!(e[0].until, Some(T0 + 30 * MIN));
        assert_eq!(a.suspended(&k, T0 + 30 * MIN - 1), Some((T0 + 30 * MIN, "block")));
        assert!(a.tick(T0 + 30 * MIN - 1).is_empty());
        let e = a.tick(T0 + 30 * MIN);
        assert_eq!((e[0].action, e[0].recovered), (ActionKind::Resume, true));
        assert_eq!(a.suspended(&k, T0 + 30 * MIN), None);
        assert_eq!(a.view(&k), None);
    }

    #[test]
    fn set_gives_limits_and_bounce_tenant_marks_the_tenant_and_site() {
        let mut a = engine(&[
            "name = \"ts\"\nmatch = { text = '\\[TS0[1-4]\\]' }\nthreshold = \"1/5m\"\nset = { connections = 2, rate = \"60/m\" }\nbounce_tenant = true\n",
        ]);
        let k = key("ip1", "yahoo");
        let e = a.observe(&scope(&k), &[&reply("421 4.7.0 [TS03] deferred")], T0);
        let kinds: Vec<_> = e.iter().map(|e| e.action).collect();
        assert_eq!(kinds, [ActionKind::Set, ActionKind::BounceTenant]);
        assert_eq!((a.connections(&k), a.rate(&k)), (Some(2), Some(1.0)));
        assert!(a.bounced("acme", "yahoo", T0 + 1).unwrap().contains("[TS03]"));
        assert_eq!(a.bounced("other", "yahoo", T0 + 1), None);
        assert_eq!(a.bounced("acme", "google", T0 + 1), None);
        a.tick(T0 + 5 * MIN);
        assert_eq!(a.bounced("acme", "yahoo", T0 + 5 * MIN), None, "for the rule's window");
    }

    #[test]
    fn rules_watch_their_site_or_mx_hosts() {
        let mut a = engine(&[
            "name = \"mx\"\nmx = [\"*.outlook.com\"]\nmatch = { code = '^4\\.7\\.650$' }\nthreshold = \"1/1m\"\nreduce = 0.5\n",
        ]);
        let r = reply("451 4.7.650 rate limited");
        let k = key("ip1", "other.example");
        let mut s = scope(&k);
        assert!(a.observe(&s, &[&r], T0).is_empty());
        s.mx_host = Some("eur.mail.protection.outlook.com.");
        assert_eq!(a.observe(&s, &[&r], T0).len(), 1);
        let set = key("ip1", "a.mail.protection.outlook.com,b.mail.protection.outlook.com");
        assert_eq!(a.observe(&scope(&set), &[&r], T0).len(), 1, "the MX set's hosts");
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        let bad =
            |t: &str| Rules::new(&[rule(t)], false, &|s| s == "google").unwrap_err().to_string();
        let base = "name = \"x\"\nmatch = { code = '^4' }\nthreshold = \"1/1m\"\n";
        assert!(bad(base).contains("no action"), "{}", bad(base));
        assert!(bad(&format!("{base}reduce = 1.5\n")).contains("between 0 and 1"));
        assert!(
            bad(&format!("{base}reduce = 0.5\nset = {{ connections = 1 }}\n")).contains("not both")
        );
        assert!(bad(&format!("{base}reduce = 0.5\nsite = \"nowhere\"\n")).contains("unknown site"));
        let pat = "name = \"x\"\nmatch = { text = '(' }\nthreshold = \"1/1m\"\nreduce = 0.5\n";
        assert!(bad(pat).contains("\"x\": bad match.text pattern"), "{}", bad(pat));
        let t: Result<Threshold, _> = "3".parse();
        assert!(t.is_err());
        assert_eq!("3/5m".parse(), Ok(Threshold { count: 3, window: Duration::from_secs(300) }));
    }

    /// Each shipped rule matches the real replies its fixture lists, and no other shipped rule
    /// matches them.
    #[test]
    fn shipped_rules_match_their_fixture_replies_and_no_others() {
        #[derive(Deserialize)]
        struct Case {
            rule: String,
            reply: String,
        }
        #[derive(Deserialize)]
        struct Corpus {
            case: Vec<Case>,
        }
        let corpus: Corpus =
            toml::from_str(include_str!("../../tests/fixtures/automation_corpus.toml")).unwrap();
        let sites = crate::egress::site::Sites::new(&[], true).unwrap();
        let rules = Rules::new(&[], true, &|s| sites.get(s).is_some()).unwrap();
        let names: Vec<String> = shipped().unwrap().into_iter().map(|r| r.name).collect();
        for name in &names {
            assert!(corpus.case.iter().any(|c| &c.rule == name), "no fixture for {name}");
        }
        for c in &corpus.case {
            let mut wire = bytes::BytesMut::from(c.reply.replace('\n', "\r\n").as_str());
            wire.extend_from_slice(b"\r\n");
            let r = crate::proto::smtp::client::parse_reply(&mut wire).unwrap().unwrap();
            assert_eq!(rules.matching(&r), [c.rule.as_str()], "{:?}", c.reply);
        }
    }
}
