//! POP3 listeners (`[[listener]] mode = "pop3" | "pop3s"`): the driver of
//! [`crate::proto::pop3::Session`] over TCP or TLS. It checks logins like SMTP AUTH (same
//! users, lockout and verification bound), locks the maildrop for the session (`flock` on a
//! file in the Maildir, so two sessions, or two processes, never share it), streams message
//! files without reading them whole, and removes deleted messages only at QUIT.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verdict;
use crate::local::{Mailboxes, Maildir};
use crate::mailbox_listener::{LOGIN_DEADLINE, MailboxListener, accept_loop};
use crate::metrics;
use crate::proto::pop3::{DotStuffer, Login, Message, Pop3Config, Session, Step};
use crate::smtp::conn::{Conn, Transport, accept_tls};
use crate::stream::Stream;

/// RFC 1939 3: the autologout timer is at least 10 minutes.
const AUTOLOGOUT: Duration = Duration::from_secs(600);
/// Before login, a client has this long per command.
const AUTHORIZATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts until `shutdown`; over a connection limit the client gets `-ERR` at once.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<MailboxListener>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let refusal = b"-ERR [SYS/TEMP] Too many sessions; try later\r\n";
    accept_loop(
        listener,
        ctx,
        shutdown,
        tracker,
        ("pop3", &metrics::POP3_SESSIONS),
        refusal,
        |s, ip, ctx, stop| async move { run(s, ip, &ctx, stop).await },
    )
    .await
}

/// The maildrop of a logged-in session: its lock is held until the session ends.
struct Maildrop {
    user: String,
    maildir: Maildir,
    _lock: File,
}

/// Serves one connection until it closes.
/// Implicit TLS or STLS, counted under this listener; false when the handshake failed.
async fn start_tls<P: Transport>(stream: &mut Conn<P>, ctx: &MailboxListener, ip: IpAddr) -> bool {
    let timeout = AUTHORIZATION_TIMEOUT;
    accept_tls(stream, ctx.tls.as_deref(), timeout, ("pop3", &ctx.name), ip).await.is_ok()
}

pub async fn run<P: Transport>(
    io: P,
    ip: IpAddr,
    ctx: &MailboxListener,
    shutdown: CancellationToken,
) {
    let mut stream: Conn<P> = Stream::Plain(io);
    if ctx.implicit_tls && !start_tls(&mut stream, ctx, ip).await {
        return;
    }
    let cfg = Pop3Config {
        hostname: ctx.hostname.clone(),
        stls: ctx.starttls(),
        plaintext_ok: ctx.plaintext_ok,
    };
    let mut session = Session::new(cfg, ctx.implicit_tls);
    let mut drop_: Option<Maildrop> = None;
    let login_deadline = tokio::time::Instant::now() + LOGIN_DEADLINE;
    loop {
        let step = session.advance();
        if flush(&mut stream, &mut session).await.is_err() {
            return;
        }
        match step {
            Step::NeedInput => {
                let now = tokio::time::Instant::now();
                let until = match session.in_transaction() {
                    true => now + AUTOLOGOUT,
                    false => (now + AUTHORIZATION_TIMEOUT).min(login_deadline),
                };
                let mut buf = [0u8; 4096];
                tokio::select! {
                    _ = shutdown.cancelled() => session.close_with("[SYS/TEMP] Server shutting down"),
                    r = tokio::time::timeout_at(until, stream.read(&mut buf)) => match r {
                        Err(_) => session.close_with("Autologout; idle for too long"),
                        // A dropped connection never reaches UPDATE: nothing is deleted.
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(n)) => session.input().extend_from_slice(&buf[..n]),
                    },
                }
            }
            Step::Login(creds) => {
                let result = login(ctx, ip, creds, &mut drop_).await;
                session.handle_login(result);
            }
            Step::SendMessage { path, body_lines } => {
                if send_message(&mut stream, &path, body_lines).await.is_err() {
                    return;
                }
                if body_lines.is_none() {
                    metrics::POP3_MESSAGES.with_label_values(&["retrieved"]).inc();
                }
            }
            Step::StartTls => {
                if !start_tls(&mut stream, ctx, ip).await {
                    return;
                }
                session.tls_established();
            }
            Step::Update(paths) => {
                let result = remove(paths, drop_.as_ref()).await;
                if let Some(d) = &drop_ {
                    ctx.mailboxes.forget_usage(&d.user);
                    tracing::info!(%ip, user = %d.user, deleted = session.deleted_count(), "POP3 update");
                }
                let n = session.deleted_count() as u64;
                metrics::POP3_MESSAGES.with_label_values(&["deleted"]).inc_by(n);
                session.handle_update(result);
            }
            Step::Close => {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Checks the password, then locks and lists the maildrop, which `held` keeps.
async fn login(
    ctx: &MailboxListener,
    ip: IpAddr,
    creds: crate::proto::smtp::client::Credentials,
    held: &mut Option<Maildrop>,
) -> Login {
    let user = creds.username.clone();
    let result = match crate::auth::authenticate(&ctx.auth, ip, "pop3", creds).await {
        Verdict::Ok { .. } => match open_maildrop(&ctx.mailboxes, &user).await {
            Ok((d, messages)) => {
                *held = Some(d);
                Login::Ok(messages)
            }
            Err(e) => e,
        },
        Verdict::Invalid => Login::Invalid,
        Verdict::LockedOut => Login::LockedOut,
    };
    let label = match &result {
        Login::Ok(_) => "ok",
        Login::Invalid | Login::Unavailable => "invalid",
        Login::LockedOut => "locked_out",
        Login::Busy => "busy",
    };
    metrics::POP3_LOGINS.with_label_values(&[label]).inc();
    result
}

async fn flush<P: Transport>(stream: &mut Conn<P>, session: &mut Session) -> std::io::Result<()> {
    let out = session.output();
    if out.is_empty() {
        return Ok(());
    }
    let res = tokio::time::timeout(AUTHORIZATION_TIMEOUT, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await;
    out.clear();
    res.map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// Locks and lists the user's maildrop (blocking I/O, off the async threads).
async fn open_maildrop(
    mailboxes: &Arc<Mailboxes>,
    user: &str,
) -> Result<(Maildrop, Vec<Message>), Login> {
    let Some(user) = mailboxes.mailbox_user(user) else { return Err(Login::Unavailable) };
    let m = mailboxes.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let maildir = m.maildir(&user);
        maildir.create().map_err(|_| Login::Unavailable)?;
        let lock = lock_maildrop(&maildir.root().join("sluice-pop3.lock"))?;
        let entries = maildir.list().map_err(|_| Login::Unavailable)?;
        let messages = entries
            .into_iter()
            .map(|e| Message { uid: uidl(&e.unique), size: e.size, path: e.path })
            .collect();
        Ok((Maildrop { user, maildir, _lock: lock }, messages))
    })
    .await;
    opened.unwrap_or(Err(Login::Unavailable))
}

/// An exclusive, non-blocking `flock`: a second session gets [`Login::Busy`].
fn lock_maildrop(path: &std::path::Path) -> Result<File, Login> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|_| Login::Unavailable)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 { Ok(f) } else { Err(Login::Busy) }
}

/// RFC 1939 7: 1-70 characters 0x21-0x7E. Maildir names usually are; longer ones are hashed.
fn uidl(unique: &str) -> String {
    if unique.len() <= 70 && unique.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return unique.to_string();
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, unique.as_bytes());
    digest.as_ref()[..20].iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams a message file dot-stuffed, in 64 KiB pieces, then the terminating line.
async fn send_message<P: Transport>(
    stream: &mut Conn<P>,
    path: &std::path::Path,
    body_lines: Option<u64>,
) -> std::io::Result<()> {
    let mut stuffer = DotStuffer::new(body_lines);
    let mut out = Vec::with_capacity(70 * 1024);
    match tokio::fs::File::open(path).await {
        Ok(mut file) => {
            let mut buf = vec![0u8; 64 * 1024];
            while !stuffer.done() {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                stuffer.feed(&buf[..n], &mut out);
                stream.write_all(&out).await?;
                out.clear();
            }
        }
        // Removed by another program since the listing: the response ends empty.
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "POP3: message file gone"),
    }
    stuffer.finish(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// The UPDATE state: unlinks the deleted messages and makes the removals durable.
async fn remove(paths: Vec<PathBuf>, maildrop: Option<&Maildrop>) -> Result<(), String> {
    let dirs = maildrop.map(|d| [d.maildir.root().join("new"), d.maildir.root().join("cur")]);
    tokio::task::spawn_blocking(move || {
        let mut first_error = None;
        for p in &paths {
            if let Err(e) = std::fs::remove_file(p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                first_error.get_or_insert(e.to_string());
            }
        }
        for d in dirs.iter().flatten() {
            if let Err(e) = File::open(d).and_then(|f| f.sync_all()) {
                first_error.get_or_insert(e.to_string());
            }
        }
        first_error.map_or(Ok(()), Err)
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use crate::mailbox_listener::testing::Piped;

    #[test]
    fn uidl_is_the_maildir_name_or_a_hash_of_it() {
        assert_eq!(super::uidl("1733000000.M1P2Q3.mx,S=10"), "1733000000.M1P2Q3.mx,S=10");
        let long = super::uidl(&"x".repeat(80));
        assert_eq!(long.len(), 40);
        assert!(long.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    async fn start() -> Piped {
        let p = Piped::start("pop3", |io, ip, ctx| async move {
            super::run(io, ip, &ctx, CancellationToken::new()).await
        })
        .await;
        tokio::time::pause();
        p
    }

    /// A client that never logs in is cut at the login deadline, though it sends a command
    /// every 50 s (each well within the per-command timeout).
    #[tokio::test]
    async fn a_client_that_never_logs_in_is_cut_at_the_deadline() {
        let mut p = start().await;
        let started = Instant::now();
        // Commands at 0, 50, 100 and 150 s; the 60 s per-command timer alone would allow
        // the client until 210 s.
        for i in 0..4 {
            assert_eq!(p.command("CAPA", ".").await, ".");
            if i < 3 {
                tokio::time::sleep(Duration::from_secs(50)).await;
            }
        }
        let line = p.line().await;
        assert_eq!(line, "-ERR Autologout; idle for too long");
        let after = started.elapsed();
        assert!(after >= Duration::from_secs(180) && after < Duration::from_secs(181), "{after:?}");
        assert_eq!(p.line().await, "", "closed");
    }
}
