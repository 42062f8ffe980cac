//! Crash test: concurrent sessions, SIGKILL at a random moment, restart; every message answered
//! 250 must be queued with an intact body (DESIGN.md invariants 1 and 2).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::load::{self, Acked};
use common::*;

/// Runs `rounds` kill -9 rounds on one spool; returns the messages lost (empty = none).
fn kill9_rounds(rounds: usize, env: &[(&str, &str)]) -> Vec<String> {
    // Intake durability: delivery is held so every acknowledged message stays to be counted.
    let mut s = Sluice::start_with_env("[delivery]\nenabled = false\n", env);
    let mut all: Vec<Acked> = Vec::new();
    let mut lost = Vec::new();
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = s.smtp;
        let (st, tag) = (stop.clone(), format!("r{round}"));
        let load = std::thread::spawn(move || load::run_load(addr, 16, &tag, st));
        let delay = 200 + load::jitter(600);
        std::thread::sleep(Duration::from_millis(delay));
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        let acked = load.join().unwrap();
        eprintln!("round {round}: killed after {delay} ms, {} acknowledged", acked.len());
        assert!(
            !acked.is_empty(),
            "round {round}: the load sent nothing before the kill:\n{}",
            s.log()
        );
        s.spawn();
        // This round's messages are verified byte for byte, earlier rounds' for presence.
        lost.extend(load::missing(&s, &acked, true));
        lost.extend(load::missing(&s, &all, false));
        all.extend(acked);
        if !lost.is_empty() {
            break;
        }
    }
    lost
}

#[test]
fn kill9_under_load_loses_no_acknowledged_message() {
    let lost = kill9_rounds(5, &[]);
    load::assert_none_lost(&lost);
}

/// The test above must be able to fail: with a spool that acknowledges before writing, it does.
#[test]
fn kill9_test_catches_a_spool_that_acks_before_writing() {
    let lost = kill9_rounds(5, &[("SLUICE_TEST_UNSAFE_ACK_BEFORE_WRITE", "1")]);
    assert!(!lost.is_empty(), "the crash test did not notice acknowledged-but-unwritten messages");
    eprintln!("as expected, the unsafe spool lost {} acknowledged messages", lost.len());
}
