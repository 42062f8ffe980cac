//! Serving an axum router over HTTP/1.1 (plain or TLS) with the limits every listener needs,
//! which `axum::serve` does not set: a cap on connections in all and per client address, a
//! TLS handshake deadline, a deadline for each request's header (hyper's, from the first
//! byte of a connection), and an idle deadline for reads and writes, so a client that opens
//! connections and sends nothing, or stops reading, holds neither a task nor a descriptor for
//! long. Used by the admin API and the one-click unsubscribe endpoint.
//!
//! Not here: routing and authorisation (the routers), HTTP/2.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::proxy::ProxyPolicy;
use crate::metrics;
use crate::tls::ReloadableServer;
use crate::units::duration;
use serde::Deserialize;

/// Connections open now, in all and by client address, for one listener.
#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// A slot among a listener's connections, given back when the connection ends.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Slot {
    /// A slot for `ip`, or None when the listener or the client is at its cap.
    fn take(open: &Arc<Mutex<Open>>, ip: IpAddr, cfg: &HttpConfig) -> Option<Slot> {
        let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = o.by_ip.get(&ip).copied().unwrap_or(0);
        if o.total >= cfg.max_connections || mine >= cfg.max_connections_per_ip {
            return None;
        }
        o.total += 1;
        *o.by_ip.entry(ip).or_insert(0) += 1;
        Some(Slot { open: open.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `stop` (`net::accept`); then open connections finish
/// their request (graceful), within `tracker`'s wait. `name` labels logs and metrics.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    proxy: Option<Arc<ProxyPolicy>>,
    tls: Option<Arc<ReloadableServer>>,
    router: Router,
    cfg: HttpConfig,
    name: &'static str,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    let conn_stop = stop.clone();
    super::accept::serve(listener, name.into(), proxy, stop, tracker, move |sock, peer| {
        let slot = Slot::take(&open, peer.ip().to_canonical(), &cfg);
        let (tls, router, cfg, stop) =
            (tls.clone(), router.clone(), cfg.clone(), conn_stop.clone());
        async move {
            let Some(_slot) = slot else {
                metrics::HTTP_REFUSED.with_label_values(&[name]).inc();
                // Closed at once: the descriptor goes back now, whatever the client does.
                return;
            };
            match tls {
                None => connection(sock, peer, router, &cfg, stop).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    let hs = tokio::time::timeout(cfg.tls_handshake_timeout, acceptor.accept(sock));
                    if let Ok(Ok(stream)) = hs.await {
                        connection(stream, peer, router, &cfg, stop).await;
                    }
                }
            }
        }
    })
    .await
}

/// One connection: hyper's HTTP/1.1 server with the header deadline, over the stream with
/// the idle deadline; the client's address reaches handlers as axum's `ConnectInfo`.
async fn connection<S>(
    io: S,
    peer: SocketAddr,
    router: Router,
    cfg: &HttpConfig,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut io = tokio_io_timeout::TimeoutStream::new(io);
    io.set_read_timeout(Some(cfg.idle_timeout));
    io.set_write_timeout(Some(cfg.idle_timeout));
    let io = TokioIo::new(Box::pin(io));
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        use tower::ServiceExt;
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(cfg.header_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(cfg.idle_timeout, conn).await;
        }
    }
}

/// `[http]`: what each HTTP listener (admin, unsubscribe) allows; each keeps its own counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// A request's header must arrive within this, from the connection's first byte.
    #[serde(default = "default_http_header_timeout", deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// A connection that reads or writes nothing for this long is closed (keep-alive too).
    #[serde(default = "default_http_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// The TLS handshake of the unsubscribe endpoint must end within this.
    #[serde(default = "default_http_header_timeout", deserialize_with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Connections open at once per listener; more are closed at accept.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Connections open at once per client address per listener.
    #[serde(default = "default_http_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: default_http_header_timeout(),
            idle_timeout: default_http_idle_timeout(),
            tls_handshake_timeout: default_http_header_timeout(),
            max_connections: default_http_max_connections(),
            max_connections_per_ip: default_http_max_connections_per_ip(),
        }
    }
}

fn default_http_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_http_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_http_max_connections() -> usize {
    256
}

fn default_http_max_connections_per_ip() -> usize {
    32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(total: usize, per_ip: usize) -> HttpConfig {
        HttpConfig {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..HttpConfig::default()
        }
    }

    #[test]
    fn slots_are_capped_in_all_and_per_client_and_given_back() {
        let open = Arc::new(Mutex::new(Open::default()));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let c = cfg(3, 2);
        let a1 = Slot::take(&open, a, &c).unwrap();
        let _a2 = Slot::take(&open, a, &c).unwrap();
        assert!(Slot::take(&open, a, &c).is_none(), "per client");
        let _b1 = Slot::take(&open, b, &c).unwrap();
        assert!(Slot::take(&open, b, &c).is_none(), "in all");
        drop(a1);
        assert!(Slot::take(&open, b, &c).is_some(), "given back");
        assert_eq!(open.lock().unwrap().by_ip.get(&a), Some(&1));
    }
}
