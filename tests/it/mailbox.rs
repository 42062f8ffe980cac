//! Local mailboxes (issue #13): mail for `[local] domains` delivered through the queue into
//! Maildirs, and read over POP3 by the clients people use: Python's poplib, curl and
//! fetchmail (with STLS). Plus the durability of local delivery under kill -9 and the quota.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::mailboxes::*;
use crate::common::*;

/// RCPT: users and aliases are accepted, strangers refused at once (no backscatter later).
#[test]
fn local_recipients_are_checked_at_rcpt_and_delivered_with_delivered_to() {
    let t = start("");
    let mut c = Client::ehlo(t.s.smtp);
    c.cmd("MAIL FROM:<x@example.org>");
    let r = c.cmd("RCPT TO:<carol@example.com>");
    assert!(r.starts_with("550 5.1.1"), "{r}");
    assert_eq!(code(&c.cmd("RCPT TO:<Alice@Example.COM>")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<team@example.com>")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<abuse@example.com>")), 250, "RFC 2142 role, to postmaster");
    assert_eq!(code(&c.cmd("DATA")), 354);
    assert_eq!(code(&c.cmd("Message-ID: <m1@t>\r\n\r\nhello\r\n.")), 250);
    t.s.wait_queue(20, |q| q.is_empty());
    let alice = t.mailbox("alice");
    assert_eq!(alice.len(), 3, "direct, via the alias, via abuse@");
    for to in ["Alice@Example.COM", "team@example.com", "abuse@example.com"] {
        let m = alice.iter().find(|m| m.starts_with(&format!("Delivered-To: {to}\r\n")));
        let m = m.unwrap_or_else(|| panic!("no copy for {to}: {alice:?}"));
        assert!(m.contains("Return-Path: <x@example.org>\r\n") && m.contains("\r\n\r\nhello\r\n"));
    }
    assert_eq!(t.mailbox("bob").len(), 1);
    // One reception, one delivery per recipient (an alias's copies are one delivery).
    let log = t.s.delivery_log(4);
    assert_eq!(log.iter().filter(|e| e["event"] == "delivered").count(), 3, "{log:?}");
}

const POPLIB: &str = r#"
import poplib, ssl, sys, base64
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE

p = poplib.POP3(host, port, timeout=10)
caps = p.capa()
assert "STLS" in caps and "UIDL" in caps and "TOP" in caps, caps
p.stls(ctx)
assert "STLS" not in p.capa()
p.user("alice@example.com"); p.pass_("pw")
count, size = p.stat()
assert count == 3, (count, size)
resp, listing, _ = p.list()
sizes = [int(l.split()[1]) for l in listing]
assert sum(sizes) == size, (listing, size)
uids = [l.split()[1] for l in p.uidl()[1]]
assert len(set(uids)) == 3
bodies = {}
for n in (1, 2, 3):
    resp, lines, octets = p.retr(n)
    text = b"\r\n".join(lines)
    subject = [l for l in lines if l.startswith(b"Subject: ")][0][9:].decode()
    bodies[subject] = (text, octets, sizes[n - 1])
dots = bodies["dots"][0]
assert b"\r\n.leading dot\r\n" in dots and b"\r\n..two dots\r\n" in dots, dots
big = bodies["big"][0]
assert big.count(b"0123456789" * 7) == 30000, len(big)
resp, top, _ = p.top(1, 0)
assert top[-1] == b"" and not any(l.startswith(b"line") for l in top), top
# Another session cannot take the maildrop while this one holds it (RFC 2449 IN-USE).
q = poplib.POP3(host, port, timeout=10); q.user("bob@example.com"); q.pass_("pw"); q.quit()
q = poplib.POP3(host, port, timeout=10); q.user("alice@example.com")
try:
    q.pass_("pw"); raise SystemExit("second session got the maildrop")
except poplib.error_proto as e:
    assert b"IN-USE" in e.args[0], e
q.quit()
p.dele(1)
assert p.stat()[0] == 2
p.rset()
assert p.stat()[0] == 3
p.dele(uids.index(uids[0]) + 1)
p.quit()
# UPDATE removed one message; the others keep their UIDs.
p = poplib.POP3(host, port, timeout=10)
p.user("alice@example.com"); p.pass_("pw")
left = [l.split()[1] for l in p.uidl()[1]]
assert left == uids[1:], (left, uids)
# A session that deletes and then drops the connection deletes nothing.
p.dele(1)
p.sock.close()
p = poplib.POP3(host, port, timeout=10)
p._shortcmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.com\0pw").decode())
assert p.stat()[0] == 2
try:
    p.retr(9); raise SystemExit("no error for a missing message")
except poplib.error_proto:
    pass
p.quit()
print("ok")
"#;

/// Every command of RFC 1939 (and CAPA, STLS, AUTH PLAIN) through Python's poplib, on mail
/// delivered through the SMTP listener: a 2 MB message, dot-stuffing, TOP, the maildrop lock,
/// deletions only at QUIT, and UIDs that stay.
#[test]
fn poplib_reads_mail_delivered_over_smtp() {
    let t = start("");
    let line = "0123456789".repeat(7);
    let big: String = (0..30000).map(|_| format!("{line}\r\n")).collect();
    t.send("alice@example.com", "big", &big);
    // Dot-stuffed for SMTP: stored as ".leading dot" and "..two dots".
    t.send("alice@example.com", "dots", "..leading dot\r\n...two dots\r\nend\r\n");
    t.send("alice@example.com", "plain", "line 1\r\nline 2\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let out = python(POPLIB, &["127.0.0.1", &t.pop3.port().to_string()]);
    assert_eq!(out.trim(), "ok");
    assert_eq!(t.mailbox("alice").len(), 2);
    let (_, metrics) = t.s.http_get("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("sluice_local_deliveries_total{outcome=\"stored\"} 3"), "{metrics}");
    assert!(metrics.contains("sluice_pop3_logins_total{result=\"busy\"} 1"));
    assert!(metrics.contains("sluice_pop3_messages_total{action=\"deleted\"} 1"));
}

/// curl lists and fetches over pop3:// (plaintext on loopback) and pop3:// with STLS.
#[test]
fn curl_lists_and_fetches_over_pop3() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let t = start("");
    t.send("bob@example.com", "c1", "first\r\n");
    t.send("bob@example.com", "c2", "second\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let url = format!("pop3://127.0.0.1:{}/", t.pop3.port());
    let curl = |args: &[&str], url: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-u", "bob@example.com:pw"])
            .args(args)
            .arg(url)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let list = curl(&[], &url);
    assert_eq!(list.lines().count(), 2, "{list}");
    let second = curl(&["--ssl-reqd", "-k"], &format!("{url}2"));
    assert!(second.contains("Message-ID: <c2>") && second.contains("\r\nsecond\r\n"), "{second}");
}

/// fetchmail, as a user runs it: POP3 with STLS (sslproto without ssl), every message handed
/// to an MDA and deleted from the server.
#[test]
fn fetchmail_retrieves_over_pop3_with_stls() {
    if !require_tool("fetchmail", "apt-get install fetchmail") {
        return;
    }
    let t = start("");
    for i in 0..3 {
        t.send("alice@example.com", &format!("f{i}"), &format!("fetch {i}\r\n"));
    }
    t.s.wait_queue(20, |q| q.is_empty());
    let out = t.s.dir.path().join("fetched.mbox");
    let rc = t.s.dir.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\npoll 127.0.0.1 service {} protocol pop3 auth password\n\
             user \"alice@example.com\" password \"pw\" sslproto \"tls1.2+\" no sslcertck\n\
             mda \"sh -c 'cat >> {}'\"\n",
            t.pop3.port(),
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = t.s.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let r = Command::new("fetchmail")
        .args(["-f"])
        .arg(&rc)
        .args(["--nodetach", "--verbose"])
        .env("HOME", &home)
        .env("FETCHMAILHOME", &home)
        .output()
        .unwrap();
    let log =
        format!("{}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    assert!(r.status.success(), "fetchmail failed:\n{log}");
    assert!(log.contains("STLS"), "fetchmail did not use STLS:\n{log}");
    let fetched = std::fs::read_to_string(&out).unwrap();
    for i in 0..3 {
        assert!(fetched.contains(&format!("Message-ID: <f{i}>")), "{fetched}");
    }
    assert!(t.mailbox("alice").is_empty(), "fetchmail deletes what it fetched");
    // Sessions and handshakes are counted under their protocol; the SMTP series carry SMTP
    // listeners only.
    let (_, metrics) = t.s.http_get("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    let value = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert!(value("sluice_sessions_total{listener=\"pop3\",protocol=\"pop3\"}") >= 1, "{metrics}");
    let tls = "sluice_tls_handshakes_total{listener=\"pop3\",protocol=\"pop3\",result=\"TLSv1_";
    assert!(value(tls) >= 1, "{metrics}");
    assert!(value("sluice_sessions_total{listener=\"smtp\",protocol=\"smtp\"}") >= 3, "{metrics}");
    for smtp_only in [
        "sluice_smtp_tls_total{listener=\"pop3\"",
        "sluice_smtp_connections_total{listener=\"pop3\"",
    ] {
        assert!(!metrics.contains(smtp_only), "{smtp_only} in {metrics}");
    }
}

/// kill -9 while local deliveries run: every acknowledged message reaches the mailbox after
/// the restart (a message leaves the spool only after its Maildir write is durable).
#[test]
fn kill9_during_local_delivery_loses_nothing() {
    let mut t = start("");
    let mut c = Client::ehlo(t.s.smtp);
    let n = 300;
    for i in 0..n {
        c.cmd("MAIL FROM:<s@example.org>");
        c.cmd("RCPT TO:<alice@example.com>");
        c.cmd("DATA");
        assert_eq!(code(&c.cmd(&format!("Message-ID: <k{i}@t>\r\n\r\nx\r\n."))), 250);
    }
    // Kill once some, not all, are in the mailbox.
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.mailbox("alice").is_empty() {
        assert!(Instant::now() < deadline, "no local delivery started");
        std::thread::sleep(Duration::from_millis(2));
    }
    t.s.kill9();
    let before = t.mailbox("alice").len();
    t.s.spawn();
    t.s.wait_queue(60, |q| q.is_empty());
    let all = t.mailbox("alice");
    for i in 0..n {
        let id = format!("Message-ID: <k{i}@t>\r\n");
        assert!(all.iter().any(|m| m.contains(&id)), "k{i} lost ({before} before the kill)");
    }
    let tmp = std::fs::read_dir(t.maildir("alice").join("tmp")).unwrap().count();
    eprintln!("{before} delivered before the kill; {} after; {tmp} left in tmp/", all.len());
    assert!(all.len() - n <= 20, "{} duplicates", all.len() - n);
}

/// Over quota: the delivery is deferred (452 4.2.2, retried), and once the mailbox is known
/// to be full RCPT says so at once; space freed over POP3 lets the deferred message in.
#[test]
fn a_full_mailbox_defers_then_refuses_at_rcpt_until_space_is_freed() {
    let t = start("quota = \"3KiB\"\n");
    let body = |c: &str| format!("{}\r\n", c.repeat(500)).repeat(3);
    t.send("bob@example.com", "q1", &body("a"));
    t.s.wait_queue(20, |q| q.is_empty());
    t.send("bob@example.com", "q2", &body("b"));
    // reception, delivered, reception, deferred
    let log = t.s.delivery_log(4);
    let deferred = log.iter().find(|e| e["event"] == "deferred").expect("deferred");
    assert!(deferred["reply"].as_str().unwrap().starts_with("452 4.2.2"), "{deferred}");
    // RCPT knows the mailbox is too full for a message of the SIZE MAIL declares (RFC 1870).
    let mut c = Client::ehlo(t.s.smtp);
    c.cmd("MAIL FROM:<s@example.org> SIZE=1600");
    let r = c.cmd("RCPT TO:<bob@example.com>");
    assert!(r.starts_with("452 4.2.2"), "{r}");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.com>")), 250, "other mailboxes are fine");
    // Free the space: the queued message goes in at its next retry.
    let mut pop = std::net::TcpStream::connect(t.pop3).unwrap();
    pop.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    pop.write_all(b"USER bob@example.com\r\nPASS pw\r\nDELE 1\r\nQUIT\r\n").unwrap();
    let mut replies = String::new();
    std::io::Read::read_to_string(&mut pop, &mut replies).unwrap();
    assert!(replies.ends_with("+OK Bye\r\n"), "{replies}");
    t.s.wait_queue(20, |q| q.is_empty());
    let bob = t.mailbox("bob");
    assert_eq!(bob.len(), 1);
    assert!(bob[0].contains("Message-ID: <q2>"));
}

/// NOTIFY=SUCCESS (RFC 3461) for a local recipient: the success report says `delivered`
/// (RFC 3464 2.3.3), as the message reached the mailbox, not a next hop.
#[test]
fn success_notice_of_a_local_delivery_says_delivered() {
    let t = start("");
    let mut c = Client::ehlo(t.s.smtp);
    assert_eq!(code(&c.cmd("MAIL FROM:<sender@example.org>")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.com> NOTIFY=SUCCESS")), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    assert_eq!(code(&c.cmd("Message-ID: <n1@t>\r\n\r\nhi\r\n.")), 250);
    // The report to sender@example.org waits in the queue (no DNS in tests).
    let q = t.s.wait_queue(20, |q| q.len() == 1 && q[0]["sender"] == "");
    let report = String::from_utf8(t.s.raw_message(q[0]["id"].as_str().unwrap())).unwrap();
    assert!(report.contains("Action: delivered\r\n"), "{report}");
    assert!(report.contains("Final-Recipient: rfc822; bob@example.com"), "{report}");
    assert_eq!(t.mailbox("bob").len(), 1);
}

/// What a POP3 server serves: per message its UIDL, LIST size and RETR octets (base64), as JSON.
const POP3_SNAPSHOT: &str = r#"
import base64, json, poplib, sys
p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=10)
p.user(sys.argv[3]); p.pass_("pw")
uids = [l.split()[1].decode() for l in p.uidl()[1]]
sizes = [int(l.split()[1]) for l in p.list()[1]]
bodies = [base64.b64encode(b"\r\n".join(p.retr(n + 1)[1])).decode() for n in range(len(uids))]
p.quit()
print(json.dumps(sorted(zip(uids, sizes, bodies))))
"#;

/// Dovecot as the reference: serving a copy of the Maildir sluice wrote, it lists the same
/// UIDs and sizes and returns the same octets for every message; and once Dovecot has worked
/// on the Maildir (moved the messages to cur/ with flags, added its index files), sluice
/// serves that directory with the same answers.
#[test]
fn dovecot_serves_the_maildir_sluice_wrote_byte_for_byte() {
    if !require_tool("dovecot", "apt-get install dovecot-pop3d") {
        return;
    }
    let t = start("");
    let corpus = [
        (
            "alt",
            "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b--\r\n",
        ),
        ("dots", "..one\r\n...two\r\n.\r\n"),
        ("utf8", "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\ncaf\u{e9} \u{2603}\r\n"),
        ("long", &format!("{}\r\n", "x".repeat(990)).repeat(200)),
        ("empty", ""),
    ];
    for (id, body) in corpus {
        t.send("alice@example.com", id, body);
    }
    t.s.wait_queue(20, |q| q.is_empty());
    let snapshot =
        |port: u16| python(POP3_SNAPSHOT, &["127.0.0.1", &port.to_string(), "alice@example.com"]);
    let ours = snapshot(t.pop3.port());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ours).unwrap().as_array().unwrap().len(),
        5
    );

    let copy = tempfile::tempdir().unwrap();
    let dv_maildir = copy.path().join("Maildir");
    copy_tree(&t.maildir("alice"), &dv_maildir);
    let ok = Command::new("chown").args(["-R", "65534:65534"]).arg(copy.path()).status().unwrap();
    assert!(ok.success());
    {
        let dovecot = Dovecot::start(&dv_maildir, "pop3");
        assert_eq!(snapshot(dovecot.port), ours, "Dovecot serves the same messages");
    }
    let moved = std::fs::read_dir(dv_maildir.join("cur")).unwrap().count();
    assert_eq!(moved, 5, "Dovecot moved the messages to cur/");

    // Back the other way: sluice serves the directory Dovecot left.
    let ours_dir = t.maildir("alice");
    std::fs::remove_dir_all(&ours_dir).unwrap();
    copy_tree(&dv_maildir, &ours_dir);
    assert_eq!(snapshot(t.pop3.port()), ours, "sluice serves Dovecot's Maildir the same");
}
