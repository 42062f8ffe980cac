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

/// A client must log in within this long of connecting, however it spaces its commands: a
/// slowloris that never logs in holds a session no longer (Dovecot's login processes allow 3
/// minutes too).
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(180);

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
    /// Folders per user (`[local] max_folders`).
    pub max_folders: usize,
    /// PROXY protocol (`proxy_protocol`, `proxy_networks`).
    pub proxy: Option<Arc<crate::net::proxy::ProxyPolicy>>,
}

impl MailboxListener {
    /// Whether STLS/STARTTLS is offered.
    pub fn starttls(&self) -> bool {
        self.tls.is_some() && !self.implicit_tls
    }
}

/// Accepts until `shutdown` (`net::accept`): each admitted connection runs `serve` and holds
/// its admission until it ends; over a limit the client gets `refusal` at once. `sessions`
/// counts connections per listener.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    ctx: Arc<MailboxListener>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    (protocol, sessions): (&'static str, &'static prometheus::IntCounterVec),
    refusal: &'static [u8],
    serve: F,
) where
    F: Fn(TcpStream, IpAddr, Arc<MailboxListener>, CancellationToken) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (name, proxy, stop) = (ctx.name.clone(), ctx.proxy.clone(), shutdown.clone());
    let serve = Arc::new(serve);
    crate::net::accept::serve(listener, name, proxy, shutdown, tracker, move |mut stream, peer| {
        let (ctx, stop, serve) = (ctx.clone(), stop.clone(), serve.clone());
        async move {
            let ip = peer.ip().to_canonical();
            sessions.with_label_values(&[&ctx.name]).inc();
            crate::metrics::SESSIONS.with_label_values(&[protocol, &ctx.name]).inc();
            match ctx.limits.admit(ip) {
                Ok(admission) => {
                    serve(stream, ip, ctx, stop).await;
                    drop(admission);
                }
                Err(_) => {
                    let _ = tokio::time::timeout(REFUSAL_WRITE, stream.write_all(refusal)).await;
                }
            }
        }
    })
    .await
}

/// How long a refused client gets to take its one line.
const REFUSAL_WRITE: Duration = Duration::from_secs(5);

/// A POP3 or IMAP listener driven in-process over an in-memory pipe, for tests on tokio's
/// paused clock.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::Future;
    use std::net::IpAddr;
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    use super::MailboxListener;

    pub struct Piped {
        lines: BufReader<tokio::io::ReadHalf<DuplexStream>>,
        tx: tokio::io::WriteHalf<DuplexStream>,
        _dir: tempfile::TempDir,
    }

    impl Piped {
        /// A `mode` listener ("imap", "pop3") whose user is alice@example.com (password "pw"),
        /// with one connection served by `serve`; returns after the greeting.
        pub async fn start<F, Fut>(mode: &str, serve: F) -> Piped
        where
            F: FnOnce(DuplexStream, IpAddr, Arc<MailboxListener>) -> Fut,
            Fut: Future<Output = ()> + Send + 'static,
        {
            let dir = tempfile::tempdir().unwrap();
            let users_file = dir.path().join("users.toml");
            let mut users = crate::auth::users::UsersFileEditor::open(&users_file).unwrap();
            users.add("alice@example.com", "pw", Vec::new(), None).unwrap();
            users.save().unwrap();
            let config = format!(
                "[auth]\nplaintext_on_loopback = true\n[local]\ndomains = [\"example.com\"]\n\
                 [[listener]]\nmode = \"{mode}\"\naddress = \"127.0.0.1:0\"\n"
            );
            let mut cfg = crate::config::Config::parse(&config, "test.toml").unwrap();
            cfg.data_dir = dir.path().to_path_buf();
            let ctx = crate::server::test_mailbox_listener(&cfg).await;
            let (client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(serve(server, "127.0.0.1".parse().unwrap(), ctx));
            let (rx, tx) = tokio::io::split(client);
            let mut p = Piped { lines: BufReader::new(rx), tx, _dir: dir };
            let greeting = p.line().await;
            assert!(greeting.starts_with("* OK") || greeting.starts_with("+OK"), "{greeting}");
            p
        }

        /// The next line ("" once the server closed the connection).
        pub async fn line(&mut self) -> String {
            let mut line = String::new();
            self.lines.read_line(&mut line).await.unwrap();
            line.trim_end().to_string()
        }

        /// Sends a line and returns the first line that starts with `until` ("" if closed).
        pub async fn command(&mut self, text: &str, until: &str) -> String {
            self.tx.write_all(format!("{text}\r\n").as_bytes()).await.unwrap();
            loop {
                let line = self.line().await;
                if line.is_empty() || line.starts_with(until) {
                    return line;
                }
            }
        }
    }
}
