//! Accept loop with connection limits: over a limit the client gets `421` at once and the accept
//! loop never blocks (RFC 5321 3.8: a server may refuse with 421 when it cannot serve).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

impl ConnectionLimits {
    pub fn new(max_sessions: usize, per_ip_max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            total: Arc::new(Semaphore::new(max_sessions)),
            per_ip_max,
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(OwnedSemaphorePermit, IpSlot), Refusal> {
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
