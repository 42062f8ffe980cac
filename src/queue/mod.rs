//! Scheduling what the spool holds: when each recipient is due ([`schedule`]), when it expires,
//! which ready work of a destination goes next, fairly between tenants ([`ready`]), and what an
//! attempt's outcome does to it ([`outcome`]). The dispatcher that hands due
//! recipients to connections is `crate::delivery::dispatch`.

pub mod outcome;
pub mod ready;
pub mod schedule;
