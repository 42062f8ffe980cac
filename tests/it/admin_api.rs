//! The admin API may be used by its operator only (issue #11): a bearer token for everything but
//! /health (and /metrics by default), a Host that names the listener (DNS rebinding), no
//! cross-origin form posts, scoped tokens. Driven with curl, a client nobody here wrote.

use std::process::Command;

use crate::common::*;

/// `curl` with extra arguments; returns the HTTP status.
fn curl(args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn the_admin_api_needs_a_token_a_host_of_its_own_and_no_form_posts_get_through() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let s = Sluice::start("[delivery]\nenabled = false\n");
    let token = s.admin_token();
    assert_eq!(token.len(), 64);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.data_dir.join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let r = Client::ehlo(s.smtp).send_message("<admin-api@t>", "secret content\r\n");
    let id = r.trim().rsplit(' ').next().unwrap().to_string();
    let base = format!("http://{}", s.admin);
    let bearer = format!("Authorization: Bearer {token}");
    let message = format!("{base}/api/queue/{id}/message");

    // Open: health, and metrics by default.
    assert_eq!(curl(&[&format!("{base}/health")]), 200);
    assert_eq!(curl(&[&format!("{base}/metrics")]), 200);
    // No token, a wrong one: 401. The right one: 200.
    assert_eq!(curl(&[&message]), 401);
    assert_eq!(curl(&["-H", "Authorization: Bearer 0123", &message]), 401);
    assert_eq!(curl(&["-H", &bearer, &message]), 200);
    // DNS rebinding: a page on attacker.example resolving to 127.0.0.1 sends its own Host.
    assert_eq!(curl(&["-H", &bearer, "-H", "Host: attacker.example", &message]), 421);
    assert_eq!(curl(&["-H", "Host: attacker.example", &format!("{base}/health")]), 421);
    // A cross-origin form post cannot carry the token: refused, nothing changed.
    let form = [
        "-X",
        "POST",
        "-H",
        "Origin: http://attacker.example",
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "--data",
        "x=1",
    ];
    assert_eq!(curl(&[&form[..], &[&format!("{base}/api/queue/{id}/bounce")]].concat()), 401);
    assert_eq!(curl(&[&["-X", "DELETE"][..], &[&format!("{base}/api/queue/{id}")]].concat()), 401);
    assert_eq!(s.queue_list().len(), 1, "the message was bounced or deleted without a token");
    // State changes are POST/DELETE only: a GET (an <img> tag) changes nothing.
    assert_eq!(curl(&["-H", &bearer, &format!("{base}/api/queue/flush")]), 405);

    // A named token of scope inject, made by the CLI while the daemon runs: the token is the
    // last word of the output, only its hash is stored, and it cannot read the queue.
    let inject = s.inject_token("campaigns");
    let stored = std::fs::read_to_string(s.data_dir.join("tokens.toml")).unwrap();
    assert!(!stored.contains(&inject) && stored.contains("campaigns"), "{stored}");
    assert_eq!(curl(&["-H", &format!("Authorization: Bearer {inject}"), &message]), 403);

    // The CLI finds the admin token by itself.
    let out = Command::new(BIN)
        .args(["queue", "cat", &id, "--config"])
        .arg(&s.config)
        .args(["--admin", &s.admin.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("secret content"));
}

/// `check-config` (and the start-up log) warn when the admin API leaves loopback.
#[test]
fn a_non_loopback_admin_address_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[admin]\naddress = \"0.0.0.0:8025\"\n").unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&cfg).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("not loopback"), "{err}");
}

/// Tokens for scrapers (issue #29): a `metrics` token reads `/metrics` (when it needs a token)
/// and nothing else; `sluice token list` shows names and scopes, never secrets or hashes;
/// `sluice token revoke` takes effect at the daemon's next request, without a restart.
#[test]
fn a_metrics_token_scrapes_only_and_a_revoked_token_is_refused_at_once() {
    let mut s = Sluice::start("");
    // The harness writes the [admin] table itself: add the key there and restart.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("[admin]\n", "[admin]\nmetrics_need_token = true\n"))
        .unwrap();
    s.terminate();
    s.spawn();
    let scraper = s.token_with("prometheus", &["--scope", "metrics"]);
    let inject = s.inject_token("campaigns");
    let url = |path: &str| format!("http://{}{path}", s.admin);
    let get = |token: &str, path: &str| {
        curl(&["-H", &format!("Authorization: Bearer {token}"), &url(path)])
    };
    assert_eq!(curl(&[&url("/metrics")]), 401, "metrics need a token here");
    assert_eq!(get(&scraper, "/metrics"), 200);
    assert_eq!(get(&scraper, "/api/queue"), 403);
    assert_eq!(get(&scraper, "/api/queue/stats"), 403);
    assert_eq!(get(&inject, "/metrics"), 403, "an inject token does not scrape");

    let cli = |args: &[&str]| {
        let out = Command::new(BIN).args(args).arg("--config").arg(&s.config).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, list) = cli(&["token", "list"]);
    assert!(ok, "{list}");
    assert!(list.contains("prometheus") && list.contains("metrics"), "{list}");
    assert!(list.contains("campaigns") && list.contains("inject"), "{list}");
    assert!(!list.contains(&scraper) && !list.contains(&inject), "secrets listed: {list}");
    let stored = std::fs::read_to_string(s.data_dir.join("tokens.toml")).unwrap();
    let hash = stored.lines().find(|l| l.starts_with("sha256")).unwrap();
    let hash = hash.split('"').nth(1).unwrap();
    assert!(!list.contains(hash), "hashes listed: {list}");

    assert!(cli(&["token", "revoke", "prometheus"]).0);
    assert_eq!(get(&scraper, "/metrics"), 401, "revoked without a restart");
    assert_eq!(get(&inject, "/api/queue"), 403, "the other token is untouched");
    assert!(!cli(&["token", "revoke", "prometheus"]).0, "revoking twice is an error");
    s.assert_no_panic();
}
