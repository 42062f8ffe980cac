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

/// Skips CFWS (RFC 5322 3.2.2: blanks, line breaks and nested comments) from `v[*i]`.
fn skip_cfws(v: &[u8], i: &mut usize) {
    let mut depth = 0usize;
    while *i < v.len() {
        match v[*i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => *i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => return,
        }
        *i += 1;
    }
}

/// The authserv-id of an Authentication-Results value as RFC 8601 2.2 reads it:
/// `[CFWS] authserv-id`, where authserv-id is a `value` (RFC 2045: a token or a quoted-string),
/// in lower case without a trailing dot. Comments before it or glued to it, quoting and case
/// do not change whose results a field claims to be.
pub fn authserv_id_of(value: &[u8]) -> Option<String> {
    let mut i = 0;
    skip_cfws(value, &mut i);
    let id = if value.get(i) == Some(&b'"') {
        let mut s = Vec::new();
        i += 1;
        while i < value.len() && value[i] != b'"' {
            if value[i] == b'\\' && i + 1 < value.len() {
                i += 1;
            }
            s.push(value[i]);
            i += 1;
        }
        s
    } else {
        // token: up to a blank, a special (tspecials of RFC 2045) or a control character.
        let end = value[i..]
            .iter()
            .position(|&b| b <= b' ' || b == 0x7f || b"()<>@,;:\\\"/[]?=".contains(&b))
            .map_or(value.len(), |p| i + p);
        value[i..end].to_vec()
    };
    let id = String::from_utf8_lossy(&id).trim().trim_end_matches('.').to_ascii_lowercase();
    (!id.is_empty()).then_some(id)
}

/// `message` without the Authentication-Results fields that claim `authserv_id` (RFC 8601 5:
/// only we may write results under our name, whichever way a field spells it); `None` when
/// there are none (the usual case: no copy).
pub fn strip_forged_results(message: &[u8], authserv_id: &str) -> Option<Vec<u8>> {
    let ours = authserv_id.trim_end_matches('.').to_ascii_lowercase();
    remove_fields(message, |name, value| {
        name.eq_ignore_ascii_case("Authentication-Results")
            && authserv_id_of(value).is_some_and(|id| id == ours)
    })
}

/// `message` without the header fields `drop` picks (given name and raw value); `None` when it
/// picks none (no copy).
pub fn remove_fields(message: &[u8], drop: impl Fn(&str, &[u8]) -> bool) -> Option<Vec<u8>> {
    if !fields(message).any(|(n, v)| drop(n, v)) {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    let mut rest = message;
    for (name, value) in fields(message) {
        // Each field is a contiguous slice of `message`: copy up to it, then skip it if dropped.
        let start = name.as_ptr() as usize - message.as_ptr() as usize;
        let end = value.as_ptr() as usize - message.as_ptr() as usize + value.len();
        let done = message.len() - rest.len();
        out.extend_from_slice(&message[done..start]);
        if !drop(name, value) {
            out.extend_from_slice(&message[start..end]);
        }
        rest = &message[end..];
    }
    out.extend_from_slice(rest);
    Some(out)
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
    fn forged_results_are_removed_and_others_kept() {
        let m = b"Authentication-Results: MX.Example.NET;\r\n dkim=pass header.d=bank.example\r\n\
                  From: a@b.example\r\nAuthentication-Results: other.example; spf=pass\r\n\
                  authentication-results: mx.example.net 1; dmarc=pass\r\n\r\n\
                  Authentication-Results: mx.example.net; in the body\r\n";
        let out = strip_forged_results(m, "mx.example.net").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: a@b.example\r\nAuthentication-Results: other.example; spf=pass\r\n\r\n\
             Authentication-Results: mx.example.net; in the body\r\n"
        );
        assert!(strip_forged_results(b"From: a@b\r\n\r\nx\r\n", "mx.example.net").is_none());
    }

    /// RFC 8601 2.2: `[CFWS] authserv-id`, a token or a quoted-string; every spelling of our
    /// id is ours (an RFC 8601 parser downstream reads each of these as our results).
    #[test]
    fn every_spelling_of_our_authserv_id_is_removed() {
        for forged in [
            " mx.example.net; dkim=pass",
            " (comment) mx.example.net; dkim=pass",
            " (nested (comment)) MX.example.net 1; dkim=pass",
            "(glued)mx.example.net; dkim=pass",
            " mx.example.net(glued); dkim=pass",
            " \"mx.example.net\"; dkim=pass",
            " \"mx.exa\\mple.net\"; dkim=pass",
            " mx.example.net.; dkim=pass",
            "\r\n\tmx.example.net\r\n ; dkim=pass",
            " mx.example.net;dkim=pass",
        ] {
            assert_eq!(
                authserv_id_of(forged.as_bytes()).as_deref(),
                Some("mx.example.net"),
                "{forged:?}"
            );
            let m = format!("Authentication-Results:{forged}\r\nFrom: a@b\r\n\r\nbody\r\n");
            let out = strip_forged_results(m.as_bytes(), "mx.example.net.").expect(forged);
            assert_eq!(out, b"From: a@b\r\n\r\nbody\r\n", "{forged:?}");
        }
        for other in
            [" mx.example.net.evil; x", " other.example; mx.example.net", " (mx.example.net) x; y"]
        {
            let m = format!("Authentication-Results:{other}\r\n\r\n");
            assert!(strip_forged_results(m.as_bytes(), "mx.example.net").is_none(), "{other:?}");
        }
    }

    #[test]
    fn existing_signatures_are_found_case_insensitively() {
        let m = b"dkim-signature: v=1; a=ed25519-sha256; d=Example.COM;\r\n\ts=Sel; b=abc\r\nFrom: x@example.com\r\n\r\n";
        assert_eq!(existing_signatures(m), [("example.com".to_string(), "sel".to_string())]);
    }
}
