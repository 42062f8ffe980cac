use std::collections::HashSet;
use std::fs::OpenOptions;

use super::*;
use crate::spool::RecipientState;

fn opts(dir: &Path, writer: WriterKind) -> SpoolOptions {
    SpoolOptions { min_free_space: 0, writer, ..SpoolOptions::new(dir.join("spool")) }
}

/// Opens a spool and checks that the writer asked for is the one running. io_uring may be
/// missing on a developer's machine (then the portable path runs and this says so); under CI
/// it must be there, or the io_uring tests would pass without testing it.
fn open(o: SpoolOptions) -> LogSpool {
    let want = o.writer;
    let spool = LogSpool::open(o).unwrap();
    if spool.writer() != want {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{want:?} unavailable under CI");
        eprintln!("NOTE: {want:?} unavailable here; tested the fallback");
    }
    spool
}

/// Each test runs once per commit path.
macro_rules! both_writers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn portable() {
                super::$name(super::WriterKind::Portable)
            }
            #[test]
            fn io_uring() {
                super::$name(super::WriterKind::IoUring)
            }
        }
    )*};
}

both_writers!(
    stored_messages_survive_reopen_with_and_without_index,
    torn_tail_is_cut_never_served,
    group_commit_batches_concurrent_writers,
    concurrent_writers_across_segment_rolls,
    dead_segments_are_deleted_after_a_checkpoint,
    unsafe_skip_sync_mode_acknowledges_without_any_fsync,
);

fn message(spool: &LogSpool, body: &str) -> NewMessage {
    let id = spool.next_id();
    NewMessage {
        envelope: crate::spool::test_envelope(id, body.len() as u64 + 4),
        trace: Bytes::from_static(b"R:\r\n"),
        body: Bytes::from(body.to_string()),
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn stored_messages_survive_reopen_with_and_without_index(w: WriterKind) {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = vec![];
    {
        let spool = open(opts(dir.path(), w));
        for i in 0..10 {
            let m = message(&spool, &format!("body {i}\r\n"));
            ids.push(m.envelope.id);
            block(spool.store(m)).unwrap();
        }
        // The checkpoint covers the ten stores; the update and removal are replayed after it.
        spool.checkpoint_now();
        block(spool.update(RecipientUpdate {
            id: ids[1],
            index: 0,
            state: RecipientState::Delivered,
            attempts: 1,
            next_attempt: 0,
            last_reply: Some("250 ok".into()),
            delay_notified: false,
            expect_attempts: None,
        }))
        .unwrap();
        block(spool.remove(ids[2])).unwrap();
        // No close(): like kill -9 after the acknowledgements.
        spool.crash();
    }
    let check = |spool: &LogSpool| {
        assert_eq!(spool.list().len(), 9);
        assert!(spool.get(ids[2]).is_none());
        assert_eq!(spool.get(ids[1]).unwrap().recipients[0].state, RecipientState::Delivered);
        assert_eq!(&spool.read_message(ids[9]).unwrap()[..], b"R:\r\nbody 9\r\n");
    };
    {
        let spool = open(opts(dir.path(), w));
        assert_eq!(spool.loaded_from_checkpoint(), 10, "the checkpoint was not used");
        check(&spool);
        spool.close();
    }
    // A lost index costs a replay, never a message.
    fs::remove_file(dir.path().join("spool/index.redb")).unwrap();
    let spool = open(opts(dir.path(), w));
    assert_eq!(spool.loaded_from_checkpoint(), 0);
    check(&spool);
    // New ids never collide with recovered ones.
    assert!(spool.next_id() > ids[9]);
    // Read-only inspection sees the same.
    let ro = LogSpool::open(SpoolOptions { read_only: true, ..opts(dir.path(), w) }).unwrap();
    check(&ro);
}

fn torn_tail_is_cut_never_served(w: WriterKind) {
    let dir = tempfile::tempdir().unwrap();
    let (keep, torn);
    {
        let spool = open(opts(dir.path(), w));
        let a = message(&spool, "kept\r\n");
        keep = a.envelope.id;
        block(spool.store(a)).unwrap();
        let b = message(&spool, "torn\r\n");
        torn = b.envelope.id;
        block(spool.store(b)).unwrap();
        spool.crash();
    }
    // Chop the last record in half, as a power cut during its write would.
    let seg = *list_segments(&dir.path().join("spool"))
        .unwrap()
        .iter()
        .rev()
        .find(|&&s| fs::metadata(segment_path(&dir.path().join("spool"), s)).unwrap().len() > 0)
        .unwrap();
    let path = segment_path(&dir.path().join("spool"), seg);
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 10).unwrap();
    fs::remove_file(dir.path().join("spool/index.redb")).unwrap();

    let spool = open(opts(dir.path(), w));
    assert!(spool.get(keep).is_some());
    assert!(spool.get(torn).is_none());
    assert!(fs::metadata(&path).unwrap().len() < len - 10, "the torn record was cut off");
    // New records go after the cut, and survive another restart.
    let c = message(&spool, "after\r\n");
    let after = c.envelope.id;
    block(spool.store(c)).unwrap();
    spool.close();
    drop(spool);
    let spool = open(opts(dir.path(), w));
    assert_eq!(&spool.read_message(after).unwrap()[..], b"R:\r\nafter\r\n");
}

fn group_commit_batches_concurrent_writers(w: WriterKind) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(open(opts(dir.path(), w)));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    rt.block_on(async {
        let mut tasks = vec![];
        for i in 0..256 {
            let s = spool.clone();
            tasks.push(tokio::spawn(async move {
                let m = message(&s, &format!("{i}\r\n"));
                s.store(m).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    let stats = spool.stats();
    assert_eq!(stats.records_written, 256);
    assert!(stats.fsyncs < 256, "concurrent stores share fsyncs: {stats:?}");
}

fn dead_segments_are_deleted_after_a_checkpoint(w: WriterKind) {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolOptions { segment_size: 4096, ..opts(dir.path(), w) });
    let body = "x".repeat(1000) + "\r\n";
    let mut ids = vec![];
    for _ in 0..20 {
        let m = message(&spool, &body);
        ids.push(m.envelope.id);
        block(spool.store(m)).unwrap();
    }
    let before = spool.stats().segments;
    assert!(before >= 5, "{before}");
    // Keep the newest message: its segment must stay, and every older one can go.
    for id in &ids[..19] {
        block(spool.remove(*id)).unwrap();
    }
    spool.checkpoint_now();
    let after = spool.stats();
    assert!(after.segments <= 2, "{after:?}");
    assert_eq!(&spool.read_message(ids[19]).unwrap()[4..], body.as_bytes());
    spool.close();
    drop(spool);
    let spool = open(SpoolOptions { segment_size: 4096, ..opts(dir.path(), w) });
    assert_eq!(spool.list().len(), 1);
}

fn unsafe_skip_sync_mode_acknowledges_without_any_fsync(w: WriterKind) {
    // The switch the power-loss test uses to prove it can fail: acknowledged, never synced.
    // (io_uring links its sync to the write and ignores the switch: only portable is checked.)
    let dir = tempfile::tempdir().unwrap();
    let spool = open(SpoolOptions { unsafe_skip_sync: true, ..opts(dir.path(), w) });
    for i in 0..5 {
        block(spool.store(message(&spool, &format!("{i}\r\n")))).unwrap();
    }
    let stats = spool.stats();
    assert_eq!((stats.messages, stats.records_written), (5, 5));
    if spool.writer() == WriterKind::Portable {
        assert_eq!(stats.fsyncs, 0, "the unsafe mode synced");
    } else {
        assert!(stats.fsyncs >= 1);
    }
}

/// Many concurrent stores with tiny segments: batches in flight must land in the segment they
/// were placed in, across rolls, and every record must read back after a restart.
fn concurrent_writers_across_segment_rolls(w: WriterKind) {
    let dir = tempfile::tempdir().unwrap();
    let o = || SpoolOptions { segment_size: 8192, ..opts(dir.path(), w) };
    let spool = Arc::new(open(o()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    // 8 writers storing 50 messages each, one after another: a steady stream of small
    // batches, so several are in flight while segments fill up.
    let ids = rt.block_on(async {
        let mut tasks = vec![];
        for w in 0..8 {
            let s = spool.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = vec![];
                for k in 0..50 {
                    let i = w * 50 + k;
                    let m = message(&s, &format!("{}\r\n", i.to_string().repeat(100)));
                    let id = m.envelope.id;
                    s.store(m).await.unwrap();
                    ids.push((id, i));
                }
                ids
            }));
        }
        let mut ids = vec![];
        for t in tasks {
            ids.extend(t.await.unwrap());
        }
        ids
    });
    assert!(spool.stats().segments > 10, "{:?}", spool.stats());
    drop(spool);
    // As after kill -9: no checkpoint of the final state.
    fs::remove_file(dir.path().join("spool/index.redb")).unwrap();
    let spool = open(o());
    for (id, i) in ids {
        let want = format!("R:\r\n{}\r\n", i.to_string().repeat(100));
        assert_eq!(&spool.read_message(id).unwrap()[..], want.as_bytes(), "message {i}");
    }
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// Stores `n` messages in a spool with small segments and drops it as kill -9 would (so the
/// restart replays the log); returns the ids in order.
fn filled(dir: &Path, n: usize, segment_size: u64) -> Vec<QueueId> {
    let spool = open(SpoolOptions { segment_size, ..opts(dir, WriterKind::Portable) });
    let mut ids = Vec::new();
    for i in 0..n {
        let m = message(&spool, &format!("{}\r\n", format!("message {i} ").repeat(50)));
        ids.push(m.envelope.id);
        block(spool.store(m)).unwrap();
    }
    spool.crash();
    fs::remove_file(dir.join("spool/index.redb")).unwrap();
    ids
}

fn flip(path: &Path, at: usize) {
    let mut data = fs::read(path).unwrap();
    data[at] ^= 0x20;
    fs::write(path, data).unwrap();
}

/// One flipped byte in the middle of a segment that is not the last: that record alone is
/// lost (and copied to quarantine/), every record after it in the same and later segments stays.
#[test]
fn a_damaged_record_mid_log_costs_that_record_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ids = filled(dir.path(), 60, 8 << 10);
    let segs = seg_files(dir.path());
    assert!(segs.len() >= 4, "{segs:?}");
    let victim = &segs[1];
    let len = fs::metadata(victim).unwrap().len() as usize;
    flip(victim, len / 2);
    let spool = open(opts(dir.path(), WriterKind::Portable));
    let listed: HashSet<QueueId> = spool.list().iter().map(|e| e.id).collect();
    assert_eq!(listed.len(), ids.len() - 1, "exactly one message is lost");
    for seg in &segs {
        assert!(seg.exists(), "{seg:?} was moved or deleted");
    }
    let quarantined: Vec<_> =
        fs::read_dir(dir.path().join("spool/quarantine")).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0].metadata().unwrap().len() > 0);
    for id in &listed {
        spool.read_message(*id).unwrap();
    }
}

/// The same in the last segment: only a torn tail may be cut, so a damaged record followed by
/// valid ones is skipped, not treated as the end of the log.
#[test]
fn a_damaged_record_in_the_last_segment_is_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let ids = filled(dir.path(), 40, 1 << 20);
    let segs = seg_files(dir.path());
    let last = segs.last().unwrap();
    let len = fs::metadata(last).unwrap().len() as usize;
    flip(last, len / 3);
    let spool = open(opts(dir.path(), WriterKind::Portable));
    assert_eq!(spool.list().len(), ids.len() - 1);
    assert_eq!(fs::metadata(last).unwrap().len() as usize, len, "the segment was cut");
    // The damaged region alone went to quarantine, with its offset in the name.
    let q: Vec<String> = fs::read_dir(dir.path().join("spool/quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0].contains("-at-"), "{q:?}");
}

/// A record whose checksum passes but whose payload does not decode is skipped like any
/// other damage, never a reason to cut the log.
#[test]
fn an_undecodable_payload_with_a_valid_checksum_is_skipped_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let ids = filled(dir.path(), 10, 1 << 20);
    let last = seg_files(dir.path()).pop().unwrap();
    let mut data = fs::read(&last).unwrap();
    // A record of an unknown kind with valid checksums, between the 3rd and 4th messages.
    let (_, first) = record::decode(&data).unwrap();
    let mut bogus = record::encode_remove(QueueId(1)).head;
    bogus[5] = 9; // kind
    let hcrc = crc32fast::hash(&bogus[..16]);
    bogus[16..20].copy_from_slice(&hcrc.to_le_bytes());
    data.splice(first * 3..first * 3, bogus);
    fs::write(&last, data).unwrap();
    let spool = open(opts(dir.path(), WriterKind::Portable));
    assert_eq!(spool.list().len(), ids.len());
}

/// A record written by a newer sluice stops start-up with a clear error and changes nothing.
#[test]
fn a_newer_record_version_stops_start_up_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 10, 1 << 20);
    let last = seg_files(dir.path()).pop().unwrap();
    let mut data = fs::read(&last).unwrap();
    let (_, first) = record::decode(&data).unwrap();
    let at = first * 5;
    data[at + 4] = record::VERSION + 1;
    let hcrc = crc32fast::hash(&data[at..at + 16]);
    data[at + 16..at + 20].copy_from_slice(&hcrc.to_le_bytes());
    fs::write(&last, &data).unwrap();
    let before: Vec<_> = seg_files(dir.path());
    let err = LogSpool::open(opts(dir.path(), WriterKind::Portable)).err().expect("it started");
    assert!(err.to_string().contains("newer than this sluice reads"), "{err}");
    assert_eq!(seg_files(dir.path()), before, "segments were added or removed");
    assert_eq!(fs::read(&last).unwrap(), data, "the segment was changed");
}

/// A spool written by record format 1 (committed fixture, written by the last build that wrote
/// it) opens with every message, state and body intact.
#[test]
fn reads_a_spool_written_by_format_1() {
    reads_fixture_spool("tests/fixtures/spool-format1");
}

/// The same for format 2 with payload version 1 (envelopes without tags).
#[test]
fn reads_a_spool_written_by_format_2_version_1() {
    reads_fixture_spool("tests/fixtures/spool-format2-v1");
}

/// The same for payload version 2 (tags without `pool`): tenant, campaign and metadata intact.
#[test]
fn reads_a_spool_written_by_format_2_version_2() {
    reads_fixture_spool("tests/fixtures/spool-format2-v2");
}

fn reads_fixture_spool(path: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("spool")).unwrap();
    fs::copy(
        fixture.join("seg-0000000000000001.log"),
        dir.path().join("spool/seg-0000000000000001.log"),
    )
    .unwrap();
    let spool = open(opts(dir.path(), WriterKind::Portable));
    let got: Vec<serde_json::Value> = spool.list().iter().map(crate::admin::message_json).collect();
    let want: Vec<serde_json::Value> = fs::read_to_string(fixture.join("expected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, want);
    let first = spool.list()[0].id;
    assert_eq!(spool.read_message(first).unwrap(), fs::read(fixture.join("msg1.eml")).unwrap());
    // New records go on in the current format beside the old ones, and both read back.
    block(spool.remove(first)).unwrap();
    drop(spool);
    let spool = open(opts(dir.path(), WriterKind::Portable));
    assert_eq!(spool.list().len(), want.len() - 1);
}

/// Issue #22: a segment cut short below the index checkpoint (where recovery does not replay)
/// loses every message whose record was in the cut part, and each of them is found: reading
/// one fails as damage (Corrupt, which delivery bounces), not as an I/O error retried for days;
/// the records before the cut still read.
#[test]
fn a_segment_cut_below_the_checkpoint_names_every_message_in_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let spool =
            open(SpoolOptions { segment_size: 8 << 10, ..opts(dir.path(), WriterKind::Portable) });
        let mut ids = Vec::new();
        for i in 0..60 {
            let m = message(&spool, &format!("{}\r\n", format!("message {i} ").repeat(50)));
            ids.push(m.envelope.id);
            block(spool.store(m)).unwrap();
        }
        spool.close();
        ids
    };
    let segs = seg_files(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let victim = &segs[0];
    let len = fs::metadata(victim).unwrap().len();
    OpenOptions::new().write(true).open(victim).unwrap().set_len(len / 2).unwrap();
    let spool = open(opts(dir.path(), WriterKind::Portable));
    let (mut damaged, mut fine) = (0, 0);
    for id in &ids {
        match spool.read_message(*id) {
            Ok(_) => fine += 1,
            Err(SpoolError::Corrupt(_)) => damaged += 1,
            Err(e) => panic!("{id}: {e}"),
        }
    }
    assert!(damaged > 1, "{damaged} damaged, {fine} fine");
    assert_eq!(damaged + fine, ids.len());
    let quarantined = fs::read_dir(dir.path().join("spool/quarantine")).unwrap().count();
    assert_eq!(quarantined, damaged, "one copy per damaged message");
}
