//! HTTP injection (`POST /api/inject/v1`) over real HTTP: curl and Python's urllib, messages
//! checked where they arrive (a loopback SMTP sink) and parsed with Python's `email` package.

use std::process::Command;

use crate::common::sink::{Behavior, Sink};
use crate::common::*;
use serde_json::{Value, json};

/// POST with curl; returns (status, body).
fn curl_post(s: &Sluice, token: &str, body: &[u8], extra: &[&str]) -> (u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "120", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/json"])
        .args(extra)
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{}/api/inject/v1", s.admin))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn inject(s: &Sluice, token: &str, req: &Value) -> (u16, String) {
    curl_post(s, token, req.to_string().as_bytes(), &[])
}

fn ok_json(r: (u16, String)) -> Value {
    assert_eq!(r.0, 200, "{}", r.1);
    serde_json::from_str(&r.1).unwrap()
}

fn text_of(m: &sink::Received) -> String {
    String::from_utf8_lossy(&m.data).to_string()
}

#[test]
fn raw_content_with_per_recipient_substitutions_and_one_bad_address() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let sink = Sink::start(Behavior::default());
    let s = Sluice::start(&sink.route("[metrics]\ntenants = [\"acme\"]\n"));
    let token = s.inject_token("campaigns");
    let req = json!({
        "envelope_sender": "bounces@sender.example",
        "content": "From: news@sender.example\nSubject: Hello {{ name }}\n\nHi {{ name }}, your code is {{ code }}.\n{% if vip %}VIP{% endif %}\n",
        "substitutions": {"code": "GLOBAL", "vip": false},
        "recipients": [
            {"email": "ann@example.org", "substitutions": {"name": "Ann", "code": "A-1"}},
            {"email": "bob@example.org", "substitutions": {"name": "Bob", "vip": true}},
            {"email": "not an address"},
        ],
        "campaign": "spring-sale",
        "tenant": "acme",
        "meta": {"batch": 7},
    });
    let resp = ok_json(inject(&s, &token, &req));
    assert_eq!(
        (resp["success_count"].as_u64(), resp["fail_count"].as_u64()),
        (Some(2), Some(1)),
        "{resp}"
    );
    assert_eq!(resp["failed_recipients"], json!(["not an address"]));
    // Counted as SMTP counts what it accepts (the dashboard's "Messages accepted/s" missed
    // every injected message).
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("sluice_messages_received_total{listener=\"inject\",tenant=\"acme\"} 2"),
        "{m}"
    );
    for line in [
        "sluice_inject_requests_total{result=\"ok\"} 1",
        "sluice_inject_recipients_total{result=\"stored\"} 2",
        "sluice_inject_recipients_total{result=\"invalid\"} 1",
        "sluice_inject_recipients_total{result=\"render_error\"} 0",
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
    assert!(resp["errors"][0].as_str().unwrap().starts_with("recipients[2].email"), "{resp}");
    let ids: Vec<(String, String)> = resp["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["recipient"].as_str().unwrap().into(), m["id"].as_str().unwrap().into()))
        .collect();
    assert_eq!(ids.len(), 2);

    let got = sink.wait_for(2, 20);
    let to = |a: &str| got.iter().find(|m| m.rcpts == vec![a.to_string()]).unwrap();
    let ann = text_of(to("ann@example.org"));
    assert!(ann.contains("Subject: Hello Ann\r\n"), "{ann}");
    assert!(ann.contains("Hi Ann, your code is A-1.\r\n"), "{ann}");
    assert!(!ann.contains("VIP"), "{ann}");
    assert!(
        ann.contains("\r\nDate: ") || ann.starts_with("Date: ") || ann.contains("Date: "),
        "Date added: {ann}"
    );
    assert!(ann.contains("Message-ID: <"), "Message-ID added: {ann}");
    assert!(ann.contains(&format!("with HTTP id {}", ids[0].1)), "{ann}");
    let bob = text_of(to("bob@example.org"));
    assert!(bob.contains("your code is GLOBAL.\r\nVIP\r\n"), "{bob}");
    assert_eq!(to("bob@example.org").mail_from, "bounces@sender.example");
    // Tags travel in the envelope, not in headers.
    assert!(!ann.to_lowercase().contains("spring-sale") && !ann.contains("acme"), "{ann}");
    s.wait_queue(20, |q| q.is_empty());
    let log = s.delivery_log(4);
    let delivered: Vec<_> = log.iter().filter(|e| e["event"] == "delivered").collect();
    assert_eq!(delivered.len(), 2, "{log:?}");
    assert!(
        delivered.iter().all(|e| e["tenant"] == "acme" && e["campaign"] == "spring-sale"),
        "{log:?}"
    );
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("sluice_tenant_deliveries_total{outcome=\"delivered\",tenant=\"acme\"} 2"),
        "{m}"
    );
}

#[test]
fn bad_requests_name_the_field_and_bad_tokens_are_refused() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let s = Sluice::start("[delivery]\nenabled = false\n");
    let token = s.inject_token("campaigns");
    let base = json!({"envelope_sender": "a@example.com", "content": "Subject: x\n\nx\n", "recipients": [{"email": "b@example.org"}]});
    assert_eq!(inject(&s, "not-a-token", &base).0, 401);
    assert_eq!(inject(&s, &s.admin_token(), &base).0, 200, "the admin token may inject too");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"envelope_sender": "a@example.com", "content": "x", "recipients": [{"emial": "b@example.org"}]}),
            "recipients[0].emial: unknown field `emial`",
        ),
        (
            json!({"envelope_sender": "a@example.com", "content": "x", "recipients": []}),
            "recipients: at least one",
        ),
        (
            json!({"envelope_sender": "not an address", "content": "x", "recipients": [{"email": "b@example.org"}]}),
            "envelope_sender:",
        ),
        (
            json!({"envelope_sender": "a@example.com", "content": {"subject": "x"}, "recipients": [{"email": "b@example.org"}]}),
            "content: a built message needs",
        ),
        (
            json!({"envelope_sender": "a@example.com", "content": {"text_body": "x", "attachments": [{"data": "!!", "base64": true, "content_type": "text/plain"}]}, "recipients": [{"email": "b@example.org"}]}),
            "content.attachments[0].data: bad base64",
        ),
        (
            json!({"envelope_sender": "a@example.com", "content": {"subject": "Hi {{ name", "text_body": "x"}, "recipients": [{"email": "b@example.org", "substitutions": {"name": "B"}}]}),
            "template content.subject line 1:",
        ),
        (
            json!({"envelope_sender": "a@example.com", "content": "Subject: x\n\nline 1\n{% for x in y %}\nno end\n", "substitutions": {"y": [1]}, "recipients": [{"email": "b@example.org"}]}),
            "template content line ",
        ),
        (
            json!({"envelope_sender": "a@example.com", "content": "x", "tenant": "no spaces", "recipients": [{"email": "b@example.org"}]}),
            "tenant:",
        ),
        (
            json!({"envelope_sender": "a@example.com", "content": 5, "recipients": [{"email": "b@example.org"}]}),
            "content: must be a string",
        ),
    ];
    for (req, want) in cases {
        let (status, body) = inject(&s, &token, &req);
        assert_eq!(status, 400, "{req} -> {body}");
        assert!(body.contains(want), "{req}: wanted {want:?} in {body:?}");
    }
    let (status, body) = curl_post(&s, &token, b"{not json", &[]);
    assert_eq!(status, 400, "{body}");
    // Every answer is counted by its result (the 401 never reached the injector).
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    for line in [
        "sluice_inject_requests_total{result=\"ok\"} 1",
        "sluice_inject_requests_total{result=\"template\"} 2",
        "sluice_inject_requests_total{result=\"bad_request\"} 8",
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
}

/// Builder content with templates, non-ASCII, HTML escaping and attachments, gzip'd, sent by
/// Python's urllib; the delivered MIME is parsed with Python's `email` package.
#[test]
fn built_messages_parse_as_the_mime_they_claim_to_be() {
    let sink = Sink::start(Behavior::default());
    let s = Sluice::start(&sink.route(""));
    let token = s.inject_token("campaigns");
    let long_word = "x".repeat(1500);
    let req = json!({
        "envelope_sender": "bounces@sender.example",
        "content": {
            "from": {"email": "news@sender.example", "name": "Sender Ünïcode News"},
            "reply_to": {"email": "help@sender.example"},
            "subject": "Grüße, {{ name }}! {{ long }}",
            "headers": {"X-Campaign-Ref": "ref-{{ ref }}", "List-Unsubscribe": "<mailto:unsub@sender.example?subject={{ ref }}>"},
            "text_body": "Hallo {{ name }},\nline two {{ long }}\nbye\n",
            "html_body": "<p>Hallo {{ name }} {{ html }}</p><img src=\"cid:logo\">",
            "attachments": [
                {"data": "aGVsbG8gYXR0YWNobWVudA==", "base64": true, "content_type": "application/pdf", "file_name": "report.pdf"},
                {"data": "R0lGODlhAQABAAAAACw=", "base64": true, "content_type": "image/gif", "content_id": "logo"},
                {"data": "plain text attachment é", "content_type": "text/plain", "file_name": "notes.txt"},
            ],
        },
        "substitutions": {"long": long_word, "html": "<b>&</b>"},
        "recipients": [
            {"email": "ann@example.org", "name": "Ann Ärger", "substitutions": {"name": "Änn", "ref": "A1"}},
            {"email": "bob@example.org", "substitutions": {"name": "Bob", "ref": "B2"}},
        ],
    });
    let dir = tempfile::tempdir().unwrap();
    let req_file = dir.path().join("req.json");
    std::fs::write(&req_file, req.to_string()).unwrap();
    let out = python(
        r#"
import gzip, json, sys, urllib.request
body = gzip.compress(open(sys.argv[1], "rb").read())
r = urllib.request.Request(sys.argv[2], data=body, method="POST", headers={
    "Authorization": "Bearer " + sys.argv[3], "Content-Type": "application/json", "Content-Encoding": "gzip"})
with urllib.request.urlopen(r, timeout=60) as resp:
    print(resp.status, resp.read().decode())
"#,
        &[req_file.to_str().unwrap(), &format!("http://{}/api/inject/v1", s.admin), &token],
    );
    assert!(out.starts_with("200 "), "{out}");
    let resp: Value = serde_json::from_str(out[4..].trim()).unwrap();
    assert_eq!(resp["success_count"], 2, "{resp}");
    let got = sink.wait_for(2, 20);
    for (m, name, display, reference) in [
        (got.iter().find(|m| m.rcpts[0] == "ann@example.org").unwrap(), "Änn", "Ann Ärger", "A1"),
        (got.iter().find(|m| m.rcpts[0] == "bob@example.org").unwrap(), "Bob", "", "B2"),
    ] {
        let file = dir.path().join(format!("{reference}.eml"));
        std::fs::write(&file, &m.data).unwrap();
        let checked = python(
            r#"
import base64, email, sys
from email import policy
raw = open(sys.argv[1], "rb").read()
for line in raw.split(b"\r\n"):
    assert len(line) <= 998, ("line too long", len(line))
    assert all(b < 128 for b in line), ("8-bit octet in", line[:80])
msg = email.message_from_bytes(raw, policy=policy.default)
name, display, ref, long_word = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
assert str(msg["Subject"]) == "Grüße, %s! %s" % (name, long_word), str(msg["Subject"])[:100]
assert msg["From"].addresses[0].display_name == "Sender Ünïcode News", str(msg["From"])
assert msg["From"].addresses[0].addr_spec == "news@sender.example"
to = msg["To"].addresses[0]
assert (to.display_name, to.addr_spec.split("@")[1]) == (display, "example.org"), str(msg["To"])
assert str(msg["Reply-To"]) == "help@sender.example"
assert str(msg["X-Campaign-Ref"]) == "ref-" + ref
assert str(msg["List-Unsubscribe"]) == "<mailto:unsub@sender.example?subject=%s>" % ref
assert msg["Message-ID"] and msg["Date"] and msg["MIME-Version"] == "1.0"
assert msg.get_content_type() == "multipart/mixed", msg.get_content_type()
body = msg.get_body(preferencelist=("plain",))
# Parsed from CRLF bytes, the text keeps its CRLFs; the CRLF before a boundary belongs to the
# boundary (RFC 2046 5.1.1), so the last line break of a part is not part of its text.
text = body.get_content().replace("\r\n", "\n")
assert text.rstrip("\n") == "Hallo %s,\nline two %s\nbye" % (name, long_word), repr(text[:80])
html = msg.get_body(preferencelist=("html",)).get_content()
assert "<p>Hallo %s &lt;b&gt;&amp;&lt;&#x2f;b&gt;</p>" % name in html, html[:200]
atts = {p.get_filename(): p for p in msg.iter_attachments()}
assert atts["report.pdf"].get_content_type() == "application/pdf"
assert atts["report.pdf"].get_content() == b"hello attachment"
assert atts["notes.txt"].get_content() == "plain text attachment é"
inline = [p for p in msg.walk() if p.get("Content-ID")]
assert len(inline) == 1 and inline[0]["Content-ID"].strip("<>") == "logo", [str(p["Content-ID"]) for p in inline]
assert inline[0].get_content() == base64.b64decode("R0lGODlhAQABAAAAACw="), inline[0].get_content()
print("ok")
"#,
            &[file.to_str().unwrap(), name, display, reference, &long_word],
        );
        assert_eq!(checked.trim(), "ok", "{checked}");
    }
}

#[test]
fn suppressed_recipients_are_refused_and_a_hard_bounce_suppresses_for_the_tenant() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let mut b = Behavior::default();
    b.rcpt.insert("gone@example.org".into(), vec!["550 5.1.1 no such user".into()]);
    let sink = Sink::start(b);
    let s = Sluice::start(&sink.route(""));
    let token = s.inject_token("campaigns");
    let req = |rcpts: &[&str], tenant: &str| {
        json!({
            "envelope_sender": "bounces@sender.example",
            "content": "Subject: hi\n\nhello\n",
            "tenant": tenant,
            "recipients": rcpts.iter().map(|r| json!({"email": r})).collect::<Vec<_>>(),
        })
    };
    let resp = ok_json(inject(&s, &token, &req(&["gone@example.org", "fine@example.org"], "acme")));
    assert_eq!(resp["success_count"], 2, "{resp}");
    s.wait_queue(20, |q| q.is_empty());
    // The hard bounce is now on acme's list: refused for acme, not for another tenant.
    let resp = ok_json(inject(&s, &token, &req(&["gone@example.org", "fine@example.org"], "acme")));
    assert_eq!(resp["failed_recipients"], json!(["gone@example.org"]), "{resp}");
    assert!(
        resp["errors"][0]
            .as_str()
            .unwrap()
            .contains("is on the suppression list (invalid_recipient since"),
        "{resp}"
    );
    let resp = ok_json(inject(&s, &token, &req(&["gone@example.org"], "other")));
    assert_eq!(resp["success_count"], 1, "another tenant's list is its own: {resp}");
}

/// The whole request is durable before the 200: kill -9 right after it, restart, and every
/// recipient is in the queue. One bad address among 10,000 is reported, the rest stored.
#[test]
fn ten_thousand_recipients_survive_kill_9_after_the_answer() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let mut s = Sluice::start("[delivery]\nenabled = false\n");
    let token = s.inject_token("campaigns");
    let mut rcpts: Vec<Value> = (0..10_000)
        .map(|i| json!({"email": format!("r{i}@example.org"), "substitutions": {"i": i}}))
        .collect();
    rcpts[4321] = json!({"email": "broken@@example.org"});
    let req = json!({
        "envelope_sender": "bounces@sender.example",
        "content": "Subject: number {{ i }}\n\nhello {{ i }}\n",
        "recipients": rcpts,
    });
    let resp = ok_json(inject(&s, &token, &req));
    s.kill9();
    assert_eq!(
        (resp["success_count"].as_u64(), resp["fail_count"].as_u64()),
        (Some(9_999), Some(1))
    );
    assert_eq!(resp["failed_recipients"], json!(["broken@@example.org"]));
    let want: std::collections::BTreeSet<String> = resp["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(want.len(), 9_999);
    s.spawn();
    let queued: std::collections::BTreeSet<String> =
        s.queue_list().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    let lost: Vec<_> = want.difference(&queued).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let one = s.raw_message(resp["messages"][10]["id"].as_str().unwrap());
    assert!(String::from_utf8_lossy(&one).contains("Subject: number 10\r\n"));
}

/// RFC 8058: injected mail carries List-Unsubscribe (HTTPS and mailto) and List-Unsubscribe-Post;
/// a GET shows a page and changes nothing, a POST with the token suppresses that recipient for
/// the tenant, and a token altered for another address is refused.
#[test]
fn one_click_unsubscribe_over_https() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["tls", "self-signed", "--host", "localhost", "--dir"])
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sink = Sink::start(Behavior::default());
    let s = Sluice::start(&sink.route(&format!(
        "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n\
         [unsubscribe]\nenabled = true\naddress = \"127.0.0.1:0\"\n\
         url = \"https://unsub.example.test/unsubscribe\"\nmailto = \"unsub@bounces.sender.example\"\n\
         [verp]\nenabled = true\ndomain = \"bounces.sender.example\"\n",
        certs.path().display()
    )));
    let bound: Value = serde_json::from_str(
        &std::fs::read_to_string(s.data_dir.join("sluice.addresses.json")).unwrap(),
    )
    .unwrap();
    let endpoint = format!("https://{}/unsubscribe", bound["unsubscribe"][0].as_str().unwrap());
    let token = s.inject_token("campaigns");
    let req = json!({
        "envelope_sender": "bounces@sender.example", "tenant": "acme",
        "content": {"from": {"email": "news@sender.example"}, "subject": "news", "text_body": "hello"},
        "recipients": [{"email": "ann@example.org"}],
    });
    assert_eq!(ok_json(inject(&s, &token, &req))["success_count"], 1);
    let got = sink.wait_for(1, 20);
    let text = text_of(&got[0]);
    let field = text
        .split("\r\n")
        .skip_while(|l| !l.starts_with("List-Unsubscribe: <"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\r\n");
    assert!(
        field.starts_with("List-Unsubscribe: <https://unsub.example.test/unsubscribe/"),
        "{text}"
    );
    assert!(
        field.contains("<mailto:unsub@bounces.sender.example?subject=unsubscribe%20"),
        "{field}"
    );
    assert!(text.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{text}");
    let tok = field.split("/unsubscribe/").nth(1).unwrap().split('>').next().unwrap().to_string();
    let curl = |method: &str, url: &str| -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sk", "-w", "\n%{http_code}", "--max-time", "20", "-X", method])
            .args(if method == "POST" { vec!["-d", "List-Unsubscribe=One-Click"] } else { vec![] })
            .arg(url)
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = t.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap_or(0), body.to_string())
    };
    let (code, page) = curl("GET", &format!("{endpoint}/{tok}"));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<form method=\"post\">") && page.contains("ann@example.org"), "{page}");
    let resend = || ok_json(inject(&s, &token, &req));
    assert_eq!(resend()["success_count"], 1, "a GET unsubscribes nobody");
    // A token moved onto another address keeps its tag: refused.
    let (payload, tag) = tok.split_once('.').unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let other = String::from_utf8(b64.decode(payload).unwrap()).unwrap().replace("ann@", "boss@");
    let forged = format!("{}.{tag}", b64.encode(other));
    assert_eq!(curl("POST", &format!("{endpoint}/{forged}")).0, 403);
    assert_eq!(curl("POST", &format!("{endpoint}/{tok}")).0, 200);
    let after = resend();
    assert_eq!(after["failed_recipients"], json!(["ann@example.org"]), "{after}");
    assert!(after["errors"][0].as_str().unwrap().contains("(unsubscribe since"), "{after}");

    // The mailto form: a message to that address with the token in its Subject, as a mail
    // client sends it (here Python's smtplib), unsubscribes eve.
    let eve = json!({
        "envelope_sender": "bounces@sender.example", "tenant": "acme",
        "content": {"from": {"email": "news@sender.example"}, "subject": "news", "text_body": "hello"},
        "recipients": [{"email": "eve@example.org"}],
    });
    assert_eq!(ok_json(inject(&s, &token, &eve))["success_count"], 1);
    let got = sink.wait_for(3, 20);
    let text = text_of(got.iter().find(|m| m.rcpts[0] == "eve@example.org").unwrap());
    let mailto_token =
        text.split("subject=unsubscribe%20").nth(1).unwrap().split('>').next().unwrap().to_string();
    let out = python(
        r#"
import smtplib, sys
from email.message import EmailMessage
host, port = sys.argv[1].rsplit(":", 1)
m = EmailMessage()
m["From"], m["To"], m["Subject"] = "eve@example.org", "unsub@bounces.sender.example", "unsubscribe " + sys.argv[2]
m.set_content("please")
s = smtplib.SMTP(host, int(port), timeout=30)
print(s.send_message(m))
s.quit()
"#,
        &[&s.smtp.to_string(), &mailto_token],
    );
    assert_eq!(out.trim(), "{}", "{out}");
    let after = ok_json(inject(&s, &token, &eve));
    assert_eq!(after["failed_recipients"], json!(["eve@example.org"]), "{after}");
}

/// VERP: injected mail leaves with a return path per message; a bounce sent to one later (an
/// RFC 3464 report, or a plain-text bounce) is read, classified, logged with the recipient,
/// tenant and campaign, and a hard one suppresses that recipient. Bounces are sent with Python's
/// smtplib, as a remote MTA would.
#[test]
fn asynchronous_bounces_to_verp_addresses_are_classified_and_suppress() {
    let mut b = Behavior::default();
    b.rcpt.insert("carl@example.org".into(), vec!["550 5.1.1 no such user".into()]);
    let sink = Sink::start(b);
    // The complaint also counts towards the circuit breakers (1 of 2 delivered is past 0.3).
    let s = Sluice::start(&sink.route(
        "[verp]\nenabled = true\ndomain = \"bounces.sender.example\"\n\
         [circuit_breaker]\ncomplaint_min_sample = 2\ncomplaint_rate = 0.3\n",
    ));
    let token = s.inject_token("campaigns");
    let req = json!({
        "envelope_sender": "news@sender.example", "tenant": "acme", "campaign": "c1",
        "content": {"from": {"email": "news@sender.example"}, "subject": "hi", "text_body": "hello"},
        "recipients": [{"email": "ann@example.org"}, {"email": "bob@example.org"}, {"email": "carl@example.org"}],
    });
    assert_eq!(ok_json(inject(&s, &token, &req))["success_count"], 3);
    let got = sink.wait_for(2, 20);
    let from = |a: &str| got.iter().find(|m| m.rcpts[0] == a).unwrap().mail_from.clone();
    let (ann, bob) = (from("ann@example.org"), from("bob@example.org"));
    assert!(ann.starts_with("bounces+") && ann.ends_with("@bounces.sender.example"), "{ann}");
    assert_ne!(ann, bob, "one return path per message");
    s.wait_queue(20, |q| q.is_empty());

    let dsn = format!(
        "From: MAILER-DAEMON@mx.example.org\r\nTo: {ann}\r\nSubject: Delivery Status Notification (Failure)\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n\
         Final-Recipient: rfc822; ann@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 The email account that you tried to reach does not exist.\r\n\r\n\
         --b1--\r\n"
    );
    let plain = format!(
        "From: postmaster@example.org\r\nTo: {bob}\r\nSubject: Undeliverable\r\n\r\n\
         Delivery failed:\r\n  bob@example.org: 552 5.2.2 Mailbox full, try later\r\n"
    );
    let forged = ann.replace("bounces+", "bounces+ff");
    let script = r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
s = smtplib.SMTP(host, int(port), timeout=30)
s.ehlo("mx.example.org")
for rcpt, path in ((sys.argv[2], sys.argv[3]), (sys.argv[4], sys.argv[5]), (sys.argv[6], sys.argv[3])):
    print(s.sendmail("", [rcpt], open(path, "rb").read()))
s.quit()
"#;
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (dir.path().join("dsn.eml"), dir.path().join("plain.eml"));
    std::fs::write(&p1, dsn).unwrap();
    std::fs::write(&p2, plain).unwrap();
    let out = python(
        script,
        &[&s.smtp.to_string(), &ann, p1.to_str().unwrap(), &bob, p2.to_str().unwrap(), &forged],
    );
    assert_eq!(out.lines().filter(|l| *l == "{}").count(), 3, "all accepted: {out}");

    let log = s.delivery_log(1);
    let received: Vec<_> = log.iter().filter(|e| e["event"] == "bounce_received").collect();
    assert_eq!(received.len(), 2, "{log:?}");
    let event = |r: &str| received.iter().find(|e| e["recipient"] == r).unwrap();
    assert_eq!(event("ann@example.org")["category"], "invalid_recipient");
    assert_eq!(event("bob@example.org")["category"], "quota");
    assert!(received.iter().all(|e| e["tenant"] == "acme" && e["campaign"] == "c1"), "{log:?}");
    assert_eq!(
        log.iter().filter(|e| e["event"] == "bounce_unmatched").count(),
        1,
        "the forged one"
    );
    // An abuse report (ARF) about bob's message: the original's return path names him.
    let arf = format!(
        "From: fbl@isp.example\r\nTo: fbl@bounces.sender.example\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"f\"\r\n\r\n\
         --f\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\
         --f\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n\r\n\
         --f\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <{bob}>\r\nFrom: news@sender.example\r\nSubject: hi\r\n\r\n\
         --f--\r\n"
    );
    let p3 = dir.path().join("arf.eml");
    std::fs::write(&p3, arf).unwrap();
    let out = python(
        r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
s = smtplib.SMTP(host, int(port), timeout=30)
print(s.sendmail("", ["fbl@bounces.sender.example"], open(sys.argv[2], "rb").read()))
s.quit()
"#,
        &[&s.smtp.to_string(), p3.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "{}", "{out}");
    let log = s.delivery_log(1);
    let complaint: Vec<_> = log.iter().filter(|e| e["event"] == "complaint").collect();
    assert_eq!(complaint.len(), 1, "{log:?}");
    assert_eq!(
        (complaint[0]["recipient"].as_str(), complaint[0]["tenant"].as_str()),
        (Some("bob@example.org"), Some("acme"))
    );
    let suppressed =
        |r: &str| log.iter().filter(|e| e["event"] == "suppressed" && e["recipient"] == r).count();
    // Bob's full mailbox did not suppress him; his complaint did.
    assert_eq!((suppressed("ann@example.org"), suppressed("bob@example.org")), (1, 1), "{log:?}");
    let bob_reason =
        log.iter().find(|e| e["event"] == "suppressed" && e["recipient"] == "bob@example.org");
    assert_eq!(bob_reason.unwrap()["category"], "complaint");
    let log = s.wait_event(10, |e| e["event"] == "circuit_open" && e["scope"] == "campaign");
    let mut opened: Vec<_> =
        events(&log, "circuit_open").map(|e| e["scope"].as_str().unwrap()).collect();
    opened.sort();
    assert_eq!(opened, ["campaign", "tenant"], "{log:?}");
    assert!(events(&log, "circuit_open").all(|e| {
        e["reason"].as_str().unwrap().starts_with("complaint rate 0.5000 over 2 delivered")
    }));
    assert_eq!(inject(&s, &token, &req).0, 429, "acme's mail is refused now");
    for path in ["/api/tenant/acme/resume", "/api/campaign/c1/resume"] {
        let (status, body) = s.agent_post_json(path, &s.admin_token(), &json!({}));
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Neither the bounces received nor carl's synchronous failure produced mail: VERP mail
    // gets no DSN (it would only come back to us).
    assert_eq!(
        sink.messages().len(),
        2,
        "{:?}",
        sink.messages().iter().map(|m| &m.rcpts).collect::<Vec<_>>()
    );
    let resp = ok_json(inject(&s, &token, &req));
    assert_eq!(
        resp["failed_recipients"],
        json!(["ann@example.org", "bob@example.org", "carl@example.org"]),
        "a hard bounce (ann), a complaint (bob), a synchronous hard bounce (carl): {resp}"
    );
    assert!(resp["errors"][1].as_str().unwrap().contains("(complaint since"), "{resp}");
}

/// `[[shaping.rule]] tenants`: a tenant's mail gets a lane of its own with its own limits (here
/// one connection) to a destination other mail shares.
#[test]
fn a_tenant_shaping_rule_gives_the_tenant_its_own_lane() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    // A slow end of data keeps every connection open long enough to be seen at once.
    let sink = Sink::start(Behavior {
        end_delay: std::time::Duration::from_millis(200),
        ..Default::default()
    });
    let s = Sluice::start(&sink.route(
        "[shaping.default]\nconnections = 10\n[[shaping.rule]]\ntenants = [\"acme\"]\nconnections = 1\n",
    ));
    let token = s.inject_token("campaigns");
    let rcpts: Vec<Value> = (0..6).map(|i| json!({"email": format!("r{i}@example.org")})).collect();
    let req = json!({
        "envelope_sender": "bounces@sender.example", "tenant": "acme",
        "content": "Subject: lane\n\nhello\n", "recipients": rcpts,
    });
    assert_eq!(ok_json(inject(&s, &token, &req))["success_count"], 6);
    sink.wait_for(6, 30);
    assert_eq!(sink.max_concurrent(), 1, "acme's lane has one connection");
}

fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM")
}

/// Issue #22: injection memory is bounded. A window of 1,000 rendered messages each with its
/// own copy of a 1 MiB attachment raised peak memory by 500 MiB; windows are now cut at about
/// 32 MiB of messages. A template whose output grows without end (a loop) stops at
/// `[limits] max_message_size`, and that recipient alone is refused; a rendered message over
/// the limit is refused per recipient too (a 35.9 MB message went out under a 20 MiB limit).
#[test]
fn injection_memory_is_bounded_by_windows_and_the_message_size_limit() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let sink = Sink::start(Behavior::default());
    let s =
        Sluice::start(&sink.route(
            "[limits]\nmax_message_size = \"4MiB\"\n[inject]\nmax_request_size = \"64MiB\"\n",
        ));
    let token = s.inject_token("campaigns");
    use base64::Engine;
    let attachment = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 1 << 20]);
    let before = peak_rss_kib(s.pid());
    let recipients: Vec<Value> =
        (0..200).map(|i| json!({"email": format!("r{i}@example.org")})).collect();
    let req = json!({
        "envelope_sender": "a@example.com",
        "content": {"from": {"email": "a@example.com"}, "subject": "big", "text_body": "see attached",
                    "attachments": [{"data": attachment, "base64": true, "content_type": "application/octet-stream"}]},
        "recipients": recipients,
    });
    let resp = ok_json(curl_post(&s, &token, req.to_string().as_bytes(), &[]));
    assert_eq!(resp["success_count"].as_u64(), Some(200), "{resp}");
    let grown = peak_rss_kib(s.pid()).saturating_sub(before) / 1024;
    eprintln!("peak RSS grew by {grown} MiB for 200 messages of 1.4 MB");
    // 200 messages of 1.4 MB are 280 MB when one window holds them all (and more while the
    // spool writes them); windows of about 32 MiB hold 23 at a time.
    assert!(grown < 160, "peak RSS grew by {grown} MiB");
    // Output without end: cut at the size limit, that recipient refused, the other stored.
    let req = json!({
        "envelope_sender": "a@example.com",
        "content": "From: a@example.com\nSubject: loop\n\n{% for i in range(100000) %}{{ big }}\n{% endfor %}",
        "recipients": [
            {"email": "huge@example.org", "substitutions": {"big": "y".repeat(900)}},
            {"email": "small@example.org", "substitutions": {"big": ""}},
        ],
    });
    let resp = ok_json(curl_post(&s, &token, req.to_string().as_bytes(), &[]));
    assert_eq!(resp["success_count"].as_u64(), Some(1), "{resp}");
    assert_eq!(resp["failed_recipients"], json!(["huge@example.org"]), "{resp}");
    let error = resp["errors"][0].as_str().unwrap();
    assert!(error.contains("max_message_size"), "{error}");
    s.assert_no_panic();
}
