//! The one accept loop every listener runs (SMTP, IMAP, POP3, admin HTTP, unsubscribe
//! HTTPS): accept with a back-off when the process is out of descriptors, the PROXY header
//! when the listener has `proxy_protocol = true`, then the listener's own handler, on the
//! session tracker so a graceful stop waits for it. Admission (caps per IP and in all, the
//! connection rate) is the handler's first step, so it counts the address the PROXY header
//! carried, not the balancer's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::proxy::ProxyPolicy;
use crate::metrics;

/// Accepts on `listener` until `stop`. Each connection's handler gets the stream and the
/// client's address: the peer's, or for a PROXY listener the one its header carried (a
/// connection without a valid header from a `proxy_networks` peer is closed and logged).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    name: String,
    proxy: Option<Arc<ProxyPolicy>>,
    stop: CancellationToken,
    tracker: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(policy) = &proxy else {
            tracker.spawn(handle(stream, peer));
            continue;
        };
        let (policy, handle, name) = (policy.clone(), handle.clone(), name.clone());
        tracker.spawn(async move {
            match policy.client(&mut stream, peer).await {
                Ok(client) => handle(stream, client).await,
                Err(e) => {
                    metrics::PROXY_REFUSED.with_label_values(&[&name, e.label()]).inc();
                    tracing::warn!(listener = %name, %peer, error = %e, "connection closed");
                }
            }
        });
    }
}
