//! The [`Resolver`] sluice runs with: hickory-resolver with its TTL-honouring cache, on
//! `[dns] nameservers`, or the system configuration when none are given. Integration tests
//! point it at their own DNS server on loopback.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::{BoxFuture, DnsError, MxAnswer, Resolver};

pub struct HickoryResolver {
    resolver: TokioResolver,
}

/// `[dns] nameservers` (`ip:port`, UDP and TCP) as a resolver configuration; delivery and
/// mail authentication both resolve through it.
pub fn resolver_config(nameservers: &[SocketAddr]) -> ResolverConfig {
    let servers = nameservers
        .iter()
        .map(|ns| {
            let mut c = NameServerConfig::udp_and_tcp(ns.ip());
            for conn in &mut c.connections {
                conn.port = ns.port();
            }
            c
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

/// Timeouts and retries for every lookup sluice makes.
pub fn resolver_options() -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.timeout = std::time::Duration::from_secs(5);
    opts.attempts = 2;
    // Names are always fully qualified here; never append search domains.
    opts.ndots = 0;
    opts
}

impl HickoryResolver {
    /// `nameservers` empty = the system resolver configuration (/etc/resolv.conf).
    pub fn new(nameservers: &[SocketAddr]) -> Result<HickoryResolver, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| format!("reading the system DNS configuration: {e}"))?
        } else {
            TokioResolver::builder_with_config(resolver_config(nameservers), provider)
        };
        *builder.options_mut() = resolver_options();
        Ok(HickoryResolver { resolver: builder.build().map_err(|e| e.to_string())? })
    }

    async fn mx_uncounted(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let lookup = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(l) => l,
            Err(e) if e.is_nx_domain() => return Err(DnsError::NoSuchDomain(domain.into())),
            Err(e) if e.is_no_records_found() => return Ok(MxAnswer::Implicit),
            Err(e) => return Err(DnsError::Temporary(domain.into(), e.to_string())),
        };
        let mut mx: Vec<(u16, u64, String)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((m.preference, rand_u64(), m.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        if mx.is_empty() {
            return Ok(MxAnswer::Implicit);
        }
        if mx.len() == 1 && mx[0].2 == "." {
            return Ok(MxAnswer::NullMx);
        }
        // Sort by preference; the random key spreads load over equal preferences (RFC 5321 5.1).
        mx.sort();
        Ok(MxAnswer::Hosts(
            mx.into_iter()
                .filter(|m| m.2 != ".")
                .map(|m| m.2.trim_end_matches('.').to_string())
                .collect(),
        ))
    }

    async fn addresses_uncounted(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(ips) => {
                let v: Vec<IpAddr> = ips.iter().collect();
                if v.is_empty() { Err(DnsError::NoAddress(host.into())) } else { Ok(v) }
            }
            Err(e) if e.is_nx_domain() => Err(DnsError::NoSuchDomain(host.into())),
            Err(e) if e.is_no_records_found() => Err(DnsError::NoAddress(host.into())),
            Err(e) => Err(DnsError::Temporary(host.into(), e.to_string())),
        }
    }
}

impl HickoryResolver {
    async fn txt_uncounted(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() => Err(DnsError::NoSuchDomain(name.into())),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(DnsError::Temporary(name.into(), e.to_string())),
        }
    }
}

impl Resolver for HickoryResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>> {
        Box::pin(counted("mx", self.mx_uncounted(domain)))
    }

    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(counted("address", self.addresses_uncounted(host)))
    }

    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>> {
        Box::pin(counted("txt", self.txt_uncounted(name)))
    }
}

/// A cheap random number (equal-preference shuffling needs no cryptographic quality).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

/// Times one lookup into `sluice_dns_*`.
async fn counted<T>(
    kind: &str,
    lookup: impl std::future::Future<Output = Result<T, DnsError>>,
) -> Result<T, DnsError> {
    let started = std::time::Instant::now();
    let r = lookup.await;
    crate::metrics::DNS_SECONDS.observe(started.elapsed().as_secs_f64());
    let result = match &r {
        Ok(_) => "ok",
        Err(DnsError::NoSuchDomain(_)) => "nxdomain",
        Err(DnsError::NoAddress(_)) => "nodata",
        Err(DnsError::Temporary(..)) => "error",
    };
    crate::metrics::DNS_LOOKUPS.with_label_values(&[kind, result]).inc();
    r
}
