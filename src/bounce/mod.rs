//! What happens after a delivery fails: the report to the sender ([`dsn`], RFC 3464) and the
//! category of the failure ([`classify`]), which the delivery log, the metrics and the
//! suppression list use.

pub mod classify;
pub mod dsn;
pub mod suppression;
pub mod unsubscribe;
pub mod verp;

pub use classify::{Category, Classifier};
pub use dsn::*;
