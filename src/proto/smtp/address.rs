//! Envelope addresses: the `Path` of RFC 5321 4.1.2, extended with UTF-8 by RFC 6531 3.3.
//!
//! ```text
//! Reverse-path = Path / "<>"
//! Path         = "<" [ A-d-l ":" ] Mailbox ">"
//! Mailbox      = Local-part "@" ( Domain / address-literal )
//! Local-part   = Dot-string / Quoted-string
//! ```
//! Source routes (`A-d-l`) are accepted and dropped, as RFC 5321 4.1.2 asks. This module checks
//! syntax only; whether an address may be relayed to is policy, decided elsewhere.

use std::fmt;

/// Why a path did not parse; the text is echoed after `501 5.1.x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("expected <path>")]
    MissingBrackets,
    #[error("bad local part")]
    LocalPart,
    #[error("bad domain")]
    Domain,
    #[error("address too long")]
    TooLong,
}

/// A syntactically valid mailbox, stored as sent (local parts are case-sensitive, RFC 5321 2.4).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mailbox(String);

impl Mailbox {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The domain part, or "" for the special `<postmaster>` recipient.
    pub fn domain(&self) -> &str {
        self.0.rfind('@').map(|at| &self.0[at + 1..]).unwrap_or("")
    }

    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
    }

    /// The local part as sent (quotes included).
    pub fn local_part(&self) -> &str {
        self.0.rfind('@').map_or(&self.0, |at| &self.0[..at])
    }

    /// Whether the local part names another destination, as old relays understood it: the
    /// percent hack (`user%other@here`), bang paths (`other!user@here`) or a quoted `@`
    /// (`"user@other"@here`). Such addresses are never relayed for untrusted clients.
    pub fn has_routing_local_part(&self) -> bool {
        self.local_part().contains(['%', '!', '@'])
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `<path> params` into the path's contents (without brackets) and the parameter text.
/// A quoted local part may contain `>`, so quotes are honoured while looking for the end.
pub fn split_path(arg: &str) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start();
    let rest = arg.strip_prefix('<').ok_or(AddressError::MissingBrackets)?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Ok((&rest[..i], rest[i + 1..].trim_start())),
            _ => {}
        }
    }
    Err(AddressError::MissingBrackets)
}

/// Parses the inside of a Path. `Ok(None)` is the null reverse-path `<>`.
pub fn parse_path(inner: &str, allow_postmaster: bool) -> Result<Option<Mailbox>, AddressError> {
    if inner.is_empty() {
        return Ok(None);
    }
    // RFC 5321 4.5.3.1.3: a path is at most 256 octets including the brackets.
    if inner.len() > 254 {
        return Err(AddressError::TooLong);
    }
    // A-d-l = At-domain *( "," At-domain ) ":" : source routes are parsed and dropped.
    let mailbox = if inner.starts_with('@') {
        let colon = route_end(inner).ok_or(AddressError::Domain)?;
        for hop in inner[..colon].split(',') {
            let hop = hop.strip_prefix('@').ok_or(AddressError::Domain)?;
            check_domain(hop)?;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    if allow_postmaster && mailbox.eq_ignore_ascii_case("postmaster") {
        return Ok(Some(Mailbox(mailbox.to_string())));
    }
    let at = mailbox.rfind('@').ok_or(AddressError::LocalPart)?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    check_local_part(local)?;
    check_domain_or_literal(domain)?;
    Ok(Some(Mailbox(mailbox.to_string())))
}

fn route_end(s: &str) -> Option<usize> {
    s.find(':')
}

/// atext (RFC 5322 3.2.3) plus UTF8-non-ascii (RFC 6531 3.3).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_local_part(local: &str) -> Result<(), AddressError> {
    if local.is_empty() || local.len() > 64 * 4 {
        return Err(AddressError::LocalPart);
    }
    if let Some(q) = local.strip_prefix('"') {
        // Quoted-string = DQUOTE *QcontentSMTP DQUOTE
        let body = q.strip_suffix('"').ok_or(AddressError::LocalPart)?;
        let mut escaped = false;
        for c in body.chars() {
            match c {
                _ if escaped => {
                    if !(' '..='~').contains(&c) {
                        return Err(AddressError::LocalPart);
                    }
                    escaped = false;
                }
                '\\' => escaped = true,
                '"' => return Err(AddressError::LocalPart),
                c if c.is_ascii_control() => return Err(AddressError::LocalPart),
                _ => {}
            }
        }
        return if escaped { Err(AddressError::LocalPart) } else { Ok(()) };
    }
    // Dot-string = Atom *("." Atom)
    if local.split('.').all(|atom| !atom.is_empty() && atom.chars().all(is_atext)) {
        Ok(())
    } else {
        Err(AddressError::LocalPart)
    }
}

fn check_domain_or_literal(domain: &str) -> Result<(), AddressError> {
    if let Some(lit) = domain.strip_prefix('[') {
        let lit = lit.strip_suffix(']').ok_or(AddressError::Domain)?;
        let ok = if let Some(v6) = lit.strip_prefix("IPv6:") {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            lit.parse::<std::net::Ipv4Addr>().is_ok()
        };
        return if ok { Ok(()) } else { Err(AddressError::Domain) };
    }
    check_domain(domain)
}

/// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str] (U-labels allowed).
fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() || domain.len() > 255 {
        return Err(AddressError::Domain);
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63 * 4
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    };
    if domain.split('.').all(label_ok) { Ok(()) } else { Err(AddressError::Domain) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5321 4.1.2 Path syntax, RFC 6531 3.3 UTF-8 extensions.
    #[test]
    fn rfc5321_4_1_2_paths() {
        let ok: &[(&str, &str)] = &[
            ("<a@example.com>", "a@example.com"),
            ("<first.last+tag@sub.example.com>", "first.last+tag@sub.example.com"),
            ("<\"john doe\"@example.com>", "\"john doe\"@example.com"),
            ("<\"a>b\"@example.com>", "\"a>b\"@example.com"),
            ("<@relay1,@relay2:user@example.com>", "user@example.com"),
            ("<user@[192.0.2.1]>", "user@[192.0.2.1]"),
            ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]"),
            ("<пользователь@пример.рф>", "пользователь@пример.рф"),
            ("<Postmaster>", "Postmaster"),
        ];
        for (input, want) in ok {
            let (inner, rest) = split_path(input).unwrap();
            assert_eq!(rest, "");
            let mbox = parse_path(inner, true).unwrap().unwrap();
            assert_eq!(mbox.as_str(), *want, "{input}");
        }
        let bad: &[&str] = &[
            "a@example.com",
            "<a@example.com",
            "<@example.com>",
            "<a@>",
            "<a..b@example.com>",
            "<.a@example.com>",
            "<a b@example.com>",
            "<a@-example.com>",
            "<a@exa_mple.com>",
            "<a@[300.1.1.1]>",
            "<\"unterminated@example.com>",
            "<postmaster>", // allowed for RCPT only; checked with allow_postmaster=false
        ];
        for input in bad {
            let parsed = split_path(input).and_then(|(inner, _)| parse_path(inner, false));
            assert!(parsed.is_err(), "{input} should fail, got {parsed:?}");
        }
    }

    #[test]
    fn null_path_and_params() {
        let (inner, rest) = split_path("<> SIZE=10").unwrap();
        assert_eq!(parse_path(inner, false).unwrap(), None);
        assert_eq!(rest, "SIZE=10");
        let long = format!("<{}@example.com>", "a".repeat(300));
        let (inner, _) = split_path(&long).unwrap();
        assert_eq!(parse_path(inner, false), Err(AddressError::TooLong));
    }

    /// Randomized: a mailbox built from the grammar (dot-atoms or quoted strings with escapes,
    /// domains of letter-digit-hyphen labels or address literals) parses back to itself with the
    /// same local part and domain, after the parameters that follow it; any byte string, fed
    /// whole, parses or fails without panicking.
    #[test]
    fn mailboxes_round_trip_and_garbage_never_panics() {
        let mut rng = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: u64| rng() % n;
        let atext = b"abcXYZ019!#$%&'*+-/=?^_`{|}~";
        let label = |next: &mut dyn FnMut(u64) -> u64| {
            let alnum = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let len = 1 + next(12) as usize;
            (0..len)
                .map(|i| {
                    let c = alnum[next(alnum.len() as u64) as usize];
                    if i > 0 && i + 1 < len && next(5) == 0 { '-' } else { c as char }
                })
                .collect::<String>()
        };
        for _ in 0..2000 {
            let local = if next(4) == 0 {
                let body: String = (0..1 + next(10))
                    .map(|_| match next(8) {
                        0 => "\\\"".to_string(),
                        1 => " ".to_string(),
                        2 => ">".to_string(),
                        _ => (atext[next(atext.len() as u64) as usize] as char).to_string(),
                    })
                    .collect();
                format!("\"{body}\"")
            } else {
                (0..1 + next(3))
                    .map(|_| {
                        (0..1 + next(8))
                            .map(|_| atext[next(atext.len() as u64) as usize] as char)
                            .collect::<String>()
                    })
                    .collect::<Vec<_>>()
                    .join(".")
            };
            let domain = match next(6) {
                0 => format!("[192.0.2.{}]", next(256)),
                1 => "[IPv6:2001:db8::1]".to_string(),
                _ => (0..1 + next(3)).map(|_| label(&mut next)).collect::<Vec<_>>().join("."),
            };
            let mailbox = format!("{local}@{domain}");
            let arg = format!("<{mailbox}> SIZE=1");
            let (inner, rest) = split_path(&arg).unwrap();
            assert_eq!(rest, "SIZE=1", "{mailbox}");
            let m =
                parse_path(inner, false).unwrap_or_else(|e| panic!("{mailbox}: {e:?}")).unwrap();
            assert_eq!(m.as_str(), mailbox);
            assert_eq!((m.local_part(), m.domain()), (local.as_str(), domain.as_str()));

            let garbage: Vec<u8> = (0..next(40)).map(|_| next(256) as u8).collect();
            let text = String::from_utf8_lossy(&garbage);
            let _ = split_path(&text).and_then(|(inner, _)| parse_path(inner, true));
            let _ = parse_path(&text, false);
        }
    }

    #[test]
    fn domain_of_mailbox() {
        let m = parse_path("\"x@y\"@Example.COM", false).unwrap().unwrap();
        assert_eq!(m.domain(), "Example.COM");
    }
}
