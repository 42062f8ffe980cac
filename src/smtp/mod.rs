//! The SMTP server: listeners and the per-connection driver around [`crate::proto::smtp::session`].
//!
//! This layer owns sockets, timeouts, connection limits and the hand-off to the spool; every
//! protocol decision is made by the sans-IO session.

pub mod admission;
pub mod conn;
pub mod listener;

use std::sync::Arc;
use std::time::Duration;

use crate::proto::smtp::session::SessionConfig;

/// What every connection of one listener shares.
pub struct ListenerContext {
    /// Listener name for metrics and logs.
    pub name: String,
    pub session: Arc<SessionConfig>,
    /// The one path to the spool.
    pub intake: Arc<crate::intake::Intake>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub limits: Arc<admission::ConnectionLimits>,
    pub budget: Arc<MemoryBudget>,
    /// Certificate for STARTTLS or implicit TLS (None: no TLS on this listener).
    pub tls: Option<Arc<crate::tls::ReloadableServer>>,
    /// TLS from the first byte (submissions, RFC 8314).
    pub implicit_tls: bool,
    /// Wait before the greeting; a client that talks first is refused.
    pub greet_pause: Duration,
    /// Bytes per second below which message data is cut off (0: off).
    pub min_data_rate: u64,
    pub auth: Arc<AuthContext>,
    /// Inbound SPF/DKIM/DMARC verification runs for this listener's mail (`smtp` listeners).
    pub verify: bool,
    /// PROXY protocol (`proxy_protocol`, `proxy_networks`).
    pub proxy: Option<Arc<crate::net::proxy::ProxyPolicy>>,
}

pub use crate::auth::AuthContext;
pub use crate::intake::budget::{Charge, MemoryBudget};
