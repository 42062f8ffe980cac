//! Delivery status notifications (RFC 3464): the bounce a sender gets when recipients fail.
//!
//! The report is `multipart/report; report-type=delivery-status` (RFC 6522) with three parts: a
//! human-readable explanation, the `message/delivery-status` fields per recipient, and the
//! original message (`message/rfc822`, RET=FULL) or only its header (`text/rfc822-headers`,
//! RET=HDRS or when the message is larger than [`FULL_RETURN_LIMIT`]).
//!
//! Besides failures it reports delays (RFC 3461 NOTIFY=DELAY, once, after `[queue]
//! delay_notice`) and successful relays to servers without DSN support (NOTIFY=SUCCESS, Action:
//! relayed); those two return the header only.
//!
//! The structure is fixed and small, so it is written here directly rather than through a MIME
//! builder. Not yet: `message/global-delivery-status` for SMTPUTF8 mail (RFC 6533).

use std::fmt::Write as _;

use crate::proto::smtp::message::rfc5322_date;
use crate::spool::{Envelope, Recipient, Ret};

/// Messages larger than this are returned as headers only.
pub const FULL_RETURN_LIMIT: usize = 1 << 20;

/// RFC 3464 2.3.3 Action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    /// Handed to a next hop that does not do DSN (RFC 3461 6.2.3.5): no further reports.
    Relayed,
    /// Put into the recipient's local mailbox (RFC 3464 2.3.3).
    Delivered,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
            Action::Delivered => "delivered",
        }
    }
}

/// One recipient in a report.
pub struct Notice<'a> {
    pub recipient: &'a Recipient,
    pub action: Action,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// The remote server's reply, or what went wrong locally.
    pub diagnostic: String,
    /// The host that answered, if one did.
    pub remote_mta: Option<String>,
    /// Delay notices: when the message expires (Unix seconds).
    pub will_retry_until: Option<u64>,
    /// Why it failed, as `X-Sluice-Category` (an RFC 3464 extension field).
    pub category: Option<super::Category>,
}

/// Whether the sender wants to hear about this recipient's failure (RFC 3461 4.1): never for
/// the null sender; NOTIFY absent means FAILURE.
pub fn wants_failure_notice(env: &Envelope, r: &Recipient) -> bool {
    !env.sender.is_empty() && r.notify.is_none_or(|n| n.failure)
}

/// Delay notices: NOTIFY=DELAY, or no NOTIFY (RFC 3461 4.1 lets the MTA default to
/// FAILURE,DELAY); never to `<>`.
pub fn wants_delay_notice(env: &Envelope, r: &Recipient) -> bool {
    !env.sender.is_empty() && r.notify.is_none_or(|n| n.delay)
}

/// Success notices only when asked for (NOTIFY=SUCCESS).
pub fn wants_success_notice(env: &Envelope, r: &Recipient) -> bool {
    !env.sender.is_empty() && r.notify.is_some_and(|n| n.success)
}

/// Builds the DSN message for `notices` of `env` (all of one action). `original` is the stored
/// message (trace header + body). Returns the report's text (headers and body) to queue from
/// `<>` to the sender.
pub fn build_dsn(
    hostname: &str,
    env: &Envelope,
    notices: &[Notice<'_>],
    original: &[u8],
    now_unix: u64,
) -> Vec<u8> {
    let action = notices.first().map_or(Action::Failed, |n| n.action);
    let (subject, intro) = wording(action);
    let boundary = format!("{}/{}", env.id, hostname);
    let mut m = String::with_capacity(4096);
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         This is the mail system at {hostname}.\r\n\
         \r\n\
         {intro}\r\n\r\n",
        sender = env.sender,
        date = rfc5322_date(now_unix),
        id = env.id,
    );
    for f in notices {
        let _ = write!(m, "<{}>: {}\r\n", f.recipient.address, one_line(&f.diagnostic));
    }
    // The machine-readable part (RFC 3464 2.2, 2.3).
    let _ = write!(m, "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n");
    delivery_status(&mut m, hostname, env, notices, now_unix);
    let mut out = m.into_bytes();
    // Delay and success reports carry the header only (as Postfix does): the sender still has
    // the message, and the full copy would double the traffic for a warning.
    let headers_only = env.ret == Some(Ret::Hdrs)
        || original.len() > FULL_RETURN_LIMIT
        || action != Action::Failed;
    returned_message(&mut out, &boundary, original, headers_only);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Subject and opening sentence of a report.
fn wording(action: Action) -> (&'static str, &'static str) {
    match action {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients:",
        ),
        Action::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered yet to the recipients below. This is only a \
             warning; it will be retried until it expires, and you will be told if it fails:",
        ),
        Action::Relayed => (
            "Successful Mail Delivery Report",
            "Your message was relayed to the next server for the recipients below; that server \
             does not send delivery reports, so this is the last one:",
        ),
        Action::Delivered => (
            "Successful Mail Delivery Report",
            "Your message was delivered to the mailboxes of the recipients below:",
        ),
    }
}

/// The per-message and per-recipient fields (RFC 3464 2.2, 2.3).
fn delivery_status(
    m: &mut String,
    hostname: &str,
    env: &Envelope,
    notices: &[Notice<'_>],
    now_unix: u64,
) {
    let _ = write!(m, "Reporting-MTA: dns; {hostname}\r\n");
    if let Some(envid) = &env.envid {
        let _ = write!(m, "Original-Envelope-Id: {envid}\r\n");
    }
    let _ = write!(m, "Arrival-Date: {}\r\n", rfc5322_date(env.received_at / 1000));
    for f in notices {
        let _ = write!(m, "\r\nFinal-Recipient: rfc822; {}\r\n", f.recipient.address);
        if let Some(orcpt) = &f.recipient.orcpt {
            let _ = write!(m, "Original-Recipient: {}\r\n", orcpt.replacen(';', "; ", 1));
        }
        let _ = write!(m, "Action: {}\r\nStatus: {}\r\n", f.action.as_str(), f.status);
        if let Some(mta) = &f.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {mta}\r\n");
        }
        let kind =
            if f.diagnostic.starts_with(|c: char| c.is_ascii_digit()) { "smtp" } else { "x-local" };
        let _ = write!(m, "Diagnostic-Code: {kind}; {}\r\n", one_line(&f.diagnostic));
        let _ = write!(m, "Last-Attempt-Date: {}\r\n", rfc5322_date(now_unix));
        if let Some(until) = f.will_retry_until {
            let _ = write!(m, "Will-Retry-Until: {}\r\n", rfc5322_date(until));
        }
        if let Some(c) = f.category {
            let _ = write!(m, "X-Sluice-Category: {c}\r\n");
        }
    }
}

/// The third part: the original message (message/rfc822) or its header (text/rfc822-headers).
fn returned_message(out: &mut Vec<u8>, boundary: &str, original: &[u8], headers_only: bool) {
    if headers_only {
        let end =
            original.windows(4).position(|w| w == b"\r\n\r\n").map_or(original.len(), |p| p + 2);
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(&original[..end]);
    } else {
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(original);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// Diagnostic text on one line, printable ASCII only (a header field value).
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { ' ' }).take(900).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{QueueId, RecipientState, test_envelope};

    #[test]
    fn rfc3464_report_structure() {
        let mut env = test_envelope(QueueId(0xAB), 10);
        env.recipients[0].orcpt = Some("rfc822;d+40e.f".into());
        env.recipients[0].state = RecipientState::Failed;
        env.envid = Some("ENV1".into());
        let f = Notice {
            recipient: &env.recipients[0],
            action: Action::Failed,
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 no such user".into(),
            remote_mta: Some("mx.e.f".into()),
            will_retry_until: None,
            category: None,
        };
        let dsn =
            String::from_utf8(build_dsn("mta.test", &env, &[f], b"Subject: hi\r\n\r\nbody\r\n", 0))
                .unwrap();
        for needle in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Reporting-MTA: dns; mta.test",
            "Original-Envelope-Id: ENV1",
            "Final-Recipient: rfc822; d@e.f",
            "Original-Recipient: rfc822; d+40e.f",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.e.f",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
            "Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nbody\r\n",
            "Auto-Submitted: auto-replied",
        ] {
            assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
        }
        assert!(dsn.trim_end().ends_with("--"));
        // RET=HDRS returns the header only.
        env.ret = Some(Ret::Hdrs);
        let f = Notice {
            recipient: &env.recipients[0],
            action: Action::Failed,
            status: "5.0.0".into(),
            diagnostic: "x".into(),
            remote_mta: None,
            will_retry_until: None,
            category: None,
        };
        let dsn = String::from_utf8(build_dsn(
            "mta.test",
            &env,
            &[f],
            b"Subject: hi\r\n\r\nsecret body\r\n",
            0,
        ))
        .unwrap();
        assert!(dsn.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n"));
        assert!(!dsn.contains("secret body"));
        // Delay notices: Action delayed, Will-Retry-Until, header only even with RET=FULL.
        env.ret = Some(Ret::Full);
        let f = Notice {
            recipient: &env.recipients[0],
            action: Action::Delayed,
            status: "4.2.0".into(),
            diagnostic: "451 4.2.0 later".into(),
            remote_mta: None,
            will_retry_until: Some(86_400),
            category: None,
        };
        let dsn =
            String::from_utf8(build_dsn("m.t", &env, &[f], b"Subject: hi\r\n\r\nbody\r\n", 0))
                .unwrap();
        for needle in [
            "Subject: Delayed Mail",
            "Action: delayed",
            "Status: 4.2.0",
            "Will-Retry-Until: Fri, 02 Jan 1970",
            "text/rfc822-headers",
        ] {
            assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
        }
        assert!(!dsn.contains("body\r\n\r\n--"), "no body in a delay notice");
    }

    #[test]
    fn rfc3461_notify_decides() {
        use crate::spool::Notify;
        let mut env = test_envelope(QueueId(1), 1);
        assert!(wants_failure_notice(&env, &env.recipients[0]));
        assert!(wants_delay_notice(&env, &env.recipients[0]), "no NOTIFY: FAILURE,DELAY");
        assert!(!wants_success_notice(&env, &env.recipients[0]));
        env.recipients[0].notify = Some(Notify { success: true, failure: false, delay: false });
        assert!(wants_success_notice(&env, &env.recipients[0]));
        assert!(!wants_delay_notice(&env, &env.recipients[0]));
        assert!(!wants_failure_notice(&env, &env.recipients[0]));
        env.recipients[0].notify = Some(Notify::default()); // NEVER
        assert!(!wants_failure_notice(&env, &env.recipients[0]));
        assert!(!wants_delay_notice(&env, &env.recipients[0]));
        env.recipients[0].notify = None;
        env.sender.clear(); // <>: never bounce a bounce
        assert!(!wants_failure_notice(&env, &env.recipients[0]));
    }
}
