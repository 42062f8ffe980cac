//! What POP3 and IMAP listeners share: their settings and the accept loop that admits
//! connections under the same limits as SMTP (sessions in all, per IP, connection rate).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthContext;
use crate::local::Mailboxes;
use crate::smtp::admission::ConnectionLimits;

/// One POP3 or IMAP listener's settings, shared by its sessions.
pub struct MailboxListener {
    /// Listener name for metrics and logs.
    pub name: String,
    pub hostname: String,
    pub tls: Option<Arc<crate::tls::ReloadableServer>>,
    /// TLS from the first byte (pop3s, imaps); otherwise STLS/STARTTLS when `tls` is set.
    pub implicit_tls: bool,
    /// Logins without TLS (`[auth] plaintext_on_loopback` on a loopback listener).
    pub plaintext_ok: bool,
    pub auth: Arc<AuthContext>,
    pub mailboxes: Arc<Mailboxes>,
    pub limits: Arc<ConnectionLimits>,
    /// The largest message IMAP APPEND takes (`[limits] max_message_size`).
    pub max_append: usize,
}

impl MailboxListener {
    /// Whether STLS/STARTTLS is offered.
    pub fn starttls(&self) -> bool {
        self.tls.is_some() && !self.implicit_tls
    }
}

/// Accepts until `shutdown`: each admitted connection runs `serve` on `tracker` (so a
/// graceful stop waits for it) and holds its admission until it ends; over a limit the client
/// gets `refusal` at once. `sessions` counts connections per listener.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    ctx: Arc<MailboxListener>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    sessions: &'static prometheus::IntCounterVec,
    refusal: &'static [u8],
    serve: F,
) where
    F: Fn(TcpStream, IpAddr, Arc<MailboxListener>, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, peer)) = accepted else {
            // EMFILE and friends: wait a little instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ip = peer.ip().to_canonical();
        sessions.with_label_values(&[&ctx.name]).inc();
        match ctx.limits.admit(ip) {
            Ok(admission) => {
                let _ = stream.set_nodelay(true);
                let session = serve(stream, ip, ctx.clone(), shutdown.clone());
                tracker.spawn(async move {
                    session.await;
                    drop(admission);
                });
            }
            Err(_) => {
                let _ = stream.write_all(refusal).await;
            }
        }
    }
}
