//! The quotas as the intake applies them: `[tenant.NAME]` limits and the users file's limits
//! over [`Quotas`] counters. SMTP asks at MAIL and RCPT (452 4.7.1), HTTP per request (429);
//! every stored message is counted here, whichever way it came.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::auth::users::SharedUsers;
use crate::proto::smtp::session::SendQuota;
use crate::tenant::quota::{Exceeded, Limits, Quotas};

pub struct QuotaPolicy {
    pub quotas: Quotas,
    /// `[tenant.NAME]` limits.
    pub tenants: BTreeMap<String, Limits>,
    /// The users file, for `sluice user limit`s (replaced on SIGHUP).
    pub users: SharedUsers,
    /// `[tenant.NAME] max_sessions`.
    pub max_sessions: BTreeMap<String, usize>,
    /// SMTP sessions open per tenant (those with a cap).
    pub sessions: Arc<Mutex<HashMap<String, usize>>>,
    /// Tenants as metric labels (bounded, as `sluice_messages_received_total`'s).
    pub labels: Arc<crate::domain_labels::DomainLabels>,
}

/// One of a tenant's sessions, given back on drop.
#[derive(Debug)]
pub struct SessionSlot {
    sessions: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl std::fmt::Debug for QuotaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaPolicy").field("tenants", &self.tenants).finish_non_exhaustive()
    }
}

fn now() -> f64 {
    crate::spool::unix_millis() as f64 / 1000.0
}

impl QuotaPolicy {
    /// The subjects with limits among `user` and `tenant`: (key, limits).
    fn subjects(&self, user: Option<&str>, tenant: Option<&str>) -> Vec<(String, Limits)> {
        let mut out = Vec::new();
        if let Some(u) = user {
            let users = self.users.read().unwrap_or_else(|e| e.into_inner());
            if let Some(rec) = users.get(u) {
                let limits = Limits {
                    max_messages_per_hour: rec.max_messages_per_hour,
                    max_recipients_per_day: rec.max_recipients_per_day,
                    // Checked when the file was loaded.
                    rate: rec.rate.as_deref().and_then(|r| crate::rate::parse_rate(r).ok()),
                };
                if !limits.is_empty() {
                    out.push((format!("user {}", crate::auth::users::normal_name(u)), limits));
                }
            }
        }
        if let Some(t) = tenant
            && let Some(limits) = self.tenants.get(t)
        {
            out.push((format!("tenant {t}"), limits.clone()));
        }
        out
    }

    /// Whether `messages` more messages with `recipients` recipients may go now.
    pub fn check(
        &self,
        user: Option<&str>,
        tenant: Option<&str>,
        messages: u64,
        recipients: u64,
    ) -> Result<(), Exceeded> {
        let subjects = self.subjects(user, tenant);
        if subjects.is_empty() {
            return Ok(());
        }
        let refs: Vec<(&str, &Limits)> = subjects.iter().map(|(k, l)| (k.as_str(), l)).collect();
        self.quotas.check(&refs, messages, recipients, now()).inspect_err(|e| {
            let tenant = tenant.map_or_else(String::new, |t| self.labels.label(t));
            crate::metrics::QUOTA_REFUSED.with_label_values(&[&tenant, e.limit]).inc();
        })
    }

    /// A session for a user of `tenant`: None when the tenant has no cap, an error when it
    /// has all its sessions open.
    pub fn open_session(&self, tenant: &str) -> Result<Option<SessionSlot>, Exceeded> {
        let Some(&max) = self.max_sessions.get(tenant) else {
            return Ok(None);
        };
        let mut open = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(tenant.to_string()).or_insert(0);
        if *n >= max {
            crate::metrics::QUOTA_REFUSED
                .with_label_values(&[&self.labels.label(tenant), "max_sessions"])
                .inc();
            return Err(Exceeded {
                who: format!("tenant {tenant}"),
                what: format!("{max} sessions"),
                limit: "max_sessions",
                retry_after: 1,
            });
        }
        *n += 1;
        Ok(Some(SessionSlot { sessions: self.sessions.clone(), tenant: tenant.to_string() }))
    }

    /// Counts one stored message.
    pub fn record(&self, user: Option<&str>, tenant: Option<&str>, recipients: usize) {
        let subjects = self.subjects(user, tenant);
        let refs: Vec<(&str, &Limits)> = subjects.iter().map(|(k, l)| (k.as_str(), l)).collect();
        self.quotas.record(&refs, 1, recipients as u64, now());
    }
}

impl crate::state_file::Saved for QuotaPolicy {
    fn save(&self) -> std::io::Result<()> {
        self.quotas.save()
    }
}

impl SendQuota for QuotaPolicy {
    fn mail(&self, user: &str, tenant: Option<&str>) -> Option<String> {
        self.check(Some(user), tenant, 1, 0).err().map(|e| e.to_string())
    }

    fn rcpt(&self, user: &str, tenant: Option<&str>, nth: usize) -> Option<String> {
        self.check(Some(user), tenant, 0, nth as u64).err().map(|e| e.to_string())
    }
}
