//! Accept loop with connection limits: over a limit the client gets `421` at once and the accept
//! loop never blocks (RFC 5321 3.8: a server may refuse with 421 when it cannot serve).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ListenerContext, conn};
use crate::metrics;
use crate::proto::smtp::reply;

/// Session counts shared by all SMTP listeners.
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_ip_max: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per second per IP, with a burst of one minute's worth.
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// Trusted injectors (the relay networks) are not rate limited.
    exempt: Vec<ipnet::IpNet>,
}

/// Held by a connection; releases its per-IP slot on drop.
pub struct IpSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
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

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(OwnedSemaphorePermit, IpSlot), Refusal> {
        if !self.exempt.iter().any(|n| n.contains(&ip)) && !self.take_token(ip, Instant::now()) {
            return Err(Refusal::ConnectionRate);
        }
        let permit = self.total.clone().try_acquire_owned().map_err(|_| Refusal::MaxSessions)?;
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= self.per_ip_max {
            return Err(Refusal::MaxSessionsPerIp);
        }
        *n += 1;
        Ok((permit, IpSlot { limits: self.clone(), ip }))
    }
}

/// Accepts until `shutdown`; every session runs on `tracker` so a graceful stop can wait for it.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        metrics::SMTP_CONNECTIONS.with_label_values(&[&ctx.name]).inc();
        match ctx.limits.admit(ip) {
            Ok((permit, slot)) => {
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    conn::run(stream, ip, ctx, shutdown).await;
                    drop((permit, slot));
                });
            }
            Err(why) => {
                let (label, r) = match why {
                    Refusal::MaxSessions => ("max_sessions", reply::TOO_MANY_SESSIONS),
                    Refusal::MaxSessionsPerIp => {
                        ("max_sessions_per_ip", reply::TOO_MANY_SESSIONS_IP)
                    }
                    Refusal::ConnectionRate => ("connection_rate", reply::CONNECTION_RATE),
                };
                metrics::SMTP_CONNECTIONS_REFUSED.with_label_values(&[label]).inc();
                tracing::debug!(%ip, reason = label, "connection refused");
                tracker.spawn(refuse(stream, r));
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, r: reply::Reply) {
    let mut out = bytes::BytesMut::new();
    r.encode(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
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
