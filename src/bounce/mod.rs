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

/// Every category in the bounce and deferral counters from the start, at zero (called with
/// [`crate::metrics::init_labels`]; here so that metrics does not depend on this module).
pub fn init_metric_labels() {
    for c in Category::ALL {
        crate::metrics::BOUNCES.with_label_values(&[c.as_str()]);
        crate::metrics::DEFERRALS.with_label_values(&[c.as_str()]);
    }
}
