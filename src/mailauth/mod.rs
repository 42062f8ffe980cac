//! Mail authentication over `mail-auth` (Stalwart's DKIM/SPF/DMARC/ARC library), kept behind
//! this thin module because its API changes between releases.
//!
//! - [`key`]: DKIM private keys: loading, generation, the DNS record that publishes them.
//! - [`sign`]: which keys sign a message (by its From domain) and the signing itself.
//! - [`verify`]: SPF, DKIM, ARC and DMARC of inbound mail, and the Authentication-Results field.

pub mod headers;
pub mod key;
pub mod sign;
pub mod verify;

pub use key::{DkimAlgorithm, DkimKey, KeyError};
pub use sign::{DkimSigner, SignError, Signed, SigningService};

/// A DNS label as selectors use them: letters, digits, hyphens, 1–63 bytes, no edge hyphen.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
