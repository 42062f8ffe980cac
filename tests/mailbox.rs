//! Local mailboxes (issue #13): mail for `[local] domains` delivered through the queue into
//! Maildirs, and read over POP3 by the clients people use: Python's poplib, curl and
//! fetchmail (with STLS). Plus the durability of local delivery under kill -9 and the quota.

mod common;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Setup {
    s: Sluice,
    _dir: tempfile::TempDir,
    pop3: std::net::SocketAddr,
    imap: std::net::SocketAddr,
}

/// sluice with mailboxes for example.com (users alice and bob, password "pw"; an alias
/// `team@` to both; postmaster to alice), a POP3 listener with STLS, plaintext logins allowed
/// on loopback, and `extra` appended.
fn start(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    self_signed(&tls_dir, "mail.sluice.test");
    let users = dir.path().join("users.toml");
    add_user(&users, "alice@example.com", "pw", &[]);
    add_user(&users, "bob@example.com", "pw", &[]);
    let cfg = format!(
        "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n\
         [auth]\nusers_file = \"{1}\"\nplaintext_on_loopback = true\nfailure_delay = \"10ms\"\n\
         [local]\ndomains = [\"example.com\"]\npostmaster = \"alice@example.com\"\n\
         aliases = {{ \"team@example.com\" = [\"alice@example.com\", \"bob@example.com\"] }}\n{extra}\n\
         [queue]\nretry = [\"300ms\"]\n\
         [[listener]]\nmode = \"pop3\"\naddress = \"127.0.0.1:0\"\n\
         [[listener]]\nmode = \"imap\"\naddress = \"127.0.0.1:0\"\n",
        tls_dir.display(),
        users.display()
    );
    let s = Sluice::start(&cfg);
    let pop3 = s.listener("pop3");
    let imap = s.listener("imap");
    Setup { s, _dir: dir, pop3, imap }
}

impl Setup {
    fn maildir(&self, user: &str) -> PathBuf {
        self.s.data_dir.join("mailboxes/example.com").join(user).join("Maildir")
    }

    /// The messages in a user's Maildir (new and cur), as text.
    fn mailbox(&self, user: &str) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(d) = std::fs::read_dir(self.maildir(user).join(sub)) {
                for e in d {
                    out.push(
                        String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap())
                            .into_owned(),
                    );
                }
            }
        }
        out
    }

    fn send(&self, rcpt: &str, message_id: &str, body: &str) {
        let mut c = Client::ehlo(self.s.smtp);
        assert_eq!(code(&c.cmd("MAIL FROM:<sender@example.org>")), 250);
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(code(&r), 250, "{r}");
        assert_eq!(code(&c.cmd("DATA")), 354);
        let r =
            c.cmd(&format!("Message-ID: <{message_id}>\r\nSubject: {message_id}\r\n\r\n{body}."));
        assert_eq!(code(&r), 250, "{r}");
    }
}

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

/// A private Dovecot (Debian's dovecot-pop3d) serving `maildir` over POP3 on loopback, as
/// uid 65534; UIDL is the Maildir file name (`pop3_uidl_format = %f`), as sluice's.
struct Dovecot {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Dovecot {
    fn start(maildir: &std::path::Path) -> Dovecot {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path();
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = pop3\nlisten = 127.0.0.1\nssl = no\ndisable_plaintext_auth = no\n\
             auth_mechanisms = plain\ndefault_login_user = dovenull\ndefault_internal_user = dovecot\n\
             passdb {{\n driver = static\n args = password=pw\n}}\n\
             userdb {{\n driver = static\n args = uid=65534 gid=65534 home={d}/home mail=maildir:{m}\n}}\n\
             first_valid_uid = 100\npop3_uidl_format = %f\n\
             service pop3-login {{\n inet_listener pop3 {{\n address = 127.0.0.1\n port = {port}\n }}\n\
             inet_listener pop3s {{\n port = 0\n }}\n chroot =\n}}\n\
             service anvil {{\n chroot =\n}}\n",
            d = d.display(),
            m = maildir.display(),
        );
        std::fs::write(d.join("dovecot.conf"), conf).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let child =
            Command::new("dovecot").args(["-F", "-c"]).arg(d.join("dovecot.conf")).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "dovecot did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Dovecot { child, port, _dir: dir }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its children too.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

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
        let dovecot = Dovecot::start(&dv_maildir);
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

const IMAPLIB: &str = r#"
import imaplib, re, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
m = imaplib.IMAP4(host, port)
assert "STARTTLS" in m.capabilities and "IDLE" in m.capabilities, m.capabilities
m.starttls(ssl_context=ctx)
assert "STARTTLS" not in m.capabilities
typ, _ = m.login("alice@example.com", "pw"); assert typ == "OK"
typ, boxes = m.list(); assert typ == "OK" and any(b'INBOX' in b for b in boxes), boxes
typ, data = m.select("INBOX"); assert typ == "OK" and data == [b"3"], data
uidvalidity = int(m.untagged_responses["UIDVALIDITY"][0])
typ, data = m.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
assert typ == "OK" and len(data) == 3, data
assert all(b"\\Recent" in d for d in data), data
sizes = [int(re.search(rb"RFC822.SIZE (\d+)", d).group(1)) for d in data]
uids = [int(re.search(rb"UID (\d+)", d).group(1)) for d in data]
assert uids == sorted(uids) and len(set(uids)) == 3, uids
# Headers by field, without setting \Seen.
typ, data = m.uid("fetch", f"{uids[0]}:{uids[2]}", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
subjects = [d[1] for d in data if isinstance(d, tuple)]
assert subjects == [b"Subject: big\r\n\r\n", b"Subject: two\r\n\r\n", b"Subject: three\r\n\r\n"], subjects
# A partial fetch of the 20 MB message: 100 octets from offset 1,000,000 of its text.
typ, data = m.fetch("1", "(BODY.PEEK[TEXT]<1000000.100>)")
assert data[0][0].endswith(b"BODY[TEXT]<1000000> {100}"), data[0][0]
text = (b"0123456789" * 7 + b"\r\n") * 280000
assert data[0][1] == text[1000000:1000100], data
assert sizes[0] > 20_000_000, sizes
typ, data = m.search(None, "UNSEEN"); assert data == [b"1 2 3"], data
typ, data = m.fetch("2", "(BODY[TEXT])")
assert data[0][1] == b"second\r\n", data
assert b"\\Seen" in data[1] if len(data) > 1 and isinstance(data[1], bytes) else b"\\Seen" in data[0][0], data
typ, data = m.search(None, "SEEN"); assert data == [b"2"], data
typ, data = m.store("3", "+FLAGS", "(\\Flagged \\Deleted)")
assert b"\\Flagged" in data[0] and b"\\Deleted" in data[0], data
typ, data = m.expunge(); assert data == [b"3"], data
typ, data = m.search(None, "ALL"); assert data == [b"1 2"], data
typ, data = m.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")
assert data == [f"INBOX (MESSAGES 2 UIDNEXT {uids[2] + 1} UIDVALIDITY {uidvalidity} UNSEEN 1)".encode()], data
typ, data = m.select("Archive"); assert typ == "NO", data
m.logout()
print(uidvalidity, uids[2])
"#;

/// Python's imaplib over STARTTLS on mail delivered through the SMTP listener: LIST, SELECT,
/// FETCH (flags, sizes, dates, header fields, a partial range of a 20 MB message, the text),
/// \Seen set by BODY[] and not by BODY.PEEK, SEARCH, STORE, EXPUNGE and STATUS. After a restart
/// the UIDVALIDITY is the same and a new message gets a UID above every earlier one.
#[test]
fn imaplib_reads_flags_and_expunges_mail_delivered_over_smtp() {
    let mut t = start("");
    let line = "0123456789".repeat(7);
    let big: String = (0..280_000).map(|_| format!("{line}\r\n")).collect();
    // One at a time, so the Maildir (and UID) order is the sending order.
    for (id, body) in [("big", big.as_str()), ("two", "second\r\n"), ("three", "third\r\n")] {
        t.send("alice@example.com", id, body);
        t.s.wait_queue(60, |q| q.is_empty());
    }
    let out = python(IMAPLIB, &["127.0.0.1", &t.imap.port().to_string()]);
    let (validity, last_uid) = out.trim().split_once(' ').unwrap();
    let last_uid: u32 = last_uid.parse().unwrap();
    t.s.terminate();
    t.s.spawn();
    let imap = t.s.listener("imap");
    t.send("alice@example.com", "four", "fourth\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let check = format!(
        "import imaplib, sys\nm = imaplib.IMAP4('127.0.0.1', {})\nm.login('alice@example.com', 'pw')\n\
         m.select('INBOX')\nprint(m.untagged_responses['UIDVALIDITY'][0].decode(), \
         m.uid('search', None, 'ALL')[1][0].decode())",
        imap.port()
    );
    let after = python(&check, &[]);
    let (v2, uids) = after.trim().split_once(' ').unwrap();
    assert_eq!(v2, validity, "UIDVALIDITY kept across a restart");
    let uids: Vec<u32> = uids.split(' ').map(|u| u.parse().unwrap()).collect();
    assert_eq!(uids.len(), 3);
    assert!(*uids.last().unwrap() > last_uid, "{uids:?} after {last_uid}: a UID was reused");
}

/// Raw IMAP lines: returns everything up to and including the line starting with `until`.
fn imap_until(r: &mut impl std::io::BufRead, until: &str) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed; got {all}");
        all.push_str(&line);
        if line.starts_with(until) {
            return all;
        }
    }
}

/// Two sessions on one mailbox see each other's flag changes and expunges (at NOOP), and an
/// IDLE session hears of a delivery made over SMTP.
#[test]
fn sessions_see_each_others_changes_and_idle_sees_new_mail() {
    use std::io::BufReader;
    let t = start("");
    t.send("bob@example.com", "s1", "one\r\n");
    t.send("bob@example.com", "s2", "two\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let open = || {
        let s = std::net::TcpStream::connect(t.imap).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        imap_until(&mut r, "* OK");
        let mut w = s;
        w.write_all(b"l LOGIN bob@example.com pw\r\ns SELECT INBOX\r\n").unwrap();
        imap_until(&mut r, "l OK");
        let sel = imap_until(&mut r, "s OK");
        assert!(sel.contains("* 2 EXISTS"), "{sel}");
        (r, w)
    };
    let (mut ra, mut wa) = open();
    let (mut rb, mut wb) = open();
    wb.write_all(
        b"b1 STORE 1 +FLAGS (\\Flagged)\r\nb2 STORE 2 +FLAGS (\\Deleted)\r\nb3 EXPUNGE\r\n",
    )
    .unwrap();
    let b = imap_until(&mut rb, "b3 OK");
    assert!(b.contains("* 2 EXPUNGE"), "{b}");
    wa.write_all(b"a1 NOOP\r\n").unwrap();
    let a = imap_until(&mut ra, "a1 OK");
    assert!(a.contains("* 2 EXPUNGE"), "A sees B's expunge: {a}");
    assert!(a.contains("* 1 FETCH (FLAGS (\\Flagged))"), "A sees B's flag: {a}");
    // IDLE, then a delivery over SMTP.
    wa.write_all(b"a2 IDLE\r\n").unwrap();
    imap_until(&mut ra, "+ ");
    t.send("bob@example.com", "s3", "three\r\n");
    let news = imap_until(&mut ra, "* 2 EXISTS");
    assert!(news.contains("* 2 EXISTS"), "{news}");
    wa.write_all(b"DONE\r\n").unwrap();
    imap_until(&mut ra, "a2 OK");
    wa.write_all(b"a3 LOGOUT\r\n").unwrap();
    let bye = imap_until(&mut ra, "a3 OK");
    assert!(bye.contains("* BYE"), "{bye}");
}

/// curl lists the mailboxes and fetches a message by UID over imap:// (STARTTLS required).
#[test]
fn curl_lists_and_fetches_over_imap() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let t = start("");
    t.send("bob@example.com", "ci1", "curl body\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let base = format!("imap://127.0.0.1:{}/", t.imap.port());
    let curl = |url: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--ssl-reqd", "-k", "-u", "bob@example.com:pw"])
            .arg(url)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let list = curl(&base);
    assert!(list.contains("INBOX"), "{list}");
    let msg = curl(&format!("{base}INBOX;UID=1"));
    assert!(msg.contains("Message-ID: <ci1>") && msg.contains("curl body"), "{msg}");
}

/// Hostile input on the IMAP port: random lines, literals and binary never stop the server;
/// every line gets an answer and the session still works afterwards.
#[test]
fn random_input_to_imap_gets_answers_and_never_kills_the_server() {
    use std::io::BufReader;
    let t = start("");
    let mut next = {
        let mut x: u64 = 0x1DEA_5EED;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    };
    let words = [
        "a",
        "LOGIN",
        "SELECT",
        "FETCH",
        "1:*",
        "(BODY[]",
        "UID",
        "{5}",
        "{3+}",
        "\"x",
        ")",
        "*",
        "STORE",
        "+FLAGS",
        "\\Seen",
        "SEARCH",
        "OR",
        "NOT",
        "IDLE",
        "AUTHENTICATE",
        "PLAIN",
        "LIST",
        "\"\"",
        "%",
    ];
    for round in 0..20 {
        let s = std::net::TcpStream::connect(t.imap).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        imap_until(&mut r, "* OK");
        w.write_all(b"l LOGIN alice@example.com pw\r\n").unwrap();
        imap_until(&mut r, "l OK");
        for _ in 0..30 {
            let mut line = Vec::new();
            for _ in 0..(next() % 6) {
                if next() % 7 == 0 {
                    line.extend(
                        (0..next() % 5)
                            .map(|_| (next() % 256) as u8)
                            .filter(|b| *b != b'\n' && *b != b'\r'),
                    );
                } else {
                    line.extend_from_slice(
                        words[(next() % words.len() as u64) as usize].as_bytes(),
                    );
                }
                line.push(b' ');
            }
            line.extend_from_slice(b"\r\n");
            if w.write_all(&line).is_err() {
                break;
            }
        }
        // Whatever state that left (a literal half sent, IDLE), the server answers a NOOP or
        // closes the connection cleanly; it never hangs or dies.
        let _ = w.write_all(b"\r\n\r\nDONE\r\nz NOOP\r\n");
        let mut all = String::new();
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            all.push_str(&line);
            if line.starts_with("z OK") || line.starts_with("* BYE") {
                break;
            }
            line.clear();
        }
        assert!(
            all.contains("z OK") || all.contains("* BYE") || all.contains("BAD"),
            "round {round}: {all}"
        );
    }
    // The server is alive and serves a fresh session.
    let out = python(
        &format!(
            "import imaplib\nm = imaplib.IMAP4('127.0.0.1', {})\nm.login('alice@example.com', 'pw')\nprint(m.select('INBOX')[0])",
            t.imap.port()
        ),
        &[],
    );
    assert_eq!(out.trim(), "OK");
}
