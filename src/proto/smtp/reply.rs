//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 2034, RFC 3463).
//!
//! Every fixed reply lives here, so codes and texts stay consistent; negative ones are
//! [`Rejection`]s that carry the metric reason they count under. The only replies built
//! elsewhere carry a value (a queue id, an octet count, a parse error's detail).

use std::borrow::Cow;
use std::fmt;

use bytes::BytesMut;

/// One SMTP reply: a three-digit code, an optional enhanced status code and text.
/// Text lines are separated by `\n` and encoded as a multi-line reply (`250-...`, `250 ...`).
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 `class.subject.detail`, without the leading code.
    pub enhanced: Option<Cow<'static, str>>,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, enhanced: &'static str, text: &'static str) -> Self {
        Reply { code, enhanced: Some(Cow::Borrowed(enhanced)), text: Cow::Borrowed(text) }
    }

    pub fn owned(code: u16, enhanced: &'static str, text: String) -> Self {
        Reply { code, enhanced: Some(Cow::Borrowed(enhanced)), text: Cow::Owned(text) }
    }

    /// A reply without an enhanced code (the greeting, RFC 2034 section 3).
    pub fn plain(code: u16, text: String) -> Self {
        Reply { code, enhanced: None, text: Cow::Owned(text) }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut lines = self.text.split('\n').peekable();
        let code = itoa3(self.code);
        while let Some(line) = lines.next() {
            out.extend_from_slice(&code);
            out.extend_from_slice(if lines.peek().is_some() { b"-" } else { b" " });
            if let Some(e) = &self.enhanced {
                out.extend_from_slice(e.as_bytes());
                out.extend_from_slice(b" ");
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The last line as text, e.g. for logs and the queue's `last_reply`.
    pub fn to_line(&self) -> String {
        match &self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, self.text.replace('\n', " / ")),
            None => format!("{} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_line())
    }
}

fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [b'0' + (c / 100) as u8, b'0' + (c / 10 % 10) as u8, b'0' + (c % 10) as u8]
}

/// Why a command or message was refused: a bounded label set for metrics. One list, so the
/// enum, [`RejectReason::ALL`] and the labels cannot drift apart.
macro_rules! reject_reasons {
    ($($(#[$doc:meta])* $name:ident => $label:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RejectReason {
            $($(#[$doc])* $name,)*
        }

        impl RejectReason {
            /// Every reason, so metrics can show zero before the first refusal.
            pub const ALL: &'static [RejectReason] = &[$(RejectReason::$name,)*];

            pub fn label(self) -> &'static str {
                match self {
                    $(RejectReason::$name => $label,)*
                }
            }
        }
    };
}

reject_reasons! {
    Syntax => "syntax",
    Sequence => "sequence",
    Size => "size",
    LineTooLong => "line_too_long",
    BareCrLf => "bare_cr_lf",
    RelayDenied => "relay_denied",
    TooManyRecipients => "too_many_recipients",
    TooManyErrors => "too_many_errors",
    Timeout => "timeout",
    Storage => "storage",
    NotImplemented => "not_implemented",
    AuthRequired => "auth_required",
    AuthFailed => "auth_failed",
    AuthLockedOut => "auth_locked_out",
    TlsRequired => "tls_required",
    SenderNotOwned => "sender_not_owned",
    Pregreet => "pregreet",
    TooSlow => "too_slow",
    /// A recipient with no mailbox to deliver to (`<postmaster>` without `[local] postmaster`).
    NoMailbox => "no_mailbox",
    /// A NUL octet in the message text.
    Nul => "nul",
    /// More trace headers than `max_hops` (RFC 5321 6.3).
    MailLoop => "mail_loop",
    /// Data sent before the reply to EHLO/HELO/DATA by an untrusted client (RFC 2920 3.1).
    Pipelining => "improper_pipelining",
    /// DMARC policy reject of the From domain.
    Dmarc => "dmarc",
    /// SPF fail, refused by configuration.
    Spf => "spf",
    /// The recipient is on the suppression list.
    Suppressed => "suppressed",
    /// A local mailbox over its quota.
    MailboxFull => "mailbox_full",
    /// A tenant's or user's sending quota or rate is spent.
    Quota => "quota",
    /// The tenant's or campaign's reputation circuit breaker is open.
    CircuitOpen => "circuit_open",
}

/// A negative reply and the reason it is counted under: the pair is fixed here, once, so no
/// call site can send one reply and count another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reply: Reply,
    pub reason: RejectReason,
}

impl Rejection {
    pub const fn new(
        code: u16,
        enhanced: &'static str,
        text: &'static str,
        reason: RejectReason,
    ) -> Self {
        Rejection { reply: Reply::new(code, enhanced, text), reason }
    }

    /// A refusal whose text carries a value (a command's parse error).
    pub fn owned(code: u16, enhanced: &'static str, text: String, reason: RejectReason) -> Self {
        Rejection { reply: Reply::owned(code, enhanced, text), reason }
    }

    /// A sending quota is spent: 452 4.7.1, the client tries again later.
    pub fn quota(why: String) -> Self {
        Rejection::owned(452, "4.7.1", why, RejectReason::Quota)
    }

    /// Valid credentials whose tenant has all its sessions open (`[tenant.NAME]
    /// max_sessions`): 454 4.7.0, a temporary AUTH failure (RFC 4954 6).
    pub fn tenant_sessions(why: String) -> Self {
        Rejection::owned(454, "4.7.0", why, RejectReason::Quota)
    }

    /// Mail of a tenant or campaign whose circuit breaker is open: 452 4.7.1 with the reason,
    /// the client tries again later (after an operator resumes it).
    pub fn circuit_open(why: String) -> Self {
        Rejection::owned(452, "4.7.1", why, RejectReason::CircuitOpen)
    }

    /// RCPT of an address on the suppression list; `why` names the entry.
    pub fn suppressed(why: String) -> Self {
        Rejection::owned(550, "5.7.1", why, RejectReason::Suppressed)
    }
}

// Static replies. Texts follow RFC 5321 4.2.2/4.2.3 and the enhanced codes RFC 3463 / RFC 5248.
pub const OK: Reply = Reply::new(250, "2.0.0", "OK");

pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Sender OK");

pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "Recipient OK");

pub const NO_POSTMASTER: Rejection = Rejection::new(
    550,
    "5.1.1",
    "No postmaster mailbox here; write to postmaster@<domain>",
    RejectReason::NoMailbox,
);
pub const NO_SUCH_USER: Rejection =
    Rejection::new(550, "5.1.1", "No such user here", RejectReason::NoMailbox);
pub const MAILBOX_FULL: Rejection =
    Rejection::new(452, "4.2.2", "Mailbox full; try again later", RejectReason::MailboxFull);
pub const RESET_OK: Reply = Reply::new(250, "2.0.0", "Reset OK");

pub const START_DATA: Reply = Reply::plain_static(354, "Start mail input; end with <CRLF>.<CRLF>");

pub const BYE: Reply = Reply::new(221, "2.0.0", "Bye");

pub const VRFY: Reply =
    Reply::new(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery");

pub const EXPN: Rejection =
    Rejection::new(502, "5.5.1", "EXPN not supported", RejectReason::NotImplemented);
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\nSee RFC 5321",
);

pub const UNRECOGNIZED: Rejection =
    Rejection::new(500, "5.5.1", "Command unrecognized", RejectReason::NotImplemented);
pub const LINE_TOO_LONG: Rejection =
    Rejection::new(500, "5.5.2", "Line too long", RejectReason::LineTooLong);
pub const NEED_HELO: Rejection =
    Rejection::new(503, "5.5.1", "Send HELO/EHLO first", RejectReason::Sequence);
pub const NESTED_MAIL: Rejection =
    Rejection::new(503, "5.5.1", "Nested MAIL command", RejectReason::Sequence);
pub const NEED_MAIL: Rejection =
    Rejection::new(503, "5.5.1", "Need MAIL before RCPT", RejectReason::Sequence);
pub const NEED_RCPT: Rejection =
    Rejection::new(503, "5.5.1", "Need RCPT before DATA", RejectReason::Sequence);
pub const NO_VALID_RCPT: Rejection =
    Rejection::new(554, "5.5.1", "No valid recipients", RejectReason::Sequence);
pub const DATA_AFTER_BDAT: Rejection =
    Rejection::new(503, "5.5.1", "DATA not allowed after BDAT", RejectReason::Sequence);
pub const TOO_MANY_RCPTS: Rejection =
    Rejection::new(452, "4.5.3", "Too many recipients", RejectReason::TooManyRecipients);
pub const MESSAGE_TOO_BIG: Rejection = Rejection::new(
    552,
    "5.3.4",
    "Message size exceeds fixed maximum message size",
    RejectReason::Size,
);
pub const TEXT_LINE_TOO_LONG: Rejection = Rejection::new(
    500,
    "5.5.2",
    "Message line too long (limit 1000 octets, RFC 5321 4.5.3.1.6)",
    RejectReason::LineTooLong,
);
pub const BARE_CR_LF: Rejection = Rejection::new(
    550,
    "5.5.2",
    "Message refused: bare CR or LF in message text (RFC 5321 2.3.8); closing connection",
    RejectReason::BareCrLf,
);
pub const BARE_CR_LF_BDAT: Rejection = Rejection::new(
    550,
    "5.5.2",
    "Message refused: bare CR or LF in message text (RFC 5321 2.3.8)",
    RejectReason::BareCrLf,
);
pub const NUL_IN_TEXT: Rejection = Rejection::new(
    554,
    "5.6.0",
    "Message refused: NUL octet in message text (RFC 5322 2.3)",
    RejectReason::Nul,
);
pub const IMPROPER_PIPELINING: Rejection = Rejection::new(
    554,
    "5.5.0",
    "Improper pipelining: data sent before the reply (RFC 2920 3.1); closing connection",
    RejectReason::Pipelining,
);
pub const TOO_MANY_HOPS: Rejection = Rejection::new(
    554,
    "5.4.6",
    "Too many hops: Received headers suggest a mail loop",
    RejectReason::MailLoop,
);
pub const UTF8_NOT_ALLOWED: Rejection = Rejection::new(
    553,
    "5.6.7",
    "Non-ASCII address requires the SMTPUTF8 parameter",
    RejectReason::Syntax,
);
pub const RELAY_DENIED: Rejection =
    Rejection::new(554, "5.7.1", "Relay access denied", RejectReason::RelayDenied);
pub const TOO_MANY_ERRORS: Rejection = Rejection::new(
    421,
    "4.7.0",
    "Too many errors in this session; closing connection",
    RejectReason::TooManyErrors,
);
pub const TIMEOUT: Rejection =
    Rejection::new(421, "4.4.2", "Timeout exceeded; closing connection", RejectReason::Timeout);
pub const SHUTTING_DOWN: Reply =
    Reply::new(421, "4.3.0", "Service shutting down; closing connection");

pub const STORAGE_FULL: Rejection =
    Rejection::new(452, "4.3.1", "Insufficient system storage", RejectReason::Storage);
pub const STORAGE_ERROR: Rejection = Rejection::new(
    451,
    "4.3.0",
    "Local error while storing the message; try again later",
    RejectReason::Storage,
);
// Session replies: AUTH (RFC 4954), STARTTLS (RFC 3207), submission policy (RFC 6409).
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");

pub const AUTH_INVALID: Rejection =
    Rejection::new(535, "5.7.8", "Authentication credentials invalid", RejectReason::AuthFailed);
pub const AUTH_LOCKED_OUT: Rejection = Rejection::new(
    454,
    "4.7.0",
    "Too many failed authentications; try again later",
    RejectReason::AuthLockedOut,
);
pub const TLS_ALREADY_ACTIVE: Rejection =
    Rejection::new(503, "5.5.1", "TLS already active", RejectReason::Sequence);
pub const STARTTLS_NOT_AVAILABLE: Rejection =
    Rejection::new(502, "5.5.1", "STARTTLS not available", RejectReason::NotImplemented);
pub const STARTTLS_READY: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");

pub const AUTH_NOT_AVAILABLE: Rejection =
    Rejection::new(502, "5.5.1", "AUTH not available", RejectReason::NotImplemented);
pub const ALREADY_AUTHENTICATED: Rejection =
    Rejection::new(503, "5.5.1", "Already authenticated", RejectReason::Sequence);
pub const AUTH_IN_TRANSACTION: Rejection = Rejection::new(
    503,
    "5.5.1",
    "AUTH not allowed during a mail transaction",
    RejectReason::Sequence,
);
pub const STARTTLS_FIRST: Rejection =
    Rejection::new(530, "5.7.0", "Must issue a STARTTLS command first", RejectReason::TlsRequired);
pub const AUTH_MECHANISM_UNKNOWN: Rejection =
    Rejection::new(504, "5.5.4", "Unrecognized authentication type", RejectReason::NotImplemented);
pub const AUTH_UNDECODABLE: Rejection =
    Rejection::new(501, "5.5.2", "Cannot decode the response", RejectReason::Syntax);
pub const AUTH_CANCELLED: Rejection =
    Rejection::new(501, "5.7.0", "Authentication cancelled", RejectReason::AuthFailed);
pub const AUTH_REQUIRED: Rejection =
    Rejection::new(530, "5.7.0", "Authentication required", RejectReason::AuthRequired);
pub const SENDER_NOT_OWNED: Rejection = Rejection::new(
    553,
    "5.7.1",
    "Sender address not owned by the authenticated user",
    RejectReason::SenderNotOwned,
);
pub const TOO_MANY_RCPTS_SESSION: Rejection = Rejection::new(
    452,
    "4.5.3",
    "Too many recipients for this session",
    RejectReason::TooManyRecipients,
);
pub const ORCPT_NEEDS_SMTPUTF8: Rejection = Rejection::new(
    501,
    "5.5.4",
    "Bad parameter value: ORCPT (UTF-8 needs SMTPUTF8)",
    RejectReason::Syntax,
);
pub const SIGNING_ERROR: Rejection = Rejection::new(
    451,
    "4.3.0",
    "Local error while signing the message; try again later",
    RejectReason::Storage,
);
pub const FROM_NOT_OWNED: Rejection = Rejection::new(
    550,
    "5.7.1",
    "From: domain not allowed for the authenticated user",
    RejectReason::SenderNotOwned,
);
pub const DMARC_REJECT: Rejection = Rejection::new(
    550,
    "5.7.1",
    "Rejected by the DMARC policy of the From domain",
    RejectReason::Dmarc,
);
pub const SPF_REJECT: Rejection =
    Rejection::new(550, "5.7.23", "SPF validation failed", RejectReason::Spf);
pub const MEMORY_BUDGET: Rejection = Rejection::new(
    452,
    "4.3.1",
    "Insufficient system resources; try again later",
    RejectReason::Storage,
);
pub const TOO_MANY_SESSIONS: Reply =
    Reply::new(421, "4.3.2", "Too many concurrent sessions; try again later");

pub const TOO_MANY_SESSIONS_IP: Reply =
    Reply::new(421, "4.7.0", "Too many concurrent sessions from your address; try again later");

pub const CONNECTION_RATE: Reply =
    Reply::new(421, "4.7.0", "Too many connections from your address; slow down");

pub const PREGREET: Rejection =
    Rejection::new(554, "5.5.1", "Talking before the greeting; goodbye", RejectReason::Pregreet);
pub const TOO_SLOW: Rejection = Rejection::new(
    421,
    "4.4.2",
    "Message data arriving too slowly; closing connection",
    RejectReason::TooSlow,
);

impl Reply {
    const fn plain_static(code: u16, text: &'static str) -> Self {
        Reply { code, enhanced: None, text: Cow::Borrowed(text) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_and_multi_line_replies_rfc5321_4_2_1() {
        let cases: &[(Reply, &str)] = &[
            (OK, "250 2.0.0 OK\r\n"),
            (START_DATA, "354 Start mail input; end with <CRLF>.<CRLF>\r\n"),
            (
                Reply::owned(250, "2.0.0", "a\nb\nc".into()),
                "250-2.0.0 a\r\n250-2.0.0 b\r\n250 2.0.0 c\r\n",
            ),
        ];
        for (reply, wire) in cases {
            let mut out = BytesMut::new();
            reply.encode(&mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), *wire);
        }
    }
}
