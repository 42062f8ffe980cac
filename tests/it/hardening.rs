//! Issue #22, tried as an attacker would, over real sockets: login names of any length, case
//! and Unicode twins of accounts, mailbox logins outside the local domains.

use std::io::Write;

use crate::common::mailboxes::*;
use crate::common::*;

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// 300 failed IMAP logins with 60 KiB names (LITERAL+, under the 64 KiB limit before login):
/// the log stays small, no line carries a whole name, and memory does not keep the names
/// (each failure kept its whole name in the lockout's table and in the log: 48 MiB of log in
/// 0.3 s, 100 MiB of memory for good).
#[test]
fn long_login_names_are_not_kept_or_logged_whole() {
    let t = start("");
    let before_log = t.s.log().len();
    let before_rss = rss_kib(t.s.pid());
    let name = "n".repeat(60 << 10);
    let mut refused = 0;
    for round in 0..300 {
        let (mut r, mut w) = imap_connect(t.imap);
        let cmd = format!("l{round} LOGIN {{{}+}}\r\n{name} pw\r\n", name.len());
        w.write_all(cmd.as_bytes()).unwrap();
        let answer = imap_until(&mut r, &format!("l{round} "));
        assert!(answer.contains(&format!("l{round} NO")), "{answer}");
        refused += 1;
    }
    assert_eq!(refused, 300);
    let log = t.s.log();
    let grown = log.len() - before_log;
    assert!(grown < 32 << 10, "the log grew by {grown} octets for 300 failed logins");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a log line of {longest} octets");
    let rss_growth = rss_kib(t.s.pid()).saturating_sub(before_rss);
    assert!(rss_growth < 32 << 10, "RSS grew by {rss_growth} KiB");
    // The client is locked out by now; its refusals are counted, not all logged.
    assert!(log.contains("suppressed"), "{}", &log[before_log..]);
    // This address is locked out now: even a right password gets the lockout answer.
    let (mut r, mut w) = imap_connect(t.imap);
    w.write_all(b"x LOGIN alice@example.com pw\r\n").unwrap();
    let answer = imap_until(&mut r, "x ");
    assert!(answer.starts_with("x NO [UNAVAILABLE]"), "{answer}");
}

/// Account names that differ only in case, quoting or a Kelvin sign are one account: `user
/// add` refuses the twin, a login with any spelling opens the one mailbox, and an account of
/// a domain that is not local gets no mailbox (it could APPEND up to the quota).
#[test]
fn one_account_per_normal_form_and_mailboxes_only_in_local_domains() {
    let t = start_with_users("", &["kate@example.com", "app@elsewhere.test"]);
    let users = t._dir.path().join("users.toml");
    let cfg = users.with_file_name("user-cli.toml");
    for twin in ["Kate@example.com", "\"kate\"@example.com", "\u{212a}ate@example.com"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["user", "add", twin, "--config"])
            .arg(&cfg)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"other\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{twin} was added");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("already exists"), "{twin}: {err}");
    }
    let script = r#"
import imaplib, sys
port = int(sys.argv[1])
m = imaplib.IMAP4("127.0.0.1", port)
m.login("KATE@Example.COM", "pw"); m.append("INBOX", None, None, b"Subject: x\r\n\r\nx\r\n"); m.logout()
m = imaplib.IMAP4("127.0.0.1", port)
m.authenticate("PLAIN", lambda _: b"\0" + "\u212aate@example.com".encode() + b"\0pw")
typ, data = m.select("INBOX"); print(data[0].decode())
m.logout()
m = imaplib.IMAP4("127.0.0.1", port)
try:
    m.login("app@elsewhere.test", "pw"); print("logged in")
except imaplib.IMAP4.error as e:
    print(e)
"#;
    let out = python(script, &[&t.imap.port().to_string()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "both spellings open one mailbox: {out}");
    assert!(lines[1].contains("AUTHORIZATIONFAILED"), "{out}");
    assert!(!t.s.data_dir.join("mailboxes/elsewhere.test").exists());
}

/// Reads until the peer closes; Err if it is still open after `within` (a bound on a hang,
/// not a pace: the close is the event waited for).
fn closed_within(s: &mut std::net::TcpStream, within: std::time::Duration) -> Result<(), String> {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(format!("still open: {e}")),
        }
    }
}

/// Issue #22: the admin and unsubscribe HTTP listeners close connections that send no header
/// (or no TLS handshake) in time, close a keep-alive connection left idle, and refuse
/// connections past their caps at accept, while SMTP keeps greeting. Before, idle connections
/// held descriptors until `accept` failed everywhere.
#[test]
fn http_listeners_have_timeouts_and_caps_and_smtp_keeps_greeting() {
    use std::net::TcpStream;
    use std::time::Duration;
    let certs = tempfile::tempdir().unwrap();
    self_signed(certs.path(), "localhost");
    let s = Sluice::start(&format!(
        "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n\
         [unsubscribe]\nenabled = true\naddress = \"127.0.0.1:0\"\nurl = \"https://u.test/unsubscribe\"\n\
         [http]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\ntls_handshake_timeout = \"1s\"\n\
         max_connections = 6\nmax_connections_per_ip = 4\n",
        certs.path().display()
    ));
    let unsub = s.listener("unsubscribe");
    // Four idle connections: the client's cap. A fifth is closed at once.
    let mut idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(s.admin).unwrap()).collect();
    let mut fifth = TcpStream::connect(s.admin).unwrap();
    closed_within(&mut fifth, Duration::from_millis(500)).expect("over the per-client cap");
    // SMTP greets meanwhile.
    let mut c = Client::connect(s.smtp);
    assert!(c.reply().unwrap().starts_with("220"));
    // The idle ones are closed by the header deadline (1 s).
    for conn in &mut idle {
        closed_within(conn, Duration::from_secs(10)).expect("closed by the header deadline");
    }
    // A keep-alive connection after one request: closed when idle (2 s).
    let mut kept = TcpStream::connect(s.admin).unwrap();
    kept.write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", s.admin).as_bytes())
        .unwrap();
    let mut first = [0u8; 12];
    std::io::Read::read_exact(&mut kept, &mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    closed_within(&mut kept, Duration::from_secs(10)).expect("closed when idle");
    // The unsubscribe endpoint: no TLS handshake, closed after 1 s.
    let mut silent = TcpStream::connect(unsub).unwrap();
    closed_within(&mut silent, Duration::from_secs(10)).expect("closed by the handshake deadline");
    // Slots are given back: the admin API answers again.
    let (status, _) = s.http_get("/health");
    assert_eq!(status, 200);
    let (_, metrics) = s.http_get("/metrics");
    let text = String::from_utf8(metrics).unwrap();
    assert!(text.contains("sluice_http_refused_total{listener=\"admin\"} 1"), "{text}");
    s.assert_no_panic();
}

/// Issue #22: Authentication-Results fields claiming our authserv-id are removed on every
/// intake path (port 25, submission with STARTTLS, submissions with implicit TLS, HTTP
/// injection built and raw: every listener mode that takes mail), whichever way RFC 8601
/// lets a field spell it: a comment before or glued to the id, a quoted id, a trailing dot,
/// another case. Before, only smtp listeners stripped them, and only the first word.
#[test]
fn forged_authentication_results_are_removed_on_every_intake_path() {
    let t = start(
        "[[listener]]\nmode = \"submission\"\naddress = \"127.0.0.1:0\"\n\
         [[listener]]\nmode = \"submissions\"\naddress = \"127.0.0.1:0\"\n",
    );
    let forms = [
        "(c) sluice.test; dkim=pass header.d=bank.example",
        "(glued)sluice.test; dkim=pass header.d=bank.example",
        "sluice.test(glued); dkim=pass header.d=bank.example",
        "\"sluice.test\"; dkim=pass header.d=bank.example",
        "sluice.test.; dkim=pass header.d=bank.example",
        "SLUICE.TEST 1; dkim=pass header.d=bank.example",
    ];
    let forged: String = forms.iter().map(|f| format!("Authentication-Results: {f}\r\n")).collect();
    let script = r#"
import smtplib, ssl, sys
smtp, sub, subs, forged = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
msg = forged + "From: boss@example.com\r\nSubject: {}\r\nMessage-ID: <{}@t>\r\n\r\nx\r\n"
with smtplib.SMTP("127.0.0.1", smtp) as s:
    s.sendmail("a@example.org", ["alice@example.com"], msg.format("port25", "port25"))
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", sub) as s:
    s.starttls(context=ctx); s.login("bob@example.com", "pw")
    s.sendmail("bob@example.com", ["alice@example.com"], msg.format("submission", "submission"))
with smtplib.SMTP_SSL("127.0.0.1", subs, context=ctx) as s:
    s.login("bob@example.com", "pw")
    s.sendmail("bob@example.com", ["alice@example.com"], msg.format("submissions", "submissions"))
print("sent")
"#;
    let sub = t.s.listener("submission").port().to_string();
    let subs = t.s.listener("submissions").port().to_string();
    let out = python(script, &[&t.s.smtp.port().to_string(), &sub, &subs, &forged]);
    assert_eq!(out.trim(), "sent");
    let token = t.s.inject_token("forger");
    let headers: serde_json::Map<String, serde_json::Value> = forms
        .iter()
        .take(1)
        .map(|f| ("Authentication-Results".to_string(), serde_json::Value::from(*f)))
        .collect();
    let req = serde_json::json!({
        "envelope_sender": "news@example.com",
        "content": {"from": {"email": "news@example.com"}, "subject": "inject",
                    "headers": headers, "text_body": "x"},
        "recipients": [{"email": "alice@example.com"}],
    });
    let resp = t.s.agent_post_json("/api/inject/v1", &token, &req);
    assert_eq!(resp.0, 200, "{}", resp.1);
    let raw = format!("{forged}From: news@example.com\r\nSubject: raw\r\n\r\nx\r\n");
    let req = serde_json::json!({
        "envelope_sender": "news@example.com",
        "content": raw,
        "recipients": [{"email": "alice@example.com"}],
    });
    let resp = t.s.agent_post_json("/api/inject/v1", &token, &req);
    assert_eq!(resp.0, 200, "{}", resp.1);
    t.s.wait_queue(30, |q| q.is_empty());
    let mailbox = t.mailbox("alice");
    assert_eq!(mailbox.len(), 5, "{mailbox:?}");
    for m in &mailbox {
        assert!(!m.contains("bank.example"), "a forged result survived:\n{m}");
    }
}

/// Issue #22: SEARCH with 20,000 `NOT TEXT` keys on a 1 MB message took 15 s of CPU (each key
/// parsed and lowered the message again); a 400 KB LIST pattern over many folders took 10 s;
/// folders were unlimited. Now: at most 1,000 keys (each message parsed once per SEARCH), a
/// pattern of at most 1 KiB, and `[local] max_folders`.
#[test]
fn search_list_and_folder_amplification_is_capped() {
    let t = start("max_folders = 10\n");
    let line = "abcdefghij".repeat(9);
    let big: String = (0..3_000).map(|_| format!("{line}\r\n")).collect();
    t.send("alice@example.com", "big", &big);
    t.s.wait_queue(30, |q| q.is_empty());
    let (mut r, mut w) = imap_connect(t.imap);
    w.write_all(b"l LOGIN alice@example.com pw\r\ns SELECT INBOX\r\n").unwrap();
    imap_until(&mut r, "l OK");
    imap_until(&mut r, "s OK");
    let many = "NOT TEXT zz ".repeat(20_000);
    w.write_all(format!("a SEARCH {}\r\n", many.trim_end()).as_bytes()).unwrap();
    let answer = imap_until(&mut r, "a ");
    assert!(answer.starts_with("a NO [LIMIT]"), "{answer}");
    // 300 keys are answered: the message is read and parsed once for all of them.
    let some = "NOT TEXT zz ".repeat(300);
    w.write_all(format!("b SEARCH {}\r\n", some.trim_end()).as_bytes()).unwrap();
    let answer = imap_until(&mut r, "b ");
    assert!(answer.contains("* SEARCH 1\r\n") && answer.contains("b OK"), "{answer}");
    let pattern = "*%".repeat(200_000);
    w.write_all(format!("c LIST \"\" \"{pattern}\"\r\n").as_bytes()).unwrap();
    let answer = imap_until(&mut r, "c ");
    assert!(answer.starts_with("c BAD"), "{answer}");
    // Four default folders exist: six more, then the limit.
    for i in 0..6 {
        w.write_all(format!("f{i} CREATE extra{i}\r\n").as_bytes()).unwrap();
        let answer = imap_until(&mut r, &format!("f{i} "));
        assert!(answer.starts_with(&format!("f{i} OK")), "{answer}");
    }
    w.write_all(b"g CREATE one-too-many\r\n").unwrap();
    let answer = imap_until(&mut r, "g ");
    assert!(answer.starts_with("g NO [LIMIT]"), "{answer}");
}

/// Issue #22: with the resolver dead (a loopback address that takes DNS queries and never
/// answers), verifying a message for a local mailbox took 30 s (SPF and DMARC lookups waited
/// out their timeouts one after another), and clients that give up at 30 s sent it again.
/// Now all of a message's lookups share `[verify] timeout`; past it the results are
/// temperror and the message is accepted.
#[test]
fn a_dead_resolver_costs_the_verification_deadline_not_the_lookup_timeouts() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    // TCP on the same port too, accepting and never answering.
    let _tcp = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
    let t = start(&format!(
        "[dns]\nnameservers = [\"127.0.0.1:{port}\"]\n[verify]\ntimeout = \"1s\"\n"
    ));
    let started = std::time::Instant::now();
    t.send_raw(
        "alice@example.com",
        "a@pass.example",
        "From: a@pass.example\r\nSubject: dead dns\r\n\r\nx\r\n",
    );
    let took = started.elapsed();
    // The deadline is 1 s; the old code needed at least 20 s here. The bound only catches a
    // hang, it does not measure speed.
    assert!(took < std::time::Duration::from_secs(8), "end of DATA answered after {took:?}");
    t.s.wait_queue(30, |q| q.is_empty());
    let mailbox = t.mailbox("alice");
    assert_eq!(mailbox.len(), 1);
    assert!(mailbox[0].contains("spf=temperror"), "{}", mailbox[0]);
    drop(udp);
}
