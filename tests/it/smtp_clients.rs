//! Real clients against a real sluice: Python's smtplib, swaks, and raw sockets for what neither
//! speaks (BDAT). Afterwards `sluice queue list --json` must show exactly what was acknowledged.

use std::collections::BTreeSet;
use std::process::Command;

use crate::common::*;

fn queued_message_ids(s: &Sluice) -> BTreeSet<String> {
    s.queue_list().iter().map(|m| m["message_id"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn smtplib_plain_8bitmime_smtputf8_20mb_and_size() {
    if !require_tool("python3", "apt-get install python3") {
        return;
    }
    let s = Sluice::start("");
    let out = python(
        r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=60)
s.ehlo()
for ext in ("8bitmime", "smtputf8", "pipelining", "chunking", "size", "enhancedstatuscodes", "dsn"):
    assert s.has_extn(ext), ext
s.sendmail("a@example.com", ["b@example.org", "c@example.org"], "Message-ID: <plain@t>\r\nSubject: plain\r\n\r\nhello\r\n.leading dot\r\n")
body8 = "Message-ID: <eight@t>\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n".encode()
s.sendmail("a@example.com", ["b@example.org"], body8, mail_options=["BODY=8BITMIME"])
s.sendmail("josé@exämple.com", ["пользователь@пример.рф"], "Message-ID: <utf8@t>\r\n\r\nпривет\r\n".encode(), mail_options=["SMTPUTF8", "BODY=8BITMIME"])
big = ("Message-ID: <big@t>\r\n\r\n" + ("x" * 998 + "\r\n") * 20000).encode()
s.sendmail("a@example.com", ["b@example.org"], big)
# smtplib declares SIZE=; over the limit it is refused at MAIL (RFC 1870 6.1).
try:
    s.sendmail("a@example.com", ["b@example.org"], b"Message-ID: <toobig@t>\r\n\r\n" + b"y" * (51 << 20))
    raise SystemExit("over-size message accepted")
except smtplib.SMTPSenderRefused as e:
    assert e.smtp_code == 552, e
s.quit()
print("sent")
"#,
        &[&s.smtp.ip().to_string(), &s.smtp.port().to_string()],
    );
    assert_eq!(out.trim(), "sent");
    let list = s.queue_list();
    let ids: BTreeSet<String> =
        list.iter().map(|m| m["message_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["<big@t>", "<eight@t>", "<plain@t>", "<utf8@t>"].map(String::from).into());
    let by_id = |mid: &str| list.iter().find(|m| m["message_id"] == mid).unwrap().clone();
    let plain = by_id("<plain@t>");
    assert_eq!(plain["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(plain["recipients"][0]["state"], "queued");
    assert_eq!(by_id("<eight@t>")["body"], "8BITMIME");
    let utf8 = by_id("<utf8@t>");
    assert_eq!(utf8["sender"], "josé@exämple.com");
    assert_eq!(utf8["recipients"][0]["address"], "пользователь@пример.рф");
    assert_eq!(utf8["smtputf8"], true);
    // The 20 MB body is stored intact, behind the Received header sluice added.
    let big = s.raw_message(by_id("<big@t>")["id"].as_str().unwrap());
    assert!(big.starts_with(b"Received: from "));
    let body_start = big.windows(21).position(|w| w == b"Message-ID: <big@t>\r\n").unwrap();
    assert_eq!(big.len() - body_start, 21 + 2 + 1000 * 20000);
    let plain_raw = s.raw_message(plain["id"].as_str().unwrap());
    assert!(plain_raw.ends_with(b"\r\nhello\r\n.leading dot\r\n"), "dot-unstuffed exactly once");
}

#[test]
fn swaks_plain_pipelining_and_over_size() {
    if !require_tool("swaks", "apt-get install swaks") {
        return;
    }
    let s = Sluice::start("[limits]\nmax_message_size = \"1MiB\"\n");
    let server = s.smtp.to_string();
    let swaks = |extra: &[&str]| {
        Command::new("swaks")
            .args([
                "--server",
                &server,
                "--from",
                "a@example.com",
                "--to",
                "b@example.org",
                "--timeout",
                "30",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = swaks(&["--header", "Message-Id: <swaks-plain@t>"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = swaks(&["--pipeline", "--header", "Message-Id: <swaks-pipe@t>"]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    // swaks sent MAIL, RCPT and DATA in one write only because the server offered PIPELINING.
    assert!(
        text.contains("PIPELINING")
            && text
                .contains(" -> MAIL FROM:<a@example.com>\n -> RCPT TO:<b@example.org>\n -> DATA"),
        "{text}"
    );
    // Over SIZE, undeclared: refused after the data with 552 5.3.4 (RFC 1870 6.2).
    let big_body = format!("{}\r\n", "z".repeat(900)).repeat(1300);
    let body_file = s.dir.path().join("big-body.txt");
    std::fs::write(&body_file, big_body).unwrap();
    let body_arg = format!("@{}", body_file.display());
    let out = swaks(&["--header", "Message-Id: <swaks-big@t>", "--body", &body_arg]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("552 5.3.4"), "{text}");
    assert_eq!(
        queued_message_ids(&s),
        ["<swaks-pipe@t>", "<swaks-plain@t>"].map(String::from).into()
    );
}

/// RFC 2920 over a real socket: a whole transaction in one write, replies in order.
#[test]
fn pipelined_transactions_in_one_packet() {
    let s = Sluice::start("");
    let mut c = Client::connect(s.smtp);
    assert_eq!(code(&c.reply().unwrap()), 220);
    c.send(b"EHLO p\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nMessage-ID: <pipe1@t>\r\n\r\nx\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<c@example.org> NOTIFY=NEVER\r\nDATA\r\nMessage-ID: <pipe2@t>\r\n\r\ny\r\n.\r\nQUIT\r\n").unwrap();
    let codes: Vec<u16> = std::iter::from_fn(|| c.reply()).map(|r| code(&r)).collect();
    assert_eq!(codes, vec![250, 250, 250, 354, 250, 250, 250, 354, 250, 221]);
    let list = s.queue_list();
    assert_eq!(list.len(), 2);
    let bounce = list.iter().find(|m| m["message_id"] == "<pipe2@t>").unwrap();
    assert_eq!(bounce["sender"], "");
    assert_eq!(bounce["recipients"][0]["notify"], "NEVER");
}

/// RFC 3030: BDAT chunks (no client we install speaks CHUNKING). A CRLF may be split across
/// chunks; bare CR/LF is refused as in DATA (tests/it/smuggling.rs).
#[test]
fn bdat_chunks_over_a_socket() {
    let s = Sluice::start("");
    let mut c = Client::connect(s.smtp);
    c.reply();
    assert_eq!(code(&c.cmd("EHLO b")), 250);
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME RET=HDRS ENVID=env+2B1")), 250);
    assert_eq!(
        code(&c.cmd("RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.org")),
        250
    );
    let part1 = b"Message-ID: <bdat@t>\r\n\r\nline one, CRLF split across chunks\r";
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes()).unwrap();
    c.send(part1).unwrap();
    assert_eq!(code(&c.reply().unwrap()), 250);
    c.send(b"BDAT 7 LAST\r\n\n.end\r\n").unwrap();
    let r = c.reply().unwrap();
    assert!(r.starts_with("250 2.0.0 OK queued as "), "{r}");
    let list = s.queue_list();
    let m = &list[0];
    assert_eq!(m["ret"], "HDRS");
    assert_eq!(m["envid"], "env+2B1");
    assert_eq!(m["recipients"][0]["notify"], "SUCCESS,FAILURE");
    assert_eq!(m["recipients"][0]["orcpt"], "rfc822;b@example.org");
    let raw = s.raw_message(m["id"].as_str().unwrap());
    assert!(raw.ends_with(b"line one, CRLF split across chunks\r\n.end\r\n"));
}
