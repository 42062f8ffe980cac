//! Connection limits and timeouts over real sockets (RFC 5321 4.5.3.2, 3.8).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn too_many_sessions_from_one_ip_get_421() {
    let s = Sluice::start("[limits]\nmax_sessions_per_ip = 3\n");
    let mut open: Vec<Client> = (0..3).map(|_| Client::connect(s.smtp)).collect();
    for c in &mut open {
        assert_eq!(code(&c.reply().unwrap()), 220);
    }
    let mut fourth = Client::connect(s.smtp);
    let r = fourth.reply().unwrap();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(fourth.closed());
    // A slot frees up when a session ends.
    open.pop().unwrap().cmd("QUIT");
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Client::connect(s.smtp);
    assert_eq!(code(&again.reply().unwrap()), 220);
    let (_, m) = s.http_get("/metrics");
    assert!(
        String::from_utf8(m)
            .unwrap()
            .contains("sluice_smtp_connections_refused_total{reason=\"max_sessions_per_ip\"} 1")
    );
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
    let mut c = Client::connect(s.smtp);
    c.reply();
    c.cmd("EHLO x");
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.org>");
    assert_eq!(code(&c.cmd("DATA")), 354);
    c.send(b"Subject: half a message\r\n").unwrap();
    let r = c.reply().unwrap();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(s.queue_list().is_empty());
}

#[test]
fn graceful_shutdown_answers_421_and_keeps_committed_mail() {
    let mut s = Sluice::start("");
    let mut idle = Client::connect(s.smtp);
    idle.reply();
    idle.cmd("EHLO idle");
    let mut sender = Client::connect(s.smtp);
    sender.reply();
    sender.cmd("EHLO x");
    sender.cmd("MAIL FROM:<a@example.com>");
    sender.cmd("RCPT TO:<b@example.org>");
    sender.cmd("DATA");
    assert_eq!(code(&sender.cmd("Message-ID: <before-stop@t>\r\n\r\nx\r\n.")), 250);
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
