//! Routes: per recipient domain, the first matching `[[route]]` decides the next hop (a smart
//! host) or MX delivery. Patterns: an exact domain, `*.example.org` (subdomains only) or `*`.
//! Each route also carries its session policy (STARTTLS mode, AUTH credentials).

use std::path::Path;

use super::conn::HopPolicy;
use crate::domain::pattern_matches as matches;
use crate::proto::smtp::client::{Credentials, SessionPolicy, TlsPolicy};
use crate::tls::TlsError;
use serde::Deserialize;
use std::path::PathBuf;

pub use crate::queue::plan::Via;

#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<(RouteConfig, HopPolicy)>,
    /// For MX delivery without a matching route.
    mx_default: HopPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route[{0}]: {1}")]
    Tls(usize, TlsError),
    #[error("route[{0}].auth.password_file {1}: {2}")]
    Password(usize, String, std::io::Error),
    #[error("delivery.tls: {0}")]
    Default(TlsError),
}

fn hop_policy(
    tls_policy: TlsPolicy,
    ca: Option<&Path>,
    auth: Option<Credentials>,
) -> Result<HopPolicy, TlsError> {
    let tls = match tls_policy {
        TlsPolicy::Required => crate::tls::verifying_client(ca)?,
        TlsPolicy::Opportunistic | TlsPolicy::Disabled => crate::tls::opportunistic_client(),
    };
    Ok(HopPolicy { session: SessionPolicy { tls: tls_policy, auth }, tls })
}

impl Routes {
    /// Builds the routes, reading password and CA files now so a mistake shows at start.
    pub fn new(routes: Vec<RouteConfig>, mx_tls: TlsPolicy) -> Result<Self, RouteError> {
        let mut out = Vec::with_capacity(routes.len());
        for (i, r) in routes.into_iter().enumerate() {
            let auth = match &r.auth {
                None => None,
                Some(a) => {
                    let pw = std::fs::read_to_string(&a.password_file).map_err(|e| {
                        RouteError::Password(i, a.password_file.display().to_string(), e)
                    })?;
                    crate::tls::warn_if_exposed(&a.password_file);
                    Some(Credentials {
                        username: a.username.clone(),
                        password: pw.trim_end_matches(['\r', '\n']).into(),
                    })
                }
            };
            let policy =
                hop_policy(r.tls, r.ca_file.as_deref(), auth).map_err(|e| RouteError::Tls(i, e))?;
            out.push((r, policy));
        }
        let mx_default = hop_policy(mx_tls, None, None).map_err(RouteError::Default)?;
        Ok(Routes { routes: out, mx_default })
    }

    /// The session policy for a smart host (the first route naming it).
    pub fn smarthost_policy(&self, address: &str) -> HopPolicy {
        self.routes
            .iter()
            .find(|(r, _)| r.smarthost.as_deref() == Some(address))
            .map_or_else(|| self.mx_default.clone(), |(_, p)| p.clone())
    }

    /// The session policy for MX delivery to `domain`: its route's, else `[delivery] tls`.
    pub fn mx_policy(&self, domain: &str) -> HopPolicy {
        self.route(domain).map_or_else(|| self.mx_default.clone(), |(_, p)| p.clone())
    }

    fn route(&self, domain: &str) -> Option<&(RouteConfig, HopPolicy)> {
        let domain = crate::domain::normalize(domain);
        self.routes.iter().find(|(r, _)| r.domains.iter().any(|p| matches(p, &domain)))
    }

    /// Whether a route matches every domain (`*`).
    pub fn catches_all(&self) -> bool {
        self.routes.iter().any(|(r, _)| r.domains.iter().any(|p| p == "*"))
    }

    /// Whether a route matches `domain` (its mail is not rolled up with other domains').
    pub fn is_routed(&self, domain: &str) -> bool {
        self.route(domain).is_some()
    }

    /// The egress pool of the route for `domain`, if it names one.
    pub fn pool(&self, domain: &str) -> Option<&str> {
        self.route(domain).and_then(|(r, _)| r.pool.as_deref())
    }

    /// Where mail for a recipient domain goes (case-insensitive, trailing dot ignored).
    pub fn via(&self, domain: &str) -> Via {
        match self.route(domain).and_then(|(r, _)| r.smarthost.as_ref()) {
            Some(a) => Via::SmartHost(a.clone()),
            None => Via::Mx(crate::domain::normalize(domain)),
        }
    }
}

/// SMTP AUTH credentials for a smart host; the password lives in its own file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact domains, `*.example.org` (subdomains) or `*`.
    pub domains: Vec<String>,
    /// `host:port` of a relay; absent = MX delivery.
    pub smarthost: Option<String>,
    #[serde(default = "default_tls_mode")]
    pub tls: TlsPolicy,
    /// Credentials for the smart host (sent only over TLS).
    pub auth: Option<RouteAuth>,
    /// Extra trusted CA certificates (PEM) for `tls = "required"`, e.g. a private CA.
    pub ca_file: Option<PathBuf>,
    /// The egress pool for mail on this route (unless its injection or tenant names one).
    pub pool: Option<String>,
}

pub fn default_tls_mode() -> TlsPolicy {
    TlsPolicy::Opportunistic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domains: &[&str], host: Option<&str>) -> RouteConfig {
        RouteConfig {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            smarthost: host.map(str::to_string),
            tls: TlsPolicy::Opportunistic,
            auth: None,
            ca_file: None,
            pool: None,
        }
    }

    #[test]
    fn first_match_wins() {
        let mut org = route(&["*.example.org"], None);
        org.tls = TlsPolicy::Disabled;
        let routes = Routes::new(
            vec![route(&["example.com"], Some("a:25")), org, route(&["*"], Some("b:25"))],
            TlsPolicy::Opportunistic,
        )
        .unwrap();
        let host = |a: &str| Via::SmartHost(a.into());
        assert_eq!(routes.via("Example.COM."), host("a:25"));
        assert_eq!(routes.via("MX.example.org."), Via::Mx("mx.example.org".into()));
        assert_eq!(routes.via("example.org"), host("b:25"), "*.x matches subdomains only");
        assert_eq!(routes.via("other.net"), host("b:25"));
        assert_eq!(Routes::default().via("x.y"), Via::Mx("x.y".into()));
        assert_eq!(routes.mx_policy("mx.example.org").session.tls, TlsPolicy::Disabled);
        assert_eq!(routes.smarthost_policy("a:25").session.tls, TlsPolicy::Opportunistic);
    }

    #[test]
    fn password_file_is_read_and_trimmed_and_errors_name_the_route() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let mut r = route(&["*"], Some("relay:587"));
        r.auth = Some(RouteAuth { username: "app".into(), password_file: pw });
        let routes = Routes::new(vec![r.clone()], TlsPolicy::Opportunistic).unwrap();
        let creds = routes.smarthost_policy("relay:587").session.auth.unwrap();
        assert_eq!((creds.username.as_str(), creds.password.expose()), ("app", "s3cret"));
        r.auth.as_mut().unwrap().password_file = dir.path().join("missing");
        let err = Routes::new(vec![route(&["x"], None), r], TlsPolicy::Opportunistic).unwrap_err();
        assert!(err.to_string().starts_with("route[1].auth.password_file"), "{err}");
    }
}
