//! The users file (`[auth] users_file`, default `<data_dir>/users.toml`): one `[[user]]` per
//! account with an argon2id hash (PHC string) and the senders the user may use.
//!
//! ```toml
//! [[user]]
//! name = "app"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! senders = ["app@example.com", "@example.org"]   # empty or absent: any sender
//! ```
//! `sluice user add|passwd|del` edit it; the file is written whole, atomically, mode 0600.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// argon2id PHC string; never a plain password.
    pub password: String,
    /// Allowed MAIL FROM addresses (`user@domain`) or domains (`@domain`); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<String>,
    /// The user's mailbox quota (`"2GiB"`), over `[local] quota`; "0" for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// The tenant the user's mail is sent for (suppression scope, VERP, metrics, quotas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Sending limits of this user (`sluice user limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recipients_per_day: Option<u64>,
    /// GCRA rate, as `[shaping]` (`"100/1m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
}

/// What a right password grants: the senders the user may use and the tenant its mail goes
/// under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub senders: Vec<String>,
    pub tenant: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<User>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("user {0:?} already exists (use `sluice user passwd`)")]
    Exists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("user names are 1-255 octets without spaces, ':' or control characters")]
    BadName,
    #[error("bad quota: {0}")]
    BadQuota(String),
    #[error("bad tenant: {0}")]
    BadTenant(String),
    #[error("bad rate: {0}")]
    BadRate(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The users, replaced whole on SIGHUP; readers clone the inner `Arc`.
pub type SharedUsers = std::sync::Arc<std::sync::RwLock<std::sync::Arc<Users>>>;

#[derive(Debug, Default)]
pub struct Users {
    /// By [`normal_name`]: logins, mailboxes and quotas all find a user by that one form.
    by_name: HashMap<String, User>,
    /// Mailbox quotas set per user, by normal name.
    quotas: HashMap<String, u64>,
}

/// The one form of an account name every lookup uses (password, mailbox, quota, lockout):
/// lower case (Unicode, so a Kelvin sign is a `k`), and for an address the canonical form of
/// [`crate::domain::canonical_address`] (`"bob"@x` is `bob@x`). RFC 5321 allows a
/// case-sensitive local part, but no mail system people use relies on it, and two accounts
/// that differ only so would share a mailbox.
pub fn normal_name(name: &str) -> String {
    match name.contains('@') {
        true => crate::domain::canonical_address(name),
        false => name.to_lowercase(),
    }
}

fn file_err(path: &Path, reason: impl ToString) -> UsersError {
    UsersError::File { path: path.display().to_string(), reason: reason.to_string() }
}

impl Users {
    /// Reads the users file; a missing file means no users.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Users::default()),
            Err(e) => return Err(file_err(path, e)),
        };
        let f: UsersFile = toml::from_str(&text).map_err(|e| file_err(path, e))?;
        let mut by_name: HashMap<String, User> = HashMap::new();
        let mut quotas = HashMap::new();
        for u in f.user {
            let key = normal_name(&u.name);
            if let Some(q) = &u.quota {
                let bytes = crate::units::parse_size(q)
                    .map_err(|e| file_err(path, format!("user {:?}: quota: {e}", u.name)))?;
                quotas.insert(key.clone(), bytes);
            }
            if let Some(t) = &u.tenant {
                crate::tenant::check_name("tenant", t.clone())
                    .map_err(|e| file_err(path, format!("user {:?}: {e}", u.name)))?;
            }
            if let Some(r) = &u.rate {
                crate::rate::parse_rate(r)
                    .map_err(|e| file_err(path, format!("user {:?}: rate: {e}", u.name)))?;
            }
            PasswordHash::new(&u.password).map_err(|e| {
                file_err(path, format!("user {:?}: bad password hash: {e}", u.name))
            })?;
            // Two accounts with one normal form would share a mailbox: refused, not guessed.
            if let Some(other) = by_name.get(&key) {
                return Err(file_err(
                    path,
                    format!(
                        "users {:?} and {:?} are the same account ({key:?}); remove one",
                        other.name, u.name
                    ),
                ));
            }
            by_name.insert(key, u);
        }
        Ok(Users { by_name, quotas })
    }

    /// Whether a user of this name exists (in any case).
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(&normal_name(name))
    }

    /// Every user name, in normal form.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    /// The mailbox quota set for this user, if any (0: no limit).
    pub fn quota(&self, name: &str) -> Option<u64> {
        self.quotas.get(&normal_name(name)).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The user, by any spelling of its name.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(&normal_name(name))
    }

    /// What the user is granted if the password is right. Slow on purpose (argon2id), and
    /// as slow for unknown users, so timing does not tell which names exist.
    pub fn verify(&self, name: &str, password: &str) -> Option<Grant> {
        let argon = Argon2::default();
        match self.by_name.get(&normal_name(name)) {
            Some(u) => {
                let hash = PasswordHash::new(&u.password).ok()?;
                argon.verify_password(password.as_bytes(), &hash).ok()?;
                Some(Grant { senders: u.senders.clone(), tenant: u.tenant.clone() })
            }
            None => {
                if let Ok(h) = PasswordHash::new(dummy_hash()) {
                    let _ = argon.verify_password(password.as_bytes(), &h);
                }
                None
            }
        }
    }
}

fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("no such user").unwrap_or_default())
}

/// An argon2id hash (default parameters: 19 MiB, 2 passes) in PHC form.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// The users file as a list, for editing.
pub struct UsersFileEditor {
    path: PathBuf,
    users: Vec<User>,
}

impl UsersFileEditor {
    pub fn open(path: &Path) -> Result<Self, UsersError> {
        let users = match std::fs::read_to_string(path) {
            Ok(t) => toml::from_str::<UsersFile>(&t).map_err(|e| file_err(path, e))?.user,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(file_err(path, e)),
        };
        Ok(UsersFileEditor { path: path.to_path_buf(), users })
    }

    pub fn add(
        &mut self,
        name: &str,
        password: &str,
        senders: Vec<String>,
        quota: Option<String>,
    ) -> Result<(), UsersError> {
        check_name(name)?;
        let key = normal_name(name);
        if let Some(u) = self.users.iter().find(|u| normal_name(&u.name) == key) {
            return Err(UsersError::Exists(u.name.clone()));
        }
        check_quota(quota.as_deref())?;
        let password = hash_password(password)?;
        self.users.push(User {
            name: name.into(),
            password,
            senders,
            quota,
            tenant: None,
            max_messages_per_hour: None,
            max_recipients_per_day: None,
            rate: None,
        });
        Ok(())
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, UsersError> {
        self.users
            .iter_mut()
            .find(|u| normal_name(&u.name) == normal_name(name))
            .ok_or_else(|| UsersError::NoSuchUser(name.into()))
    }

    /// Binds (or with None unbinds) a user to a tenant.
    pub fn set_tenant(&mut self, name: &str, tenant: Option<String>) -> Result<(), UsersError> {
        if let Some(t) = &tenant {
            crate::tenant::check_name("tenant", t.clone()).map_err(UsersError::BadTenant)?;
        }
        self.user_mut(name)?.tenant = tenant;
        Ok(())
    }

    /// Sets a user's sending limits; a None leaves that limit as it is, 0 (or rate "0")
    /// removes it.
    pub fn set_limits(
        &mut self,
        name: &str,
        per_hour: Option<u64>,
        per_day: Option<u64>,
        rate: Option<String>,
    ) -> Result<(), UsersError> {
        if let Some(r) = rate.as_deref().filter(|r| *r != "0") {
            crate::rate::parse_rate(r).map_err(|e| UsersError::BadRate(e.to_string()))?;
        }
        let u = self.user_mut(name)?;
        if let Some(n) = per_hour {
            u.max_messages_per_hour = (n > 0).then_some(n);
        }
        if let Some(n) = per_day {
            u.max_recipients_per_day = (n > 0).then_some(n);
        }
        if let Some(r) = rate {
            u.rate = (r != "0").then_some(r);
        }
        Ok(())
    }

    /// Sets (or with None removes) a user's mailbox quota.
    pub fn set_quota(&mut self, name: &str, quota: Option<String>) -> Result<(), UsersError> {
        check_quota(quota.as_deref())?;
        let u = self
            .users
            .iter_mut()
            .find(|u| normal_name(&u.name) == normal_name(name))
            .ok_or_else(|| UsersError::NoSuchUser(name.into()))?;
        u.quota = quota;
        Ok(())
    }

    pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), UsersError> {
        let u = self
            .users
            .iter_mut()
            .find(|u| normal_name(&u.name) == normal_name(name))
            .ok_or_else(|| UsersError::NoSuchUser(name.into()))?;
        u.password = hash_password(password)?;
        Ok(())
    }

    pub fn del(&mut self, name: &str) -> Result<(), UsersError> {
        let before = self.users.len();
        let key = normal_name(name);
        self.users.retain(|u| normal_name(&u.name) != key);
        if self.users.len() == before {
            return Err(UsersError::NoSuchUser(name.into()));
        }
        Ok(())
    }

    /// Writes the file atomically (temporary file, fsync, rename), mode 0600.
    pub fn save(&self) -> Result<(), UsersError> {
        use std::os::unix::fs::OpenOptionsExt;
        let text = toml::to_string(&UsersFile { user: self.users.clone() })
            .map_err(|e| file_err(&self.path, e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        }
        let tmp = self.path.with_extension("toml.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| file_err(&tmp, e))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| file_err(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| file_err(&self.path, e))
    }
}

fn check_quota(quota: Option<&str>) -> Result<(), UsersError> {
    match quota.map(crate::units::parse_size) {
        Some(Err(e)) => Err(UsersError::BadQuota(e)),
        _ => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), UsersError> {
    let ok = !name.is_empty()
        && name.len() <= crate::auth::MAX_IDENTITY
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':');
    if ok { Ok(()) } else { Err(UsersError::BadName) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_passwd_del_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut ed = UsersFileEditor::open(&path).unwrap();
        ed.add("app", "s3cret", vec!["@example.com".into()], None).unwrap();
        assert!(matches!(ed.add("app", "x", vec![], None), Err(UsersError::Exists(_))));
        assert!(matches!(ed.add("bad name", "x", vec![], None), Err(UsersError::BadName)));
        let lots = Some("lots".to_string());
        assert!(matches!(ed.add("q", "x", vec![], lots), Err(UsersError::BadQuota(_))));
        ed.add("big@example.com", "x", vec![], Some("2GiB".into())).unwrap();
        ed.save().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("$argon2id$") && !text.contains("s3cret"));
        let users = Users::load(&path).unwrap();
        let grant = Grant { senders: vec!["@example.com".to_string()], tenant: None };
        assert_eq!(users.verify("app", "s3cret"), Some(grant));
        assert_eq!(users.verify("app", "wrong"), None);
        assert_eq!(users.verify("nobody", "s3cret"), None);
        assert_eq!((users.quota("Big@Example.com"), users.quota("app")), (Some(2 << 30), None));
        let mut ed = UsersFileEditor::open(&path).unwrap();
        ed.passwd("app", "new").unwrap();
        ed.save().unwrap();
        assert_eq!(Users::load(&path).unwrap().verify("app", "new").map(|_| ()), Some(()));
        let mut ed = UsersFileEditor::open(&path).unwrap();
        ed.del("app").unwrap();
        ed.del("big@example.com").unwrap();
        assert!(matches!(ed.del("app"), Err(UsersError::NoSuchUser(_))));
        ed.save().unwrap();
        assert!(Users::load(&path).unwrap().is_empty());
        assert!(Users::load(&dir.path().join("missing.toml")).unwrap().is_empty());
        std::fs::write(&path, "[[user]]\nname = \"x\"\npassword = \"plain\"\n").unwrap();
        let err = Users::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad password hash"), "{err}");
    }

    /// One account per normal form: `bob@x`, `Bob@x`, `"bob"@X` and a Kelvin-sign `Kate`
    /// would otherwise be different users sharing one mailbox.
    #[test]
    fn names_that_differ_only_in_case_or_quoting_are_one_account() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut ed = UsersFileEditor::open(&path).unwrap();
        ed.add("bob@example.com", "one", vec![], None).unwrap();
        ed.add("kate@example.com", "two", vec![], None).unwrap();
        for twin in ["Bob@example.com", "\"bob\"@EXAMPLE.com", "\u{212a}ate@example.com"] {
            assert!(
                matches!(ed.add(twin, "x", vec![], None), Err(UsersError::Exists(_))),
                "{twin}"
            );
        }
        ed.save().unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.verify("BOB@Example.com", "one").is_some(), "logins ignore case");
        assert!(users.verify("\u{212a}ATE@example.com", "two").is_some());
        assert!(users.contains("\"Bob\"@example.com"));
        // A file written by hand with two spellings of one account does not load.
        let hash = hash_password("x").unwrap();
        std::fs::write(
            &path,
            format!("[[user]]\nname = \"bob@x\"\npassword = \"{hash}\"\n[[user]]\nname = \"Bob@x\"\npassword = \"{hash}\"\n"),
        )
        .unwrap();
        let err = Users::load(&path).unwrap_err().to_string();
        assert!(err.contains("are the same account"), "{err}");
    }
}
