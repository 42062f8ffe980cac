//! Outbound delivery: where a recipient goes ([`route`]: smart host or MX, with its TLS policy
//! and AUTH), the tokio driver around the sans-IO SMTP client ([`conn`]: STARTTLS, AUTH,
//! pipelining, BDAT), per-destination limits ([`shaping`]) and what an outcome means for the
//! recipient ([`error`]). MX lookup is in `crate::dns`; dispatch, connection reuse and retries
//! in `crate::queue`; DSNs in `crate::bounce`.

pub mod conn;
pub mod error;
pub mod route;
pub mod shaping;
