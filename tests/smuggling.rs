//! SMTP smuggling over a real socket: a bare CR or LF in DATA refuses the message and closes
//! the session, so nothing after it can be read as a command and nothing smuggled is queued.

mod common;

use common::*;

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
