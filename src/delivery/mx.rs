//! Where MX delivery to a domain connects: its mail exchangers in preference order (RFC 5321
//! 5.1), each host's addresses, the implicit MX, null MX (RFC 7505) and address literals.

use std::net::{IpAddr, SocketAddr};

use super::conn::Target;
use crate::delivery_error::DeliveryError;
use crate::dns::{DnsError, MxAnswer, Resolver};

/// `ip:port` candidates (with the MX host name, for TLS) for MX delivery to `domain`, most
/// preferred first.
pub async fn targets(
    dns: &dyn Resolver,
    domain: &str,
    port: u16,
) -> Result<Vec<Target>, DeliveryError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::MemoryResolver;

    fn dns() -> MemoryResolver {
        let mut d = MemoryResolver::default();
        let hosts = vec!["mx1.example.com".to_string(), "mx2.example.com".to_string()];
        d.mx.insert("example.com".into(), MxAnswer::Hosts(hosts));
        d.mx.insert("implicit.example".into(), MxAnswer::Implicit);
        d.mx.insert("null.example".into(), MxAnswer::NullMx);
        d.mx.insert("half.example".into(), MxAnswer::Hosts(vec!["gone.example".into()]));
        d.mx.insert("flaky.example".into(), MxAnswer::Hosts(vec!["slow.example".into()]));
        d.addresses.insert("mx1.example.com".into(), vec!["192.0.2.1".parse().unwrap()]);
        let two = vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
        d.addresses.insert("mx2.example.com".into(), two);
        d.addresses.insert("implicit.example".into(), vec!["192.0.2.9".parse().unwrap()]);
        d.servfail.push("slow.example".into());
        d
    }

    fn run(domain: &str) -> Result<Vec<(String, String)>, DeliveryError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = rt.block_on(targets(&dns(), domain, 25))?;
        Ok(r.into_iter().map(|t| (t.address, t.name)).collect())
    }

    fn pair(a: &str, n: &str) -> (String, String) {
        (a.to_string(), n.to_string())
    }

    #[test]
    fn every_address_of_every_exchanger_in_preference_order() {
        assert_eq!(
            run("example.com").unwrap(),
            [
                pair("192.0.2.1:25", "mx1.example.com"),
                pair("192.0.2.2:25", "mx2.example.com"),
                pair("[2001:db8::2]:25", "mx2.example.com"),
            ]
        );
    }

    #[test]
    fn no_mx_means_the_domain_itself_rfc5321_5_1() {
        assert_eq!(run("implicit.example").unwrap(), [pair("192.0.2.9:25", "implicit.example")]);
    }

    #[test]
    fn address_literals_need_no_dns() {
        assert_eq!(run("[192.0.2.7]").unwrap(), [pair("192.0.2.7:25", "192.0.2.7")]);
        assert_eq!(run("[ipv6:2001:db8::7]").unwrap(), [pair("[2001:db8::7]:25", "2001:db8::7")]);
        assert!(matches!(run("[nonsense]"), Err(DeliveryError::NoSuchDomain(_))));
    }

    #[test]
    fn failures_are_permanent_or_temporary_as_dns_says() {
        assert!(matches!(run("null.example"), Err(DeliveryError::NullMx(_))));
        assert!(matches!(run("nowhere.example"), Err(DeliveryError::NoSuchDomain(_))));
        assert!(matches!(run("half.example"), Err(DeliveryError::NoSuchDomain(_))));
        assert!(matches!(run("flaky.example"), Err(DeliveryError::DnsTemporary(_))));
    }
}
