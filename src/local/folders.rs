//! Maildir++ folders: a user's `Maildir/` is INBOX and each other folder is a Maildir in a
//! directory beside `cur/ new/ tmp/` named `.` + its path with `.` between levels (`Lists/rust`
//! is `.Lists.rust`), as Dovecot and Courier lay them out. IMAP names use `/` between levels;
//! a `.` or `=` inside a level is written `=2E`/`=3D` on disk so it cannot split a level.
//! Subscriptions are the `subscriptions` file, one name per line.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;

use super::Maildir;

/// The IMAP hierarchy delimiter.
pub const DELIMITER: char = '/';

/// Folders every mailbox gets at its first IMAP login, with their RFC 6154 roles.
pub const DEFAULT_FOLDERS: [(&str, &str); 4] =
    [("Drafts", "\\Drafts"), ("Sent", "\\Sent"), ("Trash", "\\Trash"), ("Junk", "\\Junk")];

const SUBSCRIPTIONS: &str = "subscriptions";
const SUBSCRIPTIONS_LOCK: &str = "sluice-subscriptions.lock";
/// Held while the default folders are made (first logins racing).
const FOLDERS_LOCK: &str = "sluice-folders.lock";
/// Deleted folders are renamed to this prefix first, so a crash never leaves half a folder
/// under its name.
const GRAVEYARD: &str = "sluice-deleted.";

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("invalid folder name: {0}")]
    Invalid(&'static str),
    #[error("no such folder")]
    NotFound,
    #[error("the folder already exists")]
    Exists,
    #[error("the folder has subfolders; delete them first")]
    HasChildren,
    #[error("INBOX cannot be deleted")]
    Inbox,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The RFC 6154 attribute of a folder, by its name.
pub fn special_use(name: &str) -> Option<&'static str> {
    let extra = [("Archive", "\\Archive")];
    DEFAULT_FOLDERS.iter().chain(extra.iter()).find(|(n, _)| *n == name).map(|(_, a)| *a)
}

pub fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

fn escape(level: &str) -> String {
    level.replace('=', "=3D").replace('.', "=2E")
}

fn unescape(level: &str) -> String {
    level.replace("=2E", ".").replace("=2e", ".").replace("=3D", "=").replace("=3d", "=")
}

/// The directory name of a folder (`.a.b` for `a/b`), after checking the name.
fn dir_name(name: &str) -> Result<String, FolderError> {
    if name.is_empty() {
        return Err(FolderError::Invalid("empty"));
    }
    if name.len() > 512 {
        return Err(FolderError::Invalid("longer than 512 octets"));
    }
    if name.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
        return Err(FolderError::Invalid("control characters or backslash"));
    }
    let levels: Vec<&str> = name.split(DELIMITER).collect();
    if levels.iter().any(|l| l.is_empty()) {
        return Err(FolderError::Invalid("an empty level"));
    }
    if is_inbox(levels[0]) {
        return Err(FolderError::Invalid("INBOX cannot have subfolders here"));
    }
    Ok(format!(".{}", levels.iter().map(|l| escape(l)).collect::<Vec<_>>().join(".")))
}

fn folder_name(dir: &str) -> Option<String> {
    let inner = dir.strip_prefix('.')?;
    if inner.is_empty() || inner.starts_with('.') {
        return None;
    }
    Some(inner.split('.').map(unescape).collect::<Vec<_>>().join(&DELIMITER.to_string()))
}

fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Maildir {
    fn folder_dir(&self, name: &str) -> Result<PathBuf, FolderError> {
        Ok(self.root().join(dir_name(name)?))
    }

    /// An existing folder (INBOX is this Maildir).
    pub fn folder(&self, name: &str) -> Result<Maildir, FolderError> {
        if is_inbox(name) {
            return Ok(self.clone());
        }
        let dir = self.folder_dir(name)?;
        if !dir.join("cur").is_dir() {
            return Err(FolderError::NotFound);
        }
        Ok(Maildir::new(dir))
    }

    /// Every folder but INBOX, sorted.
    pub fn folders(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        let dir = match fs::read_dir(self.root()) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in dir {
            let e = e?;
            let dir = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = folder_name(&dir)
                && e.path().join("cur").is_dir()
            {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// CREATE: the folder and any missing parents (RFC 3501 6.3.3), durably.
    pub fn create_folder(&self, name: &str) -> Result<(), FolderError> {
        if is_inbox(name) || self.folder(name).is_ok() {
            return Err(FolderError::Exists);
        }
        let levels: Vec<&str> = name.split(DELIMITER).collect();
        for n in 1..=levels.len() {
            let partial = levels[..n].join(&DELIMITER.to_string());
            let dir = self.folder_dir(&partial)?;
            if dir.join("cur").is_dir() {
                continue;
            }
            let md = Maildir::new(&dir);
            md.create()?;
            // Courier and Dovecot mark Maildir++ subfolders so.
            File::create(dir.join("maildirfolder"))?;
            sync_dir(&dir)?;
        }
        Ok(())
    }

    /// DELETE: refused for INBOX and for a folder with subfolders. The folder is renamed
    /// aside (atomic), then removed.
    pub fn delete_folder(&self, name: &str) -> Result<(), FolderError> {
        if is_inbox(name) {
            return Err(FolderError::Inbox);
        }
        self.folder(name)?;
        let prefix = format!("{name}{DELIMITER}");
        if self.folders()?.iter().any(|f| f.starts_with(&prefix)) {
            return Err(FolderError::HasChildren);
        }
        let aside = self.root().join(format!("{GRAVEYARD}{}", super::maildir::unique_token()));
        fs::rename(self.folder_dir(name)?, &aside)?;
        sync_dir(self.root())?;
        // Gone under its name already; what a racing clean_deleted removed first is fine.
        match fs::remove_dir_all(&aside) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Removes what a crash left of deleted folders.
    pub fn clean_deleted(&self) {
        let Ok(dir) = fs::read_dir(self.root()) else { return };
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(GRAVEYARD) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// RENAME (RFC 3501 6.3.5): the folder and its subfolders. Renaming INBOX moves its
    /// messages into the new folder and leaves INBOX empty.
    pub fn rename_folder(&self, from: &str, to: &str) -> Result<(), FolderError> {
        if is_inbox(to) || self.folder(to).is_ok() {
            return Err(FolderError::Exists);
        }
        let target = self.folder_dir(to)?;
        if is_inbox(from) {
            return self.move_inbox(to);
        }
        let source = self.folder(from)?;
        if to.starts_with(&format!("{from}{DELIMITER}")) {
            return Err(FolderError::Invalid("a folder cannot move below itself"));
        }
        if let Some((parent, _)) = to.rsplit_once(DELIMITER)
            && self.folder(parent).is_err()
        {
            self.create_folder(parent)?;
        }
        let prefix = format!("{from}{DELIMITER}");
        let children: Vec<String> =
            self.folders()?.into_iter().filter(|f| f.starts_with(&prefix)).collect();
        fs::rename(source.root(), &target)?;
        for child in children {
            let moved = format!("{to}{}", &child[from.len()..]);
            fs::rename(self.folder_dir(&child)?, self.folder_dir(&moved)?)?;
        }
        sync_dir(self.root())?;
        Ok(())
    }

    fn move_inbox(&self, to: &str) -> Result<(), FolderError> {
        self.create_folder(to)?;
        let dest = self.folder(to)?;
        for e in self.list()? {
            let sub = e.path.parent().and_then(|p| p.file_name()).map(|s| s.to_owned());
            let file = e.path.file_name().map(|s| s.to_owned());
            if let (Some(sub), Some(file)) = (sub, file) {
                fs::rename(&e.path, dest.root().join(sub).join(file))?;
            }
        }
        for sub in ["new", "cur"] {
            sync_dir(&dest.root().join(sub))?;
            sync_dir(&self.root().join(sub))?;
        }
        Ok(())
    }

    /// Octets in INBOX and every folder (the quota counts them all).
    pub fn total_usage(&self) -> std::io::Result<u64> {
        let mut total = self.usage()?;
        for f in self.folders()? {
            if let Ok(md) = self.folder(&f) {
                total += md.usage()?;
            }
        }
        Ok(total)
    }

    pub fn subscriptions(&self) -> std::io::Result<Vec<String>> {
        match fs::read_to_string(self.root().join(SUBSCRIPTIONS)) {
            Ok(t) => Ok(t.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// SUBSCRIBE / UNSUBSCRIBE: the file is replaced whole (write, fsync, rename), under a
    /// lock, so sessions changing it at once each keep their change.
    pub fn subscribe(&self, name: &str, on: bool) -> Result<(), FolderError> {
        if !is_inbox(name) {
            dir_name(name)?;
        }
        let _lock = self.lock(SUBSCRIPTIONS_LOCK)?;
        let mut subs = self.subscriptions()?;
        subs.retain(|s| s != name);
        if on {
            subs.push(name.to_string());
            subs.sort();
        }
        let tmp = self.root().join(format!("{SUBSCRIPTIONS}.tmp"));
        let mut f = File::create(&tmp)?;
        for s in &subs {
            writeln!(f, "{s}")?;
        }
        f.sync_all()?;
        fs::rename(&tmp, self.root().join(SUBSCRIPTIONS))?;
        sync_dir(self.root())?;
        Ok(())
    }

    /// The default folders (Drafts, Sent, Trash, Junk), created and subscribed once: a
    /// folder the user deleted is not brought back.
    pub fn ensure_default_folders(&self) -> Result<(), FolderError> {
        let marker = self.root().join("sluice-folders-created");
        if marker.exists() {
            return Ok(());
        }
        // Several first logins at once: one creates, the others wait and find the marker.
        self.create()?;
        let _lock = self.lock(FOLDERS_LOCK)?;
        if marker.exists() {
            return Ok(());
        }
        self.clean_deleted();
        for (name, _) in DEFAULT_FOLDERS {
            match self.create_folder(name) {
                Ok(()) | Err(FolderError::Exists) => {}
                Err(e) => return Err(e),
            }
            self.subscribe(name, true)?;
        }
        File::create(&marker)?.sync_all()?;
        sync_dir(self.root())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox() -> (tempfile::TempDir, Maildir) {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("Maildir"));
        md.create().unwrap();
        (dir, md)
    }

    #[test]
    fn names_map_to_maildir_plus_plus_directories_and_back() {
        assert_eq!(dir_name("Sent").unwrap(), ".Sent");
        assert_eq!(dir_name("Lists/rust").unwrap(), ".Lists.rust");
        assert_eq!(dir_name("Mr. Smith").unwrap(), ".Mr=2E Smith");
        assert_eq!(dir_name("a=b").unwrap(), ".a=3Db");
        for n in ["Sent", "Lists/rust", "Mr. Smith", "a=b", "&AOk-t&AOk-"] {
            assert_eq!(folder_name(&dir_name(n).unwrap()).unwrap(), n);
        }
        for bad in ["", "/a", "a/", "a//b", "INBOX/x", "inbox", "a\nb", "a\\b"] {
            assert!(dir_name(bad).is_err() || is_inbox(bad), "{bad:?}");
        }
        // `..` is one level named "..", escaped: it cannot climb out.
        assert_eq!(dir_name("..").unwrap(), ".=2E=2E");
        assert_eq!(folder_name(".."), None);
        assert_eq!(folder_name("."), None);
    }

    #[test]
    fn create_rename_delete_with_children() {
        let (_d, md) = mailbox();
        md.create_folder("a/b/c").unwrap();
        assert_eq!(md.folders().unwrap(), ["a", "a/b", "a/b/c"]);
        assert!(matches!(md.create_folder("a/b"), Err(FolderError::Exists)));
        assert!(matches!(md.delete_folder("a/b"), Err(FolderError::HasChildren)));
        let f = md.folder("a/b/c").unwrap();
        f.deliver(&[b"x"], "h").unwrap();
        md.rename_folder("a", "z/y").unwrap();
        assert_eq!(md.folders().unwrap(), ["z", "z/y", "z/y/b", "z/y/b/c"]);
        assert_eq!(md.folder("z/y/b/c").unwrap().list().unwrap().len(), 1);
        assert!(md.rename_folder("z", "z/q").is_err());
        md.delete_folder("z/y/b/c").unwrap();
        assert_eq!(md.folders().unwrap(), ["z", "z/y", "z/y/b"]);
        assert!(matches!(md.delete_folder("INBOX"), Err(FolderError::Inbox)));
        assert!(matches!(md.delete_folder("nope"), Err(FolderError::NotFound)));
    }

    #[test]
    fn renaming_inbox_moves_its_messages() {
        let (_d, md) = mailbox();
        md.deliver(&[b"one"], "h").unwrap();
        md.deliver(&[b"two"], "h").unwrap();
        md.rename_folder("INBOX", "Old").unwrap();
        assert_eq!(md.list().unwrap().len(), 0);
        assert_eq!(md.folder("Old").unwrap().list().unwrap().len(), 2);
    }

    #[test]
    fn subscriptions_and_defaults_persist() {
        let (_d, md) = mailbox();
        md.ensure_default_folders().unwrap();
        assert_eq!(md.folders().unwrap(), ["Drafts", "Junk", "Sent", "Trash"]);
        md.delete_folder("Junk").unwrap();
        md.ensure_default_folders().unwrap();
        assert_eq!(md.folders().unwrap(), ["Drafts", "Sent", "Trash"], "not brought back");
        md.subscribe("Lists/rust", true).unwrap();
        md.subscribe("Sent", false).unwrap();
        assert_eq!(md.subscriptions().unwrap(), ["Drafts", "Junk", "Lists/rust", "Trash"]);
        assert_eq!(special_use("Sent"), Some("\\Sent"));
        assert_eq!(special_use("sent"), None);
    }
}
