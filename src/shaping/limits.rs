//! Per-destination traffic shaping: how many connections, how many messages each carries, how
//! fast messages may go (GCRA), and how long to back off when the destination is unreachable.
//! Settings come from `[shaping.default]`, overridden by the first `[[shaping.rule]]` whose
//! `match` pattern fits the destination (a recipient domain for MX, the host of a smart host).

use std::time::{Duration, Instant};

use crate::domain::pattern_matches as matches;
pub use crate::rate::Gcra;
use crate::units::{duration, opt_duration, rate};
use serde::Deserialize;

/// The effective limits for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub connections: usize,
    pub messages_per_connection: usize,
    /// Messages per second; None = unlimited.
    pub rate: Option<f64>,
    /// How long an idle connection waits for more work before QUIT.
    pub idle_timeout: Duration,
}

impl Limits {
    /// Limits for destination `name` and mail of `tenant`: `[shaping.default]` under the first
    /// rule whose `match` fits the destination and whose `tenants` (if any) name the tenant.
    pub fn for_destination(cfg: &ShapingConfig, name: &str, tenant: Option<&str>) -> Limits {
        let d = &cfg.default;
        let mut l = Limits {
            connections: d.connections,
            messages_per_connection: d.messages_per_connection,
            rate: d.rate,
            idle_timeout: d.idle_timeout,
        };
        let name = crate::domain::normalize(name);
        let fits = |r: &&ShapingRule| {
            r.patterns.iter().any(|p| matches(p, &name))
                && (r.tenants.is_empty()
                    || tenant.is_some_and(|t| r.tenants.iter().any(|x| x == t)))
        };
        if let Some(r) = cfg.rule.iter().find(fits) {
            l.connections = r.connections.unwrap_or(l.connections);
            l.messages_per_connection =
                r.messages_per_connection.unwrap_or(l.messages_per_connection);
            l.rate = r.rate.or(l.rate);
            l.idle_timeout = r.idle_timeout.unwrap_or(l.idle_timeout);
        }
        l
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingConfig {
    #[serde(default)]
    pub default: ShapingParams,
    /// Overrides; the first rule whose `match` fits the destination wins.
    #[serde(default)]
    pub rule: Vec<ShapingRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingParams {
    /// Connections open at once to one destination.
    #[serde(default = "default_shaping_connections")]
    pub connections: usize,
    /// Messages sent over one connection before it is closed.
    #[serde(default = "default_messages_per_connection")]
    pub messages_per_connection: usize,
    /// Messages per second to the destination ("100/s", "6000/m"); absent = unlimited.
    #[serde(default, deserialize_with = "rate")]
    pub rate: Option<f64>,
    /// How long an idle connection waits for more mail before QUIT.
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingRule {
    /// Destination patterns: a domain, "*.example.org" or "*" (the default).
    #[serde(rename = "match", default = "every_destination")]
    pub patterns: Vec<String>,
    /// Only for mail of these tenants (HTTP injection's `tenant`), which then gets connections
    /// and a rate of its own to each destination. Empty: all mail.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Each setting left out is taken from `[shaping.default]`.
    pub connections: Option<usize>,
    pub messages_per_connection: Option<usize>,
    #[serde(default, deserialize_with = "rate")]
    pub rate: Option<f64>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
}

fn every_destination() -> Vec<String> {
    vec!["*".into()]
}

fn default_shaping_connections() -> usize {
    10
}

fn default_messages_per_connection() -> usize {
    100
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(2)
}

crate::units::default_from_serde!(ShapingParams);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_rules_apply_to_their_tenants_only() {
        let cfg: crate::config::Config = toml::from_str(
            "[shaping.default]\nconnections = 10\n\
             [[shaping.rule]]\ntenants = [\"acme\"]\nconnections = 2\n\
             [[shaping.rule]]\nmatch = [\"gmail.com\"]\nconnections = 5\n",
        )
        .unwrap();
        let c = |name: &str, tenant: Option<&str>| {
            Limits::for_destination(&cfg.shaping, name, tenant).connections
        };
        assert_eq!(c("gmail.com", Some("acme")), 2, "first match wins");
        assert_eq!(c("example.org", Some("acme")), 2, "no match = every destination");
        assert_eq!(c("gmail.com", Some("other")), 5);
        assert_eq!(c("gmail.com", None), 5);
        assert_eq!(c("example.org", None), 10);
    }

    #[test]
    fn gcra_spaces_messages_evenly() {
        let mut g = Gcra::new(10.0);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..5).map(|_| g.reserve(t0)).collect();
        assert_eq!(waits[0], Duration::ZERO);
        assert_eq!(waits[4], Duration::from_millis(400));
        // After an idle period no credit accumulates (no burst).
        let later = t0 + Duration::from_secs(10);
        assert_eq!(g.reserve(later), Duration::ZERO);
        assert_eq!(g.reserve(later), Duration::from_millis(100));
    }
}

/// Back-off of one destination that refuses, drops or times out: a pause that doubles with each
/// failure (1 s up to `max`), and fewer connections (the limit halves per level, down to 1).
/// Success steps back one level at a time, so a recovering destination is ramped up gradually
/// rather than hit with every connection at once.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    until: Option<Instant>,
    pause: Duration,
    level: u32,
}

const MAX_LEVEL: u32 = 4;

impl Backoff {
    /// Records a failure; returns the pause before the next connection. Failures during a pause
    /// belong to the same incident (every open connection of a destination that went down
    /// reports it): they do not escalate the back-off again.
    pub fn failed(&mut self, now: Instant, max: Duration) -> Duration {
        if let Some(until) = self.until.filter(|&u| now < u) {
            return until - now;
        }
        self.pause = (self.pause * 2).clamp(Duration::from_secs(1), max);
        self.until = Some(now + self.pause);
        self.level = (self.level + 1).min(MAX_LEVEL);
        self.pause
    }

    /// A connection worked: no pause, one level less.
    pub fn succeeded(&mut self) {
        self.until = None;
        self.level = self.level.saturating_sub(1);
        self.pause = if self.level == 0 { Duration::ZERO } else { self.pause / 2 };
    }

    pub fn paused(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now < t)
    }

    /// What is left of the pause, if any.
    pub fn pause_left(&self, now: Instant) -> Option<Duration> {
        self.until.and_then(|t| t.checked_duration_since(now)).filter(|d| !d.is_zero())
    }

    /// The back-off level (0: none; each level halves the connection limit).
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The connection limit to use now, given the configured one.
    pub fn connection_limit(&self, configured: usize) -> usize {
        (configured >> self.level).max(1)
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn pauses_double_connections_halve_and_recovery_is_gradual() {
        let max = Duration::from_secs(300);
        let t = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.connection_limit(20), 20);
        assert_eq!(b.failed(t, max), Duration::from_secs(1));
        assert!(b.paused(t) && !b.paused(t + Duration::from_secs(1)));
        assert_eq!(b.connection_limit(20), 10);
        // Twenty connections reporting the same outage: still one step.
        for _ in 0..20 {
            b.failed(t, max);
        }
        assert_eq!(b.connection_limit(20), 10);
        let mut t = t + Duration::from_secs(1);
        assert_eq!(b.failed(t, max), Duration::from_secs(2));
        assert_eq!(b.connection_limit(20), 5);
        for _ in 0..20 {
            t += Duration::from_secs(301);
            b.failed(t, max);
        }
        t += Duration::from_secs(301);
        assert_eq!(b.failed(t, max), max, "capped");
        assert_eq!(b.connection_limit(20), 1, "never below one");
        b.succeeded();
        assert!(!b.paused(t));
        assert_eq!(b.connection_limit(20), 2, "one level at a time");
        for _ in 0..3 {
            b.succeeded();
        }
        assert_eq!(b.connection_limit(20), 20);
    }
}
