//! Scheduling what the spool holds: when each recipient is due ([`schedule`]), when it expires,
//! where a leased message's due recipients go and from which source ([`plan`]), which ready
//! work of a destination goes next, fairly between tenants ([`ready`]), and what an
//! attempt's outcome does to it ([`outcome`]). The dispatcher that hands due
//! recipients to connections is `crate::delivery::dispatch`.

pub mod outcome;
pub mod plan;
pub mod ready;
pub mod schedule;
