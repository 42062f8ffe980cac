//! Crash test: concurrent sessions, SIGKILL at a random moment, restart; every message answered
//! 250 must be queued with an intact body (DESIGN.md invariants 1 and 2).

use std::sync::atomic::Ordering;

use crate::common::load::{self, Acked};
use crate::common::*;

/// Runs `rounds` kill -9 rounds on one spool; returns the messages lost (empty = none).
fn kill9_rounds(rounds: usize, env: &[(&str, &str)]) -> Vec<String> {
    // Intake durability: delivery is held so every acknowledged message stays to be counted.
    let mut s = Sluice::start_with_env("[delivery]\nenabled = false\n", env);
    let mut all: Vec<Acked> = Vec::new();
    let mut lost = Vec::new();
    for round in 0..rounds {
        // Killed on an event (this many acknowledgements, different each round), not a sleep.
        let target = 100 + load::jitter(2000) as usize;
        let (stop, load) = load::load_until(s.smtp, 16, &format!("r{round}"), target, || s.log());
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        let acked = load.join().unwrap();
        eprintln!("round {round}: killed after {target}+ acknowledgements, {} in all", acked.len());
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

/// The test above must be able to fail, every time: a spool that acknowledges before writing
/// (test hooks, only in binaries built with `--features test-hooks`), with a commit thread that
/// waits 10 s before each batch, has written nothing of what it acknowledged when it is killed.
#[test]
fn kill9_test_catches_a_spool_that_acks_before_writing() {
    if !test_hooks_built() {
        return;
    }
    let env =
        [("SLUICE_TEST_UNSAFE_ACK_BEFORE_WRITE", "1"), ("SLUICE_TEST_COMMIT_DELAY_MS", "10000")];
    let lost = kill9_rounds(1, &env);
    assert!(!lost.is_empty(), "the crash test did not notice acknowledged-but-unwritten messages");
    eprintln!("as expected, the unsafe spool lost {} acknowledged messages", lost.len());
}
