//! Traffic shaping: the configured limits per destination ([`limits`]), and the automation
//! that lowers them when a provider's replies say so and brings them back gradually
//! ([`automation`]).

pub mod automation;
pub mod breaker;
pub mod limits;
