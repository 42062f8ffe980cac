pub mod metrics;
pub mod proto;
pub mod spool;
