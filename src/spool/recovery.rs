//! Start-up recovery, in phases: drop empty segments, load the index checkpoint when it is
//! usable, replay the log from the checkpoint's position, then set damaged bytes aside.
//!
//! Damage is handled by where it is (DESIGN.md, "The spool"):
//! - a torn *tail* (the unfinished last write of the last segment, with no valid record after it)
//!   is cut: nothing in it was acknowledged;
//! - a damaged record anywhere else costs that record alone: the scan resumes at the next valid
//!   record header, the damaged bytes are copied to `quarantine/` with their position, and one
//!   ERROR line says how many regions were skipped and which messages they held;
//! - a record of a newer format version stops start-up, and nothing is changed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::index::{CheckpointStore, OpenError, Position};
use super::record::{self, Invalid, Record};
use super::segment::{segment_path, sync_dir};
use super::state::{Apply, IndexState};
use super::{QueueId, SpoolError, SpoolOptions};
use crate::metrics;

/// What recovery rebuilt: the index, the highest id seen, and the damage found.
#[derive(Default)]
pub(super) struct Recovered {
    pub state: IndexState,
    pub max_id: u64,
    /// Entries that came from the checkpoint rather than from replaying the log.
    pub from_checkpoint: usize,
    damage: Vec<Damage>,
}

/// A damaged region of the log that was skipped (or a torn tail that was cut).
struct Damage {
    segment: u64,
    offset: usize,
    bytes: Vec<u8>,
    why: Invalid,
    /// Messages whose records were in the region, as far as their headers survived.
    messages: Vec<QueueId>,
    tail: bool,
}

/// Removes segment files holding no byte: a full disk or a crash right after a roll leaves
/// them, and the writer always starts a fresh segment anyway.
pub(super) fn remove_empty_segments(dir: &Path, segments: &mut Vec<u64>) -> std::io::Result<()> {
    let before = segments.len();
    segments.retain(|&s| {
        let p = segment_path(dir, s);
        let empty = fs::metadata(&p).is_ok_and(|m| m.len() == 0);
        !(empty && fs::remove_file(&p).is_ok())
    });
    if segments.len() != before {
        sync_dir(dir)?;
        tracing::info!(removed = before - segments.len(), "removed empty spool segments");
    }
    Ok(())
}

/// Phase 1: the checkpoint, when it matches the log. Returns the store (None when read-only)
/// and the position replay starts from.
pub(super) fn load_checkpoint(
    opts: &SpoolOptions,
    segments: &[u64],
    rec: &mut Recovered,
) -> Result<(Option<CheckpointStore>, Position), SpoolError> {
    let from_start = Position { segment: segments.first().copied().unwrap_or(0), offset: 0 };
    if opts.read_only {
        // The daemon that wrote it may be gone, but its redb file is not ours to open read-only
        // safely: rebuild in memory from the log.
        return Ok((None, from_start));
    }
    let path = opts.dir.join("index.redb");
    let opened = match CheckpointStore::open(&path) {
        // Another process has it open: never a reason to delete it (the data-dir lock should
        // have stopped us earlier; this is the second line of defence).
        Err(OpenError::InUse) => return Err(SpoolError::Index(OpenError::InUse.to_string())),
        Err(OpenError::Unreadable(e)) => {
            tracing::warn!(error = %e, "spool index unreadable; rebuilding it from the log");
            let _ = fs::remove_file(&path);
            CheckpointStore::open(&path)
        }
        ok => ok,
    };
    let (store, loaded) = opened.map_err(|e| SpoolError::Index(e.to_string()))?;
    // The checkpoint is usable when its segment still exists, or when every segment up to it
    // is gone (deleted as dead, or removed as empty): replay then starts at the next one.
    let start = loaded.position.map(|p| match segments.iter().find(|&&s| s >= p.segment) {
        Some(&s) if s == p.segment => p,
        Some(&s) => Position { segment: s, offset: 0 },
        None => Position { segment: p.segment + 1, offset: 0 },
    });
    if let Some(start) = start {
        let read = store.for_each_entry(|e| {
            rec.max_id = rec.max_id.max(e.envelope.id.0);
            rec.state.insert_loaded(e);
            rec.from_checkpoint += 1;
        });
        match read {
            Ok(()) => return Ok((Some(store), start)),
            Err(e) => {
                tracing::warn!(error = %e, "spool index unreadable; rebuilding it from the log");
                rec.state = IndexState::default();
                rec.max_id = 0;
                rec.from_checkpoint = 0;
            }
        }
    }
    drop(store);
    let _ = fs::remove_file(&path);
    let (store, _) = CheckpointStore::open(&path).map_err(|e| SpoolError::Index(e.to_string()))?;
    Ok((Some(store), from_start))
}

/// Phase 2: every record from `start` on, applied to the index in log order.
pub(super) fn replay(
    opts: &SpoolOptions,
    segments: &[u64],
    start: Position,
    rec: &mut Recovered,
) -> Result<(), SpoolError> {
    let last = segments.last().copied();
    for &seg in segments.iter().filter(|&&s| s >= start.segment) {
        let data = fs::read(segment_path(&opts.dir, seg))?;
        rec.state.live.entry(seg).or_default();
        let from = if seg == start.segment { start.offset as usize } else { 0 };
        let end = rec.replay_segment(seg, &data, from, Some(seg) == last)?;
        rec.state.seg_bytes.insert(seg, end as u64);
    }
    for &seg in segments.iter().filter(|&&s| s < start.segment) {
        rec.state.live.entry(seg).or_default();
        let bytes = fs::metadata(segment_path(&opts.dir, seg)).map(|m| m.len()).unwrap_or(0);
        rec.state.seg_bytes.insert(seg, bytes);
    }
    Ok(())
}

impl Recovered {
    /// Applies the records of one segment from `off`; returns where its valid data ends (short
    /// of the file's end only for a torn tail of the last segment).
    fn replay_segment(
        &mut self,
        seg: u64,
        data: &[u8],
        mut off: usize,
        is_last: bool,
    ) -> Result<usize, SpoolError> {
        while off < data.len() {
            match record::decode(&data[off..]) {
                Ok((r, len)) => {
                    self.apply(r, seg, off, len);
                    off += len;
                }
                Err(Invalid::NewerVersion(v)) => {
                    return Err(SpoolError::Corrupt(format!(
                        "the record at segment {seg:016x} offset {off} has format version {v}, \
                         newer than this sluice reads ({}): run the newer sluice; nothing was changed",
                        record::VERSION
                    )));
                }
                Err(why) => match record::resync(data, off + 1) {
                    Some(next) => {
                        self.damaged(seg, off, &data[off..next], why, false);
                        off = next;
                    }
                    None if is_last => {
                        // Nothing valid follows: the unfinished last write, cut below.
                        self.damaged(seg, off, &data[off..], why, true);
                        return Ok(off);
                    }
                    None => {
                        self.damaged(seg, off, &data[off..], why, false);
                        return Ok(data.len());
                    }
                },
            }
        }
        Ok(data.len())
    }

    fn apply(&mut self, r: Record, segment: u64, offset: usize, len: usize) {
        let (apply, content_offset) = match r {
            Record::Message { envelope, content_offset } => {
                self.max_id = self.max_id.max(envelope.id.0);
                (Apply::Insert(Box::new(envelope)), content_offset as u32)
            }
            Record::Update(u) => (Apply::Update(u), 0),
            Record::Remove(id) => {
                self.max_id = self.max_id.max(id.0);
                (Apply::Remove(id), 0)
            }
        };
        let loc = super::index::Location {
            segment,
            offset: offset as u64,
            len: len as u64,
            content_offset,
        };
        self.state.apply(apply, loc);
    }

    fn damaged(&mut self, segment: u64, offset: usize, bytes: &[u8], why: Invalid, tail: bool) {
        let messages = record::salvage_envelope(bytes).map(|e| vec![e.id]).unwrap_or_default();
        self.damage.push(Damage { segment, offset, bytes: bytes.to_vec(), why, messages, tail });
    }

    /// Phase 3: cut a torn tail, copy damaged regions to `quarantine/`, and say so.
    pub(super) fn set_damage_aside(&mut self, opts: &SpoolOptions) -> Result<(), SpoolError> {
        let mut damage = std::mem::take(&mut self.damage);
        // Every message the index places in a damaged region is named, not only the one
        // whose envelope could be salvaged from its bytes.
        for d in &mut damage {
            let end = (d.offset + d.bytes.len()) as u64;
            for e in self.state.entries.values() {
                let l = &e.loc;
                if l.segment == d.segment
                    && l.offset < end
                    && l.offset + l.len > d.offset as u64
                    && !d.messages.contains(&e.envelope.id)
                {
                    d.messages.push(e.envelope.id);
                }
            }
        }
        let mut skipped = 0;
        let mut affected = Vec::new();
        for d in &damage {
            // Zeros are the usual shape of a torn tail (the file grew before its data landed):
            // nothing to keep or report.
            let zeros = d.bytes.iter().all(|&b| b == 0);
            let copy = if opts.read_only || (d.tail && zeros) {
                None
            } else {
                Some(quarantine(&opts.dir, d)?)
            };
            let copy = copy.as_ref().map(|p| p.display().to_string());
            if d.tail && zeros {
                continue;
            }
            if d.tail {
                tracing::warn!(
                    segment = d.segment, offset = d.offset, why = ?d.why, bytes = d.bytes.len(),
                    copy, "cutting an incomplete record at the end of the spool log"
                );
            } else {
                skipped += 1;
                affected.extend(d.messages.iter().copied());
                metrics::SPOOL_DAMAGED_RECORDS.inc();
                tracing::error!(
                    segment = d.segment, offset = d.offset, why = ?d.why, bytes = d.bytes.len(),
                    messages = ?d.messages.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    copy, "damaged spool record skipped; the records after it are kept"
                );
            }
        }
        // Records the index knows that lie past the end of their segment's file (a segment
        // cut short below the checkpoint, where replay does not look): those messages are
        // damaged too; reading them fails, and delivery bounces them at once.
        let mut missing = Vec::new();
        for e in self.state.entries.values() {
            let size = self.state.seg_bytes.get(&e.loc.segment).copied().unwrap_or(0);
            if e.loc.offset + e.loc.len > size {
                missing.push(e.envelope.id);
            }
        }
        if !missing.is_empty() {
            metrics::SPOOL_DAMAGED_RECORDS.inc_by(missing.len() as u64);
            tracing::error!(
                count = missing.len(),
                messages = ?missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "spool records missing: their segment ends before them; the messages are bounced \
                 at their next delivery attempt"
            );
        }
        if skipped > 0 {
            tracing::error!(
                regions = skipped,
                messages = ?affected.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "spool recovery skipped damaged records (copies in spool/quarantine/); \
                 the messages listed are no longer queued"
            );
        }
        // The torn tail of the last segment is cut only after its copy is safe.
        if !opts.read_only {
            for d in damage.iter().filter(|d| d.tail) {
                let f = OpenOptions::new().write(true).open(segment_path(&opts.dir, d.segment))?;
                f.set_len(d.offset as u64)?;
                f.sync_all()?;
            }
        }
        Ok(())
    }
}

/// A record that failed its check when read (after start-up), copied aside like damage found
/// at start.
pub(super) fn quarantine_late(
    dir: &Path,
    segment: u64,
    offset: u64,
    bytes: &[u8],
) -> std::io::Result<std::path::PathBuf> {
    let d = Damage {
        segment,
        offset: offset as usize,
        bytes: bytes.to_vec(),
        why: Invalid::BadChecksum,
        messages: Vec::new(),
        tail: false,
    };
    quarantine(dir, &d)
}

/// Writes a damaged region to `quarantine/seg-<segment>-at-<offset>.bin`, durably.
fn quarantine(dir: &Path, d: &Damage) -> std::io::Result<std::path::PathBuf> {
    let qdir = dir.join("quarantine");
    fs::create_dir_all(&qdir)?;
    let path = qdir.join(format!("seg-{:016x}-at-{}.bin", d.segment, d.offset));
    let mut f = File::create(&path)?;
    f.write_all(&d.bytes)?;
    f.sync_all()?;
    sync_dir(&qdir)?;
    Ok(path)
}
