//! One Maildir (`cur/ new/ tmp/`), written as the format requires and so that a delivery is
//! durable before it is acknowledged: the message goes to `tmp/`, the file is fsync'd, renamed
//! into `new/`, and `new/` is fsync'd (the `maildir` crate skips that last step, which loses
//! acknowledged mail in a power cut). File names follow the Maildir convention Dovecot uses,
//! `<secs>.M<micros>P<pid>Q<n>.<host>,S=<size>`, so any Maildir reader (Dovecot included)
//! can serve the same mailboxes; `S=` lets quota and listing skip a `stat` per message.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A Maildir on disk.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
}

/// One message of the maildrop: its unique name (the part before `:2,`), where it is, and its
/// size in octets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub unique: String,
    pub path: PathBuf,
    pub size: u64,
}

static DELIVERIES: AtomicU64 = AtomicU64::new(0);

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Maildir {
    pub fn new(root: impl Into<PathBuf>) -> Maildir {
        Maildir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `cur/ new/ tmp/` (and the parents) if missing, each creation made durable in
    /// its parent directory.
    pub fn create(&self) -> std::io::Result<()> {
        if self.root.join("tmp").is_dir() && self.root.join("new").is_dir() {
            return Ok(());
        }
        create_durably(&self.root)?;
        for sub in ["cur", "new", "tmp"] {
            create_durably(&self.root.join(sub))?;
        }
        Ok(())
    }

    /// Writes one message made of `parts` (header lines sluice adds, then the message) and
    /// returns its unique name once it is durable in `new/`.
    pub fn deliver(&self, parts: &[&[u8]], hostname: &str) -> std::io::Result<String> {
        self.deliver_with_info(parts, hostname, None)
    }

    /// [`Maildir::deliver`], into `cur/` with these info letters when `info` is set (a
    /// message delivered with flags or keywords, as `$Junk` for quarantined mail).
    pub fn deliver_with_info(
        &self,
        parts: &[&[u8]],
        hostname: &str,
        info: Option<&str>,
    ) -> std::io::Result<String> {
        self.deliver_keyed(parts, hostname, info, None)
    }

    /// [`Maildir::deliver_with_info`], with a delivery key (`<queue id>-<recipient>`) in the
    /// name (`,X=<key>`, a field Maildir readers ignore), so a delivery repeated after a crash
    /// can be found ([`Maildir::has_delivery`]).
    pub fn deliver_keyed(
        &self,
        parts: &[&[u8]],
        hostname: &str,
        info: Option<&str>,
        key: Option<&str>,
    ) -> std::io::Result<String> {
        self.create()?;
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let unique = match key {
            None => unique_name(hostname, size as u64),
            Some(k) => {
                let plain = unique_name(hostname, size as u64);
                // Before `,S=`: `<secs>.<unique>.<host>,X=<key>,S=<size>`.
                match plain.rsplit_once(",S=") {
                    Some((head, size)) => format!("{head},X={k},S={size}"),
                    None => format!("{plain},X={k}"),
                }
            }
        };
        let tmp = self.root.join("tmp").join(&unique);
        let (sub, file) = match info {
            None => ("new", unique.clone()),
            Some(i) => ("cur", format!("{unique}:2,{i}")),
        };
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            for p in parts {
                f.write_all(p)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, self.root.join(sub).join(&file))?;
            sync_dir(&self.root.join(sub))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| unique)
    }

    /// The entries of `sub` (`new`, `cur`, `tmp`); none when it does not exist.
    pub fn read_sub(&self, sub: &str) -> std::io::Result<Option<fs::ReadDir>> {
        match fs::read_dir(self.root.join(sub)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every message in `new/` and `cur/`, oldest delivery first (names start with the time).
    pub fn list(&self) -> std::io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Some(dir) = self.read_sub(sub)? else { continue };
            for e in dir {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let unique = name.split(':').next().unwrap_or(&name).to_string();
                let size = match size_from_name(&unique) {
                    Some(s) => s,
                    None => e.metadata()?.len(),
                };
                out.push(Entry { unique, path: e.path(), size });
            }
        }
        out.sort_by_cached_key(|e| delivery_order(&e.unique));
        Ok(out)
    }

    /// An exclusive lock on `name` in this Maildir, held (across processes too) until the
    /// returned file is dropped: read-modify-write of a shared file goes under one.
    pub fn lock(&self, name: &str) -> std::io::Result<File> {
        use std::os::fd::AsRawFd;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(name))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(lock)
    }

    /// Removes files in `tmp/` last modified over `max_age` ago: what a crash or power cut
    /// left of deliveries and APPENDs that never reached `new/` (the Maildir specification
    /// says 36 hours). Returns how many went.
    pub fn clean_tmp(&self, max_age: std::time::Duration) -> std::io::Result<usize> {
        let Some(before) = SystemTime::now().checked_sub(max_age) else { return Ok(0) };
        let Some(dir) = self.read_sub("tmp")? else { return Ok(0) };
        let mut removed = 0;
        for e in dir {
            let e = e?;
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_file() && meta.modified().is_ok_and(|t| t < before) {
                match fs::remove_file(e.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Whether a message delivered with this key is in `new/` or `cur/` (read once, after a
    /// restart or a failed attempt, never on the usual path).
    pub fn has_delivery(&self, key: &str) -> std::io::Result<bool> {
        let marker = format!(",X={key},");
        for sub in ["new", "cur"] {
            let Some(dir) = self.read_sub(sub)? else { continue };
            for e in dir {
                if e?.file_name().to_string_lossy().contains(&marker) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Octets in use (for the quota).
    pub fn usage(&self) -> std::io::Result<u64> {
        Ok(self.list()?.iter().map(|e| e.size).sum())
    }
}

fn create_durably(dir: &Path) -> std::io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().ok_or(e)?;
            create_durably(parent)?;
            return create_durably(dir);
        }
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(p) => sync_dir(p),
        None => Ok(()),
    }
}

/// `M<micros>P<pid>Q<n>`: unique within this host and second.
pub fn unique_token() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    format!("{}.M{}P{}Q{}", now.as_secs(), now.subsec_micros(), std::process::id(), n)
}

/// `<secs>.M<micros>P<pid>Q<n>.<host>,S=<size>`: unique per host (time, process, counter).
fn unique_name(hostname: &str, size: u64) -> String {
    unique_name_at(hostname, size, None)
}

/// A unique name whose leading seconds are `secs` (a message APPENDed or copied with its
/// internal date) rather than now; the rest still makes it unique.
pub fn unique_name_at(hostname: &str, size: u64, secs: Option<i64>) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    // '/' and ':' would change the path or the flags; Maildir escapes them as octal.
    let host = hostname.replace('/', "\\057").replace(':', "\\072");
    format!(
        "{}.M{}P{}Q{}.{},S={}",
        secs.map_or(now.as_secs(), |s| s.max(0) as u64),
        now.subsec_micros(),
        std::process::id(),
        n,
        host,
        size
    )
}

/// Delivery order from the name: seconds, then microseconds (`M<usec>`, not zero-padded, so
/// the names do not sort as strings), then the per-process counter (`Q<n>`), then the name.
fn delivery_order(unique: &str) -> (u64, u64, u64, String) {
    let mut parts = unique.split('.');
    let secs = parts.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let mid = parts.next().unwrap_or("");
    let field = |tag: char| -> u64 {
        mid.split_once(tag)
            .map(|(_, rest)| rest.chars().take_while(|c| c.is_ascii_digit()).collect::<String>())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    };
    (secs, field('M'), field('Q'), unique.to_string())
}

fn size_from_name(unique: &str) -> Option<u64> {
    unique.split(',').find_map(|f| f.strip_prefix("S=")).and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_lands_in_new_whole_and_is_listed_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("a/b/Maildir"));
        let name =
            md.deliver(&[b"Delivered-To: a@b\r\n", b"Subject: x\r\n\r\nhi\r\n"], "h").unwrap();
        let path = md.root().join("new").join(&name);
        let text = fs::read(&path).unwrap();
        assert_eq!(text, b"Delivered-To: a@b\r\nSubject: x\r\n\r\nhi\r\n");
        assert!(name.ends_with(&format!(",S={}", text.len())), "{name}");
        assert_eq!(fs::read_dir(md.root().join("tmp")).unwrap().count(), 0, "tmp is left empty");
        let second = md.deliver(&[b"x"], "h").unwrap();
        let list = md.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].unique, name);
        assert_eq!(list[1].unique, second);
        assert_eq!(md.usage().unwrap(), text.len() as u64 + 1);
    }

    #[test]
    fn tmp_files_older_than_36_hours_are_removed_and_newer_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("Maildir"));
        md.create().unwrap();
        let (old, fresh) = (md.root().join("tmp/old"), md.root().join("tmp/fresh"));
        fs::write(&old, b"x").unwrap();
        fs::write(&fresh, b"y").unwrap();
        let then = SystemTime::now() - std::time::Duration::from_secs(37 * 3600);
        File::options().write(true).open(&old).unwrap().set_modified(then).unwrap();
        let day_and_a_half = std::time::Duration::from_secs(36 * 3600);
        assert_eq!(md.clean_tmp(day_and_a_half).unwrap(), 1);
        assert!(!old.exists() && fresh.exists());
        assert_eq!(md.clean_tmp(day_and_a_half).unwrap(), 0);
    }

    #[test]
    fn listing_is_in_delivery_order_not_string_order() {
        let mut names = vec!["100.M95P1Q2.h", "100.M123456P1Q1.h", "99.M5P1Q9.h", "100.M95P1Q10.h"];
        names.sort_by_cached_key(|n| delivery_order(n));
        assert_eq!(names, ["99.M5P1Q9.h", "100.M95P1Q2.h", "100.M95P1Q10.h", "100.M123456P1Q1.h"]);
    }

    #[test]
    fn names_are_unique_and_safe_for_paths() {
        let a = unique_name("mail/host:1", 5);
        let b = unique_name("mail/host:1", 5);
        assert_ne!(a, b);
        assert!(!a.contains('/') && !a.contains(':'), "{a}");
        assert_eq!(size_from_name(&a), Some(5));
    }

    #[test]
    fn messages_moved_to_cur_with_flags_keep_their_unique_name() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path());
        let name = md.deliver(&[b"abc"], "h").unwrap();
        fs::rename(
            md.root().join("new").join(&name),
            md.root().join("cur").join(format!("{name}:2,S")),
        )
        .unwrap();
        let list = md.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].unique, name);
        assert_eq!(list[0].size, 3);
    }
}
