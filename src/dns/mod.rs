//! DNS: MX lookup (RFC 5321 5.1, null MX RFC 7505), host addresses and TXT records behind one
//! [`Resolver`] trait, so delivery and policy code can be unit-tested on [`MemoryResolver`]
//! while the server runs on [`HickoryResolver`].

mod hickory;
mod memory;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub use hickory::{HickoryResolver, resolver_config, resolver_options};
pub use memory::MemoryResolver;

/// A lookup in flight (object-safe, so the dispatcher holds an `Arc<dyn Resolver>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The lookups sluice makes. Names are given without the trailing dot.
pub trait Resolver: Send + Sync {
    /// MX hosts of `domain`, most preferred first.
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>>;
    /// IPv4 and IPv6 addresses of `host`.
    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>>;
    /// TXT records at `name`, each with its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2).
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>>;
}

/// What the MX lookup of a domain says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// Mail exchangers, sorted by preference (equal preferences in random order).
    Hosts(Vec<String>),
    /// "0 ." (RFC 7505): the domain accepts no mail.
    NullMx,
    /// The domain exists without MX: its own A/AAAA is the implicit MX (RFC 5321 5.1).
    Implicit,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The domain does not exist (NXDOMAIN): a permanent failure.
    #[error("domain {0} does not exist")]
    NoSuchDomain(String),
    /// The name exists but has no address records.
    #[error("{0} has no address records")]
    NoAddress(String),
    /// SERVFAIL, timeouts, unreachable servers: try again later.
    #[error("DNS lookup for {0} failed: {1}")]
    Temporary(String, String),
}
