//! Power-loss test on the simulator in ../shared/tools/plfs: only fsync'd data survives a "cut".
//! 20 rounds of load, SIGKILL, power cut, restart on the durable view; every message answered 250
//! must be there and intact, and a torn tail must be cut, never served.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use crate::common::load::{self, Acked};
use crate::common::*;

/// Builds (once) and returns the plfs binary, or None (loudly) where it cannot run.
fn plfs() -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let manifest = repo_root().join("../shared/tools/plfs/Cargo.toml");
    let usable =
        manifest.exists() && Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0;
    if !usable {
        let why = "needs ../shared/tools/plfs, /dev/fuse and root";
        assert!(!ci, "power-loss test cannot run under CI=true: {why}");
        eprintln!("SKIPPED: power-loss test {why}");
        return None;
    }
    let target = repo_root().join("target/plfs");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success(), "building plfs failed");
    Some(target.join("release/plfs"))
}

/// A mounted plfs: `mount` waits for MOUNTED, `cut` cuts the power and returns plfs's DUMPED line
/// once the durable view is in the dump directory.
struct Plfs {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Plfs {
    fn mount(plfs: &Path, mnt: &Path, load_dir: &Path, dump: &Path) -> Plfs {
        let mut child = Command::new(plfs)
            .arg(mnt)
            .arg(load_dir)
            .arg(dump)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "MOUNTED");
        Plfs { child, out }
    }

    fn cut(mut self) -> String {
        self.child.stdin.as_mut().unwrap().write_all(b"CRASH\n").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(line.starts_with("DUMPED"), "{line}");
        self.child.wait().unwrap();
        line
    }
}

/// Intake durability: delivery is held so every acknowledged message stays to be counted.
const HOLD: &str = "[delivery]\nenabled = false\n";

struct Round {
    lost: Vec<String>,
    acked: usize,
    /// plfs's count of files holding data that was written but never synced at the cut.
    unsynced_files: usize,
}

/// One round: mount plfs over `load_dir`, run sluice on it under load, kill -9, cut the power,
/// then restart sluice on the durable view (`dump_dir`) and check everything acknowledged so far.
fn round(
    plfs: &Path,
    work: &Path,
    n: usize,
    load_dir: &Path,
    all: &mut Vec<Acked>,
    env: &[(&str, &str)],
    config: &str,
) -> (Round, PathBuf) {
    let mnt = work.join(format!("mnt{n}"));
    let dump = work.join(format!("dump{n}"));
    let fs = Plfs::mount(plfs, &mnt, load_dir, &dump);

    let mut s = Sluice::start_in(tempfile::tempdir().unwrap(), mnt.join("data"), config, env);
    if config.contains("io_uring") {
        let log = s.log();
        let line = log.lines().find(|l| l.contains("spool writer")).unwrap_or("");
        assert!(line.contains("io_uring"), "io_uring did not run on plfs: {line}");
    }
    // The cut comes on an event, not after a sleep: once `target` messages were acknowledged
    // (a different count each round), whatever the machine's speed.
    let target = 100 + load::jitter(1500) as usize;
    let (stop, loader) = load::load_until(s.smtp, 12, &format!("p{n}"), target, || s.log());
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked = loader.join().unwrap();
    let line = fs.cut();
    eprintln!(
        "round {n}: power cut after {target}+ acknowledgements, {} acknowledged; plfs: {}",
        acked.len(),
        line.trim()
    );
    let unsynced_files = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("files_with_unsynced_data="))
        .and_then(|v| v.parse().ok())
        .expect("plfs reports files_with_unsynced_data");

    // Restart on the durable view, as the machine would after the power comes back.
    let mut s = Sluice::start_in(tempfile::tempdir().unwrap(), dump.join("data"), HOLD, &[]);
    let mut lost = load::missing(&s, &acked, true);
    lost.extend(load::missing(&s, all, false));
    let log = s.log();
    s.terminate();
    if log.contains("cutting an incomplete record") {
        eprintln!("round {n}: recovery cut a torn tail");
    }
    let count = acked.len();
    all.extend(acked);
    (Round { lost, acked: count, unsynced_files }, dump)
}

/// Runs `n` rounds; returns what was lost, how much was acknowledged, and the rounds.
fn rounds(
    n: usize,
    env: &[(&str, &str)],
    config: &str,
) -> Option<(Vec<String>, usize, Vec<Round>)> {
    let plfs = plfs()?;
    let work = tempfile::tempdir().unwrap();
    let mut load_dir = work.path().join("empty");
    std::fs::create_dir_all(&load_dir).unwrap();
    let mut all = Vec::new();
    let mut total = 0;
    let mut lost = Vec::new();
    let mut done = Vec::new();
    for i in 0..n {
        // Chains of 5: each round restarts on the previous round's durable view (recovery of a
        // recovered spool), and every 5th starts afresh so the copied state stays small.
        if i % 5 == 0 {
            load_dir = work.path().join("empty");
            all.clear();
        }
        let (r, dump) = round(&plfs, work.path(), i, &load_dir, &mut all, env, config);
        total += r.acked;
        assert!(r.acked > 0, "round {i}: nothing was acknowledged before the cut");
        lost.extend(r.lost.iter().cloned());
        done.push(r);
        load_dir = dump;
        if !lost.is_empty() {
            break;
        }
    }
    Some((lost, total, done))
}

#[test]
fn power_loss_20_rounds_loses_no_acknowledged_message() {
    let Some((lost, acked, _)) = rounds(20, &[], HOLD) else { return };
    eprintln!("20 power cuts, {acked} acknowledged messages, {} lost", lost.len());
    load::assert_none_lost(&lost);
}

/// The io_uring writer (two batches in flight, acknowledged in order) under the same cuts.
#[test]
fn power_loss_io_uring_10_rounds_loses_no_acknowledged_message() {
    let config = format!("{HOLD}[spool]\nwriter = \"io_uring\"\n");
    let Some((lost, acked, _)) = rounds(10, &[], &config) else { return };
    eprintln!("10 power cuts with io_uring, {acked} acknowledged messages, {} lost", lost.len());
    load::assert_none_lost(&lost);
}

/// The power-loss check must be able to fail, every time: a spool that acknowledges without
/// syncing (a test hook, only in binaries built with `--features test-hooks`) loses every
/// message it acknowledged at the cut, and plfs must see the unsynced data.
#[test]
fn power_loss_test_catches_a_spool_that_never_syncs() {
    if !test_hooks_built() {
        return;
    }
    let Some((lost, acked, rounds)) = rounds(1, &[("SLUICE_TEST_UNSAFE_SKIP_SYNC", "1")], HOLD)
    else {
        return;
    };
    assert!(rounds[0].unsynced_files > 0, "precondition: plfs saw no unsynced data");
    assert_eq!(
        lost.len(),
        acked,
        "the power-loss test did not notice acknowledged-but-not-durable messages"
    );
    eprintln!("as expected, the unsafe spool lost all {} acknowledged messages", lost.len());
}

/// The small state files (warm-up days, quota counters, open circuit breakers:
/// `sluice::state_file::write_atomic`) under a power cut: the last version written is there,
/// whole, and never a torn or empty file; a circuit breaker that opened is still open.
/// Control: a later plain write that was not synced is gone after the cut, so plfs is really
/// dropping what was not made durable.
#[test]
fn power_loss_keeps_the_last_saved_state_file() {
    let Some(plfs) = plfs() else { return };
    let work = tempfile::tempdir().unwrap();
    let (mnt, load_dir, dump) =
        (work.path().join("mnt"), work.path().join("empty"), work.path().join("dump"));
    std::fs::create_dir_all(&load_dir).unwrap();
    let fs = Plfs::mount(&plfs, &mnt, &load_dir, &dump);
    let path = mnt.join("warmup.json");
    let last = format!("{{\"s2\":{{\"start\":20000,\"sites\":{{\"google\":[20000,{}]}}}}}}", 49);
    for i in 0..50 {
        let text = format!("{{\"s2\":{{\"start\":20000,\"sites\":{{\"google\":[20000,{i}]}}}}}}");
        sluice::state_file::write_atomic(&path, text.as_bytes()).unwrap();
    }
    use sluice::shaping::breaker::{BreakerConfig, Breakers, Outcome};
    let tight = || BreakerConfig { min_sample: 1, ..BreakerConfig::default() };
    let mut b = Breakers::open(tight(), Default::default(), Some(mnt.join("circuits.json")));
    assert_eq!(b.record(Some("acme"), Some("c1"), Outcome::HardBounce, 1).len(), 2);
    std::fs::write(&path, b"not synced").unwrap();
    fs.cut();
    assert_eq!(std::fs::read_to_string(dump.join("warmup.json")).unwrap(), last);
    let after = Breakers::open(tight(), Default::default(), Some(dump.join("circuits.json")));
    assert_eq!(after.list().len(), 2, "the tenant's and the campaign's breakers stay open");
}
