//! One SMTP connection: read -> session -> write, with RFC 5321 4.5.3.2 timeouts, graceful
//! shutdown and the hand-off to the spool. No protocol logic lives here.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::{Charge, ListenerContext};
use crate::intake::{Origin, Rcpt, Refusal, Submission};
use crate::metrics;
use crate::proto::smtp::client::Credentials;
use crate::proto::smtp::session::{
    AuthResult, Event, Session, Step, StoreError, Transaction, Waiting,
};
use crate::stream::Stream;

/// The client's connection: TCP in the server, an in-memory pipe in driver tests.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

pub(crate) type Conn<P> = Stream<TlsStream<P>, P>;

/// Seconds of data before the minimum data rate is enforced (slow starts are normal).
const MIN_RATE_GRACE: f64 = 10.0;

/// Decrements the active-connection gauge however the connection ends.
struct ActiveGuard(String);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        metrics::SMTP_CONNECTIONS_ACTIVE.with_label_values(&[&self.0]).dec();
    }
}

/// Serves one connection until it closes. `admission` is released before the final reply.
pub async fn run<P: Transport>(
    io: P,
    ip: IpAddr,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
    admission: Admission,
) {
    let mut admission = Some(admission);
    let mut tenant_session = None;
    metrics::SMTP_CONNECTIONS_ACTIVE.with_label_values(&[&ctx.name]).inc();
    let _active = ActiveGuard(ctx.name.clone());
    let mut stream = Stream::Plain(io);
    let Some(mut session) = open_session(&mut stream, &ctx, ip).await else {
        return;
    };
    let mut charge = Charge::new(ctx.budget.clone());
    let mut clock = ReadClock::default();
    loop {
        let step = session.advance();
        charge.set(session.held_bytes());
        record_events(&mut session);
        match step {
            Step::NeedInput => {
                if flush(&mut stream, &mut session, &ctx).await.is_err() {
                    return;
                }
                let Some(timeout) = clock.next_read(&mut session, &ctx) else {
                    session.handle_too_slow();
                    continue;
                };
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => session.handle_shutdown(),
                    read = tokio::time::timeout(timeout, read_input(&mut stream, session.input())) => match read {
                        Err(_) => session.handle_timeout(),
                        Ok(Ok(0)) | Ok(Err(_)) => return, // the client went away
                        Ok(Ok(_)) => {
                            if charge.set(session.held_bytes())
                                && session.reading_body()
                                && session.handle_over_budget()
                            {
                                metrics::MEMORY_BUDGET_EXCEEDED.inc();
                            }
                        }
                    },
                }
            }
            Step::Store(tx) => commit(&ctx, &mut session, &mut charge, *tx).await,
            Step::StartTls => {
                if flush(&mut stream, &mut session, &ctx).await.is_err()
                    || Box::pin(handshake(&mut stream, &ctx, ip)).await.is_err()
                {
                    return;
                }
                session.tls_established();
            }
            Step::Authenticate(creds) => {
                // Boxed, like the handshake: rare steps keep their state off every idle task.
                let result = Box::pin(authenticate(&ctx, ip, creds, &mut tenant_session)).await;
                session.handle_auth(result);
            }
            Step::Close => {
                // Free the slots before the client reads 221 and reconnects.
                drop(admission.take());
                drop(tenant_session.take());
                let _ = flush(&mut stream, &mut session, &ctx).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Hands a finished message to the intake and gives the session its verdict.
async fn commit(
    ctx: &ListenerContext,
    session: &mut Session,
    charge: &mut Charge,
    tx: Transaction,
) {
    let size = tx.body.len();
    // From here the intake charges the body to the budget until the commit answers
    // (DESIGN.md invariant 5), so a slow disk turns into 452s, not into RAM.
    charge.set(session.held_bytes());
    let result = Box::pin(ctx.intake.submit(submission(ctx, tx))).await;
    match result {
        Ok(a) => session.handle_stored(Ok(&a.id.to_string()), size),
        Err(r) => session.handle_stored(Err(store_error(r)), size),
    }
}

/// The TLS handshake of an implicit-TLS listener, or the greeting pause of a plain one.
/// None: the client went away or failed the handshake.
async fn open_session<P: Transport>(
    stream: &mut Conn<P>,
    ctx: &ListenerContext,
    ip: IpAddr,
) -> Option<Session> {
    if ctx.implicit_tls {
        Box::pin(handshake(stream, ctx, ip)).await.ok()?;
        return Some(Session::new_tls(ctx.session.clone(), ip));
    }
    let mut session = Session::new(ctx.session.clone(), ip);
    if !ctx.greet_pause.is_zero() {
        // Pre-greeting talk: a client that speaks before the banner is not following SMTP.
        let mut probe = [0u8; 1];
        match tokio::time::timeout(ctx.greet_pause, stream.read(&mut probe)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => session.handle_pregreet(),
        }
    }
    Some(session)
}

/// How long the next read may take: the command deadline and the minimum data rate.
#[derive(Default)]
struct ReadClock {
    /// A whole command must arrive before this; bytes of a partial line do not extend it, so
    /// a client trickling one byte at a time (slowloris) is still timed out.
    command_deadline: Option<Instant>,
    /// When the current message's data started, and the bytes held then (minimum data rate).
    body_started: Option<(Instant, usize)>,
}

impl ReadClock {
    /// The time the next read may take; None when the body arrives slower than
    /// `min_data_rate` (after a grace period).
    fn next_read(&mut self, session: &mut Session, ctx: &ListenerContext) -> Option<Duration> {
        let now = Instant::now();
        let timeout = match session.waiting_for() {
            Waiting::Command => {
                if session.input().is_empty() {
                    self.command_deadline = None;
                }
                let d = *self.command_deadline.get_or_insert(now + ctx.command_timeout);
                d.saturating_duration_since(now)
            }
            Waiting::Data => {
                self.command_deadline = None;
                ctx.data_timeout
            }
        };
        if !session.reading_body() {
            self.body_started = None;
            return Some(timeout);
        }
        let (since, held) = *self.body_started.get_or_insert((now, session.held_bytes()));
        let secs = now.duration_since(since).as_secs_f64();
        let got = session.held_bytes().saturating_sub(held) as f64;
        let too_slow =
            ctx.min_data_rate > 0 && secs > MIN_RATE_GRACE && got / secs < ctx.min_data_rate as f64;
        (!too_slow).then_some(timeout)
    }
}

/// Reads what the client sent into `input`. A session waiting with nothing buffered holds no
/// read buffer: it polls into a stack buffer that exists only during each poll (never in the
/// task's state), so an idle connection costs its task and session, not 8 KB more (10,000 idle
/// connections: DESIGN.md's memory target).
async fn read_input<P: Transport>(
    stream: &mut Conn<P>,
    input: &mut bytes::BytesMut,
) -> std::io::Result<usize> {
    if input.is_empty() {
        if input.capacity() > 0 {
            *input = bytes::BytesMut::new();
        }
        return std::future::poll_fn(|cx| {
            let mut first = [0u8; 4096];
            let mut buf = tokio::io::ReadBuf::new(&mut first);
            std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
            let got = buf.filled();
            if !got.is_empty() {
                input.reserve(got.len().max(8192));
                input.extend_from_slice(got);
            }
            std::task::Poll::Ready(Ok(got.len()))
        })
        .await;
    }
    if input.capacity() - input.len() < 2048 {
        input.reserve(8192);
    }
    stream.read_buf(input).await
}

/// The TLS handshake (after STARTTLS, or first thing on an implicit-TLS listener).
async fn handshake<P: Transport>(
    stream: &mut Conn<P>,
    ctx: &ListenerContext,
    ip: IpAddr,
) -> Result<(), ()> {
    accept_tls(stream, ctx.tls.as_deref(), ctx.command_timeout, ("smtp", &ctx.name), ip).await
}

/// The server side of a TLS handshake (implicit TLS, STARTTLS, STLS) within `timeout`,
/// counted in `sluice_tls_handshakes_total` under the protocol and listener's name (and SMTP's
/// also in `sluice_smtp_tls_total`).
pub(crate) async fn accept_tls<P: Transport>(
    stream: &mut Conn<P>,
    tls: Option<&crate::tls::ReloadableServer>,
    timeout: Duration,
    (protocol, listener): (&str, &str),
    ip: IpAddr,
) -> Result<(), ()> {
    let (Some(tls), Some(tcp)) = (tls, stream.take_plain()) else { return Err(()) };
    let accept = TlsAcceptor::from(tls.current()).accept(tcp);
    let count = |result: &str| {
        metrics::TLS_HANDSHAKES.with_label_values(&[protocol, listener, result]).inc();
        if protocol == "smtp" {
            metrics::SMTP_TLS.with_label_values(&[listener, result]).inc();
        }
    };
    match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(s)) => {
            count(s.get_ref().1.protocol_version().map_or("?", |v| v.as_str().unwrap_or("?")));
            *stream = Stream::Tls(Box::new(s));
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::info!(%ip, error = %e, "TLS handshake failed");
            count("failed");
            Err(())
        }
        Err(_) => {
            count("failed");
            Err(())
        }
    }
}

/// Checks credentials (argon2 on a blocking thread), with lockout and a growing delay after
/// failures. Passwords are never logged. A user of a tenant takes one of the tenant's
/// sessions (`max_sessions`), held in `slot` until the connection ends.
async fn authenticate(
    ctx: &ListenerContext,
    ip: IpAddr,
    creds: Credentials,
    slot: &mut Option<crate::intake::quota::SessionSlot>,
) -> AuthResult {
    match crate::auth::authenticate(&ctx.auth, ip, "smtp", creds).await {
        crate::auth::Verdict::Ok { senders, tenant } => {
            if let (Some(t), Some(q)) = (&tenant, &ctx.intake.quota) {
                match q.open_session(t) {
                    Ok(s) => *slot = s,
                    Err(e) => return AuthResult::TenantBusy(e.to_string()),
                }
            }
            AuthResult::Ok { senders, tenant }
        }
        crate::auth::Verdict::Invalid => AuthResult::Invalid,
        crate::auth::Verdict::LockedOut => AuthResult::LockedOut,
    }
}

async fn flush(
    stream: &mut Conn<impl Transport>,
    session: &mut Session,
    ctx: &ListenerContext,
) -> std::io::Result<()> {
    let out = session.output();
    if out.is_empty() {
        return Ok(());
    }
    let res = tokio::time::timeout(ctx.command_timeout, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await;
    out.clear();
    match res {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Counts refusals (accepted messages are counted by the intake, with their tenant).
fn record_events(session: &mut Session) {
    for ev in session.drain_events() {
        if let Event::Rejected(why) = ev {
            metrics::MESSAGES_REJECTED.with_label_values(&[why.label()]).inc()
        }
    }
}

/// The session's finished transaction as the intake's submission.
fn submission(ctx: &ListenerContext, tx: Transaction) -> Submission {
    let relay = ctx.session.relay_networks.iter().any(|n| n.contains(&tx.client_ip));
    let origin = Origin {
        listener: ctx.name.as_str().into(),
        client_ip: tx.client_ip,
        protocol: tx.protocol(),
        helo: tx.helo.as_str().into(),
        user: tx.auth_user,
        senders: tx.auth_senders,
        trusted: tx.trusted,
        verify: ctx.verify,
        tenant: tx.auth_tenant.map(Into::into),
        campaign: None,
        meta: None,
        pool: None,
        priority: None,
        may_declare_tenant: relay,
        screened: tx.trusted && ctx.session.recipient_policy.is_some(),
    };
    Submission {
        origin: Arc::new(origin),
        sender: tx.mail.from.map(|m| m.into_string().into()).unwrap_or_default(),
        recipients: tx
            .rcpts
            .into_iter()
            .map(|r| Rcpt {
                address: r.to.into_string(),
                orcpt: r.orcpt,
                notify: r.notify.map(Into::into),
            })
            .collect(),
        content: tx.body,
        body_type: tx.mail.body.map(Into::into),
        smtputf8: tx.mail.smtputf8,
        ret: tx.mail.ret.map(Into::into),
        envid: tx.mail.envid,
        id: None,
    }
}

/// The intake's refusal as the session's store error (each has its SMTP reply).
fn store_error(r: Refusal) -> StoreError {
    match r {
        Refusal::TooBig => StoreError::TooBig,
        Refusal::Loop => StoreError::Loop,
        Refusal::OverBudget => StoreError::OverBudget,
        Refusal::Suppressed(why) => StoreError::Suppressed(why),
        Refusal::DmarcReject => StoreError::DmarcReject,
        Refusal::SpfReject => StoreError::SpfReject,
        Refusal::UnalignedFrom => StoreError::UnalignedFrom,
        Refusal::Signing => StoreError::Signing,
        Refusal::NoSpace => StoreError::NoSpace,
        Refusal::ShuttingDown => StoreError::ShuttingDown,
        Refusal::Failed => StoreError::Failed,
        Refusal::CircuitOpen(why) => StoreError::CircuitOpen(why),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    /// A session driven over an in-memory pipe by [`super::run`], on a real spool in a
    /// temporary directory: timers run on tokio's paused clock, so minutes pass in no time.
    struct Driven {
        lines: BufReader<tokio::io::ReadHalf<DuplexStream>>,
        tx: tokio::io::WriteHalf<DuplexStream>,
        _dir: tempfile::TempDir,
    }

    impl Driven {
        async fn start(config: &str) -> Driven {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = crate::config::Config::parse(config, "test.toml").unwrap();
            cfg.data_dir = dir.path().to_path_buf();
            let ctx = crate::server::test_listener(&cfg).await;
            // The clock stops only now: the spool was opened on real time.
            tokio::time::pause();
            let ip = "127.0.0.1".parse().unwrap();
            let admission = ctx.limits.admit(ip).unwrap();
            let (client, server) = tokio::io::duplex(1 << 16);
            tokio::spawn(super::run(server, ip, ctx, CancellationToken::new(), admission));
            let (rx, tx) = tokio::io::split(client);
            let mut d = Driven { lines: BufReader::new(rx), tx, _dir: dir };
            assert!(d.reply().await.starts_with("220 "));
            d
        }

        /// The next reply's last line ("" once the server closed the connection).
        async fn reply(&mut self) -> String {
            let mut line = String::new();
            loop {
                line.clear();
                if self.lines.read_line(&mut line).await.unwrap() == 0 {
                    return String::new();
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return line.trim_end().to_string();
                }
            }
        }

        async fn cmd(&mut self, line: &str) -> String {
            self.tx.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
            self.reply().await
        }

        /// Opens a transaction up to the 354.
        async fn start_data(&mut self) {
            assert!(self.cmd("EHLO client.example").await.starts_with("250"));
            assert!(self.cmd("MAIL FROM:<a@example.com>").await.starts_with("250"));
            assert!(self.cmd("RCPT TO:<b@example.org>").await.starts_with("250"));
            assert!(self.cmd("DATA").await.starts_with("354"));
        }

        /// Sends one octet every 200 ms until the server replies or `limit` passes; the
        /// reply and when it came.
        async fn trickle(&mut self, limit: Duration) -> (String, Duration) {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut line = String::new();
            while started.elapsed() < limit {
                tokio::select! {
                    n = self.lines.read_line(&mut line) => {
                        assert!(n.unwrap() > 0, "closed without a reply");
                        return (line.trim_end().to_string(), started.elapsed());
                    }
                    _ = tick.tick() => self.tx.write_all(b"x").await.unwrap(),
                }
            }
            (String::new(), started.elapsed())
        }
    }

    /// 5 octets/s against `min_data_rate = 1000`: cut with 421 4.4.2 once the 10 s grace is
    /// over, at the first read after it.
    #[tokio::test]
    async fn data_slower_than_the_minimum_rate_is_cut_after_the_grace() {
        let mut d =
            Driven::start("[delivery]\nenabled = false\n[limits]\nmin_data_rate = 1000\n").await;
        d.start_data().await;
        let (reply, after) = d.trickle(Duration::from_secs(60)).await;
        assert!(reply.starts_with("421 4.4.2"), "{reply}");
        assert!(after > Duration::from_secs(10) && after < Duration::from_secs(11), "{after:?}");
    }

    /// The control: the same trickle with no minimum rate is never cut, and the message
    /// it carried is accepted.
    #[tokio::test]
    async fn the_same_trickle_without_a_minimum_rate_is_accepted() {
        let mut d =
            Driven::start("[delivery]\nenabled = false\n[limits]\nmin_data_rate = 0\n").await;
        d.start_data().await;
        let (reply, _) = d.trickle(Duration::from_secs(60)).await;
        assert_eq!(reply, "");
        let r = d.cmd("\r\n.").await;
        assert!(r.starts_with("250 2.0.0 OK queued as"), "{r}");
    }

    /// Slowloris: a command sent one octet at a time still ends at `command_timeout` after
    /// it began; partial lines do not extend the deadline.
    #[tokio::test]
    async fn a_command_trickled_octet_by_octet_times_out_on_schedule() {
        let mut d =
            Driven::start("[delivery]\nenabled = false\n[limits]\ncommand_timeout = \"30s\"\n")
                .await;
        let (reply, after) = d.trickle(Duration::from_secs(120)).await;
        assert!(reply.starts_with("421 4.4.2"), "{reply}");
        assert!(after >= Duration::from_secs(30) && after < Duration::from_secs(31), "{after:?}");
    }

    fn future_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection is one task holding this future: 10,000 of them must fit in 64 MB
    /// with their sessions and sockets. It was 5.2 KB (plus an 8 KB read buffer) before the
    /// handshake, AUTH and store steps were boxed and idle reads moved to the stack.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(super::run::<tokio::net::TcpStream>);
        assert!(size <= 2048, "connection future is {size} bytes");
    }
}
