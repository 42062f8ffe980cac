//! The few facts sluice reads from or adds to message content at reception: the `Message-ID`
//! (for the queue listing) and the `Received:` trace header (RFC 5321 4.4).
//!
//! This is deliberately not a MIME parser (that arrives with `mail-parser` when content needs
//! inspecting); it scans the header block only, which is all reception needs.

use std::fmt::Write as _;

/// Returns the unfolded Message-ID header value (RFC 5322 3.6.4), if present in the header block.
pub fn message_id(body: &[u8]) -> Option<String> {
    header_value(body, "message-id").map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// First header field named `name` (case-insensitive), unfolded (RFC 5322 2.2.3).
pub fn header_value(body: &[u8], name: &str) -> Option<String> {
    let mut lines = body.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut found: Option<Vec<u8>> = None;
    for line in lines.by_ref() {
        if line.is_empty() {
            break; // end of the header block
        }
        let folded = line[0] == b' ' || line[0] == b'\t';
        match (&mut found, folded) {
            (Some(v), true) => v.extend_from_slice(line),
            (Some(_), false) => break,
            (None, false) => {
                if let Some(colon) = memchr::memchr(b':', line)
                    && line[..colon].trim_ascii().eq_ignore_ascii_case(name.as_bytes())
                {
                    found = Some(line[colon + 1..].to_vec());
                }
            }
            (None, true) => {}
        }
    }
    found.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Trace fields in the header block: `Received:` (RFC 5321 4.4) and `Delivered-To:` (local
/// delivery). A message that has passed more hops than any sane route has is in a loop
/// (RFC 5321 6.3).
pub fn hop_count(body: &[u8]) -> usize {
    let mut n = 0;
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // end of the header block
        }
        if let Some(colon) = memchr::memchr(b':', line) {
            let name = line[..colon].trim_ascii();
            if name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"delivered-to")
            {
                n += 1;
            }
        }
    }
    n
}

/// What the `Received:` header says about one transaction.
pub struct TraceInfo<'a> {
    pub helo: &'a str,
    pub client_ip: std::net::IpAddr,
    pub hostname: &'a str,
    /// "SMTP" or "ESMTP" (RFC 3848 protocol types)
    pub protocol: &'a str,
    pub queue_id: &'a str,
    /// Named only for single-recipient messages, so the header does not disclose Bcc lists.
    pub single_recipient: Option<&'a str>,
    pub unix_time: u64,
}

/// Builds the `Received:` header (RFC 5321 4.4 Time-stamp-line) as its own small buffer, so the
/// body is never copied to prepend it.
pub fn received_header(t: &TraceInfo<'_>) -> String {
    let mut h = String::with_capacity(200);
    let ip = match t.client_ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let helo: String = t.helo.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    let _ = write!(
        h,
        "Received: from {helo} ([{ip}])\r\n\tby {} (sluice) with {} id {}",
        t.hostname, t.protocol, t.queue_id
    );
    if let Some(rcpt) = t.single_recipient {
        let _ = write!(h, "\r\n\tfor <{rcpt}>");
    }
    let _ = write!(h, ";\r\n\t{}\r\n", rfc5322_date(t.unix_time));
    h
}

/// `Sun, 22 Nov 2026 03:00:56 +0000` (RFC 5322 3.3), always in UTC.
pub fn rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day), Howard Hinnant's civil_from_days algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5322_3_6_4_message_id_is_found_and_unfolded() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", Some("<a@b>")),
            (b"message-id:\r\n <folded@b>\r\n\r\n", Some("<folded@b>")),
            (b"Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n", None),
            (b"", None),
        ];
        for (body, want) in cases {
            assert_eq!(message_id(body).as_deref(), *want);
        }
    }

    #[test]
    fn rfc5322_3_3_dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_316_456), "Sun, 22 Nov 2026 03:00:56 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn rfc5321_4_4_received_header() {
        let h = received_header(&TraceInfo {
            helo: "client.example",
            client_ip: "192.0.2.7".parse().unwrap(),
            hostname: "mx.example.net",
            protocol: "ESMTP",
            queue_id: "0123",
            single_recipient: Some("a@example.net"),
            unix_time: 0,
        });
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.7])\r\n\tby mx.example.net (sluice) with ESMTP id 0123\r\n\tfor <a@example.net>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
