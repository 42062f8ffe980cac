//! Mail authentication over `mail-auth` (Stalwart's DKIM/SPF/DMARC/ARC library), kept behind
//! this thin module because its API changes between releases.
//!
//! - [`key`]: DKIM private keys: loading, generation, the DNS record that publishes them.
//! - [`sign`]: which keys sign a message (by its From domain) and the signing itself.
//! - [`verify`]: SPF, DKIM, ARC and DMARC of inbound mail, and the Authentication-Results field.

pub mod headers;
pub mod key;
pub mod sign;
pub mod spf;
pub mod verify;

pub use key::{DkimAlgorithm, DkimKey, KeyError};
pub use sign::{DkimSigner, SignError, Signed, SigningService};
