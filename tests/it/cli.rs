//! The command line: --version, check-config, queue list/show/stats online and offline.

use std::process::Command;

use crate::common::*;

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn version_and_help() {
    let out = sluice(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
    for cmd in [
        &["--help"][..],
        &["serve", "--help"],
        &["queue", "list", "--help"],
        &["check-config", "--help"],
    ] {
        let out = sluice(cmd);
        assert!(out.status.success() && !out.stdout.is_empty(), "{cmd:?}");
    }
}

#[test]
fn check_config_accepts_the_example_and_names_file_line_key_on_errors() {
    let example = repo_root().join("config/sluice.toml");
    let out = sluice(&["check-config", example.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "hostname = \"x\"\n\n[limits]\nmax_recipients = \"many\"\n").unwrap();
    let out = sluice(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("line 4") && err.contains("max_recipients"),
        "{err}"
    );
}

#[test]
fn queue_commands_online_and_offline() {
    let mut s = Sluice::start("");
    let r = Client::ehlo(s.smtp).send_message("<cli@t>", "x\r\n");
    let id = r.trim().rsplit(' ').next().unwrap().to_string();
    let cfg = s.config.to_str().unwrap().to_string();
    let admin = s.admin.to_string();
    let out = sluice(&["queue", "show", &id, "--config", &cfg, "--admin", &admin]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["message_id"], "<cli@t>");
    for key in ["id", "message_id", "sender", "recipients", "size", "received_at"] {
        assert!(!shown[key].is_null(), "{key} missing in {shown}");
    }
    for key in ["address", "state", "attempts", "next_attempt", "last_reply"] {
        assert!(shown["recipients"][0].get(key).is_some(), "{key} missing");
    }
    let out = sluice(&["queue", "stats", "--config", &cfg, "--admin", &admin]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["messages"], 1);
    let out = sluice(&["queue", "list", "--config", &cfg, "--admin", &admin]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let online = sluice(&["queue", "cat", &id, "--config", &cfg, "--admin", &admin]);
    assert!(online.status.success(), "{}", String::from_utf8_lossy(&online.stderr));
    assert!(online.stdout.starts_with(b"Received: from client.test"));
    assert!(online.stdout.ends_with(b"Message-ID: <cli@t>\r\n\r\nx\r\n"));
    // With the daemon stopped, the CLI reads the spool directly.
    s.terminate();
    let out = sluice(&["queue", "list", "--json", "--config", &cfg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("<cli@t>"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading the spool"));
    // The same offline, with the data dir given on the command line (moved elsewhere).
    let moved = s.dir.path().join("moved");
    std::fs::rename(&s.data_dir, &moved).unwrap();
    let data_dir = moved.to_str().unwrap();
    let out = sluice(&["queue", "cat", &id, "--config", &cfg, "--data-dir", data_dir]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, online.stdout);
    let out = sluice(&["queue", "list", "--json", "--config", &cfg, "--data-dir", data_dir]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("<cli@t>"));
}
