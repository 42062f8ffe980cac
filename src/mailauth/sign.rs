//! DKIM signing (RFC 6376, RFC 8463): which keys sign a message, and the signatures.
//!
//! A message is signed by every key of its From domain, or of the nearest parent domain that
//! has keys (so the signature is DMARC-aligned whenever a key exists), or else by the keys
//! marked `default`. Signatures sluice already made (same d= and s=) are not made twice.
//! Headers are relaxed/relaxed; From is over-signed so a second From cannot be added.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mail_auth::crypto::{Algorithm, SigningKey};
use mail_auth::dkim::{Canonicalization, DkimSigner as MaDkimSigner};
use mail_auth::headers::{HeaderWriter, Writable};
use mail_auth::signer::Ready;

use super::headers;
use super::key::{DkimAlgorithm, DkimKey, KeyError, KeySigner};
use crate::metrics;
use crate::units::opt_duration;
use serde::Deserialize;
use std::path::PathBuf;

/// Signed when present (RFC 6376 5.4.1's list, plus the bulk-sending headers receivers look
/// at). From is always signed, and once more than it occurs.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Feedback-ID",
];

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("DKIM signing with {selector}._domainkey.{domain} failed: {msg}")]
    Failed { domain: String, selector: String, msg: String },
    #[error("DKIM signing task failed: {0}")]
    Task(String),
}

/// One key with where it signs.
struct Identity {
    domain: String,
    selector: String,
    key: DkimKey,
    expire: Option<Duration>,
}

/// What signing added to a message.
#[derive(Debug, Default)]
pub struct Signed {
    /// `DKIM-Signature:` fields, each ending in CRLF, to go in front of the message.
    pub headers: String,
    /// (d=, algorithm) of each signature made.
    pub signatures: Vec<(String, DkimAlgorithm)>,
}

/// Every configured key, by signing domain.
#[derive(Default)]
pub struct DkimSigner {
    identities: Vec<Identity>,
    by_domain: HashMap<String, Vec<usize>>,
    defaults: Vec<usize>,
    /// Whether any key is RSA (a few hundred microseconds per signature, against tens for
    /// Ed25519).
    has_rsa: bool,
}

impl DkimSigner {
    /// Loads every key; the first unreadable or unsuitable one is the error.
    pub fn load(entries: &[DkimConfig]) -> Result<DkimSigner, KeyError> {
        let mut s = DkimSigner::default();
        for e in entries {
            let key = DkimKey::load(&e.key, e.algorithm)?;
            let domain = e.domain.trim_end_matches('.').to_ascii_lowercase();
            let i = s.identities.len();
            s.by_domain.entry(domain.clone()).or_default().push(i);
            if e.default {
                s.defaults.push(i);
            }
            s.has_rsa |= e.algorithm == DkimAlgorithm::RsaSha256;
            s.identities.push(Identity {
                domain,
                selector: e.selector.clone(),
                key,
                expire: e.expire,
            });
        }
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// The keys for mail from `from_domain`: its own, the nearest parent's, or the defaults.
    fn keys_for(&self, from_domain: Option<&str>) -> &[usize] {
        let mut d = from_domain.unwrap_or("");
        while !d.is_empty() {
            if let Some(keys) = self.by_domain.get(d) {
                return keys;
            }
            d = d.split_once('.').map_or("", |(_, parent)| parent);
        }
        &self.defaults
    }

    /// The DKIM-Signature fields for `message` (headers and body as received, CRLF lines).
    pub fn sign(&self, message: &[u8]) -> Result<Signed, SignError> {
        let mut out = Signed::default();
        let keys = self.keys_for(headers::from_domain(message).as_deref());
        if keys.is_empty() {
            return Ok(out);
        }
        let present: Vec<String> = {
            let names: Vec<&str> = headers::fields(message).map(|(n, _)| n).collect();
            let mut h: Vec<String> = SIGNED_HEADERS
                .iter()
                .filter(|s| **s == "From" || names.iter().any(|n| n.eq_ignore_ascii_case(s)))
                .map(|s| s.to_string())
                .collect();
            h.push("From".into()); // never present "again": signed as absent (over-signing)
            h
        };
        let ours = headers::existing_signatures(message);
        for &i in keys {
            let id = &self.identities[i];
            if ours.iter().any(|(d, s)| *d == id.domain && s.eq_ignore_ascii_case(&id.selector)) {
                continue;
            }
            let started = Instant::now();
            let fail = |e: mail_auth::Error| SignError::Failed {
                domain: id.domain.clone(),
                selector: id.selector.clone(),
                msg: e.to_string(),
            };
            let header = match &id.key.signer {
                KeySigner::Rsa(k) => signer(Lent(k), id, &present).sign(message),
                KeySigner::Ed25519(k) => signer(Lent(k), id, &present).sign(message),
            }
            .map_err(fail)?
            .to_header();
            let alg = id.key.algorithm;
            metrics::DKIM_SIGN_SECONDS
                .with_label_values(&[alg.as_str()])
                .observe(started.elapsed().as_secs_f64());
            out.headers.push_str(&header);
            out.signatures.push((id.domain.clone(), alg));
        }
        Ok(out)
    }
}

/// A key lent to one signing (mail-auth's signer owns its key; ours live for the process).
struct Lent<'k, K>(&'k K);

impl<K: SigningKey> SigningKey for Lent<'_, K> {
    type Hasher = K::Hasher;
    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }
    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

fn signer<K: SigningKey>(key: K, id: &Identity, h: &[String]) -> MaDkimSigner<K, Ready> {
    let s = MaDkimSigner::from_key(key)
        .domain(id.domain.clone())
        .selector(id.selector.clone())
        .headers(h.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    match id.expire {
        Some(x) => s.expiration(x),
        None => s,
    }
}

/// Messages larger than this are signed on the blocking pool whatever the algorithm: hashing
/// a 50 MB body takes tens of milliseconds, too long for an I/O thread.
const INLINE_LIMIT: usize = 256 << 10;

/// Signing as the intake path uses it: the keys can be replaced (SIGHUP), and RSA signing runs
/// on the blocking pool, a bounded number at a time, so it never stalls an I/O thread.
pub struct SigningService {
    current: RwLock<Arc<DkimSigner>>,
    entries: Vec<DkimConfig>,
    slots: tokio::sync::Semaphore,
}

impl SigningService {
    pub fn new(entries: Vec<DkimConfig>) -> Result<SigningService, KeyError> {
        let signer = DkimSigner::load(&entries)?;
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(SigningService {
            current: RwLock::new(Arc::new(signer)),
            entries,
            slots: tokio::sync::Semaphore::new(slots),
        })
    }

    /// Reads every key file again (rotated keys); on error the old keys stay in use.
    pub fn reload(&self) -> Result<usize, KeyError> {
        let signer = DkimSigner::load(&self.entries)?;
        let n = signer.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(signer);
        Ok(n)
    }

    /// The DKIM-Signature fields for `message`; empty when no key applies.
    pub async fn sign(&self, message: Bytes) -> Result<Signed, SignError> {
        let signer = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        if signer.is_empty() {
            return Ok(Signed::default());
        }
        let result = if signer.has_rsa || message.len() > INLINE_LIMIT {
            let _slot = self.slots.acquire().await.map_err(|e| SignError::Task(e.to_string()))?;
            tokio::task::spawn_blocking(move || signer.sign(&message))
                .await
                .map_err(|e| SignError::Task(e.to_string()))?
        } else {
            // Ed25519 on a message this size costs about what reading it did (40 us for 10 KB,
            // 180 us for 100 KB, benches/dkim.rs): a thread hand-off would cost more than it
            // saves. Larger bodies (the body hash grows with them) go to the pool too.
            signer.sign(&message)
        };
        match &result {
            Ok(signed) => {
                for (domain, alg) in &signed.signatures {
                    metrics::DKIM_SIGNATURES.with_label_values(&[domain, alg.as_str()]).inc();
                }
            }
            Err(_) => metrics::DKIM_SIGN_FAILURES.inc(),
        }
        result
    }
}

/// One DKIM signing key: mail whose From domain is `domain` (or a subdomain without a key of
/// its own) is signed with it at intake.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`); the public key is published at
    /// `<selector>._domainkey.<domain>`.
    pub domain: String,
    pub selector: String,
    /// PEM private key (PKCS#8, or PKCS#1 for RSA); `sluice dkim keygen` makes one.
    pub key: PathBuf,
    pub algorithm: crate::mailauth::key::DkimAlgorithm,
    /// Also sign mail whose From domain has no key of its own (not DMARC-aligned, but signed).
    #[serde(default)]
    pub default: bool,
    /// Signature lifetime (`x=` tag); absent = no expiry.
    #[serde(default, deserialize_with = "opt_duration")]
    pub expire: Option<Duration>,
}

/// `[signing]`: what happens to mail from a user with `senders` whose From: domain is not one
/// of them (signing it would give a DMARC-aligned signature for someone else's domain).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    #[serde(default)]
    pub unaligned_from: UnalignedFrom,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnalignedFrom {
    /// 550 5.7.1 at the end of DATA.
    #[default]
    Refuse,
    /// Accepted and sent without our signatures.
    Unsigned,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailauth::key::{generate, parse_tags};

    fn signer(dir: &std::path::Path, keys: &[(&str, &str, DkimAlgorithm, bool)]) -> DkimSigner {
        let entries: Vec<DkimConfig> = keys
            .iter()
            .map(|(domain, selector, algorithm, default)| {
                let key = dir.join(format!("{domain}.{selector}.pem"));
                let bits = if *algorithm == DkimAlgorithm::RsaSha256 { 2048 } else { 0 };
                std::fs::write(&key, generate(*algorithm, bits).unwrap()).unwrap();
                DkimConfig {
                    domain: domain.to_string(),
                    selector: selector.to_string(),
                    key,
                    algorithm: *algorithm,
                    default: *default,
                    expire: None,
                }
            })
            .collect();
        DkimSigner::load(&entries).unwrap()
    }

    fn tags(header: &str) -> Vec<(String, String)> {
        let value = header.split_once(':').unwrap().1;
        parse_tags(value).into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn tag(header: &str, name: &str) -> String {
        tags(header).into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap_or_default()
    }

    const ED: DkimAlgorithm = DkimAlgorithm::Ed25519Sha256;

    #[test]
    fn the_from_domain_or_its_nearest_parent_chooses_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(
            dir.path(),
            &[
                ("example.com", "a", ED, false),
                ("example.com", "b", DkimAlgorithm::RsaSha256, false),
                ("news.example.com", "n", ED, false),
                ("relay.example", "fallback", ED, true),
            ],
        );
        let sign = |from: &str| {
            let m = format!("From: <x@{from}>\r\nSubject: s\r\n\r\nbody\r\n");
            let signed = s.sign(m.as_bytes()).unwrap();
            signed.signatures.iter().map(|(d, a)| format!("{d}/{}", a.as_str())).collect::<Vec<_>>()
        };
        assert_eq!(sign("example.com"), ["example.com/ed25519-sha256", "example.com/rsa-sha256"]);
        assert_eq!(
            sign("Deep.Sub.EXAMPLE.com"),
            ["example.com/ed25519-sha256", "example.com/rsa-sha256"]
        );
        assert_eq!(sign("news.example.com"), ["news.example.com/ed25519-sha256"]);
        assert_eq!(sign("a.news.example.com"), ["news.example.com/ed25519-sha256"]);
        assert_eq!(sign("other.org"), ["relay.example/ed25519-sha256"]);
        assert_eq!(sign("com"), ["relay.example/ed25519-sha256"]);
    }

    #[test]
    fn without_a_default_key_foreign_mail_is_not_signed() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(dir.path(), &[("example.com", "a", ED, false)]);
        let signed = s.sign(b"From: x@example.org\r\n\r\nbody\r\n").unwrap();
        assert!(signed.headers.is_empty() && signed.signatures.is_empty());
        assert!(s.sign(b"Subject: no from\r\n\r\nbody\r\n").unwrap().signatures.is_empty());
    }

    #[test]
    fn signed_headers_are_the_present_ones_with_from_oversigned() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(dir.path(), &[("example.com", "a", ED, false)]);
        let m = b"From: x@example.com\r\nTo: y@example.org\r\nsubject: hi\r\nX-Mailer: z\r\n\
                  List-Unsubscribe: <https://u.example/1>\r\n\r\nbody\r\n";
        let header = s.sign(m).unwrap().headers;
        assert!(header.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"), "{header}");
        assert!(header.ends_with("\r\n") && !header.contains("\n\r\n"), "{header:?}");
        let mut h: Vec<String> =
            tag(&header, "h").split(':').map(|n| n.to_ascii_lowercase()).collect();
        assert_eq!(h.iter().filter(|n| *n == "from").count(), 2, "{h:?}");
        h.sort();
        h.dedup();
        assert_eq!(h, ["from", "list-unsubscribe", "subject", "to"]);
        assert_eq!(tag(&header, "c"), "relaxed/relaxed");
        assert_eq!(tag(&header, "d"), "example.com");
        assert_eq!(tag(&header, "s"), "a");
        assert_eq!(tag(&header, "x"), "", "no expiry unless configured");
    }

    #[test]
    fn a_message_we_signed_already_is_not_signed_again() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            signer(dir.path(), &[("example.com", "a", ED, false), ("example.com", "b", ED, false)]);
        let m = b"From: x@example.com\r\n\r\nbody\r\n";
        let first = s.sign(m).unwrap();
        assert_eq!(first.signatures.len(), 2);
        // The same message coming back (e.g. relayed through us twice) with one signature.
        let one = first.headers.split("DKIM-Signature").nth(1).unwrap();
        let again = format!("DKIM-Signature{one}From: x@example.com\r\n\r\nbody\r\n");
        let second = s.sign(again.as_bytes()).unwrap();
        assert_eq!(second.signatures.len(), 1, "only the missing selector signs");
        assert_eq!(tag(&second.headers, "s"), "b");
    }

    #[test]
    fn expiry_sets_x() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, generate(ED, 0).unwrap()).unwrap();
        let s = DkimSigner::load(&[DkimConfig {
            domain: "Example.com.".into(),
            selector: "a".into(),
            key,
            algorithm: ED,
            default: false,
            expire: Some(Duration::from_secs(3600)),
        }])
        .unwrap();
        let header = s.sign(b"From: x@example.com\r\n\r\nbody\r\n").unwrap().headers;
        let t: u64 = tag(&header, "t").parse().unwrap();
        let x: u64 = tag(&header, "x").parse().unwrap();
        assert_eq!(x - t, 3600);
        assert_eq!(tag(&header, "d"), "example.com");
    }
}
