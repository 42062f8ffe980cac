//! Accept loop: over a connection limit the client gets `421` at once and the accept loop
//! never blocks (RFC 5321 3.8: a server may refuse with 421 when it cannot serve).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::Refusal;
use super::{ListenerContext, conn};
use crate::metrics;
use crate::proto::smtp::reply;

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
            Ok(admission) => {
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                let _ = stream.set_nodelay(true);
                tracker.spawn(conn::run(stream, ip, ctx, shutdown, admission));
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
