//! Local mailboxes: mail for `[local] domains` (with `[local] mailboxes = true`) goes to the
//! Maildir of a user of the users file (the login name is the full address, as `sluice user
//! add` makes it) or of an alias target. Delivery is a hop of the queue like any other: a full
//! mailbox or a disk error is a retry, and the message leaves the spool only once the mailbox
//! write is durable.

pub mod folders;
pub mod keywords;
pub mod maildir;
pub mod mailstore;
pub mod uidlist;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::proto::smtp::Reply;
pub use maildir::Maildir;

/// How old a file in a Maildir's `tmp/` must be before it is taken for a crash's leftover
/// (the Maildir specification's 36 hours).
pub const TMP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(36 * 3600);

/// What RCPT may learn about a local recipient without touching the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not in a mailbox domain: relay policy decides.
    NotLocal,
    /// These users' mailboxes (an alias may name several).
    Users(Vec<String>),
    /// A mailbox domain, but no such user or alias: 550 5.1.1.
    Unknown,
}

/// The local recipients and their mailboxes.
#[derive(Debug)]
pub struct Mailboxes {
    domains: HashSet<String>,
    /// Full addresses, or bare local parts (`postmaster`) that hold in every local domain.
    aliases: HashMap<String, Vec<String>>,
    catch_all: Option<String>,
    root: PathBuf,
    /// Octets per mailbox; 0: no limit.
    pub quota: u64,
    users: crate::auth::users::SharedUsers,
    hostname: String,
    /// Octets per user as last counted: RCPT consults it without touching the disk; delivery
    /// counts once per user and adds; POP3 deletions forget it.
    usage: Mutex<HashMap<String, u64>>,
    /// Woken when a user's mailbox gets mail (IMAP IDLE).
    watchers: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Notify>>>,
}

/// How a local delivery attempt ended, per recipient.
#[derive(Debug)]
pub enum Delivered {
    Stored,
    /// The message already passed through this mailbox (`Delivered-To:`).
    Loop,
    NoSuchUser,
    OverQuota,
    Failed(std::io::Error),
}

impl Delivered {
    /// The `outcome` label of `sluice_local_deliveries_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Delivered::Stored => "stored",
            Delivered::Loop => "loop",
            Delivered::NoSuchUser => "no_such_user",
            Delivered::OverQuota => "over_quota",
            Delivered::Failed(_) => "error",
        }
    }

    /// The reply the queue records, as if a server had answered.
    pub fn reply(&self) -> Reply {
        match self {
            Delivered::Stored => Reply::new(250, "2.0.0", "Delivered to the mailbox"),
            Delivered::Loop => {
                Reply::new(554, "5.4.6", "Mail loop: already delivered to this mailbox")
            }
            Delivered::NoSuchUser => Reply::new(550, "5.1.1", "No such user here"),
            Delivered::OverQuota => Reply::new(452, "4.2.2", "Mailbox full"),
            Delivered::Failed(e) => {
                Reply::owned(451, "4.3.0", format!("Mailbox write failed: {e}; will retry"))
            }
        }
    }
}

pub struct MailboxesConfig {
    pub domains: Vec<String>,
    pub aliases: HashMap<String, Vec<String>>,
    pub catch_all: Option<String>,
    pub postmaster: Option<String>,
    pub root: PathBuf,
    pub quota: u64,
    pub hostname: String,
}

impl Mailboxes {
    pub fn new(cfg: MailboxesConfig, users: crate::auth::users::SharedUsers) -> Mailboxes {
        let mut aliases: HashMap<String, Vec<String>> = cfg
            .aliases
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.iter().map(|a| a.to_lowercase()).collect()))
            .collect();
        // RFC 5321 4.5.1 and RFC 2142: postmaster and abuse exist in every mail domain.
        if let Some(p) = cfg.postmaster {
            for role in ["postmaster", "abuse"] {
                aliases.entry(role.into()).or_insert_with(|| vec![p.to_lowercase()]);
            }
        }
        Mailboxes {
            domains: cfg.domains.iter().map(|d| crate::domain::normalize(d)).collect(),
            aliases,
            catch_all: cfg.catch_all.map(|c| c.to_lowercase()),
            root: cfg.root,
            quota: cfg.quota,
            users,
            hostname: cfg.hostname,
            usage: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
        }
    }

    /// What wakes when `user`'s mailbox changes (a delivery, or a session that changed it).
    pub fn watch(&self, user: &str) -> std::sync::Arc<tokio::sync::Notify> {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(user.to_lowercase()).or_default().clone()
    }

    /// Wakes the sessions idling on `user`'s mailbox.
    pub fn changed(&self, user: &str) {
        let w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get(&user.to_lowercase()) {
            n.notify_waiters();
        }
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(&crate::domain::normalize(domain))
    }

    /// The mailbox a login name may open: its normal form, when it is an address in one of
    /// `[local] domains` (an account for SMTP AUTH alone, or of another domain, has none).
    pub fn mailbox_user(&self, login: &str) -> Option<String> {
        let user = crate::auth::users::normal_name(login);
        let (_, domain) = user.rsplit_once('@')?;
        self.is_local_domain(domain).then_some(user)
    }

    fn is_user(&self, address: &str) -> bool {
        self.users.read().unwrap_or_else(|e| e.into_inner()).contains(address)
    }

    /// The users `rcpt` is delivered to: the user itself, else its alias (full address first,
    /// then the bare local part), else the catch-all.
    pub fn lookup(&self, rcpt: &str) -> Lookup {
        let Some((local, domain)) = rcpt.rsplit_once('@') else { return Lookup::NotLocal };
        if !self.is_local_domain(domain) {
            return Lookup::NotLocal;
        }
        let address = crate::domain::canonical_address(rcpt);
        let local = address.rsplit_once('@').map_or(local, |(l, _)| l);
        if self.is_user(&address) {
            return Lookup::Users(vec![address]);
        }
        let targets = self
            .aliases
            .get(&address)
            .or_else(|| self.aliases.get(&local.to_ascii_lowercase()))
            .map(|t| t.iter().filter(|a| self.is_user(a)).cloned().collect::<Vec<_>>())
            .filter(|t| !t.is_empty());
        match (targets, &self.catch_all) {
            (Some(t), _) => Lookup::Users(t),
            (None, Some(c)) if self.is_user(c) => Lookup::Users(vec![c.clone()]),
            _ => Lookup::Unknown,
        }
    }

    /// The Maildir of a user: `<root>/<domain>/<local part>/Maildir`, with path-unsafe local
    /// parts hex-encoded.
    pub fn maildir(&self, user: &str) -> Maildir {
        let (local, domain) = user.rsplit_once('@').unwrap_or((user, "local"));
        let safe = |s: &str| {
            if s.is_empty() || s.starts_with('.') || s.contains(['/', '\\', '\0']) {
                format!("={}", s.bytes().map(|b| format!("{b:02x}")).collect::<String>())
            } else {
                s.to_string()
            }
        };
        Maildir::new(self.root.join(safe(domain)).join(safe(local)).join("Maildir"))
    }

    /// Octets in `user`'s mailbox (counted on the disk the first time).
    fn usage(&self, user: &str) -> std::io::Result<u64> {
        if let Some(&u) = self.usage.lock().unwrap_or_else(|e| e.into_inner()).get(user) {
            return Ok(u);
        }
        let u = self.maildir(user).total_usage()?;
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).insert(user.to_string(), u);
        Ok(u)
    }

    /// Counts every local user's mailbox afresh (blocking I/O): the usage RCPT consults, and
    /// `sluice_mailbox_bytes`.
    pub fn count_all(&self) {
        let users: Vec<String> = {
            let all = self.users.read().unwrap_or_else(|e| e.into_inner()).clone();
            all.names()
                .filter(|u| u.rsplit_once('@').is_some_and(|(_, d)| self.is_local_domain(d)))
                .cloned()
                .collect()
        };
        let mut total = 0;
        for u in &users {
            self.clean_tmp(u);
            let Ok(bytes) = self.maildir(u).total_usage() else { continue };
            self.usage.lock().unwrap_or_else(|e| e.into_inner()).insert(u.clone(), bytes);
            total += bytes;
        }
        crate::metrics::MAILBOX_BYTES.set(total as i64);
    }

    /// Removes what crashes left in the `tmp/` of `user`'s INBOX and folders (files over
    /// [`TMP_MAX_AGE`] old).
    fn clean_tmp(&self, user: &str) {
        let md = self.maildir(user);
        let folders = md.folders().unwrap_or_default();
        let all =
            std::iter::once(md.clone()).chain(folders.iter().filter_map(|f| md.folder(f).ok()));
        for folder in all {
            match folder.clean_tmp(TMP_MAX_AGE) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    user = %user, folder = %folder.root().display(), removed = n,
                    "removed files left in the Maildir's tmp/ for over 36 hours"
                ),
                Err(e) => tracing::warn!(user = %user, error = %e, "cleaning the Maildir's tmp/"),
            }
        }
    }

    /// Whether the user's INBOX or Junk folder holds a delivery with `key` (a scan of the
    /// folder: only for deliveries that may be repeats).
    fn already_delivered(&self, md: &Maildir, key: &str) -> bool {
        let junk = md.folder("Junk").ok();
        std::iter::once(md).chain(junk.as_ref()).any(|f| f.has_delivery(key).unwrap_or(false))
    }

    fn add_usage(&self, user: &str, size: u64) {
        if let Some(u) = self.usage.lock().unwrap_or_else(|e| e.into_inner()).get_mut(user) {
            *u += size;
        }
    }

    /// Messages left the mailbox (POP3 UPDATE): count again at the next delivery.
    pub fn forget_usage(&self, user: &str) {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).remove(user);
    }

    /// The user's quota in octets (0: none): theirs from the users file, else `[local] quota`.
    pub fn quota_of(&self, user: &str) -> u64 {
        self.users.read().unwrap_or_else(|e| e.into_inner()).quota(user).unwrap_or(self.quota)
    }

    /// Whether a new message of `size` octets would take `user` over the quota.
    pub fn over_quota(&self, user: &str, size: u64) -> bool {
        let quota = self.quota_of(user);
        quota > 0 && self.usage(user).unwrap_or(0) + size > quota
    }

    /// RCPT's check, with the size MAIL declared (0 if none): from memory only (no disk I/O
    /// in an SMTP session), so a mailbox nobody delivered to since the start counts as not
    /// full; delivery checks again.
    pub fn known_full(&self, user: &str, size: u64) -> bool {
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner()).get(user).copied();
        let quota = self.quota_of(user);
        quota > 0 && usage.is_some_and(|u| u >= quota || u + size > quota)
    }

    /// Writes `content` to the mailbox of every user `rcpt` resolves to (blocking I/O: run it
    /// off the async threads). `Delivered-To:` (the recipient) and `Return-Path:` go first.
    pub fn deliver(&self, rcpt: &str, sender: &str, content: &[u8]) -> Delivered {
        self.deliver_once(rcpt, sender, content, None)
    }

    /// [`Mailboxes::deliver`] for one recipient of a queued message: the files carry `key`
    /// (`<queue id>-<recipient index>`), and when `key.1` says the delivery may have happened
    /// already (a retry, or a message queued before this process started: a crash between
    /// the mailbox write and the spool's record of it), a mailbox that has the key is not
    /// written again; such duplicates avoided are counted (`sluice_local_duplicates_total`).
    pub fn deliver_once(
        &self,
        rcpt: &str,
        sender: &str,
        content: &[u8],
        key: Option<(&str, bool)>,
    ) -> Delivered {
        let users = match self.lookup(rcpt) {
            Lookup::Users(u) => u,
            Lookup::NotLocal | Lookup::Unknown => return Delivered::NoSuchUser,
        };
        let rcpt_lc = rcpt.to_lowercase();
        if delivered_to(content).any(|d| d == rcpt_lc) {
            return Delivered::Loop;
        }
        let head = format!("Delivered-To: {rcpt}\r\nReturn-Path: <{sender}>\r\n");
        for user in &users {
            if self.over_quota(user, (head.len() + content.len()) as u64) {
                return Delivered::OverQuota;
            }
        }
        let quarantined = header_has(content, "x-sluice-quarantine");
        for user in &users {
            let md = self.maildir(user);
            if let Some((k, true)) = key
                && self.already_delivered(&md, k)
            {
                crate::metrics::LOCAL_DUPLICATES.inc();
                tracing::info!(user = %user, key = k, "already in the mailbox (a repeated delivery): not written again");
                continue;
            }
            let parts = [head.as_bytes(), content];
            let stored = match quarantined {
                true => deliver_to_junk(&md, &parts, &self.hostname, key.map(|k| k.0)),
                false => md.deliver_keyed(&parts, &self.hostname, None, key.map(|k| k.0)),
            };
            if let Err(e) = stored {
                return Delivered::Failed(e);
            }
            self.add_usage(user, (head.len() + content.len()) as u64);
            self.changed(user);
        }
        Delivered::Stored
    }
}

impl crate::proto::smtp::session::LocalRecipients for Mailboxes {
    fn check(&self, rcpt: &str, size: Option<u64>) -> crate::proto::smtp::session::LocalCheck {
        use crate::proto::smtp::session::LocalCheck;
        match self.lookup(rcpt) {
            Lookup::NotLocal => LocalCheck::NotLocal,
            Lookup::Unknown => LocalCheck::Unknown,
            Lookup::Users(u) if u.iter().any(|u| self.known_full(u, size.unwrap_or(0))) => {
                LocalCheck::Full
            }
            Lookup::Users(_) => LocalCheck::Accept,
        }
    }
}

/// Quarantined mail (`X-Sluice-Quarantine:`, DMARC quarantine) goes to the user's Junk folder
/// with the `$Junk` keyword, as clients file junk; to INBOX with `$Junk` when the user has
/// deleted Junk.
fn deliver_to_junk(
    md: &Maildir,
    parts: &[&[u8]],
    hostname: &str,
    key: Option<&str>,
) -> std::io::Result<String> {
    let folder = md.folder("Junk").unwrap_or_else(|_| md.clone());
    match folder.ensure_keywords(&["$Junk"]) {
        Ok(k) => {
            let letters: String = keywords::letters(k.bits_of(["$Junk"])).collect();
            folder.deliver_keyed(parts, hostname, Some(&letters), key)
        }
        // No room for the keyword: the folder alone says it.
        Err(_) => folder.deliver_keyed(parts, hostname, None, key),
    }
}

/// Whether the header of `content` has a field named `name` (lower-case).
fn header_has(content: &[u8], name: &str) -> bool {
    let end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |e| e + 2);
    content[..end].split(|&b| b == b'\n').any(|line| {
        line.iter()
            .position(|&b| b == b':')
            .is_some_and(|c| line[..c].eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// The addresses of the `Delivered-To:` fields in the header, lower-cased.
fn delivered_to(content: &[u8]) -> impl Iterator<Item = String> + '_ {
    let end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |e| e + 2);
    content[..end].split(|&b| b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end();
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("delivered-to").then(|| value.trim().to_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::auth::users::Users;

    fn mailboxes(root: PathBuf) -> Mailboxes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut file = crate::auth::users::UsersFileEditor::open(&path).unwrap();
        file.add("alice@example.com", "pw", Vec::new(), None).unwrap();
        file.add("bob@example.com", "pw", Vec::new(), Some("5KB".into())).unwrap();
        file.save().unwrap();
        let users = Arc::new(RwLock::new(Arc::new(Users::load(&path).unwrap())));
        let aliases = [
            (
                "sales@example.com".to_string(),
                vec!["alice@example.com".into(), "bob@example.com".into()],
            ),
            ("info".to_string(), vec!["bob@example.com".into()]),
        ];
        Mailboxes::new(
            MailboxesConfig {
                domains: vec!["Example.com".into(), "example.net".into()],
                aliases: aliases.into_iter().collect(),
                catch_all: None,
                postmaster: Some("alice@example.com".into()),
                root,
                quota: 1000,
                hostname: "mx.test".into(),
            },
            users,
        )
    }

    #[test]
    fn users_aliases_roles_and_strangers() {
        let m = mailboxes(PathBuf::from("/nonexistent"));
        let users = |v: &[&str]| Lookup::Users(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(m.lookup("Alice@EXAMPLE.com."), users(&["alice@example.com"]));
        assert_eq!(m.lookup("sales@example.com"), users(&["alice@example.com", "bob@example.com"]));
        assert_eq!(m.lookup("info@example.net"), users(&["bob@example.com"]), "bare local part");
        assert_eq!(m.lookup("postmaster@example.net"), users(&["alice@example.com"]));
        assert_eq!(m.lookup("abuse@example.com"), users(&["alice@example.com"]));
        assert_eq!(m.lookup("carol@example.com"), Lookup::Unknown);
        assert_eq!(m.lookup("alice@example.org"), Lookup::NotLocal);
    }

    #[test]
    fn delivery_adds_delivered_to_refuses_loops_and_keeps_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let m = mailboxes(dir.path().to_path_buf());
        let msg = b"Subject: hi\r\n\r\nbody\r\n";
        assert!(matches!(m.deliver("alice@example.com", "s@x.org", msg), Delivered::Stored));
        let list = m.maildir("alice@example.com").list().unwrap();
        let text = std::fs::read_to_string(&list[0].path).unwrap();
        assert!(text.starts_with("Delivered-To: alice@example.com\r\nReturn-Path: <s@x.org>\r\n"));
        let looped = text.as_bytes();
        assert!(matches!(m.deliver("alice@example.com", "s@x.org", looped), Delivered::Loop));
        let big = vec![b'x'; 990];
        assert!(matches!(m.deliver("alice@example.com", "s@x.org", &big), Delivered::OverQuota));
        // Bob's own quota (5 KB in the users file) is over the default 1,000 octets.
        assert_eq!((m.quota_of("alice@example.com"), m.quota_of("Bob@example.com")), (1000, 5000));
        assert!(matches!(m.deliver("bob@example.com", "s@x.org", &big), Delivered::Stored));
        assert!(matches!(m.deliver("carol@example.com", "", msg), Delivered::NoSuchUser));
    }

    #[test]
    fn quarantined_mail_is_filed_into_junk_with_the_junk_keyword() {
        let dir = tempfile::tempdir().unwrap();
        let m = mailboxes(dir.path().to_path_buf());
        let md = m.maildir("bob@example.com");
        md.create().unwrap();
        // Without a Junk folder: INBOX, with $Junk.
        let msg = b"X-Sluice-Quarantine: dmarc\r\nSubject: spam\r\n\r\nbody\r\n";
        assert!(matches!(m.deliver("bob@example.com", "s@x.org", msg), Delivered::Stored));
        let inbox = md.snapshot().unwrap();
        let k = keywords::Keywords::load(md.root());
        assert_eq!(k.names(inbox.messages[0].keywords).collect::<Vec<_>>(), ["$Junk"]);
        md.ensure_default_folders().unwrap();
        assert!(matches!(m.deliver("bob@example.com", "s@x.org", msg), Delivered::Stored));
        let junk = md.folder("Junk").unwrap();
        let filed = junk.snapshot().unwrap();
        assert_eq!(filed.messages.len(), 1);
        assert!(filed.messages[0].path.to_string_lossy().ends_with(":2,a"));
        assert_eq!(md.snapshot().unwrap().messages.len(), 1, "not in INBOX");
        // A field that only mentions the name in its value does not count.
        let ok = b"Subject: X-Sluice-Quarantine: no\r\n\r\nbody\r\n";
        assert!(matches!(m.deliver("bob@example.com", "s@x.org", ok), Delivered::Stored));
        assert_eq!(md.snapshot().unwrap().messages.len(), 2);
    }

    /// Issue #23: a delivery repeated after a crash between the mailbox write and the spool's
    /// record of it (or a retry of an alias delivered to some of its users) finds its key in
    /// the mailbox and is not written twice; a first delivery never looks.
    #[test]
    fn a_repeated_delivery_is_found_by_its_key_and_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let m = mailboxes(dir.path().to_path_buf());
        let msg = b"Subject: once\r\n\r\nbody\r\n";
        let first = m.deliver_once("alice@example.com", "s@x.org", msg, Some(("17-0", false)));
        assert!(matches!(first, Delivered::Stored));
        let md = m.maildir("alice@example.com");
        assert!(md.has_delivery("17-0").unwrap() && !md.has_delivery("17-1").unwrap());
        let before = crate::metrics::LOCAL_DUPLICATES.get();
        let again = m.deliver_once("alice@example.com", "s@x.org", msg, Some(("17-0", true)));
        assert!(matches!(again, Delivered::Stored), "reported as delivered");
        assert_eq!(md.list().unwrap().len(), 1, "not written twice");
        assert!(crate::metrics::LOCAL_DUPLICATES.get() > before);
        // Another recipient of the same message is written.
        m.deliver_once("alice@example.com", "s@x.org", msg, Some(("17-1", true)));
        assert_eq!(md.list().unwrap().len(), 2);
        // The key is a field Maildir readers ignore: the size is still read from the name.
        let names: Vec<String> = md.list().unwrap().into_iter().map(|e| e.unique).collect();
        assert!(names.iter().all(|n| n.contains(",X=17-") && n.contains(",S=")), "{names:?}");
        assert_eq!(md.list().unwrap()[0].size, md.usage().unwrap() / 2);
    }

    #[test]
    fn path_unsafe_local_parts_stay_inside_the_root() {
        let m = mailboxes(PathBuf::from("/srv/mail"));
        let p = m.maildir("../../etc@example.com");
        assert_eq!(p.root(), Path::new("/srv/mail/example.com/=2e2e2f2e2e2f657463/Maildir"));
    }
}
