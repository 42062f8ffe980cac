//! Authentication of SMTP, POP3 and IMAP clients: the users file with argon2id password
//! hashes, and the lockout that slows and then stops password guessing.

pub mod lockout;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;

use crate::metrics;
use crate::proto::smtp::client::Credentials;

/// Users and brute-force state, shared by every listener.
pub struct AuthContext {
    /// Replaced on SIGHUP.
    pub users: users::SharedUsers,
    pub lockout: lockout::Lockout,
    /// Bounds the password checks running at once (each argon2id check holds ~19 MiB).
    pub verifications: tokio::sync::Semaphore,
}

/// A password check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Right; `senders` are the MAIL FROM addresses or `@domains` the user may use, `tenant`
    /// the one its mail is sent for.
    Ok {
        senders: Vec<String>,
        tenant: Option<String>,
    },
    Invalid,
    /// Too many failures from this client or for this user.
    LockedOut,
}

/// The longest login name looked at (an address is at most 254 octets, RFC 5321 4.5.3.1):
/// a longer one fails before it reaches the lockout's tables, the password check or a log.
pub const MAX_IDENTITY: usize = 255;

/// A client-supplied string as it may appear in a log line: at most 64 characters, control
/// characters escaped, and the full length said when it was cut.
pub fn loggable(s: &str) -> String {
    let cut: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    match s.chars().count() > 64 {
        true => format!("{cut}... ({} octets)", s.len()),
        false => cut,
    }
}

/// Checks a login under the lockout, at most `verifications` at once, off the async threads;
/// a failure waits the lockout's delay before it is answered. `protocol` labels logs.
pub async fn authenticate(
    auth: &Arc<AuthContext>,
    ip: IpAddr,
    protocol: &str,
    mut creds: Credentials,
) -> Verdict {
    let now = std::time::Instant::now();
    // One normal form for the name everywhere (lockout, password, mailbox, quota).
    let too_long = creds.username.len() > MAX_IDENTITY;
    let user = match too_long {
        // Counted against the client only, under one key: the name is never kept.
        true => String::new(),
        false => users::normal_name(&creds.username),
    };
    let shown = loggable(&creds.username);
    // Reserved before the check, so simultaneous guesses cannot all slip under the limit.
    let Ok(attempt) = auth.lockout.begin(ip, &user, now) else {
        metrics::SMTP_AUTH.with_label_values(&["locked_out"]).inc();
        // A locked-out client is refused without a password check; its log lines are
        // limited too, so it cannot fill the disk.
        if let Some(suppressed) = auth.lockout.log_allowed(ip, now) {
            tracing::warn!(%ip, user = %shown, protocol, suppressed, "login refused: locked out");
        }
        return Verdict::LockedOut;
    };
    if too_long {
        let wait = attempt.failed(now);
        metrics::SMTP_AUTH.with_label_values(&["invalid"]).inc();
        if let Some(suppressed) = auth.lockout.log_allowed(ip, now) {
            tracing::warn!(%ip, user = %shown, protocol, suppressed, "login failed: name too long");
        }
        tokio::time::sleep(wait).await;
        return Verdict::Invalid;
    }
    creds.username = user.clone();
    let user = shown;
    let users = auth.users.read().unwrap_or_else(|e| e.into_inner()).clone();
    let verdict = {
        let Ok(_slot) = auth.verifications.acquire().await else { return Verdict::Invalid };
        metrics::AUTH_VERIFICATIONS.inc();
        tokio::task::spawn_blocking(move || users.verify(&creds.username, creds.password.expose()))
            .await
            .ok()
            .flatten()
    };
    match verdict {
        Some(grant) => {
            attempt.succeeded();
            metrics::SMTP_AUTH.with_label_values(&["ok"]).inc();
            tracing::info!(%ip, user, protocol, "authenticated");
            Verdict::Ok { senders: grant.senders, tenant: grant.tenant }
        }
        None => {
            let now = std::time::Instant::now();
            let wait = attempt.failed(now);
            metrics::SMTP_AUTH.with_label_values(&["invalid"]).inc();
            if let Some(suppressed) = auth.lockout.log_allowed(ip, now) {
                tracing::warn!(%ip, user, protocol, suppressed, "login failed");
            }
            tokio::time::sleep(wait).await;
            Verdict::Invalid
        }
    }
}
