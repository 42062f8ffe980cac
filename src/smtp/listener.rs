//! Accept loop: over a connection limit the client gets `421` at once and the accept loop
//! never blocks (RFC 5321 3.8: a server may refuse with 421 when it cannot serve).

use std::net::IpAddr;
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

/// Accepts until `shutdown` (`net::accept`); every session runs on `tracker` so a graceful
/// stop can wait for it.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let (name, proxy, stop) = (ctx.name.clone(), ctx.proxy.clone(), shutdown.clone());
    crate::net::accept::serve(listener, name, proxy, shutdown, tracker, move |stream, peer| {
        session(stream, peer.ip().to_canonical(), ctx.clone(), stop.clone())
    })
    .await
}

/// Admits the client at `ip` and serves its session, or refuses it with 421.
async fn session(
    stream: TcpStream,
    ip: IpAddr,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
) {
    metrics::SMTP_CONNECTIONS.with_label_values(&[&ctx.name]).inc();
    metrics::SESSIONS.with_label_values(&["smtp", &ctx.name]).inc();
    match ctx.limits.admit(ip) {
        Ok(admission) => conn::run(stream, ip, ctx, shutdown, admission).await,
        Err(why) => {
            let (label, r) = match why {
                Refusal::MaxSessions => ("max_sessions", reply::TOO_MANY_SESSIONS),
                Refusal::MaxSessionsPerIp => ("max_sessions_per_ip", reply::TOO_MANY_SESSIONS_IP),
                Refusal::ConnectionRate => ("connection_rate", reply::CONNECTION_RATE),
            };
            metrics::SMTP_CONNECTIONS_REFUSED.with_label_values(&[label]).inc();
            tracing::debug!(%ip, reason = label, "connection refused");
            refuse(stream, r).await;
        }
    }
}

async fn refuse(mut stream: TcpStream, r: reply::Reply) {
    let mut out = bytes::BytesMut::new();
    r.encode(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}
