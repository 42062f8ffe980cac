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

/// The normal form used for every comparison.
pub fn normalize(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
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
