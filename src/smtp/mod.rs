//! The SMTP server: listeners and the per-connection driver around [`crate::proto::smtp::session`].
//!
//! This layer owns sockets, timeouts, connection limits and the hand-off to the spool; every
//! protocol decision is made by the sans-IO session.

pub mod admission;
pub mod conn;
pub mod listener;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    pub limits: Arc<admission::ConnectionLimits>,
    pub budget: Arc<MemoryBudget>,
    /// Woken after each stored message, so delivery starts at once.
    pub stored: Arc<tokio::sync::Notify>,
    /// The delivery log (reception events).
    pub log: crate::delivery_log::DeliveryLog,
    /// Certificate for STARTTLS or implicit TLS (None: no TLS on this listener).
    pub tls: Option<Arc<crate::tls::ReloadableServer>>,
    /// TLS from the first byte (submissions, RFC 8314).
    pub implicit_tls: bool,
    /// Wait before the greeting; a client that talks first is refused.
    pub greet_pause: Duration,
    /// Bytes per second below which message data is cut off (0: off).
    pub min_data_rate: u64,
    pub auth: Arc<AuthContext>,
    /// DKIM keys; mail from trusted clients is signed before it is stored.
    pub dkim: Arc<crate::mailauth::SigningService>,
    /// Mail from a user whose From: domain is not among its `senders`: refused or unsigned.
    pub unaligned_from: crate::config::UnalignedFrom,
    /// SPF/DKIM/DMARC verification (None: off, or not an `smtp` listener).
    pub verify: Option<Arc<crate::mailauth::verify::Verifier>>,
    pub verify_scope: crate::mailauth::verify::Scope,
    /// Bounces to VERP addresses are processed here instead of queued.
    pub bounces: Option<Arc<crate::bounce::verp::BounceInbox>>,
}

pub use crate::auth::AuthContext;

/// One budget for message bytes buffered by all sessions (DESIGN.md invariant 5). Past it, the
/// session that asks for more has its message refused with 452 4.3.1.
pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget { used: AtomicUsize::new(0), limit })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What one connection has charged to the budget; returned when it ends.
pub struct Charge {
    budget: Arc<MemoryBudget>,
    charged: usize,
}

impl Charge {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Charge { budget, charged: 0 }
    }

    /// Sets this connection's charge to `held`; true when the budget is now exceeded.
    pub fn set(&mut self, held: usize) -> bool {
        let used = if held >= self.charged {
            self.budget.used.fetch_add(held - self.charged, Ordering::Relaxed)
                + (held - self.charged)
        } else {
            self.budget.used.fetch_sub(self.charged - held, Ordering::Relaxed)
                - (self.charged - held)
        };
        self.charged = held;
        crate::metrics::MEMORY_BUDGET_USED.set(used as i64);
        used > self.budget.limit
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let left = self.budget.used.fetch_sub(self.charged, Ordering::Relaxed) - self.charged;
        crate::metrics::MEMORY_BUDGET_USED.set(left as i64);
    }
}
