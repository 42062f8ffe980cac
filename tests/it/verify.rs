//! Verification of inbound mail: SPF, DKIM and DMARC against records served by the test's own
//! DNS server, the action each DMARC policy leads to, and the Authentication-Results field as
//! Python's `authres` parses it. Incoming signatures are made by dkimpy.

use std::process::Command;

use crate::common::dns::TestDns;
use crate::common::sink::{Behavior, Sink};
use crate::common::*;

/// A PKCS#1 RSA key for dkimpy to sign with, and its DNS record.
fn rsa_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let key = dir.join("sender.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    use base64::Engine;
    let p = base64::engine::general_purpose::STANDARD.encode(&public.stdout);
    (key, format!("v=DKIM1; k=rsa; p={p}"))
}

struct Setup {
    dns: TestDns,
    sink: Sink,
    sluice: Sluice,
    key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// sluice with local domain example.net (verified), everything delivered to a sink. The
/// client is 127.0.0.1, so SPF records name that address to pass.
fn setup(extra: &str) -> Setup {
    setup_with(extra, "[]")
}

fn setup_with(extra: &str, relay_networks: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = rsa_key(dir.path());
    let dns = TestDns::start();
    dns.txt("sel._domainkey.signed.example", &record);
    let sink = Sink::start(Behavior { pipelining: true, ..Default::default() });
    let sluice = Sluice::start(&format!(
        "{}\n[relay]\nnetworks = {relay_networks}\n[local]\ndomains = [\"example.net\"]\nmailboxes = false\n\
         [[route]]\ndomains = [\"*\"]\nsmarthost = \"{}\"\ntls = \"disabled\"\n{extra}",
        dns.config(),
        sink.addr
    ));
    Setup { dns, sink, sluice, key, _dir: dir }
}

/// One message over SMTP; returns the reply to the end of data.
fn send(s: &Sluice, mail_from: &str, message: &str) -> String {
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.cmd(&format!("MAIL FROM:<{mail_from}>"))), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<user@example.net>")), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    c.cmd(&format!("{message}."))
}

fn message(from: &str, subject: &str) -> String {
    format!("From: <{from}>\r\nTo: user@example.net\r\nSubject: {subject}\r\n\r\nHello.\r\n")
}

/// Signs with dkimpy as d=signed.example, s=sel.
fn dkim_signed(key: &std::path::Path, message: &str) -> String {
    let sig = python(
        r#"
import sys, dkim
msg = sys.argv[1].encode()
key = open(sys.argv[2], "rb").read()
sig = dkim.sign(msg, b"sel", b"signed.example", key, canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[b"from", b"to", b"subject"])
sys.stdout.write(sig.decode())
"#,
        &[message, key.to_str().unwrap()],
    );
    format!("{sig}{message}")
}

/// One Authentication-Results field: authserv-id and (method, result, properties) entries.
type Field = (String, Vec<(String, String, String)>);

/// The Authentication-Results fields of a delivered message, parsed by `authres`.
fn results(data: &[u8]) -> Vec<Field> {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.eml");
    std::fs::write(&m, data).unwrap();
    let out = python(
        r#"
import sys, json, email, authres
from email import policy
msg = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=policy.compat32)
out = []
for value in msg.get_all("Authentication-Results") or []:
    h = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
    out.append([h.authserv_id, [[r.method, r.result, " ".join(str(p) for p in r.properties)] for r in h.results]])
print(json.dumps(out))
"#,
        &[m.to_str().unwrap()],
    );
    serde_json::from_str(&out).unwrap()
}

/// method -> result of sluice's own field (there must be exactly one).
fn ours(data: &[u8]) -> std::collections::HashMap<String, String> {
    let all = results(data);
    let mine: Vec<_> = all.iter().filter(|(id, _)| id == "sluice.test").collect();
    assert_eq!(mine.len(), 1, "one field of ours: {all:?}\n{}", String::from_utf8_lossy(data));
    mine[0].1.iter().map(|(m, r, _)| (m.clone(), r.clone())).collect()
}

fn delivered(t: &Setup, subject: &str) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(m) =
            t.sink.messages().into_iter().find(|m| {
                String::from_utf8_lossy(&m.data).contains(&format!("Subject: {subject}\r\n"))
            })
        {
            return m.data;
        }
        assert!(std::time::Instant::now() < deadline, "{subject} never delivered");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn dmarc_policies_lead_to_their_actions() {
    for tool in ["python3", "openssl"] {
        if !require_tool(tool, "apt-get install python3 openssl; pip install dkimpy authres") {
            return;
        }
    }
    let t = setup("");
    let d = &t.dns;
    // SPF passes for 127.0.0.1 only where the record says so.
    for (domain, dmarc) in [
        ("pass.example", "v=DMARC1; p=reject"),
        ("none.example", "v=DMARC1; p=none"),
        ("quarantine.example", "v=DMARC1; p=quarantine"),
        ("reject.example", "v=DMARC1; p=reject"),
        ("pct.example", "v=DMARC1; p=reject; pct=0"),
        ("parent.example", "v=DMARC1; p=reject; sp=none"),
        ("strict.example", "v=DMARC1; p=reject; aspf=s"),
        ("relaxed.example", "v=DMARC1; p=reject; aspf=r"),
        ("signed.example", "v=DMARC1; p=reject"),
    ] {
        d.txt(domain, "v=spf1 ip4:192.0.2.1 -all");
        d.txt(&format!("_dmarc.{domain}"), dmarc);
    }
    d.clear("pass.example").txt("pass.example", "v=spf1 ip4:127.0.0.1 -all");
    d.txt("bounce.strict.example", "v=spf1 ip4:127.0.0.1 -all");
    d.txt("bounce.relaxed.example", "v=spf1 ip4:127.0.0.1 -all");
    d.txt("norecord.example", "v=spf1 ip4:127.0.0.1 -all");
    d.txt("tempfail.example", "v=spf1 ip4:127.0.0.1 -all");
    d.servfail("_dmarc.tempfail.example");
    d.a("sub.parent.example", "192.0.2.9");

    // (case, MAIL FROM, From, expected SMTP code, expected spf, dmarc, quarantined)
    let cases = [
        ("aligned-pass", "a@pass.example", "a@pass.example", 250, "pass", "pass", false),
        ("fail-p-none", "a@none.example", "a@none.example", 250, "fail", "fail", false),
        (
            "fail-p-quarantine",
            "a@quarantine.example",
            "a@quarantine.example",
            250,
            "fail",
            "fail",
            true,
        ),
        ("fail-p-reject", "a@reject.example", "a@reject.example", 550, "", "", false),
        ("pct-0", "a@pct.example", "a@pct.example", 250, "fail", "fail", true),
        ("sp-none", "a@pass.example", "a@sub.parent.example", 250, "pass", "fail", false),
        ("aspf-strict", "b@bounce.strict.example", "a@strict.example", 550, "", "", false),
        (
            "aspf-relaxed",
            "b@bounce.relaxed.example",
            "a@relaxed.example",
            250,
            "pass",
            "pass",
            false,
        ),
        ("no-record", "a@norecord.example", "a@norecord.example", 250, "pass", "none", false),
        ("temperror", "a@tempfail.example", "a@tempfail.example", 250, "pass", "temperror", false),
    ];
    for (case, mail_from, from, want_code, spf, dmarc, quarantined) in cases {
        let r = send(&t.sluice, mail_from, &message(from, case));
        assert_eq!(code(&r), want_code, "{case}: {r}");
        if want_code == 550 {
            assert!(r.contains("5.7.1") && r.contains("DMARC"), "{case}: {r}");
            continue;
        }
        let data = delivered(&t, case);
        let got = ours(&data);
        assert_eq!(got.get("spf").map(String::as_str), Some(spf), "{case}: {got:?}");
        assert_eq!(got.get("dmarc").map(String::as_str), Some(dmarc), "{case}: {got:?}");
        let text = String::from_utf8_lossy(&data);
        assert_eq!(text.contains("X-Sluice-Quarantine: dmarc"), quarantined, "{case}: {text}");
    }

    // DKIM alone aligns: SPF fails, the dkimpy signature of signed.example passes.
    let signed = dkim_signed(&t.key, &message("a@signed.example", "dkim-aligned"));
    assert_eq!(code(&send(&t.sluice, "a@signed.example", &signed)), 250);
    let got = ours(&delivered(&t, "dkim-aligned"));
    assert_eq!(got["spf"], "fail");
    assert_eq!(got["dkim"], "pass");
    assert_eq!(got["dmarc"], "pass");
    // A changed body breaks the signature: DMARC fails and p=reject refuses it.
    let tampered = signed.replace("Hello.", "Hello!");
    let r = send(&t.sluice, "a@signed.example", &tampered);
    assert_eq!(code(&r), 550, "{r}");

    let (_, m) = t.sluice.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_auth_results_total{method=\"dmarc\",result=\"pass\"} 3"), "{m}");
    assert!(m.contains("sluice_smtp_rejections_total{reason=\"dmarc\"} 3"), "{m}");
}

#[test]
fn forged_results_under_our_name_are_removed() {
    if !require_tool("python3", "pip install authres") {
        return;
    }
    let t = setup("");
    t.dns.txt("pass.example", "v=spf1 ip4:127.0.0.1 -all");
    let forged = format!(
        "Authentication-Results: sluice.test; dkim=pass header.d=bank.example;\r\n\tdmarc=pass header.from=bank.example\r\n\
         Authentication-Results: elsewhere.example; spf=fail smtp.mailfrom=x@y.example\r\n{}",
        message("a@pass.example", "forged")
    );
    assert_eq!(code(&send(&t.sluice, "a@pass.example", &forged)), 250);
    let data = delivered(&t, "forged");
    let got = ours(&data); // exactly one field claims sluice.test: ours
    assert_eq!(got["spf"], "pass");
    assert!(!got.contains_key("dkim"), "the forged dkim=pass survived: {got:?}");
    let all = results(&data);
    assert!(all.iter().any(|(id, _)| id == "elsewhere.example"), "other fields stay: {all:?}");
}

#[test]
fn spf_fail_can_be_refused_and_scope_decides_what_is_verified() {
    let fail = |t: &Setup| {
        t.dns.txt("fail.example", "v=spf1 ip4:192.0.2.1 -all");
    };
    let relay = |t: &Setup, subject: &str| {
        let mut c = Client::ehlo(t.sluice.smtp);
        assert_eq!(code(&c.cmd("MAIL FROM:<a@fail.example>")), 250);
        assert_eq!(code(&c.cmd("RCPT TO:<b@example.org>")), 250);
        assert_eq!(code(&c.cmd("DATA")), 354);
        c.cmd(&format!("{}.", message("a@fail.example", subject)))
    };
    // Loopback may relay here; example.org is not local.
    let all = setup_with("[verify]\nspf_fail = \"reject\"\nscope = \"all\"\n", "[\"127.0.0.0/8\"]");
    fail(&all);
    let r = send(&all.sluice, "a@fail.example", &message("a@fail.example", "spf-reject"));
    assert_eq!(code(&r), 550, "{r}");
    assert!(r.contains("5.7.23"), "{r}");
    let r = relay(&all, "relayed");
    assert_eq!(code(&r), 550, "scope = all verifies relayed mail: {r}");

    let local = setup_with("[verify]\nspf_fail = \"reject\"\n", "[\"127.0.0.0/8\"]");
    fail(&local);
    assert_eq!(code(&relay(&local, "relayed")), 250, "scope = local leaves relayed mail alone");
    let text = String::from_utf8_lossy(&delivered(&local, "relayed")).into_owned();
    assert!(!text.contains("Authentication-Results"), "{text}");

    let off = setup("[verify]\nscope = \"off\"\n");
    fail(&off);
    assert_eq!(code(&send(&off.sluice, "a@fail.example", &message("a@fail.example", "off"))), 250);
    let text = String::from_utf8_lossy(&delivered(&off, "off")).into_owned();
    assert!(!text.contains("Authentication-Results"), "scope off adds nothing: {text}");
}
