//! DKIM signing end to end: keys made by `sluice dkim keygen`, mail relayed through sluice to a
//! loopback sink, and what the sink received verified by dkimpy (a verifier nobody here wrote),
//! with the key records served from the test's own DNS.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::dns::TestDns;
use crate::common::sink::{Behavior, Sink};
use crate::common::*;

/// Makes a key with the CLI; returns (key file, TXT value as printed, joined).
fn keygen(dir: &Path, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let out_file = dir.join(format!("{selector}.pem"));
    let out = Command::new(BIN)
        .args(["dkim", "keygen", "--domain", "example.com", "--selector", selector])
        .args(["--algorithm", algorithm, "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{selector}._domainkey.example.com. IN TXT ")))
        .unwrap_or_else(|| panic!("no TXT line in:\n{text}"));
    // Zone-file strings: "..." "..." joined (RFC 6376 3.6.2.2).
    let value: String = line.split('"').skip(1).step_by(2).collect();
    assert!(value.starts_with("v=DKIM1; k="), "{value}");
    (out_file, value)
}

/// Verifies every DKIM-Signature of `msg` with dkimpy, keys from `records` (name -> TXT).
/// Returns one "d/s/a/result" per signature, top to bottom.
fn dkimpy(msg: &[u8], records: &[(String, String)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.eml");
    std::fs::write(&m, msg).unwrap();
    let r = dir.path().join("dns.json");
    let map: serde_json::Map<String, serde_json::Value> =
        records.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    std::fs::write(&r, serde_json::Value::Object(map).to_string()).unwrap();
    let out = python(
        r#"
import sys, json, re, dkim
records = json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip(".").lower(), "").encode()
msg = open(sys.argv[1], "rb").read()
head = msg.split(b"\r\n\r\n", 1)[0]
count = len(re.findall(rb"(?im)^dkim-signature:", head))
for i in range(count):
    d = dkim.DKIM(msg)
    try:
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
    except dkim.ValidationError as e:
        print("error:", e, file=sys.stderr)
        ok = False
    tags = dict(d.signature_fields) if d.signature_fields else {}
    print("%s/%s/%s/%s" % (tags.get(b"d", b"").decode(), tags.get(b"s", b"").decode(),
                           tags.get(b"a", b"").decode(), "pass" if ok else "fail"))
"#,
        &[m.to_str().unwrap(), r.to_str().unwrap()],
    );
    out.lines().map(str::to_string).collect()
}

struct Setup {
    keys: tempfile::TempDir,
    _dns: TestDns,
    records: Vec<(String, String)>,
    sink: Sink,
    sluice: Sluice,
}

/// sluice with an Ed25519 and an RSA key for example.com, relaying everything to a sink.
fn setup(sink: Behavior, extra: &str) -> Setup {
    setup_with_retry(sink, extra, "1s")
}

fn setup_with_retry(sink: Behavior, extra: &str, retry: &str) -> Setup {
    let keys = tempfile::tempdir().unwrap();
    let (ed_key, ed_txt) = keygen(keys.path(), "ed", "ed25519");
    let (rsa_key, rsa_txt) = keygen(keys.path(), "rsa", "rsa");
    let dns = TestDns::start();
    let records = vec![
        ("ed._domainkey.example.com".to_string(), ed_txt),
        ("rsa._domainkey.example.com".to_string(), rsa_txt),
    ];
    for (name, value) in &records {
        dns.txt(name, value);
    }
    let sink = Sink::start(sink);
    let config = format!(
        "{}\n[[dkim]]\ndomain = \"example.com\"\nselector = \"ed\"\nalgorithm = \"ed25519-sha256\"\nkey = \"{}\"\n\
         [[dkim]]\ndomain = \"example.com\"\nselector = \"rsa\"\nalgorithm = \"rsa-sha256\"\nkey = \"{}\"\n\
         [[route]]\ndomains = [\"*\"]\nsmarthost = \"{}\"\ntls = \"disabled\"\n\
         [queue]\nretry = [\"{retry}\"]\n[delivery]\nscan_interval = \"200ms\"\n{extra}",
        dns.config(),
        ed_key.display(),
        rsa_key.display(),
        sink.addr
    );
    let sluice = Sluice::start(&config);
    Setup { keys, _dns: dns, records, sink, sluice }
}

const BOTH_PASS: [&str; 2] =
    ["example.com/ed/ed25519-sha256/pass", "example.com/rsa/rsa-sha256/pass"];

/// Sends `message` (headers and body, CRLF lines, without the final ".") over DATA.
fn send_data(s: &Sluice, message: &str) {
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<b@example.org>")), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    let r = c.cmd(&format!("{message}."));
    assert_eq!(code(&r), 250, "{r}");
}

#[test]
fn relayed_mail_verifies_in_dkimpy_for_awkward_bodies() {
    if !require_tool("python3", "apt-get install python3; pip install dkimpy pynacl") {
        return;
    }
    let t = setup(Behavior { pipelining: true, ..Default::default() }, "");
    let head = "From: Alice <alice@example.com>\r\nTo: b@example.org\r\nSubject: test\r\n\
                Date: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{n}@example.com>\r\n";
    // Over 256 KiB: signed on the blocking pool even with Ed25519.
    let large =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n".repeat(4000);
    let bodies = [
        ("plain", "Hello.\r\n"),
        // The cases of upstream mail-auth #62: blank and whitespace-only lines at the end.
        ("blank lines at the end", "Hello.\r\n\r\n\r\n\r\n"),
        ("whitespace-only lines at the end", "Hello.\r\n \r\n\t\r\n  \t \r\n"),
        ("trailing space in lines", "Hello.   \r\nsecond\t\t\r\n"),
        ("empty body", ""),
        ("8-bit", "Gr\u{fc}\u{df}e, \u{e7}a va? \u{1f600}\r\n"),
        ("dot-stuffed lines", "..leading dot\r\n.\u{20}\r\n"),
        ("300 KB body", large.as_str()),
        ("long folded header", "x\r\n"),
    ];
    for (n, (_, body)) in bodies.iter().enumerate() {
        let mut h = head.replace("{n}", &n.to_string());
        if n == bodies.len() - 1 {
            h.push_str("X-Long: a\r\n  folded\r\n\tcontinuation   with   spaces\r\n");
            h.push_str("List-Unsubscribe: <https://example.com/u/1>\r\n");
        }
        send_data(&t.sluice, &format!("{h}\r\n{body}"));
    }
    let got = t.sink.wait_for(bodies.len(), 20);
    for (i, m) in got.iter().enumerate() {
        let label = bodies
            .iter()
            .enumerate()
            .find(|(n, _)| {
                String::from_utf8_lossy(&m.data).contains(&format!("Message-ID: <{n}@example.com>"))
            })
            .map_or("?", |(_, (l, _))| l);
        assert_eq!(dkimpy(&m.data, &t.records), BOTH_PASS, "{label} (message {i})");
        // Negative control: one changed byte in the body, then in a signed header, fails.
        let text = String::from_utf8_lossy(&m.data).into_owned();
        let (h, b) = text.split_once("\r\n\r\n").unwrap();
        let tampered = format!("{h}\r\n\r\n{b}X\r\n");
        assert!(
            dkimpy(tampered.as_bytes(), &t.records).iter().all(|r| r.ends_with("/fail")),
            "{label}: a changed body still verified"
        );
        let tampered = text.replacen("Subject: test", "Subject: tesT", 1);
        assert!(
            dkimpy(tampered.as_bytes(), &t.records).iter().all(|r| r.ends_with("/fail")),
            "{label}: a changed Subject still verified"
        );
    }
    let (_, m) = t.sluice.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    let n = bodies.len();
    for alg in ["ed25519-sha256", "rsa-sha256"] {
        let want = format!(
            "sluice_dkim_signatures_total{{algorithm=\"{alg}\",domain=\"example.com\"}} {n}"
        );
        assert!(m.contains(&want), "{want} missing in\n{m}");
    }
    assert!(m.contains("sluice_dkim_sign_seconds_count{algorithm=\"rsa-sha256\"}"));
}

#[test]
fn bdat_without_final_crlf_and_smtputf8_verify() {
    if !require_tool("python3", "apt-get install python3; pip install dkimpy pynacl") {
        return;
    }
    // A sink with CHUNKING gets the body byte for byte; one without gets it dot-stuffed.
    for chunking in [true, false] {
        let t = setup(Behavior { pipelining: true, chunking, ..Default::default() }, "");
        let mut c = Client::ehlo(t.sluice.smtp);
        assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), 250);
        assert_eq!(code(&c.cmd("RCPT TO:<b@example.org>")), 250);
        let msg = "From: a@example.com\r\nSubject: test\r\n\r\nline one\r\nno final CRLF";
        c.send(format!("BDAT {} LAST\r\n{msg}", msg.len()).as_bytes()).unwrap();
        assert_eq!(code(&c.reply().unwrap()), 250);
        // SMTPUTF8, through Python's smtplib: UTF-8 in the address and the headers.
        python(
            r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
msg = ("From: J\u00fcrgen <j\u00fcrgen@example.com>\r\nTo: b@example.org\r\nSubject: test \u00e9t\u00e9\r\n"
       "\r\nK\u00e4se\r\n").encode()
with smtplib.SMTP(host, int(port)) as s:
    s.ehlo("client.test")
    s.sendmail("j\u00fcrgen@example.com", ["b@example.org"], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
"#,
            &[&t.sluice.smtp.to_string()],
        );
        for m in t.sink.wait_for(2, 20) {
            assert_eq!(
                dkimpy(&m.data, &t.records),
                BOTH_PASS,
                "chunking={chunking}: {}",
                String::from_utf8_lossy(&m.data)
            );
        }
    }
}

#[test]
fn a_retried_message_is_delivered_with_the_signatures_made_at_intake() {
    if !require_tool("python3", "apt-get install python3; pip install dkimpy pynacl") {
        return;
    }
    // The first attempt is deferred at RCPT; the retry comes 5 s later, long after the stored
    // message was read, so the comparison below does not race the retry.
    let mut b = Behavior { pipelining: true, ..Default::default() };
    b.rcpt.insert("b@example.org".into(), vec!["451 4.2.0 later".into(), "250 ok".into()]);
    let t = setup_with_retry(b, "", "5s");
    send_data(&t.sluice, "From: a@example.com\r\nSubject: test\r\n\r\nretried\r\n");
    let q = t
        .sluice
        .wait_queue(20, |q| q.len() == 1 && q[0]["recipients"][0]["attempts"].as_u64() == Some(1));
    let stored = t.sluice.raw_message(q[0]["id"].as_str().unwrap());
    let got = t.sink.wait_for(1, 30);
    assert_eq!(dkimpy(&got[0].data, &t.records), BOTH_PASS);
    let sigs = |m: &[u8]| -> Vec<String> {
        let text = format!("\r\n{}", String::from_utf8_lossy(m));
        let head = text.split("\r\n\r\n").next().unwrap().to_string();
        head.split("\r\nDKIM-Signature:").skip(1).map(|s| s.to_string()).collect()
    };
    let delivered = sigs(&got[0].data);
    assert_eq!(delivered.len(), 2, "signed once, at intake");
    assert_eq!(sigs(&stored), delivered, "the retry sent the signatures made at intake");
}

#[test]
fn mail_from_untrusted_clients_is_not_signed() {
    // Loopback is no relay network here: mail to a local domain is accepted from anyone, and a
    // forged From of ours must not get our signature.
    let t = setup(
        Behavior { pipelining: true, ..Default::default() },
        "[relay]\nnetworks = []\n[local]\ndomains = [\"example.org\"]\nmailboxes = false\n",
    );
    send_data(&t.sluice, "From: ceo@example.com\r\nSubject: test\r\n\r\nforged\r\n");
    let got = t.sink.wait_for(1, 20);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(!text.contains("DKIM-Signature"), "{text}");
}

#[test]
fn keygen_refuses_to_overwrite_and_check_compares_dns() {
    let keys = tempfile::tempdir().unwrap();
    let (key, txt) = keygen(keys.path(), "ed", "ed25519");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&key).unwrap();
    let again = Command::new(BIN)
        .args(["dkim", "keygen", "--domain", "example.com", "--selector", "ed"])
        .args(["--algorithm", "ed25519", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"), "{again:?}");
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key in use was overwritten");

    let dns = TestDns::start();
    let config = keys.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[dkim]]\ndomain = \"example.com\"\nselector = \"ed\"\nalgorithm = \"ed25519\"\nkey = \"{}\"\n",
            dns.config(),
            key.display()
        ),
    )
    .unwrap();
    let check = || {
        let out = Command::new(BIN)
            .args(["dkim", "check", "--domain", "example.com", "--selector", "ed", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    dns.a("example.com", "192.0.2.1");
    let (ok, text) = check();
    assert!(!ok && text.contains("MISMATCH") && text.contains("no DKIM key record"), "{text}");
    dns.txt(
        "ed._domainkey.example.com",
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    );
    let (ok, text) = check();
    assert!(!ok && text.contains("p= is a different key"), "{text}");
    dns.clear("ed._domainkey.example.com").txt("ed._domainkey.example.com", &txt);
    let (ok, text) = check();
    assert!(ok && text.contains(": ok"), "{text}");
    // check-config loads the keys too, and names a bad one.
    std::fs::write(&key, "not a key").unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(key.to_str().unwrap()), "{out:?}");
}

#[test]
fn rotated_keys_are_used_after_sighup() {
    if !require_tool("python3", "apt-get install python3; pip install dkimpy pynacl") {
        return;
    }
    let mut t = setup(Behavior { pipelining: true, ..Default::default() }, "");
    send_data(&t.sluice, "From: a@example.com\r\nSubject: before\r\n\r\nold key\r\n");
    let old = t.sink.wait_for(1, 20)[0].data.clone();
    // Rotate the Ed25519 key in place, as an operator would: new file, new record, SIGHUP.
    let key = t.keys.path().join("ed.pem");
    std::fs::remove_file(&key).unwrap();
    let (_, new_txt) = keygen(t.keys.path(), "ed", "ed25519");
    let old_records = t.records.clone();
    t.records[0].1 = new_txt;
    unsafe { libc::kill(t.sluice.pid() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !t.sluice.log().contains("SIGHUP: DKIM keys reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload:\n{}", t.sluice.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send_data(&t.sluice, "From: a@example.com\r\nSubject: after\r\n\r\nnew key\r\n");
    let got = t.sink.wait_for(2, 20);
    let new = &got.iter().find(|m| m.data != old).unwrap().data;
    assert_eq!(dkimpy(new, &t.records), BOTH_PASS, "signed with the new key");
    assert_eq!(dkimpy(&old, &old_records), BOTH_PASS);
    assert_eq!(
        dkimpy(new, &old_records)[0],
        "example.com/ed/ed25519-sha256/fail",
        "the old key no longer signs"
    );
    // A broken key file on reload keeps the working keys.
    std::fs::write(&key, "broken").unwrap();
    unsafe { libc::kill(t.sluice.pid() as i32, libc::SIGHUP) };
    while !t.sluice.log().contains("DKIM key reload failed; keeping the old keys") {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    send_data(&t.sluice, "From: a@example.com\r\nSubject: kept\r\n\r\nstill signed\r\n");
    let got = t.sink.wait_for(3, 20);
    let kept =
        got.iter().find(|m| String::from_utf8_lossy(&m.data).contains("Subject: kept")).unwrap();
    assert_eq!(dkimpy(&kept.data, &t.records), BOTH_PASS);
}

/// Issue #22: a user allowed `@other.test` who writes `From: boss@example.com` got a
/// `d=example.com` signature, a DMARC-aligned forgery of another customer's domain. Now such
/// mail is refused (550 5.7.1), or sent unsigned with `[signing] unaligned_from = "unsigned"`.
#[test]
fn signatures_only_for_from_domains_the_user_may_send_as() {
    use base64::Engine;
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users.toml");
    add_user(&users, "app", "pw", &["@other.test"]);
    let auth = |unaligned: &str| {
        format!(
            "[relay]\nnetworks = []\n[auth]\nusers_file = \"{}\"\nplaintext_on_loopback = true\n\
             [signing]\nunaligned_from = \"{unaligned}\"\n",
            users.display()
        )
    };
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0app\0pw");
    let send = |s: &Sluice, from_header: &str| -> String {
        let mut c = Client::ehlo(s.smtp);
        assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {plain}"))), 235);
        assert_eq!(code(&c.cmd("MAIL FROM:<app@other.test>")), 250);
        assert_eq!(code(&c.cmd("RCPT TO:<b@example.org>")), 250);
        assert_eq!(code(&c.cmd("DATA")), 354);
        c.cmd(&format!("From: {from_header}\r\nSubject: rights\r\n\r\nbody\r\n."))
    };
    let t = setup(Behavior::default(), &auth("refuse"));
    let r = send(&t.sluice, "boss@example.com");
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let r = send(&t.sluice, "Team <team@Other.Test>");
    assert_eq!(code(&r), 250, "{r}");
    let got = t.sink.wait_for(1, 20);
    assert_eq!(got.len(), 1, "only the allowed one went out");
    let t = setup(Behavior::default(), &auth("unsigned"));
    let r = send(&t.sluice, "boss@example.com");
    assert_eq!(code(&r), 250, "{r}");
    let got = t.sink.wait_for(1, 20);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(!text.contains("DKIM-Signature"), "signed for a domain the user may not use: {text}");
}
