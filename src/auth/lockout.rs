//! Brute-force protection for AUTH.
//!
//! - Per client IP: each failure makes the next `535` wait longer, and `max_failures_per_ip`
//!   failures lock the IP out for `window` (454 4.7.0). An attempt is *reserved* before the
//!   password is checked, so 60 simultaneous guesses from one IP get at most
//!   `max_failures_per_ip` verifications, not 60. A success does not clear the IP's failures: an
//!   attacker's own valid account must not reset the count for its guesses at others.
//! - Per user name: failures slow that user's logins down (a growing delay, as Dovecot's auth
//!   penalty) but do not lock the name out unless `lock_users` is set: otherwise anyone could lock
//!   any named user out for `window` from many IPs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LockoutPolicy {
    pub max_failures_per_ip: u32,
    pub max_failures_per_user: u32,
    /// Failures are forgotten, and lockouts end, after this long.
    pub window: Duration,
    /// The n-th failure from an IP (or for a user) waits n x this before 535 (at most 10 s).
    pub failure_delay: Duration,
    /// Lock a user name out after `max_failures_per_user` failures (default: only slow it down).
    pub lock_users: bool,
}

#[derive(Default)]
struct Counts {
    /// Failures in the window, when the last one was, and attempts being verified now.
    ip: HashMap<IpAddr, (u32, Instant, u32)>,
    user: HashMap<String, (u32, Instant)>,
    /// Log lines about failed logins per client: when its minute began, lines written in it,
    /// and lines left out since the last one written.
    logs: HashMap<IpAddr, (Instant, u32, u64)>,
}

pub struct Lockout {
    policy: LockoutPolicy,
    counts: Mutex<Counts>,
}

const MAX_DELAY: Duration = Duration::from_secs(10);
/// Entries kept per table; beyond it, expired ones are dropped first.
const MAX_ENTRIES: usize = 100_000;
/// Failed-login log lines a client gets per [`LOG_PERIOD`]; the rest are counted, and the next
/// line written says how many were left out.
const LOG_BURST: u32 = 5;
const LOG_PERIOD: Duration = Duration::from_secs(60);

/// Why an attempt was not allowed.
#[derive(Debug, PartialEq, Eq)]
pub struct LockedOut;

/// A reserved attempt: counts against its IP until it is finished (or dropped, if the
/// connection went away mid-verification).
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    ip: IpAddr,
    user: String,
    open: bool,
}

impl Lockout {
    pub fn new(policy: LockoutPolicy) -> Self {
        Lockout { policy, counts: Mutex::new(Counts::default()) }
    }

    fn live(n: u32, t: Instant, window: Duration, now: Instant) -> u32 {
        if now.duration_since(t) < window { n } else { 0 }
    }

    /// Reserves an attempt, or refuses it: the IP's failures plus the attempts it has in flight
    /// reach the limit, or the user is locked (with `lock_users`).
    pub fn begin(&self, ip: IpAddr, user: &str, now: Instant) -> Result<Attempt<'_>, LockedOut> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let w = self.policy.window;
        if c.ip.len() >= MAX_ENTRIES || c.user.len() >= MAX_ENTRIES {
            c.ip.retain(|_, (_, t, busy)| *busy > 0 || now.duration_since(*t) < w);
            c.user.retain(|_, (_, t)| now.duration_since(*t) < w);
        }
        let user_failures = c.user.get(user).map_or(0, |&(n, t)| Self::live(n, t, w, now));
        if self.policy.lock_users && user_failures >= self.policy.max_failures_per_user {
            return Err(LockedOut);
        }
        let e = c.ip.entry(ip).or_insert((0, now, 0));
        let failures = Self::live(e.0, e.1, w, now);
        if failures + e.2 >= self.policy.max_failures_per_ip {
            return Err(LockedOut);
        }
        e.2 += 1;
        Ok(Attempt { lockout: self, ip, user: user.to_string(), open: true })
    }

    /// Whether a log line about this client's failed login may be written now: Some(the number
    /// left out before it), or None (left out, and counted). A client guessing passwords, or
    /// refused while locked out, cannot fill the log.
    pub fn log_allowed(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.logs.len() >= MAX_ENTRIES {
            c.logs.retain(|_, (t, _, _)| now.duration_since(*t) < LOG_PERIOD);
        }
        let e = c.logs.entry(ip).or_insert((now, 0, 0));
        if now.duration_since(e.0) >= LOG_PERIOD {
            (e.0, e.1) = (now, 0);
        }
        if e.1 >= LOG_BURST {
            e.2 += 1;
            return None;
        }
        e.1 += 1;
        Some(std::mem::take(&mut e.2))
    }

    /// Whether this IP (or, with `lock_users`, this user) is locked out now.
    pub fn is_locked(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        match self.begin(ip, user, now) {
            Ok(mut a) => {
                a.release();
                false
            }
            Err(LockedOut) => true,
        }
    }
}

impl Attempt<'_> {
    /// The password was right.
    pub fn succeeded(mut self) {
        self.release();
    }

    /// The password was wrong: records the failure; returns how long to wait before 535.
    pub fn failed(mut self, now: Instant) -> Duration {
        self.release();
        let l = self.lockout;
        let w = l.policy.window;
        let mut c = l.counts.lock().unwrap_or_else(|e| e.into_inner());
        let e = c.ip.entry(self.ip).or_insert((0, now, 0));
        let n_ip = Lockout::live(e.0, e.1, w, now) + 1;
        (e.0, e.1) = (n_ip, now);
        // An empty name (one too long to keep) counts against the client alone.
        let n_user = match self.user.is_empty() {
            true => 0,
            false => {
                let u = c.user.entry(std::mem::take(&mut self.user)).or_insert((0, now));
                let n = Lockout::live(u.0, u.1, w, now) + 1;
                *u = (n, now);
                n
            }
        };
        (l.policy.failure_delay * n_ip.max(n_user)).min(MAX_DELAY)
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.open) {
            let mut c = self.lockout.counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = c.ip.get_mut(&self.ip) {
                e.2 = e.2.saturating_sub(1);
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(lock_users: bool) -> LockoutPolicy {
        LockoutPolicy {
            max_failures_per_ip: 3,
            max_failures_per_user: 6,
            window: Duration::from_secs(60),
            failure_delay: Duration::from_millis(100),
            lock_users,
        }
    }

    #[test]
    fn delays_grow_then_the_ip_is_locked_but_not_the_user_elsewhere() {
        let l = Lockout::new(policy(false));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        assert_eq!(l.begin(a, "app", t).unwrap().failed(t), Duration::from_millis(100));
        assert_eq!(l.begin(a, "app", t).unwrap().failed(t), Duration::from_millis(200));
        assert!(!l.is_locked(a, "app", t));
        l.begin(a, "app", t).unwrap().failed(t);
        assert!(l.is_locked(a, "app", t), "3 failures from one IP");
        assert!(!l.is_locked(b, "app", t), "the user can still log in from elsewhere");
        assert!(!l.is_locked(a, "app", t + Duration::from_secs(61)), "the window passes");
        // Failures for one user from many IPs slow it down, but never lock it out by default.
        for i in 0..10u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            l.begin(ip, "victim", t).unwrap().failed(t);
        }
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(!l.is_locked(c, "victim", t), "a named user cannot be locked out by others");
        assert_eq!(
            l.begin(c, "victim", t).unwrap().failed(t),
            MAX_DELAY.min(Duration::from_millis(1100))
        );
        // With lock_users, it is.
        let l = Lockout::new(policy(true));
        for i in 0..6u8 {
            l.begin(IpAddr::from([198, 51, 100, i]), "app", t).unwrap().failed(t);
        }
        assert!(l.is_locked(c, "app", t), "6 failures for one user, from anywhere");
    }

    /// Attempts are reserved before the (slow) password check: simultaneous guesses from one IP
    /// get at most `max_failures_per_ip` checks, and a success does not reset the IP's failures.
    #[test]
    fn concurrent_attempts_are_reserved_and_a_success_does_not_reset_the_ip() {
        let l = Lockout::new(policy(false));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        let held: Vec<Attempt<'_>> = (0..60).filter_map(|_| l.begin(ip, "x", t).ok()).collect();
        assert_eq!(held.len(), 3, "60 simultaneous attempts, 3 verified");
        drop(held); // connections gone mid-check: the reservations are returned
        l.begin(ip, "x", t).unwrap().failed(t);
        l.begin(ip, "x", t).unwrap().failed(t);
        l.begin(ip, "mine", t).unwrap().succeeded();
        l.begin(ip, "x", t).unwrap().failed(t);
        assert!(l.is_locked(ip, "x", t), "the success did not reset the count");
    }

    #[test]
    fn failed_login_log_lines_are_limited_per_client() {
        let l = Lockout::new(policy(false));
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        let written: Vec<Option<u64>> = (0..8).map(|_| l.log_allowed(a, t)).collect();
        assert_eq!(written, [Some(0), Some(0), Some(0), Some(0), Some(0), None, None, None]);
        assert_eq!(l.log_allowed(b, t), Some(0), "another client has its own");
        // The next minute: the first line says how many were left out.
        assert_eq!(l.log_allowed(a, t + LOG_PERIOD), Some(3));
        assert_eq!(l.log_allowed(a, t + LOG_PERIOD), Some(0));
    }
}
