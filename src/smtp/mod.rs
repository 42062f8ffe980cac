//! The SMTP server: listeners and the per-connection driver around [`crate::proto::smtp::session`].
//!
//! This layer owns sockets, timeouts, connection limits and the hand-off to the spool; every
//! protocol decision is made by the sans-IO session.

pub mod conn;
pub mod listener;

use std::sync::Arc;
use std::time::Duration;

use crate::proto::smtp::session::SessionConfig;
use crate::spool::Spool;

/// What every connection of one listener shares.
pub struct ListenerContext {
    /// Listener name for metrics and logs.
    pub name: String,
    pub session: Arc<SessionConfig>,
    pub spool: Arc<dyn Spool>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub limits: Arc<listener::ConnectionLimits>,
}
