//! Routes: per recipient domain, the first matching `[[route]]` decides the next hop (a smart
//! host) or MX delivery. Patterns: an exact domain, `*.example.org` (subdomains only) or `*`.

use crate::config::{RouteConfig, TlsMode};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// `host:port` of a relay.
    SmartHost { address: String, tls: TlsMode },
    /// The recipient domain's MX hosts.
    Mx,
}

#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<RouteConfig>,
}

impl Routes {
    pub fn new(routes: Vec<RouteConfig>) -> Self {
        Routes { routes }
    }

    /// The next hop for a recipient domain (case-insensitive, trailing dot ignored).
    pub fn next_hop(&self, domain: &str) -> NextHop {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        for r in &self.routes {
            if r.domains.iter().any(|p| matches(p, &domain)) {
                return match &r.smarthost {
                    Some(a) => NextHop::SmartHost { address: a.clone(), tls: r.tls },
                    None => NextHop::Mx,
                };
            }
        }
        NextHop::Mx
    }
}

fn matches(pattern: &str, domain: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    if p == "*" {
        return true;
    }
    match p.strip_prefix("*.") {
        Some(parent) => domain.len() > parent.len() + 1 && domain.ends_with(&format!(".{parent}")),
        None => p == domain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domains: &[&str], host: Option<&str>) -> RouteConfig {
        RouteConfig {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            smarthost: host.map(str::to_string),
            tls: TlsMode::Opportunistic,
        }
    }

    #[test]
    fn first_match_wins() {
        let routes = Routes::new(vec![
            route(&["example.com"], Some("a:25")),
            route(&["*.example.org"], None),
            route(&["*"], Some("b:25")),
        ]);
        let host = |a: &str| NextHop::SmartHost { address: a.into(), tls: TlsMode::Opportunistic };
        assert_eq!(routes.next_hop("Example.COM."), host("a:25"));
        assert_eq!(routes.next_hop("mx.example.org"), NextHop::Mx);
        assert_eq!(routes.next_hop("example.org"), host("b:25"), "*.x matches subdomains only");
        assert_eq!(routes.next_hop("other.net"), host("b:25"));
        assert_eq!(Routes::default().next_hop("x.y"), NextHop::Mx);
    }
}
