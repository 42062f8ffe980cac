//! Session tests without sockets: scripted `C:`/`S:` exchanges, table-driven.

use super::*;

/// Drives a session like the I/O driver does, storing every message successfully.
struct Harness {
    s: Session,
    stored: Vec<Transaction>,
    closed: bool,
    /// What the driver answers to AUTH: the right password is "s3cret".
    auth_senders: Vec<String>,
    locked_out: bool,
    handshakes: usize,
}

impl Harness {
    fn new() -> Self {
        Self::with(SessionConfig::default(), "127.0.0.1")
    }

    fn with(cfg: SessionConfig, ip: &str) -> Self {
        let mut h = Harness {
            s: Session::new(Arc::new(cfg), ip.parse().unwrap()),
            stored: vec![],
            closed: false,
            auth_senders: vec![],
            locked_out: false,
            handshakes: 0,
        };
        let greeting = h.take_output();
        assert!(greeting.starts_with("220 "), "{greeting}");
        h
    }

    fn take_output(&mut self) -> String {
        let out = self.s.output().split();
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// Sends raw bytes and returns everything the server answered.
    fn send(&mut self, bytes: &[u8]) -> String {
        self.s.input().extend_from_slice(bytes);
        loop {
            match self.s.advance() {
                Step::NeedInput => break,
                Step::Close => {
                    self.closed = true;
                    break;
                }
                Step::Store(tx) => {
                    let size = tx.body.len();
                    self.stored.push(*tx);
                    let id = format!("ID{}", self.stored.len());
                    self.s.handle_stored(Ok(&id), size);
                }
                Step::StartTls => {
                    self.handshakes += 1;
                    self.s.tls_established();
                }
                Step::Authenticate(c) => {
                    let r = if self.locked_out {
                        AuthResult::LockedOut
                    } else if c.password.expose() == "s3cret" {
                        AuthResult::Ok { senders: self.auth_senders.clone(), tenant: None }
                    } else {
                        AuthResult::Invalid
                    };
                    self.s.handle_auth(r);
                }
            }
        }
        self.take_output()
    }

    /// Sends one line and returns the reply codes it produced.
    fn cmd(&mut self, line: &str) -> Vec<u16> {
        codes(&self.send(format!("{line}\r\n").as_bytes()))
    }

    fn expect(&mut self, line: &str, code: u16) {
        let got = self.cmd(line);
        assert_eq!(got.last().copied(), Some(code), "C: {line} -> {got:?}");
    }
}

/// The code of each reply (multi-line replies count once).
fn codes(out: &str) -> Vec<u16> {
    out.split("\r\n")
        .filter(|l| l.len() >= 4 && &l[3..4] == " ")
        .map(|l| l[..3].parse().unwrap())
        .collect()
}

fn enhanced(out: &str) -> Vec<String> {
    out.split("\r\n")
        .filter(|l| l.len() >= 4 && &l[3..4] == " ")
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .collect()
}

/// RFC 5321 Appendix D.1: a typical SMTP transaction scenario.
#[test]
fn rfc5321_d1_typical_transaction() {
    let mut h = Harness::new();
    let ehlo = h.send(b"EHLO bar.com\r\n");
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(ehlo.contains(&format!("250-{ext}\r\n")), "{ext} missing in {ehlo}");
    }
    assert!(ehlo.ends_with("250 HELP\r\n"));
    h.expect("MAIL FROM:<Smith@bar.com>", 250);
    h.expect("RCPT TO:<Jones@foo.com>", 250);
    h.expect("RCPT TO:<Green@foo.com>", 250);
    h.expect("RCPT TO:<Brown@foo.com>", 250);
    h.expect("DATA", 354);
    assert!(h.cmd("Blah blah blah...").is_empty());
    let end = h.send(b"...etc. etc. etc.\r\n.\r\n");
    assert!(end.starts_with("250 2.0.0 OK queued as ID1"), "{end}");
    h.expect("QUIT", 221);
    assert!(h.closed);
    let tx = &h.stored[0];
    assert_eq!(tx.rcpts.len(), 3);
    assert_eq!(&tx.body[..], b"Blah blah blah...\r\n..etc. etc. etc.\r\n");
}

/// RFC 5321 Appendix D.2: aborted transaction (RSET discards the envelope).
#[test]
fn rfc5321_d2_aborted_transaction() {
    let mut h = Harness::new();
    h.expect("EHLO bar.com", 250);
    h.expect("MAIL FROM:<Smith@bar.com>", 250);
    h.expect("RCPT TO:<Jones@foo.com>", 250);
    h.expect("RSET", 250);
    h.expect("RCPT TO:<Green@foo.com>", 503);
    h.expect("QUIT", 221);
    assert!(h.stored.is_empty());
}

/// RFC 5321 Appendix D.3: relayed mail scenario (a relay accepts and re-sends with a trace).
#[test]
fn rfc5321_d3_relay_adds_received_header() {
    let mut h = Harness::new();
    h.expect("HELO foo.com", 250);
    h.expect("MAIL FROM:<JQP@bar.com>", 250);
    h.expect("RCPT TO:<Jones@XYZ.COM>", 250);
    h.expect("DATA", 354);
    h.send(b"Date: Thu, 21 May 1998 05:33:29 -0700\r\nMessage-ID: <x@bar.com>\r\n\r\nHi\r\n.\r\n");
    let tx = &h.stored[0];
    assert!(!tx.esmtp);
    let trace = tx.trace_header("foo.com", "ID1", 0);
    assert!(trace.starts_with("Received: from foo.com ([127.0.0.1])\r\n\tby foo.com (sluice) with SMTP id ID1\r\n\tfor <Jones@XYZ.COM>;"), "{trace}");
    assert_eq!(message::message_id(&tx.body).as_deref(), Some("<x@bar.com>"));
}

/// RFC 5321 Appendix D.4: verifying and sending; VRFY answers 252 (we never verify).
#[test]
fn rfc5321_d4_vrfy_then_send() {
    let mut h = Harness::new();
    h.expect("EHLO foo.com", 250);
    h.expect("VRFY Crispin", 252);
    h.expect("MAIL FROM:<EAK@bar.com>", 250);
    h.expect("RCPT TO:<Admin.MRC@foo.com>", 250);
    h.expect("DATA", 354);
    h.send(b"Blah\r\n");
    h.expect(".", 250);
    h.expect("QUIT", 221);
}

/// Every command's reply in every state (RFC 5321 4.1.4 sequencing, 4.2 codes).
#[test]
fn rfc5321_4_1_4_command_sequencing_replies() {
    type Script = &'static [(&'static str, u16, &'static str)];
    let scripts: &[Script] = &[
        &[
            ("MAIL FROM:<a@b.c>", 503, "5.5.1"),
            ("RCPT TO:<a@b.c>", 503, "5.5.1"),
            ("DATA", 503, "5.5.1"),
        ],
        &[("HELO x", 250, ""), ("DATA", 503, "5.5.1"), ("RCPT TO:<a@b.c>", 503, "5.5.1")],
        &[
            ("EHLO x", 250, ""),
            ("MAIL FROM:<a@b.c>", 250, "2.1.0"),
            ("MAIL FROM:<a@b.c>", 503, "5.5.1"),
        ],
        &[("EHLO x", 250, ""), ("MAIL FROM:<a@b.c>", 250, "2.1.0"), ("DATA", 554, "5.5.1")],
        &[
            ("EHLO x", 250, ""),
            ("NOOP", 250, "2.0.0"),
            ("HELP", 214, "2.0.0"),
            ("EXPN x", 502, "5.5.1"),
        ],
        &[("EHLO x", 250, ""), ("FROB", 500, "5.5.1"), ("MAIL FROM:<a@b.c> XYZ=1", 555, "5.5.4")],
        &[
            ("EHLO x", 250, ""),
            ("MAIL FROM:bad", 501, "5.1.7"),
            ("MAIL FROM:<a@b.c>", 250, "2.1.0"),
            ("RCPT TO:<@@>", 501, "5.1.3"),
        ],
        &[("EHLO x", 250, ""), ("STARTTLS", 502, "5.5.1"), ("AUTH PLAIN", 502, "5.5.1")],
        &[
            ("EHLO x", 250, ""),
            ("DATA extra", 501, "5.5.2"),
            ("RSET", 250, "2.0.0"),
            ("QUIT", 221, "2.0.0"),
        ],
        // RFC 1870 6.1: a declared SIZE over the limit is refused at MAIL.
        &[
            ("EHLO x", 250, ""),
            ("MAIL FROM:<a@b.c> SIZE=52428801", 552, "5.3.4"),
            ("MAIL FROM:<a@b.c> SIZE=52428800", 250, "2.1.0"),
        ],
        // RFC 6531 3.4: UTF-8 addresses need SMTPUTF8.
        &[
            ("EHLO x", 250, ""),
            ("MAIL FROM:<δ@b.c>", 553, "5.6.7"),
            ("MAIL FROM:<δ@b.c> SMTPUTF8", 250, "2.1.0"),
            ("RCPT TO:<ω@πα.gr>", 250, "2.1.5"),
        ],
        &[
            ("EHLO x", 250, ""),
            ("MAIL FROM:<a@b.c>", 250, "2.1.0"),
            ("RCPT TO:<ω@πα.gr>", 553, "5.6.7"),
        ],
    ];
    for script in scripts {
        let mut h = Harness::new();
        for (line, code, enh) in *script {
            let out = h.send(format!("{line}\r\n").as_bytes());
            assert_eq!(codes(&out).last(), Some(code), "C: {line} S: {out}");
            if !enh.is_empty() {
                assert_eq!(
                    enhanced(&out).last().map(String::as_str),
                    Some(*enh),
                    "C: {line} S: {out}"
                );
            }
        }
    }
}

/// RFC 2920: a whole pipelined transaction in one packet gets its replies in order.
#[test]
fn rfc2920_pipelining() {
    let mut h = Harness::new();
    let out = h.send(
        b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<g@h.i>\r\nDATA\r\nhello\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(codes(&out), vec![250, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]);
    assert_eq!(h.stored.len(), 2);
    assert_eq!(h.stored[1].mail.from, None);
    assert_eq!(&h.stored[1].body[..], b"second\r\n");
}

/// RFC 3030 2: BDAT chunks, LAST, and BDAT after a failure.
#[test]
fn rfc3030_bdat_chunks() {
    let mut h = Harness::new();
    let out = h.send(b"EHLO x\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\nRCPT TO:<d@e.f>\r\nBDAT 5\r\nhel\r\nBDAT 0\r\nBDAT 5 LAST\r\nlo.\r\n");
    assert_eq!(codes(&out), vec![250, 250, 250, 250, 250, 250]);
    // A CRLF split across chunks is one line end.
    assert_eq!(&h.stored[0].body[..], b"hel\r\nlo.\r\n");
    assert!(h.stored[0].chunking);
    // Without BINARYMIME (not offered), BDAT content is text under the same policy as DATA
    // (content.rs): a bare CR or LF, or a NUL, refuses the message; the session goes on.
    for (chunk, reply) in [
        (&b"hel\n\rlo."[..], "550 5.5.2"),
        (b"a\r.\rb\r\n", "550 5.5.2"),
        (b"a\0b\r\n", "554 5.6.0"),
    ] {
        let mut h = Harness::new();
        h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n");
        let out = h.send(&[format!("BDAT {} LAST\r\n", chunk.len()).as_bytes(), chunk].concat());
        assert!(out.starts_with(reply), "{chunk:?}: {out}");
        assert!(h.stored.is_empty() && !h.closed);
        assert_eq!(h.cmd("NOOP"), vec![250]);
    }
    // The chunk arrives across several reads.
    let mut h = Harness::new();
    h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 10 LAST\r\n01234");
    assert!(h.stored.is_empty());
    assert_eq!(codes(&h.send(b"567\r\nNOOP\r\n")), vec![250, 250]);
    assert_eq!(&h.stored[0].body[..], b"01234567\r\n");
}

#[test]
fn rfc3030_bdat_errors_consume_the_chunk() {
    // BDAT without a transaction: 503, and the chunk is not read as commands.
    let mut h = Harness::new();
    let out = h.send(b"EHLO x\r\nBDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(codes(&out), vec![250, 503, 250]);
    assert!(!h.closed);
    // DATA after BDAT is a sequence error.
    let mut h = Harness::new();
    let out = h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 1\r\nxDATA\r\n");
    assert_eq!(codes(&out), vec![250, 250, 250, 250, 503]);
    // A chunk over SIZE is refused, so is the rest of the transaction, then it resets.
    let cfg = SessionConfig { max_message_size: 10, ..Default::default() };
    let mut h = Harness::with(cfg, "127.0.0.1");
    let out = h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 8\r\n12345678BDAT 8\r\n12345678BDAT 1 LAST\r\nxMAIL FROM:<a@b.c>\r\n");
    assert_eq!(codes(&out), vec![250, 250, 250, 250, 552, 552, 250]);
    assert!(h.stored.is_empty());
}

/// RFC 1870 6.2 (size during DATA) and RFC 5321 4.5.3.1.6 (text line length).
#[test]
fn rfc1870_size_enforced_during_data() {
    let cfg = SessionConfig { max_message_size: 20, ..Default::default() };
    let mut h = Harness::with(cfg, "127.0.0.1");
    let out = h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n0123456789\r\n0123456789\r\n.\r\nNOOP\r\n");
    assert_eq!(codes(&out), vec![250, 250, 250, 354, 552, 250]);
    assert!(h.stored.is_empty());
    let mut h = Harness::new();
    let long = format!(
        "EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n{}\r\n.\r\n",
        "x".repeat(1200)
    );
    assert_eq!(codes(&h.send(long.as_bytes())).last(), Some(&500));
    assert!(h.stored.is_empty());
}

/// SMTP smuggling: a bare LF/CR refuses the message and closes; nothing after it is a command.
#[test]
fn rfc5321_2_3_8_smuggling_is_refused() {
    let attacks: &[&[u8]] = &[
        b"legit\r\n\n.\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<v@x.y>\r\nDATA\r\nsmuggled\r\n.\r\n",
        b"legit\r\n\r.\rMAIL FROM:<evil@x.y>\r\nRCPT TO:<v@x.y>\r\nDATA\r\nsmuggled\r\n.\r\n",
        b"legit\r\n.\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<v@x.y>\r\nDATA\r\nsmuggled\r\n.\r\n",
        b"legit\n.\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<v@x.y>\r\nDATA\r\nsmuggled\r\n.\r\n",
    ];
    for attack in attacks {
        let mut h = Harness::new();
        h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
        let out = h.send(attack);
        assert_eq!(codes(&out), vec![550], "{}", String::from_utf8_lossy(attack));
        assert!(h.closed);
        assert!(h.stored.is_empty());
    }
}

#[test]
fn rfc5321_4_5_3_1_4_command_line_limit() {
    let mut h = Harness::new();
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    assert_eq!(h.cmd(long.trim_end()), vec![500]);
    // A line arriving in pieces longer than the limit is refused once and skipped whole.
    let out = h.send(format!("NOOP {}", "y".repeat(700)).as_bytes());
    assert_eq!(codes(&out), vec![500]);
    let out = h.send(b"yyyy\r\nNOOP\r\n");
    assert_eq!(codes(&out), vec![250]);
}

#[test]
fn relay_policy_rfc5321_3_6() {
    let mut cfg = SessionConfig::default();
    cfg.local_domains.insert("local.example".into());
    cfg.postmaster = crate::proto::smtp::address::parse_path("ops@local.example", false).unwrap();
    // From a non-relay address: local domains and postmaster only.
    let mut h = Harness::with(cfg.clone(), "192.0.2.10");
    h.expect("EHLO x", 250);
    h.expect("MAIL FROM:<a@b.c>", 250);
    h.expect("RCPT TO:<user@LOCAL.example>", 250);
    // A trailing dot is not a domain (RFC 5321 4.1.2) and never a way around the policy.
    h.expect("RCPT TO:<user@local.example.>", 501);
    h.expect("RCPT TO:<postmaster>", 250);
    let out = h.send(b"RCPT TO:<user@elsewhere.example>\r\n");
    assert!(out.starts_with("554 5.7.1"), "{out}");
    // From loopback (the default relay network): anything.
    let mut h = Harness::with(cfg, "127.0.0.1");
    h.expect("EHLO x", 250);
    h.expect("MAIL FROM:<a@b.c>", 250);
    h.expect("RCPT TO:<user@elsewhere.example>", 250);
}

/// RFC 5321 4.5.3.1.10: a pipelining client that overshoots `max_recipients` gets 452s, which
/// are not client errors: the session survives 10,000 RCPTs and the accepted ones are delivered.
#[test]
fn rfc5321_4_5_3_1_10_recipient_overshoot_is_not_an_error() {
    let mut h = Harness::new();
    let mut cmds = String::from("EHLO x\r\nMAIL FROM:<a@b.c>\r\n");
    for i in 0..10_000 {
        cmds.push_str(&format!("RCPT TO:<r{i}@e.f>\r\n"));
    }
    cmds.push_str("DATA\r\n");
    let out = codes(&h.send(cmds.as_bytes()));
    assert_eq!(out.iter().filter(|&&c| c == 250).count(), 1 + 1000 + 1);
    assert_eq!(out.iter().filter(|&&c| c == 452).count(), 9000);
    assert_eq!(out.last(), Some(&354));
    h.expect("x\r\n.", 250);
    assert_eq!(h.stored[0].rcpts.len(), 1000);
}

/// RFC 2920 3.1: an untrusted client that sends message text before the 354 (or commands
/// before the EHLO reply) is refused and disconnected; nothing is stored. Trusted clients
/// (relay networks, authenticated) may, and so may anyone with the check off.
#[test]
fn rfc2920_3_1_improper_pipelining_by_untrusted_clients() {
    let mut cfg = SessionConfig::default();
    cfg.local_domains.insert("local.example".into());
    let mut h = Harness::with(cfg.clone(), "192.0.2.10");
    h.expect("EHLO x", 250);
    let out = h.send(
        b"MAIL FROM:<a@b.c>\r\nRCPT TO:<u@local.example>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
    );
    assert_eq!(codes(&out), vec![250, 250, 554], "{out}");
    assert!(out.contains("554 5.5.0"), "{out}");
    assert!(h.closed && h.stored.is_empty());
    let mut h = Harness::with(cfg.clone(), "192.0.2.10");
    let out = h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n");
    assert_eq!(codes(&out), vec![554], "{out}");
    // Waiting for 354 is fine.
    let mut h = Harness::with(cfg.clone(), "192.0.2.10");
    h.expect("EHLO x", 250);
    let out = h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n");
    assert_eq!(codes(&out), vec![250, 250, 354]);
    h.expect("hi\r\n.", 250);
    // Trusted (loopback is a relay network) or switched off: pipelined text is taken.
    for (cfg, ip) in [
        (cfg.clone(), "127.0.0.1"),
        (SessionConfig { forbid_unauth_pipelining: false, ..cfg }, "192.0.2.10"),
    ] {
        let mut h = Harness::with(cfg, ip);
        let out = h.send(
            b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@local.example>\r\nDATA\r\nhi\r\n.\r\n",
        );
        assert_eq!(codes(&out), vec![250, 250, 250, 354, 250], "{out}");
    }
}

/// RFC 5321 6.3: more than `max_hops` trace headers is a loop, refused with 554 5.4.6; the
/// session goes on, and headers in the body do not count.
#[test]
fn rfc5321_6_3_mail_loops_are_refused() {
    for (hops, want) in [(50, 250), (51, 554)] {
        let mut h = Harness::new();
        h.expect("EHLO x", 250);
        h.expect("MAIL FROM:<a@b.c>", 250);
        h.expect("RCPT TO:<d@e.f>", 250);
        h.expect("DATA", 354);
        let head = "Received: from x by y; Tue, 1 Dec 2026 00:00:00 +0000\r\n".repeat(hops);
        let out =
            h.send(format!("{head}Subject: loop\r\n\r\nReceived: in the body\r\n.\r\n").as_bytes());
        assert_eq!(codes(&out), vec![want], "{hops}: {out}");
        if want == 554 {
            assert!(out.starts_with("554 5.4.6"), "{out}");
        }
        h.expect("NOOP", 250);
    }
}

/// RFC 5321 4.5.1: `<postmaster>` is delivered to the configured postmaster address, and
/// refused when none is configured (accepted, it could never be delivered).
#[test]
fn postmaster_goes_to_the_configured_address_or_is_refused_rfc5321_4_5_1() {
    let mut h = Harness::with(SessionConfig::default(), "192.0.2.10");
    h.expect("EHLO x", 250);
    h.expect("MAIL FROM:<a@b.c>", 250);
    let out = h.send(b"RCPT TO:<Postmaster>\r\n");
    assert!(out.starts_with("550 5.1.1"), "{out}");

    let cfg = SessionConfig {
        postmaster: crate::proto::smtp::address::parse_path("ops@example.com", false).unwrap(),
        ..SessionConfig::default()
    };
    let mut h = Harness::with(cfg, "192.0.2.10");
    h.expect("EHLO x", 250);
    h.expect("MAIL FROM:<a@b.c>", 250);
    h.expect("RCPT TO:<postmaster>", 250);
    h.expect("DATA", 354);
    h.expect("Subject: x\r\n\r\nhi\r\n.", 250);
    assert_eq!(h.stored[0].rcpts[0].to.as_str(), "ops@example.com");
}

#[test]
fn limits_recipients_and_errors() {
    let cfg = SessionConfig { max_recipients: 2, max_errors: 3, ..Default::default() };
    let mut h = Harness::with(cfg, "127.0.0.1");
    h.expect("EHLO x", 250);
    h.expect("MAIL FROM:<a@b.c>", 250);
    h.expect("RCPT TO:<1@b.c>", 250);
    h.expect("RCPT TO:<2@b.c>", 250);
    let out = h.send(b"RCPT TO:<3@b.c>\r\n");
    assert!(out.starts_with("452 4.5.3"), "{out}");
    // The 452 is not a client error (overshoot, RFC 5321 4.5.3.1.10); three bad commands are.
    h.expect("FOO", 500);
    h.expect("BAZ", 500);
    let out = h.send(b"BAR\r\n");
    assert_eq!(codes(&out), vec![500, 421]);
    assert!(h.closed);
}

#[test]
fn timeout_shutdown_and_storage_errors() {
    let mut h = Harness::new();
    h.s.handle_timeout();
    assert!(h.take_output().starts_with("421 4.4.2"));
    assert!(matches!(h.s.advance(), Step::Close));

    let mut h = Harness::new();
    h.s.handle_shutdown();
    assert!(h.take_output().starts_with("421 4.3.0"));

    let mut h = Harness::new();
    h.s.input()
        .extend_from_slice(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\n");
    let Step::Store(_) = h.s.advance() else { panic!("expected a store") };
    h.s.handle_stored(Err(StoreError::NoSpace), 0);
    assert!(h.take_output().ends_with("452 4.3.1 Insufficient system storage\r\n"));
    // The session goes on after a storage failure.
    assert_eq!(h.cmd("MAIL FROM:<a@b.c>"), vec![250]);
}

/// Mail of a tenant or campaign whose circuit breaker is open: 452 4.7.1 with the reason after
/// DATA (RFC 5321 allows 452 there), counted as `circuit_open`; the session goes on.
#[test]
fn an_open_circuit_breaker_refuses_the_message_for_now() {
    let mut h = Harness::new();
    h.s.input()
        .extend_from_slice(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\n");
    let Step::Store(_) = h.s.advance() else { panic!("expected a store") };
    h.s.handle_stored(Err(StoreError::CircuitOpen("sending paused: campaign c".into())), 0);
    assert!(h.take_output().ends_with("452 4.7.1 sending paused: campaign c\r\n"));
    let events: Vec<Event> = h.s.drain_events().collect();
    assert!(events.contains(&Event::Rejected(RejectReason::CircuitOpen)), "{events:?}");
    assert_eq!(h.cmd("MAIL FROM:<a@b.c>"), vec![250]);
}

/// Issue #22: resource refusals (a full spool, a failed write or signature, the memory
/// budget) are not client errors: 50 of them do not reach `max_errors` (3,648 refusals of a
/// full spool gave a relay-network injector 182 disconnects).
#[test]
fn resource_refusals_do_not_count_toward_max_errors() {
    let cfg = SessionConfig { max_errors: 3, ..SessionConfig::default() };
    let mut h = Harness::with(cfg, "127.0.0.1");
    h.expect("EHLO x", 250);
    for (i, e) in [StoreError::NoSpace, StoreError::Failed, StoreError::Signing]
        .into_iter()
        .cycle()
        .take(50)
        .enumerate()
    {
        h.s.input()
            .extend_from_slice(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\n");
        let Step::Store(_) = h.s.advance() else { panic!("expected a store at {i}") };
        h.s.handle_stored(Err(e), 0);
        let out = h.take_output();
        assert!(out.contains("\r\n45"), "{i}: {out}");
        assert!(!h.closed, "disconnected after {i} resource refusals");
    }
    h.expect("MAIL FROM:<a@b.c>", 250);
}

#[test]
fn events_are_reported() {
    let mut h = Harness::new();
    h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nxy\r\n.\r\nFOO\r\n");
    let events: Vec<Event> = h.s.drain_events().collect();
    assert_eq!(
        events,
        vec![Event::Accepted { bytes: 4 }, Event::Rejected(RejectReason::NotImplemented)]
    );
}

/// DESIGN.md invariant 5: past the memory budget the message is refused (452 4.3.1), its bytes
/// dropped as they arrive, and the session goes on.
#[test]
fn over_budget_refuses_the_message_and_drops_its_bytes() {
    let mut h = Harness::new();
    h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    h.send(b"part one\r\n");
    h.s.handle_over_budget();
    let out = h.send(b"part two\r\n");
    assert!(out.is_empty());
    assert_eq!(h.s.held_bytes(), 0, "a refused message is not held");
    let out = h.send(b".\r\nMAIL FROM:<a@b.c>\r\n");
    assert!(out.starts_with("452 4.3.1"), "{out}");
    assert_eq!(codes(&out), vec![452, 250]);
    assert!(h.stored.is_empty());
    // The same for BDAT.
    let mut h = Harness::new();
    h.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 10 LAST\r\n01234");
    h.s.handle_over_budget();
    let out = h.send(b"56789RSET\r\n");
    assert_eq!(codes(&out), vec![452, 250]);
    assert!(h.stored.is_empty());
}

/// Parsers never panic (DESIGN.md invariant 4): random input drawn mostly from an SMTP alphabet,
/// fed in random pieces, with deterministic seeds so a failure can be replayed. (cargo-fuzz needs
/// a nightly toolchain, which this project does not use; this runs on stable in every test run.)
#[test]
fn random_input_never_panics() {
    let alphabet: &[&[u8]] = &[
        b"EHLO x\r\n",
        b"HELO ",
        b"MAIL FROM:<",
        b"RCPT TO:<",
        b"DATA\r\n",
        b"BDAT ",
        b" LAST\r\n",
        b"RSET\r\n",
        b"QUIT\r\n",
        b"NOOP\r\n",
        b"a@b.c>",
        b"<>",
        b"\r\n",
        b"\r",
        b"\n",
        b".",
        b"\r\n.\r\n",
        b"..",
        b" SIZE=",
        b" BODY=8BITMIME",
        b" SMTPUTF8",
        b" NOTIFY=",
        b"ORCPT=",
        b"0",
        b"7",
        b"99999999999999999999",
        b"\"",
        b"\\",
        b"@",
        b":",
        b",",
        b"\xff",
        b"\xce\xb4",
        b" ",
        b"x",
        b"STARTTLS\r\n",
        b"AUTH PLAIN ",
        b"AUTH LOGIN\r\n",
        b"AGFwcABzM2NyZXQ=",
        b"YXBw\r\n",
        b"*\r\n",
        b"=",
    ];
    let mut next = crate::test_rng::xorshift(0x9E37_79B9_7F4A_7C15);
    for round in 0..3000 {
        // Every other round with STARTTLS and AUTH offered (and required), so their states are
        // reached too.
        let base = if round % 2 == 0 {
            SessionConfig::default()
        } else {
            SessionConfig {
                auth_required: true,
                auth_needs_tls: round % 4 == 1,
                ..tls_auth_config()
            }
        };
        let cfg = SessionConfig { max_message_size: 200, max_errors: 50, ..base };
        let mut h = Harness::with(cfg, "127.0.0.1");
        let mut input = Vec::new();
        for _ in 0..(next() % 60) {
            if next().is_multiple_of(8) {
                input.push(next() as u8);
            } else {
                input.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
        }
        let mut rest = &input[..];
        while !rest.is_empty() && !h.closed {
            let n = 1 + (next() as usize % rest.len());
            h.send(&rest[..n]);
            rest = &rest[n..];
        }
        for l in input.split(|&b| b == b'\n') {
            let _ = command::parse(l);
        }
        assert!(h.s.held_bytes() <= input.len(), "round {round}");
    }
}

fn tls_auth_config() -> SessionConfig {
    SessionConfig { starttls: true, auth: true, relay_networks: vec![], ..SessionConfig::default() }
}

#[test]
fn rfc3207_starttls_resets_the_session_and_drops_pipelined_commands() {
    let mut h = Harness::new();
    h.expect("EHLO c", 250);
    h.expect("STARTTLS", 502); // no certificate on this listener
    let mut h = Harness::with(tls_auth_config(), "192.0.2.9");
    let ehlo = h.send(b"EHLO c\r\n");
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    // The injection: commands in the same packet as STARTTLS are never executed.
    let out = h.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n");
    assert_eq!(codes(&out), vec![220], "{out}");
    assert_eq!(h.handshakes, 1);
    h.expect("MAIL FROM:<a@example.com>", 503); // EHLO again first (RFC 3207 4.2)
    let ehlo = h.send(b"EHLO c\r\n");
    assert!(!ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    h.expect("STARTTLS", 503);
}

/// RFC 4954 4: an overlong SASL response (100,000 octets) gets one 500, and the rest of the line
/// is skipped whole: replies stay in step with commands and nothing in it is read as a command.
#[test]
fn rfc4954_4_an_overlong_sasl_line_is_skipped_whole() {
    let mut h = Harness::with(tls_auth_config(), "192.0.2.9");
    h.expect("EHLO c", 250);
    h.send(b"STARTTLS\r\n");
    h.expect("EHLO c", 250);
    h.expect("AUTH PLAIN", 334);
    let mut line = "QUIT ".repeat(20_000).into_bytes();
    // Sent in pieces, as it would arrive from a socket.
    let mut out = String::new();
    for piece in line.chunks_mut(4096) {
        out.push_str(&h.send(piece));
    }
    out.push_str(&h.send(b"\r\nNOOP\r\n"));
    assert_eq!(codes(&out), vec![500, 250], "{out}");
    assert!(!h.closed);
}

#[test]
fn rfc4954_auth_needs_tls_then_plain_and_login_work() {
    let mut h = Harness::with(tls_auth_config(), "192.0.2.9");
    h.expect("EHLO c", 250);
    let out = h.send(b"AUTH PLAIN AGFwcABzM2NyZXQ=\r\n");
    assert_eq!(enhanced(&out), vec!["5.7.0"], "{out}");
    assert!(out.starts_with("530 "), "{out}");
    h.send(b"STARTTLS\r\n");
    h.expect("AUTH PLAIN AGFwcABzM2NyZXQ=", 503); // no EHLO after TLS yet
    h.expect("EHLO c", 250);
    h.expect("AUTH PLAIN AGFwcAB3cm9uZw==", 535); // "\0app\0wrong"
    h.expect("AUTH LOGIN", 334);
    h.expect("YXBw", 334);
    h.expect("czNjcmV0", 235);
    h.expect("AUTH PLAIN AGFwcABzM2NyZXQ=", 503); // already authenticated
    // Authenticated: relaying is allowed although the IP is in no relay network.
    h.expect("MAIL FROM:<a@example.com>", 250);
    h.expect("RCPT TO:<b@elsewhere.test>", 250);
    h.expect("DATA", 354);
    h.expect("Subject: x\r\n\r\nhi\r\n.", 250);
    let trace = h.stored[0].trace_header("mx.test", "ID", 0);
    assert!(trace.contains("with ESMTPSA"), "{trace}");
    assert_eq!(h.stored[0].auth_user.as_deref(), Some("app"));
}

#[test]
fn auth_exchanges_can_be_cancelled_and_lockouts_answer_454() {
    let mut h = Harness::with(tls_auth_config(), "192.0.2.9");
    h.expect("EHLO c", 250);
    h.send(b"STARTTLS\r\n");
    h.expect("EHLO c", 250);
    h.expect("AUTH PLAIN", 334);
    h.expect("*", 501);
    h.expect("AUTH CRAM-MD5", 504);
    h.expect("AUTH PLAIN !!!", 501);
    h.locked_out = true;
    let out = h.send(b"AUTH PLAIN AGFwcABzM2NyZXQ=\r\n");
    assert!(out.starts_with("454 4.7.0"), "{out}");
    // Without AUTH the relay stays closed.
    h.expect("MAIL FROM:<a@example.com>", 250);
    h.expect("RCPT TO:<b@elsewhere.test>", 554);
}

#[test]
fn rfc6409_submission_needs_auth_and_owned_senders() {
    let cfg = SessionConfig { auth_required: true, auth_needs_tls: false, ..tls_auth_config() };
    let mut h = Harness::with(cfg, "192.0.2.9");
    h.auth_senders = vec!["@example.com".into(), "boss@other.test".into()];
    h.expect("EHLO c", 250);
    let out = h.send(b"MAIL FROM:<a@example.com>\r\n");
    assert!(out.starts_with("530 5.7.0"), "{out}");
    h.expect("AUTH PLAIN AGFwcABzM2NyZXQ=", 235);
    let out = h.send(b"MAIL FROM:<someone@else.test>\r\n");
    assert!(out.starts_with("553 5.7.1"), "{out}");
    h.expect("MAIL FROM:<>", 553);
    h.expect("MAIL FROM:<Boss@Other.test>", 250);
    h.expect("RSET", 250);
    h.expect("MAIL FROM:<x@EXAMPLE.com>", 250);
}

/// A suppression list that refuses one address.
#[derive(Debug)]
struct RefuseOne(&'static str);

impl RecipientPolicy for RefuseOne {
    fn refusal(&self, _tenant: Option<&str>, rcpt: &str) -> Option<String> {
        (rcpt.eq_ignore_ascii_case(self.0)).then(|| format!("{rcpt} is suppressed"))
    }
}

#[test]
fn suppressed_recipients_are_refused_for_trusted_clients_without_counting_as_errors() {
    let cfg = SessionConfig {
        recipient_policy: Some(Arc::new(RefuseOne("gone@example.org"))),
        max_errors: 2,
        local_domains: ["example.org".to_string()].into(),
        ..SessionConfig::default()
    };
    let mut h = Harness::with(cfg.clone(), "127.0.0.1");
    h.expect("EHLO x", 250);
    h.expect("MAIL FROM:<a@b.c>", 250);
    for _ in 0..5 {
        let out = h.send(b"RCPT TO:<Gone@example.org>\r\n");
        assert!(out.starts_with("550 5.7.1 Gone@example.org is suppressed"), "{out}");
    }
    assert!(!h.closed, "refusals of suppressed recipients are no client errors");
    h.expect("RCPT TO:<ok@example.org>", 250);
    h.expect("DATA", 354);
    h.expect("Subject: x\r\n\r\nhi\r\n.", 250);
    assert_eq!(h.stored[0].rcpts.len(), 1);
    // Inbound mail from strangers to a local domain is not the sender's list to apply.
    let mut h = Harness::with(cfg, "192.0.2.10");
    h.expect("EHLO x", 250);
    h.expect("MAIL FROM:<a@b.c>", 250);
    h.expect("RCPT TO:<gone@example.org>", 250);
}
