//! Who may use the admin API: bearer tokens, scopes, and the `Host` header.
//!
//! - `<data_dir>/admin.token` (or `[admin] token_file`) holds the admin token. It is made on the
//!   first start (32 random bytes, hex, mode 0600) and read by `sluice queue ...` by itself.
//! - `<data_dir>/tokens.toml` holds named tokens made by `sluice token add NAME --scope
//!   admin|inject`; only their SHA-256 is stored. New ones are picked up without a restart.
//! - Every request except `GET /health` (and `GET /metrics` unless `[admin] metrics_need_token`)
//!   needs `Authorization: Bearer <token>`: 401 without a valid one, 403 when its scope does not
//!   cover the path (`inject` tokens reach `/api/inject` only).
//! - `Host` must name this listener: an IP literal with its port, `localhost:<port>`, or one of
//!   `[admin] hostnames`; anything else is 421. A DNS-rebinding page uses a host name of its own
//!   and is refused here, before any data is read.
//!
//! A browser cannot add an `Authorization` header to a cross-site form post, and state changes
//! are POST/DELETE only, so no other web page can make them (no CSRF).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use aws_lc_rs::digest::{SHA256, digest};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything: queue, metrics, injection.
    Admin,
    /// The injection API only.
    Inject,
    /// `GET /metrics` only (for a Prometheus scraper with `[admin] metrics_need_token`).
    Metrics,
}

impl Scope {
    /// Whether a token of this scope may call `path`.
    pub fn allows(self, path: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Inject => path.starts_with("/api/inject"),
            Scope::Metrics => path == "/metrics",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Inject => "inject",
            Scope::Metrics => "metrics",
        }
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", .path.display())]
    Format { path: PathBuf, msg: String },
    #[error("a token named {0:?} exists already")]
    Exists(String),
    #[error("no token named {0:?}")]
    NotFound(String),
}

/// A named token as `sluice token list` shows it (never its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub scope: Scope,
    /// Unix seconds.
    pub created: u64,
    pub tenants: Vec<String>,
}

/// The named tokens of `tokens_file`, in the order they were made.
pub fn list_tokens(tokens_file: &Path) -> Result<Vec<TokenInfo>, TokenError> {
    Ok(read_tokens_file(tokens_file)?
        .token
        .into_iter()
        .map(|t| TokenInfo { name: t.name, scope: t.scope, created: t.created, tenants: t.tenants })
        .collect())
}

/// Removes the token `name`; a running daemon refuses it from its next request on.
pub fn revoke_token(tokens_file: &Path, name: &str) -> Result<(), TokenError> {
    let mut file = read_tokens_file(tokens_file)?;
    let before = file.token.len();
    file.token.retain(|t| t.name != name);
    if file.token.len() == before {
        return Err(TokenError::NotFound(name.to_string()));
    }
    let text = toml::to_string(&file)
        .map_err(|e| TokenError::Format { path: tokens_file.to_path_buf(), msg: e.to_string() })?;
    write_private(tokens_file, &text)
}

#[derive(Default, Serialize, Deserialize)]
struct TokensFile {
    #[serde(default)]
    token: Vec<NamedToken>,
}

#[derive(Serialize, Deserialize)]
struct NamedToken {
    name: String,
    scope: Scope,
    /// Hex SHA-256 of the token; the token itself is shown once, when it is made.
    sha256: String,
    /// Unix seconds.
    created: u64,
    /// The tenants an `inject` token may send for (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tenants: Vec<String>,
}

/// Who presented a valid token: the handlers see it as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`admin` for the admin token).
    pub name: String,
    pub scope: Scope,
    /// The tenants it is bound to (empty: any).
    pub tenants: Vec<String>,
}

fn sha256_hex(token: &str) -> String {
    digest(&SHA256, token.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 random bytes, hex.
fn new_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TokenError::Io {
        path: PathBuf::from("(random)"),
        source: std::io::Error::other("no randomness"),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path` with mode 0600, atomically.
fn write_private(path: &Path, text: &str) -> Result<(), TokenError> {
    crate::secret_file::replace(path, text.as_bytes())
        .map_err(|source| TokenError::Io { path: path.to_path_buf(), source })
}

/// The admin token in `path`, made (and written with mode 0600) if there is none yet.
pub fn ensure_admin_token(path: &Path) -> Result<String, TokenError> {
    if let Some(t) = read_admin_token(path) {
        return Ok(t);
    }
    let t = new_token()?;
    write_private(path, &format!("{t}\n"))?;
    tracing::info!(file = %path.display(), "admin API token created");
    Ok(t)
}

/// The admin token in `path`, if it exists (for the CLI).
pub fn read_admin_token(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn read_tokens_file(path: &Path) -> Result<TokensFile, TokenError> {
    match fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| TokenError::Format { path: path.to_path_buf(), msg: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokensFile::default()),
        Err(source) => Err(TokenError::Io { path: path.to_path_buf(), source }),
    }
}

/// Makes a named token (bound to `tenants`, if any), stores its hash in `tokens_file`, and
/// returns the token.
pub fn add_token(
    tokens_file: &Path,
    name: &str,
    scope: Scope,
    tenants: &[String],
) -> Result<String, TokenError> {
    let format = |msg: String| TokenError::Format { path: tokens_file.to_path_buf(), msg };
    for t in tenants {
        crate::tenant::check_name("--tenant", t.clone()).map_err(format)?;
    }
    let mut file = read_tokens_file(tokens_file)?;
    if file.token.iter().any(|t| t.name == name) {
        return Err(TokenError::Exists(name.to_string()));
    }
    let token = new_token()?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    file.token.push(NamedToken {
        name: name.into(),
        scope,
        sha256: sha256_hex(&token),
        created,
        tenants: tenants.to_vec(),
    });
    let text = toml::to_string(&file)
        .map_err(|e| TokenError::Format { path: tokens_file.to_path_buf(), msg: e.to_string() })?;
    write_private(tokens_file, &text)?;
    Ok(token)
}

/// The named tokens by hash, and the file's version (mtime, length) when it was read.
type NamedTokens = (Vec<(String, Caller)>, Option<(SystemTime, u64)>);

/// The request guard: tokens (with their scopes) and the host names this listener answers to.
pub struct Guard {
    admin_hash: String,
    tokens_file: PathBuf,
    /// Hashes of the named tokens, re-read whenever the file changed (one `stat` per
    /// request), so `sluice token add` and `revoke` need no restart and a revoked token is
    /// refused from the next request on.
    named: Mutex<NamedTokens>,
    port: u16,
    hostnames: Vec<String>,
    metrics_need_token: bool,
}

impl Guard {
    pub fn new(
        admin_token: &str,
        tokens_file: PathBuf,
        port: u16,
        hostnames: &[String],
        metrics_need_token: bool,
    ) -> Result<Guard, TokenError> {
        let mtime = Self::mtime(&tokens_file);
        let named = Self::load_named(&tokens_file)?;
        Ok(Guard {
            admin_hash: sha256_hex(admin_token),
            tokens_file,
            named: Mutex::new((named, mtime)),
            port,
            hostnames: hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
            metrics_need_token,
        })
    }

    fn mtime(path: &Path) -> Option<(SystemTime, u64)> {
        let m = fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    fn load_named(path: &Path) -> Result<Vec<(String, Caller)>, TokenError> {
        let tokens = read_tokens_file(path)?.token.into_iter();
        Ok(tokens
            .map(|t| (t.sha256, Caller { name: t.name, scope: t.scope, tenants: t.tenants }))
            .collect())
    }

    /// Who a presented token is, if it is one of ours.
    fn caller(&self, token: &str) -> Option<Caller> {
        let h = sha256_hex(token);
        // Hashes are compared, never the secrets: no timing signal about a token's bytes.
        if h == self.admin_hash {
            return Some(Caller { name: "admin".into(), scope: Scope::Admin, tenants: vec![] });
        }
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let version = Self::mtime(&self.tokens_file);
        if version != named.1 {
            named.1 = version;
            match Self::load_named(&self.tokens_file) {
                Ok(n) => named.0 = n,
                // Fail closed: a file that cannot be read grants nothing.
                Err(e) => {
                    tracing::warn!(error = %e, "admin tokens file unreadable");
                    named.0.clear();
                }
            }
        }
        named.0.iter().find(|(x, _)| *x == h).map(|(_, c)| c.clone())
    }

    /// `Host` names this listener: an IP literal or `localhost` with our port, or a configured
    /// name (with or without the port).
    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !n.ends_with(':') && p.bytes().all(|c| c.is_ascii_digit()) => {
                (n.to_string(), p.parse::<u16>().ok())
            }
            _ => (host.clone(), None),
        };
        if self.hostnames.iter().any(|h| *h == host || *h == name) {
            return true;
        }
        let literal = name.trim_start_matches('[').trim_end_matches(']');
        let ours = name == "localhost" || literal.parse::<std::net::IpAddr>().is_ok();
        ours && port == Some(self.port)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (kind, token) = v.split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The middleware in front of every route.
pub async fn guard(
    State(g): State<std::sync::Arc<Guard>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !g.host_allowed(req.headers()) {
        return (StatusCode::MISDIRECTED_REQUEST, "Host does not name this server\n")
            .into_response();
    }
    let path = req.uri().path();
    if path == "/health" || (path == "/metrics" && !g.metrics_need_token) {
        return next.run(req).await;
    }
    let Some(caller) = bearer(req.headers()).and_then(|t| g.caller(t)) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required (see <data_dir>/admin.token)\n",
        )
            .into_response();
    };
    if !caller.scope.allows(path) {
        let why = format!("this token's scope ({}) does not cover {path}\n", caller.scope.as_str());
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn host_names_this_listener_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g =
            Guard::new("t", dir.path().join("tokens.toml"), 8025, &["mx.example".into()], false)
                .unwrap();
        for ok in
            ["127.0.0.1:8025", "localhost:8025", "[::1]:8025", "mx.example", "MX.example:8025"]
        {
            assert!(g.host_allowed(&headers(ok)), "{ok}");
        }
        for bad in ["evil.example:8025", "127.0.0.1:80", "localhost", "attacker.test"] {
            assert!(!g.host_allowed(&headers(bad)), "{bad}");
        }
        assert!(!g.host_allowed(&HeaderMap::new()));
    }

    #[test]
    fn tokens_have_scopes_and_only_hashes_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let admin = ensure_admin_token(&dir.path().join("admin.token")).unwrap();
        assert_eq!(ensure_admin_token(&dir.path().join("admin.token")).unwrap(), admin);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("admin.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let file = dir.path().join("tokens.toml");
        let g = Guard::new(&admin, file.clone(), 8025, &[], false).unwrap();
        let inject = add_token(&file, "campaigns", Scope::Inject, &[]).unwrap();
        let again = add_token(&file, "campaigns", Scope::Admin, &[]);
        assert!(matches!(again, Err(TokenError::Exists(_))));
        let bound = add_token(&file, "acme", Scope::Inject, &["acme".into()]).unwrap();
        assert!(add_token(&file, "bad", Scope::Inject, &["a b".into()]).is_err());
        assert!(
            !fs::read_to_string(&file).unwrap().contains(&inject),
            "the token itself was stored"
        );
        let scope = |t: &str| g.caller(t).map(|c| c.scope);
        assert_eq!(scope(&admin), Some(Scope::Admin));
        assert_eq!(scope(&inject), Some(Scope::Inject), "picked up without a restart");
        assert_eq!(g.caller(&bound).unwrap().tenants, ["acme"]);
        assert_eq!(scope("guess"), None);
        let metrics = add_token(&file, "prometheus", Scope::Metrics, &[]).unwrap();
        assert_eq!(scope(&metrics), Some(Scope::Metrics));
        assert!(Scope::Metrics.allows("/metrics") && !Scope::Metrics.allows("/api/queue"));
        let names: Vec<String> = list_tokens(&file).unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["campaigns", "acme", "prometheus"]);
        revoke_token(&file, "campaigns").unwrap();
        assert_eq!(scope(&inject), None, "a revoked token is refused at once");
        assert_eq!(scope(&metrics), Some(Scope::Metrics));
        assert!(matches!(revoke_token(&file, "campaigns"), Err(TokenError::NotFound(_))));
    }
}
