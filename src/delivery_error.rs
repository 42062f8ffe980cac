//! Every way a delivery attempt can end, and one exhaustive classifier that maps each to what
//! happens to the recipient. There is no catch-all arm: a new variant must choose.

use crate::proto::smtp::Reply;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The next hop could not be reached (refused, unreachable, DNS of the smart host).
    #[error("connection to {host} failed: {reason}")]
    Connect { host: String, reason: String },
    /// A command or the data got no answer in time (RFC 5321 4.5.3.2).
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    /// The connection dropped mid-session.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The peer spoke something that is not SMTP.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the session or this recipient, with its reply.
    #[error("{}", .0.to_line())]
    Reply(Reply),
    /// The message cannot go to this next hop as it is (size, 8BITMIME, SMTPUTF8).
    #[error("{}", .0.to_line())]
    Unsendable(Reply),
    /// DNS says the domain (or its MX host) does not exist (NXDOMAIN): 5.1.2.
    #[error("{0}")]
    NoSuchDomain(String),
    /// The domain publishes a null MX (RFC 7505): it accepts no mail, 5.1.10.
    #[error("{0} accepts no mail (null MX, RFC 7505)")]
    NullMx(String),
    /// SERVFAIL, DNS timeouts: try again later.
    #[error("{0}")]
    DnsTemporary(String),
    /// TLS required but unavailable, or the handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The smart host refused our credentials, or AUTH was impossible. Temporary: the operator
    /// fixes the credentials, the mail waits (as Postfix does).
    #[error("AUTH: {0}")]
    Auth(String),
    /// The message could not be read from the spool.
    #[error("spool: {0}")]
    Spool(String),
    /// The message's record in the spool fails its check: it can never be sent (5.3.0); the
    /// sender gets a DSN at once, not retries until `max_age`.
    #[error("the message is damaged in the spool: {0}")]
    Damaged(String),
}

/// What an outcome means for the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Delivered,
    /// Try again later (retry schedule).
    Temporary,
    /// Do not try again; the sender is told (DSN).
    Permanent,
}

impl DeliveryError {
    pub fn classify(&self) -> Disposition {
        match self {
            DeliveryError::Connect { .. } => Disposition::Temporary,
            DeliveryError::Timeout(_) => Disposition::Temporary,
            DeliveryError::ConnectionLost(_) => Disposition::Temporary,
            DeliveryError::Protocol(_) => Disposition::Temporary,
            DeliveryError::Reply(r) => classify_reply(r),
            DeliveryError::Unsendable(_) => Disposition::Permanent,
            DeliveryError::NoSuchDomain(_) => Disposition::Permanent,
            DeliveryError::NullMx(_) => Disposition::Permanent,
            DeliveryError::DnsTemporary(_) => Disposition::Temporary,
            DeliveryError::Tls(_) => Disposition::Temporary,
            DeliveryError::Auth(_) => Disposition::Temporary,
            DeliveryError::Spool(_) => Disposition::Temporary,
            DeliveryError::Damaged(_) => Disposition::Permanent,
        }
    }
}

impl DeliveryError {
    /// The destination is struggling (it closes sessions with 421, drops or stalls them): a
    /// reason to slow down, unlike a reply about one message.
    pub fn is_session_trouble(&self) -> bool {
        match self {
            DeliveryError::Reply(r) => r.code == 421,
            DeliveryError::Timeout(_) | DeliveryError::ConnectionLost(_) => true,
            DeliveryError::Connect { .. }
            | DeliveryError::Protocol(_)
            | DeliveryError::Unsendable(_)
            | DeliveryError::NoSuchDomain(_)
            | DeliveryError::NullMx(_)
            | DeliveryError::DnsTemporary(_)
            | DeliveryError::Tls(_)
            | DeliveryError::Auth(_)
            | DeliveryError::Spool(_)
            | DeliveryError::Damaged(_) => false,
        }
    }
}

impl DeliveryError {
    /// The RFC 3463 status a DSN reports: the reply's own enhanced code, or one for what went
    /// wrong when there was no reply.
    pub fn status(&self) -> String {
        match self {
            DeliveryError::NullMx(_) => "5.1.10".into(),
            DeliveryError::NoSuchDomain(_) => "5.1.2".into(),
            DeliveryError::Reply(r) | DeliveryError::Unsendable(r) => reply_status(r),
            DeliveryError::Connect { .. }
            | DeliveryError::Timeout(_)
            | DeliveryError::ConnectionLost(_)
            | DeliveryError::Protocol(_) => "4.4.1".into(),
            DeliveryError::DnsTemporary(_) => "4.4.3".into(),
            DeliveryError::Spool(_) => "4.3.0".into(),
            // RFC 3463 X.3.0: other or undefined mail system status.
            DeliveryError::Damaged(_) => "5.3.0".into(),
            // RFC 3463: 4.7.10 (RFC 7672: TLS required), 4.7.0 security/auth failure.
            DeliveryError::Tls(_) => "4.7.10".into(),
            DeliveryError::Auth(_) => "4.7.0".into(),
        }
    }
}

/// The reply's own RFC 3463 status (kept apart by `parse_reply`), or its class's `X.0.0`.
pub fn reply_status(r: &Reply) -> String {
    match (&r.enhanced, classify_reply(r)) {
        (Some(e), _) => e.to_string(),
        (None, Disposition::Delivered) => "2.0.0".into(),
        (None, Disposition::Permanent) => "5.0.0".into(),
        (None, Disposition::Temporary) => "4.0.0".into(),
    }
}

/// RFC 5321 4.2.1: 2yz success, 4yz transient, 5yz permanent.
pub fn classify_reply(r: &Reply) -> Disposition {
    match r.code {
        200..=299 => Disposition::Delivered,
        500..=599 => Disposition::Permanent,
        // 4yz, and anything out of range (a broken peer): try again.
        _ => Disposition::Temporary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3463_statuses_for_dsns() {
        let with = |code, e: Option<&'static str>| {
            let mut r = Reply::plain(code, "x".into());
            r.enhanced = e.map(Into::into);
            r
        };
        assert_eq!(reply_status(&with(550, Some("5.1.1"))), "5.1.1");
        assert_eq!(reply_status(&with(452, Some("4.2.2"))), "4.2.2");
        assert_eq!(reply_status(&with(550, None)), "5.0.0");
        assert_eq!(reply_status(&with(421, None)), "4.0.0");
        assert_eq!(DeliveryError::Reply(with(554, Some("5.7.1"))).status(), "5.7.1");
        assert_eq!(DeliveryError::NullMx("x".into()).status(), "5.1.10");
        assert_eq!(DeliveryError::Timeout("DATA").status(), "4.4.1");
    }

    #[test]
    fn rfc5321_4_2_1_reply_classes() {
        let cases = [
            (250, Disposition::Delivered),
            (251, Disposition::Delivered),
            (421, Disposition::Temporary),
            (451, Disposition::Temporary),
            (452, Disposition::Temporary),
            (550, Disposition::Permanent),
            (554, Disposition::Permanent),
        ];
        for (code, want) in cases {
            assert_eq!(
                DeliveryError::Reply(Reply::plain(code, "x".into())).classify(),
                want,
                "{code}"
            );
        }
        assert_eq!(DeliveryError::Timeout("DATA").classify(), Disposition::Temporary);
        assert_eq!(DeliveryError::NullMx("x".into()).classify(), Disposition::Permanent);
        assert_eq!(DeliveryError::NoSuchDomain("x".into()).classify(), Disposition::Permanent);
        assert_eq!(DeliveryError::DnsTemporary("x".into()).classify(), Disposition::Temporary);
        assert_eq!(
            DeliveryError::Unsendable(Reply::plain(552, "too big".into())).classify(),
            Disposition::Permanent
        );
    }
}
