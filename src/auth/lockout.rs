//! Brute-force protection for AUTH: each failure from a client IP makes its next `535` wait
//! longer; too many failures from one IP, or for one user name, lock them out for a while
//! (454 4.7.0). A lockout by IP does not stop the same user from another IP, so a guesser cannot
//! lock a real user out from everywhere unless the per-user limit (higher) is reached.

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
    /// The n-th failure from an IP waits n × this before 535 (at most 10 s).
    pub failure_delay: Duration,
}

#[derive(Default)]
struct Counts {
    ip: HashMap<IpAddr, (u32, Instant)>,
    user: HashMap<String, (u32, Instant)>,
}

pub struct Lockout {
    policy: LockoutPolicy,
    counts: Mutex<Counts>,
}

const MAX_DELAY: Duration = Duration::from_secs(10);
/// Entries kept per table; beyond it, expired ones are dropped first.
const MAX_ENTRIES: usize = 100_000;

impl Lockout {
    pub fn new(policy: LockoutPolicy) -> Self {
        Lockout { policy, counts: Mutex::new(Counts::default()) }
    }

    fn live(entry: Option<&(u32, Instant)>, window: Duration, now: Instant) -> u32 {
        entry.filter(|(_, t)| now.duration_since(*t) < window).map_or(0, |(n, _)| *n)
    }

    /// Whether this IP or this user is locked out now.
    pub fn is_locked(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let w = self.policy.window;
        Self::live(c.ip.get(&ip), w, now) >= self.policy.max_failures_per_ip
            || Self::live(c.user.get(user), w, now) >= self.policy.max_failures_per_user
    }

    /// Records a failure; returns how long to wait before answering 535.
    pub fn failure(&self, ip: IpAddr, user: &str, now: Instant) -> Duration {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let w = self.policy.window;
        for table_len in [c.ip.len(), c.user.len()] {
            if table_len >= MAX_ENTRIES {
                c.ip.retain(|_, (_, t)| now.duration_since(*t) < w);
                c.user.retain(|_, (_, t)| now.duration_since(*t) < w);
                break;
            }
        }
        let n_ip = Self::live(c.ip.get(&ip), w, now) + 1;
        c.ip.insert(ip, (n_ip, now));
        let n_user = Self::live(c.user.get(user), w, now) + 1;
        c.user.insert(user.to_string(), (n_user, now));
        (self.policy.failure_delay * n_ip).min(MAX_DELAY)
    }

    /// A successful login clears this IP's failures (not the user's: another IP may be guessing).
    pub fn success(&self, ip: IpAddr) {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).ip.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_the_ip_is_locked_but_not_the_user_elsewhere() {
        let l = Lockout::new(LockoutPolicy {
            max_failures_per_ip: 3,
            max_failures_per_user: 6,
            window: Duration::from_secs(60),
            failure_delay: Duration::from_millis(100),
        });
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        assert_eq!(l.failure(a, "app", t), Duration::from_millis(100));
        assert_eq!(l.failure(a, "app", t), Duration::from_millis(200));
        assert!(!l.is_locked(a, "app", t));
        l.failure(a, "app", t);
        assert!(l.is_locked(a, "app", t), "3 failures from one IP");
        assert!(!l.is_locked(b, "app", t), "the user can still log in from elsewhere");
        assert!(!l.is_locked(a, "app", t + Duration::from_secs(61)), "the window passes");
        for _ in 0..3 {
            l.failure(b, "app", t);
        }
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(l.is_locked(c, "app", t), "6 failures for one user, from anywhere");
        l.success(b);
        assert!(!l.is_locked(b, "other", t));
    }
}
