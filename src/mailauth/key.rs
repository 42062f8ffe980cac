//! DKIM private keys: loading a PEM file, generating a new key, and the DNS TXT record that
//! publishes the public half (RFC 6376 3.6.1; Ed25519: RFC 8463).

use std::path::Path;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::crypto::{Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

/// The signing algorithms sluice offers (`a=` tag). rsa-sha1 is not one of them (RFC 8301).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256", alias = "rsa")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256", alias = "ed25519")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The `a=` name, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` value of the key record.
    fn key_type(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

/// RFC 8301 3.2: signers must use RSA keys of at least 1024 bits; 2048 is what the large
/// receivers expect, and what sluice requires.
pub const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: not a PEM private key (PKCS#8, or PKCS#1 for RSA): {msg}")]
    Pem { path: String, msg: String },
    #[error("{path}: not a usable {algorithm} key: {msg}")]
    Key { path: String, algorithm: &'static str, msg: String },
    #[error("{path}: RSA key is shorter than {MIN_RSA_BITS} bits, the least DKIM keys need")]
    TooShort { path: String },
    #[error("RSA key size {0} is not one of 2048, 3072, 4096")]
    BadSize(usize),
    #[error("key generation failed")]
    Generate,
}

/// A loaded private key, ready to sign.
pub struct DkimKey {
    pub algorithm: DkimAlgorithm,
    pub(crate) signer: KeySigner,
    /// The `p=` value's bytes: SubjectPublicKeyInfo for RSA (what `openssl rsa -pubout` and
    /// every verifier take), the raw 32 bytes for Ed25519 (RFC 8463 4.2).
    public: Vec<u8>,
    /// RSA only: the PKCS#1 RSAPublicKey form, which some publish instead.
    public_pkcs1: Option<Vec<u8>>,
}

pub(crate) enum KeySigner {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

impl DkimKey {
    /// Reads a PEM private key and checks it is a key of `algorithm`.
    pub fn load(path: &Path, algorithm: DkimAlgorithm) -> Result<DkimKey, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|err| KeyError::Read { path: shown.clone(), err })?;
        DkimKey::from_pem(&pem, algorithm).map_err(|e| match e {
            KeyError::Pem { msg, .. } => KeyError::Pem { path: shown, msg },
            KeyError::Key { algorithm, msg, .. } => KeyError::Key { path: shown, algorithm, msg },
            KeyError::TooShort { .. } => KeyError::TooShort { path: shown },
            other => other,
        })
    }

    pub fn from_pem(pem: &[u8], algorithm: DkimAlgorithm) -> Result<DkimKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| KeyError::Pem { path: String::new(), msg: e.to_string() })?;
        let bad =
            |msg: String| KeyError::Key { path: String::new(), algorithm: algorithm.as_str(), msg };
        match algorithm {
            DkimAlgorithm::RsaSha256 => {
                let pair = match &der {
                    PrivateKeyDer::Pkcs1(k) => {
                        aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der())
                    }
                    PrivateKeyDer::Pkcs8(k) => {
                        aws_lc_rs::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der())
                    }
                    _ => return Err(bad("SEC1 (EC) keys cannot sign DKIM".into())),
                }
                .map_err(|e| match e.description_() {
                    // aws-lc refuses RSA keys under 2048 bits itself.
                    "TooSmall" => KeyError::TooShort { path: String::new() },
                    _ => bad(e.to_string()),
                })?;
                if pair.public_modulus_len() * 8 < MIN_RSA_BITS {
                    return Err(KeyError::TooShort { path: String::new() });
                }
                let spki: PublicKeyX509Der<'static> =
                    pair.public_key().as_der().map_err(|e| bad(e.to_string()))?;
                let signer = RsaKey::<Sha256>::from_key_der(der.clone_key())
                    .map_err(|e| bad(e.to_string()))?;
                Ok(DkimKey {
                    algorithm,
                    public: spki.as_ref().to_vec(),
                    public_pkcs1: Some(signer.public_key()),
                    signer: KeySigner::Rsa(signer),
                })
            }
            DkimAlgorithm::Ed25519Sha256 => {
                let PrivateKeyDer::Pkcs8(k) = &der else {
                    return Err(bad("Ed25519 keys must be PKCS#8 (BEGIN PRIVATE KEY)".into()));
                };
                // v1 documents (openssl genpkey) carry no public key; v2 ones are checked.
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der())
                    .map_err(|e| bad(e.to_string()))?;
                Ok(DkimKey {
                    algorithm,
                    public: key.public_key(),
                    public_pkcs1: None,
                    signer: KeySigner::Ed25519(key),
                })
            }
        }
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.algorithm.key_type(), B64.encode(&self.public))
    }

    /// Whether a published key record carries this key: `Ok` or what differs.
    pub fn check_record(&self, txt: &str) -> Result<(), String> {
        let tags = parse_tags(txt);
        let tag = |name: &str| tags.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str());
        if let Some(v) = tag("v")
            && v != "DKIM1"
        {
            return Err(format!("v={v}, not DKIM1"));
        }
        let k = tag("k").unwrap_or("rsa");
        if !k.eq_ignore_ascii_case(self.algorithm.key_type()) {
            return Err(format!("k={k}, but the key is {}", self.algorithm.key_type()));
        }
        let p = tag("p").ok_or("no p= tag")?;
        if p.is_empty() {
            return Err("p= is empty: the key is revoked (RFC 6376 3.6.1)".into());
        }
        let published = B64.decode(p).map_err(|e| format!("p= is not base64: {e}"))?;
        if published == self.public || self.public_pkcs1.as_ref() == Some(&published) {
            Ok(())
        } else {
            Err("p= is a different key".into())
        }
    }
}

/// `tag=value; ...` with all whitespace inside values removed (RFC 6376 3.2; base64 values
/// may be folded).
pub fn parse_tags(s: &str) -> Vec<(&str, String)> {
    s.split(';')
        .filter_map(|t| {
            let (k, v) = t.split_once('=')?;
            Some((k.trim(), v.chars().filter(|c| !c.is_whitespace()).collect()))
        })
        .collect()
}

/// A TXT value as zone-file strings: one string holds at most 255 bytes (RFC 1035 3.3.14), so
/// RSA records come in parts, which verifiers join (RFC 6376 3.6.2.2).
pub fn zone_strings(value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    if parts.len() == 1 { parts.concat() } else { format!("( {} )", parts.join(" ")) }
}

/// A new private key as PEM (PKCS#8, `BEGIN PRIVATE KEY`).
pub fn generate(algorithm: DkimAlgorithm, bits: usize) -> Result<String, KeyError> {
    let der: Vec<u8> = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            use aws_lc_rs::rsa::KeySize;
            let size = match bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                other => return Err(KeyError::BadSize(other)),
            };
            let pair = aws_lc_rs::rsa::KeyPair::generate(size).map_err(|_| KeyError::Generate)?;
            let der: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| KeyError::Generate)?;
            der.as_ref().to_vec()
        }
        DkimAlgorithm::Ed25519Sha256 => {
            Ed25519Key::generate_pkcs8().map_err(|_| KeyError::Generate)?
        }
    };
    let b64 = B64.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_match_their_record() {
        for (alg, bits) in [(DkimAlgorithm::Ed25519Sha256, 0), (DkimAlgorithm::RsaSha256, 2048)] {
            let pem = generate(alg, bits).unwrap();
            let key = DkimKey::from_pem(pem.as_bytes(), alg).unwrap();
            let record = key.dns_record();
            assert!(record.starts_with(&format!("v=DKIM1; k={}; p=", alg.key_type())));
            key.check_record(&record).unwrap();
            // Folded and spaced the way DNS tools print long records.
            let folded = record.replace("p=", "p= ").replacen('A', "A \t", 1);
            key.check_record(&folded).unwrap();
            let other = DkimKey::from_pem(generate(alg, bits).unwrap().as_bytes(), alg).unwrap();
            assert_eq!(other.check_record(&record).unwrap_err(), "p= is a different key");
            let revoked = format!("v=DKIM1; k={}; p=", alg.key_type());
            assert!(key.check_record(&revoked).unwrap_err().contains("revoked"));
        }
    }

    #[test]
    fn a_key_of_the_other_algorithm_is_refused() {
        let ed = generate(DkimAlgorithm::Ed25519Sha256, 0).unwrap();
        assert!(matches!(
            DkimKey::from_pem(ed.as_bytes(), DkimAlgorithm::RsaSha256),
            Err(KeyError::Key { .. })
        ));
        assert!(matches!(
            DkimKey::from_pem(b"junk", DkimAlgorithm::RsaSha256),
            Err(KeyError::Pem { .. })
        ));
        assert!(matches!(generate(DkimAlgorithm::RsaSha256, 1024), Err(KeyError::BadSize(1024))));
    }

    #[test]
    fn short_rsa_keys_are_refused() {
        // A 1024-bit key made the way an operator would (openssl is installed by .ci/run).
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"])
            .output()
            .expect("openssl (installed by .ci/run)");
        assert!(out.status.success());
        let err = DkimKey::from_pem(&out.stdout, DkimAlgorithm::RsaSha256).err();
        assert!(matches!(err, Some(KeyError::TooShort { .. })), "{err:?}");
    }
}
