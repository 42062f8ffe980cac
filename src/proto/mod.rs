//! Sans-IO protocol cores: bytes in, events and replies out.
//!
//! Nothing in here touches a socket, a clock or tokio, so every state machine can be unit-tested,
//! fuzzed and benchmarked on its own. The I/O drivers live in [`crate::smtp`].

pub mod pop3;
pub mod secret;
pub mod smtp;
