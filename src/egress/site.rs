//! Sites (MX rollup): recipient domains whose mail exchangers belong to one provider share one
//! set of limits. A named site (`[[site]] name, mx = ["*.google.com"]`, or an entry of the
//! shipped provider table) takes every domain one of whose MX hosts matches its patterns; any
//! other domain rolls up with the domains of the same MX host set (as KumoMTA's `site_name`), so
//! a thousand domains hosted on one pair of exchangers are one destination, not a thousand.

use serde::Deserialize;

use crate::domain::pattern_matches;
use crate::units::rate;

/// `[[site]]`: a provider, its MX host patterns and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    /// MX host patterns (`*.google.com`); empty: the shipped table's for this name.
    #[serde(default)]
    pub mx: Vec<String>,
    /// Limits per source (each `[[source]]`, or the default address, has its own); unset keys
    /// come from `[shaping]`.
    pub connections: Option<usize>,
    pub messages_per_connection: Option<usize>,
    #[serde(default, deserialize_with = "rate")]
    pub rate: Option<f64>,
    /// New connections per second from one source.
    #[serde(default, deserialize_with = "rate")]
    pub connect_rate: Option<f64>,
    /// Caps across all sources together.
    pub total: Option<TotalConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotalConfig {
    pub connections: Option<usize>,
    #[serde(default, deserialize_with = "rate")]
    pub rate: Option<f64>,
}

/// The shipped provider table: the mail exchangers of the large mailbox providers, as they
/// publish them (checked against their MX records, 2026-12). A `[[site]]` of the same name
/// replaces an entry's limits (and its patterns, if it gives `mx`).
pub const PROVIDERS: &[(&str, &[&str])] = &[
    ("google", &["*.google.com", "*.googlemail.com"]),
    ("microsoft", &["*.outlook.com", "*.hotmail.com"]),
    ("yahoo", &["*.yahoodns.net", "*.yahoo.com", "*.aol.com"]),
    ("apple", &["*.icloud.com", "*.me.com", "*.mac.com"]),
    (
        "gmx",
        &["*.gmx.net", "*.gmx.com", "*.web.de", "*.ionos.de", "*.ionos.com", "*.kundenserver.de"],
    ),
    ("comcast", &["*.comcast.net"]),
    ("zoho", &["*.zoho.com", "*.zoho.eu", "*.zoho.in", "*.zohomail.com"]),
    ("yandex", &["*.yandex.ru", "*.yandex.net"]),
    ("mailru", &["*.mail.ru"]),
    ("fastmail", &["*.messagingengine.com", "*.fastmail.com"]),
];

/// Longest rollup key kept as it is; longer MX host sets are cut and end in a hash, so keys
/// stay bounded (they are map keys and log fields).
const MAX_KEY: usize = 200;
/// At most this many patterns per site, each a host name pattern.
const MAX_PATTERNS: usize = 64;

/// A named site, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub name: String,
    pub mx: Vec<String>,
    pub connections: Option<usize>,
    pub messages_per_connection: Option<usize>,
    pub rate: Option<f64>,
    pub connect_rate: Option<f64>,
    pub total_connections: Option<usize>,
    pub total_rate: Option<f64>,
}

/// The named sites, in the order they are tried (configured first, then the shipped table).
#[derive(Debug, Clone, Default)]
pub struct Sites {
    sites: Vec<Site>,
}

impl Sites {
    /// The shipped table (when `builtin`) with the configured sites over it.
    pub fn new(cfg: &[SiteConfig], builtin: bool) -> Result<Sites, super::Invalid> {
        let mut sites: Vec<Site> = Vec::new();
        for (i, c) in cfg.iter().enumerate() {
            let key = |k: &str| format!("site[{i}].{k}");
            super::check_name(&c.name).map_err(|e| (key("name"), e))?;
            if sites.iter().any(|s| s.name == c.name) {
                return Err((key("name"), format!("{:?} is defined twice", c.name)));
            }
            let shipped = PROVIDERS.iter().find(|(n, _)| *n == c.name).filter(|_| builtin);
            let mx: Vec<String> = match (c.mx.is_empty(), shipped) {
                (false, _) => c.mx.iter().map(|p| crate::domain::normalize(p)).collect(),
                (true, Some((_, p))) => p.iter().map(|s| s.to_string()).collect(),
                (true, None) => {
                    return Err((key("mx"), "needed (no shipped site has this name)".into()));
                }
            };
            if mx.len() > MAX_PATTERNS {
                return Err((key("mx"), format!("at most {MAX_PATTERNS} patterns")));
            }
            if let Some(bad) = mx.iter().find(|p| !is_pattern(p)) {
                return Err((key("mx"), format!("{bad:?} is not a host name pattern")));
            }
            let zero = |n: Option<usize>| n == Some(0);
            if zero(c.connections) || zero(c.messages_per_connection) {
                return Err((key("connections"), "must be at least 1".into()));
            }
            let total = c.total.clone().unwrap_or_default();
            if zero(total.connections) {
                return Err((key("total.connections"), "must be at least 1".into()));
            }
            sites.push(Site {
                name: c.name.clone(),
                mx,
                connections: c.connections,
                messages_per_connection: c.messages_per_connection,
                rate: c.rate,
                connect_rate: c.connect_rate,
                total_connections: total.connections,
                total_rate: total.rate,
            });
        }
        if builtin {
            for (name, mx) in PROVIDERS {
                if !sites.iter().any(|s| s.name == *name) {
                    sites.push(Site {
                        name: name.to_string(),
                        mx: mx.iter().map(|s| s.to_string()).collect(),
                        connections: None,
                        messages_per_connection: None,
                        rate: None,
                        connect_rate: None,
                        total_connections: None,
                        total_rate: None,
                    });
                }
            }
        }
        Ok(Sites { sites })
    }

    /// The named site one of whose patterns matches one of `hosts`, first site first.
    pub fn named(&self, hosts: &[String]) -> Option<&Site> {
        let hosts: Vec<String> = hosts.iter().map(|h| crate::domain::normalize(h)).collect();
        self.sites.iter().find(|s| s.mx.iter().any(|p| hosts.iter().any(|h| pattern_matches(p, h))))
    }

    pub fn get(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }
}

/// The key of an MX host set: its hosts in normal form, sorted, without repeats, joined by `,`
/// (bounded: a longer set is cut and ends in a hash of the whole).
pub fn rollup_key(hosts: &[String]) -> String {
    let mut h: Vec<String> = hosts.iter().map(|h| crate::domain::normalize(h)).collect();
    h.sort();
    h.dedup();
    let key = h.join(",");
    if key.len() <= MAX_KEY {
        return key;
    }
    let mut cut = MAX_KEY - 17;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}#{:016x}", &key[..cut], fnv1a(key.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// `host.example`, `*.example` or `*`.
fn is_pattern(p: &str) -> bool {
    p == "*" || crate::domain::is_hostname(p.strip_prefix("*.").unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    fn site(name: &str, mx: &[&str]) -> SiteConfig {
        SiteConfig {
            name: name.into(),
            mx: hosts(mx),
            connections: Some(2),
            messages_per_connection: None,
            rate: None,
            connect_rate: None,
            total: None,
        }
    }

    /// The providers' published MX hosts land in their sites; others in none.
    #[test]
    fn the_shipped_table_names_the_large_providers() {
        let s = Sites::new(&[], true).unwrap();
        let cases = [
            ("gmail-smtp-in.l.google.com.", "google"),
            ("ASPMX.L.GOOGLE.COM", "google"),
            ("alt1.aspmx.l.google.com", "google"),
            ("smtp.google.com", "google"),
            ("aspmx2.googlemail.com", "google"),
            ("example-com.mail.protection.outlook.com", "microsoft"),
            ("hotmail-com.olc.protection.outlook.com", "microsoft"),
            ("mta5.am0.yahoodns.net", "yahoo"),
            ("mx-aol.mail.gm0.yahoodns.net", "yahoo"),
            ("mx01.mail.icloud.com", "apple"),
            ("mx00.emig.gmx.net", "gmx"),
            ("mx-ha03.web.de", "gmx"),
            ("mx00.ionos.de", "gmx"),
            ("mx1a1.comcast.net", "comcast"),
            ("mx.zoho.com", "zoho"),
            ("mx.yandex.ru", "yandex"),
            ("mxs.mail.ru", "mailru"),
            ("in1-smtp.messagingengine.com", "fastmail"),
        ];
        for (host, want) in cases {
            assert_eq!(s.named(&hosts(&[host])).map(|x| x.name.as_str()), Some(want), "{host}");
        }
        assert!(s.named(&hosts(&["mx.example.org", "google.com.evil.example"])).is_none());
        assert!(Sites::new(&[], false).unwrap().named(&hosts(&["smtp.google.com"])).is_none());
    }

    #[test]
    fn configured_sites_come_first_and_override_the_table_by_name() {
        let cfg = [site("google", &[]), site("lab", &["*.lab.test"])];
        let s = Sites::new(&cfg, true).unwrap();
        let g = s.named(&hosts(&["smtp.google.com"])).unwrap();
        assert_eq!((g.name.as_str(), g.connections), ("google", Some(2)), "limits over the table");
        assert_eq!(g.mx, ["*.google.com", "*.googlemail.com"], "the table's patterns kept");
        assert_eq!(s.named(&hosts(&["mx.lab.test"])).unwrap().name, "lab");
        let own = Sites::new(&[site("google", &["*.google.test"])], true).unwrap();
        assert!(own.named(&hosts(&["smtp.google.com"])).is_none(), "patterns replaced");
        assert_eq!(own.get("microsoft").unwrap().connections, None);
    }

    #[test]
    fn rollup_keys_ignore_order_case_dots_and_repeats_and_stay_bounded() {
        let a = rollup_key(&hosts(&["MX2.example.org.", "mx1.example.org", "mx1.example.org"]));
        assert_eq!(a, "mx1.example.org,mx2.example.org");
        let long: Vec<String> =
            (0..40).map(|i| format!("mx{i}.a-long-provider-name.example")).collect();
        let k = rollup_key(&long);
        assert!(k.len() <= MAX_KEY, "{}", k.len());
        let mut other = long.clone();
        other[39] = "mx39.another.example".into();
        assert_ne!(k, rollup_key(&other), "the hash tells long sets apart");
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            (vec![site("nowhere", &[])], "site[0].mx"),
            (vec![site("a", &["not a pattern"])], "site[0].mx"),
            (vec![site("a", &["*.a.test"]), site("a", &["*.b.test"])], "site[1].name"),
            (
                vec![SiteConfig { connections: Some(0), ..site("a", &["x.test"]) }],
                "site[0].connections",
            ),
            (
                vec![SiteConfig {
                    total: Some(TotalConfig { connections: Some(0), rate: None }),
                    ..site("a", &["x.test"])
                }],
                "site[0].total.connections",
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(Sites::new(&cfg, true).unwrap_err().0, want);
        }
    }
}
