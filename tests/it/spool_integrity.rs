//! Spool integrity against operator mistakes and bit rot (issue #10): one owner per data dir,
//! damage that costs one record and never the ones after it, versioned records.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn queue_list_offline(cfg: &std::path::Path) -> std::process::Output {
    Command::new(BIN).args(["queue", "list", "--json", "--config"]).arg(cfg).output().unwrap()
}

/// A second `sluice serve` on a data dir in use exits at once, says who holds it, and touches
/// nothing: the first daemon's acknowledged messages are all there after it stops.
#[test]
fn a_second_daemon_on_the_same_data_dir_refuses_to_start_and_touches_nothing() {
    let mut s =
        Sluice::start("[delivery]\nenabled = false\n[spool]\ncheckpoint_interval = \"100ms\"\n");
    let mut ids = Vec::new();
    let mut c = Client::ehlo(s.smtp);
    for i in 0..20 {
        let r = c.send_message(&format!("<two-{i}@t>"), "hello\r\n");
        assert_eq!(code(&r), 250, "{r}");
        ids.push(r.trim().rsplit(' ').next().unwrap().to_string());
    }
    // What the second daemon used to do: delete and rebuild index.redb (a new inode), and
    // delete segments the first one still writes. The first daemon itself checkpoints into the
    // same file meanwhile (every 100 ms here), so the file's inode is compared, not its mtime.
    use std::os::unix::fs::MetadataExt;
    let index = s.data_dir.join("spool/index.redb");
    let inode = std::fs::metadata(&index).unwrap().ino();
    let segments = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        v.sort();
        v
    };
    let segments_before = segments(&s.data_dir);

    let second = Command::new(BIN).args(["serve", "--config"]).arg(&s.config).output().unwrap();
    assert!(!second.status.success(), "the second daemon started");
    let err = String::from_utf8_lossy(&second.stderr);
    let want = format!("data dir {} is in use by pid {}", s.data_dir.display(), s.pid());
    assert!(err.contains(&want), "expected {want:?} in:\n{err}");
    assert_eq!(std::fs::metadata(&index).unwrap().ino(), inode, "the index was recreated");
    assert_eq!(segments(&s.data_dir), segments_before, "segments were added or removed");

    // The offline CLI refuses to read beside the daemon rather than race it.
    let out = queue_list_offline(&s.config);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is in use by pid"));

    // The first daemon kept working, and everything it acknowledged is there after it stops.
    let r = c.send_message("<two-last@t>", "hello\r\n");
    assert_eq!(code(&r), 250, "{r}");
    s.terminate();
    let out = queue_list_offline(&s.config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 21, "{listed}");
    for id in &ids {
        assert!(listed.contains(id.as_str()), "{id} lost");
    }
}

/// The lock dies with its process: a restart after kill -9 is never blocked by a stale file.
#[test]
fn kill_9_leaves_no_lock_behind() {
    let mut s = Sluice::start("[delivery]\nenabled = false\n");
    s.kill9();
    let t = Instant::now();
    s.spawn();
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<after@t>", "x\r\n")), 250);
}

/// Issue #22: damage in a part of the spool the index checkpoint covers is found only when
/// the message is read. It was retried as a temporary failure until `max_age` (logged at INFO,
/// no quarantine copy, the metric at 0). Now it is treated as damage found at start: a copy in
/// quarantine/, an ERROR naming the message, the metric, and a DSN to the sender at once.
#[test]
fn damage_found_on_read_is_quarantined_and_bounced_at_once() {
    use crate::common::sink::{Behavior, Sink};
    let mut b = Behavior::default();
    b.rcpt.insert("slow@example.org".into(), vec!["451 4.2.0 try later".into()]);
    let sink = Sink::start(b);
    let mut s = Sluice::start(&sink.route(""));
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.cmd("MAIL FROM:<sender@example.com>")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<slow@example.org>")), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    let marker = "DAMAGE-ME-0123456789";
    assert_eq!(code(&c.cmd(&format!("Subject: x\r\n\r\n{marker}\r\n."))), 250);
    drop(c);
    // One deferred attempt, then a graceful stop: the checkpoint covers the record.
    s.wait_queue(30, |q| q.iter().any(|m| m["recipients"][0]["attempts"].as_u64() >= Some(1)));
    assert!(s.terminate().success());
    let spool = s.data_dir.join("spool");
    let mut flipped = false;
    for e in std::fs::read_dir(&spool).unwrap() {
        let p = e.unwrap().path();
        let Ok(mut data) = std::fs::read(&p) else { continue };
        if let Some(at) = data.windows(marker.len()).position(|w| w == marker.as_bytes()) {
            data[at] ^= 0x20;
            std::fs::write(&p, data).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "the record was not found in {}", spool.display());
    s.spawn();
    let got = sink.wait_for(1, 30);
    let dsn = String::from_utf8_lossy(&got[0].data).into_owned();
    assert_eq!(got[0].rcpts, ["sender@example.com"], "{dsn}");
    assert!(dsn.contains("5.3.0"), "{dsn}");
    s.wait_queue(30, |q| q.is_empty());
    let log = s.log();
    assert!(log.contains("damaged spool record found on read"), "{log}");
    let quarantined = std::fs::read_dir(spool.join("quarantine")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(quarantined, 1);
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_spool_damaged_records_total 1"), "{m}");
}
