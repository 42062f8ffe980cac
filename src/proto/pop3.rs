//! POP3 server session (RFC 1939), sans-IO: lines in, replies and steps out.
//!
//! CAPA (RFC 2449), STLS (RFC 2595), AUTH PLAIN (RFC 5034, with the SASL decoding SMTP AUTH
//! uses), USER/PASS, STAT, LIST, UIDL, RETR, TOP, DELE, NOOP, RSET, QUIT. The driver checks
//! passwords, locks and lists the maildrop, streams message files (through [`DotStuffer`]) and
//! removes deleted messages; deletions happen only at QUIT (the UPDATE state), never when a
//! connection drops.

use std::path::PathBuf;

use bytes::BytesMut;

use super::smtp::client::Credentials;
use super::smtp::sasl;

/// Commands are at most 255 octets (RFC 2449 4); longer lines are refused whole.
pub const MAX_LINE: usize = 255;
/// Refused commands before the session ends (a client in a loop, or a guesser).
const MAX_ERRORS: u32 = 10;

#[derive(Debug, Clone)]
pub struct Pop3Config {
    pub hostname: String,
    /// STLS is offered (a certificate is configured and the session is not TLS yet).
    pub stls: bool,
    /// USER/PASS and AUTH PLAIN are allowed without TLS (`[auth] plaintext_on_loopback` for a
    /// loopback listener).
    pub plaintext_ok: bool,
}

/// One message of the locked maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stable across sessions (UIDL, RFC 1939 7): 1-70 printable characters.
    pub uid: String,
    pub size: u64,
    pub path: PathBuf,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send the output, then read more.
    NeedInput,
    /// Check these credentials, lock and list the maildrop, answer with [`Session::handle_login`].
    Login(Credentials),
    /// Send the output, then the file dot-stuffed (only its header and `body_lines` lines of
    /// body for TOP) and the terminating `.`; then continue.
    SendMessage { path: PathBuf, body_lines: Option<u64> },
    /// Send the output, then start TLS; then [`Session::tls_established`].
    StartTls,
    /// Remove these files (UPDATE state), then answer with [`Session::handle_update`].
    Update(Vec<PathBuf>),
    /// Send the output and close.
    Close,
}

/// The driver's answer to [`Step::Login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Ok(Vec<Message>),
    Invalid,
    LockedOut,
    /// Another session holds the maildrop (RFC 2449 IN-USE).
    Busy,
    /// The maildrop could not be read.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// AUTHORIZATION; the name given with USER, if any.
    Authorization {
        user: Option<String>,
    },
    /// AUTH PLAIN without initial response: the next line is the token.
    Sasl(sasl::Pending),
    AwaitLogin,
    AwaitTls,
    Transaction,
    AwaitUpdate,
    Closed,
}

pub struct Session {
    cfg: Pop3Config,
    tls: bool,
    state: State,
    input: BytesMut,
    output: BytesMut,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    errors: u32,
    messages: Vec<Message>,
    deleted: Vec<bool>,
    user: Option<String>,
}

impl Session {
    pub fn new(cfg: Pop3Config, tls: bool) -> Session {
        let mut s = Session {
            cfg,
            tls,
            state: State::Authorization { user: None },
            input: BytesMut::new(),
            output: BytesMut::new(),
            skipping: false,
            errors: 0,
            messages: Vec::new(),
            deleted: Vec::new(),
            user: None,
        };
        let greeting = format!("POP3 server {} ready", s.cfg.hostname);
        s.ok(&greeting);
        s
    }

    /// Where the driver appends what it read.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Replies to send; the driver clears it after sending.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// The logged-in user.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the session waits for a command in the TRANSACTION state (the long timeout).
    pub fn in_transaction(&self) -> bool {
        self.state == State::Transaction
    }

    /// Processes buffered input until the driver has something to do.
    pub fn advance(&mut self) -> Step {
        loop {
            match self.state {
                State::Closed => return Step::Close,
                State::AwaitLogin | State::AwaitTls | State::AwaitUpdate => {
                    debug_assert!(false, "advance() while the driver owes an answer");
                    return Step::Close;
                }
                _ => {}
            }
            let Some(line) = self.next_line() else { return Step::NeedInput };
            if let Some(step) = self.handle_line(&line) {
                return step;
            }
        }
    }

    /// One command line without its CRLF; None when none is complete (over-long lines are
    /// refused and skipped).
    fn next_line(&mut self) -> Option<String> {
        loop {
            let Some(lf) = memchr::memchr(b'\n', &self.input) else {
                if self.input.len() > MAX_LINE {
                    self.input.clear();
                    if !std::mem::replace(&mut self.skipping, true) {
                        self.fail("Line too long");
                    }
                }
                return None;
            };
            let raw = self.input.split_to(lf + 1);
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if raw.len() > MAX_LINE + 2 {
                self.fail("Line too long");
                continue;
            }
            let text = String::from_utf8_lossy(&raw);
            return Some(text.trim_end_matches(['\r', '\n']).to_string());
        }
    }

    fn handle_line(&mut self, line: &str) -> Option<Step> {
        if let State::Sasl(pending) = &self.state {
            let pending = pending.clone();
            self.state = State::Authorization { user: None };
            return self.sasl(sasl::step(pending, line));
        }
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        let args: Vec<&str> = args.split_ascii_whitespace().collect();
        match (&self.state, verb.as_str()) {
            (_, "CAPA") => self.capa(),
            (_, "QUIT") => return Some(self.quit()),
            (_, "NOOP") if self.state == State::Transaction => self.ok(""),
            (State::Authorization { .. }, "STLS") => return self.stls(),
            (State::Authorization { .. }, "USER") => self.user_command(&args),
            (State::Authorization { user }, "PASS") => {
                let Some(name) = user.clone() else {
                    self.fail("USER first");
                    return self.closing();
                };
                if !self.may_login() {
                    return self.closing();
                }
                // RFC 1939 7: the password is the rest of the line, spaces included.
                let password = line.get(5..).unwrap_or("").to_string();
                return Some(self.login(Credentials { username: name, password: password.into() }));
            }
            (State::Authorization { .. }, "AUTH") => return self.auth(&args),
            (State::Transaction, _) => return self.transaction(&verb, &args),
            (State::Authorization { .. }, _) => self.fail("Unknown command or not logged in"),
            _ => self.fail("Unknown command"),
        }
        self.closing()
    }

    /// Some(Close) when the error limit ended the session.
    fn closing(&mut self) -> Option<Step> {
        (self.state == State::Closed).then_some(Step::Close)
    }

    fn capa(&mut self) {
        let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        if self.tls || self.cfg.plaintext_ok {
            caps.push("USER");
            caps.push("SASL PLAIN");
        }
        if self.cfg.stls && !self.tls && matches!(self.state, State::Authorization { .. }) {
            caps.push("STLS");
        }
        caps.push("IMPLEMENTATION sluice");
        self.ok("Capability list follows");
        for c in caps {
            self.line(c);
        }
        self.line(".");
    }

    fn stls(&mut self) -> Option<Step> {
        if self.tls || !self.cfg.stls {
            self.fail("STLS not available");
            return self.closing();
        }
        self.ok("Begin TLS negotiation");
        self.state = State::AwaitTls;
        Some(Step::StartTls)
    }

    /// After the handshake: a fresh AUTHORIZATION state (RFC 2595 4).
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.input.clear();
        self.state = State::Authorization { user: None };
    }

    fn may_login(&mut self) -> bool {
        if self.tls || self.cfg.plaintext_ok {
            return true;
        }
        self.fail("[AUTH] Plaintext authentication is not allowed without TLS; use STLS");
        false
    }

    fn user_command(&mut self, args: &[&str]) {
        if !self.may_login() {
            return;
        }
        match args {
            [name] => {
                self.state = State::Authorization { user: Some(name.to_string()) };
                self.ok("Send PASS");
            }
            _ => self.fail("Syntax: USER name"),
        }
    }

    fn auth(&mut self, args: &[&str]) -> Option<Step> {
        if args.is_empty() {
            // RFC 5034 4: AUTH without argument lists the mechanisms (as CAPA SASL).
            self.ok("Mechanisms follow");
            self.line("PLAIN");
            self.line(".");
            return None;
        }
        if !self.may_login() {
            return self.closing();
        }
        if !args[0].eq_ignore_ascii_case("PLAIN") {
            self.fail("Unsupported mechanism");
            return self.closing();
        }
        self.sasl(sasl::start("PLAIN", args.get(1).copied()))
    }

    fn sasl(&mut self, p: Result<sasl::Progress, sasl::SaslError>) -> Option<Step> {
        match p {
            Ok(sasl::Progress::Challenge(c, pending)) => {
                self.line(&format!("+ {c}"));
                self.state = State::Sasl(pending);
                None
            }
            Ok(sasl::Progress::Done(creds)) => Some(self.login(creds)),
            Err(sasl::SaslError::Cancelled) => {
                self.fail("Authentication cancelled");
                self.closing()
            }
            Err(_) => {
                self.fail("Malformed authentication data");
                self.closing()
            }
        }
    }

    fn login(&mut self, creds: Credentials) -> Step {
        self.user = Some(creds.username.clone());
        self.state = State::AwaitLogin;
        Step::Login(creds)
    }

    /// The driver's verdict on [`Step::Login`].
    pub fn handle_login(&mut self, result: Login) {
        self.state = State::Authorization { user: None };
        match result {
            Login::Ok(messages) => {
                self.deleted = vec![false; messages.len()];
                self.messages = messages;
                self.state = State::Transaction;
                let (n, size) = self.totals();
                self.ok(&format!("Logged in, {n} messages ({size} octets)"));
            }
            Login::Invalid => {
                self.user = None;
                self.fail("[AUTH] Authentication failed");
            }
            Login::LockedOut => {
                self.user = None;
                self.fail("[SYS/TEMP] Too many failed logins; try again later");
            }
            Login::Busy => {
                self.user = None;
                self.fail("[IN-USE] Maildrop in use by another session");
            }
            Login::Unavailable => {
                self.user = None;
                self.fail("[SYS/TEMP] Maildrop unavailable; try again later");
            }
        }
    }

    fn totals(&self) -> (usize, u64) {
        let live = self.live();
        (live.clone().count(), live.map(|(_, m)| m.size).sum())
    }

    /// Messages not marked deleted, with their 1-based numbers.
    fn live(&self) -> impl Iterator<Item = (usize, &Message)> + Clone {
        self.messages.iter().enumerate().filter(|(i, _)| !self.deleted[*i]).map(|(i, m)| (i + 1, m))
    }

    /// A message number argument that names a message not deleted.
    fn message(&mut self, arg: Option<&&str>) -> Option<usize> {
        let n = arg.and_then(|a| a.parse::<usize>().ok());
        match n {
            Some(n) if n >= 1 && n <= self.messages.len() && !self.deleted[n - 1] => Some(n - 1),
            Some(n) if n >= 1 && n <= self.messages.len() => {
                self.fail("Message already deleted");
                None
            }
            _ => {
                self.fail("No such message");
                None
            }
        }
    }

    fn transaction(&mut self, verb: &str, args: &[&str]) -> Option<Step> {
        match verb {
            "STAT" => {
                let (n, size) = self.totals();
                self.ok(&format!("{n} {size}"));
            }
            "LIST" | "UIDL" => self.listing(verb, args),
            "RETR" => {
                let i = self.message(args.first())?;
                let m = &self.messages[i];
                let (size, path) = (m.size, m.path.clone());
                self.ok(&format!("{size} octets"));
                return Some(Step::SendMessage { path, body_lines: None });
            }
            "TOP" => {
                let lines = args.get(1).and_then(|a| a.parse::<u64>().ok());
                let Some(lines) = lines else {
                    self.fail("Syntax: TOP msg lines");
                    return self.closing();
                };
                let i = self.message(args.first())?;
                let path = self.messages[i].path.clone();
                self.ok("Top of message follows");
                return Some(Step::SendMessage { path, body_lines: Some(lines) });
            }
            "DELE" => {
                let i = self.message(args.first())?;
                self.deleted[i] = true;
                self.ok(&format!("Message {} deleted", i + 1));
            }
            "RSET" => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                let (n, size) = self.totals();
                self.ok(&format!("{n} messages ({size} octets)"));
            }
            _ => self.fail("Unknown command"),
        }
        self.closing()
    }

    fn listing(&mut self, verb: &str, args: &[&str]) {
        let field = |m: &Message| if verb == "LIST" { m.size.to_string() } else { m.uid.clone() };
        if args.is_empty() {
            let lines: Vec<String> =
                self.live().map(|(n, m)| format!("{n} {}", field(m))).collect();
            self.ok(&format!("{} messages", lines.len()));
            for l in lines {
                self.line(&l);
            }
            self.line(".");
        } else if let Some(i) = self.message(args.first()) {
            let text = format!("{} {}", i + 1, field(&self.messages[i]));
            self.ok(&text);
        }
    }

    fn quit(&mut self) -> Step {
        if self.state != State::Transaction {
            self.ok("Bye");
            self.state = State::Closed;
            return Step::Close;
        }
        // RFC 1939 6: the UPDATE state.
        let gone: Vec<PathBuf> = self
            .messages
            .iter()
            .zip(&self.deleted)
            .filter(|(_, d)| **d)
            .map(|(m, _)| m.path.clone())
            .collect();
        self.state = State::AwaitUpdate;
        Step::Update(gone)
    }

    /// The driver's result of [`Step::Update`]: the session ends.
    pub fn handle_update(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => self.ok("Bye"),
            Err(e) => self.fail(&format!("[SYS/TEMP] Some deleted messages were not removed: {e}")),
        }
        self.state = State::Closed;
    }

    /// The messages the client deleted in this session (for metrics, after UPDATE).
    pub fn deleted_count(&self) -> usize {
        self.deleted.iter().filter(|d| **d).count()
    }

    fn ok(&mut self, text: &str) {
        if text.is_empty() {
            self.line("+OK");
        } else {
            self.line(&format!("+OK {text}"));
        }
    }

    fn fail(&mut self, text: &str) {
        self.line(&format!("-ERR {text}"));
        self.errors += 1;
        if self.errors >= MAX_ERRORS && self.state != State::Closed {
            self.line("-ERR Too many errors; closing connection");
            self.state = State::Closed;
        }
    }

    /// Same as `fail`, but a timeout or shutdown: the session ends.
    pub fn close_with(&mut self, text: &str) {
        self.line(&format!("-ERR {text}"));
        self.state = State::Closed;
    }

    fn line(&mut self, text: &str) {
        self.output.extend_from_slice(text.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }
}

/// Byte-stuffs a message for a multi-line response (RFC 1939 3): a line starting with `.`
/// gets another, and bare LF line ends become CRLF. Fed in chunks of any size; with
/// `body_lines` (TOP) it stops after the header and that many body lines.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    last_cr: bool,
    in_header: bool,
    /// Body lines still to send; None: all.
    body_left: Option<u64>,
    /// An empty line ends the header.
    header_line_empty: bool,
    done: bool,
}

impl DotStuffer {
    pub fn new(body_lines: Option<u64>) -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            last_cr: false,
            in_header: true,
            body_left: body_lines,
            header_line_empty: true,
            done: false,
        }
    }

    /// Whether nothing more will be sent (TOP reached its line count).
    pub fn done(&self) -> bool {
        self.done
    }

    /// Appends the stuffed form of `chunk` to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if self.done {
                return;
            }
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            if b == b'\n' {
                if !self.last_cr {
                    out.push(b'\r');
                }
                out.push(b'\n');
                self.end_line();
            } else {
                out.push(b);
                self.at_line_start = false;
                if b != b'\r' {
                    self.header_line_empty = false;
                }
            }
            self.last_cr = b == b'\r';
        }
    }

    fn end_line(&mut self) {
        self.at_line_start = true;
        if self.in_header {
            if self.header_line_empty {
                self.in_header = false;
            }
        } else if let Some(left) = self.body_left.as_mut() {
            *left = left.saturating_sub(1);
        }
        if !self.in_header && self.body_left == Some(0) {
            self.done = true;
        }
        self.header_line_empty = true;
    }

    /// The end of the response: a CRLF if the message did not end with one, then `.`.
    pub fn finish(&self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests;
