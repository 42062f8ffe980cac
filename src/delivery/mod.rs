//! Outbound delivery: where a recipient goes ([`route`]), the tokio driver around the sans-IO
//! SMTP client ([`conn`]), and what an outcome means for the recipient ([`error`]).
//!
//! Not yet here (tracked in the delivery issue): MX resolution, TLS, AUTH to smart hosts,
//! connection reuse and shaping, DSN bounces.

pub mod conn;
pub mod error;
pub mod route;
pub mod shaping;
