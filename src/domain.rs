//! Domain names as configuration and routing compare them: one normal form (lower case, no
//! trailing root dot) and one pattern language for `[[route]] domains` and
//! `[[shaping.rule]] match`: an exact domain, `*.example.org` (any subdomain, not the domain
//! itself) or `*` (everything).

/// A DNS label as DKIM selectors use them: letters, digits, hyphens (and `_`), 1–63 bytes,
/// no edge hyphen.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A host name (an EHLO argument): dot-separated DNS labels, at most 253 bytes.
pub fn is_hostname(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The normal form used for every comparison.
pub fn normalize(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// An address as every comparison sees it (suppression, users, aliases): without angle
/// brackets, the domain in its normal form, the local part in lower case, and a quoted local
/// part unquoted when the quotes change nothing (`"supp"@example.org` is `supp@example.org`,
/// RFC 5321 4.1.2); one that needs them keeps them, with only `"` and `\` escaped.
pub fn canonical_address(address: &str) -> String {
    let a = address.trim();
    let a = a.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(a);
    let Some((local, domain)) = a.rsplit_once('@') else { return a.to_lowercase() };
    let local = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => {
            let mut plain = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                plain.push(if c == '\\' { chars.next().unwrap_or(c) } else { c });
            }
            if is_dot_atom(&plain) {
                plain
            } else {
                format!("\"{}\"", plain.replace('\\', "\\\\").replace('"', "\\\""))
            }
        }
        None => local.to_string(),
    };
    format!("{}@{}", local.to_lowercase(), normalize(domain))
}

/// RFC 5322 dot-atom: atext runs separated by single dots (UTF-8 allowed, RFC 6531).
fn is_dot_atom(s: &str) -> bool {
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    !s.is_empty() && s.split('.').all(|part| !part.is_empty() && part.chars().all(atext))
}

/// Whether `pattern` covers `domain` (which must be in normal form).
pub fn pattern_matches(pattern: &str, domain: &str) -> bool {
    let p = normalize(pattern);
    if p == "*" {
        return true;
    }
    match p.strip_prefix("*.") {
        Some(parent) => domain
            .strip_suffix(parent)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
        None => p == domain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5321 4.1.2: a quoted local part that needs no quoting is the same mailbox.
    #[test]
    fn addresses_have_one_canonical_form() {
        for (given, canonical) in [
            ("\"supp\"@Example.ORG", "supp@example.org"),
            ("<\"Supp\"@example.org.>", "supp@example.org"),
            ("\"s\\upp\"@example.org", "supp@example.org"),
            ("\"first.last\"@x.test", "first.last@x.test"),
            ("\"a b\"@x.test", "\"a b\"@x.test"),
            ("\"a\\\"b\"@x.test", "\"a\\\"b\"@x.test"),
            ("\"a..b\"@x.test", "\"a..b\"@x.test"),
            ("Bob@X.test", "bob@x.test"),
            ("postmaster", "postmaster"),
        ] {
            assert_eq!(canonical_address(given), canonical, "{given}");
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything.example"));
        assert!(pattern_matches("Example.ORG.", "example.org"));
        assert!(!pattern_matches("example.org", "sub.example.org"));
        assert!(pattern_matches("*.example.org", "sub.example.org"));
        assert!(pattern_matches("*.example.org", "a.b.example.org"));
        assert!(!pattern_matches("*.example.org", "example.org"));
        assert!(!pattern_matches("*.example.org", ".example.org"));
        assert!(!pattern_matches("*.example.org", "badexample.org"));
        assert_eq!(normalize("MX.Example.COM."), "mx.example.com");
    }
}
