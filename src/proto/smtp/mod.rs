//! SMTP (RFC 5321) and its service extensions, as a sans-IO core.
//!
//! Layers, from the wire up:
//! - [`command`]: one command line -> [`command::Command`] (ABNF of RFC 5321 4.1 and the extension
//!   parameters of RFC 1870, 6152, 6531, 3030, 3461);
//! - [`data`]: the DATA receiver (end detection, dot-unstuffing in place, bare CR/LF refusal);
//! - [`reply`]: replies with enhanced status codes (RFC 3463), encoded once, in one place;
//! - [`session`]: the server state machine that ties them together.
//!
//! It does not do TLS, AUTH or delivery; those are separate layers.

pub mod address;
pub mod client;
pub mod command;
pub mod content;
pub mod data;
pub mod message;
pub mod reply;
pub mod sasl;
pub mod session;

pub use reply::Reply;
