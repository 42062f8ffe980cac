//! Commands on mailboxes rather than messages: LIST, LSUB, STATUS, CREATE, DELETE, RENAME,
//! SUBSCRIBE, UNSUBSCRIBE, APPEND, and COPY/MOVE with UIDPLUS's APPENDUID/COPYUID (RFC 4315).
//! Folders are Maildir++ directories ([`crate::local::folders`]); the delimiter is `/`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use imap_codec::imap_types::core::{Atom, Tag};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::flag::{Flag, FlagNameAttribute};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::Data;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};

use super::state::{Session, State, bits_of, keyword_names, nz};
use crate::local::folders::{self, DELIMITER, FolderError};
use crate::local::keywords::KeywordError;
use crate::local::mailstore::{Appended, MessageInfo, Transfer, flag};

/// The name a client gave, as text (`INBOX` whatever its case).
pub fn mailbox_name(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".into(),
        Mailbox::Other(o) => {
            let name = String::from_utf8_lossy(o.as_ref()).into_owned();
            if folders::is_inbox(&name) { "INBOX".into() } else { name }
        }
    }
}

/// RFC 3501 6.3.8 wildcards: `*` matches anything, `%` anything but the delimiter. Names are
/// case-sensitive except INBOX.
/// The longest LIST/LSUB reference plus pattern taken (octets).
const MAX_PATTERN: usize = 1024;

pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    // Dynamic programming, not backtracking: `*a*a*a…` costs pattern × name, never more.
    fn glob(p: &[u8], n: &[u8]) -> bool {
        // next[j]: p[i + 1..] matches n[j..].
        let mut next: Vec<bool> = (0..=n.len()).map(|j| j == n.len()).collect();
        for i in (0..p.len()).rev() {
            let mut row = vec![false; n.len() + 1];
            for j in (0..=n.len()).rev() {
                row[j] = match p[i] {
                    b'*' => next[j] || (j < n.len() && row[j + 1]),
                    b'%' => next[j] || (j < n.len() && n[j] != DELIMITER as u8 && row[j + 1]),
                    c => j < n.len() && n[j] == c && next[j + 1],
                };
            }
            next = row;
        }
        next[0]
    }
    let mut pattern = pattern.to_string();
    if name == "INBOX" && pattern.len() >= 5 && pattern.is_char_boundary(5) {
        let (head, tail) = pattern.split_at(5);
        if head.eq_ignore_ascii_case("INBOX") {
            pattern = format!("INBOX{tail}");
        }
    }
    glob(pattern.as_bytes(), name.as_bytes())
}

fn attribute(name: &str) -> FlagNameAttribute<'static> {
    FlagNameAttribute::from(Atom::try_from(name.to_string()).expect("a valid atom"))
}

fn folder_error(e: &FolderError) -> String {
    let code = match e {
        FolderError::NotFound => "[NONEXISTENT] ",
        FolderError::Exists => "[ALREADYEXISTS] ",
        FolderError::HasChildren | FolderError::Inbox => "[CANNOT] ",
        FolderError::Invalid(_) => "[CANNOT] ",
        FolderError::Io(_) => "[SERVERBUG] ",
    };
    format!("{code}{e}")
}

/// A UID set as RFC 4315 writes it: ascending runs as `a:b`.
fn uid_set(uids: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { uids[i].to_string() } else { format!("{}:{}", uids[i], uids[j]) });
        i = j + 1;
    }
    parts.join(",")
}

impl Session {
    pub(super) fn list(
        &mut self,
        tag: &Tag<'_>,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) {
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let pattern = String::from_utf8_lossy(match pattern {
            ListMailbox::Token(t) => t.as_ref(),
            ListMailbox::String(s) => s.as_ref(),
        })
        .into_owned();
        // Folder names are at most 512 octets; a longer pattern matches nothing useful and
        // costs its length times every name.
        if reference.len() + pattern.len() > MAX_PATTERN {
            return self.bad(tag, "Pattern too long");
        }
        if pattern.is_empty() && !lsub {
            // RFC 3501 6.3.8: the hierarchy delimiter and root.
            self.out_raw(b"* LIST (\\Noselect) \"/\" \"\"\r\n");
            return self.ok(tag, None, "LIST completed");
        }
        let Some(md) = self.maildir.clone() else { return };
        let (existing, subscribed) = match (md.folders(), md.subscriptions()) {
            (Ok(f), Ok(s)) => (f, s),
            (Err(e), _) | (_, Err(e)) => return self.no(tag, &format!("[SERVERBUG] {e}")),
        };
        // Every name with whether it exists; parents that do not exist are \Noselect.
        let mut names: BTreeMap<String, bool> = BTreeMap::new();
        names.insert("INBOX".into(), true);
        for f in &existing {
            names.insert(f.clone(), true);
            let mut parent = f.as_str();
            while let Some((p, _)) = parent.rsplit_once(DELIMITER) {
                names.entry(p.to_string()).or_insert(false);
                parent = p;
            }
        }
        let full = format!("{reference}{pattern}");
        let delimiter = Some(DELIMITER.try_into().expect("valid"));
        // LSUB lists subscribed names (existing or not), and an unsubscribed parent of a
        // subscribed name that `%` stops short of as \Noselect (RFC 3501 6.3.9).
        let mut lsub_noselect = std::collections::BTreeSet::new();
        if lsub {
            for s in &subscribed {
                names.entry(s.clone()).or_insert(false);
                let mut parent = s.as_str();
                while let Some((p, _)) = parent.rsplit_once(DELIMITER) {
                    if !subscribed.iter().any(|x| x == p)
                        && pattern_matches(&full, p)
                        && !pattern_matches(&full, s)
                    {
                        names.entry(p.to_string()).or_insert(false);
                        lsub_noselect.insert(p.to_string());
                    }
                    parent = p;
                }
            }
        }
        for (name, exists) in &names {
            let listed = match lsub {
                true => subscribed.contains(name) || lsub_noselect.contains(name),
                false => true,
            };
            if !pattern_matches(&full, name) || !listed {
                continue;
            }
            let mut items = Vec::new();
            // LSUB does not say whether a subscribed name exists (RFC 3501 6.3.9).
            let noselect = match lsub {
                true => lsub_noselect.contains(name),
                false => !exists,
            };
            if noselect {
                items.push(FlagNameAttribute::Noselect);
            }
            let prefix = format!("{name}{DELIMITER}");
            let children = existing.iter().any(|f| f.starts_with(&prefix));
            items.push(attribute(if children { "HasChildren" } else { "HasNoChildren" }));
            if let Some(role) = folders::special_use(name) {
                items.push(attribute(&role[1..]));
            }
            let Ok(mailbox) = Mailbox::try_from(name.clone()) else { continue };
            self.data(match lsub {
                true => Data::Lsub { items, delimiter, mailbox },
                false => Data::List { items, delimiter, mailbox },
            });
        }
        self.ok(tag, None, if lsub { "LSUB completed" } else { "LIST completed" });
    }

    pub(super) fn status(
        &mut self,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        names: &[StatusDataItemName],
    ) {
        let name = mailbox_name(mailbox);
        let s = match self.open(&name).map(|f| f.snapshot()) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.no(tag, &format!("[SERVERBUG] {e}")),
            Err(e) => return self.no(tag, &folder_error(&e)),
        };
        let count =
            |f: &dyn Fn(&MessageInfo) -> bool| s.messages.iter().filter(|m| f(m)).count() as u32;
        let items: Vec<StatusDataItem> = names
            .iter()
            .filter_map(|n| match n {
                StatusDataItemName::Messages => {
                    Some(StatusDataItem::Messages(s.messages.len() as u32))
                }
                StatusDataItemName::Recent => Some(StatusDataItem::Recent(count(&|m| m.recent))),
                StatusDataItemName::UidNext => Some(StatusDataItem::UidNext(nz(s.uidnext))),
                StatusDataItemName::UidValidity => {
                    Some(StatusDataItem::UidValidity(nz(s.uidvalidity)))
                }
                StatusDataItemName::Unseen => {
                    Some(StatusDataItem::Unseen(count(&|m| m.flags & flag::SEEN == 0)))
                }
                _ => None,
            })
            .collect();
        self.data(Data::Status { mailbox: mailbox.clone(), items: Cow::Owned(items) });
        self.ok(tag, None, "STATUS completed");
    }

    /// CREATE, DELETE, RENAME, SUBSCRIBE and UNSUBSCRIBE.
    pub(super) fn manage(&mut self, tag: &Tag<'_>, op: Manage, name: &Mailbox<'_>) {
        let Some(md) = self.maildir.clone() else { return };
        // A trailing delimiter only says the folder will have subfolders (RFC 3501 6.3.3).
        let name = mailbox_name(name);
        let name = name.trim_end_matches(DELIMITER);
        if matches!(op, Manage::Create)
            && md.folders().is_ok_and(|f| f.len() >= self.cfg.max_folders)
        {
            return self.no(tag, "[LIMIT] Too many folders; delete some first");
        }
        let result = match &op {
            Manage::Create => md.create_folder(name),
            Manage::Delete => md.delete_folder(name),
            Manage::Rename(to) => md.rename_folder(name, mailbox_name(to).trim_end_matches('/')),
            Manage::Subscribe(on) => md.subscribe(name, *on),
        };
        let verb = match op {
            Manage::Create => "CREATE",
            Manage::Delete => "DELETE",
            Manage::Rename(_) => "RENAME",
            Manage::Subscribe(true) => "SUBSCRIBE",
            Manage::Subscribe(false) => "UNSUBSCRIBE",
        };
        match result {
            Ok(()) => {
                if matches!(op, Manage::Delete | Manage::Rename(_)) {
                    self.size_changed = true;
                }
                self.ok(tag, None, &format!("{verb} completed"))
            }
            Err(e) => self.no(tag, &folder_error(&e)),
        }
    }

    /// APPEND (with APPENDUID, RFC 4315).
    pub fn append(
        &mut self,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<&DateTime>,
        message: Appended<'_>,
    ) {
        let refuse = |s: &mut Self, text: &str| {
            if let Appended::File(p) = message {
                let _ = std::fs::remove_file(p);
            }
            s.no(tag, text)
        };
        let name = mailbox_name(mailbox);
        let folder = match self.open(&name) {
            Ok(f) => f,
            Err(FolderError::NotFound) => return refuse(self, "[TRYCREATE] No such mailbox"),
            Err(e) => return refuse(self, &folder_error(&e)),
        };
        if self.quota > 0 {
            let size = match message {
                Appended::Bytes(b) => b.len() as u64,
                Appended::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
            };
            let used = self.maildir.as_ref().map_or(Ok(0), |m| m.total_usage());
            if used.is_ok_and(|u| u + size > self.quota) {
                return refuse(self, "[OVERQUOTA] Mailbox is full");
            }
        }
        // `31-Dec-9999 23:59:59 -1200` is year 10000 in UTC: kept within what IMAP can write.
        let date = date.map(|d| d.as_ref().timestamp().clamp(0, super::state::LAST_DATE));
        let host = self.cfg.hostname.clone();
        let names = keyword_names(flags);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let kw = match refs.is_empty() {
            true => 0,
            false => match folder.ensure_keywords(&refs) {
                Ok(k) => k.bits_of(refs.iter().copied()),
                Err(KeywordError::Full) => {
                    return refuse(self, "[LIMIT] This mailbox cannot hold more keywords");
                }
                Err(KeywordError::Invalid) => return refuse(self, "Invalid keyword"),
                Err(e) => return refuse(self, &format!("[SERVERBUG] {e}")),
            },
        };
        let stored = folder
            .append(message, (bits_of(flags), kw), date, &host)
            .and_then(|n| folder.uids_of(&[Some(n)]));
        match stored {
            Ok((validity, uids)) => {
                self.size_changed = true;
                if self.is_selected(&folder) {
                    self.refresh();
                }
                let uid = uids.first().copied().flatten().unwrap_or(0);
                let line = format!(
                    "{} OK [APPENDUID {validity} {uid}] APPEND completed\r\n",
                    tag.as_ref()
                );
                self.out_raw(line.as_bytes());
            }
            Err(e) => self.no(tag, &format!("[SERVERBUG] {e}")),
        }
    }

    /// COPY or MOVE (RFC 6851) with COPYUID (RFC 4315).
    pub(super) fn transfer(
        &mut self,
        tag: &Tag<'_>,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        how: Transfer,
    ) {
        let verb = if how == Transfer::Move { "MOVE" } else { "COPY" };
        let dest = match self.open(&mailbox_name(mailbox)) {
            Ok(f) => f,
            Err(FolderError::NotFound) => return self.no(tag, "[TRYCREATE] No such mailbox"),
            Err(e) => return self.no(tag, &folder_error(&e)),
        };
        let State::Selected(view) = &self.state else { return };
        if how == Transfer::Move && view.read_only {
            return self.no(tag, "Mailbox is read-only");
        }
        let (source, messages) = (view.folder.clone(), view.snapshot.messages.clone());
        let picked = self.matching(set, uid);
        let msgs: Vec<MessageInfo> = picked.iter().map(|&i| messages[i].clone()).collect();
        let host = self.cfg.hostname.clone();
        let done = source.transfer(&msgs, &dest, how, &host).and_then(|n| dest.uids_of(&n));
        let (validity, new_uids) = match done {
            Ok(r) => r,
            Err(e) => return self.no(tag, &format!("[SERVERBUG] {e}")),
        };
        self.size_changed = true;
        let (mut from, mut to) = (Vec::new(), Vec::new());
        for (m, u) in msgs.iter().zip(&new_uids) {
            if let Some(u) = u {
                from.push(m.uid);
                to.push(*u);
            }
        }
        let code = match from.is_empty() {
            true => String::new(),
            false => format!("[COPYUID {validity} {} {}] ", uid_set(&from), uid_set(&to)),
        };
        if how == Transfer::Move {
            self.out_raw(format!("* OK {code}Moved\r\n").as_bytes());
            // Only what moved leaves the view (a message expunged meanwhile is reported by
            // the next refresh).
            let moved: Vec<usize> = picked
                .iter()
                .zip(&new_uids)
                .filter(|(_, u)| u.is_some())
                .map(|(i, _)| *i)
                .collect();
            self.forget_messages(&moved);
            // Into the selected mailbox itself: the client hears of the new messages now
            // (RFC 6851 3.3, RFC 3501 5.2), not at its next NOOP.
            if self.is_selected(&dest) {
                self.refresh();
            }
            self.out_raw(format!("{} OK {verb} completed\r\n", tag.as_ref()).as_bytes());
        } else {
            if self.is_selected(&dest) {
                self.refresh();
            }
            self.out_raw(format!("{} OK {code}{verb} completed\r\n", tag.as_ref()).as_bytes());
        }
    }

    /// An existing folder of the user, by name.
    pub(super) fn open(&self, name: &str) -> Result<crate::local::Maildir, FolderError> {
        let md = self.maildir.as_ref().ok_or(FolderError::NotFound)?;
        md.folder(name)
    }

    fn is_selected(&self, folder: &crate::local::Maildir) -> bool {
        matches!(&self.state, State::Selected(v) if v.folder.root() == folder.root())
    }
}

/// The mailbox-management commands [`Session::manage`] runs.
pub enum Manage {
    Create,
    Delete,
    Rename(Mailbox<'static>),
    Subscribe(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns() {
        for (p, n) in [
            ("*", "INBOX"),
            ("%", "INBOX"),
            ("inbox", "INBOX"),
            ("IN*", "INBOX"),
            ("%BOX", "INBOX"),
            ("*", "a/b/c"),
            ("a/%", "a/b"),
            ("a/*", "a/b/c"),
            ("%/%", "a/b"),
            ("S%", "Sent"),
        ] {
            assert!(pattern_matches(p, n), "{p} {n}");
        }
        for (p, n) in [
            ("Sent", "INBOX"),
            ("INBOX/*", "INBOX"),
            ("%", "a/b"),
            ("a/%", "a/b/c"),
            ("sent", "Sent"),
        ] {
            assert!(!pattern_matches(p, n), "{p} {n}");
        }
    }

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[]), "");
    }
}
