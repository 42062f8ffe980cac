//! One intake for SMTP and HTTP (issue #24): the same message through SMTP AUTH and through
//! HTTP injection for the same tenant is stored alike, counted alike and logged alike; tenants
//! come from credentials (users, tokens) and only trusted origins may declare one in a header.

use std::process::Command;

use crate::common::*;
use base64::Engine;
use serde_json::{Value, json};

/// One raw message, CRLF, with the Date and Message-ID injection would otherwise add.
const MESSAGE: &str = "From: news@sender.example\r\nTo: ann@example.org\r\nDate: Mon, 07 Dec 2026 08:00:00 +0000\r\nMessage-ID: <same@sender.example>\r\nSubject: same\r\n\r\nOne body, two ways in.\r\n";

/// Sluice with delivery off (messages stay queued), the delivery log, no relay networks, and
/// users from `users`.
fn start(users: &std::path::Path, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[delivery]\nenabled = false\n[delivery_log]\nfile = true\n[relay]\nnetworks = {}\n\
         [auth]\nusers_file = \"{}\"\nplaintext_on_loopback = true\n[metrics]\ntenants = [\"acme\"]\n{extra}",
        if extra.contains("#relay-loopback") { "[\"127.0.0.0/8\"]" } else { "[]" },
        users.display()
    ))
}

fn auth_plain(user: &str, pw: &str) -> String {
    let raw = format!("\0{user}\0{pw}");
    format!("AUTH PLAIN {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Sends `message` over SMTP as `user` (AUTH PLAIN) to `rcpt`; the reply to the end of data.
fn smtp_send(s: &Sluice, user: Option<&str>, rcpt: &str, message: &str) -> String {
    let mut c = Client::ehlo(s.smtp);
    if let Some(u) = user {
        assert_eq!(code(&c.cmd(&auth_plain(u, "pw"))), 235);
    }
    assert_eq!(code(&c.cmd("MAIL FROM:<news@sender.example>")), 250);
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    if code(&r) != 250 {
        return r;
    }
    assert_eq!(code(&c.cmd("DATA")), 354);
    c.cmd(&format!("{}.", message))
}

/// The stored record without its `Received:` field (and the field's folded lines).
fn without_received(record: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in record.split_inclusive('\n') {
        if line.starts_with("Received:") {
            skipping = true;
            continue;
        }
        if skipping && (line.starts_with(' ') || line.starts_with('\t')) {
            continue;
        }
        skipping = false;
        out.push_str(line);
    }
    out
}

fn metric(s: &Sluice, series: &str) -> Option<f64> {
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    m.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn receptions(s: &Sluice, n: usize) -> Vec<Value> {
    let events = s.delivery_log(n);
    events.into_iter().filter(|e| e["event"] == "reception").collect()
}

#[test]
fn smtp_and_http_store_count_and_log_the_same_message_alike() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users.toml");
    add_user_with(&users, "app@sender.example", "pw", &["--tenant", "acme"]);
    let s = start(&users, "");
    let token = s.token_with("acme-api", &["--scope", "inject", "--tenant", "acme"]);

    let reply = smtp_send(&s, Some("app@sender.example"), "ann@example.org", MESSAGE);
    assert_eq!(code(&reply), 250, "{reply}");
    let smtp_id = reply.split_whitespace().last().unwrap().to_string();
    let (status, body) = s.agent_post_json(
        "/api/inject/v1",
        &token,
        &json!({"envelope_sender": "news@sender.example", "content": MESSAGE,
                "recipients": [{"email": "ann@example.org"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let resp: Value = serde_json::from_str(&body).unwrap();
    let http_id = resp["messages"][0]["id"].as_str().unwrap().to_string();

    let (smtp, http) = (s.queue_cat(&smtp_id), s.queue_cat(&http_id));
    assert_ne!(smtp, http, "the Received fields name their protocols and ids");
    assert_eq!(without_received(&smtp), without_received(&http));
    assert!(smtp.contains("ESMTPA") && http.contains("with HTTP"), "{smtp}\n{http}");

    for listener in ["smtp", "inject"] {
        let series =
            format!("sluice_messages_received_total{{listener=\"{listener}\",tenant=\"acme\"}}");
        assert_eq!(metric(&s, &series), Some(1.0), "{series}");
    }
    let events = receptions(&s, 2);
    assert_eq!(events.len(), 2, "{events:?}");
    let keys = |e: &Value| {
        let mut k: Vec<String> = e.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&events[0]), keys(&events[1]), "{events:?}");
    for e in &events {
        assert_eq!(e["tenant"], "acme", "{e}");
        assert_eq!(e["recipients"], json!(["ann@example.org"]), "{e}");
        assert_eq!(e["sender"], "news@sender.example", "{e}");
    }
    assert_eq!(
        (&events[0]["listener"], &events[1]["listener"]),
        (&json!("smtp"), &json!("inject"))
    );
    s.assert_no_panic();
}

#[test]
fn a_token_bound_to_a_tenant_cannot_send_for_another() {
    let users_dir = tempfile::tempdir().unwrap();
    let s = start(&users_dir.path().join("users.toml"), "");
    let bound = s.token_with("acme-api", &["--scope", "inject", "--tenant", "acme"]);
    let free = s.inject_token("any");
    let req = |tenant: Option<&str>| {
        let mut r = json!({"envelope_sender": "news@sender.example", "content": MESSAGE,
                           "recipients": [{"email": "ann@example.org"}]});
        if let Some(t) = tenant {
            r["tenant"] = json!(t);
        }
        r
    };
    let (status, body) = s.agent_post_json("/api/inject/v1", &bound, &req(Some("globex")));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not send for \"globex\""), "{body}");
    // Without a tenant the token's own is used; the same request with an unbound token goes
    // under the tenant it names.
    let (status, body) = s.agent_post_json("/api/inject/v1", &bound, &req(None));
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.agent_post_json("/api/inject/v1", &free, &req(Some("globex")));
    assert_eq!(status, 200, "{body}");
    let events = receptions(&s, 2);
    let tenants: Vec<&Value> = events.iter().map(|e| &e["tenant"]).collect();
    assert_eq!(tenants, [&json!("acme"), &json!("globex")], "{events:?}");
    s.assert_no_panic();
}

/// A user bound to a tenant: its SMTP mail is logged under the tenant and its recipients are
/// checked against the tenant's suppression entries (another user's mail is not). Only relay
/// networks may name a tenant in `X-Sluice-Tenant`, and the header never reaches the queue.
#[test]
fn a_tenant_users_smtp_mail_is_suppressed_and_logged_under_its_tenant() {
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users.toml");
    add_user_with(&users, "acme-app", "pw", &["--tenant", "acme"]);
    add_user_with(&users, "other-app", "pw", &[]);
    let s = start(&users, "#relay-loopback\n");
    let (status, body) = s.agent_post_json(
        "/api/suppression",
        &s.admin_token(),
        &json!({"address": "gone@example.org", "tenant": "acme"}),
    );
    assert!(status == 200 || status == 201, "{status} {body}");

    let r = smtp_send(&s, Some("acme-app"), "gone@example.org", MESSAGE);
    assert!(r.starts_with("550 5.7.1") && r.contains("suppression list"), "{r}");
    let r = smtp_send(&s, Some("other-app"), "gone@example.org", MESSAGE);
    assert_eq!(code(&r), 250, "acme's entry is not global: {r}");
    let r = smtp_send(&s, Some("acme-app"), "ann@example.org", MESSAGE);
    assert_eq!(code(&r), 250, "{r}");

    // From a relay network the header names the tenant: the message is checked against
    // acme's list after DATA (every recipient suppressed: refused) ...
    let tagged = format!("X-Sluice-Tenant: acme\r\nX-Sluice-Campaign: winter\r\n{MESSAGE}");
    let r = smtp_send(&s, None, "gone@example.org", &tagged);
    assert!(r.starts_with("550 5.7.1") && r.contains("suppression list"), "{r}");
    // ... and stored under acme without the header. An authenticated user bound to no tenant
    // cannot use the header from outside the relay networks (here every client is inside, so
    // the user's binding decides: acme-app's mail stays acme's whatever the header says).
    let r = smtp_send(&s, None, "bob@example.org", &tagged);
    assert_eq!(code(&r), 250, "{r}");
    let id = r.split_whitespace().last().unwrap();
    let stored = s.queue_cat(id);
    assert!(!stored.contains("X-Sluice-"), "{stored}");
    let spoof = format!("X-Sluice-Tenant: globex\r\n{MESSAGE}");
    let r = smtp_send(&s, Some("acme-app"), "carl@example.org", &spoof);
    assert_eq!(code(&r), 250, "{r}");

    let events = receptions(&s, 4);
    let got: Vec<(Value, Value, Value)> = events
        .iter()
        .map(|e| (e["recipients"][0].clone(), e["tenant"].clone(), e["campaign"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!("gone@example.org"), Value::Null, Value::Null),
            (json!("ann@example.org"), json!("acme"), Value::Null),
            (json!("bob@example.org"), json!("acme"), json!("winter")),
            (json!("carl@example.org"), json!("acme"), Value::Null),
        ],
        "{events:?}"
    );
    s.assert_no_panic();
}

/// The memory budget covers injected messages from rendering to the commit: a request whose
/// messages would exceed it is refused (503, try again), and the budget is whole afterwards.
#[test]
fn an_injection_over_the_memory_budget_is_refused() {
    let users_dir = tempfile::tempdir().unwrap();
    let s = start(
        &users_dir.path().join("users.toml"),
        "[limits]\nmemory_budget = \"1MiB\"\n[inject]\nmax_request_size = \"8MiB\"\n",
    );
    let token = s.inject_token("big");
    let line = format!("{}\r\n", "x".repeat(998));
    let big = format!("Subject: big\r\n\r\n{}", line.repeat(2100));
    let (status, body) = s.agent_post_json(
        "/api/inject/v1",
        &token,
        &json!({"envelope_sender": "a@sender.example", "content": big,
                "recipients": [{"email": "ann@example.org"}]}),
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("short of memory"), "{body}");
    assert_eq!(metric(&s, "sluice_memory_budget_used_bytes"), Some(0.0));
    let (status, body) = s.agent_post_json(
        "/api/inject/v1",
        &token,
        &json!({"envelope_sender": "a@sender.example", "content": MESSAGE,
                "recipients": [{"email": "ann@example.org"}]}),
    );
    assert_eq!(status, 200, "a small one fits: {body}");
    s.assert_no_panic();
}

/// Quotas: a user's messages per hour (set by `sluice user limit`) and a tenant's (from
/// `[tenant.NAME]`): message N+1 of the hour gets 452 4.7.1 at MAIL over SMTP and 429 with
/// Retry-After over HTTP, and still does after a restart (the counters are in the data dir).
#[test]
fn quotas_refuse_message_n_plus_one_also_after_a_restart() {
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users.toml");
    add_user_with(&users, "app", "pw", &[]);
    let out = Command::new(BIN)
        .args(["user", "limit", "app", "--max-messages-per-hour", "2", "--config"])
        .arg(users_dir.path().join("user-cli.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut s = start(&users, "[tenant.acme]\nmax_messages_per_hour = 2\n");
    let token = s.token_with("acme-api", &["--scope", "inject", "--tenant", "acme"]);
    let inject = |s: &Sluice, rcpts: &[&str]| {
        let rcpts: Vec<Value> = rcpts.iter().map(|r| json!({"email": r})).collect();
        let req = json!({"envelope_sender": "news@sender.example", "content": MESSAGE,
                         "recipients": rcpts});
        let mut resp = s
            .agent
            .post(&format!("http://{}/api/inject/v1", s.admin))
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(req.to_string())
            .unwrap();
        let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        (resp.status().as_u16(), retry, resp.body_mut().read_to_string().unwrap_or_default())
    };
    let mail_reply = |s: &Sluice| {
        let mut c = Client::ehlo(s.smtp);
        assert_eq!(code(&c.cmd(&auth_plain("app", "pw"))), 235);
        c.cmd("MAIL FROM:<news@sender.example>")
    };
    for _ in 0..2 {
        let r = smtp_send(&s, Some("app"), "ann@example.org", MESSAGE);
        assert_eq!(code(&r), 250, "{r}");
    }
    let r = mail_reply(&s);
    assert!(r.starts_with("452 4.7.1") && r.contains("2 messages per hour"), "{r}");
    let (status, _, body) = inject(&s, &["a@example.org", "b@example.org"]);
    assert_eq!(status, 200, "{body}");
    let (status, retry, body) = inject(&s, &["c@example.org"]);
    assert_eq!(status, 429, "{body}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");

    s.terminate();
    s.spawn();
    let r = mail_reply(&s);
    assert!(r.starts_with("452 4.7.1"), "the count survived the restart: {r}");
    let (status, _, body) = inject(&s, &["c@example.org"]);
    assert_eq!(status, 429, "the count survived the restart: {body}");

    // And a kill -9, once the counters are saved (every second): the event is quotas.json
    // holding both full hours (2 messages at 1,800 s each put the bucket an hour ahead).
    let file = s.data_dir.join("quotas.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let saved: Value = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let full = |who: &str| saved[who]["messages"].as_f64().is_some_and(|t| t > now + 3000.0);
        if full("user app") && full("tenant acme") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counters never saved: {saved}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    s.kill9();
    s.spawn();
    let r = mail_reply(&s);
    assert!(r.starts_with("452 4.7.1"), "the count survived kill -9: {r}");
    let (status, _, body) = inject(&s, &["c@example.org"]);
    assert_eq!(status, 429, "the count survived kill -9: {body}");
    // Another user and an untagged injection are not limited.
    let (status, _, body) = {
        let free = s.inject_token("free");
        let req = json!({"envelope_sender": "news@sender.example", "content": MESSAGE,
                         "recipients": [{"email": "d@example.org"}]});
        let (st, b) = s.agent_post_json("/api/inject/v1", &free, &req);
        (st, (), b)
    };
    assert_eq!(status, 200, "{body}");
    s.assert_no_panic();
}

/// `[tenant.NAME] max_sessions`: a tenant's users hold at most that many SMTP sessions at
/// once; one more gets 454 4.7.0 at AUTH (valid credentials, try later), and a session that
/// ends gives its place back before its 221.
#[test]
fn a_tenants_sessions_are_capped_at_auth() {
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users.toml");
    add_user_with(&users, "acme-app", "pw", &["--tenant", "acme"]);
    add_user_with(&users, "other", "pw", &[]);
    let s = start(&users, "[tenant.acme]\nmax_sessions = 1\n");
    let mut first = Client::ehlo(s.smtp);
    assert_eq!(code(&first.cmd(&auth_plain("acme-app", "pw"))), 235);
    let mut second = Client::ehlo(s.smtp);
    let r = second.cmd(&auth_plain("acme-app", "pw"));
    assert!(r.starts_with("454 4.7.0") && r.contains("tenant acme: 1 sessions"), "{r}");
    let mut untenanted = Client::ehlo(s.smtp);
    assert_eq!(code(&untenanted.cmd(&auth_plain("other", "pw"))), 235, "not acme's");
    assert_eq!(code(&first.cmd("QUIT")), 221);
    let mut third = Client::ehlo(s.smtp);
    assert_eq!(code(&third.cmd(&auth_plain("acme-app", "pw"))), 235, "the place was given back");
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("sluice_quota_refused_total{limit=\"max_sessions\",tenant=\"acme\"} 1"),
        "{m}"
    );
    s.assert_no_panic();
}
