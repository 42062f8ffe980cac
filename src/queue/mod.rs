//! Scheduling what the spool holds: when each recipient is due, when it expires, and the
//! dispatcher that hands due recipients to [`crate::delivery`].

pub mod manager;
pub mod outcome;
pub mod schedule;
