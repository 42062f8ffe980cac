//! One-click unsubscribe (RFC 8058): per-recipient signed tokens in `List-Unsubscribe`, and the
//! HTTPS endpoint that turns a POST of one into a suppression entry.
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(key, payload)[..16])` with payload
//! `1 \0 tenant \0 address`: it names who to unsubscribe, and nobody without the key can make one
//! for another address. The key is 32 random bytes in `<data_dir>/unsubscribe.key` (mode 0600),
//! made on first use.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::hmac;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::suppression::{NewEntry, Reason, Suppressions};

/// Bytes of the HMAC kept in a token (128 bits).
const TAG_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum UnsubscribeError {
    #[error("unsubscribe key {path}: {error}")]
    Key { path: String, error: String },
}

/// Mints and checks tokens.
pub struct Tokens {
    key: hmac::Key,
}

impl Tokens {
    /// The key in `path`, made if the file does not exist ([`load_or_create_key`]).
    pub fn load_or_create(path: &Path) -> Result<Tokens, UnsubscribeError> {
        Ok(Tokens::from_key(&load_or_create_key(path)?))
    }

    pub fn from_key(key: &[u8]) -> Tokens {
        Tokens { key: hmac::Key::new(hmac::HMAC_SHA256, key) }
    }

    pub fn mint(&self, tenant: Option<&str>, address: &str) -> String {
        let payload = format!("1\0{}\0{}", tenant.unwrap_or(""), address.to_lowercase());
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(&tag.as_ref()[..TAG_BYTES])
        )
    }

    /// The (tenant, address) a genuine token names; None for anything else.
    pub fn verify(&self, token: &str) -> Option<(Option<String>, String)> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let want = hmac::sign(&self.key, &payload);
        // Constant time: a forger learns nothing from how long a refusal takes.
        if tag.len() != TAG_BYTES
            || aws_lc_rs::constant_time::verify_slices_are_equal(&want.as_ref()[..TAG_BYTES], &tag)
                .is_err()
        {
            return None;
        }
        let text = String::from_utf8(payload).ok()?;
        let mut parts = text.splitn(3, '\0');
        if parts.next()? != "1" {
            return None;
        }
        let tenant = parts.next()?;
        let address = parts.next()?;
        Some(((!tenant.is_empty()).then(|| tenant.to_string()), address.to_string()))
    }
}

/// The secret in `path` (hex), made (32 random bytes, mode 0600) if the file does not exist.
/// Unsubscribe tokens and VERP tags are keyed from it.
pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>, UnsubscribeError> {
    let err = |e: &dyn std::fmt::Display| UnsubscribeError::Key {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    if !path.exists() {
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).map_err(|e| err(&e))?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        crate::secret_file::create_new(path, format!("{hex}\n").as_bytes()).map_err(|e| err(&e))?;
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(&e))?;
    let hex = text.trim();
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    match bytes {
        Some(b) if b.len() >= 32 => Ok(b),
        _ => Err(err(&"not 32 or more bytes of hex")),
    }
}

/// What the injector needs to add the header fields.
pub struct Links {
    pub tokens: Arc<Tokens>,
    /// Base URL; the token is appended as one more path segment.
    pub url: String,
    pub mailto: Option<String>,
}

impl Links {
    /// `List-Unsubscribe` (HTTPS and, if configured, mailto) and `List-Unsubscribe-Post`
    /// (RFC 8058 3.1), CRLF-terminated and folded, for `address`.
    pub fn header_fields(&self, tenant: Option<&str>, address: &str) -> String {
        let token = self.tokens.mint(tenant, address);
        let mut v = format!("List-Unsubscribe: <{}/{token}>", self.url.trim_end_matches('/'));
        if let Some(m) = &self.mailto {
            v.push_str(&format!(",\r\n <mailto:{m}?subject=unsubscribe%20{token}>"));
        }
        v.push_str("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
        v
    }
}

#[derive(Clone)]
struct Endpoint {
    tokens: Arc<Tokens>,
    list: Arc<Suppressions>,
}

/// `GET /unsubscribe/{token}`: a page with a button (RFC 8058 3.2: a GET, which mail scanners
/// make, must not unsubscribe). `POST /unsubscribe/{token}`: the one-click unsubscribe.
pub fn router(tokens: Arc<Tokens>, list: Arc<Suppressions>) -> Router {
    Router::new()
        .route("/unsubscribe/{token}", get(page).post(unsubscribe))
        .with_state(Endpoint { tokens, list })
}

fn html(status: StatusCode, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head><body>{body}</body></html>\n"
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn page(State(e): State<Endpoint>, UrlPath(token): UrlPath<String>) -> Response {
    match e.tokens.verify(&token) {
        Some((_, address)) => html(
            StatusCode::OK,
            &format!(
                "<p>Unsubscribe {} from these mailings?</p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
                escape(&address)
            ),
        ),
        None => html(StatusCode::FORBIDDEN, "<p>This unsubscribe link is not valid.</p>"),
    }
}

async fn unsubscribe(State(e): State<Endpoint>, UrlPath(token): UrlPath<String>) -> Response {
    let Some((tenant, address)) = e.tokens.verify(&token) else {
        return html(StatusCode::FORBIDDEN, "<p>This unsubscribe link is not valid.</p>");
    };
    let entry = NewEntry {
        address: address.clone(),
        tenant,
        reason: Reason::Unsubscribe,
        detail: Some("one-click (RFC 8058)".into()),
    };
    let list = e.list.clone();
    match tokio::task::spawn_blocking(move || list.add(&[entry])).await {
        Ok(Ok(_)) => {
            tracing::info!(%address, "unsubscribed (one-click)");
            html(StatusCode::OK, &format!("<p>{} is unsubscribed.</p>", escape(&address)))
        }
        Ok(Err(err)) => {
            tracing::error!(%address, error = %err, "unsubscribe not recorded");
            html(StatusCode::SERVICE_UNAVAILABLE, "<p>Please try again later.</p>")
        }
        Err(_) => html(StatusCode::SERVICE_UNAVAILABLE, "<p>Please try again later.</p>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_recipient_and_cannot_be_forged() {
        let t = Tokens::from_key(&[7u8; 32]);
        let tok = t.mint(Some("acme"), "Ann@Example.org");
        assert_eq!(t.verify(&tok), Some((Some("acme".into()), "ann@example.org".into())));
        assert_eq!(t.verify(&t.mint(None, "b@example.org")), Some((None, "b@example.org".into())));
        // Another address with this token's tag, a flipped tag, another key: all refused.
        let (_, tag) = tok.split_once('.').unwrap();
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode("1\0acme\0boss@example.org"));
        assert_eq!(t.verify(&forged), None);
        let mut bad = tok.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(t.verify(std::str::from_utf8(&bad).unwrap()), None);
        assert_eq!(Tokens::from_key(&[8u8; 32]).verify(&tok), None);
        for junk in ["", ".", "abc", "a.b", "%%%.%%%"] {
            assert_eq!(t.verify(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_key_file_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unsubscribe.key");
        let a = Tokens::load_or_create(&path).unwrap().mint(None, "x@example.org");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = Tokens::load_or_create(&path).unwrap();
        assert!(again.verify(&a).is_some(), "the same key after a restart");
    }

    #[test]
    fn header_fields_are_rfc8058() {
        let links = Links {
            tokens: Arc::new(Tokens::from_key(&[1u8; 32])),
            url: "https://unsub.example.com/unsubscribe/".into(),
            mailto: Some("unsub@example.com".into()),
        };
        let h = links.header_fields(None, "a@example.org");
        assert!(h.starts_with("List-Unsubscribe: <https://unsub.example.com/unsubscribe/"), "{h}");
        assert!(h.contains(">,\r\n <mailto:unsub@example.com?subject=unsubscribe%20"), "{h}");
        assert!(h.ends_with("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{h}");
        assert!(h.lines().all(|l| l.len() <= 998));
    }
}
