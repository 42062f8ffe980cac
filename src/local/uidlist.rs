//! The IMAP state a Maildir lacks: UIDVALIDITY, UIDNEXT and the UID of each message (RFC 3501
//! 2.3.1.1), kept in `sluice-uidlist` in the Maildir and brought in line with the files on
//! every [`UidList::sync`].
//!
//! The rules that keep clients' caches right across crashes:
//! - a UID is written to disk (temporary file, fsync, rename, fsync of the directory) before
//!   anyone is told about it, so after a crash the same message has the same UID;
//! - UIDs only grow: a message that appears gets `uidnext`, a message that is gone takes its UID
//!   with it, and `uidnext` never goes back, so no UID is reused within a UIDVALIDITY;
//! - a list that is missing or unreadable is rebuilt from the directory with a new UIDVALIDITY
//!   (the current time, or above the last one any mailbox of the user had if that is later:
//!   `sluice-uidvalidity` keeps it), which tells clients to forget what they cached.
//!
//! \Recent (RFC 3501 2.3.2) belongs to the first session told of a message: `recent_from` is
//! the lowest UID no session has claimed yet, and a session that selects the mailbox
//! read-write claims everything from there to `uidnext` ([`UidList::claim_recent`]).
//!
//! The file is text: a header `V<uidvalidity> N<uidnext> R<recent_from>` (a list without `R`,
//! from before it existed, has nothing recent), then one `<uid> <unique name>` per
//! line, in UID order.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "sluice-uidlist";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidList {
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// The lowest UID not yet reported as \Recent to any session.
    pub recent_from: u32,
    /// (uid, Maildir unique name), ascending by UID.
    pub entries: Vec<(u32, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum UidListError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// 2^32 - 1 UIDs used: the list starts again under a new UIDVALIDITY.
    #[error("UIDs exhausted")]
    Exhausted,
}

impl UidList {
    fn path(maildir: &Path) -> PathBuf {
        maildir.join(FILE_NAME)
    }

    /// Reads the list; None when it is missing or damaged (the caller rebuilds).
    pub fn load(maildir: &Path) -> Option<UidList> {
        let text = fs::read_to_string(Self::path(maildir)).ok()?;
        let mut lines = text.lines();
        let mut header = lines.next()?.split(' ');
        let uidvalidity = header.next()?.strip_prefix('V')?.parse().ok().filter(|v| *v > 0)?;
        let uidnext: u32 = header.next()?.strip_prefix('N')?.parse().ok()?;
        let recent_from = match header.next() {
            Some(r) => r.strip_prefix('R')?.parse().ok().filter(|r| *r <= uidnext)?,
            None => uidnext,
        };
        let mut entries = Vec::new();
        let mut last = 0;
        for line in lines {
            let (uid, name) = line.split_once(' ')?;
            let uid: u32 = uid.parse().ok()?;
            // Ascending, below uidnext, names without separators: anything else is damage.
            if uid <= last || uid >= uidnext || name.is_empty() || name.contains(['/', ':']) {
                return None;
            }
            last = uid;
            entries.push((uid, name.to_string()));
        }
        Some(UidList { uidvalidity, uidnext, recent_from, entries })
    }

    /// A fresh list (no messages) with a UIDVALIDITY greater than `previous`.
    fn fresh(maildir: &Path, previous: Option<u32>) -> UidList {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let floor = now.max(previous.map_or(1, |p| p.saturating_add(1))).max(1);
        // Never the same value twice for one user's mailboxes, across restarts too (a folder
        // deleted and created again within a second starts its UIDs over, so its UIDVALIDITY
        // must change): the user's Maildir keeps the last value handed out.
        let uidvalidity = validity::reserve(&validity::counter_dir(maildir), floor)
            .unwrap_or_else(|_| validity::in_process(floor));
        UidList { uidvalidity, uidnext: 1, recent_from: 1, entries: Vec::new() }
    }

    /// Brings the list in line with `present` (the unique names now in `new/` and `cur/`, in
    /// delivery order): new messages get UIDs, vanished ones are dropped. Writes the list
    /// durably when it changed, before returning it.
    pub fn sync(maildir: &Path, present: &[String]) -> Result<UidList, UidListError> {
        let loaded = Self::load(maildir);
        let had_file = Self::path(maildir).exists();
        let mut list = match loaded {
            Some(l) => l,
            None => {
                let previous = had_file.then(|| Self::previous_validity(maildir)).flatten();
                Self::fresh(maildir, previous)
            }
        };
        let changed = list.merge(present)?;
        if changed || !had_file {
            list.save(maildir)?;
        }
        Ok(list)
    }

    /// Whatever UIDVALIDITY a damaged file still shows, so the new one is greater.
    fn previous_validity(maildir: &Path) -> Option<u32> {
        let text = fs::read_to_string(Self::path(maildir)).ok()?;
        text.lines().next()?.split(' ').next()?.strip_prefix('V')?.parse().ok()
    }

    /// Applies the directory's view; true when anything changed.
    fn merge(&mut self, present: &[String]) -> Result<bool, UidListError> {
        let here: HashMap<&str, ()> = present.iter().map(|n| (n.as_str(), ())).collect();
        let before = self.entries.len();
        self.entries.retain(|(_, name)| here.contains_key(name.as_str()));
        let mut changed = self.entries.len() != before;
        let known: HashMap<String, ()> =
            self.entries.iter().map(|(_, n)| (n.clone(), ())).collect();
        for name in present {
            if known.contains_key(name) {
                continue;
            }
            if self.uidnext == u32::MAX {
                return Err(UidListError::Exhausted);
            }
            self.entries.push((self.uidnext, name.clone()));
            self.uidnext += 1;
            changed = true;
        }
        Ok(changed)
    }

    /// Temporary file, fsync, rename over the list, fsync of the directory.
    fn save(&self, maildir: &Path) -> Result<(), UidListError> {
        let path = Self::path(maildir);
        let tmp = maildir.join(format!("{FILE_NAME}.tmp"));
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| UidListError::Io { path: p.clone(), source }
        };
        let mut text = format!("V{} N{} R{}\n", self.uidvalidity, self.uidnext, self.recent_from);
        for (uid, name) in &self.entries {
            text.push_str(&format!("{uid} {name}\n"));
        }
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(maildir).and_then(|d| d.sync_all()).map_err(io(maildir))
    }

    /// Claims \Recent for the caller (who holds the list's lock): the UIDs from `recent_from`
    /// to `uidnext`, which no other session will be told are recent. None: nothing new.
    pub fn claim_recent(maildir: &Path) -> Result<Option<std::ops::Range<u32>>, UidListError> {
        let Some(mut list) = Self::load(maildir) else { return Ok(None) };
        if list.recent_from >= list.uidnext {
            return Ok(None);
        }
        let claimed = list.recent_from..list.uidnext;
        list.recent_from = list.uidnext;
        list.save(maildir)?;
        Ok(Some(claimed))
    }

    /// The UID of a message by its unique name.
    pub fn uid(&self, unique: &str) -> Option<u32> {
        self.entries.iter().find(|(_, n)| n == unique).map(|(u, _)| *u)
    }
}

/// The last UIDVALIDITY handed out to a user's mailboxes, in `sluice-uidvalidity` at the
/// root of the user's Maildir (Dovecot keeps `dovecot-uidvalidity` for the same reason).
mod validity {
    use std::fs::OpenOptions;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};

    pub const FILE_NAME: &str = "sluice-uidvalidity";

    /// Where a mailbox's counter is: a Maildir++ folder (`.name` inside a Maildir) shares its
    /// parent's.
    pub fn counter_dir(maildir: &Path) -> PathBuf {
        let folder = maildir.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        match maildir.parent() {
            Some(root) if folder && root.join("cur").is_dir() => root.to_path_buf(),
            _ => maildir.to_path_buf(),
        }
    }

    /// The next UIDVALIDITY for a mailbox under `dir`: at least `floor`, above the last one
    /// handed out there, and recorded (fsync'd) before it is returned. Sessions of this and
    /// other processes take turns through a lock on the file.
    pub fn reserve(dir: &Path, floor: u32) -> std::io::Result<u32> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(FILE_NAME))?;
        // SAFETY: flock on a descriptor we own; released when `f` is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        // Unreadable (a torn write): the floor, which is the clock, still holds.
        let last: u32 = text.trim().parse().unwrap_or(0);
        let value = floor.max(last.saturating_add(1)).max(1);
        f.seek(SeekFrom::Start(0))?;
        f.set_len(0)?;
        f.write_all(format!("{value}\n").as_bytes())?;
        f.sync_all()?;
        Ok(value)
    }

    /// Without the file (it could not be written): unique within this process.
    pub fn in_process(floor: u32) -> u32 {
        use std::sync::atomic::{AtomicU32, Ordering};
        static LAST: AtomicU32 = AtomicU32::new(0);
        let last = LAST.fetch_max(floor, Ordering::SeqCst);
        if last >= floor { LAST.fetch_add(1, Ordering::SeqCst).saturating_add(1) } else { floor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn uids_grow_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let l = UidList::sync(dir.path(), &names(&["a", "b"])).unwrap();
        assert_eq!(l.entries, [(1, "a".into()), (2, "b".into())]);
        let v = l.uidvalidity;
        // b expunged, c delivered: c gets 3, not 2.
        let l = UidList::sync(dir.path(), &names(&["a", "c"])).unwrap();
        assert_eq!(l.entries, [(1, "a".into()), (3, "c".into())]);
        assert_eq!((l.uidvalidity, l.uidnext), (v, 4));
        // Everything gone, then new mail: still counting up.
        UidList::sync(dir.path(), &[]).unwrap();
        let l = UidList::sync(dir.path(), &names(&["d"])).unwrap();
        assert_eq!(l.entries, [(4, "d".into())]);
        assert_eq!(l.uid("d"), Some(4));
    }

    #[test]
    fn what_was_written_is_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = UidList::sync(dir.path(), &names(&["x", "y", "z"])).unwrap();
        assert_eq!(UidList::load(dir.path()), Some(first.clone()));
        assert_eq!(UidList::sync(dir.path(), &names(&["x", "y", "z"])).unwrap(), first);
        assert!(!dir.path().join("sluice-uidlist.tmp").exists());
    }

    #[test]
    fn a_lost_or_damaged_list_is_rebuilt_under_a_greater_uidvalidity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        // A list from "the future" so the rebuilt validity must come from it, not the clock.
        fs::write(&path, "V4000000000 N3\n1 a\n2 b\n").unwrap();
        let l = UidList::sync(dir.path(), &names(&["a", "b"])).unwrap();
        assert_eq!(l.uidvalidity, 4_000_000_000, "an intact list is kept");
        for damage in [
            "V4000000000 N3\n2 a\n1 b\n",
            "V4000000000 N2\n1 a\n2 b\n",
            "V4000000000 N3\n1 a/b\n",
            "garbage",
        ] {
            fs::write(&path, damage).unwrap();
            let l = UidList::sync(dir.path(), &names(&["a", "b"])).unwrap();
            if damage != "garbage" {
                assert!(l.uidvalidity > 4_000_000_000, "{damage:?} -> {}", l.uidvalidity);
            }
            assert_eq!(l.entries, [(1, "a".into()), (2, "b".into())], "{damage:?}");
            fs::write(&path, "V4000000000 N3\n1 a\n2 b\n").unwrap();
        }
        fs::remove_file(&path).unwrap();
        let l = UidList::sync(dir.path(), &names(&["a"])).unwrap();
        assert_eq!(l.entries, [(1, "a".into())]);
        assert!(path.exists(), "the rebuilt list is written at once");
    }

    /// A folder deleted and created again in the same second, by a restarted process (no
    /// in-process state): the counter in the user's Maildir still gives it a new UIDVALIDITY.
    #[test]
    fn uidvalidity_never_repeats_for_a_users_mailboxes_across_restarts() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join(".Lists.rust");
        assert_eq!(validity::counter_dir(&folder), folder, "not inside a Maildir");
        fs::create_dir(root.path().join("cur")).unwrap();
        assert_eq!(validity::counter_dir(&folder), root.path());
        assert_eq!(validity::counter_dir(root.path()), root.path(), "INBOX: the root");
        assert_eq!(validity::reserve(root.path(), 1000).unwrap(), 1000);
        assert_eq!(validity::reserve(root.path(), 1000).unwrap(), 1001, "same second");
        assert_eq!(validity::reserve(root.path(), 5000).unwrap(), 5000, "the clock moved on");
        let recorded = fs::read_to_string(root.path().join(validity::FILE_NAME)).unwrap();
        assert_eq!(recorded, "5000\n");
        // A torn counter: the floor (the clock) still holds.
        fs::write(root.path().join(validity::FILE_NAME), "50\u{0}").unwrap();
        assert_eq!(validity::reserve(root.path(), 6000).unwrap(), 6000);
        // Through the UID list: a folder's list lost twice in one second gets two values.
        fs::create_dir(&folder).unwrap();
        let first = UidList::sync(&folder, &names(&["a"])).unwrap().uidvalidity;
        fs::remove_file(folder.join(FILE_NAME)).unwrap();
        let second = UidList::sync(&folder, &names(&["a"])).unwrap().uidvalidity;
        assert!(second > first, "{first} then {second}");
    }

    #[test]
    fn randomized_histories_keep_every_uid_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = crate::test_rng::xorshift(0x0051_D11F);
        let mut present: Vec<String> = Vec::new();
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut max_uid = 0;
        let mut counter = 0;
        for _ in 0..300 {
            match next() % 3 {
                0 if !present.is_empty() => {
                    let i = (next() % present.len() as u64) as usize;
                    present.remove(i);
                }
                _ => {
                    counter += 1;
                    present.push(format!("m{counter}"));
                }
            }
            let l = UidList::sync(dir.path(), &present).unwrap();
            assert_eq!(l.entries.len(), present.len());
            for (uid, name) in &l.entries {
                match seen.get(name) {
                    Some(u) => assert_eq!(u, uid, "{name} changed UID"),
                    None => {
                        assert!(*uid > max_uid, "UID {uid} reused");
                        max_uid = *uid;
                        seen.insert(name.clone(), *uid);
                    }
                }
            }
        }
    }
}
