//! Client transcripts: the server's replies are scripted, the client's bytes checked.

use super::*;

fn msg(rcpts: &[&str], body: &str) -> Outbound {
    Outbound {
        sender: "a@example.com".into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        content: vec![Bytes::from_static(b"Received: x\r\n"), Bytes::from(body.to_string())],
        eightbit: false,
        smtputf8: false,
        dsn: DsnParams::default(),
    }
}

/// Drives a client against scripted replies; returns everything it sent and its events.
struct Script {
    c: Client,
    sent: String,
    events: Vec<ClientEvent>,
}

impl Script {
    fn new() -> Self {
        // Plaintext by default: most transcripts here are about the transaction.
        Self::with_policy(SessionPolicy { tls: TlsPolicy::Disabled, auth: None })
    }

    fn with_policy(p: SessionPolicy) -> Self {
        Script { c: Client::new("me.test", p), sent: String::new(), events: vec![] }
    }

    fn server(&mut self, replies: &str) -> &mut Self {
        self.c.handle_input(replies.as_bytes());
        self.drain();
        self
    }

    fn drain(&mut self) {
        while let Some(b) = self.c.poll_transmit() {
            self.sent.push_str(&String::from_utf8_lossy(&b));
        }
        while let Some(e) = self.c.poll_event() {
            self.events.push(e);
        }
    }

    fn take_sent(&mut self) -> String {
        std::mem::take(&mut self.sent)
    }

    fn connect(ehlo: &str) -> Self {
        let mut s = Script::new();
        s.server("220 mx ready\r\n");
        assert_eq!(s.take_sent(), "EHLO me.test\r\n");
        s.server(ehlo);
        assert!(matches!(s.events.pop(), Some(ClientEvent::Ready(_))));
        s
    }

    fn start(&mut self, m: Outbound) -> &mut Self {
        self.c.start(m);
        self.drain();
        self
    }

    fn done(&mut self) -> Vec<u16> {
        match self.events.pop() {
            Some(ClientEvent::Done(r)) => r.recipients.iter().map(|r| r.code).collect(),
            other => panic!("expected Done, got {other:?}"),
        }
    }
}

const ESMTP_PIPELINING: &str = "250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";

#[test]
fn rfc2920_pipelined_transaction_with_mixed_recipients() {
    let mut s = Script::connect(ESMTP_PIPELINING);
    s.start(msg(&["ok@x", "bad@x", "later@x"], "hi\r\n.dot\r\n"));
    // Everything up to DATA in one go.
    assert_eq!(
        s.take_sent(),
        "MAIL FROM:<a@example.com> SIZE=23\r\nRCPT TO:<ok@x>\r\nRCPT TO:<bad@x>\r\nRCPT TO:<later@x>\r\nDATA\r\n"
    );
    s.server("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n451 4.2.0 try later\r\n354 go\r\n");
    assert_eq!(s.take_sent(), "Received: x\r\nhi\r\n..dot\r\n.\r\n");
    s.server("250 2.0.0 queued\r\n");
    assert_eq!(s.done(), vec![250, 550, 451]);
}

#[test]
fn rfc5321_lockstep_without_pipelining_and_helo_fallback() {
    let mut s = Script::new();
    s.server("220 old\r\n");
    assert_eq!(s.take_sent(), "EHLO me.test\r\n");
    s.server("502 what\r\n");
    assert_eq!(s.take_sent(), "HELO me.test\r\n");
    s.server("250 old\r\n");
    assert!(matches!(s.events.pop(), Some(ClientEvent::Ready(c)) if !c.esmtp));
    s.start(msg(&["a@x", "b@x"], "x\r\n"));
    assert_eq!(s.take_sent(), "MAIL FROM:<a@example.com>\r\n");
    s.server("250 ok\r\n");
    assert_eq!(s.take_sent(), "RCPT TO:<a@x>\r\n");
    s.server("250 ok\r\n");
    assert_eq!(s.take_sent(), "RCPT TO:<b@x>\r\n");
    s.server("250 ok\r\n");
    assert_eq!(s.take_sent(), "DATA\r\n");
    s.server("354 go\r\n");
    assert_eq!(s.take_sent(), "Received: x\r\nx\r\n.\r\n");
    s.server("250 ok\r\n");
    assert_eq!(s.done(), vec![250, 250]);
    // A second transaction on the same connection, then QUIT.
    s.start(msg(&["c@x"], "y\r\n"));
    assert_eq!(s.take_sent(), "MAIL FROM:<a@example.com>\r\n");
    s.server("250 ok\r\n250 ok\r\n");
    s.server("354 go\r\n250 ok\r\n");
    assert_eq!(s.done(), vec![250]);
    s.c.quit();
    s.drain();
    assert!(s.take_sent().ends_with("QUIT\r\n"));
    s.server("221 bye\r\n");
    assert!(s.c.is_closed());
}

#[test]
fn no_recipient_accepted_means_no_data_and_rset() {
    let mut s = Script::connect("250-mx\r\n250 8BITMIME\r\n");
    s.start(msg(&["a@x"], "x\r\n"));
    s.take_sent();
    s.server("250 ok\r\n550 no\r\n");
    assert_eq!(s.take_sent(), "RCPT TO:<a@x>\r\nRSET\r\n");
    s.server("250 reset\r\n");
    assert_eq!(s.done(), vec![550]);
    // MAIL refused: every recipient takes its reply.
    s.start(msg(&["a@x", "b@x"], "x\r\n"));
    s.take_sent();
    s.server("452 4.3.1 full\r\n");
    assert_eq!(s.take_sent(), "RSET\r\n");
    s.server("250 ok\r\n");
    assert_eq!(s.done(), vec![452, 452]);
}

#[test]
fn pipelined_all_refused_consumes_every_reply() {
    let mut s = Script::connect(ESMTP_PIPELINING);
    s.start(msg(&["a@x"], "x\r\n"));
    s.take_sent();
    s.server("250 ok\r\n550 no\r\n554 no valid recipients\r\n");
    assert_eq!(s.take_sent(), "RSET\r\n");
    s.server("250 ok\r\n");
    assert_eq!(s.done(), vec![550]);
}

/// RFC 3030: BDAT LAST with the content as is (no dot-stuffing), pipelined.
#[test]
fn rfc3030_bdat_sends_content_as_is() {
    let mut s = Script::connect("250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n");
    s.start(msg(&["a@x"], ".x\r\n"));
    assert_eq!(
        s.take_sent(),
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<a@x>\r\nBDAT 17 LAST\r\nReceived: x\r\n.x\r\n"
    );
    s.server("250 ok\r\n250 ok\r\n250 2.0.0 got it\r\n");
    assert_eq!(s.done(), vec![250]);
}

#[test]
fn checks_before_sending_rfc1870_rfc6152_rfc6531() {
    let mut s = Script::connect("250-mx\r\n250 SIZE 10\r\n");
    s.start(msg(&["a@x"], "more than ten bytes\r\n"));
    assert!(
        matches!(s.events.pop(), Some(ClientEvent::Skipped(ClientFailure::Unsendable(r))) if r.code == 552)
    );
    let mut m = msg(&["a@x"], "x\r\n");
    m.eightbit = true;
    let mut s = Script::connect("250-mx\r\n250 PIPELINING\r\n");
    s.start(m.clone());
    assert!(
        matches!(s.events.pop(), Some(ClientEvent::Skipped(ClientFailure::Unsendable(r))) if r.code == 554)
    );
    m.eightbit = false;
    m.smtputf8 = true;
    s.start(m);
    assert!(
        matches!(s.events.pop(), Some(ClientEvent::Skipped(ClientFailure::Unsendable(r))) if r.code == 553)
    );
    assert!(s.take_sent().is_empty());
}

#[test]
fn failures_421_garbage_and_disconnect() {
    let mut s = Script::new();
    s.server("554 go away\r\n");
    assert!(
        matches!(s.events.pop(), Some(ClientEvent::Failed(ClientFailure::Refused(r))) if r.code == 554)
    );
    let mut s = Script::connect(ESMTP_PIPELINING);
    s.start(msg(&["a@x"], "x\r\n"));
    s.server("421 4.3.2 shutting down\r\n");
    assert!(
        matches!(s.events.pop(), Some(ClientEvent::Failed(ClientFailure::Refused(r))) if r.code == 421)
    );
    assert!(s.c.is_closed());
    let mut s = Script::new();
    s.server("HTTP/1.1 400 Bad Request\r\n");
    assert!(matches!(s.events.pop(), Some(ClientEvent::Failed(ClientFailure::Protocol(_)))));
    let mut s = Script::connect(ESMTP_PIPELINING);
    s.start(msg(&["a@x"], "x\r\n"));
    s.c.handle_disconnect("reset by peer");
    s.drain();
    assert_eq!(
        s.events.pop(),
        Some(ClientEvent::Failed(ClientFailure::Disconnected("reset by peer".into())))
    );
}

#[test]
fn rfc5321_4_2_reply_parsing() {
    let mut b = BytesMut::from(&b"250-mx.example\r\n250-SIZE 100\r\n250 HELP\r\n220 next"[..]);
    let r = parse_reply(&mut b).unwrap().unwrap();
    assert_eq!((r.code, r.text.as_ref()), (250, "mx.example\nSIZE 100\nHELP"));
    assert_eq!(parse_reply(&mut b), Ok(None));
    let caps = Capabilities::from_ehlo(&r);
    assert_eq!(caps.size, Some(100));
    for bad in ["25x ok\r\n", "250-a\r\n251 b\r\n", "999 x\r\n", "\r\n"] {
        assert!(parse_reply(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn rfc2034_enhanced_code_is_kept_apart_from_the_text() {
    let cases: [(&str, Option<&str>, &str); 6] = [
        (
            "550-5.1.1 The email account that you tried to reach does not exist.\r\n550 5.1.1 https://support.google.com/mail/?p=NoSuchUser - gsmtp\r\n",
            Some("5.1.1"),
            "The email account that you tried to reach does not exist.\nhttps://support.google.com/mail/?p=NoSuchUser - gsmtp",
        ),
        ("421 4.7.0 [TSS04] Messages deferred\r\n", Some("4.7.0"), "[TSS04] Messages deferred"),
        ("550 5.7.26\r\n", Some("5.7.26"), ""),
        // Class must match the code, parts must be 1-3 digits: otherwise it is text.
        ("550 4.1.1 odd\r\n", None, "4.1.1 odd"),
        ("554 5.1234.1 odd\r\n", None, "5.1234.1 odd"),
        (
            "550 Requested action not taken: mailbox unavailable\r\n",
            None,
            "Requested action not taken: mailbox unavailable",
        ),
    ];
    for (wire, enhanced, text) in cases {
        let r = parse_reply(&mut BytesMut::from(wire)).unwrap().unwrap();
        assert_eq!((r.enhanced.as_deref(), r.text.as_ref()), (enhanced, text), "{wire:?}");
    }
}

/// Randomized round trip: any reply the server side encodes (random code, 1-5 lines of printable
/// text) parses back to the same code and text, whether it arrives whole, byte by byte or in
/// random pieces, with the next reply's bytes left in the buffer.
#[test]
fn replies_round_trip_through_encode_and_parse() {
    let mut rng = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
    let mut next = |n: u64| rng() % n;
    for _ in 0..500 {
        let code = 200 + next(400) as u16;
        let lines: Vec<String> = (0..1 + next(5))
            .map(|_| (0..next(60)).map(|_| (b' ' + next(95) as u8) as char).collect())
            .collect();
        let mut reply = crate::proto::smtp::reply::Reply::plain(code, lines.join("\n"));
        if next(2) == 0 && code / 100 != 3 {
            let class = code / 100;
            reply.enhanced = Some(format!("{class}.{}.{}", next(8), next(30)).into());
        }
        let mut wire = BytesMut::new();
        reply.encode(&mut wire);
        wire.extend_from_slice(b"250 next\r\n");
        let mut buf = BytesMut::new();
        let mut parsed = None;
        let mut rest = &wire[..];
        while parsed.is_none() {
            assert!(!rest.is_empty(), "{code} {lines:?} never parsed");
            let take = (1 + next(40) as usize).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            parsed = parse_reply(&mut buf).unwrap();
        }
        let got = parsed.unwrap();
        assert_eq!((got.code, got.text.as_ref()), (code, lines.join("\n").as_str()));
        assert_eq!(got.enhanced, reply.enhanced, "{code} {lines:?}");
        buf.extend_from_slice(rest);
        assert_eq!(
            parse_reply(&mut buf).unwrap().map(|r| r.code),
            Some(250),
            "the next reply stays"
        );
    }
}

fn creds() -> Option<Credentials> {
    Some(Credentials { username: "app".into(), password: "s3cret".into() })
}

#[test]
fn rfc3207_starttls_then_ehlo_again_and_discard_pipelined_reply_bytes() {
    let mut s = Script::with_policy(SessionPolicy { tls: TlsPolicy::Opportunistic, auth: None });
    s.server("220 mx\r\n");
    s.take_sent();
    s.server("250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
    assert_eq!(s.take_sent(), "STARTTLS\r\n");
    assert!(s.events.is_empty(), "not ready before TLS");
    // Bytes after the 220 are an injection attempt: they must not be read as replies.
    s.server("220 go ahead\r\n250 injected\r\n");
    assert_eq!(s.events.pop(), Some(ClientEvent::StartTls));
    s.c.tls_established();
    s.drain();
    assert_eq!(s.take_sent(), "EHLO me.test\r\n");
    assert!(s.events.is_empty(), "the injected 250 was dropped");
    s.server("250-mx\r\n250 PIPELINING\r\n");
    assert!(matches!(s.events.pop(), Some(ClientEvent::Ready(c)) if c.pipelining && !c.starttls));
    assert!(s.c.is_tls());
}

#[test]
fn starttls_policy_matrix() {
    // (policy, EHLO reply, STARTTLS reply if asked, expected outcome)
    let no_tls = "250-mx\r\n250 PIPELINING\r\n";
    let tls = "250-mx\r\n250 STARTTLS\r\n";
    for (policy, ehlo, ready) in [
        (TlsPolicy::Opportunistic, no_tls, true),
        (TlsPolicy::Required, no_tls, false),
        (TlsPolicy::Disabled, tls, true),
    ] {
        let mut s = Script::with_policy(SessionPolicy { tls: policy, auth: None });
        s.server("220 mx\r\n").server(ehlo);
        let ev = s.events.pop();
        assert_eq!(matches!(ev, Some(ClientEvent::Ready(_))), ready, "{policy:?}: {ev:?}");
        assert!(!s.take_sent().contains("STARTTLS"), "{policy:?}");
    }
    // Refused STARTTLS: opportunistic goes on in plaintext, required gives up.
    for (policy, ready) in [(TlsPolicy::Opportunistic, true), (TlsPolicy::Required, false)] {
        let mut s = Script::with_policy(SessionPolicy { tls: policy, auth: None });
        s.server("220 mx\r\n").server(tls).server("454 4.7.0 TLS not available\r\n");
        let ev = s.events.pop();
        assert_eq!(matches!(ev, Some(ClientEvent::Ready(_))), ready, "{policy:?}: {ev:?}");
        if !ready {
            assert!(matches!(ev, Some(ClientEvent::Failed(ClientFailure::Tls(_)))));
        }
    }
}

fn tls_session(policy: SessionPolicy, ehlo_after_tls: &str) -> Script {
    let mut s = Script::with_policy(policy);
    s.server("220 mx\r\n").server("250-mx\r\n250 STARTTLS\r\n").server("220 go\r\n");
    assert_eq!(s.events.pop(), Some(ClientEvent::StartTls));
    s.c.tls_established();
    s.drain();
    s.take_sent();
    s.server(ehlo_after_tls);
    s
}

#[test]
fn rfc4616_auth_plain_after_tls() {
    let p = SessionPolicy { tls: TlsPolicy::Opportunistic, auth: creds() };
    let mut s = tls_session(p, "250-mx\r\n250 AUTH LOGIN PLAIN\r\n");
    // base64("\0app\0s3cret")
    assert_eq!(s.take_sent(), "AUTH PLAIN AGFwcABzM2NyZXQ=\r\n");
    assert!(s.events.is_empty());
    s.server("235 2.7.0 ok\r\n");
    assert!(matches!(s.events.pop(), Some(ClientEvent::Ready(_))));
}

#[test]
fn auth_login_steps_and_legacy_capability_form() {
    let p = SessionPolicy { tls: TlsPolicy::Required, auth: creds() };
    let mut s = tls_session(p, "250-mx\r\n250 AUTH=LOGIN\r\n");
    assert_eq!(s.take_sent(), "AUTH LOGIN\r\n");
    s.server("334 VXNlcm5hbWU6\r\n");
    assert_eq!(s.take_sent(), "YXBw\r\n");
    s.server("334 UGFzc3dvcmQ6\r\n");
    assert_eq!(s.take_sent(), "czNjcmV0\r\n");
    s.server("235 ok\r\n");
    assert!(matches!(s.events.pop(), Some(ClientEvent::Ready(_))));
}

#[test]
fn auth_failures_end_the_session() {
    let p = || SessionPolicy { tls: TlsPolicy::Opportunistic, auth: creds() };
    let mut wrong = tls_session(p(), "250-mx\r\n250 AUTH PLAIN\r\n");
    wrong.server("535 5.7.8 bad credentials\r\n");
    assert!(
        matches!(wrong.events.pop(), Some(ClientEvent::Failed(ClientFailure::Auth(m))) if m.contains("535"))
    );
    let mut none = tls_session(p(), "250-mx\r\n250 AUTH CRAM-MD5\r\n");
    assert!(
        matches!(none.events.pop(), Some(ClientEvent::Failed(ClientFailure::Auth(m))) if m.contains("CRAM-MD5"))
    );
    // Never over plaintext: the server offers no STARTTLS, so the credentials stay home.
    let mut plain = Script::with_policy(p());
    plain.server("220 mx\r\n").server("250-mx\r\n250 AUTH PLAIN\r\n");
    assert!(matches!(plain.events.pop(), Some(ClientEvent::Failed(ClientFailure::Auth(_)))));
    assert!(!plain.take_sent().contains("AUTH"));
    assert!(!format!("{:?}", creds()).contains("s3cret"));
}

#[test]
fn rfc3461_dsn_parameters_go_on_only_to_dsn_servers() {
    let mut m = msg(&["a@x", "b@x"], "hi\r\n");
    m.dsn = DsnParams {
        ret: Some(Ret::Hdrs),
        envid: Some("QQ+2B1".into()),
        recipients: vec![
            (
                Some(Notify { success: true, failure: true, delay: false }),
                Some("rfc822;a@x".into()),
            ),
            (Some(Notify::default()), None),
        ],
    };
    let mut s = Script::connect("250-mx\r\n250-DSN\r\n250 PIPELINING\r\n");
    s.start(m.clone());
    assert_eq!(
        s.take_sent(),
        "MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ+2B1\r\nRCPT TO:<a@x> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@x\r\nRCPT TO:<b@x> NOTIFY=NEVER\r\nDATA\r\n"
    );
    let mut s = Script::connect("250-mx\r\n250 PIPELINING\r\n");
    s.start(m);
    assert_eq!(
        s.take_sent(),
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n"
    );
}
