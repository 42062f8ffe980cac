//! Tenants: who mail is sent for. A tenant is bound to credentials (inject tokens, users) or
//! declared by trusted origins; it scopes suppression, VERP, metrics and events, and carries
//! quotas (`[tenant.NAME]`).

pub mod quota;

/// The longest tenant or campaign name.
pub const MAX_NAME: usize = 64;

/// Tenant and campaign names: 1-64 of `A-Z a-z 0-9 . _ -` (they become metric labels and
/// suppression scopes). `field` names the input in the error.
pub fn check_name(field: &str, v: String) -> Result<compact_str::CompactString, String> {
    let ok = (1..=MAX_NAME).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(v.into())
    } else {
        let shown: String = v.chars().take(MAX_NAME).collect();
        Err(format!("{field}: {shown:?} (1-{MAX_NAME} of A-Z a-z 0-9 . _ -)"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_short_and_plain() {
        assert_eq!(super::check_name("tenant", "acme-1.eu_x".into()).unwrap(), "acme-1.eu_x");
        for bad in ["", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(super::check_name("tenant", bad.into()).is_err(), "{bad:?}");
        }
    }
}
