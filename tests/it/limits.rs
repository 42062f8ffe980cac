//! Connection limits and timeouts over real sockets (RFC 5321 4.5.3.2, 3.8).

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn too_many_sessions_from_one_ip_get_421() {
    let s = Sluice::start("[limits]\nmax_sessions_per_ip = 3\nexempt_relay_networks = false\n");
    let mut open: Vec<Client> = (0..3).map(|_| Client::connect(s.smtp)).collect();
    for c in &mut open {
        assert_eq!(code(&c.reply().unwrap()), 220);
    }
    let mut fourth = Client::connect(s.smtp);
    let r = fourth.reply().unwrap();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(fourth.closed());
    // A slot frees up when a session ends: before its 221 is sent, so no waiting is needed.
    assert_eq!(code(&open.pop().unwrap().cmd("QUIT")), 221);
    let mut again = Client::connect(s.smtp);
    assert_eq!(code(&again.reply().unwrap()), 220);
    let (_, m) = s.http_get("/metrics");
    assert!(
        String::from_utf8(m)
            .unwrap()
            .contains("sluice_smtp_connections_refused_total{reason=\"max_sessions_per_ip\"} 1")
    );
}

/// Injectors that send one message per connection and reconnect at once (Postfix's
/// `smtp-source -s N`) are never refused: the slot is released before the 221, not when the
/// connection's task has wound down.
#[test]
fn a_client_that_reconnects_right_after_quit_finds_its_slot_free() {
    let s = Sluice::start(
        "[delivery]\nenabled = false\n[limits]\nmax_sessions_per_ip = 1\nexempt_relay_networks = false\nmax_connection_rate_per_ip = \"100000/m\"\n",
    );
    for i in 0..100 {
        let mut c = Client::connect(s.smtp);
        let greeting = c.reply().unwrap();
        assert_eq!(code(&greeting), 220, "round {i}: {greeting}");
        assert_eq!(code(&c.cmd("EHLO client.test")), 250);
        assert_eq!(code(&c.send_message(&format!("<re{i}@t>"), "x\r\n")), 250);
        assert_eq!(code(&c.cmd("QUIT")), 221);
    }
}

/// Relay networks are trusted injectors: by default they are not held to `max_sessions_per_ip`.
#[test]
fn relay_networks_are_exempt_from_the_per_ip_limit_by_default() {
    let s = Sluice::start("[limits]\nmax_sessions_per_ip = 2\n");
    let mut open: Vec<Client> = (0..6).map(|_| Client::connect(s.smtp)).collect();
    for c in &mut open {
        assert_eq!(code(&c.reply().unwrap()), 220);
    }
}

#[test]
fn too_many_sessions_in_total_get_421() {
    let s = Sluice::start("[limits]\nmax_sessions = 2\n");
    let mut a = Client::connect(s.smtp);
    let mut b = Client::connect(s.smtp);
    a.reply();
    b.reply();
    let mut c = Client::connect(s.smtp);
    let r = c.reply().unwrap();
    assert!(r.starts_with("421 4.3.2"), "{r}");
}

#[test]
fn idle_session_is_closed_after_its_timeout() {
    let s = Sluice::start("[limits]\ncommand_timeout = \"1s\"\ndata_timeout = \"1s\"\n");
    let mut c = Client::connect(s.smtp);
    c.reply();
    let t = Instant::now();
    let r = c.reply().unwrap();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.closed());
    assert!(t.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", t.elapsed());
    // A stalled DATA is timed out too, and the partial message is not queued.
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(c.start_data(), 354);
    c.send(b"Subject: half a message\r\n").unwrap();
    let r = c.reply().unwrap();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(s.queue_list().is_empty());
}

#[test]
fn graceful_shutdown_answers_421_and_keeps_committed_mail() {
    let mut s = Sluice::start("");
    let mut idle = Client::ehlo(s.smtp);
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<before-stop@t>", "x\r\n")), 250);
    let status = s.terminate();
    assert!(status.success(), "{status}");
    let r = idle.reply().unwrap();
    assert!(r.starts_with("421 4.3.0"), "{r}");
    assert!(s.log().contains("stopped"));
    // Restart: the message acknowledged before the stop is still queued.
    s.spawn();
    let list = s.queue_list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["message_id"], "<before-stop@t>");
}

/// DESIGN.md invariant 5: bodies in flight share one budget; past it 452 4.3.1, then life goes on.
#[test]
fn memory_budget_refuses_with_452_and_recovers() {
    let s = Sluice::start("[limits]\nmemory_budget = \"1MiB\"\n");
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(c.start_data(), 354);
    let line = format!("{}\r\n", "m".repeat(998));
    for _ in 0..3000 {
        c.send(line.as_bytes()).unwrap();
    }
    let r = c.cmd(".");
    assert!(r.starts_with("452 4.3.1"), "{r}");
    // The budget is released: a normal message right after is accepted.
    assert_eq!(code(&c.send_message("<small@t>", "x\r\n")), 250);
    let list = s.queue_list();
    assert_eq!(list.len(), 1);
    let (_, m) = s.http_get("/metrics");
    assert!(String::from_utf8(m).unwrap().contains("sluice_memory_budget_exceeded_total 1"));
}

/// DESIGN.md invariant 5: a body waiting for its group commit stays charged to the memory
/// budget, so a slow disk turns into 452s for new mail, not into RAM. The disk is made slow with
/// a test hook (the commit thread waits 3 s before each batch).
#[test]
fn bodies_waiting_for_their_commit_stay_charged_to_the_memory_budget() {
    if !test_hooks_built() {
        return;
    }
    let s = Sluice::start_with_env(
        "[delivery]\nenabled = false\n[limits]\nmemory_budget = \"100KiB\"\n",
        &[("SLUICE_TEST_COMMIT_DELAY_MS", "3000")],
    );
    let body = format!("{}\r\n", "w".repeat(998)).repeat(80); // 80 KB
    let mut a = Client::ehlo(s.smtp);
    assert_eq!(a.start_data(), 354);
    a.send(format!("Message-ID: <waiting@t>\r\n\r\n{body}.\r\n").as_bytes()).unwrap();
    // The event: A's body is in memory, waiting for the (slow) commit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = s.http_get("/metrics");
        let m = String::from_utf8(m).unwrap();
        let used: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("sluice_memory_budget_used_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if used >= 80_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the body was never charged: {used}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut b = Client::ehlo(s.smtp);
    let r = b.send_message("<second@t>", &body);
    assert!(r.starts_with("452 4.3.1"), "B was accepted while A's body waited uncharged: {r}");
    assert_eq!(code(&a.reply().unwrap()), 250, "A is acknowledged once durable");
}

/// DESIGN.md invariant 6: a full disk gives 452 4.3.1 to new mail; accepted mail is untouched.
#[test]
fn full_disk_gives_452_and_keeps_accepted_mail() {
    full_disk("portable");
}

/// The same through the io_uring writer, whose failure path (a short or failed write with a
/// second batch in flight behind it) is its own code.
#[test]
fn full_disk_gives_452_and_keeps_accepted_mail_io_uring() {
    full_disk("io_uring");
}

/// A small tmpfs of `size` for full-disk tests (root only; under CI its absence fails the test).
/// Unmounted when the guard drops.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mnt: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the full-disk test needs root under CI"
            );
            eprintln!("SKIPPED: full-disk test needs root (tmpfs mount)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("small");
        std::fs::create_dir_all(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs failed");
        Some(SmallDisk { _dir: dir, mnt })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn segments(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("seg-"))
        .count()
}

/// Once `min_free_space` trips (452 4.3.1), freeing space is noticed without a restart and
/// without any other write: the free space is measured again while it is tripped.
#[test]
fn freed_space_is_noticed_without_a_restart() {
    let Some(disk) = SmallDisk::mount("20m") else { return };
    let mnt = disk.mnt.clone();
    let s = Sluice::start_in(
        tempfile::tempdir().unwrap(),
        mnt.join("data"),
        "[delivery]\nenabled = false\n[spool]\nmin_free_space = \"8MiB\"\n",
        &[],
    );
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.send_message("<before@t>", "x\r\n")), 250);
    std::fs::write(mnt.join("ballast"), vec![1u8; 14 << 20]).unwrap();
    // The next commit measures the space left; the one after it is refused.
    let tripped = (0..3).map(|i| c.send_message(&format!("<trip{i}@t>"), "x\r\n")).last().unwrap();
    assert!(tripped.starts_with("452 4.3.1"), "{tripped}");
    std::fs::remove_file(mnt.join("ballast")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.send_message("<after@t>", "x\r\n");
        if code(&r) == 250 {
            break;
        }
        assert!(r.starts_with("452 4.3.1"), "{r}");
        assert!(Instant::now() < deadline, "still refusing 15 s after space was freed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn full_disk(writer: &str) {
    let Some(disk) = SmallDisk::mount("6m") else { return };
    let mnt = disk.mnt.clone();
    // Ballast, removed later to make room for the restart.
    std::fs::write(mnt.join("ballast"), vec![0u8; 1 << 20]).unwrap();
    let mut s = Sluice::start_in(
        tempfile::tempdir().unwrap(),
        mnt.join("data"),
        &format!("[spool]\nmin_free_space = 0\nwriter = \"{writer}\"\n"),
        &[],
    );
    assert!(
        s.log().contains(&format!("writer=\"{writer}\""))
            || s.log().contains(&format!("writer={writer}")),
        "{}",
        s.log()
    );
    let mut c = Client::ehlo(s.smtp);
    let body = format!("{}\r\n", "d".repeat(998)).repeat(100);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let r = c.send_message(&format!("<full{i}@t>"), &body);
        match code(&r) {
            250 => acked.push(format!("<full{i}@t>")),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("the disk never filled up");
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    assert!(!acked.is_empty());
    // More mail while the disk stays full: each is refused, without a new segment (or an
    // ERROR line) per failed batch. The line repeats every 10 s of the episode at most.
    let episode = Instant::now();
    for i in 0..100 {
        let r = Client::ehlo(s.smtp).send_message(&format!("<more{i}@t>"), &body);
        assert!(r.starts_with("452 4.3.1"), "{r}");
    }
    let spool = mnt.join("data/spool");
    assert!(segments(&spool) <= 3, "{} segments after a full disk", segments(&spool));
    let errors = s.log().matches("spool commit failed").count() as u64;
    let allowed = 2 + episode.elapsed().as_secs() / 10;
    assert!((1..=allowed).contains(&errors), "{errors} ERROR lines for one full-disk episode");
    s.kill9();
    std::fs::remove_file(mnt.join("ballast")).unwrap();
    s.spawn();
    let queued: Vec<String> =
        s.queue_list().iter().map(|m| m["message_id"].as_str().unwrap().to_string()).collect();
    for id in &acked {
        assert!(queued.contains(id), "{id} was acknowledged but is gone");
    }
    assert_eq!(queued.len(), acked.len(), "only acknowledged messages are queued");
    assert!(segments(&spool) <= 3, "empty segments are removed at start");
}

/// Slowloris: 500 connections trickling one byte every 0.5 s do not stop a normal client, and
/// each is closed when its command has not arrived whole within `command_timeout` (2 s): bytes
/// of a partial line do not extend it. With a per-read timeout they would live forever.
#[test]
fn slowloris_connections_are_timed_out_and_do_not_block_others() {
    use std::io::{Read, Write};
    let s = Sluice::start(
        "[limits]\ncommand_timeout = \"2s\"\nmax_sessions_per_ip = 1000\nmax_connection_rate_per_ip = \"100000/m\"\n",
    );
    let mut slow: Vec<std::net::TcpStream> =
        (0..500).map(|_| std::net::TcpStream::connect(s.smtp).unwrap()).collect();
    let mut greeted = vec![false; slow.len()];
    let mut closed = vec![false; slow.len()];
    let started = Instant::now();
    // One round: read what arrived (greeting, then the 421), write one more byte to the open ones.
    let mut round = |slow: &mut Vec<std::net::TcpStream>| {
        for (i, c) in slow.iter_mut().enumerate() {
            if closed[i] {
                continue;
            }
            c.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 512];
            match c.read(&mut buf) {
                Ok(0) => closed[i] = true,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    greeted[i] |= text.contains("220 ");
                    closed[i] |= text.contains("421 4.4.2");
                }
                Err(_) => {}
            }
            if !closed[i] {
                let _ = c.write_all(b"E");
            }
        }
    };
    round(&mut slow);
    // A normal client gets its mail through while they trickle.
    let t = Instant::now();
    let r = Client::ehlo(s.smtp).send_message("<normal@t>", "hello\r\n");
    assert_eq!(code(&r), 250, "{r}");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "the normal client took {took:?}");
    while started.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(500));
        round(&mut slow);
    }
    assert!(greeted.iter().all(|g| *g), "every slow connection was served a greeting");
    let n = closed.iter().filter(|c| **c).count();
    assert_eq!(n, 500, "closed with 421 while still trickling");
}

#[test]
fn talking_before_the_greeting_is_refused() {
    use std::io::{Read, Write};
    let s = Sluice::start("[limits]\ngreet_pause = \"300ms\"\n");
    let mut eager = std::net::TcpStream::connect(s.smtp).unwrap();
    eager.write_all(b"EHLO bot\r\n").unwrap();
    eager.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    let _ = eager.read_to_string(&mut out);
    assert!(out.starts_with("554 5.5.1"), "{out}");
    assert!(!out.contains("220"), "no greeting for a client that did not wait: {out}");
    // A client that waits for the banner is served.
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<patient@t>", "x\r\n")), 250);
    let (_, m) = s.http_get("/metrics");
    assert!(String::from_utf8(m).unwrap().contains("reason=\"pregreet\"} 1"));
}

#[test]
fn connection_rate_and_recipients_per_session() {
    let s = Sluice::start(
        "[limits]\nmax_connection_rate_per_ip = \"3/m\"\nmax_recipients_per_session = 2\n[relay]\nnetworks = []\n[local]\ndomains = [\"example.org\"]\nmailboxes = false\n",
    );
    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<a@example.com>");
    assert_eq!(code(&c.cmd("RCPT TO:<b1@example.org>")), 250);
    c.cmd("RSET");
    c.cmd("MAIL FROM:<a@example.com>");
    assert_eq!(code(&c.cmd("RCPT TO:<b2@example.org>")), 250);
    let r = c.cmd("RCPT TO:<b3@example.org>");
    assert!(r.starts_with("452 4.5.3"), "the session's third recipient: {r}");
    // Three connections a minute: the fourth is refused at once.
    let _two = Client::ehlo(s.smtp);
    let _three = Client::ehlo(s.smtp);
    let mut four = Client::connect(s.smtp);
    let r = four.reply().unwrap();
    assert!(r.starts_with("421 4.7.0"), "{r}");
}

/// Mail loops (RFC 5321 6.3): a message with 51 trace headers is refused with 554 5.4.6 and
/// nothing is queued; with 50 it is accepted (`[limits] max_hops`, default 50).
#[test]
fn a_message_with_51_received_headers_is_refused_as_a_loop() {
    let s = Sluice::start("[delivery]\nenabled = false\n");
    let hop = "Received: from a.example by b.example; Tue, 1 Dec 2026 00:00:00 +0000\r\n";
    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.org>");
    assert_eq!(code(&c.cmd("DATA")), 354);
    let r = c.cmd(&format!("{}Message-ID: <loop51@t>\r\n\r\nbody\r\n.", hop.repeat(51)));
    assert!(r.starts_with("554 5.4.6"), "{r}");
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.org>");
    assert_eq!(code(&c.cmd("DATA")), 354);
    let r = c.cmd(&format!("{}Message-ID: <loop50@t>\r\n\r\nbody\r\n.", hop.repeat(50)));
    assert_eq!(code(&r), 250, "{r}");
    let ids: Vec<String> =
        s.queue_list().iter().map(|m| m["message_id"].as_str().unwrap().to_string()).collect();
    assert!(ids.contains(&"<loop50@t>".to_string()) && !ids.contains(&"<loop51@t>".to_string()));
}
