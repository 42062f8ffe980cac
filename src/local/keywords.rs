//! IMAP keywords (`$Junk`, `$Forwarded`, `$MDNSent`, …) stored as Dovecot stores them in a
//! Maildir, so either server reads the other's: each folder's `dovecot-keywords` file maps an
//! index to a name (`0 $Junk`), and a message has keyword `n` when the info part of its file
//! name holds the letter `'a' + n`. A folder holds at most 26 keywords, as in Dovecot's Maildir
//! file names; the file only grows (an index is never given to another name).
//!
//! Not here: system flags (`\Seen`…, the upper-case letters the mail store reads).

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::Maildir;

pub const FILE_NAME: &str = "dovecot-keywords";
const LOCK: &str = "sluice-keywords.lock";
/// Letters `a` to `z`.
pub const MAX: usize = 26;
/// Longer keyword names are refused (Dovecot's limit is in the same range).
pub const MAX_NAME: usize = 128;

/// A folder's keyword names by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keywords {
    names: Vec<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeywordError {
    #[error("this mailbox already has {MAX} keywords")]
    Full,
    #[error("invalid keyword name")]
    Invalid,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Whether `name` may be a keyword: an IMAP atom (RFC 3501 `flag-keyword`), not a system flag.
pub fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('\\')
        && name.bytes().all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b))
}

impl Keywords {
    /// The folder's keywords (none when the file is missing; unreadable lines are skipped).
    pub fn load(folder: &Path) -> Keywords {
        let mut k = Keywords::default();
        let Ok(text) = fs::read_to_string(folder.join(FILE_NAME)) else { return k };
        for line in text.lines() {
            let Some((i, name)) = line.split_once(' ') else { continue };
            let Ok(i) = i.parse::<usize>() else { continue };
            if i < MAX && valid(name) {
                if k.names.len() <= i {
                    k.names.resize(i + 1, None);
                }
                k.names[i] = Some(name.to_string());
            }
        }
        k
    }

    /// The index of `name` (keywords compare without regard to ASCII case).
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)))
    }

    /// The names of the keywords in `bits`, in index order (bits without a name are left out).
    pub fn names(&self, bits: u32) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .enumerate()
            .filter(move |(i, _)| bits & (1 << i) != 0)
            .filter_map(|(_, n)| n.as_deref())
    }

    /// Every keyword name, in index order.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.names.iter().filter_map(|n| n.as_deref())
    }

    /// Whether another keyword can be added.
    pub fn has_room(&self) -> bool {
        self.names.iter().filter(|n| n.is_some()).count() < MAX
    }

    /// The bits of `names` that exist here (unknown names are left out).
    pub fn bits_of<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> u32 {
        names.into_iter().filter_map(|n| self.index(n)).fold(0, |acc, i| acc | 1 << i)
    }

    /// Whether every bit in `bits` has a name here (false: the file grew since this was read).
    pub fn knows(&self, bits: u32) -> bool {
        (0..MAX)
            .filter(|i| bits & (1 << i) != 0)
            .all(|i| self.names.get(i).is_some_and(|n| n.is_some()))
    }
}

/// The info letters of keyword bits.
pub fn letters(bits: u32) -> impl Iterator<Item = char> {
    (0..MAX as u32).filter(move |i| bits & (1 << i) != 0).map(|i| (b'a' + i as u8) as char)
}

/// The keyword bits of a file's info letters.
pub fn bits_of_letters(info: &str) -> u32 {
    info.bytes().filter(u8::is_ascii_lowercase).fold(0, |acc, b| acc | 1 << (b - b'a'))
}

impl Maildir {
    /// The folder's keywords, adding `names` that are new (under a lock, written durably:
    /// temporary file, fsync, rename). Returns the mapping as it now is.
    pub fn ensure_keywords(&self, names: &[&str]) -> Result<Keywords, KeywordError> {
        if names.iter().any(|n| !valid(n)) {
            return Err(KeywordError::Invalid);
        }
        let current = Keywords::load(self.root());
        if names.iter().all(|n| current.index(n).is_some()) {
            return Ok(current);
        }
        let _lock = self.lock(LOCK)?;
        let mut k = Keywords::load(self.root());
        let mut changed = false;
        for name in names {
            if k.index(name).is_some() {
                continue;
            }
            let free = k.names.iter().position(Option::is_none).unwrap_or(k.names.len());
            if free >= MAX {
                return Err(KeywordError::Full);
            }
            if free == k.names.len() {
                k.names.push(None);
            }
            k.names[free] = Some(name.to_string());
            changed = true;
        }
        if changed {
            let tmp = self.root().join(format!("{FILE_NAME}.tmp"));
            let mut f = File::create(&tmp)?;
            for (i, n) in k.names.iter().enumerate() {
                if let Some(n) = n {
                    writeln!(f, "{i} {n}")?;
                }
            }
            f.sync_all()?;
            fs::rename(&tmp, self.root().join(FILE_NAME))?;
            File::open(self.root())?.sync_all()?;
        }
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_get_letters_in_order_and_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("Maildir"));
        md.create().unwrap();
        let k = md.ensure_keywords(&["$Junk", "$Forwarded"]).unwrap();
        assert_eq!(k.index("$junk"), Some(0), "case does not matter");
        assert_eq!(k.bits_of(["$Forwarded", "$NotThere"]), 2);
        assert_eq!(letters(3).collect::<String>(), "ab");
        assert_eq!(bits_of_letters("2,Sab"), 3);
        let text = fs::read_to_string(md.root().join(FILE_NAME)).unwrap();
        assert_eq!(text, "0 $Junk\n1 $Forwarded\n", "Dovecot's format");
        let k = md.ensure_keywords(&["$MDNSent", "$Junk"]).unwrap();
        assert_eq!(k.names(0b101).collect::<Vec<_>>(), ["$Junk", "$MDNSent"]);
        assert!(k.knows(0b111) && !k.knows(0b1000));
        assert!(matches!(md.ensure_keywords(&["bad(name"]), Err(KeywordError::Invalid)));
        assert!(matches!(md.ensure_keywords(&["\\Seen"]), Err(KeywordError::Invalid)));
    }

    #[test]
    fn a_folder_holds_at_most_26_keywords() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("Maildir"));
        md.create().unwrap();
        let names: Vec<String> = (0..MAX).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let k = md.ensure_keywords(&refs).unwrap();
        assert!(!k.has_room());
        assert!(matches!(md.ensure_keywords(&["one-more"]), Err(KeywordError::Full)));
        assert_eq!(Keywords::load(md.root()).all().count(), MAX);
    }
}
