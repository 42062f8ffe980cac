//! Where MX delivery to a domain connects: its mail exchangers in preference order (RFC 5321
//! 5.1), each host's addresses, the implicit MX, null MX (RFC 7505) and address literals.

use std::net::{IpAddr, SocketAddr};

use super::conn::Target;
use super::error::DeliveryError;
use crate::dns::{Dns, DnsError, MxAnswer};

/// `ip:port` candidates (with the MX host name, for TLS) for MX delivery to `domain`, most
/// preferred first.
pub async fn targets(dns: &Dns, domain: &str, port: u16) -> Result<Vec<Target>, DeliveryError> {
    let target = |ip: IpAddr, name: &str| Target {
        address: SocketAddr::new(ip, port).to_string(),
        name: name.trim_end_matches('.').to_string(),
    };
    // Address literals ([192.0.2.1], [IPv6:2001:db8::1]) need no DNS.
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip: IpAddr =
            lit.strip_prefix("ipv6:").unwrap_or(lit).parse().map_err(|_| {
                DeliveryError::NoSuchDomain(format!("bad address literal {domain}"))
            })?;
        return Ok(vec![target(ip, &ip.to_string())]);
    }
    let dns_err = |e: DnsError| match e {
        DnsError::NoSuchDomain(_) => DeliveryError::NoSuchDomain(e.to_string()),
        DnsError::NoAddress(_) => DeliveryError::NoSuchDomain(e.to_string()),
        DnsError::Temporary(..) => DeliveryError::DnsTemporary(e.to_string()),
    };
    let hosts = match dns.mx(domain).await.map_err(dns_err)? {
        MxAnswer::NullMx => return Err(DeliveryError::NullMx(domain.to_string())),
        MxAnswer::Implicit => vec![domain.to_string()],
        MxAnswer::Hosts(h) => h,
    };
    let mut out = Vec::new();
    let mut first_err = None;
    for host in &hosts {
        match dns.addresses(host).await {
            Ok(ips) => out.extend(ips.into_iter().map(|ip| target(ip, host))),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (out.is_empty(), first_err) {
        (true, Some(e)) => Err(dns_err(e)),
        (true, None) => Err(DeliveryError::NoSuchDomain(format!("{domain}: no mail exchanger"))),
        (false, _) => Ok(out),
    }
}
