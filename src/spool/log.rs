//! [`LogSpool`]: the portable segment-log implementation of [`Spool`].
//!
//! Threads: one commit thread (group commit: take the whole pending batch, one vectored write,
//! one fdatasync, wake every waiter) and one checkpoint thread (save the index to redb, then
//! delete dead segments). Sessions never wait on each other except through the batch they share.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::index::{CheckpointStore, Location, Position};
use super::record::{self, Encoded, Record};
use super::recovery::{self, Recovered};
use super::segment::{
    CommitQueue, Op, Writer, batch_len, batch_slices, list_segments, segment_path,
};
use super::state::{Applied, Apply, IndexState};
use super::{
    Envelope, NewMessage, QueueId, RecipientState, RecipientUpdate, Spool, SpoolError, SpoolStats,
    Ticket,
};
use crate::metrics;

#[derive(Clone, Debug)]
pub struct SpoolOptions {
    /// Folder for segments and the index (`<data_dir>/spool`).
    pub dir: PathBuf,
    /// A new segment is started once the current one is this large.
    pub segment_size: u64,
    /// How often the index is checkpointed (and dead segments deleted).
    pub checkpoint_interval: Duration,
    /// Below this much free disk space new mail is refused with 452 4.3.1.
    pub min_free_space: u64,
    /// TEST ONLY: acknowledge batches without fdatasync (portable writer), so the power-loss
    /// test can show it catches a spool that does. The binary sets it only when built with the
    /// `test-hooks` feature. Never set in production.
    pub unsafe_skip_sync: bool,
    /// TEST ONLY: acknowledge records before they are written, so the kill -9 test can show it
    /// catches a spool that does (with `commit_delay`, deterministically).
    pub unsafe_ack_before_write: bool,
    /// TEST ONLY: the commit thread waits this long before each batch (a slow disk).
    pub commit_delay: Duration,
    /// Open for inspection only: no writer, no truncation, the index is rebuilt in memory from
    /// the log (the daemon may hold the redb lock).
    pub read_only: bool,
    /// How batches reach the disk.
    pub writer: WriterKind,
}

/// The commit thread's way to the disk. Both write each batch with one vectored write and one
/// fdatasync and acknowledge batches in order; they differ in what overlaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterKind {
    /// `writev` + `fdatasync` on the commit thread: one batch at a time.
    Portable,
    /// io_uring: linked write + fdatasync, two batches in flight (the next one is written while
    /// the previous one syncs). Probed at start; falls back to `Portable` where it is missing.
    IoUring,
}

impl WriterKind {
    pub fn label(self) -> &'static str {
        match self {
            WriterKind::Portable => "portable",
            WriterKind::IoUring => "io_uring",
        }
    }
}

impl SpoolOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolOptions {
            dir: dir.into(),
            segment_size: 16 << 20,
            checkpoint_interval: Duration::from_secs(10),
            min_free_space: 64 << 20,
            unsafe_skip_sync: false,
            unsafe_ack_before_write: false,
            commit_delay: Duration::ZERO,
            read_only: false,
            writer: WriterKind::Portable,
        }
    }
}

pub struct LogSpool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub(super) struct Shared {
    pub(super) opts: SpoolOptions,
    pending: Mutex<Pending>,
    wake: Condvar,
    index: RwLock<IndexState>,
    next_id: AtomicU64,
    /// Free bytes on the spool's filesystem, refreshed by the commit thread after each batch,
    /// and at most once a second by refused messages while it is below `min_free_space` (space
    /// freed by an operator is seen without any write succeeding first).
    free_space: AtomicU64,
    /// When (unix ms) a refused message last measured the free space.
    free_checked: AtomicU64,
    /// The current episode of write failures, if any.
    trouble: Mutex<Trouble>,
    /// Messages whose record failed its check on read (each reported once).
    damaged_seen: Mutex<HashSet<QueueId>>,
    /// Set after a write failure that could not be repaired: every store fails from then on.
    broken: AtomicBool,
    checkpoint: Mutex<Option<CheckpointStore>>,
    stop: (Mutex<bool>, Condvar),
    /// The io_uring commit thread waits on this instead of `wake` (it also waits for its ring).
    pub(super) eventfd: std::sync::OnceLock<std::os::fd::OwnedFd>,
    writer_in_use: std::sync::OnceLock<WriterKind>,
    /// Index entries loaded from the checkpoint at start (the rest came from replay).
    from_checkpoint: usize,
}

/// An episode of failed commits: when it began, how many batches failed, when it was last
/// logged, and whether the writer already moved to a fresh segment because of it.
#[derive(Default)]
struct Trouble {
    since: Option<Instant>,
    failures: u64,
    last_log: Option<Instant>,
    rolled: bool,
}

#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    closed: bool,
}

fn free_space(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return u64::MAX };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return u64::MAX; // unknown: do not refuse mail on a failed statistic
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Index entries serialized and saved per checkpoint transaction.
const CHECKPOINT_CHUNK: usize = 20_000;

impl LogSpool {
    /// Opens the spool, recovering from the log (and the index checkpoint when it is usable).
    pub fn open(opts: SpoolOptions) -> Result<LogSpool, SpoolError> {
        if !opts.read_only {
            fs::create_dir_all(&opts.dir)?;
        }
        let mut segments = list_segments(&opts.dir)?;
        if !opts.read_only {
            recovery::remove_empty_segments(&opts.dir, &mut segments)?;
        }
        let mut rec = Recovered::default();
        let (store, start) = recovery::load_checkpoint(&opts, &segments, &mut rec)?;
        recovery::replay(&opts, &segments, start, &mut rec)?;
        rec.set_damage_aside(&opts)?;
        let Recovered { mut state, max_id, from_checkpoint, .. } = rec;
        let last = segments.last().copied();

        let micros = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let shared = Arc::new(Shared {
            free_space: AtomicU64::new({
                let free = free_space(&opts.dir);
                metrics::SPOOL_FREE_BYTES.set(free.min(i64::MAX as u64) as i64);
                metrics::SPOOL_MIN_FREE_BYTES.set(opts.min_free_space.min(i64::MAX as u64) as i64);
                free
            }),
            free_checked: AtomicU64::new(0),
            trouble: Mutex::new(Trouble::default()),
            damaged_seen: Mutex::new(HashSet::new()),
            opts,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            index: RwLock::new(IndexState::default()),
            next_id: AtomicU64::new(max_id.max(micros) + 1),
            broken: AtomicBool::new(false),
            checkpoint: Mutex::new(store),
            stop: (Mutex::new(false), Condvar::new()),
            eventfd: std::sync::OnceLock::new(),
            writer_in_use: std::sync::OnceLock::new(),
            from_checkpoint,
        });
        let spool = LogSpool { shared: shared.clone(), threads: Mutex::new(Vec::new()) };
        if shared.opts.read_only {
            *shared.index.write().unwrap_or_else(|e| e.into_inner()) = state;
            return Ok(spool);
        }

        // 3. Always append to a fresh segment: the last one may end where a torn record was cut.
        let writer = Writer::create(&shared.opts.dir, last.map_or(1, |l| l + 1))?;
        state.live.insert(writer.segment, 0);
        state.seg_bytes.insert(writer.segment, 0);
        state.applied = Position { segment: writer.segment, offset: 0 };
        state.publish_gauges();
        tracing::info!(
            messages = state.entries.len(),
            segments = state.live.len(),
            "spool recovered"
        );
        *shared.index.write().unwrap_or_else(|e| e.into_inner()) = state;

        let s = shared.clone();
        let ring = match shared.opts.writer {
            WriterKind::IoUring => match super::uring::Ring::probe(&writer.file) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring is not usable here; the spool uses the portable writer");
                    None
                }
            },
            WriterKind::Portable => None,
        };
        let kind = if ring.is_some() { WriterKind::IoUring } else { WriterKind::Portable };
        tracing::info!(writer = kind.label(), "spool writer");
        let _ = shared.writer_in_use.set(kind);
        metrics::SPOOL_WRITER.with_label_values(&[kind.label()]).set(1);
        let commit =
            std::thread::Builder::new().name("spool-commit".into()).spawn(move || match ring {
                Some(ring) => super::uring::commit_loop(s, writer, ring),
                None => s.run_portable(writer),
            })?;
        let s = shared.clone();
        let ckpt = std::thread::Builder::new()
            .name("spool-checkpoint".into())
            .spawn(move || s.checkpoint_loop())?;
        spool.threads.lock().unwrap_or_else(|e| e.into_inner()).extend([commit, ckpt]);
        Ok(spool)
    }

    /// How many index entries the start-up took from the checkpoint instead of the log.
    pub fn loaded_from_checkpoint(&self) -> usize {
        self.shared.from_checkpoint
    }

    /// Like kill -9 for in-process tests: no final checkpoint, and the index file is released
    /// (a dead process holds no lock) so the next open can load the last checkpoint.
    #[cfg(test)]
    pub(crate) fn crash(self) {
        *self.shared.checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = None;
        std::mem::forget(self);
    }

    /// The commit path in use (after the start-up probe).
    pub fn writer(&self) -> WriterKind {
        *self.shared.writer_in_use.get().unwrap_or(&WriterKind::Portable)
    }

    /// Writes an index checkpoint now and deletes dead segments (normally periodic).
    pub fn checkpoint_now(&self) {
        self.shared.checkpoint();
    }

    fn submit(&self, rec: Encoded, apply: Apply) -> Ticket {
        let sh = &self.shared;
        if sh.opts.read_only {
            return ready(Err(SpoolError::Closed));
        }
        if sh.broken.load(Ordering::Relaxed) {
            return ready(Err(SpoolError::Disabled));
        }
        // Back-pressure before the disk is full: accepted mail keeps room for its state changes.
        if matches!(apply, Apply::Insert(_)) && sh.low_on_space() {
            return ready(Err(SpoolError::NoSpace));
        }
        let (tx, rx) = oneshot::channel();
        let done = if sh.opts.unsafe_ack_before_write {
            let _ = tx.send(Ok(())); // test hook only
            None
        } else {
            Some(tx)
        };
        let first = {
            let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.closed {
                return ready(Err(SpoolError::Closed));
            }
            p.ops.push(Op { rec, apply, done, queued_at: Instant::now() });
            p.ops.len() == 1
        };
        // The commit thread only sleeps when nothing is pending: only the first record wakes it.
        if first {
            sh.wake_committer();
        }
        Box::pin(async move { rx.await.unwrap_or(Err(SpoolError::Closed)) })
    }
}

fn ready(r: Result<(), SpoolError>) -> Ticket {
    Box::pin(std::future::ready(r))
}

impl Shared {
    /// Takes up to `max` pending records (all with `usize::MAX`), waiting for some when `wait`.
    /// Returns them and whether the spool is closing.
    pub(super) fn take(&self, max: usize, wait: bool) -> (Vec<Op>, bool) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while wait && p.ops.is_empty() && !p.closed {
            p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        let ops = if p.ops.len() > max {
            p.ops.drain(..max).collect()
        } else {
            std::mem::take(&mut p.ops)
        };
        (ops, p.closed)
    }

    /// Below `min_free_space`? While it is, the free space is measured again at most once a
    /// second, so the spool recovers by itself when space is freed.
    fn low_on_space(&self) -> bool {
        if self.free_space.load(Ordering::Relaxed) >= self.opts.min_free_space {
            return false;
        }
        let now = unix_millis();
        let last = self.free_checked.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .free_checked
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.measure_free_space();
        }
        self.free_space.load(Ordering::Relaxed) < self.opts.min_free_space
    }

    /// Measures the free space (and shows it in `sluice_spool_free_bytes`).
    fn measure_free_space(&self) {
        let free = free_space(&self.opts.dir);
        self.free_space.store(free, Ordering::Relaxed);
        metrics::SPOOL_FREE_BYTES.set(free.min(i64::MAX as u64) as i64);
    }

    /// Wakes the commit thread, whichever way it waits.
    fn wake_committer(&self) {
        self.wake.notify_all();
        if let Some(fd) = self.eventfd.get() {
            super::uring::signal(std::os::fd::AsRawFd::as_raw_fd(fd));
        }
    }

    pub(super) fn run_portable(self: Arc<Self>, mut writer: Writer) {
        loop {
            let (ops, _) = self.take(usize::MAX, true);
            if ops.is_empty() {
                return; // closed and drained
            }
            if !self.opts.commit_delay.is_zero() {
                std::thread::sleep(self.opts.commit_delay);
            }
            self.commit_batch(&mut writer, ops);
        }
    }

    fn commit_batch(&self, writer: &mut Writer, ops: Vec<Op>) {
        let total = batch_len(&ops);
        let result = (|| -> std::io::Result<()> {
            if writer.len > 0 && writer.len + total > self.opts.segment_size {
                self.roll(writer)?;
            }
            let mut slices = batch_slices(&ops);
            writer.write_durably(&mut slices, !self.opts.unsafe_skip_sync)
        })();
        match result {
            Ok(()) => self.acknowledge(writer, ops, !self.opts.unsafe_skip_sync),
            Err(e) => {
                self.repair(writer, &e);
                self.refuse(ops, &e);
            }
        }
    }

    /// The batch at `writer.len` is durable: apply it to the index, then tell its waiters.
    pub(super) fn acknowledge(&self, writer: &mut Writer, ops: Vec<Op>, synced: bool) {
        let n = ops.len() as u64;
        let mut waiters = Vec::with_capacity(ops.len());
        {
            let mut st = self.index.write().unwrap_or_else(|e| e.into_inner());
            let mut off = writer.len;
            for op in ops {
                let len = op.rec.len() as u64;
                let loc = Location {
                    segment: writer.segment,
                    offset: off,
                    len,
                    content_offset: op.rec.head.len() as u32,
                };
                let result = match st.apply(op.apply, loc) {
                    Applied::Done => Ok(()),
                    Applied::Conflict => Err(SpoolError::Conflict),
                };
                off += len;
                waiters.push((op.done, op.queued_at, result));
            }
            writer.len = off;
            st.applied = Position { segment: writer.segment, offset: off };
            st.seg_bytes.insert(writer.segment, off);
            st.records_written += n;
            st.fsyncs += u64::from(synced);
            st.publish_gauges();
        }
        metrics::SPOOL_RECORDS.inc_by(n);
        metrics::SPOOL_BATCH_RECORDS.observe(n as f64);
        for (done, queued_at, result) in waiters {
            metrics::SPOOL_COMMIT_SECONDS.observe(queued_at.elapsed().as_secs_f64());
            if let Some(done) = done {
                let _ = done.send(result);
            }
        }
        self.measure_free_space();
        let mut t = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = t.since {
            tracing::info!(
                failed_batches = t.failures, after = ?since.elapsed(),
                "spool writes succeed again"
            );
            *t = Trouble::default();
        }
    }

    /// A batch could not be made durable: its records get 4xx (nothing was acknowledged).
    /// Logged once when the trouble starts, then at most every 10 s (a full disk fails every
    /// batch, thousands a second).
    pub(super) fn refuse(&self, ops: Vec<Op>, e: &std::io::Error) {
        metrics::SPOOL_COMMIT_ERRORS.inc();
        let now = Instant::now();
        let mut t = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        t.failures += 1;
        let due = t.last_log.is_none_or(|l| now.duration_since(l) >= Duration::from_secs(10));
        t.since.get_or_insert(now);
        if due {
            t.last_log = Some(now);
            tracing::error!(
                error = %e, records = ops.len(), failed_batches = t.failures,
                "spool commit failed; the batch is refused with 4xx (repeats are logged every 10 s)"
            );
        }
        drop(t);
        let err = match e.raw_os_error() {
            Some(code) => SpoolError::from(std::io::Error::from_raw_os_error(code)),
            None => {
                SpoolError::Io(std::sync::Arc::new(std::io::Error::new(e.kind(), e.to_string())))
            }
        };
        for op in ops {
            if let Some(done) = op.done {
                let _ = done.send(Err(err.clone()));
            }
        }
    }

    /// After a failed write or sync: cut what may have been written. Then continue in a fresh
    /// segment, since after a failed fsync the state of the old file's pages is unknown
    /// (fsyncgate) - once per episode of failures, and only away from a segment that holds
    /// data: a full disk fails every batch, and rolling each time would leave thousands of empty
    /// segments. If the cut itself fails, the spool refuses new mail until restart.
    pub(super) fn repair(&self, writer: &mut Writer, cause: &std::io::Error) {
        if let Err(e2) = writer.file.set_len(writer.len).and_then(|_| writer.file.sync_all()) {
            tracing::error!(error = %e2, cause = %cause, "spool cannot recover from the write failure; refusing new mail until restart");
            self.broken.store(true, Ordering::Relaxed);
            return;
        }
        let mut t = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        if writer.len == 0 || t.rolled {
            return;
        }
        t.rolled = true;
        drop(t);
        if let Err(e) = self.roll(writer) {
            // The cut segment was synced, so its state is known: writing on in it is safe.
            tracing::warn!(error = %e, "could not start a new spool segment; continuing in the current one");
        }
    }

    /// Continues in a new segment; an old segment left empty is deleted.
    pub(super) fn roll(&self, writer: &mut Writer) -> std::io::Result<()> {
        let next = Writer::create(&writer.dir, writer.segment + 1)?;
        let old = std::mem::replace(writer, next);
        let mut st = self.index.write().unwrap_or_else(|e| e.into_inner());
        if old.len == 0 && fs::remove_file(segment_path(&old.dir, old.segment)).is_ok() {
            st.live.remove(&old.segment);
            st.seg_bytes.remove(&old.segment);
        }
        st.live.insert(writer.segment, 0);
        st.seg_bytes.insert(writer.segment, 0);
        Ok(())
    }

    fn checkpoint_loop(self: Arc<Self>) {
        let (lock, cv) = &self.stop;
        loop {
            let stopped = {
                let g = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (g, _) = cv
                    .wait_timeout_while(g, self.opts.checkpoint_interval, |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                *g
            };
            self.checkpoint();
            if stopped {
                return;
            }
        }
    }

    /// Saves the changed index entries with the position they reflect, then deletes segments
    /// that hold no live message, lie below that position and have no older segment left (so a
    /// removal record is never deleted before the message it removes).
    fn checkpoint(&self) {
        let guard = self.checkpoint.lock().unwrap_or_else(|e| e.into_inner());
        let Some(store) = guard.as_ref() else { return };
        let (ids, position) = {
            let mut st = self.index.write().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<QueueId> = std::mem::take(&mut st.dirty).into_iter().collect();
            (ids, st.applied)
        };
        let t = Instant::now();
        // In chunks: a million entries changed at once (a dead destination defers them all)
        // are never serialized together. Each chunk is taken under a short read lock, so an
        // entry may be newer than `position`; replay from `position` still ends in the log's
        // state (updates carry absolute values and conditional ones form one chain), and the
        // position is written last, only once every chunk is durable.
        for (k, chunk) in ids.chunks(CHECKPOINT_CHUNK).enumerate() {
            let encoded: Result<Vec<_>, _> = {
                let st = self.index.read().unwrap_or_else(|e| e.into_inner());
                chunk
                    .iter()
                    .map(|&id| {
                        st.entries
                            .get(&id)
                            .map(|e| super::index::encode_entry(e))
                            .transpose()
                            .map(|b| (id, b))
                    })
                    .collect()
            };
            let saved = encoded
                .map_err(|e| e.to_string())
                .and_then(|changes| store.save(&changes, None).map_err(|e| e.to_string()));
            if let Err(e) = saved {
                tracing::error!(error = %e, "spool index checkpoint failed; will retry");
                let mut st = self.index.write().unwrap_or_else(|e| e.into_inner());
                st.dirty.extend(ids[k * CHECKPOINT_CHUNK..].iter().copied());
                return;
            }
        }
        if let Err(e) = store.save(&[], Some(position)) {
            tracing::error!(error = %e, "spool index checkpoint failed; will retry");
            let mut st = self.index.write().unwrap_or_else(|e| e.into_inner());
            st.dirty.extend(ids);
            return;
        }
        metrics::SPOOL_CHECKPOINT_SECONDS.observe(t.elapsed().as_secs_f64());
        let mut st = self.index.write().unwrap_or_else(|e| e.into_inner());
        while let Some((&seg, &live)) = st.live.iter().next() {
            if live > 0 || seg >= position.segment {
                break;
            }
            if let Err(e) = fs::remove_file(segment_path(&self.opts.dir, seg)) {
                tracing::warn!(segment = seg, error = %e, "could not delete a dead segment");
                break;
            }
            st.live.remove(&seg);
            st.seg_bytes.remove(&seg);
        }
        st.publish_gauges();
    }
}

/// The io_uring loop reaches the spool only through this trait.
impl CommitQueue for Shared {
    fn take(&self, max: usize, wait: bool) -> (Vec<Op>, bool) {
        Shared::take(self, max, wait)
    }
    fn acknowledge(&self, writer: &mut Writer, ops: Vec<Op>, synced: bool) {
        Shared::acknowledge(self, writer, ops, synced)
    }
    fn refuse(&self, ops: Vec<Op>, e: &std::io::Error) {
        Shared::refuse(self, ops, e)
    }
    fn repair(&self, writer: &mut Writer, cause: &std::io::Error) {
        Shared::repair(self, writer, cause)
    }
    fn roll(&self, writer: &mut Writer) -> std::io::Result<()> {
        Shared::roll(self, writer)
    }
    fn segment_size(&self) -> u64 {
        self.opts.segment_size
    }
    fn set_eventfd(&self, fd: std::os::fd::OwnedFd) {
        let _ = self.eventfd.set(fd);
    }
    fn eventfd(&self) -> Option<std::os::fd::RawFd> {
        self.eventfd.get().map(std::os::fd::AsRawFd::as_raw_fd)
    }
}

impl Spool for LogSpool {
    fn next_id(&self) -> QueueId {
        QueueId(self.shared.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn store(&self, msg: NewMessage) -> Ticket {
        match record::encode_message(&msg.envelope, msg.trace, msg.body) {
            Ok(rec) => self.submit(rec, Apply::Insert(Box::new(msg.envelope))),
            Err(e) => ready(Err(e)),
        }
    }

    fn update(&self, update: RecipientUpdate) -> Ticket {
        match record::encode_update(&update) {
            Ok(rec) => self.submit(rec, Apply::Update(update)),
            Err(e) => ready(Err(e)),
        }
    }

    fn remove(&self, id: QueueId) -> Ticket {
        self.submit(record::encode_remove(id), Apply::Remove(id))
    }

    fn list(&self) -> Vec<Envelope> {
        let st = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
        st.entries.values().map(|e| e.envelope.clone()).collect()
    }

    fn get(&self, id: QueueId) -> Option<Envelope> {
        let st = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
        st.entries.get(&id).map(|e| e.envelope.clone())
    }

    fn lease_due(&self, now_ms: u64, limit: usize) -> Vec<Envelope> {
        self.shared.index.write().unwrap_or_else(|e| e.into_inner()).lease_due(now_ms, limit)
    }

    fn finished(&self) -> Vec<QueueId> {
        let st = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
        st.entries
            .values()
            .filter(|e| e.envelope.recipients.iter().all(|r| r.state != RecipientState::Queued))
            .map(|e| e.envelope.id)
            .collect()
    }

    fn release(&self, id: QueueId) {
        self.shared.index.write().unwrap_or_else(|e| e.into_inner()).release(id);
    }

    fn read_message(&self, id: QueueId) -> Result<Bytes, SpoolError> {
        let loc = {
            let st = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
            st.entries.get(&id).map(|e| e.loc).ok_or(SpoolError::NotFound)?
        };
        let file = File::open(segment_path(&self.shared.opts.dir, loc.segment))?;
        let mut buf = vec![0; loc.len as usize];
        let why = match file.read_exact_at(&mut buf, loc.offset) {
            Ok(()) => match record::decode(&buf) {
                Ok((Record::Message { envelope, content_offset }, _)) if envelope.id == id => {
                    return Ok(Bytes::from(buf).slice(content_offset..));
                }
                Ok(_) => format!("the record there is not message {id}"),
                Err(why) => format!("{why:?}"),
            },
            // The segment ends before the record: cut short under the checkpoint.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "missing".to_string(),
            Err(e) => return Err(e.into()),
        };
        // Damage found late (below the checkpoint, so recovery did not read it) is treated as
        // damage found at start: a copy aside, an ERROR, the metric, once per message.
        if self.shared.damaged_seen.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            metrics::SPOOL_DAMAGED_RECORDS.inc();
            let copy =
                recovery::quarantine_late(&self.shared.opts.dir, loc.segment, loc.offset, &buf)
                    .map(|p| p.display().to_string());
            tracing::error!(
                %id, segment = loc.segment, offset = loc.offset, why, copy = ?copy.ok(),
                "damaged spool record found on read; the message is bounced without its content"
            );
        }
        Err(SpoolError::Corrupt(format!("message {id} at {}:{}: {why}", loc.segment, loc.offset)))
    }

    fn stats(&self) -> SpoolStats {
        let st = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
        SpoolStats {
            messages: st.entries.len() as u64,
            recipients_queued: st.recipients[0],
            recipients_delivered: st.recipients[1],
            recipients_failed: st.recipients[2],
            segments: st.live.len() as u64,
            disk_bytes: st.seg_bytes.values().sum(),
            records_written: st.records_written,
            fsyncs: st.fsyncs,
        }
    }

    fn close(&self) {
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.shared.wake_committer();
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        // The commit thread drains first, then the checkpoint thread saves the final state.
        if !threads.is_empty() {
            let commit = threads.remove(0);
            let _ = commit.join();
        }
        *self.shared.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.stop.1.notify_all();
        for t in threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LogSpool {
    fn drop(&mut self) {
        self.close();
    }
}

/// Unix milliseconds now (for envelopes).
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
