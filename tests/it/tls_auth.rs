//! TLS and AUTH on the listeners (issue #4), with the clients people use: swaks, Python's
//! smtplib, openssl s_client, and a raw rustls client for what those cannot do (STARTTLS
//! injection, comparing certificates across a SIGHUP).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Python preamble: smtplib and an SSL context that accepts the test's self-signed certificate.
const PY_TLS: &str = "import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
";

struct Setup {
    s: Sluice,
    _dir: tempfile::TempDir,
    tls_dir: std::path::PathBuf,
}

/// sluice with smtp (STARTTLS), submission and submissions listeners, one user "app" with
/// password "s3cret" who may send as @example.com, no relay networks, delivery held.
fn start(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    self_signed(&tls_dir, "mail.sluice.test");
    let users = dir.path().join("users.toml");
    add_user(&users, "app", "s3cret", &["@example.com"]);
    let cfg = format!(
        "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n\
         [auth]\nusers_file = \"{1}\"\nfailure_delay = \"10ms\"\nmax_failures_per_ip = 5\n{extra}\n\
         [relay]\nnetworks = []\n[delivery]\nenabled = false\n\
         [[listener]]\nmode = \"submission\"\naddress = \"127.0.0.1:0\"\n\
         [[listener]]\nmode = \"submissions\"\naddress = \"127.0.0.1:0\"\n",
        tls_dir.display(),
        users.display()
    );
    Setup { s: Sluice::start(&cfg), _dir: dir, tls_dir }
}

fn need_tools() -> bool {
    require_tool("swaks", "apt-get install swaks libio-socket-ssl-perl")
        && require_tool("openssl", "apt-get install openssl")
}

fn swaks(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--server", &addr.ip().to_string(), "--port", &addr.port().to_string()])
        .args(["--from", "app@example.com", "--to", "someone@elsewhere.test"])
        .args(["--timeout", "20"])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn swaks_starttls_with_auth_plain_and_login() {
    if !need_tools() {
        return;
    }
    let t = start("");
    let sub = t.s.listener("submission");
    for mech in ["PLAIN", "LOGIN"] {
        let (ok, text) = swaks(
            sub,
            &["--tls", "--auth", mech, "--auth-user", "app", "--auth-password", "s3cret"],
        );
        assert!(ok, "{mech}: {text}");
        assert!(text.contains("235 2.7.0"), "{text}");
    }
    // Wrong password: 535 5.7.8, nothing queued for it.
    let (ok, text) =
        swaks(sub, &["--tls", "--auth", "PLAIN", "--auth-user", "app", "--auth-password", "nope"]);
    assert!(!ok && text.contains("535 5.7.8"), "{text}");
    // The smtp listener offers STARTTLS too and relays for the authenticated user.
    let (ok, text) = swaks(
        t.s.smtp,
        &["--tls", "--auth", "PLAIN", "--auth-user", "app", "--auth-password", "s3cret"],
    );
    assert!(ok, "{text}");
    // Without AUTH the smtp listener does not relay.
    let (ok, text) = swaks(t.s.smtp, &["--tls"]);
    assert!(!ok && text.contains("554 5.7.1"), "{text}");
    assert_eq!(t.s.queue_list().len(), 3);
    let log = t.s.log();
    assert!(!log.contains("s3cret") && !log.contains("nope"), "passwords never logged");
}

#[test]
fn submission_refuses_auth_and_mail_before_tls_and_auth() {
    let t = start("");
    let mut c = Client::ehlo(t.s.listener("submission"));
    let r = c.cmd("AUTH PLAIN AGFwcABzM2NyZXQ=");
    assert!(r.starts_with("530 5.7.0"), "{r}");
    let r = c.cmd("MAIL FROM:<app@example.com>");
    assert!(r.starts_with("530 5.7.0"), "{r}");
}

#[test]
fn smtplib_implicit_tls_and_starttls_and_sender_ownership() {
    let t = start("");
    let out = python(
        &(PY_TLS.to_string()
            + r#"
host, subs, sub = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
msg = "From: app@example.com\r\nTo: x@elsewhere.test\r\nSubject: t\r\n\r\nhello\r\n"
with smtplib.SMTP_SSL(host, subs, context=ctx, timeout=20) as s:
    print("tls-version", s.sock.version())
    s.login("app", "s3cret")
    s.sendmail("app@example.com", ["x@elsewhere.test"], msg)
with smtplib.SMTP(host, sub, timeout=20) as s:
    s.starttls(context=ctx)
    s.login("app", "s3cret")
    try:
        s.sendmail("intruder@other.test", ["x@elsewhere.test"], msg)
        print("sender accepted")
    except smtplib.SMTPSenderRefused as e:
        print("sender refused", e.smtp_code, e.smtp_error.decode())
"#),
        &[
            "127.0.0.1",
            &t.s.listener("submissions").port().to_string(),
            &t.s.listener("submission").port().to_string(),
        ],
    );
    assert!(out.contains("tls-version TLSv1.3"), "{out}");
    assert!(out.contains("sender refused 553 5.7.1"), "{out}");
    let q = t.s.queue_list();
    assert_eq!(q.len(), 1, "{q:?}");
}

#[test]
fn openssl_sees_tls_1_2_and_1_3_only() {
    if !need_tools() {
        return;
    }
    let t = start("");
    let sub = t.s.listener("submissions").to_string();
    let smtp = t.s.smtp.to_string();
    let probe = |addr: &str, starttls: bool, version: &str| -> bool {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", addr, version, "-brief"]);
        if starttls {
            cmd.args(["-starttls", "smtp"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"QUIT\r\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        text.contains("Protocol version")
    };
    for (addr, starttls) in [(sub.as_str(), false), (smtp.as_str(), true)] {
        assert!(probe(addr, starttls, "-tls1_3"), "TLS 1.3 on {addr}");
        assert!(probe(addr, starttls, "-tls1_2"), "TLS 1.2 on {addr}");
        assert!(!probe(addr, starttls, "-tls1_1"), "no TLS 1.1 on {addr}");
        assert!(!probe(addr, starttls, "-tls1"), "no TLS 1.0 on {addr}");
    }
}

/// A raw TLS client over a connection that has done STARTTLS.
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects, EHLO, then sends `STARTTLS` plus `after` in one write, reads the 220 and
    /// completes the handshake.
    fn starttls(addr: SocketAddr, after: &str) -> TlsClient {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(tcp.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        tcp.write_all(b"EHLO c\r\n").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
        tcp.write_all(format!("STARTTLS\r\n{after}").as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("220 "), "{line}");
        assert!(r.buffer().is_empty(), "nothing after 220 before TLS");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn =
            rustls::ClientConnection::new(sluice::tls::opportunistic_client(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        TlsClient { tls }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.tls.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.tls.flush().unwrap();
        let mut out = String::new();
        let mut byte = [0u8; 1];
        loop {
            self.tls.read_exact(&mut byte).unwrap();
            out.push(byte[0] as char);
            if out.ends_with("\r\n") {
                let last = out.trim_end().rsplit("\r\n").next().unwrap_or("");
                if last.as_bytes().get(3) == Some(&b' ') {
                    return out;
                }
            }
        }
    }

    fn peer_cert(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

/// CVE-2011-0411 class: commands pipelined after STARTTLS in the same packet are discarded.
#[test]
fn starttls_command_injection_is_not_executed() {
    let t = start("");
    let mut c = TlsClient::starttls(t.s.smtp, "MAIL FROM:<evil@x.test>\r\nRCPT TO:<a@b.test>\r\n");
    // If the injected MAIL had run, its reply (503: no EHLO) would come before this NOOP's.
    let r = c.cmd("NOOP");
    assert!(r.starts_with("250 "), "{r}");
    assert!(!r.contains("503") && r.lines().count() == 1, "only the NOOP reply: {r:?}");
    let r = c.cmd("MAIL FROM:<app@example.com>");
    assert!(r.starts_with("503 "), "EHLO is needed again after TLS: {r}");
}

/// 20 wrong passwords from one IP lock that IP out (454 4.7.0); the right password from another
/// loopback address still works.
#[test]
fn brute_force_locks_the_ip_out_not_the_user() {
    let t = start("");
    let out = python(
        &(PY_TLS.to_string()
            + r#"
port = int(sys.argv[1])
codes = []
for i in range(20):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.starttls(context=ctx)
        s.ehlo()
        # One mechanism per attempt: login() would try PLAIN and then LOGIN (two failures).
        s.user, s.password = "app", "guess%d" % i
        try:
            s.auth("PLAIN", s.auth_plain)
            codes.append(235)
        except smtplib.SMTPAuthenticationError as e:
            codes.append(e.smtp_code)
print("codes", codes)
with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=("127.0.0.2", 0)) as s:
    s.starttls(context=ctx)
    s.ehlo()
    print("other-ip", s.login("app", "s3cret")[0])
"#),
        &[&t.s.listener("submission").port().to_string()],
    );
    let codes = out.lines().find(|l| l.starts_with("codes")).unwrap();
    assert!(codes.starts_with("codes [535, 535, 535, 535, 535, 454"), "{out}");
    assert!(codes.trim_end().ends_with("454]"), "{out}");
    assert!(out.contains("other-ip 235"), "{out}");
    let (_, m) = t.s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_smtp_auth_total{result=\"locked_out\"} 15"), "{m}");
}

/// 60 simultaneous wrong AUTHs from one IP: attempts are reserved before the password check, so
/// at most `max_failures_per_ip` (5) checks run (counted by `sluice_auth_verifications_total`)
/// and the rest get 454. A login with the attacker's own account does not reset the count.
#[test]
fn concurrent_guesses_cannot_race_the_lockout_and_a_success_does_not_reset_it() {
    let t = start("");
    let out = python(
        &(PY_TLS.to_string()
            + r#"
import threading
port = int(sys.argv[1])
barrier = threading.Barrier(60)
codes = []
def guess(i):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.starttls(context=ctx)
        s.ehlo()
        s.user, s.password = "app", "guess%d" % i
        barrier.wait()
        try:
            s.auth("PLAIN", s.auth_plain)
            codes.append(235)
        except smtplib.SMTPAuthenticationError as e:
            codes.append(e.smtp_code)
threads = [threading.Thread(target=guess, args=(i,)) for i in range(60)]
for t in threads: t.start()
for t in threads: t.join()
print("codes", sorted(codes))
"#),
        &[&t.s.listener("submission").port().to_string()],
    );
    let (_, m) = t.s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    let checks: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("sluice_auth_verifications_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(checks <= 5, "{checks} password checks for 60 simultaneous guesses: {out}");
    assert_eq!(out.matches("454").count(), 60 - checks as usize, "{out}");

    // From another IP: 4 failures, a success with the guesser's own account, one more failure;
    // the next attempt is refused (the success did not reset the IP's count).
    let t = start("");
    let out = python(
        &(PY_TLS.to_string()
            + r#"
port = int(sys.argv[1])
def attempt(user, pw):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.starttls(context=ctx)
        s.ehlo()
        s.user, s.password = user, pw
        try:
            return s.auth("PLAIN", s.auth_plain)[0]
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
seq = [attempt("app", "wrong") for _ in range(4)]
seq.append(attempt("app", "s3cret"))
seq.append(attempt("app", "wrong"))
seq.append(attempt("app", "wrong"))
print("seq", seq)
"#),
        &[&t.s.listener("submission").port().to_string()],
    );
    assert!(out.contains("seq [535, 535, 535, 535, 235, 535, 454]"), "{out}");
}

/// SIGHUP with a new certificate: new sessions get it, the open session goes on.
#[test]
fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let t = start("");
    let mut old = TlsClient::starttls(t.s.smtp, "");
    let before = old.peer_cert();
    self_signed(&t.tls_dir, "renewed.sluice.test");
    let rc = Command::new("kill").args(["-HUP", &t.s.pid().to_string()]).status().unwrap();
    assert!(rc.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let c = TlsClient::starttls(t.s.smtp, "");
        if c.peer_cert() != before || std::time::Instant::now() > deadline {
            break c.peer_cert();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(before, after, "new sessions see the new certificate");
    assert!(old.cmd("EHLO c").starts_with("250"), "the old session is alive");
    assert!(t.s.log().contains("TLS certificate reloaded"));
}
