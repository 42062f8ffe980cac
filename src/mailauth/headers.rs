//! Just enough of a message's header block for signing decisions: field names, the From
//! domain, and the DKIM signatures already present. Bytes in, no copies of the body.

use mail_parser::MessageParser;

/// The header fields of `message` (up to the blank line), each as (name, raw value). Folded
/// continuation lines stay part of their field's value.
pub fn fields(message: &[u8]) -> impl Iterator<Item = (&str, &[u8])> {
    let mut rest = message;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
                return None;
            }
            // One field: up to a line end not followed by folding white space.
            let mut end = 0;
            loop {
                match memchr::memchr(b'\n', &rest[end..]) {
                    Some(i) => {
                        end += i + 1;
                        if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                            break;
                        }
                    }
                    None => {
                        end = rest.len();
                        break;
                    }
                }
            }
            let (field, tail) = rest.split_at(end);
            rest = tail;
            let Some(colon) = memchr::memchr(b':', field) else { continue };
            let Ok(name) = std::str::from_utf8(&field[..colon]) else { continue };
            let name = name.trim_end();
            if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
                continue; // not a field (RFC 5322 2.2: printable ASCII except colon)
            }
            return Some((name, &field[colon + 1..]));
        }
    })
}

/// The domain of the first From address, lower case without a trailing dot.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let header_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4);
    let parsed = MessageParser::new().parse_headers(&message[..header_end])?;
    let from = parsed.from()?.first()?.address()?;
    let (_, domain) = from.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// (d=, s=) of every DKIM-Signature already in the message, lower case.
pub fn existing_signatures(message: &[u8]) -> Vec<(String, String)> {
    fields(message)
        .filter(|(name, _)| name.eq_ignore_ascii_case("DKIM-Signature"))
        .filter_map(|(_, value)| {
            let value = std::str::from_utf8(value).ok()?;
            let tags = super::key::parse_tags(value);
            let tag = |n: &str| tags.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_lowercase());
            Some((tag("d")?, tag("s")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_folding_and_stop_at_the_body() {
        let m = b"From: a@b.example\r\nSubject: one\r\n two\r\nX-Empty:\r\n\r\nTo: in@body\r\n";
        let got: Vec<_> =
            fields(m).map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())).collect();
        assert_eq!(
            got,
            [
                ("From", " a@b.example\r\n".into()),
                ("Subject", " one\r\n two\r\n".into()),
                ("X-Empty", "\r\n".to_string())
            ]
        );
    }

    #[test]
    fn from_domain_reads_the_address_not_the_display_name() {
        let m = b"From: \"evil@other.example <x@y>\" <Bob@Mail.Example.COM.>\r\n\r\nhi\r\n";
        assert_eq!(from_domain(m).as_deref(), Some("mail.example.com"));
        assert_eq!(from_domain(b"Subject: none\r\n\r\n"), None);
        assert_eq!(from_domain(b"From: a@b.example\r\n").as_deref(), Some("b.example"));
    }

    #[test]
    fn existing_signatures_are_found_case_insensitively() {
        let m = b"dkim-signature: v=1; a=ed25519-sha256; d=Example.COM;\r\n\ts=Sel; b=abc\r\nFrom: x@example.com\r\n\r\n";
        assert_eq!(existing_signatures(m), [("example.com".to_string(), "sel".to_string())]);
    }
}
