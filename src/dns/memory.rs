//! A [`Resolver`] answering from tables: unit tests of code that resolves, without a server.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{BoxFuture, DnsError, MxAnswer, Resolver};

/// Names it has no entry for are NXDOMAIN; names in `servfail` fail temporarily.
#[derive(Debug, Default, Clone)]
pub struct MemoryResolver {
    pub mx: HashMap<String, MxAnswer>,
    pub addresses: HashMap<String, Vec<IpAddr>>,
    pub txt: HashMap<String, Vec<String>>,
    pub servfail: Vec<String>,
}

impl MemoryResolver {
    fn answer<T: Clone>(&self, table: &HashMap<String, T>, name: &str) -> Result<T, DnsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.servfail.contains(&name) {
            return Err(DnsError::Temporary(name, "SERVFAIL".into()));
        }
        table.get(&name).cloned().ok_or(DnsError::NoSuchDomain(name))
    }
}

impl Resolver for MemoryResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>> {
        let r = self.answer(&self.mx, domain);
        Box::pin(async move { r })
    }

    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        let r = match self.answer(&self.addresses, host) {
            Ok(v) if v.is_empty() => Err(DnsError::NoAddress(host.into())),
            r => r,
        };
        Box::pin(async move { r })
    }

    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>> {
        let r = self.answer(&self.txt, name);
        Box::pin(async move { r })
    }
}
