//! The suppression list: addresses never to mail again (hard bounces, complaints,
//! unsubscribes, operator entries), per tenant or global.
//!
//! Durable in a redb file (`<data_dir>/suppression.redb`; every change is one fsync'd write
//! transaction before it is acknowledged). Lookups never touch it: memory holds, per entry, a
//! keyed 64-bit hash of `(tenant, address)` and, beside its reason and time, a second,
//! independently keyed 24-bit fingerprint: 16 bytes per entry plus the table's slack. A lookup
//! is a probe and a compare; an unlisted address is taken for a listed one only if both keyed
//! hashes collide (odds about n / 2^88 per lookup: never, in practice). Keys are random per
//! process, so nobody can choose addresses that collide.
//!
//! Addresses are compared in lower case (RFC 5321 lets local parts be case-sensitive; no large
//! mailbox provider treats them so, and a suppression that missed `Bob@` for `bob@` would mail a
//! complainer again).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::path::Path;
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::Category;
use crate::units::default_true;

/// `tenant \0 address` -> [`Stored`] (postcard). The global scope is the empty tenant.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("suppression");

/// redb's page cache for the list file.
const CACHE_BYTES: usize = 16 << 20;

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A hard bounce of this category.
    Bounce(Category),
    /// The recipient reported the mail as spam (a feedback loop report).
    Complaint,
    /// The recipient unsubscribed (RFC 8058 one-click, or the mailto form).
    Unsubscribe,
    /// Added by an operator (`sluice suppression add`, import, the admin API).
    Manual,
}

impl Reason {
    fn code(self) -> u8 {
        match self {
            Reason::Bounce(c) => Category::ALL.iter().position(|x| *x == c).unwrap_or(0) as u8,
            Reason::Complaint => 100,
            Reason::Unsubscribe => 101,
            Reason::Manual => 102,
        }
    }

    /// How strong a reason is: an entry is never replaced by a weaker one (a bounce read
    /// later does not turn a complaint or an unsubscribe into a bounce).
    fn strength(self) -> u8 {
        match self {
            Reason::Bounce(_) => 0,
            Reason::Manual => 1,
            Reason::Unsubscribe => 2,
            Reason::Complaint => 3,
        }
    }

    fn from_code(c: u8) -> Reason {
        match c {
            100 => Reason::Complaint,
            101 => Reason::Unsubscribe,
            102 => Reason::Manual,
            c => Category::ALL.get(c as usize).map_or(Reason::Manual, |c| Reason::Bounce(*c)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Bounce(c) => c.as_str(),
            Reason::Complaint => "complaint",
            Reason::Unsubscribe => "unsubscribe",
            Reason::Manual => "manual",
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "complaint" => Ok(Reason::Complaint),
            "unsubscribe" => Ok(Reason::Unsubscribe),
            "manual" | "" => Ok(Reason::Manual),
            other => other.parse().map(Reason::Bounce).map_err(|_| {
                format!(
                    "unknown reason {other:?} (a bounce category, complaint, unsubscribe or manual)"
                )
            }),
        }
    }
}

/// One entry as stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    reason: u8,
    /// Unix seconds.
    time: u64,
    /// The bounce's reply, or an operator's note.
    detail: Option<String>,
}

/// One entry, for lists and lookups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub address: String,
    /// None: global (applies to every tenant).
    pub tenant: Option<String>,
    #[serde(serialize_with = "reason_str")]
    pub reason: Reason,
    /// Unix seconds.
    pub time: u64,
    pub detail: Option<String>,
}

fn reason_str<S: serde::Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

/// A change to make.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub address: String,
    pub tenant: Option<String>,
    pub reason: Reason,
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("suppression list {path}: {error}")]
    Open { path: String, error: String },
    #[error("suppression list: {0}")]
    Store(String),
    #[error("{0:?} is not an email address")]
    BadAddress(String),
}

impl SuppressionError {
    fn store(e: impl std::fmt::Display) -> Self {
        SuppressionError::Store(e.to_string())
    }
}

/// The in-memory side: the keyed hash, then [`pack`]ed fingerprint, reason and time.
type Index = HashMap<u64, u64, BuildHasherDefault<Prehashed>>;

/// Fingerprint (24 bits), reason (8 bits), time (32 bits of Unix seconds).
fn pack(fingerprint: u64, reason: u8, time: u64) -> u64 {
    (fingerprint & 0xff_ffff) << 40 | u64::from(reason) << 32 | (time & 0xffff_ffff)
}

fn unpack(v: u64) -> (u64, u8, u64) {
    (v >> 40, (v >> 32) as u8, v & 0xffff_ffff)
}

/// Keys are already uniformly random 64-bit hashes: hashing them again is wasted work.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub struct Suppressions {
    db: Database,
    index: RwLock<Index>,
    /// Random keys per process for the slot hash and the fingerprint.
    keys: (RandomState, RandomState),
}

impl std::fmt::Debug for Suppressions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Suppressions({} entries)", self.len())
    }
}

/// The address as compared: trimmed, without angle brackets, lower case.
pub fn normalize(address: &str) -> Result<String, SuppressionError> {
    let a = crate::domain::canonical_address(address);
    match a.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !a.contains(|c: char| c.is_whitespace() || c == '\0' || c == ',') =>
        {
            Ok(a)
        }
        _ => Err(SuppressionError::BadAddress(address.to_string())),
    }
}

fn key(tenant: Option<&str>, address: &str) -> String {
    format!("{}\0{address}", tenant.unwrap_or(""))
}

fn split_key(k: &str) -> (Option<String>, String) {
    match k.split_once('\0') {
        Some(("", a)) => (None, a.to_string()),
        Some((t, a)) => (Some(t.to_string()), a.to_string()),
        None => (None, k.to_string()),
    }
}

impl Suppressions {
    /// Opens (or creates) the list at `path` and loads its index.
    pub fn open(path: &Path) -> Result<Self, SuppressionError> {
        let open_err = |e: &dyn std::fmt::Display| SuppressionError::Open {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        // Lookups are served from memory; the file's own cache only speeds up confirmations
        // and listings, so it stays small (redb's default is 1 GiB).
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(&e))?;
        let keys = (RandomState::new(), RandomState::new());
        let s = Suppressions { db, index: RwLock::new(Index::default()), keys };
        let w = s.db.begin_write().map_err(|e| open_err(&e))?;
        w.open_table(TABLE).map_err(|e| open_err(&e))?;
        w.commit().map_err(|e| open_err(&e))?;
        let r = s.db.begin_read().map_err(|e| open_err(&e))?;
        let t = r.open_table(TABLE).map_err(|e| open_err(&e))?;
        let mut index = Index::default();
        index.reserve(t.len().map_err(|e| open_err(&e))? as usize);
        for item in t.iter().map_err(|e| open_err(&e))? {
            let (k, v) = item.map_err(|e| open_err(&e))?;
            if let Ok(st) = postcard::from_bytes::<Stored>(v.value()) {
                let (tenant, address) = k.value().split_once('\0').unwrap_or(("", k.value()));
                let (slot, fp) = s.hash(tenant, address.as_bytes());
                index.insert(slot, pack(fp, st.reason, st.time));
            }
        }
        crate::metrics::SUPPRESSION_ENTRIES.set(index.len() as i64);
        *s.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        Ok(s)
    }

    /// The slot hash and the fingerprint of `(tenant, lower-case address)`.
    fn hash(&self, tenant: &str, address: &[u8]) -> (u64, u64) {
        let one = |k: &RandomState| {
            let mut h = k.build_hasher();
            h.write(tenant.as_bytes());
            h.write_u8(0);
            h.write(address);
            h.finish()
        };
        (one(&self.keys.0), one(&self.keys.1))
    }

    /// The file, for tables that live beside the list (VERP).
    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn len(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `address` is suppressed for `tenant` (its own entries, then the global ones):
    /// the reason and time (no `detail`; [`Self::list`] has it). Memory only, no allocation
    /// for ASCII addresses.
    pub fn check(&self, tenant: Option<&str>, address: &str) -> Option<Entry> {
        let mut buf = [0u8; 256];
        let lower_owned;
        // Quoted local parts and brackets take the canonical form (`"supp"@x` is `supp@x`).
        let lower: &[u8] = if address.contains(['"', '<', '\\']) {
            lower_owned = crate::domain::canonical_address(address);
            lower_owned.as_bytes()
        } else if address.is_ascii() && address.len() <= buf.len() {
            for (d, s) in buf.iter_mut().zip(address.bytes()) {
                *d = s.to_ascii_lowercase();
            }
            &buf[..address.len()]
        } else {
            lower_owned = address.to_lowercase();
            lower_owned.as_bytes()
        };
        let own = tenant.filter(|t| !t.is_empty());
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        for scope in [own, None].into_iter().take(if own.is_some() { 2 } else { 1 }) {
            let (slot, fp) = self.hash(scope.unwrap_or(""), lower);
            if let Some(&v) = index.get(&slot) {
                let (stored_fp, reason, time) = unpack(v);
                if stored_fp == fp & 0xff_ffff {
                    return Some(Entry {
                        address: String::from_utf8_lossy(lower).into_owned(),
                        tenant: scope.map(str::to_string),
                        reason: Reason::from_code(reason),
                        time,
                        detail: None,
                    });
                }
            }
        }
        None
    }

    /// Adds (or refreshes) entries in one durable transaction; returns how many were new.
    /// Blocking (an fsync): call it off the async threads.
    pub fn add(&self, entries: &[NewEntry]) -> Result<usize, SuppressionError> {
        let now = crate::spool::unix_millis() / 1000;
        let mut keyed = Vec::with_capacity(entries.len());
        for e in entries {
            let tenant = e.tenant.as_deref().unwrap_or("");
            let address = normalize(&e.address)?;
            let (slot, fp) = self.hash(tenant, address.as_bytes());
            let st = Stored { reason: e.reason.code(), time: now, detail: e.detail.clone() };
            let packed = pack(fp, st.reason, now);
            let k = key(Some(tenant).filter(|t| !t.is_empty()), &address);
            keyed.push((
                k,
                postcard::to_stdvec(&st).map_err(SuppressionError::store)?,
                slot,
                packed,
            ));
        }
        let w = self.db.begin_write().map_err(SuppressionError::store)?;
        let mut new = 0;
        // Entries left as they were because they hold a stronger reason.
        let mut kept_stronger = Vec::new();
        {
            let mut t = w.open_table(TABLE).map_err(SuppressionError::store)?;
            for (i, (k, v, _, _)) in keyed.iter().enumerate() {
                let existing =
                    t.get(k.as_str()).map_err(SuppressionError::store)?.and_then(|old| {
                        postcard::from_bytes::<Stored>(old.value()).ok().map(|s| s.reason)
                    });
                if let Some(old) = existing
                    && Reason::from_code(old).strength() > entries[i].reason.strength()
                {
                    kept_stronger.push(i);
                    continue;
                }
                if t.insert(k.as_str(), v.as_slice()).map_err(SuppressionError::store)?.is_none() {
                    new += 1;
                }
            }
        }
        w.commit().map_err(SuppressionError::store)?;
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for (i, (_, _, slot, packed)) in keyed.iter().enumerate() {
            if !kept_stronger.contains(&i) {
                index.insert(*slot, *packed);
            }
        }
        crate::metrics::SUPPRESSION_ENTRIES.set(index.len() as i64);
        for e in entries {
            crate::metrics::SUPPRESSIONS_ADDED.with_label_values(&[e.reason.as_str()]).inc();
        }
        Ok(new)
    }

    /// Removes one entry; false if it was not there. Blocking, like [`Self::add`].
    pub fn remove(&self, tenant: Option<&str>, address: &str) -> Result<bool, SuppressionError> {
        let address = normalize(address)?;
        let k = key(tenant.filter(|t| !t.is_empty()), &address);
        let w = self.db.begin_write().map_err(SuppressionError::store)?;
        let found = {
            let mut t = w.open_table(TABLE).map_err(SuppressionError::store)?;
            t.remove(k.as_str()).map_err(SuppressionError::store)?.is_some()
        };
        w.commit().map_err(SuppressionError::store)?;
        if found {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            index.remove(&self.hash(tenant.unwrap_or(""), address.as_bytes()).0);
            crate::metrics::SUPPRESSION_ENTRIES.set(index.len() as i64);
        }
        Ok(found)
    }

    /// Every entry, or those of one tenant (`Some("")`: the global ones), in key order.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<Entry>, SuppressionError> {
        let r = self.db.begin_read().map_err(SuppressionError::store)?;
        let t = r.open_table(TABLE).map_err(SuppressionError::store)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(SuppressionError::store)? {
            let (k, v) = item.map_err(SuppressionError::store)?;
            let (t_name, address) = split_key(k.value());
            if let Some(want) = tenant
                && t_name.as_deref().unwrap_or("") != want
            {
                continue;
            }
            let Ok(st) = postcard::from_bytes::<Stored>(v.value()) else { continue };
            out.push(Entry {
                address,
                tenant: t_name,
                reason: Reason::from_code(st.reason),
                time: st.time,
                detail: st.detail,
            });
        }
        Ok(out)
    }
}

/// The CSV form of `sluice suppression export` (and what import reads back).
pub const CSV_HEADER: &str = "address,tenant,reason,time";

pub fn to_csv(entries: &[Entry]) -> String {
    let mut out = String::with_capacity(entries.len() * 48 + 32);
    out.push_str(CSV_HEADER);
    out.push('\n');
    for e in entries {
        out.push_str(&format!(
            "{},{},{},{}\n",
            e.address,
            e.tenant.as_deref().unwrap_or(""),
            e.reason.as_str(),
            e.time
        ));
    }
    out
}

/// Reads CSV as [`to_csv`] writes it, or one bare address per line (reason `manual`).
/// `tenant` applies to lines that name none. Errors name the line.
pub fn from_csv(text: &str, tenant: Option<&str>) -> Result<Vec<NewEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line == CSV_HEADER) {
            continue;
        }
        let mut f = line.split(',');
        let address = f.next().unwrap_or("");
        let t = f.next().map(str::trim).filter(|t| !t.is_empty()).or(tenant);
        let reason =
            f.next().unwrap_or("").trim().parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        normalize(address).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(NewEntry {
            address: address.to_string(),
            tenant: t.map(str::to_string),
            reason,
            detail: None,
        });
    }
    Ok(out)
}

/// SMTP RCPT from trusted clients checks the global entries (SMTP carries no tenant at RCPT).
impl crate::proto::smtp::session::RecipientPolicy for Suppressions {
    fn refusal(&self, tenant: Option<&str>, rcpt: &str) -> Option<String> {
        let e = self.check(tenant, rcpt)?;
        crate::metrics::SUPPRESSED.with_label_values(&["rcpt"]).inc();
        Some(refusal_text(rcpt, &e))
    }
}

/// "<addr> is on the suppression list (invalid_recipient since 2026-12-01)".
pub fn refusal_text(address: &str, e: &Entry) -> String {
    let since = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.time),
    )
    .to_string();
    format!("{address} is on the suppression list ({} since {})", e.reason.as_str(), &since[..10])
}

/// The suppression list (README, "Suppression").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionConfig {
    /// Keep and apply the list.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Hard-bounce categories that add the recipient.
    #[serde(default = "default_suppress_categories")]
    pub categories: Vec<crate::bounce::classify::Category>,
    /// Where bounce-fed entries go: "tenant" (the message's tenant; global for untagged mail)
    /// or "global".
    #[serde(default)]
    pub scope: SuppressionScope,
    /// Refuse suppressed recipients at RCPT for authenticated and relay clients (550 5.7.1).
    #[serde(default = "default_true")]
    pub check_rcpt: bool,
    /// Per-tenant overrides.
    #[serde(default)]
    pub tenant: std::collections::BTreeMap<String, TenantSuppression>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuppressionScope {
    #[default]
    Tenant,
    Global,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSuppression {
    /// Refuse this tenant's suppressed recipients at injection.
    #[serde(default = "default_true")]
    pub check: bool,
    /// Hard-bounce categories that add this tenant's recipients (default: the global list).
    pub categories: Option<Vec<crate::bounce::classify::Category>>,
}

fn default_suppress_categories() -> Vec<crate::bounce::classify::Category> {
    use crate::bounce::classify::Category::*;
    vec![InvalidRecipient, BadDomain, InactiveMailbox]
}

impl SuppressionConfig {
    /// Whether injected mail of `tenant` is checked against the list.
    pub fn checks(&self, tenant: Option<&str>) -> bool {
        self.enabled && tenant.and_then(|t| self.tenant.get(t)).is_none_or(|t| t.check)
    }

    /// Whether a hard bounce of `category` for `tenant` suppresses the recipient.
    pub fn suppresses(
        &self,
        tenant: Option<&str>,
        category: crate::bounce::classify::Category,
    ) -> bool {
        let own = tenant.and_then(|t| self.tenant.get(t)).and_then(|t| t.categories.as_ref());
        self.enabled && own.unwrap_or(&self.categories).contains(&category)
    }
}

crate::units::default_from_serde!(SuppressionConfig);

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(a: &str, t: Option<&str>, r: Reason) -> NewEntry {
        NewEntry { address: a.into(), tenant: t.map(Into::into), reason: r, detail: None }
    }

    #[test]
    fn tenant_and_global_scopes_and_case() {
        let dir = tempfile::tempdir().unwrap();
        let s = Suppressions::open(&dir.path().join("s.redb")).unwrap();
        let bounced = Reason::Bounce(Category::InvalidRecipient);
        assert_eq!(s.add(&[entry("Gone@Example.org", Some("acme"), bounced)]).unwrap(), 1);
        assert_eq!(s.add(&[entry("all@example.org", None, Reason::Complaint)]).unwrap(), 1);
        assert_eq!(s.check(Some("acme"), "gone@example.org").unwrap().reason, bounced);
        assert!(s.check(Some("other"), "gone@example.org").is_none(), "another tenant's entry");
        assert!(s.check(None, "gone@example.org").is_none(), "a tenant entry is not global");
        assert_eq!(s.check(Some("acme"), "ALL@example.org").unwrap().reason, Reason::Complaint);
        assert_eq!(s.check(None, "all@example.org").unwrap().tenant, None);
        assert!(s.check(None, "nobody@example.org").is_none());
        assert!(s.remove(Some("acme"), "gone@example.org").unwrap());
        assert!(!s.remove(Some("acme"), "gone@example.org").unwrap());
        assert!(s.check(Some("acme"), "gone@example.org").is_none());
        assert!(matches!(
            s.add(&[entry("no-at-sign", None, Reason::Manual)]),
            Err(SuppressionError::BadAddress(_))
        ));
    }

    /// Issue #22: an unsubscribe or a complaint is never turned into a bounce by a later
    /// report; a quoted local part is the same mailbox (RFC 5321 4.1.2).
    #[test]
    fn the_strongest_reason_stays_and_quoted_local_parts_match() {
        let dir = tempfile::tempdir().unwrap();
        let s = Suppressions::open(&dir.path().join("s.redb")).unwrap();
        let bounced = Reason::Bounce(Category::InvalidRecipient);
        s.add(&[entry("ann@example.org", None, Reason::Unsubscribe)]).unwrap();
        s.add(&[entry("ann@example.org", None, bounced)]).unwrap();
        assert_eq!(s.check(None, "ann@example.org").unwrap().reason, Reason::Unsubscribe);
        s.add(&[entry("ann@example.org", None, Reason::Complaint)]).unwrap();
        assert_eq!(s.check(None, "ann@example.org").unwrap().reason, Reason::Complaint);
        s.add(&[entry("bob@example.org", None, bounced)]).unwrap();
        s.add(&[entry("bob@example.org", None, Reason::Unsubscribe)]).unwrap();
        assert_eq!(s.check(None, "bob@example.org").unwrap().reason, Reason::Unsubscribe);
        // Reopened, the index agrees with the table.
        drop(s);
        let s = Suppressions::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(s.check(None, "ann@example.org").unwrap().reason, Reason::Complaint);
        s.add(&[entry("supp@example.org", None, Reason::Manual)]).unwrap();
        assert!(s.check(None, "\"supp\"@example.org").is_some(), "quoted local part");
        assert!(s.check(None, "<\"Supp\"@Example.org>").is_some());
        s.add(&[entry("\"carl\"@example.org", None, Reason::Manual)]).unwrap();
        assert!(s.check(None, "carl@example.org").is_some(), "inserted in canonical form");
    }

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = Suppressions::open(&path).unwrap();
            s.add(&[entry("a@example.org", Some("t"), Reason::Unsubscribe)]).unwrap();
        }
        let s = Suppressions::open(&path).unwrap();
        assert_eq!(s.len(), 1);
        let e = s.check(Some("t"), "a@example.org").unwrap();
        assert_eq!((e.reason, e.tenant.as_deref()), (Reason::Unsubscribe, Some("t")));
    }

    #[test]
    fn csv_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Suppressions::open(&dir.path().join("s.redb")).unwrap();
        s.add(&[
            entry("a@example.org", Some("t"), Reason::Unsubscribe),
            entry("b@example.org", None, Reason::Bounce(Category::BadDomain)),
        ])
        .unwrap();
        let csv = to_csv(&s.list(None).unwrap());
        let other = Suppressions::open(&dir.path().join("o.redb")).unwrap();
        other.add(&from_csv(&csv, None).unwrap()).unwrap();
        let strip = |v: Vec<Entry>| {
            v.into_iter().map(|e| (e.address, e.tenant, e.reason)).collect::<Vec<_>>()
        };
        assert_eq!(strip(other.list(None).unwrap()), strip(s.list(None).unwrap()));
        assert_eq!(
            from_csv("x@example.org\n", Some("t")).unwrap()[0].tenant.as_deref(),
            Some("t"),
            "bare addresses take the given tenant"
        );
        assert!(
            from_csv("ok@example.org\nnot-an-address\n", None).unwrap_err().starts_with("line 2")
        );
    }
}
