//! The inbound SMTP state machine (RFC 5321 3.3, 4.1.4): bytes in, replies and steps out.
//!
//! ```text
//!   greeting ──► Command ──DATA──► Data ──<CRLF>.<CRLF>──► AwaitStore ──stored──► Command
//!                  │  ▲                    (bare CR/LF ──► Closed)
//!                  │  └──BDAT n──► Bdat ──chunk read (not LAST)──┘
//!                  │                 └──LAST──► AwaitStore
//!                  └──QUIT / too many errors / timeout / shutdown──► Closed
//! ```
//! The driver owns the socket. It reads into [`Session::input`], calls [`Session::advance`]
//! and acts on the returned [`Step`]: write [`Session::output`], read more, store a message
//! durably (then call [`Session::handle_stored`]), or close. The session never blocks, never
//! does I/O and never looks at a clock: timeouts and shutdown are inputs too.
//!
//! Policy that needs no I/O (relay networks, local domains, limits) is decided here; what needs
//! I/O (storage) is a [`Step`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::address::Mailbox;
use super::client::Credentials;
use super::command::{self, BodyType, Command, MailFrom, RcptTo};
use super::content::{self, Violation};
use super::data::{DataEvent, DataFailure, DataReceiver};
use super::message::{self, TraceInfo};
pub use super::reply::RejectReason;
use super::reply::{self, Rejection, Reply};
use super::sasl;
use ipnet::IpNet;

/// Limits and policy for one listener; shared by its sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// Advertised in SIZE and enforced at MAIL and while reading the body.
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Longest command line including CRLF (RFC 5321 4.5.3.1.4: 512).
    pub max_command_line: usize,
    /// Longest text line including CRLF (RFC 5321 4.5.3.1.6: 1000).
    pub max_text_line: usize,
    /// Replies >= 500 tolerated before the session is closed with 421.
    pub max_errors: u32,
    /// Recipients accepted per session, all transactions together.
    pub max_recipients_per_session: usize,
    /// Clients allowed to relay to any domain.
    pub relay_networks: Vec<IpNet>,
    /// Domains accepted from anyone (lower case, no trailing dot).
    pub local_domains: HashSet<String>,
    /// Refuse untrusted clients that send before the reply to EHLO/HELO/DATA (RFC 2920 3.1).
    pub forbid_unauth_pipelining: bool,
    /// RCPTs over `max_recipients` answered 452 without counting as client errors.
    pub recipient_overshoot_limit: usize,
    /// Trace headers (`Received:`, `Delivered-To:`) a message may carry; more is a loop (554
    /// 5.4.6), as Postfix's `hopcount_limit`.
    pub max_hops: usize,
    /// Where mail to `<postmaster>` (no domain) goes (`[local] postmaster`); None: refused.
    pub postmaster: Option<Mailbox>,
    /// STARTTLS is offered (the listener has a certificate and is not implicit TLS).
    pub starttls: bool,
    /// AUTH is offered (users are configured).
    pub auth: bool,
    /// MAIL needs an authenticated session (submission, RFC 6409 4.3).
    pub auth_required: bool,
    /// AUTH only over TLS (RFC 4954 4: a switch for loopback tests may turn it off).
    pub auth_needs_tls: bool,
    /// Recipients refused for trusted clients (the suppression list).
    pub recipient_policy: Option<Arc<dyn RecipientPolicy>>,
    /// The local mailboxes, when `[local] mailboxes` is on.
    pub local_recipients: Option<Arc<dyn LocalRecipients>>,
    /// Sending quotas of tenants and users (`[tenant.NAME]`, `sluice user limit`).
    pub quota: Option<Arc<dyn SendQuota>>,
}

/// Sending quotas as MAIL and RCPT see them, decided in memory: why a transaction of the
/// authenticated `user` (whose mail goes under `tenant`) must wait, for the 452 4.7.1 reply.
pub trait SendQuota: Send + Sync + std::fmt::Debug {
    /// Before a transaction starts (counts one message against rates and hourly limits).
    fn mail(&self, user: &str, tenant: Option<&str>) -> Option<String>;
    /// Before the transaction's `nth` recipient (1-based) is accepted.
    fn rcpt(&self, user: &str, tenant: Option<&str>, nth: usize) -> Option<String>;
}

/// Local mailboxes as RCPT sees them, decided in memory (users, aliases, known quota use).
pub trait LocalRecipients: Send + Sync + std::fmt::Debug {
    /// `size`: the message size MAIL declared (RFC 1870), if any.
    fn check(&self, rcpt: &str, size: Option<u64>) -> LocalCheck;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCheck {
    /// Not a mailbox domain.
    NotLocal,
    Accept,
    /// No such user or alias: 550 5.1.1 (refused now, so no backscatter later).
    Unknown,
    /// Over quota: 452 4.2.2, the client tries again later.
    Full,
}

/// A refusal of recipients that is decided in memory, with no network I/O (the suppression
/// list), and applies to trusted clients: mail sluice would send on their behalf.
pub trait RecipientPolicy: Send + Sync + std::fmt::Debug {
    /// Why `rcpt` must not be accepted for `tenant` (its entries and the global ones), for
    /// the 550 5.7.1 reply; None to accept it.
    fn refusal(&self, tenant: Option<&str>, rcpt: &str) -> Option<String>;
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            max_message_size: 50 << 20,
            max_recipients: 1000,
            max_command_line: 512,
            max_text_line: 1000,
            max_errors: 20,
            max_recipients_per_session: 10_000,
            relay_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            local_domains: HashSet::new(),
            postmaster: None,
            max_hops: 50,
            recipient_overshoot_limit: 10_000,
            forbid_unauth_pipelining: true,
            starttls: false,
            auth: false,
            auth_required: false,
            auth_needs_tls: true,
            recipient_policy: None,
            local_recipients: None,
            quota: None,
        }
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Write [`Session::output`], then read more into [`Session::input`] (with the timeout of
    /// [`Session::waiting_for`]) and call `advance` again.
    NeedInput,
    /// Store this message durably, then call [`Session::handle_stored`]. Do not call `advance`
    /// before that.
    Store(Box<Transaction>),
    /// Write [`Session::output`] (the 220 to STARTTLS), run the TLS handshake, then call
    /// [`Session::tls_established`] (or close if it failed).
    StartTls,
    /// Check these credentials, then call [`Session::handle_auth`].
    Authenticate(Credentials),
    /// Write [`Session::output`] and close the connection.
    Close,
}

/// The driver's verdict on an AUTH attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Accepted; `senders` are the MAIL FROM addresses (`user@dom`) or domains (`@dom`) the user
    /// may use (empty: any); `tenant` the one the user's mail is sent for.
    Ok { senders: Vec<String>, tenant: Option<String> },
    /// 535 5.7.8
    Invalid,
    /// Too many failures from this client or for this user: 454 4.7.0.
    LockedOut,
    /// Valid, but the user's tenant is at its session cap (the text says so): 454 4.7.0.
    TenantBusy(String),
}

/// The user a session authenticated as, and what it was granted.
#[derive(Debug)]
struct Authenticated {
    user: String,
    senders: Vec<String>,
    tenant: Option<String>,
}

/// What the session waits for, so the driver can pick the RFC 5321 4.5.3.2 timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Command,
    Data,
}

/// Things worth counting, drained by the driver into metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Accepted { bytes: usize },
    Rejected(RejectReason),
}

/// A complete mail transaction, ready to be stored.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail: MailFrom,
    pub rcpts: Vec<RcptTo>,
    /// The message as received, unstuffed, without the Received header.
    pub body: Bytes,
    pub helo: String,
    pub esmtp: bool,
    pub client_ip: IpAddr,
    /// Whether the body came with BDAT (RFC 3030) rather than DATA.
    pub chunking: bool,
    pub tls: bool,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
    /// The addresses (`user@dom`) and domains (`@dom`) that user may send as (empty: any).
    pub auth_senders: Vec<String>,
    /// The tenant that user's mail is sent for.
    pub auth_tenant: Option<String>,
    /// Authenticated or from a relay network: mail sluice sends on the client's behalf, and
    /// so signs (DKIM).
    pub trusted: bool,
}

impl Transaction {
    /// RFC 3848: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA (both).
    pub fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls, self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// The `Received:` header for this transaction, as its own buffer.
    pub fn trace_header(&self, hostname: &str, queue_id: &str, unix_time: u64) -> String {
        let single = match self.rcpts.as_slice() {
            [one] => Some(one.to.as_str()),
            _ => None,
        };
        message::received_header(&TraceInfo {
            helo: &self.helo,
            client_ip: self.client_ip,
            hostname,
            protocol: self.protocol(),
            queue_id,
            single_recipient: single,
            unix_time,
        })
    }
}

/// Why storing failed, as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Larger than the server's limit: 552 5.3.4.
    TooBig,
    /// Too many trace fields (a loop): 554 5.4.6.
    Loop,
    /// The memory budget is spent: 452 4.3.1.
    OverBudget,
    /// Every recipient is suppressed for the message's tenant: 550 5.7.1 with the reason.
    Suppressed(String),
    /// Disk full or over a storage limit: 452 4.3.1.
    NoSpace,
    /// Any other storage failure: 451 4.3.0.
    Failed,
    /// The server is stopping: 421 4.3.0.
    ShuttingDown,
    /// DKIM signing failed (a key or library error): 451 4.3.0.
    Signing,
    /// DMARC `p=reject` failed and `[verify] dmarc_reject = "reject"`: 550 5.7.1.
    DmarcReject,
    /// SPF failed and `[verify] spf_fail = "reject"`: 550 5.7.23 (RFC 7372).
    SpfReject,
    /// The From: domain is not one the authenticated user may send as, and
    /// `[signing] unaligned_from = "refuse"`: 550 5.7.1.
    UnalignedFrom,
    /// The tenant's or campaign's circuit breaker is open: 452 4.7.1 with the reason.
    CircuitOpen(String),
}

#[derive(Debug)]
enum State {
    Command,
    Data(DataReceiver),
    Bdat(BdatChunk),
    AwaitStore,
    /// STARTTLS accepted; the driver runs the handshake.
    AwaitTls,
    /// Credentials handed to the driver.
    AwaitAuth,
    /// An AUTH exchange waits for the client's next line.
    Sasl(sasl::Pending),
    Closed,
}

#[derive(Debug)]
struct BdatChunk {
    remaining: usize,
    last: bool,
    /// When set, the chunk is read and dropped, and this is the reply.
    refuse: Option<Rejection>,
}

/// The transaction being built between MAIL and the end of data.
#[derive(Debug, Default)]
struct Draft {
    mail: MailFrom,
    rcpts: Vec<RcptTo>,
    /// BDAT chunks so far.
    chunks: BytesMut,
    chunking: bool,
    /// A BDAT chunk was refused; the rest of the transaction is refused too (RFC 3030 2).
    failed: Option<Rejection>,
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    client_ip: IpAddr,
    state: State,
    /// HELO/EHLO argument and whether it was EHLO.
    helo: Option<(String, bool)>,
    draft: Option<Draft>,
    errors: u32,
    /// Discarding the rest of an over-long command line.
    skipping_line: bool,
    input: BytesMut,
    output: BytesMut,
    events: Vec<Event>,
    tls: bool,
    /// The authenticated user and the senders they own (empty: any).
    auth: Option<Authenticated>,
    /// The user whose credentials the driver is checking.
    auth_pending: Option<String>,
    rcpts_in_session: usize,
    /// RCPTs refused with 452 for exceeding `max_recipients`, this session.
    overshoot: usize,
}

impl Session {
    /// A new session; the greeting is already in [`Session::output`].
    pub fn new(cfg: Arc<SessionConfig>, client_ip: IpAddr) -> Self {
        let mut output = BytesMut::with_capacity(512);
        Reply::plain(220, format!("{} ESMTP sluice ready", cfg.hostname)).encode(&mut output);
        Session {
            cfg,
            client_ip,
            state: State::Command,
            helo: None,
            draft: None,
            errors: 0,
            skipping_line: false,
            input: BytesMut::with_capacity(4096),
            output,
            events: Vec::new(),
            tls: false,
            auth: None,
            auth_pending: None,
            rcpts_in_session: 0,
            overshoot: 0,
        }
    }

    /// A session on an implicit-TLS listener (RFC 8314): TLS from the first byte.
    pub fn new_tls(cfg: Arc<SessionConfig>, client_ip: IpAddr) -> Self {
        let mut s = Session::new(cfg, client_ip);
        s.tls = true;
        s
    }

    /// The handshake after STARTTLS succeeded: everything learnt before is forgotten (RFC 3207
    /// 4.2), and the client starts again with EHLO.
    pub fn tls_established(&mut self) {
        debug_assert!(matches!(self.state, State::AwaitTls));
        self.tls = true;
        self.helo = None;
        self.draft = None;
        self.auth = None;
        self.state = State::Command;
    }

    /// The driver's verdict on the credentials of [`Step::Authenticate`].
    pub fn handle_auth(&mut self, result: AuthResult) {
        debug_assert!(matches!(self.state, State::AwaitAuth));
        self.state = State::Command;
        let user = self.auth_pending.take().unwrap_or_default();
        match result {
            AuthResult::Ok { senders, tenant } => {
                self.auth = Some(Authenticated { user, senders, tenant });
                self.reply(reply::AUTH_OK);
            }
            AuthResult::Invalid => self.reject(reply::AUTH_INVALID),
            AuthResult::LockedOut => self.reject(reply::AUTH_LOCKED_OUT),
            AuthResult::TenantBusy(why) => self.reject(Rejection::tenant_sessions(why)),
        }
    }

    /// The authenticated user, if any.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth.as_ref().map(|a| a.user.as_str())
    }

    /// The read buffer: the driver appends what it reads here.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Replies to send; the driver writes and clears it.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    pub fn waiting_for(&self) -> Waiting {
        match self.state {
            State::Data(_) | State::Bdat(_) => Waiting::Data,
            _ => Waiting::Command,
        }
    }

    /// Bytes this session buffers (read buffer plus BDAT chunks), for the memory budget.
    pub fn held_bytes(&self) -> usize {
        self.input.len() + self.draft.as_ref().map_or(0, |d| d.chunks.len())
    }

    /// Whether the session is reading a message body (the only time the budget is enforced).
    pub fn reading_body(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat(_))
    }

    /// The server-wide budget for bodies in flight is spent (DESIGN.md invariant 5): the current
    /// message is refused with 452 4.3.1 and what it holds is dropped as it is read. Returns
    /// true if this refused the message (false if it was refused already).
    pub fn handle_over_budget(&mut self) -> bool {
        match &mut self.state {
            State::Data(rx) => rx.refuse(DataFailure::OverBudget),
            State::Bdat(chunk) if chunk.refuse.is_none() => {
                let refusal = reply::MEMORY_BUDGET;
                chunk.refuse = Some(refusal.clone());
                if let Some(d) = self.draft.as_mut() {
                    d.failed = Some(refusal);
                    d.chunks = BytesMut::new();
                }
                true
            }
            _ => false,
        }
    }

    /// The read timed out (RFC 5321 4.5.3.2): 421 and close.
    pub fn handle_timeout(&mut self) {
        self.close_with(reply::TIMEOUT);
    }

    /// The client spoke before the greeting (a spam-bot tell): 554 instead of the greeting.
    pub fn handle_pregreet(&mut self) {
        self.output.clear();
        self.input.clear();
        self.close_with(reply::PREGREET);
    }

    /// The message data arrives slower than the listener's minimum rate: 421 and close.
    pub fn handle_too_slow(&mut self) {
        self.draft = None;
        self.close_with(reply::TOO_SLOW);
    }

    /// The server is stopping: 421 and close. Not for use while a store is pending.
    pub fn handle_shutdown(&mut self) {
        self.close(reply::SHUTTING_DOWN);
    }

    /// The outcome of a [`Step::Store`]: `Ok(queue id)` once the message is durable.
    pub fn handle_stored(&mut self, result: Result<&str, StoreError>, size: usize) {
        debug_assert!(matches!(self.state, State::AwaitStore));
        self.state = State::Command;
        match result {
            Ok(id) => {
                self.events.push(Event::Accepted { bytes: size });
                self.reply(Reply::owned(250, "2.0.0", format!("OK queued as {id}")));
            }
            // Our resources or our fault, not the client's: no count toward max_errors (a
            // trusted injector retrying into a full spool must not be disconnected for it).
            Err(StoreError::NoSpace) => self.refuse(reply::STORAGE_FULL),
            Err(StoreError::OverBudget) => self.refuse(reply::MEMORY_BUDGET),
            Err(StoreError::Suppressed(why)) => self.refuse(Rejection::suppressed(why)),
            Err(StoreError::TooBig) => self.reject(reply::MESSAGE_TOO_BIG),
            Err(StoreError::Loop) => self.reject(reply::TOO_MANY_HOPS),
            Err(StoreError::Failed) => self.refuse(reply::STORAGE_ERROR),
            Err(StoreError::Signing) => self.refuse(reply::SIGNING_ERROR),
            Err(StoreError::DmarcReject) => self.reject(reply::DMARC_REJECT),
            Err(StoreError::SpfReject) => self.reject(reply::SPF_REJECT),
            Err(StoreError::UnalignedFrom) => self.reject(reply::FROM_NOT_OWNED),
            Err(StoreError::ShuttingDown) => self.close(reply::SHUTTING_DOWN),
            Err(StoreError::CircuitOpen(why)) => self.refuse(Rejection::circuit_open(why)),
        }
    }

    /// Processes buffered input until the session needs more input, storage, or to close.
    pub fn advance(&mut self) -> Step {
        loop {
            match &mut self.state {
                State::Closed => return Step::Close,
                State::AwaitStore | State::AwaitTls | State::AwaitAuth => {
                    debug_assert!(false, "advance() while the driver owes an answer");
                    return Step::Close;
                }
                State::Sasl(_) => {
                    let Some(lf) = memchr::memchr(b'\n', &self.input) else {
                        if self.input.len() > 12_288 {
                            // RFC 4954 4: lines up to 12288 octets; longer ones end the exchange,
                            // and the rest of the line is skipped whole (never read as commands).
                            self.input.clear();
                            self.skipping_line = true;
                            self.state = State::Command;
                            self.reject(reply::LINE_TOO_LONG);
                            continue;
                        }
                        return Step::NeedInput;
                    };
                    let line = self.input.split_to(lf + 1);
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    let State::Sasl(pending) = std::mem::replace(&mut self.state, State::Command)
                    else {
                        unreachable!("matched above")
                    };
                    if let Some(step) = self.sasl_progress(sasl::step(pending, &line)) {
                        return step;
                    }
                }
                State::Command => {
                    if let Some(step) = self.next_command() {
                        return step;
                    }
                }
                State::Data(rx) => match rx.ingest(&mut self.input) {
                    DataEvent::NeedMore => return Step::NeedInput,
                    DataEvent::End(body) => {
                        if let Some(step) = self.finish_data(body.freeze(), false) {
                            return step;
                        }
                    }
                    DataEvent::Refused(f) => {
                        self.state = State::Command;
                        self.draft = None;
                        match f {
                            DataFailure::TooBig => self.reject(reply::MESSAGE_TOO_BIG),
                            DataFailure::LineTooLong => self.reject(reply::TEXT_LINE_TOO_LONG),
                            DataFailure::OverBudget => self.refuse(reply::MEMORY_BUDGET),
                            DataFailure::Nul => self.reject(reply::NUL_IN_TEXT),
                        }
                    }
                    DataEvent::BareCrLf => {
                        self.draft = None;
                        self.close_with(reply::BARE_CR_LF);
                    }
                },
                State::Bdat(_) => {
                    if let Some(step) = self.read_chunk() {
                        return step;
                    }
                }
            }
        }
    }

    // ---- command lines ----------------------------------------------------------------------

    /// Handles one command line if a whole one is buffered; `Some(step)` when the caller must
    /// return.
    fn next_command(&mut self) -> Option<Step> {
        let Some(lf) = memchr::memchr(b'\n', &self.input) else {
            if self.input.len() > self.cfg.max_command_line {
                // Drop what we have and the rest of the line when it comes.
                self.input.clear();
                if !self.skipping_line {
                    self.skipping_line = true;
                    self.reject(reply::LINE_TOO_LONG);
                }
            }
            return Some(if self.state_is_closed() { Step::Close } else { Step::NeedInput });
        };
        let line = self.input.split_to(lf + 1).freeze();
        if std::mem::take(&mut self.skipping_line) {
            return None;
        }
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() + 2 > self.cfg.max_command_line {
            self.reject(reply::LINE_TOO_LONG);
            return None;
        }
        match command::parse(line) {
            Ok(cmd) => self.handle_command(cmd),
            Err(e) => {
                self.reject(e.rejection());
                None
            }
        }
    }

    fn state_is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    fn handle_command(&mut self, cmd: Command) -> Option<Step> {
        // RFC 2920 3.1: EHLO/HELO and DATA end a command group; the client must wait for their
        // reply. An untrusted client that already sent more (message text before 354, say) is
        // refused, as Postfix 3.9's smtpd_forbid_unauth_pipelining: a bot's tell, and a way to
        // get text read as commands by a server that replies differently than expected.
        if self.cfg.forbid_unauth_pipelining
            && matches!(cmd, Command::Ehlo(_) | Command::Helo(_) | Command::Data)
            && !self.input.is_empty()
            && !self.trusted()
        {
            self.input.clear();
            self.draft = None;
            self.close_with(reply::IMPROPER_PIPELINING);
            return Some(Step::Close);
        }
        match cmd {
            Command::Ehlo(domain) => self.handle_ehlo(domain),
            Command::Helo(domain) => self.handle_helo(domain),
            Command::Mail(mail) => self.handle_mail(mail),
            Command::Rcpt(rcpt) => self.handle_rcpt(rcpt),
            Command::Data => self.handle_data(),
            Command::Bdat { size, last } => self.handle_bdat(size, last),
            Command::Rset => {
                self.draft = None;
                self.reply(reply::RESET_OK);
            }
            Command::Noop => self.reply(reply::OK),
            Command::Vrfy => self.reply(reply::VRFY),
            Command::Expn => self.reject(reply::EXPN),
            Command::Help => self.reply(reply::HELP),
            Command::Quit => {
                self.reply(reply::BYE);
                self.state = State::Closed;
                return Some(Step::Close);
            }
            Command::StartTls => return self.handle_starttls(),
            Command::Auth { mechanism, initial } => {
                return self.handle_auth_command(&mechanism, initial.as_deref());
            }
        }
        if self.state_is_closed() { Some(Step::Close) } else { None }
    }

    /// RFC 3207: STARTTLS once, on a listener that offers it. Anything the client pipelined
    /// after it is discarded, never executed inside TLS (CVE-2011-0411 class).
    fn handle_starttls(&mut self) -> Option<Step> {
        if self.tls {
            self.reject(reply::TLS_ALREADY_ACTIVE);
        } else if !self.cfg.starttls {
            self.reject(reply::STARTTLS_NOT_AVAILABLE);
        } else {
            self.input.clear();
            self.reply(reply::STARTTLS_READY);
            self.state = State::AwaitTls;
            return Some(Step::StartTls);
        }
        if self.state_is_closed() { Some(Step::Close) } else { None }
    }

    /// RFC 4954 4.
    fn handle_auth_command(&mut self, mechanism: &str, initial: Option<&str>) -> Option<Step> {
        let refusal = if !self.cfg.auth {
            Some(reply::AUTH_NOT_AVAILABLE)
        } else if self.helo.is_none() {
            Some(reply::NEED_HELO)
        } else if self.auth.is_some() {
            Some(reply::ALREADY_AUTHENTICATED)
        } else if self.draft.is_some() {
            Some(reply::AUTH_IN_TRANSACTION)
        } else if !self.tls && self.cfg.auth_needs_tls {
            Some(reply::STARTTLS_FIRST)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.reject(r);
            return self.state_is_closed().then_some(Step::Close);
        }
        self.sasl_progress(sasl::start(mechanism, initial))
    }

    fn sasl_progress(&mut self, p: Result<sasl::Progress, sasl::SaslError>) -> Option<Step> {
        match p {
            Ok(sasl::Progress::Challenge(c, pending)) => {
                self.reply(Reply::plain(334, c.to_string()));
                self.state = State::Sasl(pending);
                None
            }
            Ok(sasl::Progress::Done(creds)) => {
                self.auth_pending = Some(creds.username.clone());
                self.state = State::AwaitAuth;
                Some(Step::Authenticate(creds))
            }
            Err(e) => {
                let r = match e {
                    sasl::SaslError::UnknownMechanism => reply::AUTH_MECHANISM_UNKNOWN,
                    sasl::SaslError::Malformed => reply::AUTH_UNDECODABLE,
                    sasl::SaslError::Cancelled => reply::AUTH_CANCELLED,
                };
                self.reject(r);
                self.state_is_closed().then_some(Step::Close)
            }
        }
    }

    /// RFC 5321 4.1.1.1: EHLO resets the transaction and lists the extensions.
    fn handle_ehlo(&mut self, domain: String) {
        self.draft = None;
        let mut text = format!(
            "{}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING\nDSN\nHELP",
            self.cfg.hostname, self.cfg.max_message_size
        );
        if self.cfg.starttls && !self.tls {
            text.push_str("\nSTARTTLS");
        }
        // RFC 4954 4: AUTH is not advertised where it would be refused.
        if self.cfg.auth && self.auth.is_none() && (self.tls || !self.cfg.auth_needs_tls) {
            text.push_str("\nAUTH PLAIN LOGIN");
        }
        self.helo = Some((domain, true));
        // EHLO keyword lines carry no enhanced code (RFC 2034 3).
        self.reply(Reply::plain(250, text));
    }

    fn handle_helo(&mut self, domain: String) {
        self.draft = None;
        self.helo = Some((domain, false));
        self.reply(Reply::plain(250, self.cfg.hostname.clone()));
    }

    /// RFC 5321 4.1.1.2, with SIZE (RFC 1870 6) and SMTPUTF8 (RFC 6531 3.4).
    fn handle_mail(&mut self, mail: MailFrom) {
        if self.helo.is_none() {
            return self.reject(reply::NEED_HELO);
        }
        if self.draft.is_some() {
            return self.reject(reply::NESTED_MAIL);
        }
        if mail.size.is_some_and(|s| s > self.cfg.max_message_size as u64) {
            return self.reject(reply::MESSAGE_TOO_BIG);
        }
        if mail.from.as_ref().is_some_and(|f| !f.is_ascii()) && !mail.smtputf8 {
            return self.reject(reply::UTF8_NOT_ALLOWED);
        }
        if self.cfg.auth_required && self.auth.is_none() {
            return self.reject(reply::AUTH_REQUIRED);
        }
        if let Some(Authenticated { senders, .. }) = &self.auth
            && !senders.is_empty()
            && !mail.from.as_ref().is_some_and(|f| owns(senders, f.as_str()))
        {
            return self.reject(reply::SENDER_NOT_OWNED);
        }
        if let (Some(q), Some(a)) = (&self.cfg.quota, &self.auth)
            && let Some(why) = q.mail(&a.user, a.tenant.as_deref())
        {
            return self.refuse(Rejection::quota(why));
        }
        self.draft = Some(Draft { mail, ..Default::default() });
        self.reply(reply::SENDER_OK);
    }

    /// RFC 5321 4.1.1.3 with the relay policy (RFC 5321 3.6, 7.1).
    fn handle_rcpt(&mut self, mut rcpt: RcptTo) {
        let Some(draft) = self.draft.as_ref() else {
            return self.reject(reply::NEED_MAIL);
        };
        if self.rcpts_in_session >= self.cfg.max_recipients_per_session {
            return self.reject(reply::TOO_MANY_RCPTS_SESSION);
        }
        if draft.rcpts.len() >= self.cfg.max_recipients {
            // RFC 5321 4.5.3.1.10: 452, and the client sends the rest in another transaction.
            // Pipelining clients overshoot by design: that is no client error, up to the
            // overshoot limit (Postfix's smtpd_recipient_overshoot_limit).
            self.overshoot += 1;
            if self.overshoot <= self.cfg.recipient_overshoot_limit {
                return self.refuse(reply::TOO_MANY_RCPTS);
            }
            return self.reject(reply::TOO_MANY_RCPTS);
        }
        if !rcpt.to.is_ascii() && !draft.mail.smtputf8 {
            return self.reject(reply::UTF8_NOT_ALLOWED);
        }
        // RFC 6533 4: a UTF-8 ORCPT (utf-8-addr-xtext) only with SMTPUTF8.
        if rcpt.orcpt.as_deref().is_some_and(|o| !o.is_ascii()) && !draft.mail.smtputf8 {
            return self.reject(reply::ORCPT_NEEDS_SMTPUTF8);
        }
        if !self.may_send_to(&rcpt.to) || (!self.trusted() && rcpt.to.has_routing_local_part()) {
            return self.reject(reply::RELAY_DENIED);
        }
        if self.trusted()
            && let Some(policy) = &self.cfg.recipient_policy
            && let Some(why) = policy
                .refusal(self.auth.as_ref().and_then(|a| a.tenant.as_deref()), rcpt.to.as_str())
        {
            // Not a client error: a bulk sender's list may hold many of these.
            return self.refuse(Rejection::suppressed(why));
        }
        // RFC 5321 4.5.1: `<postmaster>` goes to the configured postmaster's address. Without
        // one it could never be delivered: refused now rather than accepted and bounced.
        if rcpt.to.domain().is_empty() {
            match &self.cfg.postmaster {
                Some(m) => rcpt.to = m.clone(),
                None => return self.reject(reply::NO_POSTMASTER),
            }
        }
        if let (Some(q), Some(a), Some(d)) = (&self.cfg.quota, &self.auth, &self.draft)
            && let Some(why) = q.rcpt(&a.user, a.tenant.as_deref(), d.rcpts.len() + 1)
        {
            return self.refuse(Rejection::quota(why));
        }
        if let Some(local) = &self.cfg.local_recipients {
            let size = self.draft.as_ref().and_then(|d| d.mail.size);
            match local.check(rcpt.to.as_str(), size) {
                LocalCheck::Unknown => return self.reject(reply::NO_SUCH_USER),
                LocalCheck::Full => return self.refuse(reply::MAILBOX_FULL),
                LocalCheck::NotLocal | LocalCheck::Accept => {}
            }
        }
        if let Some(d) = self.draft.as_mut() {
            d.rcpts.push(rcpt);
        }
        self.rcpts_in_session += 1;
        self.reply(reply::RECIPIENT_OK);
    }

    /// Local domains (and `<postmaster>`) from anyone; other domains only from relay networks
    /// and authenticated sessions.
    fn may_send_to(&self, to: &Mailbox) -> bool {
        let domain = to.domain().trim_end_matches('.').to_ascii_lowercase();
        domain.is_empty() || self.trusted() || self.cfg.local_domains.contains(&domain)
    }

    /// Authenticated, or from a relay network.
    fn trusted(&self) -> bool {
        self.auth.is_some() || self.cfg.relay_networks.iter().any(|n| n.contains(&self.client_ip))
    }

    /// Checks shared by DATA and BDAT; `Err` carries the refusal.
    fn check_ready_for_body(&self) -> Result<(), Rejection> {
        if self.helo.is_none() {
            return Err(reply::NEED_HELO);
        }
        match &self.draft {
            None => Err(reply::NEED_RCPT),
            Some(d) if d.rcpts.is_empty() => Err(reply::NO_VALID_RCPT),
            Some(_) => Ok(()),
        }
    }

    /// RFC 5321 4.1.1.4
    fn handle_data(&mut self) {
        if let Err(r) = self.check_ready_for_body() {
            return self.reject(r);
        }
        if self.draft.as_ref().is_some_and(|d| d.chunking) {
            return self.reject(reply::DATA_AFTER_BDAT);
        }
        // With SIZE= we know how much to expect: fewer reallocations. Capped, so that a declared
        // size alone cannot make a session allocate much before the data arrives.
        if let Some(size) = self.draft.as_ref().and_then(|d| d.mail.size) {
            let want = (size as usize).min(self.cfg.max_message_size).min(4 << 20) + 1024;
            self.input.reserve(want.saturating_sub(self.input.len()));
        }
        self.reply(reply::START_DATA);
        self.state =
            State::Data(DataReceiver::new(self.cfg.max_message_size, self.cfg.max_text_line));
    }

    /// RFC 3030 2: the chunk follows the command line and must be consumed whatever the reply.
    fn handle_bdat(&mut self, size: u64, last: bool) {
        let held = self.draft.as_ref().map_or(0, |d| d.chunks.len() as u64);
        let refuse = match self.check_ready_for_body() {
            Err(e) => Some(e),
            Ok(()) => match self.draft.as_ref().and_then(|d| d.failed.clone()) {
                Some(e) => Some(e),
                None if held + size > self.cfg.max_message_size as u64 => {
                    Some(reply::MESSAGE_TOO_BIG)
                }
                None => None,
            },
        };
        if let Some(d) = self.draft.as_mut() {
            d.chunking = true;
            if refuse.is_some() && d.failed.is_none() {
                d.failed = refuse.clone();
                d.chunks = BytesMut::new();
            }
        }
        // `usize` on 64-bit holds any u64; on 32-bit an oversized chunk is refused above.
        let remaining = usize::try_from(size).unwrap_or(usize::MAX);
        self.state = State::Bdat(BdatChunk { remaining, last, refuse });
    }

    /// Reads (or discards) the current BDAT chunk.
    fn read_chunk(&mut self) -> Option<Step> {
        let State::Bdat(chunk) = &mut self.state else { return None };
        if chunk.refuse.is_some() {
            // Stream refused chunks through without holding them.
            let n = chunk.remaining.min(self.input.len());
            self.input.advance(n);
            chunk.remaining -= n;
        } else if self.input.len() >= chunk.remaining {
            let part = self.input.split_to(chunk.remaining);
            chunk.remaining = 0;
            if let Some(d) = self.draft.as_mut() {
                // O(1) when the chunks are adjacent in one allocation, a copy otherwise.
                d.chunks.unsplit(part);
            }
        } else {
            // Wait for the whole chunk (its size was checked against the limit); the buffer grows
            // as data arrives, so a declared size alone allocates nothing.
            return Some(Step::NeedInput);
        }
        if chunk.remaining > 0 {
            return Some(Step::NeedInput);
        }
        let (last, refuse) = (chunk.last, chunk.refuse.take());
        self.state = State::Command;
        match refuse {
            Some(r) => {
                if last {
                    self.draft = None;
                }
                self.reject(r);
                None
            }
            None if last => {
                let body = self.draft.as_mut().map(|d| std::mem::take(&mut d.chunks));
                let body = body.unwrap_or_default().freeze();
                // The same content policy as DATA (content.rs): BDAT framing is by length, so
                // the session goes on, but such a message is never stored.
                if let Err(v) = content::check(&body, self.cfg.max_text_line) {
                    self.draft = None;
                    let r = match v {
                        Violation::BareCrLf => reply::BARE_CR_LF_BDAT,
                        Violation::Nul => reply::NUL_IN_TEXT,
                        Violation::LineTooLong => reply::TEXT_LINE_TOO_LONG,
                    };
                    self.reject(r);
                    return None;
                }
                self.finish_data(body, true)
            }
            None => {
                let held = self.draft.as_ref().map_or(0, |d| d.chunks.len());
                self.reply(Reply::owned(250, "2.0.0", format!("{held} octets received")));
                None
            }
        }
    }

    /// The whole message is in: a store step, or None when it was refused (the session goes on).
    fn finish_data(&mut self, body: Bytes, chunking: bool) -> Option<Step> {
        let draft = self.draft.take().unwrap_or_default();
        // RFC 5321 6.3: a message that has been around this many times is in a loop.
        if message::hop_count(&body) > self.cfg.max_hops {
            self.state = State::Command;
            self.reject(reply::TOO_MANY_HOPS);
            return None;
        }
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        self.state = State::AwaitStore;
        Some(Step::Store(Box::new(Transaction {
            mail: draft.mail,
            rcpts: draft.rcpts,
            body,
            helo,
            esmtp,
            client_ip: self.client_ip,
            chunking,
            tls: self.tls,
            auth_user: self.auth.as_ref().map(|a| a.user.clone()),
            auth_senders: self.auth.as_ref().map(|a| a.senders.clone()).unwrap_or_default(),
            auth_tenant: self.auth.as_ref().and_then(|a| a.tenant.clone()),
            trusted: self.trusted(),
        })))
    }

    // ---- replies ----------------------------------------------------------------------------

    fn reply(&mut self, r: Reply) {
        r.encode(&mut self.output);
    }

    /// A refusal that is no client error (a pipelining overshoot, a suppressed recipient):
    /// counted in metrics, not toward `max_errors`.
    fn refuse(&mut self, r: Rejection) {
        self.events.push(Event::Rejected(r.reason));
        self.reply(r.reply);
    }

    /// A refusal: counted, and after `max_errors` of them the session ends (421 4.7.0).
    fn reject(&mut self, r: Rejection) {
        self.refuse(r);
        self.errors += 1;
        if self.errors >= self.cfg.max_errors && !self.state_is_closed() {
            self.close_with(reply::TOO_MANY_ERRORS);
        }
    }

    /// Ends the session with a refusal.
    fn close_with(&mut self, r: Rejection) {
        self.refuse(r);
        self.state = State::Closed;
    }

    /// Ends the session without a refusal (shutdown).
    fn close(&mut self, r: Reply) {
        self.reply(r);
        self.state = State::Closed;
    }
}

/// Whether `from` is one of `senders`: an exact address (case-insensitive) or `@domain`.
fn owns(senders: &[String], from: &str) -> bool {
    let from = from.to_ascii_lowercase();
    let domain = from.rsplit_once('@').map_or("", |(_, d)| d);
    senders.iter().any(|s| {
        let s = s.to_ascii_lowercase();
        match s.strip_prefix('@') {
            Some(d) => d == domain,
            None => s == from,
        }
    })
}

impl BodyType {
    pub fn label(self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
        }
    }
}

#[cfg(test)]
mod tests;
