//! One owner per data dir: `flock(2)` on `<data_dir>/LOCK`, held for the life of the process.
//!
//! The daemon takes it exclusively before it opens anything else, and writes its pid into the
//! file so a second instance can say who holds it. The offline queue CLI takes it shared, so it
//! can read a stopped daemon's spool but never one that a daemon is writing. The kernel releases
//! the lock when the process dies, kill -9 included: a stale file never blocks a restart.
//!
//! What it does not do: protect against another host on a shared filesystem (NFS flock is
//! advisory at best); keep a data dir on local storage.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why the data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock (`pid` is what it wrote, if readable).
    #[error("data dir {} is in use by pid {}", .dir.display(), .pid.map_or("unknown".into(), |p| p.to_string()))]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock data dir {}: {source}", .dir.display())]
    Io { dir: PathBuf, source: std::io::Error },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Clone, Copy)]
pub enum LockMode {
    /// The daemon: the only writer.
    Exclusive,
    /// Offline readers: any number, but never beside the daemon.
    Shared,
}

impl DataDirLock {
    /// Takes the lock without waiting. The data dir must exist.
    pub fn acquire(dir: &Path, mode: LockMode) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io { dir: dir.to_path_buf(), source };
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let op = match mode {
            LockMode::Exclusive => libc::LOCK_EX,
            LockMode::Shared => libc::LOCK_SH,
        };
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = text.trim().parse().ok();
                return Err(LockError::InUse { dir: dir.to_path_buf(), pid });
            }
            return Err(io(err));
        }
        if matches!(mode, LockMode::Exclusive) {
            // Who holds it, for the next instance's error message. Not synced: it is a hint.
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
        }
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flock locks belong to the open file description, so two opens in one process conflict
    /// exactly as two processes would.
    #[test]
    fn exclusive_excludes_everyone_and_shared_excludes_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path(), LockMode::Exclusive).unwrap();
        let err = DataDirLock::acquire(dir.path(), LockMode::Exclusive).unwrap_err();
        let want =
            format!("data dir {} is in use by pid {}", dir.path().display(), std::process::id());
        assert_eq!(err.to_string(), want);
        assert!(DataDirLock::acquire(dir.path(), LockMode::Shared).is_err());
        drop(held);

        let a = DataDirLock::acquire(dir.path(), LockMode::Shared).unwrap();
        let _b = DataDirLock::acquire(dir.path(), LockMode::Shared).unwrap();
        assert!(matches!(
            DataDirLock::acquire(dir.path(), LockMode::Exclusive),
            Err(LockError::InUse { .. })
        ));
        drop((a, _b));
        DataDirLock::acquire(dir.path(), LockMode::Exclusive).unwrap();
    }
}
