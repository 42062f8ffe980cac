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
    /// Right; `senders` are the MAIL FROM addresses or `@domains` the user may use.
    Ok {
        senders: Vec<String>,
    },
    Invalid,
    /// Too many failures from this client or for this user.
    LockedOut,
}

/// Checks a login under the lockout, at most `verifications` at once, off the async threads;
/// a failure waits the lockout's delay before it is answered. `protocol` labels logs.
pub async fn authenticate(
    auth: &Arc<AuthContext>,
    ip: IpAddr,
    protocol: &str,
    creds: Credentials,
) -> Verdict {
    let user = creds.username.clone();
    // Reserved before the check, so simultaneous guesses cannot all slip under the limit.
    let Ok(attempt) = auth.lockout.begin(ip, &user, std::time::Instant::now()) else {
        metrics::SMTP_AUTH.with_label_values(&["locked_out"]).inc();
        tracing::warn!(%ip, user, protocol, "login refused: locked out");
        return Verdict::LockedOut;
    };
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
        Some(senders) => {
            attempt.succeeded();
            metrics::SMTP_AUTH.with_label_values(&["ok"]).inc();
            tracing::info!(%ip, user, protocol, "authenticated");
            Verdict::Ok { senders }
        }
        None => {
            let wait = attempt.failed(std::time::Instant::now());
            metrics::SMTP_AUTH.with_label_values(&["invalid"]).inc();
            tracing::warn!(%ip, user, protocol, "login failed");
            tokio::time::sleep(wait).await;
            Verdict::Invalid
        }
    }
}
