//! IMAP listeners (`[[listener]] mode = "imap" | "imaps"`): framing with imap-codec (literals,
//! with a continuation request for synchronizing ones and none for LITERAL+), TLS, logins
//! through the shared lockout, IDLE (RFC 2177) woken by deliveries, and the
//! [`session::Session`] for everything else.

mod fetch;
mod mailboxes;
mod mime;
mod search;
mod sections;
pub mod session;
mod state;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use imap_codec::CommandCodec;
use imap_codec::decode::{CommandDecodeError, Decoder};
use imap_codec::imap_types::core::{LiteralMode, Tag};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verdict;
use crate::local::Maildir;
use crate::local::mailstore::Appended;
use crate::mailbox_listener::{LOGIN_DEADLINE, MailboxListener, accept_loop};
use crate::metrics;
use crate::proto::smtp::client::Credentials;
use crate::smtp::conn::{Conn, Transport, accept_tls};
use crate::stream::Stream;
use state::{ImapConfig, Next, Session};

/// RFC 3501 5.4: the autologout timer is at least 30 minutes once logged in.
const AUTOLOGOUT: Duration = Duration::from_secs(30 * 60);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Commands (with their literals) larger than this are refused and the connection closed.
const MAX_COMMAND: usize = 1 << 20;
/// The same before login: a client that has not proved who it is buffers little (Dovecot's
/// login processes allow 64 KiB too).
const MAX_COMMAND_BEFORE_LOGIN: usize = 64 << 10;
/// While idling, the only input expected is `DONE`: a longer line ends the session.
const MAX_IDLE_LINE: usize = 1024;
/// APPEND literals larger than this go to a file as they arrive, not into memory.
const STREAM_OVER: usize = 64 << 10;
/// While idling, the mailbox is looked at this often even without a delivery (changes made
/// by POP3 or another program).
const IDLE_POLL: Duration = Duration::from_secs(30);

/// Accepts until `shutdown`; over a connection limit the client gets `* BYE` at once.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<MailboxListener>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let refusal = b"* BYE [UNAVAILABLE] Too many sessions; try later\r\n";
    accept_loop(
        listener,
        ctx,
        shutdown,
        tracker,
        ("imap", &metrics::IMAP_SESSIONS),
        refusal,
        |s, ip, ctx, stop| async move { run(s, ip, &ctx, stop).await },
    )
    .await
}

/// One connection: the stream, what was read and not yet decoded, and the session.
struct Connection<P: Transport> {
    stream: Conn<P>,
    buf: Vec<u8>,
    session: Option<Box<Session>>,
    ip: IpAddr,
    user: Option<String>,
    /// Where the data of the synchronizing literal last agreed to starts in the buffer, so a
    /// literal gets one continuation request however its data arrives.
    literal_acked_at: Option<usize>,
    /// When a client that has not logged in is disconnected, whatever it sends.
    login_deadline: tokio::time::Instant,
}

/// What the command loop does next.
enum Step {
    /// Decode again: a command was handled.
    Again,
    /// Read more input first.
    ReadMore,
    /// Close the connection.
    End,
}

enum Read {
    /// Input arrived; true when it holds a line end (only then can a command be complete).
    Data(bool),
    Closed,
    Timeout,
    Shutdown,
}

impl<P: Transport> Connection<P> {
    fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("the session is back from the blocking pool")
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let out = self.session().take_output();
        if out.is_empty() {
            return Ok(());
        }
        let w = async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(LOGIN_TIMEOUT, w).await.map_err(|_| std::io::ErrorKind::TimedOut)?
    }

    async fn read_more(&mut self, shutdown: &CancellationToken) -> Read {
        let now = tokio::time::Instant::now();
        let until = match self.session().is_authenticated() {
            true => now + AUTOLOGOUT,
            false => (now + LOGIN_TIMEOUT).min(self.login_deadline),
        };
        let mut chunk = [0u8; 8192];
        tokio::select! {
            _ = shutdown.cancelled() => Read::Shutdown,
            r = tokio::time::timeout_at(until, self.stream.read(&mut chunk)) => match r {
                Err(_) => Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    Read::Data(memchr::memchr(b'\n', &chunk[..n]).is_some())
                }
            },
        }
    }

    /// One line (without CRLF) from the buffer, reading as needed; None if the connection ends.
    async fn line(&mut self, shutdown: &CancellationToken) -> Option<Vec<u8>> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=lf).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(line);
            }
            if self.buf.len() > self.max_command() {
                return None;
            }
            if !matches!(self.read_more(shutdown).await, Read::Data(_)) {
                return None;
            }
        }
    }

    /// The longest command (with its literals) taken in this state.
    fn max_command(&mut self) -> usize {
        match self.session().is_authenticated() {
            true => MAX_COMMAND,
            false => MAX_COMMAND_BEFORE_LOGIN,
        }
    }

    /// After a command that added or removed messages: the quota count is stale, and other
    /// sessions idling on the mailbox should look.
    fn after_command(&mut self, ctx: &MailboxListener) {
        if self.session().take_size_changed()
            && let Some(user) = &self.user
        {
            ctx.mailboxes.forget_usage(user);
            ctx.mailboxes.changed(user);
        }
    }

    /// A literal announced in the command being read: streamed (a large APPEND), refused
    /// (too large), or agreed to with a continuation request.
    async fn on_literal(
        &mut self,
        ctx: &MailboxListener,
        shutdown: &CancellationToken,
        literal: Literal,
    ) -> Step {
        let Literal { tag, length, mode, data_at } = literal;
        // APPEND carries a whole message, once logged in; any other literal is small.
        let append = is_append(&self.buf) && self.session().is_authenticated();
        let limit = if append { ctx.max_append } else { self.max_command() };
        let length = length as usize;
        if append && mode == LiteralMode::Sync && self.over_quota(ctx, length).await {
            // Refused before the client sends the message (RFC 7888 4, as for TOOBIG).
            let reply = format!("{} NO [OVERQUOTA] Mailbox is full\r\n", tag.as_ref());
            if self.stream.write_all(reply.as_bytes()).await.is_err() {
                return Step::End;
            }
            // The command so far goes (a client that sent data anyway gets BAD for it).
            self.buf.drain(..data_at.min(self.buf.len()));
            return Step::Again;
        }
        if append && length > STREAM_OVER && length <= limit {
            self.literal_acked_at = None;
            let Some(next) = append_streamed(self, shutdown, length as u32, mode).await else {
                return Step::End;
            };
            self.after_command(ctx);
            return if follow(self, next, ctx, shutdown).await { Step::Again } else { Step::End };
        }
        let t = tag.as_ref().to_string();
        if length > limit && mode == LiteralMode::Sync {
            // RFC 7888 4: refuse before the client sends it, and go on.
            let reply = format!("{t} NO [TOOBIG] The message is too large\r\n");
            if self.stream.write_all(reply.as_bytes()).await.is_err() {
                return Step::End;
            }
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                self.buf.drain(..=lf);
            }
            return Step::Again;
        }
        if length > limit {
            let reply = format!("{t} BAD [TOOBIG] Literal too large\r\n");
            let _ = self.stream.write_all(reply.as_bytes()).await;
            return Step::End;
        }
        if mode == LiteralMode::Sync && self.literal_acked_at != Some(data_at) {
            self.literal_acked_at = Some(data_at);
            if self.stream.write_all(b"+ Ready for literal data\r\n").await.is_err() {
                return Step::End;
            }
        }
        Step::ReadMore
    }

    /// Whether an APPEND of `length` octets would take the logged-in user over the quota.
    async fn over_quota(&mut self, ctx: &MailboxListener, length: usize) -> bool {
        let Some(user) = self.user.clone() else { return false };
        let mailboxes = ctx.mailboxes.clone();
        tokio::task::spawn_blocking(move || mailboxes.over_quota(&user, length as u64))
            .await
            .unwrap_or(false)
    }

    /// A line imap-codec cannot parse: one of the extensions it lacks, or a BAD.
    fn on_unparsable(&mut self, ctx: &MailboxListener) -> Step {
        let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else { return Step::ReadMore };
        let line: Vec<u8> = self.buf.drain(..=lf).collect();
        self.literal_acked_at = None;
        if self.session().raw_command(&line) {
            self.after_command(ctx);
            return Step::Again;
        }
        let tag = line.split(|&b| b == b' ').next().and_then(|t| Tag::try_from(t.to_vec()).ok());
        self.session().unparsable(tag.as_ref());
        Step::Again
    }

    /// Sends the part of a FETCH answer that is ready while the next part is prepared on the
    /// blocking pool, so the socket is not idle while files are read.
    async fn send_and_fetch_more(&mut self) -> std::io::Result<Next> {
        let out = self.session().take_output();
        let mut s = self.session.take().expect("session present");
        let prepare = tokio::task::spawn_blocking(move || {
            s.fetch_more();
            s
        });
        let send = async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        };
        let (sent, prepared) = tokio::join!(tokio::time::timeout(LOGIN_TIMEOUT, send), prepare);
        let s = prepared.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let more = s.has_more();
        self.session = Some(s);
        sent.map_err(|_| std::io::ErrorKind::TimedOut)??;
        Ok(if more { Next::More } else { Next::Continue })
    }

    /// Runs a command on the blocking pool (the session reads and renames files).
    async fn execute(&mut self, cmd: imap_codec::imap_types::command::Command<'static>) -> Next {
        let mut s = self.session.take().expect("session present");
        let (s, next) = match tokio::task::spawn_blocking(move || {
            let next = s.execute(cmd);
            (s, next)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.session = Some(s);
        next
    }
}

/// Serves one connection until it closes.
pub async fn run<P: Transport>(
    io: P,
    ip: IpAddr,
    ctx: &MailboxListener,
    shutdown: CancellationToken,
) {
    let mut c = Connection {
        stream: Stream::Plain(io),
        buf: Vec::new(),
        session: None,
        ip,
        user: None,
        literal_acked_at: None,
        login_deadline: tokio::time::Instant::now() + LOGIN_DEADLINE,
    };
    if ctx.implicit_tls
        && accept_tls(&mut c.stream, ctx.tls.as_deref(), LOGIN_TIMEOUT, ("imap", &ctx.name), ip)
            .await
            .is_err()
    {
        return;
    }
    let cfg = ImapConfig {
        hostname: ctx.hostname.clone(),
        starttls: ctx.starttls(),
        plaintext_ok: ctx.plaintext_ok,
        max_folders: ctx.max_folders,
    };
    c.session = Some(Box::new(Session::new(cfg, ctx.implicit_tls)));
    loop {
        if c.flush().await.is_err() || c.session().is_logged_out() {
            break;
        }
        let decoded = CommandCodec::default()
            .decode_static(&c.buf)
            .map(|(rest, cmd)| (c.buf.len() - rest.len(), cmd));
        let step = match decoded {
            Ok((used, cmd)) => {
                c.buf.drain(..used);
                c.literal_acked_at = None;
                let next = c.execute(cmd).await;
                c.after_command(ctx);
                if follow(&mut c, next, ctx, &shutdown).await { Step::Again } else { Step::End }
            }
            Err(CommandDecodeError::LiteralFound { tag, length, mode }) => {
                let data_at = c.buf.len();
                c.on_literal(ctx, &shutdown, Literal { tag, length, mode, data_at }).await
            }
            // imap-codec says Incomplete, not LiteralFound, when a literal's data came in the
            // same read as its `{n+}`: the literal is found here (a large LITERAL+ APPEND
            // must stream whichever way its bytes arrive).
            Err(CommandDecodeError::Incomplete) => match open_literal(&c.buf) {
                Some(l) if c.literal_acked_at != Some(l.data_at) => {
                    c.on_literal(ctx, &shutdown, l).await
                }
                _ => Step::ReadMore,
            },
            Err(CommandDecodeError::Failed) => c.on_unparsable(ctx),
        };
        match step {
            Step::Again => continue,
            Step::End => break,
            Step::ReadMore => {}
        }
        // Read until a line end arrives: a command cannot be complete before one, so the
        // buffer is decoded again once per line, not once per read (an unterminated quoted
        // string sent an octet at a time costs one decode).
        let max = c.max_command();
        let read = loop {
            if c.buf.len() > max {
                break None;
            }
            match c.read_more(&shutdown).await {
                Read::Data(false) => continue,
                other => break Some(other),
            }
        };
        match read {
            None => {
                let _ = c.stream.write_all(b"* BYE [TOOBIG] Command too long\r\n").await;
                break;
            }
            Some(Read::Data(_)) => {}
            Some(Read::Closed) => return,
            Some(Read::Timeout) => c.session().bye("Autologout; idle for too long"),
            Some(Read::Shutdown) => c.session().bye("[UNAVAILABLE] Server shutting down"),
        }
    }
    let _ = c.flush().await;
    let _ = c.stream.shutdown().await;
}

/// A literal announced in the command being read whose data has not all arrived.
struct Literal {
    tag: Tag<'static>,
    length: u32,
    mode: LiteralMode,
    /// Where its data starts in the buffer.
    data_at: usize,
}

/// The literal whose data the buffer ends inside, if any: the command's lines are walked from
/// the start, each `{n}` or `{n+}` at a line end skipping its n octets of data.
fn open_literal(buf: &[u8]) -> Option<Literal> {
    let mut at = 0;
    loop {
        let lf = at + memchr::memchr(b'\n', &buf[at..])?;
        let line = buf[at..lf].strip_suffix(b"\r").unwrap_or(&buf[at..lf]);
        let open = line.strip_suffix(b"}").and_then(|l| {
            let brace = l.iter().rposition(|&b| b == b'{')?;
            let (digits, mode) = match l[brace + 1..].strip_suffix(b"+") {
                Some(d) => (d, LiteralMode::NonSync),
                None => (&l[brace + 1..], LiteralMode::Sync),
            };
            let n: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
            Some((n, mode))
        });
        let Some((length, mode)) = open else {
            at = lf + 1;
            continue;
        };
        let data_at = lf + 1;
        if buf.len() - data_at < length as usize {
            let tag = buf.split(|&b| b == b' ').next()?;
            let tag = Tag::try_from(tag.to_vec()).ok()?;
            return Some(Literal { tag, length, mode, data_at });
        }
        at = data_at + length as usize;
    }
}

/// Does what the session asked; false when the connection must end.
async fn follow<P: Transport>(
    c: &mut Connection<P>,
    mut next: Next,
    ctx: &MailboxListener,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        next = match next {
            Next::Continue => return true,
            Next::Close => return false,
            Next::Login { tag, creds } => {
                let result = login(ctx, c.ip, creds).await;
                let (maildir, user) = match result {
                    Ok((md, user)) => (Ok(md), Some(user)),
                    Err(e) => (Err(e), None),
                };
                if let Some(u) = &user {
                    c.session().set_quota(ctx.mailboxes.quota_of(u));
                }
                c.user = user;
                c.session().login_result(&tag, maildir);
                return true;
            }
            Next::AuthenticateData { tag } => {
                if c.stream.write_all(b"+ \r\n").await.is_err() {
                    return false;
                }
                let Some(line) = c.line(shutdown).await else { return false };
                match base64::engine::general_purpose::STANDARD.decode(&line) {
                    Ok(data) if line != b"*" => c.session().authenticate_data(tag, &data),
                    _ => {
                        c.session().authenticate_failed(&tag);
                        return true;
                    }
                }
            }
            Next::StartTls => {
                if c.flush().await.is_err() {
                    return false;
                }
                // Anything sent after STARTTLS in the clear is dropped (RFC 3501 11.1).
                c.buf.clear();
                if accept_tls(
                    &mut c.stream,
                    ctx.tls.as_deref(),
                    LOGIN_TIMEOUT,
                    ("imap", &ctx.name),
                    c.ip,
                )
                .await
                .is_err()
                {
                    return false;
                }
                c.session().tls_established();
                return true;
            }
            Next::Idle { tag } => return idle(c, tag, ctx, shutdown).await,
            Next::More => match c.send_and_fetch_more().await {
                Ok(next) => next,
                Err(_) => return false,
            },
        };
    }
}

/// RFC 2177: untagged updates while the client waits, until it sends DONE.
async fn idle<P: Transport>(
    c: &mut Connection<P>,
    tag: Tag<'static>,
    ctx: &MailboxListener,
    shutdown: &CancellationToken,
) -> bool {
    if c.stream.write_all(b"+ idling\r\n").await.is_err() {
        return false;
    }
    let wake = c.user.as_deref().map(|u| ctx.mailboxes.watch(u));
    // RFC 2177: a client re-issues IDLE within 29 minutes; one that does not is logged out,
    // whatever was reported meanwhile (a dead peer must not hold a session for ever).
    let deadline = tokio::time::Instant::now() + AUTOLOGOUT;
    // Input is looked at once: only what arrived since the last look is searched.
    let mut scanned = 0;
    loop {
        if let Some(lf) = memchr::memchr(b'\n', &c.buf[scanned..]).map(|i| scanned + i) {
            let line: Vec<u8> = c.buf.drain(..=lf).collect();
            if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                c.session().idle_done(&tag);
                return true;
            }
            c.session().unparsable(Some(&tag));
            return true;
        }
        scanned = c.buf.len();
        if c.buf.len() > MAX_IDLE_LINE {
            c.session().bye("[TOOBIG] Only DONE is expected while idling");
            return false;
        }
        let changed = async {
            match &wake {
                Some(n) => {
                    let _ = tokio::time::timeout(IDLE_POLL, n.notified()).await;
                }
                None => tokio::time::sleep(IDLE_POLL).await,
            }
        };
        let mut chunk = [0u8; 512];
        tokio::select! {
            _ = shutdown.cancelled() => {
                c.session().bye("[UNAVAILABLE] Server shutting down");
                return false;
            }
            _ = changed => {
                let mut s = c.session.take().expect("session present");
                s = tokio::task::spawn_blocking(move || { s.refresh(); s }).await.expect("refresh does not panic");
                c.session = Some(s);
                if c.flush().await.is_err() {
                    return false;
                }
            }
            r = tokio::time::timeout_at(deadline, c.stream.read(&mut chunk)) => match r {
                Ok(Ok(n)) if n > 0 => c.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    c.session().bye("Autologout; idle for too long");
                    return false;
                }
                _ => return false,
            },
        }
    }
}

/// An APPEND whose message literal is over [`STREAM_OVER`]: the command up to the literal is
/// parsed by imap-codec (with a one-octet literal in its place), the message goes straight
/// from the socket to a file in the user's `tmp/`, and the session stores that file. Memory
/// stays flat whatever the message size. None: the connection must end.
async fn append_streamed<P: Transport>(
    c: &mut Connection<P>,
    shutdown: &CancellationToken,
    length: u32,
    mode: LiteralMode,
) -> Option<Next> {
    use tokio::io::AsyncWriteExt as _;
    let (header_end, cmd) = literal_prefix(&c.buf, length)?;
    let imap_codec::imap_types::command::CommandBody::Append { mailbox, flags, date, .. } =
        cmd.body
    else {
        return None;
    };
    c.buf.drain(..header_end);
    if mode == LiteralMode::Sync
        && c.stream.write_all(b"+ Ready for literal data\r\n").await.is_err()
    {
        return None;
    }
    let tmp = c.session().append_file_path()?;
    // A file that cannot be written still has its literal read, then gets a NO.
    let mut file = tokio::fs::File::create(&tmp).await.ok();
    let mut left = length as usize;
    while left > 0 {
        if c.buf.is_empty() && !matches!(c.read_more(shutdown).await, Read::Data(_)) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return None;
        }
        let take = left.min(c.buf.len());
        if let Some(f) = file.as_mut()
            && f.write_all(&c.buf[..take]).await.is_err()
        {
            file = None;
        }
        c.buf.drain(..take);
        left -= take;
    }
    let rest = c.line(shutdown).await;
    let written = match file {
        Some(mut f) => f.flush().await.is_ok(),
        None => false,
    };
    let tag = cmd.tag;
    if rest.as_deref() != Some(b"") || !written {
        let _ = tokio::fs::remove_file(&tmp).await;
        match rest {
            None => return None,
            Some(r) if !r.is_empty() => c.session().unparsable(Some(&tag)),
            Some(_) => c.session().append_failed(&tag),
        }
        return Some(Next::Continue);
    }
    let mut s = c.session.take().expect("session present");
    let s = tokio::task::spawn_blocking(move || {
        let stored = Appended::File(&tmp);
        s.append(&tag, &mailbox, &flags, date.as_ref(), stored);
        s
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    c.session = Some(s);
    Some(Next::Continue)
}

/// Where the literal of `length` octets starts in an APPEND command, and the command parsed
/// with a one-octet literal instead. The first `{length}` (or `{length+}`) whose prefix parses
/// as an APPEND is the message's: a mailbox name cannot make a false match parse.
fn literal_prefix(
    buf: &[u8],
    length: u32,
) -> Option<(usize, imap_codec::imap_types::command::Command<'static>)> {
    for header in [format!("{{{length}}}"), format!("{{{length}+}}")] {
        let h = header.as_bytes();
        let mut from = 0;
        while let Some(at) = buf[from..].windows(h.len()).position(|w| w == h) {
            let start = from + at;
            let after = start + h.len();
            from = after;
            let end = match &buf[after..] {
                [b'\r', b'\n', ..] => after + 2,
                [b'\n', ..] => after + 1,
                _ => continue,
            };
            let mut probe = buf[..start].to_vec();
            probe.extend_from_slice(b"{1+}\r\nx\r\n");
            if let Ok((_, cmd)) = CommandCodec::default().decode_static(&probe)
                && matches!(cmd.body, imap_codec::imap_types::command::CommandBody::Append { .. })
            {
                return Some((end, cmd));
            }
        }
    }
    None
}

/// Whether the command being read is an APPEND (`tag APPEND ...`).
fn is_append(buf: &[u8]) -> bool {
    let mut words = buf.splitn(3, |&b| b == b' ');
    words.next();
    words.next().is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
}

/// Checks the password and opens the user's Maildir.
async fn login(
    ctx: &MailboxListener,
    ip: IpAddr,
    creds: Credentials,
) -> Result<(Maildir, String), &'static str> {
    let mailbox = ctx.mailboxes.mailbox_user(&creds.username);
    let verdict = crate::auth::authenticate(&ctx.auth, ip, "imap", creds).await;
    let (label, result) = match (verdict, mailbox) {
        (Verdict::Ok { .. }, Some(user)) => {
            let md = ctx.mailboxes.maildir(&user);
            let md2 = md.clone();
            let opened = tokio::task::spawn_blocking(move || {
                md2.create().map_err(crate::local::folders::FolderError::from)?;
                md2.ensure_default_folders()
            });
            match opened.await {
                Ok(Ok(())) => ("ok", Ok((md, user))),
                _ => ("invalid", Err("[UNAVAILABLE] Mailbox unavailable; try again later")),
            }
        }
        (Verdict::Ok { .. }, None) => {
            ("invalid", Err("[AUTHORIZATIONFAILED] This user has no mailbox"))
        }
        (Verdict::Invalid, _) => ("invalid", Err("[AUTHENTICATIONFAILED] Authentication failed")),
        (Verdict::LockedOut, _) => {
            ("locked_out", Err("[UNAVAILABLE] Too many failed logins; try again later"))
        }
    };
    metrics::IMAP_LOGINS.with_label_values(&[label]).inc();
    result
}

#[cfg(test)]
mod tests;
