//! SMTP smuggling over a real socket: a bare CR or LF in DATA refuses the message and closes
//! the session, so nothing after it can be read as a command and nothing smuggled is queued.

use crate::common::*;

#[test]
fn smuggling_variants_are_refused_and_nothing_is_queued() {
    let s = Sluice::start("");
    // Each variant tries to end the first message early and start a second one.
    let variants: &[&[u8]] = &[
        b"\n.\n",   // <LF>.<LF>
        b"\r.\r",   // <CR>.<CR>
        b"\r\n.\n", // <CR><LF>.<LF>
        b"\n.\r\n", // <LF>.<CR><LF>
        b"\r.\r\n", // <CR>.<CR><LF>
        b"\r\n.\r", // <CR><LF>.<CR>
        b"\n",      // a bare LF anywhere
        b"\r",      // a bare CR anywhere
    ];
    for (i, v) in variants.iter().enumerate() {
        let mut c = Client::ehlo(s.smtp);
        assert_eq!(c.start_data(), 354);
        let mut payload = format!("Message-ID: <outer{i}@t>\r\n\r\nfirst").into_bytes();
        payload.extend_from_slice(v);
        payload.extend_from_slice(format!("MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nMessage-ID: <smuggled{i}@t>\r\n\r\nsmuggled\r\n.\r\n").as_bytes());
        c.send(&payload).unwrap();
        let r = c.reply().unwrap();
        assert!(r.starts_with("550 5.5.2"), "variant {i}: {r}");
        assert!(c.reply().is_none(), "variant {i}: the session must close after a bare CR/LF");
    }
    // A clean message afterwards is accepted, and it is the only one in the queue.
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<clean@t>", "ok\r\n")), 250);
    let ids: Vec<String> =
        s.queue_list().iter().map(|m| m["message_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec!["<clean@t>".to_string()]);
    let (_, metrics) = s.http_get("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(&format!(
            "sluice_smtp_rejections_total{{reason=\"bare_cr_lf\"}} {}",
            variants.len()
        )),
        "{metrics}"
    );
}

/// One content policy for DATA and BDAT: the same table of end-of-data variants (and NUL before
/// and after the dot) is refused by both commands, and what the next hop receives is checked byte
/// for byte: only the clean message, exactly as sent.
#[test]
fn data_and_bdat_refuse_the_same_variants_and_the_next_hop_gets_only_clean_mail() {
    use crate::common::sink::{Behavior, Sink};
    let sink = Sink::start(Behavior::default()); // no CHUNKING: the next hop gets DATA
    let s = Sluice::start(&format!(
        "[[route]]\ndomains = [\"*\"]\nsmarthost = \"{}\"\ntls = \"disabled\"\n[delivery]\nscan_interval = \"200ms\"\n",
        sink.addr
    ));
    let variants: &[(&[u8], &str)] = &[
        (b"\n.\n", "550 5.5.2"),
        (b"\r.\r", "550 5.5.2"),
        (b"\r\n.\n", "550 5.5.2"),
        (b"\n.\r\n", "550 5.5.2"),
        (b"\r.\r\n", "550 5.5.2"),
        (b"\r\n.\r", "550 5.5.2"),
        (b"\n", "550 5.5.2"),
        (b"\r", "550 5.5.2"),
        (b"\r\n\0.\r\n", "554 5.6.0"),
        (b"\r\n.\0\r\n", "554 5.6.0"),
    ];
    for (i, (v, want)) in variants.iter().enumerate() {
        let mut text = format!("Message-ID: <outer{i}@t>\r\n\r\nfirst").into_bytes();
        text.extend_from_slice(v);
        text.extend_from_slice(format!("MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nMessage-ID: <smuggled{i}@t>\r\n\r\nsmuggled\r\n").as_bytes());
        // DATA: refused (a bare CR/LF also ends the session).
        let mut c = Client::ehlo(s.smtp);
        assert_eq!(c.start_data(), 354);
        c.send(&[&text[..], b".\r\n"].concat()).unwrap();
        let r = c.reply().unwrap();
        assert!(r.starts_with(want), "DATA variant {i}: {r}");
        // BDAT: the same content, framed by length, refused with the same reply.
        let mut c = Client::ehlo(s.smtp);
        c.cmd("MAIL FROM:<a@example.com>");
        c.cmd("RCPT TO:<b@example.org>");
        c.send(format!("BDAT {} LAST\r\n", text.len()).as_bytes()).unwrap();
        c.send(&text).unwrap();
        let r = c.reply().unwrap();
        assert!(r.starts_with(want), "BDAT variant {i}: {r}");
        assert_eq!(code(&c.cmd("NOOP")), 250, "BDAT variant {i}: the session goes on");
    }
    // A clean message by BDAT goes through, and is all the next hop ever gets.
    let clean = b"Message-ID: <clean@t>\r\n\r\n.leading dot\r\nok\r\n";
    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.org>");
    c.send(format!("BDAT {} LAST\r\n", clean.len()).as_bytes()).unwrap();
    c.send(clean).unwrap();
    assert_eq!(code(&c.reply().unwrap()), 250);
    let got = sink.wait_for(1, 15);
    s.wait_queue(15, |q| q.is_empty());
    let got_all = sink.messages();
    assert_eq!(got_all.len(), 1, "{got:?}");
    let data = &got_all[0].data;
    assert!(data.ends_with(clean), "{:?}", String::from_utf8_lossy(data));
    let trace_end = data.len() - clean.len();
    assert!(data[..trace_end].starts_with(b"Received: "));
}

/// ESMTP parameters and the EHLO argument over a real socket: control characters, non-ASCII
/// without SMTPUTF8 and overlong values get 501 5.5.4, and nothing is stored.
#[test]
fn bad_esmtp_parameters_are_refused_and_nothing_is_stored() {
    let s = Sluice::start("[delivery]\nenabled = false\n");
    let long = "x".repeat(200); // over ENVID's 100, under the 512-octet command line
    let lines: Vec<Vec<u8>> = vec![
        b"EHLO foo\0bar".to_vec(),
        b"MAIL FROM:<a@example.com> ENVID=ab\x1bc".to_vec(),
        "MAIL FROM:<a@example.com> ENVID=caf\u{e9}".as_bytes().to_vec(),
        format!("MAIL FROM:<a@example.com> ENVID={long}").into_bytes(),
        b"MAIL FROM:<a@example.com> AUTH=a\x01b".to_vec(),
        b"MAIL FROM:<a@example.com> SIZE=1\x002".to_vec(),
    ];
    for line in &lines {
        let mut c = Client::ehlo(s.smtp);
        c.send(&[&line[..], b"\r\n"].concat()).unwrap();
        let r = c.reply().unwrap();
        assert!(r.starts_with("501 5.5.4"), "{:?}: {r}", String::from_utf8_lossy(line));
    }
    for orcpt in [
        &b"rfc822\r;b@example.org"[..],
        b"rfc\x00822;b@example.org",
        b"rfc822\t;b@example.org",
        b"rfc822;b@ex\x1bample.org",
    ] {
        let mut c = Client::ehlo(s.smtp);
        assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), 250);
        c.send(&[&b"RCPT TO:<b@example.org> ORCPT="[..], orcpt, b"\r\n"].concat()).unwrap();
        let r = c.reply().unwrap();
        assert!(r.starts_with("501 5.5.4"), "{:?}: {r}", String::from_utf8_lossy(orcpt));
        let r = c.cmd("DATA");
        assert!(r.starts_with("554") || r.starts_with("503"), "{r}");
    }
    assert!(s.queue_list().is_empty());
}

/// RFC 2920 3.1 over a real socket: a client outside the relay networks that sends the message
/// text before the 354 is refused (554 5.5.0) and disconnected, and nothing is queued.
#[test]
fn unauthenticated_clients_may_not_send_text_before_the_354() {
    let s = Sluice::start(
        "[relay]\nnetworks = []\n[local]\ndomains = [\"example.org\"]\nmailboxes = false\n[delivery]\nenabled = false\n",
    );
    let mut c = Client::ehlo(s.smtp);
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: early\r\n\r\ntext\r\n.\r\n")
        .unwrap();
    let mut replies = String::new();
    while let Some(r) = c.reply() {
        replies.push_str(&r);
    }
    assert!(replies.contains("554 5.5.0"), "{replies}");
    assert!(!replies.contains("354"), "{replies}");
    assert!(s.queue_list().is_empty());
    // Waiting for the 354, as RFC 2920 asks, works.
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.send_message("<patient@t>", "text\r\n")), 250);
}
