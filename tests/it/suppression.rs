//! The suppression list end to end: hard bounces feed it, RCPT from trusted clients is refused,
//! and `sluice suppression` manages it with and without a running daemon.

use std::process::Command;

use crate::common::sink::{Behavior, Sink};
use crate::common::*;

fn cli(s: &Sluice, args: &[&str], daemon: bool) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("suppression").args(args).arg("--config").arg(&s.config);
    if daemon {
        cmd.arg("--admin").arg(s.admin.to_string());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "sluice suppression {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// RCPT TO for `rcpt` in a fresh session from loopback (a relay network: trusted).
fn rcpt_reply(s: &Sluice, rcpt: &str) -> String {
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), 250);
    c.cmd(&format!("RCPT TO:<{rcpt}>"))
}

#[test]
fn a_hard_bounce_suppresses_the_recipient_and_a_full_mailbox_does_not() {
    let mut b = Behavior::default();
    b.rcpt.insert("gone@example.org".into(), vec!["550 5.1.1 no such user".into()]);
    b.rcpt.insert("full@example.org".into(), vec!["552 5.2.2 mailbox full".into()]);
    let sink = Sink::start(b);
    let s = Sluice::start(&sink.route(""));
    for rcpt in ["gone@example.org", "full@example.org"] {
        let r = Client::ehlo(s.smtp).send_message_to("<m@t>", rcpt, "x\r\n");
        assert_eq!(code(&r), 250, "{r}");
    }
    // Both bounced (their DSNs reached the sink) once the queue is empty; the suppression entry
    // is written before the message leaves the spool.
    s.wait_queue(20, |q| q.is_empty());
    let refused = rcpt_reply(&s, "Gone@Example.org");
    assert!(
        refused.starts_with(
            "550 5.7.1 Gone@Example.org is on the suppression list (invalid_recipient since 20"
        ),
        "{refused}"
    );
    assert_eq!(
        code(&rcpt_reply(&s, "full@example.org")),
        250,
        "quota is not a hard bounce by default"
    );
    let log = s.delivery_log(1);
    let suppressed: Vec<_> = log.iter().filter(|e| e["event"] == "suppressed").collect();
    assert_eq!(suppressed.len(), 1, "{log:?}");
    assert_eq!(suppressed[0]["recipient"], "gone@example.org");
    assert_eq!(suppressed[0]["category"], "invalid_recipient");
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_suppression_entries 1"), "{m}");
    assert!(m.contains("sluice_suppressed_total{where=\"rcpt\"} 1"), "{m}");
    assert!(m.contains("sluice_smtp_rejections_total{reason=\"suppressed\"} 1"), "{m}");
    let listed = cli(&s, &["list"], true);
    assert!(
        listed.contains("gone@example.org") && listed.contains("invalid_recipient"),
        "{listed}"
    );
}

#[test]
fn cli_manages_the_list_with_and_without_the_daemon() {
    let mut s = Sluice::start("");
    let out = cli(&s, &["add", "Unsub@example.org", "--reason", "unsubscribe"], true);
    assert!(out.contains("\"added\":1"), "{out}");
    assert!(rcpt_reply(&s, "unsub@example.org").starts_with("550 5.7.1"));
    // A tenant's entry does not refuse SMTP mail, which carries no tenant at RCPT.
    cli(&s, &["add", "tenant-only@example.org", "--tenant", "acme"], true);
    assert_eq!(code(&rcpt_reply(&s, "tenant-only@example.org")), 250);
    let csv = cli(&s, &["export"], true);
    assert!(csv.starts_with("address,tenant,reason,time\n"), "{csv}");
    assert!(csv.contains("unsub@example.org,,unsubscribe,"), "{csv}");
    assert!(csv.contains("tenant-only@example.org,acme,manual,"), "{csv}");
    cli(&s, &["remove", "unsub@example.org"], true);
    assert_eq!(code(&rcpt_reply(&s, "unsub@example.org")), 250, "removed");

    // Offline: the list file itself, under the data dir's shared lock.
    s.terminate();
    let file = s.dir.path().join("import.txt");
    std::fs::write(&file, "one@example.org\ntwo@example.org\n# comment\n\nthree@example.org\n")
        .unwrap();
    let out = cli(&s, &["import", file.to_str().unwrap(), "--tenant", "acme"], false);
    assert!(out.contains("\"imported\":3"), "{out}");
    let offline = cli(&s, &["export", "--tenant", "acme"], false);
    assert_eq!(offline.lines().count(), 1 + 4, "{offline}");
    // Round trip: the export imports into another data dir unchanged.
    let other = tempfile::tempdir().unwrap();
    let exported = s.dir.path().join("export.csv");
    std::fs::write(&exported, cli(&s, &["export"], false)).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("suppression")
            .args(args)
            .arg("--config")
            .arg(&s.config)
            .arg("--data-dir")
            .arg(other.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["import", exported.to_str().unwrap()]);
    let strip_time = |csv: &str| {
        let mut l: Vec<String> =
            csv.lines().map(|l| l.rsplit_once(',').map_or(l, |x| x.0).to_string()).collect();
        l.sort();
        l
    };
    assert_eq!(
        strip_time(&run(&["export"])),
        strip_time(&std::fs::read_to_string(&exported).unwrap())
    );

    // The daemon picks the offline changes up at start.
    s.spawn();
    let listed = cli(&s, &["list", "--tenant", "acme"], true);
    assert!(
        listed.contains("three@example.org") && listed.ends_with("4 address(es)\n"),
        "{listed}"
    );
}
