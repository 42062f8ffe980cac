//! The outbound SMTP client as a sans-IO state machine (RFC 5321 3.3, 4.1; RFC 2920 pipelining;
//! RFC 3030 BDAT; RFC 1870 SIZE; RFC 6152/6531 8BITMIME/SMTPUTF8 checks; RFC 3207 STARTTLS;
//! RFC 4954 AUTH with PLAIN (RFC 4616) or LOGIN).
//!
//! ```text
//!  Greeting ─220─► Ehlo ─250─┬──────────────────────────────┬─► [AUTH ─235─►] Ready ──start()──►
//!                   │        └─► STARTTLS ─220─► (handshake) ─► Ehlo ─250─┘
//!                   └─5xx─► Helo ─250─► Ready   (RSET between transactions when one was aborted)
//! ```
//! The driver writes what [`Client::poll_transmit`] returns, feeds what it reads to
//! [`Client::handle_input`], and acts on [`Client::poll_event`]. The body is handed over as
//! `Bytes` and sent as slices of it (dot-stuffed for DATA, as is for BDAT): never copied.

use std::collections::VecDeque;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};

use super::command::{Notify, Ret};
use super::data::dot_stuff;
use super::reply::Reply;
use crate::proto::secret::Secret;

/// What the server offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    pub starttls: bool,
    pub dsn: bool,
    /// SASL mechanisms offered (RFC 4954), upper case.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Parses EHLO reply lines (the first line is the greeting).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Capabilities { esmtp: true, ..Default::default() };
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "DSN" => caps.dsn = true,
                "AUTH" => caps.auth.extend(words.map(|w| w.to_ascii_uppercase())),
                // The pre-RFC form some servers still send ("AUTH=LOGIN PLAIN").
                k if k.starts_with("AUTH=") => {
                    caps.auth.push(k["AUTH=".len()..].to_string());
                    caps.auth.extend(words.map(|w| w.to_ascii_uppercase()));
                }
                _ => {}
            }
        }
        caps
    }
}

/// When to use STARTTLS (RFC 3207); `[delivery] tls` and `[[route]] tls` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    Disabled,
    /// STARTTLS when offered, the certificate not verified (RFC 7435); plaintext otherwise.
    Opportunistic,
    /// STARTTLS with a verified certificate (Web PKI roots plus `ca_file`), or no delivery.
    Required,
}

/// SMTP AUTH credentials (a client's, or ours for a smart host). The password is a
/// [`Secret`]: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// What the session must establish before it is ready for mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    pub tls: TlsPolicy,
    /// Sent only over TLS: a session without TLS and with credentials fails instead.
    pub auth: Option<Credentials>,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy { tls: TlsPolicy::Opportunistic, auth: None }
    }
}

/// One message to send over this connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Empty for the null reverse-path.
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message: added headers first, then the body; sent in this order without copying.
    pub content: Vec<Bytes>,
    pub eightbit: bool,
    pub smtputf8: bool,
    /// DSN parameters (RFC 3461), passed on when the server offers DSN.
    pub dsn: DsnParams,
}

/// RFC 3461 parameters of a transaction, as received (ENVID and ORCPT still xtext-encoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsnParams {
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// Per recipient, in order (empty = none): NOTIFY and ORCPT.
    pub recipients: Vec<(Option<Notify>, Option<String>)>,
}

impl Outbound {
    pub fn len(&self) -> usize {
        self.content.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outcome of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    /// One reply per recipient, in order: the RCPT reply if it was refused, else the reply to the
    /// end of data (which applies to every accepted recipient).
    pub recipients: Vec<Reply>,
}

/// Why the connection cannot go on; every pending recipient takes this outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFailure {
    /// The server answered something that ends the session (greeting refused, 421, ...).
    Refused(Reply),
    /// A reply line that is not SMTP.
    Protocol(String),
    /// The message cannot be sent to this server as it is (RFC 6152, 6531, 1870 checks): a
    /// permanent failure without talking to the server.
    Unsendable(Reply),
    /// TLS is required and the server does not offer it or refused STARTTLS.
    Tls(String),
    /// Authentication failed or was impossible (no common mechanism, no TLS).
    Auth(String),
    /// The connection ended (EOF or a socket error) with commands outstanding.
    Disconnected(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server accepted STARTTLS: the driver runs the TLS handshake on the connection, then
    /// calls [`Client::tls_established`] (or drops the connection if the handshake failed).
    StartTls,
    /// Connected and greeted (and TLS and AUTH done as the policy asks); `start` may be called.
    Ready(Capabilities),
    Done(TransactionResult),
    /// A message could not be sent (see [`ClientFailure::Unsendable`]); the session is Ready.
    Skipped(ClientFailure),
    /// The session is over; no further transaction on it.
    Failed(ClientFailure),
}

/// What the client waits for, so the driver picks the RFC 5321 4.5.3.2 timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Command,
    DataInit,
    DataTerm,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt(usize),
    /// DATA's 354 (or its refusal).
    Data,
    /// The reply after the body (DATA) or to BDAT LAST.
    End,
    Rset,
    Quit,
    StartTls,
    /// AUTH PLAIN with its initial response.
    AuthPlain,
    /// AUTH LOGIN: 0 = the command, 1 = the user name sent, 2 = the password sent.
    AuthLogin(u8),
}

pub struct Client {
    helo_name: String,
    policy: SessionPolicy,
    tls: bool,
    /// Opportunistic STARTTLS was refused: carry on in plaintext.
    tls_decided: bool,
    authenticated: bool,
    caps: Capabilities,
    input: BytesMut,
    transmit: VecDeque<Bytes>,
    events: VecDeque<ClientEvent>,
    /// Commands sent whose replies are awaited, in order.
    outstanding: VecDeque<Expect>,
    /// Commands not yet sent (one command may be several buffers: BDAT and its chunk).
    unsent: VecDeque<(Vec<Bytes>, Expect)>,
    tx: Option<InFlight>,
    closed: bool,
}

struct InFlight {
    msg: Outbound,
    /// Refusal per recipient (None = accepted so far).
    refused: Vec<Option<Reply>>,
    replies_seen: usize,
    mail_refused: Option<Reply>,
    /// Set once the end-of-data reply arrived.
    end: Option<Reply>,
}

impl InFlight {
    fn accepted(&self) -> usize {
        if self.mail_refused.is_some() {
            return 0;
        }
        self.refused[..self.replies_seen].iter().filter(|r| r.is_none()).count()
    }
}

impl Client {
    pub fn new(helo_name: impl Into<String>, policy: SessionPolicy) -> Self {
        Client {
            helo_name: helo_name.into(),
            policy,
            tls: false,
            tls_decided: false,
            authenticated: false,
            caps: Capabilities::default(),
            input: BytesMut::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            outstanding: VecDeque::from([Expect::Greeting]),
            unsent: VecDeque::new(),
            tx: None,
            closed: false,
        }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The TLS handshake after STARTTLS succeeded: forget what the server said before and greet
    /// again (RFC 3207 4.2).
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.caps = Capabilities::default();
        self.queue(format!("EHLO {}\r\n", self.helo_name), Expect::Ehlo);
        self.fill();
    }

    /// Bytes to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a reply is awaited (the driver reads only then).
    pub fn wants_input(&self) -> bool {
        !self.outstanding.is_empty() && !self.closed
    }

    pub fn phase(&self) -> Phase {
        match self.outstanding.front() {
            None => Phase::Idle,
            Some(Expect::Greeting) => Phase::Greeting,
            Some(Expect::Data) => Phase::DataInit,
            Some(Expect::End) => Phase::DataTerm,
            Some(_) => Phase::Command,
        }
    }

    /// Starts a transaction; only when idle after `Ready`, `Done` or `Skipped`.
    pub fn start(&mut self, msg: Outbound) {
        debug_assert!(self.tx.is_none() && self.outstanding.is_empty());
        // Checks that need no round trip (RFC 1870 4, RFC 6531 3.2, RFC 6152 3).
        let unsendable = if self.caps.size.is_some_and(|max| msg.len() as u64 > max) {
            Some(Reply::owned(
                552,
                "5.3.4",
                format!("message size {} exceeds the next hop's limit", msg.len()),
            ))
        } else if msg.smtputf8 && !self.caps.smtputf8 {
            Some(Reply::new(553, "5.6.7", "next hop does not support SMTPUTF8 (RFC 6531)"))
        } else if msg.eightbit && !self.caps.eightbitmime {
            Some(Reply::new(
                554,
                "5.6.3",
                "8-bit message and next hop lacks 8BITMIME; no conversion",
            ))
        } else {
            None
        };
        if let Some(r) = unsendable {
            self.events.push_back(ClientEvent::Skipped(ClientFailure::Unsendable(r)));
            return;
        }
        let mut mail = format!("MAIL FROM:<{}>", msg.sender);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", msg.len()));
        }
        if msg.eightbit {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        let dsn = self.caps.dsn.then_some(&msg.dsn);
        if let Some(d) = dsn {
            match d.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(e) = &d.envid {
                mail.push_str(&format!(" ENVID={e}"));
            }
        }
        mail.push_str("\r\n");
        self.queue(mail, Expect::Mail);
        for (i, r) in msg.recipients.iter().enumerate() {
            let mut rcpt = format!("RCPT TO:<{r}>");
            if let Some((notify, orcpt)) = dsn.and_then(|d| d.recipients.get(i)) {
                if let Some(n) = notify {
                    rcpt.push_str(&format!(" NOTIFY={}", n.to_param()));
                }
                if let Some(o) = orcpt {
                    rcpt.push_str(&format!(" ORCPT={o}"));
                }
            }
            rcpt.push_str("\r\n");
            self.queue(rcpt, Expect::Rcpt(i));
        }
        let n = msg.recipients.len();
        let bdat = self.caps.chunking;
        if bdat {
            // BDAT len LAST, then the content as is (RFC 3030 2).
            let len = msg.len();
            let mut parts = vec![Bytes::from(format!("BDAT {len} LAST\r\n"))];
            parts.extend(msg.content.iter().cloned());
            self.queue_parts(parts, Expect::End);
        } else {
            self.queue("DATA\r\n".to_string(), Expect::Data);
        }
        self.tx = Some(InFlight {
            msg,
            refused: vec![None; n],
            replies_seen: 0,
            mail_refused: None,
            end: None,
        });
        self.fill();
    }

    /// Ends the session politely.
    pub fn quit(&mut self) {
        if !self.closed {
            self.queue("QUIT\r\n".to_string(), Expect::Quit);
            self.fill();
        }
    }

    fn queue(&mut self, line: String, e: Expect) {
        self.unsent.push_back((vec![Bytes::from(line)], e));
    }

    fn queue_parts(&mut self, parts: Vec<Bytes>, e: Expect) {
        self.unsent.push_back((parts, e));
    }

    /// Sends what may be sent now: everything up to the first command whose reply decides what
    /// follows (DATA), with PIPELINING; one command at a time without it.
    fn fill(&mut self) {
        while let Some((_, e)) = self.unsent.front() {
            let e = *e;
            let pipelined = self.caps.pipelining
                && matches!(
                    e,
                    Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::End | Expect::Quit
                );
            if !self.outstanding.is_empty() && !pipelined {
                return;
            }
            // Without PIPELINING, skip DATA/BDAT when no recipient was accepted.
            if !self.caps.pipelining
                && matches!(e, Expect::Data | Expect::End)
                && let Some(tx) = &self.tx
                && tx.end.is_none()
                && tx.accepted() == 0
            {
                self.unsent.clear();
                self.abort_transaction();
                return;
            }
            if self.outstanding.back() == Some(&Expect::Data) {
                return; // nothing goes after DATA until its 354
            }
            let (parts, e) = self.unsent.pop_front().expect("front exists");
            self.transmit.extend(parts);
            self.outstanding.push_back(e);
        }
    }

    /// Feeds bytes read from the server.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        while !self.closed {
            match parse_reply(&mut self.input) {
                Ok(Some(reply)) => self.handle_reply(reply),
                Ok(None) => break,
                Err(line) => {
                    self.fail(ClientFailure::Protocol(line));
                    break;
                }
            }
        }
    }

    /// The connection ended (EOF or error): whatever is in flight fails as disconnected.
    pub fn handle_disconnect(&mut self, reason: &str) {
        if !self.closed && self.outstanding.front() != Some(&Expect::Quit) {
            self.fail(ClientFailure::Disconnected(reason.to_string()));
        }
        self.closed = true;
    }

    fn handle_reply(&mut self, reply: Reply) {
        let Some(expect) = self.outstanding.pop_front() else {
            return self
                .fail(ClientFailure::Protocol(format!("unexpected reply: {}", reply.to_line())));
        };
        // 421: the server is closing the session (RFC 5321 3.8), whatever we asked.
        if reply.code == 421 && expect != Expect::Quit {
            return self.fail(ClientFailure::Refused(reply));
        }
        let go_on = match expect {
            Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::End | Expect::Rset => {
                self.transaction_reply(expect, reply)
            }
            _ => self.session_reply(expect, reply),
        };
        if go_on {
            self.fill();
        }
    }

    /// Replies to the session's commands: greeting, EHLO/HELO, STARTTLS, AUTH, QUIT. True when
    /// the next commands may be sent.
    fn session_reply(&mut self, expect: Expect, reply: Reply) -> bool {
        match expect {
            Expect::Greeting if reply.code == 220 => {
                self.queue(format!("EHLO {}\r\n", self.helo_name), Expect::Ehlo);
            }
            Expect::Ehlo if reply.code == 250 => {
                self.caps = Capabilities::from_ehlo(&reply);
                self.after_ehlo();
                return false;
            }
            Expect::Ehlo if reply.code >= 500 => {
                self.queue(format!("HELO {}\r\n", self.helo_name), Expect::Helo);
            }
            Expect::Helo if reply.code == 250 => {
                self.caps = Capabilities::default();
                self.after_ehlo();
                return false;
            }
            Expect::Greeting | Expect::Ehlo | Expect::Helo => {
                self.fail(ClientFailure::Refused(reply));
                return false;
            }
            Expect::StartTls if reply.code == 220 => {
                // Anything the server sent after its 220 would be injected into the TLS session's
                // plaintext prefix: drop it (RFC 3207 5, CVE-2011-0411 class).
                self.input.clear();
                self.events.push_back(ClientEvent::StartTls);
                return false;
            }
            Expect::StartTls => {
                if self.policy.tls == TlsPolicy::Required {
                    let why = format!("STARTTLS refused: {}", reply.to_line());
                    self.fail(ClientFailure::Tls(why));
                    return false;
                }
                // Opportunistic: go on in plaintext.
                self.tls_decided = true;
                self.after_ehlo();
                return false;
            }
            Expect::AuthPlain | Expect::AuthLogin(2) if reply.code == 235 => {
                self.authenticated = true;
                self.events.push_back(ClientEvent::Ready(self.caps.clone()));
            }
            Expect::AuthLogin(step @ (0 | 1)) if reply.code == 334 => {
                let creds = self.policy.auth.as_ref().expect("AUTH only with credentials");
                let secret = if step == 0 { &creds.username } else { creds.password.expose() };
                self.queue(format!("{}\r\n", B64.encode(secret)), Expect::AuthLogin(step + 1));
            }
            Expect::AuthPlain | Expect::AuthLogin(_) => {
                let why = format!("authentication failed: {}", reply.to_line());
                self.fail(ClientFailure::Auth(why));
                return false;
            }
            Expect::Quit => {
                self.closed = true;
                return false;
            }
            Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::End | Expect::Rset => {
                unreachable!("transaction replies go to transaction_reply")
            }
        }
        true
    }

    /// Replies to MAIL, RCPT, DATA, the end of data and RSET. True when the next commands may
    /// be sent.
    fn transaction_reply(&mut self, expect: Expect, reply: Reply) -> bool {
        match expect {
            Expect::Mail => {
                if let Some(tx) = self.tx.as_mut()
                    && reply.code != 250
                {
                    tx.mail_refused = Some(reply);
                    if !self.caps.pipelining {
                        self.unsent.clear();
                        self.abort_transaction();
                        return false;
                    }
                }
            }
            Expect::Rcpt(i) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.replies_seen = i + 1;
                    if !(250..=252).contains(&reply.code) {
                        tx.refused[i] = Some(reply);
                    }
                }
            }
            Expect::Data if reply.code == 354 => self.send_body(),
            Expect::Data => {
                if let Some(tx) = self.tx.as_mut() {
                    // DATA refused: the transaction is over without data.
                    if tx.mail_refused.is_none() && tx.accepted() > 0 {
                        tx.end = Some(reply);
                    }
                    self.abort_transaction();
                    return false;
                }
            }
            Expect::End => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.end = Some(reply);
                }
                self.finish_transaction();
            }
            Expect::Rset => self.finish_transaction(),
            _ => unreachable!("session replies go to session_reply"),
        }
        true
    }

    /// After 354: the body, dot-stuffed, as slices of the content (RFC 5321 4.5.2), or just
    /// the end of data when no recipient was accepted (RFC 2920 3.1: end the empty DATA).
    fn send_body(&mut self) {
        let mut parts = Vec::new();
        match &self.tx {
            Some(tx) if tx.accepted() > 0 => dot_stuff(&tx.msg.content, &mut parts),
            _ => parts.push(Bytes::from_static(b".\r\n")),
        }
        self.transmit.extend(parts);
        self.outstanding.push_back(Expect::End);
    }

    /// After EHLO/HELO: STARTTLS and AUTH as the policy asks, then Ready.
    fn after_ehlo(&mut self) {
        if !self.tls && !self.tls_decided && self.policy.tls != TlsPolicy::Disabled {
            if self.caps.starttls {
                self.queue("STARTTLS\r\n".to_string(), Expect::StartTls);
                return self.fill();
            }
            if self.policy.tls == TlsPolicy::Required {
                return self.fail(ClientFailure::Tls("the server does not offer STARTTLS".into()));
            }
        }
        if let Some(creds) = &self.policy.auth
            && !self.authenticated
        {
            if !self.tls {
                return self.fail(ClientFailure::Auth(
                    "credentials are sent over TLS only, and this session has none".into(),
                ));
            }
            if self.caps.auth.iter().any(|m| m == "PLAIN") {
                // RFC 4616: authzid (empty) NUL authcid NUL passwd.
                let token =
                    B64.encode(format!("\0{}\0{}", creds.username, creds.password.expose()));
                self.queue(format!("AUTH PLAIN {token}\r\n"), Expect::AuthPlain);
            } else if self.caps.auth.iter().any(|m| m == "LOGIN") {
                self.queue("AUTH LOGIN\r\n".to_string(), Expect::AuthLogin(0));
            } else {
                return self.fail(ClientFailure::Auth(format!(
                    "no common AUTH mechanism (server offers {:?}; sluice speaks PLAIN, LOGIN)",
                    self.caps.auth
                )));
            }
            return self.fill();
        }
        self.events.push_back(ClientEvent::Ready(self.caps.clone()));
    }

    /// The transaction stops before its data: RSET, then report.
    fn abort_transaction(&mut self) {
        self.queue("RSET\r\n".to_string(), Expect::Rset);
        self.fill();
    }

    fn finish_transaction(&mut self) {
        // Replies still owed for pipelined commands are consumed first.
        if self
            .outstanding
            .iter()
            .any(|e| matches!(e, Expect::Rcpt(_) | Expect::Data | Expect::End | Expect::Rset))
        {
            return;
        }
        let Some(tx) = self.tx.take() else { return };
        let end = tx.end.clone();
        let recipients = tx
            .refused
            .into_iter()
            .map(|r| match (&tx.mail_refused, r, &end) {
                (Some(m), _, _) => m.clone(),
                (None, Some(r), _) => r,
                (None, None, Some(e)) => e.clone(),
                (None, None, None) => Reply::new(451, "4.3.0", "transaction aborted before data"),
            })
            .collect();
        self.events.push_back(ClientEvent::Done(TransactionResult { recipients }));
    }

    fn fail(&mut self, f: ClientFailure) {
        self.closed = true;
        self.outstanding.clear();
        self.unsent.clear();
        self.tx = None;
        self.events.push_back(ClientEvent::Failed(f));
    }
}

/// Parses one complete reply from the front of `buf` (RFC 5321 4.2: `ddd-text` lines, then
/// `ddd text`). `Ok(None)` = need more input; `Err` = not an SMTP reply.
pub fn parse_reply(buf: &mut BytesMut) -> Result<Option<Reply>, String> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = 0u16;
    loop {
        let Some(n) = memchr::memchr(b'\n', &buf[pos..]) else {
            if buf.len() > 64 * 1024 {
                return Err("reply too long".into());
            }
            return Ok(None);
        };
        let raw = &buf[pos..pos + n];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += n + 1;
        let text = String::from_utf8_lossy(line);
        let digits = text.get(..3).filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let Some(d) = digits else { return Err(format!("not an SMTP reply: {text:?}")) };
        let c: u16 = d.parse().map_err(|_| format!("bad reply code: {text:?}"))?;
        if !(200..600).contains(&c) || (code != 0 && c != code) {
            return Err(format!("bad reply code: {text:?}"));
        }
        code = c;
        let sep = text.as_bytes().get(3).copied();
        lines.push(text.get(4..).unwrap_or("").to_string());
        if sep != Some(b'-') {
            let _ = buf.split_to(pos);
            return Ok(Some(with_enhanced_code(code, lines)));
        }
    }
}

/// A reply whose lines begin with the same RFC 3463 code (RFC 2034 3: every line carries it)
/// keeps the code apart from the text, so failures are classified on the code, not re-parsed.
fn with_enhanced_code(code: u16, mut lines: Vec<String>) -> Reply {
    let Some(enhanced) = lines.first().and_then(|l| enhanced_prefix(code, l)) else {
        return Reply::plain(code, lines.join("\n"));
    };
    let enhanced = enhanced.to_string();
    for line in &mut lines {
        if enhanced_prefix(code, line) == Some(enhanced.as_str()) {
            let rest = line[enhanced.len()..].strip_prefix(' ').unwrap_or("");
            *line = rest.to_string();
        }
    }
    Reply { code, enhanced: Some(enhanced.into()), text: lines.join("\n").into() }
}

/// `class.subject.detail` at the start of `line`, its class that of the reply code (RFC 3463 2:
/// subject and detail are 1-3 digits).
fn enhanced_prefix(code: u16, line: &str) -> Option<&str> {
    let end = line.find(' ').unwrap_or(line.len());
    let word = &line[..end];
    let mut parts = word.split('.');
    let class = parts.next()?;
    let digits = |p: Option<&str>| {
        p.is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let ok = class.len() == 1
        && class.as_bytes()[0] == b'0' + (code / 100) as u8
        && digits(parts.next())
        && digits(parts.next())
        && parts.next().is_none();
    ok.then_some(word)
}

#[cfg(test)]
mod tests;
