//! Sending quotas of tenants and users: messages per hour, recipients per day and a rate. Each
//! is a GCRA (a leaky bucket): `max_messages_per_hour = N` lets N messages go at once and then
//! one every hour/N, so no hour holds more than about N and there is no window edge where 2N
//! pass. A message counts once it is stored; the checks come before a transaction starts (SMTP
//! MAIL and RCPT, an HTTP request), so concurrent transactions of one subject can pass a limit
//! by at most the messages they carry.
//!
//! The counters live in `<data_dir>/quotas.json`, written atomically (temporary file, fsync,
//! rename, directory fsync) every second when they changed and at shutdown: a restart keeps
//! them, and a crash forgets at most the last second of counting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The limits of one tenant or user (None: no limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub max_messages_per_hour: Option<u64>,
    pub max_recipients_per_day: Option<u64>,
    /// Messages per second (GCRA; bursts of up to one second's worth, at least one message).
    pub rate: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// `[tenant.NAME]`: a tenant's sending limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub max_messages_per_hour: Option<u64>,
    pub max_recipients_per_day: Option<u64>,
    /// Messages per interval, as `[shaping]` (`"10/s"`, `"600/m"`).
    pub rate: Option<String>,
    /// SMTP sessions authenticated as the tenant's users open at once.
    pub max_sessions: Option<usize>,
    /// The egress pool the tenant's mail leaves from (unless its injection names one).
    pub pool: Option<String>,
    /// Its share of each destination's turns against other tenants' (default 1).
    pub weight: Option<u32>,
    /// `transactional` (ahead of bulk) or `bulk` (the default), unless a message says.
    pub priority: Option<String>,
    /// `[tenant.NAME.circuit_breaker]`: replaces `[circuit_breaker]` for the tenant and its
    /// campaigns.
    pub circuit_breaker: Option<crate::shaping::breaker::BreakerConfig>,
}

impl TenantConfig {
    /// The limits, or why the rate does not parse.
    pub fn limits(&self) -> Result<Limits, String> {
        Ok(Limits {
            max_messages_per_hour: self.max_messages_per_hour,
            max_recipients_per_day: self.max_recipients_per_day,
            rate: self.rate.as_deref().map(crate::rate::parse_rate).transpose()?,
        })
    }
}

/// A limit that was reached: whose, which, and when there is room again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{who}: {what} reached (try again in {retry_after} s)")]
pub struct Exceeded {
    /// `tenant acme` or `user app@example.com`.
    pub who: String,
    /// `100 messages per hour`, `1000 recipients per day`, `rate 10/s`.
    pub what: String,
    /// The limit's key, the `limit` label of `sluice_quota_refused_total`.
    pub limit: &'static str,
    /// Seconds until the limit lets this through.
    pub retry_after: u64,
}

/// When each bucket of one subject is empty again (theoretical arrival times, unix seconds).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Counter {
    messages: f64,
    recipients: f64,
}

/// Whether `n` more fit a bucket of `max` per `window` seconds whose TAT is `tat`; if not, the
/// seconds until they do.
fn bucket(tat: f64, n: u64, max: u64, window: f64, now: f64) -> Result<f64, u64> {
    let next = tat.max(now) + n as f64 * window / max.max(1) as f64;
    if next <= now + window { Ok(next) } else { Err((next - now - window).ceil() as u64) }
}

#[derive(Default)]
struct State {
    counters: HashMap<String, Counter>,
    /// GCRA theoretical arrival time per subject, unix seconds (not saved: a rate is short).
    tat: HashMap<String, f64>,
    dirty: bool,
}

/// The counters of every subject with limits.
pub struct Quotas {
    path: PathBuf,
    state: Mutex<State>,
}

/// One subject of a check: its key (`tenant acme`, `user bob`) and limits.
pub type Subject<'a> = (&'a str, &'a Limits);

impl Quotas {
    /// The counters saved in `path`; an unreadable file is logged and counting starts again
    /// (a damaged counter file must not stop mail).
    pub fn open(path: &Path) -> Quotas {
        let counters = crate::state_file::read_json(path, "quota counters");
        let state = State { counters, ..State::default() };
        Quotas { path: path.to_path_buf(), state: Mutex::new(state) }
    }

    /// Whether `messages` more messages with `recipients` recipients fit every subject's
    /// limits at `now` (unix seconds); the rate is consumed when they do.
    pub fn check(
        &self,
        subjects: &[Subject<'_>],
        messages: u64,
        recipients: u64,
        now: f64,
    ) -> Result<(), Exceeded> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (who, limits) in subjects {
            let c = st.counters.get(*who).copied().unwrap_or_default();
            let over = |what: String, limit: &'static str, retry_after: u64| {
                Err(Exceeded { who: who.to_string(), what, limit, retry_after: retry_after.max(1) })
            };
            if let Some(max) = limits.max_messages_per_hour.filter(|_| messages > 0)
                && let Err(wait) = bucket(c.messages, messages, max, 3600.0, now)
            {
                return over(format!("{max} messages per hour"), "max_messages_per_hour", wait);
            }
            if let Some(max) = limits.max_recipients_per_day.filter(|_| recipients > 0)
                && let Err(wait) = bucket(c.recipients, recipients, max, 86_400.0, now)
            {
                return over(format!("{max} recipients per day"), "max_recipients_per_day", wait);
            }
            if let Some(rate) = limits.rate
                && messages > 0
            {
                let tolerance = (rate.floor().max(1.0) - 1.0) / rate;
                let tat = st.tat.get(*who).copied().unwrap_or(now).max(now);
                if tat > now + tolerance {
                    let wait = (tat - tolerance - now).ceil() as u64;
                    return over(format!("rate {rate}/s"), "rate", wait);
                }
            }
        }
        for (who, limits) in subjects {
            if let Some(rate) = limits.rate.filter(|_| messages > 0) {
                let tat = st.tat.get(*who).copied().unwrap_or(now).max(now);
                st.tat.insert(who.to_string(), tat + messages as f64 / rate);
            }
        }
        Ok(())
    }

    /// Counts stored messages for `subjects` at `now` (unix seconds).
    pub fn record(&self, subjects: &[Subject<'_>], messages: u64, recipients: u64, now: f64) {
        if subjects.is_empty() {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (who, limits) in subjects {
            let c = st.counters.entry(who.to_string()).or_default();
            if let Some(max) = limits.max_messages_per_hour {
                c.messages = c.messages.max(now) + messages as f64 * 3600.0 / max.max(1) as f64;
            }
            if let Some(max) = limits.max_recipients_per_day {
                c.recipients =
                    c.recipients.max(now) + recipients as f64 * 86_400.0 / max.max(1) as f64;
            }
        }
        st.dirty = true;
    }

    /// Writes the counters if they changed (atomically, durably); old windows are dropped.
    pub fn save(&self) -> std::io::Result<()> {
        let text = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            // An empty bucket is the same as no entry.
            let now = crate::spool::unix_millis() as f64 / 1000.0;
            st.counters.retain(|_, c| c.messages > now || c.recipients > now);
            serde_json::to_vec(&st.counters).map_err(std::io::Error::other)?
        };
        crate::state_file::write_atomic(&self.path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(hour: Option<u64>, day: Option<u64>, rate: Option<f64>) -> Limits {
        Limits { max_messages_per_hour: hour, max_recipients_per_day: day, rate }
    }

    #[test]
    fn n_messages_per_hour_go_at_once_then_one_every_hour_over_n() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quotas::open(&dir.path().join("q.json"));
        let l = limits(Some(2), None, None);
        let t = 1_000_000.0;
        for _ in 0..2 {
            q.check(&[("tenant a", &l)], 1, 1, t).unwrap();
            q.record(&[("tenant a", &l)], 1, 1, t);
        }
        let e = q.check(&[("tenant a", &l)], 1, 1, t + 10.0).unwrap_err();
        assert_eq!((e.what.as_str(), e.retry_after), ("2 messages per hour", 1790));
        q.check(&[("tenant b", &l)], 1, 1, t).unwrap();
        q.check(&[("tenant a", &l)], 1, 1, t + 1800.0).unwrap();
        assert!(q.check(&[("tenant a", &l)], 2, 2, t + 1800.0).is_err());
    }

    #[test]
    fn recipients_per_day_count_every_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quotas::open(&dir.path().join("q.json"));
        let l = limits(None, Some(5), None);
        q.record(&[("user u", &l)], 1, 4, 1000.0);
        q.check(&[("user u", &l)], 0, 1, 1000.0).unwrap();
        let e = q.check(&[("user u", &l)], 0, 2, 1000.0).unwrap_err();
        assert_eq!(e.retry_after, 86_400 / 5);
        q.check(&[("user u", &l)], 0, 5, 1000.0 + 86_400.0).unwrap();
    }

    #[test]
    fn the_rate_allows_a_second_of_burst_then_paces() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quotas::open(&dir.path().join("q.json"));
        let l = limits(None, None, Some(2.0));
        q.check(&[("t", &l)], 1, 1, 0.0).unwrap();
        q.check(&[("t", &l)], 1, 1, 0.0).unwrap();
        let e = q.check(&[("t", &l)], 1, 1, 0.0).unwrap_err();
        assert_eq!(e.retry_after, 1);
        q.check(&[("t", &l)], 1, 1, 0.5).unwrap();
    }

    #[test]
    fn counters_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.json");
        let now = crate::spool::unix_millis() as f64 / 1000.0;
        let q = Quotas::open(&path);
        let l = limits(Some(3), None, None);
        q.record(&[("tenant a", &l)], 3, 3, now);
        q.save().unwrap();
        assert!(Quotas::open(&path).check(&[("tenant a", &l)], 1, 1, now).is_err());
        std::fs::write(&path, b"garbage").unwrap();
        Quotas::open(&path).check(&[("tenant a", &l)], 1, 1, now).unwrap();
    }
}
