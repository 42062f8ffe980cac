//! Scheduling what the spool holds: when each recipient is due ([`schedule`]), when it expires,
//! and what an attempt's outcome does to it ([`outcome`]). The dispatcher that hands due
//! recipients to connections is `crate::delivery::dispatch`.

pub mod outcome;
pub mod schedule;
