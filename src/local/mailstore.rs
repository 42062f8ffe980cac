//! A Maildir as IMAP sees it: messages with UIDs (from [`super::uidlist`]), flags (the Maildir
//! `:2,` info letters, so other Maildir readers see the same flags) and an internal date, and
//! the operations IMAP needs: flag changes (a rename), expunge (an unlink) and reads of a byte
//! range (never the whole file unless asked for it).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Maildir;
use super::keywords::{self, Keywords};
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
    /// Keyword bits, indexes into the folder's [`Keywords`] (letters `a`..`z` in the name).
    pub keywords: u32,
    /// Seconds since the epoch: the delivery time from the Maildir name.
    pub internal_date: i64,
    /// Not yet reported as \Recent to any session (its UID is at or above the list's
    /// `recent_from`); a session's own \Recent set is the UIDs it claimed.
    pub recent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// The lowest UID no session has been told is \Recent.
    pub recent_from: u32,
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

/// The info part for `flags` and `keywords`, keeping `other` letters (those another Maildir
/// reader set and sluice does not interpret, such as `P` for passed), in ASCII order as the
/// format requires.
fn info_with(flags: u8, keywords: u32, other: &str) -> String {
    let mut letters: Vec<char> =
        LETTERS.iter().filter(|(_, b)| flags & b != 0).map(|(c, _)| *c).collect();
    letters.extend(keywords::letters(keywords));
    letters.extend(other.chars());
    letters.sort_unstable();
    letters.dedup();
    format!(":2,{}", letters.into_iter().collect::<String>())
}

/// The flags and keyword bits a message file's name gives, and the info letters sluice does
/// not interpret.
fn flags_of_path(path: &Path) -> (u8, u32, String) {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let info = name.split_once(':').map_or("", |(_, i)| i);
    let letters = info.strip_prefix("2,").unwrap_or("");
    let other = letters
        .chars()
        .filter(|c| c.is_ascii_uppercase() && !LETTERS.iter().any(|(l, _)| l == c))
        .collect();
    (parse_flags(info), keywords::bits_of_letters(letters), other)
}

/// How many times a flag change is tried again when the file was renamed under it (by another
/// session changing the same message's flags at the same moment).
const RENAME_RETRIES: usize = 16;

impl Maildir {
    /// Holds an exclusive lock on the Maildir's UID list while `f` runs (sessions and the
    /// delivery agent of this and other processes take it in turn).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _lock = self.lock("sluice-uidlist.lock")?;
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
                        keywords: keywords::bits_of_letters(info.strip_prefix("2,").unwrap_or("")),
                        internal_date,
                        recent: *uid >= uids.recent_from,
                    })
                })
                .collect();
            Ok(Snapshot {
                uidvalidity: uids.uidvalidity,
                uidnext: uids.uidnext,
                recent_from: uids.recent_from,
                messages,
            })
        })
    }

    /// Claims \Recent for one session (RFC 3501 2.3.2): the UIDs no session was told of yet
    /// (None: none). Another session claiming after this one gets none of them.
    pub fn claim_recent(&self) -> Result<Option<std::ops::Range<u32>>, StoreError> {
        self.locked(|| Ok(UidList::claim_recent(self.root())?))
    }

    /// Where the message named `unique` is now: `known` if it is still there, else the file
    /// in `cur/` or `new/` with that unique name whatever its info letters (another session,
    /// or another Maildir reader, renamed it to change its flags). None: it is gone.
    pub fn locate(&self, unique: &str, known: &Path) -> std::io::Result<Option<PathBuf>> {
        if fs::symlink_metadata(known).is_ok() {
            return Ok(Some(known.to_path_buf()));
        }
        for sub in ["cur", "new"] {
            let Some(dir) = self.read_sub(sub)? else { continue };
            for e in dir {
                let e = e?;
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.split(':').next() == Some(unique) {
                    return Ok(Some(e.path()));
                }
            }
        }
        Ok(None)
    }

    /// Runs `op` on the message's file; if the file was renamed meanwhile (NotFound), finds it
    /// by its unique name and runs `op` again there. Returns the result and the path it used
    /// (the caller keeps it), or NotFound when the message is gone.
    pub fn with_file<T>(
        &self,
        msg: &MessageInfo,
        mut op: impl FnMut(&Path) -> std::io::Result<T>,
    ) -> std::io::Result<(T, PathBuf)> {
        let mut path = msg.path.clone();
        for _ in 0..RENAME_RETRIES {
            match op(&path) {
                Ok(t) => return Ok((t, path)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match self.locate(&msg.unique, &path)? {
                        Some(p) if p != path => path = p,
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("the message file keeps being renamed"))
    }

    /// Changes a message's flags and keywords from what its file says now (not what a
    /// snapshot said): `change` gets the current ones and returns the new ones. The file moves to `cur/` with
    /// the matching info letters; a rename that finds the file renamed meanwhile by another
    /// session is tried again from that session's flags, so no change is lost. Returns the
    /// new path, flags and keywords, or None when the message is gone (expunged).
    pub fn update_flags(
        &self,
        msg: &MessageInfo,
        change: impl Fn(u8, u32) -> (u8, u32),
    ) -> Result<Option<(PathBuf, u8, u32)>, StoreError> {
        let mut path = msg.path.clone();
        for _ in 0..RENAME_RETRIES {
            let (flags, kw, other) = flags_of_path(&path);
            let (new, new_kw) = change(flags, kw);
            let info = info_with(new, new_kw, &other);
            let to = self.root().join("cur").join(format!("{}{info}", msg.unique));
            if to == path {
                if fs::symlink_metadata(&path).is_ok() {
                    return Ok(Some((path, new, new_kw)));
                }
            } else {
                match fs::rename(&path, &to) {
                    Ok(()) => return Ok(Some((to, new, new_kw))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match self.locate(&msg.unique, &path)? {
                Some(p) if p != path => path = p,
                Some(_) => {}
                None => return Ok(None),
            }
        }
        Err(std::io::Error::other("the message file keeps being renamed").into())
    }

    /// Gives a message exactly these flags (see [`Maildir::update_flags`]).
    pub fn set_flags(&self, msg: &MessageInfo, flags: u8) -> Result<Option<PathBuf>, StoreError> {
        Ok(self.update_flags(msg, |_, kw| (flags, kw))?.map(|(p, _, _)| p))
    }

    /// EXPUNGE: removes the messages that are \Deleted *now* (a message another session
    /// undeleted meanwhile stays), durably. Returns, in the order of `msgs`, whether each one
    /// is gone (removed here, or by another session before).
    pub fn expunge(&self, msgs: &[&MessageInfo]) -> Result<Vec<bool>, StoreError> {
        let mut gone = Vec::with_capacity(msgs.len());
        for m in msgs {
            let mut path = m.path.clone();
            let mut removed = None;
            for _ in 0..RENAME_RETRIES {
                // Where the file is now, with the flags it has now.
                match self.locate(&m.unique, &path)? {
                    Some(p) => path = p,
                    None => {
                        removed = Some(true);
                        break;
                    }
                }
                if flags_of_path(&path).0 & flag::DELETED == 0 {
                    removed = Some(false);
                    break;
                }
                match fs::remove_file(&path) {
                    Ok(()) => {
                        removed = Some(true);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(removed) = removed else {
                return Err(std::io::Error::other("the message file keeps being renamed").into());
            };
            gone.push(removed);
        }
        for sub in ["new", "cur"] {
            File::open(self.root().join(sub))?.sync_all()?;
        }
        Ok(gone)
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
    /// APPEND: stores a message with flags, keyword bits (of this folder's [`Keywords`]) and
    /// an internal date (seconds), durably (tmp, fsync, rename, fsync the directory). Returns
    /// its unique name.
    pub fn append(
        &self,
        message: Appended<'_>,
        (flags, keywords): (u8, u32),
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
        let (sub, file) = match (flags, keywords) {
            (0, 0) => ("new", unique.clone()),
            (f, k) => ("cur", format!("{unique}{}", info_with(f, k, ""))),
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
        // Keywords by name: the destination gives them its own letters (those it has no
        // room for are left behind).
        let source_kw = Keywords::load(self.root());
        let used = msgs.iter().fold(0, |acc, m| acc | m.keywords);
        let wanted: Vec<&str> = source_kw.names(used).collect();
        let dest_kw = match wanted.is_empty() {
            true => Keywords::default(),
            false => dest.ensure_keywords(&wanted).unwrap_or_else(|_| Keywords::load(dest.root())),
        };
        let mut names = Vec::with_capacity(msgs.len());
        for m in msgs {
            let unique = super::maildir::unique_name_at(hostname, m.size, Some(m.internal_date));
            let done = self.with_file(m, |from| {
                // The flags the file has now (another session may have changed them), without
                // letters that only mean something in this folder.
                let (flags, kw, _) = flags_of_path(from);
                let kw = dest_kw.bits_of(source_kw.names(kw));
                let to =
                    dest.root().join("cur").join(format!("{unique}{}", info_with(flags, kw, "")));
                match how {
                    Transfer::Move => fs::rename(from, &to),
                    Transfer::Copy => fs::hard_link(from, &to).or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Err(e),
                        _ => copy_durably(from, dest, &unique, &to),
                    }),
                }
            });
            match done {
                Ok(_) => names.push(Some(unique)),
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
            assert_eq!(parse_flags(info_with(bits, 0, "").trim_start_matches(':')), bits);
        }
        assert_eq!(info_with(flag::SEEN | flag::DRAFT | flag::DELETED, 0, ""), ":2,DST");
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

    /// RFC 3501 7.4.1, RFC 2180 4: a session whose snapshot has an old file name still
    /// changes and expunges the message, from the flags the file has now.
    #[test]
    fn a_stale_path_is_found_by_its_unique_name_and_no_change_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("Maildir"));
        md.deliver(&[b"Subject: a\r\n\r\none\r\n"], "h").unwrap();
        let s = md.snapshot().unwrap();
        let stale = &s.messages[0];
        // Another session sets \Seen: the file is renamed under this one's snapshot.
        md.set_flags(stale, flag::SEEN).unwrap().unwrap();
        let (path, flags, _) =
            md.update_flags(stale, |f, k| (f | flag::DELETED, k)).unwrap().unwrap();
        assert_eq!(flags, flag::SEEN | flag::DELETED, "the other session's \\Seen is kept");
        assert!(path.ends_with(format!("cur/{}:2,ST", stale.unique)), "{path:?}");
        let (text, _) = md.with_file(stale, |p| std::fs::read(p)).unwrap();
        assert_eq!(text, b"Subject: a\r\n\r\none\r\n");
        assert_eq!(md.expunge(&[stale]).unwrap(), [true]);
        assert!(md.snapshot().unwrap().messages.is_empty(), "expunged for real");
        assert!(md.update_flags(stale, |f, k| (f, k)).unwrap().is_none(), "gone");
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
        assert!(s2.messages[0].recent, "a flag change does not take \\Recent away");
        // The first session to claim \Recent gets both; nobody after it.
        assert_eq!(md.claim_recent().unwrap(), Some(1..3));
        assert!(md.snapshot().unwrap().messages.iter().all(|m| !m.recent));
        assert_eq!(md.claim_recent().unwrap(), None);
        assert_eq!(s2.uidvalidity, s.uidvalidity);
        // Only what is \Deleted on disk goes: the first message is not, yet.
        assert_eq!(md.expunge(&[&s2.messages[0]]).unwrap(), [false]);
        let p = md.set_flags(&s2.messages[0], flag::DELETED).unwrap().unwrap();
        let stale = MessageInfo { path: p, ..s2.messages[0].clone() };
        assert_eq!(md.expunge(&[&stale]).unwrap(), [true]);
        md.deliver(&[b"x"], "h").unwrap();
        let s3 = md.snapshot().unwrap();
        assert_eq!(s3.messages.iter().map(|m| m.uid).collect::<Vec<_>>(), [2, 3]);
        let p = &s3.messages[0].path;
        assert_eq!(header_len(p).unwrap(), 14);
        assert_eq!(read_range(p, 14, 100).unwrap(), b"two\r\n");
        assert_eq!(read_range(p, 2, 3).unwrap(), b"bje");
    }
}
