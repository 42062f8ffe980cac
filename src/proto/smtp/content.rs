//! One content policy for DATA and BDAT: a message is refused if its text has a bare CR, a bare
//! LF (RFC 5321 2.3.8: lines end with CRLF), a NUL (RFC 5322 2.3 excludes it), or a line over the
//! text line limit (RFC 5321 4.5.3.1.6).
//!
//! DATA applies it while reading (its framing depends on line ends: see `data.rs`); BDAT, framed
//! by length, applies [`check`] to the whole message at `BDAT LAST`. Either way the message that
//! reaches the spool, and so every next hop, has only CRLF line ends: a next hop that ends lines
//! at a bare CR or LF cannot be handed a second, smuggled message.
//!
//! What it does not do: normalise. A message that breaks the rules is refused, never rewritten.

/// What the content policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareCrLf,
    /// A NUL octet.
    Nul,
    /// A line longer than the limit (CRLF included).
    LineTooLong,
}

/// Checks a whole message; `max_line` counts the CRLF, as RFC 5321 does (1000).
pub fn check(body: &[u8], max_line: usize) -> Result<(), Violation> {
    let max_text = max_line.saturating_sub(2);
    let mut line_start = 0;
    let mut at = 0;
    while let Some(i) = memchr::memchr3(b'\r', b'\n', 0, &body[at..]) {
        let i = at + i;
        match body[i] {
            0 => return Err(Violation::Nul),
            b'\n' => return Err(Violation::BareCrLf), // a CR before it was consumed below
            _ => {
                if body.get(i + 1) != Some(&b'\n') {
                    return Err(Violation::BareCrLf);
                }
                if i - line_start > max_text {
                    return Err(Violation::LineTooLong);
                }
                at = i + 2;
                line_start = at;
            }
        }
    }
    if body.len() - line_start > max_text {
        return Err(Violation::LineTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5321 2.3.8 and 4.5.3.1.6; RFC 5322 2.3 (no NUL).
    #[test]
    fn rfc5321_2_3_8_only_crlf_line_ends_and_no_nul() {
        let long = format!("{}\r\n", "x".repeat(998));
        let too_long = format!("{}\r\n", "x".repeat(999));
        let cases: &[(&[u8], Result<(), Violation>)] = &[
            (b"", Ok(())),
            (b"a\r\nb\r\n", Ok(())),
            (b"no final line end", Ok(())),
            (long.as_bytes(), Ok(())),
            (too_long.as_bytes(), Err(Violation::LineTooLong)),
            (b"a\rb\r\n", Err(Violation::BareCrLf)),
            (b"a\nb\r\n", Err(Violation::BareCrLf)),
            (b"a\r\n.\r\r\n", Err(Violation::BareCrLf)),
            (b"a\r\n.\n", Err(Violation::BareCrLf)),
            (b"trailing CR\r", Err(Violation::BareCrLf)),
            (b"\n", Err(Violation::BareCrLf)),
            (b"a\0b\r\n", Err(Violation::Nul)),
            (b"a\r\n\0.\r\n", Err(Violation::Nul)),
        ];
        for (input, want) in cases {
            assert_eq!(check(input, 1000), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }
}
