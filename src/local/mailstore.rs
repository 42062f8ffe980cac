//! A Maildir as IMAP sees it: messages with UIDs (from [`super::uidlist`]), flags (the Maildir
//! `:2,` info letters, so other Maildir readers see the same flags) and an internal date, and
//! the operations IMAP needs: flag changes (a rename), expunge (an unlink) and reads of a byte
//! range (never the whole file unless asked for it).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Maildir;
use super::uidlist::{UidList, UidListError};

/// IMAP system flags as bits; Maildir letters D, F, R, S, T (RFC 3501 2.3.2; Maildir spec).
pub mod flag {
    pub const SEEN: u8 = 1;
    pub const ANSWERED: u8 = 2;
    pub const FLAGGED: u8 = 4;
    pub const DELETED: u8 = 8;
    pub const DRAFT: u8 = 16;
}

/// Maildir info letters in ASCII order, as the format requires, with their flag bits.
const LETTERS: [(char, u8); 5] = [
    ('D', flag::DRAFT),
    ('F', flag::FLAGGED),
    ('R', flag::ANSWERED),
    ('S', flag::SEEN),
    ('T', flag::DELETED),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub uid: u32,
    pub unique: String,
    pub path: PathBuf,
    pub size: u64,
    pub flags: u8,
    /// Seconds since the epoch: the delivery time from the Maildir name.
    pub internal_date: i64,
    /// In `new/`: not seen by any client yet (IMAP \Recent).
    pub recent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// In UID order; sequence number = index + 1.
    pub messages: Vec<MessageInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    UidList(#[from] UidListError),
}

fn parse_flags(info: &str) -> u8 {
    let letters = info.strip_prefix("2,").unwrap_or("");
    LETTERS.iter().filter(|(c, _)| letters.contains(*c)).fold(0, |acc, (_, bit)| acc | bit)
}

fn info_for(flags: u8) -> String {
    let letters: String = LETTERS.iter().filter(|(_, b)| flags & b != 0).map(|(c, _)| *c).collect();
    format!(":2,{letters}")
}

impl Maildir {
    /// Holds an exclusive lock on the Maildir's UID list while `f` runs (sessions and the
    /// delivery agent of this and other processes take it in turn).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root().join("sluice-uidlist.lock"))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        f()
    }

    /// The messages with their UIDs, assigning (durably) UIDs to new ones. Sessions of one
    /// mailbox share the result while the Maildir is unchanged (1,000 clients idling on a large
    /// mailbox hold one copy, not 1,000).
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        // Never created here: a session still on a folder another one deleted must not bring
        // it back.
        if !self.root().join("cur").is_dir() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound).into());
        }
        if let Some(s) = cache::get(self.root()) {
            return Ok(s);
        }
        let s = Arc::new(self.snapshot_uncached()?);
        cache::put(self.root(), &s);
        Ok(s)
    }

    fn snapshot_uncached(&self) -> Result<Snapshot, StoreError> {
        self.locked(|| {
            let entries = self.list()?;
            let names: Vec<String> = entries.iter().map(|e| e.unique.clone()).collect();
            let uids = UidList::sync(self.root(), &names)?;
            let by_name: std::collections::HashMap<&str, &super::maildir::Entry> =
                entries.iter().map(|e| (e.unique.as_str(), e)).collect();
            let messages = uids
                .entries
                .iter()
                .filter_map(|(uid, name)| {
                    let e = by_name.get(name.as_str())?;
                    let file = e.path.file_name()?.to_string_lossy().into_owned();
                    let info = file.split_once(':').map_or("", |(_, i)| i);
                    let internal_date =
                        name.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    Some(MessageInfo {
                        uid: *uid,
                        unique: name.clone(),
                        path: e.path.clone(),
                        size: e.size,
                        flags: parse_flags(info),
                        internal_date,
                        recent: e.path.parent().is_some_and(|p| p.ends_with("new")),
                    })
                })
                .collect();
            Ok(Snapshot { uidvalidity: uids.uidvalidity, uidnext: uids.uidnext, messages })
        })
    }

    /// Gives a message these flags: it moves to `cur/` with the matching info letters.
    /// Returns its new path.
    pub fn set_flags(&self, msg: &MessageInfo, flags: u8) -> Result<PathBuf, StoreError> {
        let to = self.root().join("cur").join(format!("{}{}", msg.unique, info_for(flags)));
        if to != msg.path {
            fs::rename(&msg.path, &to)?;
        }
        Ok(to)
    }

    /// Removes messages for good (EXPUNGE), durably.
    pub fn expunge(&self, paths: &[PathBuf]) -> Result<(), StoreError> {
        for p in paths {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        for sub in ["new", "cur"] {
            File::open(self.root().join(sub))?.sync_all()?;
        }
        Ok(())
    }
}

/// What APPEND stores: the octets, or a file the driver streamed a large literal into (in the
/// same file system; it is moved, not copied, and removed if the store fails).
#[derive(Clone, Copy)]
pub enum Appended<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// How [`Maildir::transfer`] brings messages into another folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// COPY: a hard link (a copy where links fail) under a new name.
    Copy,
    /// MOVE: a rename, atomic, so a crash leaves each message in one folder or the other.
    Move,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Maildir {
    /// APPEND: stores a message with flags and an internal date (seconds), durably (tmp,
    /// fsync, rename, fsync the directory). Returns its unique name.
    pub fn append(
        &self,
        message: Appended<'_>,
        flags: u8,
        date: Option<i64>,
        hostname: &str,
    ) -> Result<String, StoreError> {
        use std::io::Write;
        self.create()?;
        let size = match &message {
            Appended::Bytes(b) => b.len() as u64,
            Appended::File(p) => fs::metadata(p)?.len(),
        };
        let unique = super::maildir::unique_name_at(hostname, size, date);
        // Without flags it is new (\Recent); with them it has been seen by a client: cur/.
        let (sub, file) = match flags {
            0 => ("new", unique.clone()),
            f => ("cur", format!("{unique}{}", info_for(f))),
        };
        let tmp = match &message {
            Appended::Bytes(_) => self.root().join("tmp").join(&unique),
            Appended::File(p) => p.to_path_buf(),
        };
        let result = (|| {
            let f = match message {
                Appended::Bytes(data) => {
                    let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
                    f.write_all(data)?;
                    f
                }
                Appended::File(p) => fs::OpenOptions::new().write(true).open(p)?,
            };
            if let Some(t) = date.and_then(|d| u64::try_from(d).ok()) {
                // Dovecot takes the internal date from the modification time.
                f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))?;
            }
            f.sync_all()?;
            fs::rename(&tmp, self.root().join(sub).join(&file))?;
            sync_dir(&self.root().join(sub))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        Ok(unique)
    }

    /// COPY or MOVE `msgs` into `dest`, keeping flags and internal dates, durably. Returns the
    /// new unique names in the order of `msgs` (messages gone meanwhile are skipped: None).
    pub fn transfer(
        &self,
        msgs: &[MessageInfo],
        dest: &Maildir,
        how: Transfer,
        hostname: &str,
    ) -> Result<Vec<Option<String>>, StoreError> {
        dest.create()?;
        let mut names = Vec::with_capacity(msgs.len());
        for m in msgs {
            let unique = super::maildir::unique_name_at(hostname, m.size, Some(m.internal_date));
            let to = dest.root().join("cur").join(format!("{unique}{}", info_for(m.flags)));
            let done = match how {
                Transfer::Move => fs::rename(&m.path, &to),
                Transfer::Copy => fs::hard_link(&m.path, &to).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Err(e),
                    _ => copy_durably(&m.path, dest, &unique, &to),
                }),
            };
            match done {
                Ok(()) => names.push(Some(unique)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => names.push(None),
                Err(e) => return Err(e.into()),
            }
        }
        sync_dir(&dest.root().join("cur"))?;
        if how == Transfer::Move {
            for sub in ["new", "cur"] {
                sync_dir(&self.root().join(sub))?;
            }
        }
        Ok(names)
    }

    /// The UIDs `names` got in this Maildir (assigning them durably), with the UIDVALIDITY.
    pub fn uids_of(&self, names: &[Option<String>]) -> Result<(u32, Vec<Option<u32>>), StoreError> {
        let s = self.snapshot()?;
        let by_name: std::collections::HashMap<&str, u32> =
            s.messages.iter().map(|m| (m.unique.as_str(), m.uid)).collect();
        let uids =
            names.iter().map(|n| n.as_deref().and_then(|n| by_name.get(n).copied())).collect();
        Ok((s.uidvalidity, uids))
    }
}

fn copy_durably(from: &Path, dest: &Maildir, unique: &str, to: &Path) -> std::io::Result<()> {
    let tmp = dest.root().join("tmp").join(unique);
    fs::copy(from, &tmp)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, to)
}

/// Snapshots shared between sessions, keyed by Maildir. One is reused only while `new/`,
/// `cur/` and the UID list keep the modification times they had when it was taken, and only
/// if those times were over a second old then: a change within the file system's timestamp
/// granularity could otherwise leave the times equal and the snapshot stale.
mod cache {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, LazyLock, Mutex, Weak};
    use std::time::{Duration, SystemTime};

    use super::Snapshot;

    type Stamp = [SystemTime; 3];
    type Entries = HashMap<PathBuf, (Weak<Snapshot>, Stamp)>;

    static CACHE: LazyLock<Mutex<Entries>> = LazyLock::new(|| Mutex::new(HashMap::new()));

    /// The modification times, if all are old enough to be trusted.
    fn stamp(root: &Path) -> Option<Stamp> {
        let m = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stamp = [
            m(root.join("new"))?,
            m(root.join("cur"))?,
            m(root.join(super::super::uidlist::FILE_NAME))?,
        ];
        let settled = SystemTime::now().checked_sub(Duration::from_secs(1))?;
        stamp.iter().all(|t| *t < settled).then_some(stamp)
    }

    pub fn get(root: &Path) -> Option<Arc<Snapshot>> {
        let now = stamp(root)?;
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let (weak, then) = cache.get(root)?;
        if *then != now {
            return None;
        }
        weak.upgrade()
    }

    pub fn put(root: &Path, s: &Arc<Snapshot>) {
        let Some(now) = stamp(root) else { return };
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 1000 {
            cache.retain(|_, (w, _)| w.strong_count() > 0);
        }
        cache.insert(root.to_path_buf(), (Arc::downgrade(s), now));
    }
}

/// Up to `len` octets of `path` from `offset` (a partial FETCH reads only those).
pub fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    // Sized from the file, so the read is one call into a buffer that never grows (a Maildir
    // file does not change; if it did, this still reads what is there).
    let len = len.min(f.metadata()?.len().saturating_sub(offset));
    if offset > 0 {
        f.seek(SeekFrom::Start(offset))?;
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut out)?;
    Ok(out)
}

/// The length of the header in `bytes`, blank line included.
pub fn header_len_of(bytes: &[u8]) -> usize {
    let mut len = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        len += line.len();
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    len
}

/// The length of the header, blank line included (RFC 3501 BODY[HEADER]); reads only the
/// header.
pub fn header_len(path: &Path) -> std::io::Result<u64> {
    let mut f = std::io::BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    let mut len = 0u64;
    loop {
        line.clear();
        let n = std::io::BufRead::read_until(&mut f, b'\n', &mut line)?;
        len += n as u64;
        if n == 0 || line == b"\r\n" || line == b"\n" {
            return Ok(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_through_maildir_info() {
        for bits in 0..32u8 {
            assert_eq!(parse_flags(info_for(bits).trim_start_matches(':')), bits);
        }
        assert_eq!(info_for(flag::SEEN | flag::DRAFT | flag::DELETED), ":2,DST");
        assert_eq!(parse_flags("2,FRS"), flag::FLAGGED | flag::ANSWERED | flag::SEEN);
        assert_eq!(parse_flags(""), 0);
    }

    /// Makes the Maildir look untouched for a while, as a mailbox nobody writes to.
    fn age(md: &Maildir) {
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        for p in [
            md.root().join("new"),
            md.root().join("cur"),
            md.root().join(super::super::uidlist::FILE_NAME),
        ] {
            File::open(&p).unwrap().set_modified(then).unwrap();
        }
    }

    #[test]
    fn sessions_share_a_snapshot_until_the_maildir_changes() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("Maildir"));
        md.deliver(&[b"one\r\n"], "h").unwrap();
        md.snapshot().unwrap();
        age(&md);
        let a = md.snapshot().unwrap();
        let b = md.snapshot().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "an unchanged Maildir gives the same snapshot");
        // A delivery changes new/: the next snapshot sees it.
        md.deliver(&[b"two\r\n"], "h").unwrap();
        let c = md.snapshot().unwrap();
        assert_eq!(c.messages.len(), 2);
        // A flag change (a rename into cur/) too, even from a snapshot taken just before.
        age(&md);
        let d = md.snapshot().unwrap();
        md.set_flags(&d.messages[0], flag::SEEN).unwrap();
        assert_eq!(md.snapshot().unwrap().messages[0].flags, flag::SEEN);
    }

    #[test]
    fn snapshot_flags_and_expunge_keep_uids() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("Maildir"));
        md.deliver(&[b"Subject: a\r\n\r\none\r\n"], "h").unwrap();
        md.deliver(&[b"Subject: b\r\n\r\ntwo\r\n"], "h").unwrap();
        let s = md.snapshot().unwrap();
        assert_eq!(s.messages.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2]);
        assert!(s.messages.iter().all(|m| m.recent && m.flags == 0));
        md.set_flags(&s.messages[0], flag::SEEN | flag::FLAGGED).unwrap();
        let s2 = md.snapshot().unwrap();
        assert_eq!(s2.messages[0].flags, flag::SEEN | flag::FLAGGED);
        assert!(!s2.messages[0].recent);
        assert_eq!(s2.uidvalidity, s.uidvalidity);
        md.expunge(&[s2.messages[0].path.clone()]).unwrap();
        md.deliver(&[b"x"], "h").unwrap();
        let s3 = md.snapshot().unwrap();
        assert_eq!(s3.messages.iter().map(|m| m.uid).collect::<Vec<_>>(), [2, 3]);
        let p = &s3.messages[0].path;
        assert_eq!(header_len(p).unwrap(), 14);
        assert_eq!(read_range(p, 14, 100).unwrap(), b"two\r\n");
        assert_eq!(read_range(p, 2, 3).unwrap(), b"bje");
    }
}
