//! The segment files and the commit machinery both commit paths share: the writer of the
//! current segment, a batch of pending operations and its slices, and [`CommitQueue`], the
//! spool's side of a commit loop. The portable loop (in `log`) and the io_uring loop (`uring`)
//! both sit on top of this module, so neither imports the other's internals.

use std::fs::{self, File, OpenOptions};
use std::io::IoSlice;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::oneshot;

use super::SpoolError;
use super::record::Encoded;
use super::state::Apply;
use crate::metrics;

/// What a commit loop needs from the spool: batches to write, and where their outcome goes.
pub(super) trait CommitQueue: Send + Sync + 'static {
    /// Up to `max` pending operations (waiting for some when `wait`), and whether the spool is
    /// closing.
    fn take(&self, max: usize, wait: bool) -> (Vec<Op>, bool);
    /// The batch is on disk (durably when `synced`): apply it and answer its waiters.
    fn acknowledge(&self, writer: &mut Writer, ops: Vec<Op>, synced: bool);
    /// The batch could not be written: answer its waiters with the error.
    fn refuse(&self, ops: Vec<Op>, e: &std::io::Error);
    /// After a failed write: make the segment end where the acknowledged data ends.
    fn repair(&self, writer: &mut Writer, cause: &std::io::Error);
    /// Continue in a fresh segment.
    fn roll(&self, writer: &mut Writer) -> std::io::Result<()>;
    /// Size past which a new segment is started.
    fn segment_size(&self) -> u64;
    /// Where submitters signal new work to an io_uring loop (set once by that loop).
    fn set_eventfd(&self, fd: OwnedFd);
    fn eventfd(&self) -> Option<RawFd>;
}

pub(super) struct Op {
    pub(super) rec: Encoded,
    pub(super) apply: Apply,
    pub(super) done: Option<oneshot::Sender<Result<(), SpoolError>>>,
    pub(super) queued_at: Instant,
}

pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:016x}.log"))
}

pub(super) fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name.strip_prefix("seg-").and_then(|s| s.strip_suffix(".log"))
            && let Ok(n) = u64::from_str_radix(hex, 16)
        {
            segs.push(n);
        }
    }
    segs.sort_unstable();
    Ok(segs)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment file being appended to; owned by the commit thread.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) segment: u64,
    pub(super) file: File,
    /// Bytes durably written (acknowledged) so far.
    pub(super) len: u64,
}

impl Writer {
    pub(super) fn create(dir: &Path, segment: u64) -> std::io::Result<Writer> {
        // No O_APPEND: the io_uring writer places each batch at an explicit offset, and with
        // O_APPEND Linux would ignore it. The portable writer writes at `len` with pwritev.
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .open(segment_path(dir, segment))?;
        // The new name must survive a power cut before any record in it is acknowledged.
        sync_dir(dir)?;
        Ok(Writer { dir: dir.to_path_buf(), segment, file, len: 0 })
    }

    /// Writes all slices at the end of the acknowledged data and makes them durable.
    pub(super) fn write_durably(
        &mut self,
        mut slices: &mut [IoSlice<'_>],
        sync: bool,
    ) -> std::io::Result<()> {
        let mut off = self.len;
        while !slices.is_empty() {
            let n = pwritev(&self.file, slices, off)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            off += n as u64;
            IoSlice::advance_slices(&mut slices, n);
        }
        if !sync {
            return Ok(()); // test hook only (`unsafe_skip_sync`)
        }
        let t = Instant::now();
        self.file.sync_data()?;
        metrics::SPOOL_FSYNC_SECONDS.observe(t.elapsed().as_secs_f64());
        metrics::SPOOL_FSYNCS.inc();
        Ok(())
    }
}

pub(super) fn batch_len(ops: &[Op]) -> u64 {
    ops.iter().map(|o| o.rec.len() as u64).sum()
}

/// The batch as one list of slices: each record's header, trace and body, never copied.
pub(super) fn batch_slices(ops: &[Op]) -> Vec<IoSlice<'_>> {
    let mut slices = Vec::with_capacity(ops.len() * 3);
    for op in ops {
        slices.push(IoSlice::new(&op.rec.head));
        for part in [&op.rec.trace, &op.rec.body] {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
    }
    slices
}

/// `pwritev(2)`: std has no stable positional vectored write.
fn pwritev(file: &File, slices: &[IoSlice<'_>], offset: u64) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let count = slices.len().min(1024) as libc::c_int; // IOV_MAX
    // SAFETY: IoSlice is ABI-compatible with iovec, and the slices outlive the call.
    let n = unsafe {
        libc::pwritev(file.as_raw_fd(), slices.as_ptr().cast(), count, offset as libc::off_t)
    };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}
