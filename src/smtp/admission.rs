//! Connection limits checked at accept time: sessions in all, sessions per IP, and new
//! connections per second per IP. An admitted connection holds an [`Admission`] for its life.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Session counts shared by all SMTP listeners.
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_ip_max: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per second per IP, with a burst of one minute's worth.
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// Trusted injectors (the relay networks, unless `[limits] exempt_relay_networks` is
    /// false): neither rate limited nor counted per IP, as Postfix exempts `$mynetworks`.
    exempt: Vec<ipnet::IpNet>,
}

/// Held by an admitted connection: its place under `max_sessions` and, unless its network is
/// exempt, under `max_sessions_per_ip`. Released on drop, which the connection does before its
/// final reply (221 or 421), so a client that reconnects at once finds its slot free.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    limits: Arc<ConnectionLimits>,
    /// None for exempt networks.
    ip: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut map = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// Why a connection was refused at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxSessions,
    MaxSessionsPerIp,
    ConnectionRate,
}

impl ConnectionLimits {
    pub fn new(
        max_sessions: usize,
        per_ip_max: usize,
        rate_per_second: f64,
        exempt: Vec<ipnet::IpNet>,
    ) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            total: Arc::new(Semaphore::new(max_sessions)),
            per_ip_max,
            per_ip: Mutex::new(HashMap::new()),
            rate: rate_per_second,
            buckets: Mutex::new(HashMap::new()),
            exempt,
        })
    }

    /// Token bucket per IP: refills at `rate`, holds a minute's worth.
    fn take_token(&self, ip: IpAddr, now: Instant) -> bool {
        let burst = (self.rate * 60.0).max(1.0);
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() > 100_000 {
            // Full buckets carry no information: drop them.
            b.retain(|_, (tokens, t)| {
                *tokens + now.duration_since(*t).as_secs_f64() * self.rate < burst
            });
        }
        let (tokens, last) = b.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let exempt = self.exempt.iter().any(|n| n.contains(&ip));
        if !exempt && !self.take_token(ip, Instant::now()) {
            return Err(Refusal::ConnectionRate);
        }
        let permit = self.total.clone().try_acquire_owned().map_err(|_| Refusal::MaxSessions)?;
        if exempt {
            return Ok(Admission { _permit: permit, limits: self.clone(), ip: None });
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= self.per_ip_max {
            return Err(Refusal::MaxSessionsPerIp);
        }
        *n += 1;
        Ok(Admission { _permit: permit, limits: self.clone(), ip: Some(ip) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn connection_rate_per_ip_allows_a_minute_of_burst_then_refills() {
        let l = ConnectionLimits::new(100, 100, 1.0, vec!["10.0.0.0/8".parse().unwrap()]); // 60/m
        let trusted: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..100 {
            drop(l.admit(trusted).unwrap());
        }
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..60 {
            assert!(l.take_token(a, t));
        }
        assert!(!l.take_token(a, t), "burst spent");
        assert!(l.take_token(b, t), "other IPs are not affected");
        assert!(l.take_token(a, t + Duration::from_secs(1)), "one per second comes back");
        assert!(!l.take_token(a, t + Duration::from_secs(1)));
    }
}
