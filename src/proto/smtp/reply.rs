//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 2034, RFC 3463).
//!
//! Every fixed reply lives here, so codes and texts stay consistent; the only replies built
//! elsewhere carry a value (a queue id, an octet count) and use [`Reply::owned`].

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

// Static replies. Texts follow RFC 5321 4.2.2/4.2.3 and the enhanced codes RFC 3463 / RFC 5248.
pub const OK: Reply = Reply::new(250, "2.0.0", "OK");
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Sender OK");
pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "Recipient OK");
pub const NO_POSTMASTER: Reply =
    Reply::new(550, "5.1.1", "No postmaster mailbox here; write to postmaster@<domain>");
pub const RESET_OK: Reply = Reply::new(250, "2.0.0", "Reset OK");
pub const START_DATA: Reply = Reply::plain_static(354, "Start mail input; end with <CRLF>.<CRLF>");
pub const BYE: Reply = Reply::new(221, "2.0.0", "Bye");
pub const VRFY: Reply =
    Reply::new(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery");
pub const EXPN: Reply = Reply::new(502, "5.5.1", "EXPN not supported");
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\nSee RFC 5321",
);
pub const UNRECOGNIZED: Reply = Reply::new(500, "5.5.1", "Command unrecognized");
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2", "Line too long");
pub const NEED_HELO: Reply = Reply::new(503, "5.5.1", "Send HELO/EHLO first");
pub const NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Nested MAIL command");
pub const NEED_MAIL: Reply = Reply::new(503, "5.5.1", "Need MAIL before RCPT");
pub const NEED_RCPT: Reply = Reply::new(503, "5.5.1", "Need RCPT before DATA");
pub const NO_VALID_RCPT: Reply = Reply::new(554, "5.5.1", "No valid recipients");
pub const DATA_AFTER_BDAT: Reply = Reply::new(503, "5.5.1", "DATA not allowed after BDAT");
pub const TOO_MANY_RCPTS: Reply = Reply::new(452, "4.5.3", "Too many recipients");
pub const MESSAGE_TOO_BIG: Reply =
    Reply::new(552, "5.3.4", "Message size exceeds fixed maximum message size");
pub const TEXT_LINE_TOO_LONG: Reply =
    Reply::new(500, "5.5.2", "Message line too long (limit 1000 octets, RFC 5321 4.5.3.1.6)");
pub const BARE_CR_LF: Reply = Reply::new(
    550,
    "5.5.2",
    "Message refused: bare CR or LF in message text (RFC 5321 2.3.8); closing connection",
);
pub const BARE_CR_LF_BDAT: Reply =
    Reply::new(550, "5.5.2", "Message refused: bare CR or LF in message text (RFC 5321 2.3.8)");
pub const NUL_IN_TEXT: Reply =
    Reply::new(554, "5.6.0", "Message refused: NUL octet in message text (RFC 5322 2.3)");
pub const IMPROPER_PIPELINING: Reply = Reply::new(
    554,
    "5.5.0",
    "Improper pipelining: data sent before the reply (RFC 2920 3.1); closing connection",
);
pub const TOO_MANY_HOPS: Reply =
    Reply::new(554, "5.4.6", "Too many hops: Received headers suggest a mail loop");
pub const UTF8_NOT_ALLOWED: Reply =
    Reply::new(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter");
pub const RELAY_DENIED: Reply = Reply::new(554, "5.7.1", "Relay access denied");
pub const TOO_MANY_ERRORS: Reply =
    Reply::new(421, "4.7.0", "Too many errors in this session; closing connection");
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2", "Timeout exceeded; closing connection");
pub const SHUTTING_DOWN: Reply =
    Reply::new(421, "4.3.0", "Service shutting down; closing connection");
pub const STORAGE_FULL: Reply = Reply::new(452, "4.3.1", "Insufficient system storage");
pub const STORAGE_ERROR: Reply =
    Reply::new(451, "4.3.0", "Local error while storing the message; try again later");
// Session replies: AUTH (RFC 4954), STARTTLS (RFC 3207), submission policy (RFC 6409).
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");
pub const AUTH_INVALID: Reply = Reply::new(535, "5.7.8", "Authentication credentials invalid");
pub const AUTH_LOCKED_OUT: Reply =
    Reply::new(454, "4.7.0", "Too many failed authentications; try again later");
pub const TLS_ALREADY_ACTIVE: Reply = Reply::new(503, "5.5.1", "TLS already active");
pub const STARTTLS_NOT_AVAILABLE: Reply = Reply::new(502, "5.5.1", "STARTTLS not available");
pub const STARTTLS_READY: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
pub const AUTH_NOT_AVAILABLE: Reply = Reply::new(502, "5.5.1", "AUTH not available");
pub const ALREADY_AUTHENTICATED: Reply = Reply::new(503, "5.5.1", "Already authenticated");
pub const AUTH_IN_TRANSACTION: Reply =
    Reply::new(503, "5.5.1", "AUTH not allowed during a mail transaction");
pub const STARTTLS_FIRST: Reply = Reply::new(530, "5.7.0", "Must issue a STARTTLS command first");
pub const AUTH_MECHANISM_UNKNOWN: Reply =
    Reply::new(504, "5.5.4", "Unrecognized authentication type");
pub const AUTH_UNDECODABLE: Reply = Reply::new(501, "5.5.2", "Cannot decode the response");
pub const AUTH_CANCELLED: Reply = Reply::new(501, "5.7.0", "Authentication cancelled");
pub const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0", "Authentication required");
pub const SENDER_NOT_OWNED: Reply =
    Reply::new(553, "5.7.1", "Sender address not owned by the authenticated user");
pub const TOO_MANY_RCPTS_SESSION: Reply =
    Reply::new(452, "4.5.3", "Too many recipients for this session");
pub const ORCPT_NEEDS_SMTPUTF8: Reply =
    Reply::new(501, "5.5.4", "Bad parameter value: ORCPT (UTF-8 needs SMTPUTF8)");
pub const SIGNING_ERROR: Reply =
    Reply::new(451, "4.3.0", "Local error while signing the message; try again later");
pub const DMARC_REJECT: Reply =
    Reply::new(550, "5.7.1", "Rejected by the DMARC policy of the From domain");
pub const SPF_REJECT: Reply = Reply::new(550, "5.7.23", "SPF validation failed");
pub const MEMORY_BUDGET: Reply =
    Reply::new(452, "4.3.1", "Insufficient system resources; try again later");
pub const TOO_MANY_SESSIONS: Reply =
    Reply::new(421, "4.3.2", "Too many concurrent sessions; try again later");
pub const TOO_MANY_SESSIONS_IP: Reply =
    Reply::new(421, "4.7.0", "Too many concurrent sessions from your address; try again later");
pub const CONNECTION_RATE: Reply =
    Reply::new(421, "4.7.0", "Too many connections from your address; slow down");
pub const PREGREET: Reply = Reply::new(554, "5.5.1", "Talking before the greeting; goodbye");
pub const TOO_SLOW: Reply =
    Reply::new(421, "4.4.2", "Message data arriving too slowly; closing connection");

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
