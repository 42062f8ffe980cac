//! The io_uring commit path (DESIGN.md, "The spool"): the commit thread submits each batch as
//! linked `writev` SQEs followed by an `fdatasync`, and keeps up to two batches in flight, so
//! the next batch is written while the previous one syncs. Batches are acknowledged strictly in
//! order: a batch's records are durable only when its own sync and every earlier batch's sync
//! have completed.
//!
//! The low-level `io-uring` crate is used rather than tokio-uring: this is a dedicated OS
//! thread with its own ring, not an async runtime.
//!
//! New records arrive through an eventfd that the ring itself reads, so one wait covers both
//! "a batch finished" and "records are pending".

use std::collections::VecDeque;
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{IoUring, opcode, squeue, types};

use super::segment::{CommitQueue, Op, Writer, batch_len, batch_slices};
use crate::metrics;

/// Records per batch at most: keeps a batch's SQEs (one per 1,024 slices, plus the sync) far
/// below the ring's size.
const MAX_BATCH: usize = 4096;
/// Slices per writev (IOV_MAX).
const IOV_MAX: usize = 1024;
const RING_ENTRIES: u32 = 64;
/// Batches written or syncing at once.
const IN_FLIGHT: usize = 2;
/// user_data of the eventfd read; batch SQEs carry `seq << 16 | part`.
const EVENT: u64 = u64::MAX;
const SYNC_PART: u64 = 0xFFFF;

pub struct Ring {
    ring: IoUring,
    /// Submitters add to it; the ring reads it.
    eventfd: OwnedFd,
}

impl Ring {
    /// Sets up a ring and proves it works here: the opcodes exist and an fdatasync of the
    /// segment file through it succeeds (seccomp filters and old kernels fail here, not later).
    pub fn probe(file: &File) -> std::io::Result<Ring> {
        let mut ring = IoUring::new(RING_ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Writev::CODE, "writev"),
            (opcode::Fsync::CODE, "fsync"),
            (opcode::Read::CODE, "read"),
        ] {
            if !probe.is_supported(code) {
                return Err(std::io::Error::other(format!("io_uring has no {name}")));
            }
        }
        let sync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(1);
        // SAFETY: the SQE refers to no memory.
        unsafe { ring.submission().push(&sync) }.map_err(std::io::Error::other)?;
        ring.submit_and_wait(1)?;
        let res = ring.completion().next().map_or(-libc::EIO, |c| c.result());
        if res < 0 {
            return Err(std::io::Error::from_raw_os_error(-res));
        }
        // SAFETY: eventfd(2) with valid flags; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Ring { ring, eventfd })
    }
}

/// Wakes the io_uring commit thread (adds 1 to the eventfd).
pub fn signal(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd we own. A failure (counter full)
    // means a wake-up is already pending.
    unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
}

/// A batch the kernel may still be reading from: its records and the iovecs pointing at them
/// stay alive (and unmoved) until every one of its SQEs has completed.
struct Batch {
    seq: u64,
    ops: Vec<Op>,
    /// iovecs, boxed so their address is stable while the kernel holds it.
    iovecs: Box<[libc::iovec]>,
    /// Bytes each writev must write, by part.
    part_len: Vec<u64>,
    /// SQEs not completed yet.
    outstanding: usize,
    error: Option<std::io::Error>,
    submitted: Instant,
}

// SAFETY: the raw pointers in `iovecs` point into `ops`' buffers, which move with the batch.
unsafe impl Send for Batch {}

impl Batch {
    fn new(seq: u64, ops: Vec<Op>) -> Batch {
        let iovecs: Box<[libc::iovec]> = batch_slices(&ops)
            .iter()
            .map(|s: &IoSlice<'_>| libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            })
            .collect();
        let part_len = iovecs
            .chunks(IOV_MAX)
            .map(|c| c.iter().map(|v| v.iov_len as u64).sum())
            .collect::<Vec<_>>();
        Batch {
            seq,
            outstanding: part_len.len() + 1,
            ops,
            iovecs,
            part_len,
            error: None,
            submitted: Instant::now(),
        }
    }

    /// Pushes the batch's linked chain: writev parts at `offset`, then fdatasync.
    fn submit(&self, ring: &mut IoUring, fd: RawFd, mut offset: u64) -> std::io::Result<()> {
        let mut sq = ring.submission();
        // All or nothing: a partly pushed chain would point the kernel at buffers we free.
        if sq.capacity() - sq.len() < self.part_len.len() + 1 {
            return Err(std::io::Error::other("io_uring queue full"));
        }
        for (part, chunk) in self.iovecs.chunks(IOV_MAX).enumerate() {
            let write = opcode::Writev::new(types::Fd(fd), chunk.as_ptr(), chunk.len() as u32)
                .offset(offset)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(self.seq << 16 | part as u64);
            offset += self.part_len[part];
            // SAFETY: the iovecs and the buffers they point to live in `self`, which stays in
            // the in-flight queue until all of its completions have been reaped.
            unsafe { sq.push(&write) }.map_err(|_| std::io::Error::other("io_uring queue full"))?;
        }
        let sync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(self.seq << 16 | SYNC_PART);
        // SAFETY: no memory is referenced.
        unsafe { sq.push(&sync) }.map_err(|_| std::io::Error::other("io_uring queue full"))?;
        Ok(())
    }

    /// Records one completion of this batch.
    fn complete(&mut self, part: u64, res: i32) {
        self.outstanding -= 1;
        if self.error.is_some() {
            return;
        }
        if res < 0 {
            self.error = Some(std::io::Error::from_raw_os_error(-res));
        } else if part != SYNC_PART && res as u64 != self.part_len[part as usize] {
            // A short write breaks the chain (the sync after it is cancelled). On a regular file
            // Linux writes short only when the disk or the quota is full (segments never reach
            // the file size limit), which the portable path would learn as ENOSPC on its retry:
            // report it as such, so new mail gets 452 4.3.1 rather than 451.
            tracing::warn!(
                written = res,
                expected = self.part_len[part as usize],
                "short write to the spool: disk full"
            );
            self.error = Some(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
    }
}

struct Loop<Q: CommitQueue> {
    shared: Arc<Q>,
    writer: Writer,
    ring: IoUring,
    eventfd: RawFd,
    /// Where the eventfd read lands; boxed for a stable address.
    event_buf: Box<u64>,
    event_armed: bool,
    in_flight: VecDeque<Batch>,
    next_seq: u64,
    /// Where the next batch goes: past the acknowledged data and every batch in flight.
    end: u64,
}

pub(super) fn commit_loop<Q: CommitQueue>(shared: Arc<Q>, writer: Writer, ring: Ring) {
    let fd = ring.eventfd.as_raw_fd();
    shared.set_eventfd(ring.eventfd);
    let end = writer.len;
    let mut l = Loop {
        shared,
        writer,
        ring: ring.ring,
        eventfd: fd,
        event_buf: Box::new(0),
        event_armed: false,
        in_flight: VecDeque::new(),
        next_seq: 0,
        end,
    };
    l.run();
}

impl<Q: CommitQueue> Loop<Q> {
    fn run(&mut self) {
        loop {
            let mut closed = false;
            if self.in_flight.len() < IN_FLIGHT {
                let (ops, c) = self.shared.take(MAX_BATCH, false);
                closed = c;
                if !ops.is_empty() {
                    self.start(ops);
                    continue;
                }
            }
            if self.in_flight.is_empty() && closed {
                self.disarm();
                return;
            }
            if !self.event_armed && self.in_flight.len() < IN_FLIGHT {
                self.arm();
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring wait failed");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            self.reap();
            self.finish_done();
        }
    }

    /// Starts writing a batch, after the ones in flight (or in a new segment).
    fn start(&mut self, ops: Vec<Op>) {
        let total = batch_len(&ops);
        if self.end > 0 && self.end + total > self.shared.segment_size() {
            // A new segment: everything in flight lands in the old one first.
            self.drain();
            if let Err(e) = self.shared.roll(&mut self.writer) {
                self.shared.refuse(ops, &e);
                return;
            }
            self.end = self.writer.len;
        }
        let batch = Batch::new(self.next_seq, ops);
        self.next_seq += 1;
        if let Err(e) = batch.submit(&mut self.ring, self.writer.file.as_raw_fd(), self.end) {
            // Nothing of this batch was queued: `submit` checks for room for the whole chain
            // first (and by construction there always is).
            self.shared.refuse(batch.ops, &e);
            return;
        }
        self.end += total;
        self.in_flight.push_back(batch);
        // Submit now: the kernel starts writing while we look for the next batch.
        if let Err(e) = self.ring.submit() {
            tracing::warn!(error = %e, "io_uring submit failed; retrying at the next wait");
        }
    }

    fn arm(&mut self) {
        let read = opcode::Read::new(
            types::Fd(self.eventfd),
            (&mut *self.event_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(EVENT);
        // SAFETY: `event_buf` is boxed and outlives the read: `disarm` reaps it before the loop
        // ends.
        if unsafe { self.ring.submission().push(&read) }.is_ok() {
            self.event_armed = true;
        }
    }

    /// Completes an armed eventfd read before the buffer goes away.
    fn disarm(&mut self) {
        while self.event_armed {
            if let Some(fd) = self.shared.eventfd() {
                signal(fd);
            }
            let _ = self.ring.submit_and_wait(1);
            self.reap();
        }
    }

    fn reap(&mut self) {
        let done: Vec<(u64, i32)> =
            self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (data, res) in done {
            if data == EVENT {
                self.event_armed = false;
                continue;
            }
            let (seq, part) = (data >> 16, data & 0xFFFF);
            if let Some(b) = self.in_flight.iter_mut().find(|b| b.seq == seq) {
                b.complete(part, res);
            }
        }
    }

    /// Acknowledges finished batches from the front, in order. A failed batch fails every batch
    /// after it too (they were written behind it), once the kernel is done with them.
    fn finish_done(&mut self) {
        while self.in_flight.front().is_some_and(|b| b.outstanding == 0) {
            let Some(b) = self.in_flight.pop_front() else { break };
            match b.error {
                None => {
                    metrics::SPOOL_FSYNC_SECONDS.observe(b.submitted.elapsed().as_secs_f64());
                    metrics::SPOOL_FSYNCS.inc();
                    self.shared.acknowledge(&mut self.writer, b.ops, true);
                }
                Some(e) => {
                    self.wait_for_kernel();
                    self.shared.repair(&mut self.writer, &e);
                    self.shared.refuse(b.ops, &e);
                    let rest: Vec<Batch> = self.in_flight.drain(..).collect();
                    for later in rest {
                        self.shared.refuse(later.ops, &e);
                    }
                    self.end = self.writer.len;
                }
            }
        }
    }

    /// Waits until the kernel is done with every batch in flight (after a failure).
    fn wait_for_kernel(&mut self) {
        while self.in_flight.iter().any(|b| b.outstanding > 0) {
            let _ = self.ring.submit_and_wait(1);
            self.reap();
        }
    }

    /// Waits for and acknowledges every batch in flight.
    fn drain(&mut self) {
        while !self.in_flight.is_empty() {
            if self.in_flight.front().is_some_and(|b| b.outstanding > 0) {
                let _ = self.ring.submit_and_wait(1);
                self.reap();
            }
            self.finish_done();
        }
    }
}
