//! The DATA receiver (RFC 5321 4.1.1.4, 4.5.2): finds `<CRLF>.<CRLF>`, undoes dot-stuffing
//! in place and refuses bare CR and bare LF.
//!
//! The message text stays in the connection's read buffer: unstuffing moves bytes towards the
//! front of that same buffer, and the finished body is split off as one `BytesMut` without a copy.
//! Anything the client pipelined after the terminator stays in the buffer for the next command.
//!
//! Why bare CR/LF is fatal: SMTP smuggling relies on receivers that disagree on where a message
//! ends (`<LF>.<LF>`, `<CR>.<CR>`, `<CRLF>.<LF>` ...). Once a lone CR or LF is seen the framing
//! of the rest of the stream is unknowable, so the message is refused and the session closed;
//! nothing after it is ever interpreted as a command.

use bytes::{Buf, Bytes, BytesMut};

/// Why a message was refused; the receiver keeps reading to the terminator (framing is intact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFailure {
    /// Over the advertised SIZE: 552 5.3.4.
    TooBig,
    /// A text line over the limit (RFC 5321 4.5.3.1.6).
    LineTooLong,
    /// The server-wide memory budget for bodies in flight is spent: 452 4.3.1.
    OverBudget,
    /// A NUL octet in the text (RFC 5322 2.3): 554 5.6.0.
    Nul,
}

/// What one call to [`DataReceiver::ingest`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum DataEvent {
    /// Everything buffered was examined; read more and call again.
    NeedMore,
    /// The terminator was found; the body (with its final CRLF, unstuffed) is returned and the
    /// terminator consumed.
    End(BytesMut),
    /// The terminator was found but the message is refused.
    Refused(DataFailure),
    /// A bare CR or LF: refuse the message and close the session.
    BareCrLf,
}

#[derive(Debug)]
pub struct DataReceiver {
    /// Bytes of the buffer already examined.
    scanned: usize,
    /// Length of the unstuffed body at the front of the buffer (`written <= scanned`).
    written: usize,
    /// Length of the current line so far, for the text line limit.
    line_len: usize,
    at_line_start: bool,
    max_size: usize,
    /// Longest line without its CRLF.
    max_line: usize,
    failure: Option<DataFailure>,
}

impl DataReceiver {
    /// `max_line` counts the CRLF, as RFC 5321 does (1000).
    pub fn new(max_size: usize, max_line: usize) -> Self {
        DataReceiver {
            scanned: 0,
            written: 0,
            line_len: 0,
            at_line_start: true,
            max_size,
            max_line: max_line.saturating_sub(2),
            failure: None,
        }
    }

    /// Examines `buf` (which must start at the first octet of the message text and be passed
    /// again, grown, on every call until an event other than `NeedMore`).
    pub fn ingest(&mut self, buf: &mut BytesMut) -> DataEvent {
        loop {
            if self.at_line_start {
                let rem = &buf[self.scanned..];
                if rem.is_empty() {
                    return self.need_more(buf);
                }
                if rem[0] == b'.' {
                    let Some(&next) = rem.get(1) else { return self.need_more(buf) };
                    match next {
                        b'\r' => {
                            let Some(&lf) = rem.get(2) else { return self.need_more(buf) };
                            if lf != b'\n' {
                                return DataEvent::BareCrLf;
                            }
                            return self.finish(buf);
                        }
                        b'\n' => return DataEvent::BareCrLf,
                        // A leading dot on any other line is removed (RFC 5321 4.5.2).
                        _ => {
                            self.scanned += 1;
                            self.line_len += 1;
                        }
                    }
                }
                self.at_line_start = false;
            }
            let rem = &buf[self.scanned..];
            match memchr::memchr3(b'\r', b'\n', 0, rem) {
                // A NUL does not change the framing: the message is refused at its end.
                Some(i) if rem[i] == 0 => {
                    self.line_len += i + 1;
                    self.keep(buf, i + 1);
                    self.fail(DataFailure::Nul);
                }
                None => {
                    let n = rem.len();
                    self.line_len += n;
                    self.keep(buf, n);
                    self.check_line();
                    return self.need_more(buf);
                }
                Some(i) if rem[i] == b'\n' => return DataEvent::BareCrLf,
                Some(i) => match rem.get(i + 1) {
                    None => {
                        // The CR stays unexamined until its successor arrives.
                        self.line_len += i;
                        self.keep(buf, i);
                        self.check_line();
                        return self.need_more(buf);
                    }
                    Some(b'\n') => {
                        self.line_len += i;
                        self.check_line();
                        self.keep(buf, i + 2);
                        self.line_len = 0;
                        self.at_line_start = true;
                    }
                    Some(_) => return DataEvent::BareCrLf,
                },
            }
        }
    }

    /// Moves `n` examined bytes into the body (a no-op until the first stuffed dot).
    fn keep(&mut self, buf: &mut BytesMut, n: usize) {
        if self.failure.is_none() {
            if self.written != self.scanned {
                buf.copy_within(self.scanned..self.scanned + n, self.written);
            }
            self.written += n;
            if self.written > self.max_size {
                self.fail(DataFailure::TooBig);
            }
        }
        self.scanned += n;
    }

    fn check_line(&mut self) {
        if self.line_len > self.max_line {
            self.fail(DataFailure::LineTooLong);
        }
    }

    /// Refuses the message from now on: the rest is read and dropped, and the terminator
    /// produces [`DataEvent::Refused`].
    /// Returns false if the message was already refused.
    pub fn refuse(&mut self, f: DataFailure) -> bool {
        let fresh = self.failure.is_none();
        self.fail(f);
        fresh
    }

    fn fail(&mut self, f: DataFailure) {
        if self.failure.is_none() {
            self.failure = Some(f);
        }
    }

    fn need_more(&mut self, buf: &mut BytesMut) -> DataEvent {
        if self.failure.is_some() {
            // Refused messages are not held: drop what was examined.
            buf.advance(self.scanned);
            self.scanned = 0;
            self.written = 0;
        }
        DataEvent::NeedMore
    }

    /// Called with `scanned` at the "." of the terminator.
    fn finish(&mut self, buf: &mut BytesMut) -> DataEvent {
        let end = self.scanned + 3;
        if let Some(f) = self.failure {
            buf.advance(end);
            return DataEvent::Refused(f);
        }
        let body = buf.split_to(self.written);
        buf.advance(end - self.written);
        DataEvent::End(body)
    }
}

/// Adds `content` to `parts` dot-stuffed for DATA (RFC 5321 4.5.2), as slices of the original
/// buffers (never a copy of the body), followed by the terminator.
///
/// The writer can never emit a line end other than CRLF, nor a line "." that was not a line of
/// the original: a bare CR or bare LF (which intake refuses, but an old spool or a bug could still
/// hold) is sent as CRLF, and the line after it is stuffed like any other. A line may span two
/// buffers, and so may a CRLF: the state ("at line start", "a CR ended the last buffer") is
/// carried across them.
pub fn dot_stuff(content: &[Bytes], parts: &mut Vec<Bytes>) {
    const CRLF: Bytes = Bytes::from_static(b"\r\n");
    let mut at_line_start = true;
    let mut pending_cr = false;
    for buf in content.iter().filter(|b| !b.is_empty()) {
        // `start..` is the run of `buf` not yet pushed; `i` the next octet to examine.
        let (mut start, mut i) = (0, 0);
        if std::mem::take(&mut pending_cr) {
            parts.push(CRLF);
            at_line_start = true;
            if buf[0] == b'\n' {
                (start, i) = (1, 1); // the CRLF was split across buffers
            }
        }
        while i < buf.len() {
            if at_line_start && buf[i] == b'.' {
                if i > start {
                    parts.push(buf.slice(start..i));
                }
                parts.push(Bytes::from_static(b"."));
                start = i;
            }
            at_line_start = false;
            let Some(n) = memchr::memchr2(b'\r', b'\n', &buf[i..]) else {
                i = buf.len();
                continue;
            };
            let j = i + n;
            match (buf[j], buf.get(j + 1)) {
                (b'\r', Some(b'\n')) => i = j + 2, // CRLF: stays in the run
                (b'\r', None) => {
                    // Held back: the next buffer says whether it is half of a CRLF.
                    if j > start {
                        parts.push(buf.slice(start..j));
                    }
                    pending_cr = true;
                    (start, i) = (buf.len(), buf.len());
                }
                _ => {
                    // A bare CR or bare LF: sent as CRLF.
                    if j > start {
                        parts.push(buf.slice(start..j));
                    }
                    parts.push(CRLF);
                    (start, i) = (j + 1, j + 1);
                }
            }
            at_line_start = true;
        }
        if start < buf.len() {
            parts.push(buf.slice(start..));
        }
    }
    if pending_cr {
        parts.push(CRLF);
        at_line_start = true;
    }
    // The terminator must start a line (RFC 5321 4.1.1.4).
    if !at_line_start {
        parts.push(CRLF);
    }
    parts.push(Bytes::from_static(b".\r\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (DataEvent, Vec<u8>) {
        let mut rx = DataReceiver::new(1 << 20, 1000);
        let mut buf = BytesMut::new();
        for (i, c) in chunks.iter().enumerate() {
            buf.extend_from_slice(c);
            let ev = rx.ingest(&mut buf);
            if ev != DataEvent::NeedMore {
                chunks[i + 1..].iter().for_each(|c| buf.extend_from_slice(c));
                return (ev, buf.to_vec());
            }
        }
        (DataEvent::NeedMore, buf.to_vec())
    }

    fn body(ev: DataEvent) -> Vec<u8> {
        match ev {
            DataEvent::End(b) => b.to_vec(),
            other => panic!("expected End, got {other:?}"),
        }
    }

    /// RFC 5321 4.5.2: transparency, and the end of mail data indicator of 4.1.1.4.
    #[test]
    fn rfc5321_4_5_2_dot_unstuffing_and_end() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            (b".\r\n", b"", b""),
            (b"a\r\n.\r\n", b"a\r\n", b""),
            (b"a\r\n..b\r\n.\r\nQUIT\r\n", b"a\r\n.b\r\n", b"QUIT\r\n"),
            (b"..\r\n.\r\n", b".\r\n", b""),
            (b".x\r\n.\r\n", b"x\r\n", b""),
            (b"a.\r\n.b.\r\n.\r\n", b"a.\r\nb.\r\n", b""),
            (
                b"Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\n",
                b"Subject: x\r\n\r\nbody\r\n",
                b"MAIL FROM:<>\r\n",
            ),
        ];
        for (input, want_body, want_rest) in cases {
            let (ev, rest) = run(&[input]);
            assert_eq!(body(ev), *want_body, "{}", String::from_utf8_lossy(input));
            assert_eq!(rest, *want_rest);
        }
    }

    /// Every split point of the input gives the same result as one piece.
    #[test]
    fn split_reads_agree() {
        let input: &[u8] = b"a\r\n..b\r\n.c\r\n\r\n..\r\n.\r\nNOOP\r\n";
        let (whole, _) = run(&[input]);
        let whole = body(whole);
        for i in 0..input.len() {
            for j in i..input.len() {
                let (ev, rest) = run(&[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(body(ev), whole, "split at {i},{j}");
                assert_eq!(rest, b"NOOP\r\n");
            }
        }
    }

    /// SMTP smuggling variants: none may end the message or be accepted.
    #[test]
    fn rfc5321_2_3_8_bare_cr_and_lf_are_refused() {
        let cases: &[&[u8]] = &[
            b"a\n.\n",
            b"a\r.\r",
            b"a\r\n.\n",
            b"a\n.\r\n",
            b"a\r\n.\r",
            b"a\r.\r\n",
            b"line with bare\nLF\r\n.\r\n",
            b"line with bare\rCR\r\n.\r\n",
            b"\n",
            b".\n",
        ];
        for input in cases {
            // Even when followed by a proper terminator, the message is refused.
            let mut full = input.to_vec();
            full.extend_from_slice(b"\r\n.\r\n");
            let (ev, _) = run(&[&full]);
            assert_eq!(ev, DataEvent::BareCrLf, "{:?}", String::from_utf8_lossy(input));
        }
        // A CR at a read boundary waits for its successor instead of deciding early.
        assert_eq!(run(&[b"abc\r"]).0, DataEvent::NeedMore);
        assert_eq!(body(run(&[b"abc\r", b"\n.\r\n"]).0), b"abc\r\n");
    }

    #[test]
    fn size_and_line_limits_refuse_but_keep_framing() {
        let mut rx = DataReceiver::new(10, 1000);
        let mut buf = BytesMut::from(&b"0123456789abc\r\n"[..]);
        assert_eq!(rx.ingest(&mut buf), DataEvent::NeedMore);
        assert!(buf.is_empty(), "a refused body is not held");
        buf.extend_from_slice(b"more\r\n.\r\nQUIT\r\n");
        assert_eq!(rx.ingest(&mut buf), DataEvent::Refused(DataFailure::TooBig));
        assert_eq!(&buf[..], b"QUIT\r\n");

        let long = format!("{}\r\n.\r\n", "x".repeat(999));
        assert_eq!(run(&[long.as_bytes()]).0, DataEvent::Refused(DataFailure::LineTooLong));
        let ok = format!("{}\r\n.\r\n", "x".repeat(998));
        assert_eq!(body(run(&[ok.as_bytes()]).0).len(), 1000);
    }

    #[test]
    fn dot_stuffing_round_trips() {
        let bodies: &[&[u8]] = &[b"", b"a\r\n", b".\r\n", b"..x\r\n.\r\nb.\r\n", b"x\r\n.y\r\n"];
        for b in bodies {
            // Split the content at every position: stuffing must not depend on buffer edges.
            for cut in 0..=b.len() {
                let content = [
                    bytes::Bytes::copy_from_slice(&b[..cut]),
                    bytes::Bytes::copy_from_slice(&b[cut..]),
                ];
                let mut parts = Vec::new();
                dot_stuff(&content, &mut parts);
                let wire: Vec<u8> = parts.concat();
                let (ev, rest) = run(&[&wire]);
                assert_eq!(body(ev), *b);
                assert!(rest.is_empty());
            }
            let mut parts = Vec::new();
            dot_stuff(&[bytes::Bytes::copy_from_slice(b)], &mut parts);
            let wire: Vec<u8> = parts.concat();
            let (ev, rest) = run(&[&wire]);
            assert_eq!(body(ev), *b);
            assert!(rest.is_empty());
        }
    }

    /// The writer never emits a line end other than CRLF, nor a "." line that was not a line of
    /// the original, whatever the stored content holds and wherever the buffers are cut: what a
    /// strict DATA reader gets back is the content with bare CR and LF made CRLF.
    #[test]
    fn dot_stuffing_never_emits_a_bare_line_end_or_a_smuggled_terminator() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r.\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
            (b"a\n.\nMAIL FROM:<x>\n", b"a\r\n.\r\nMAIL FROM:<x>\r\n"),
            (b"a\r\n.\r\r\n", b"a\r\n.\r\n\r\n"),
            (b"a\r\n.\n", b"a\r\n.\r\n"),
            (b"x\r", b"x\r\n"),
            (b"\n.\n", b"\r\n.\r\n"),
        ];
        for (stored, want) in cases {
            for cut in 0..=stored.len() {
                let content = [
                    bytes::Bytes::copy_from_slice(&stored[..cut]),
                    bytes::Bytes::copy_from_slice(&stored[cut..]),
                ];
                let mut parts = Vec::new();
                dot_stuff(&content, &mut parts);
                let wire: Vec<u8> = parts.concat();
                // Only CRLF line ends on the wire.
                for (k, &c) in wire.iter().enumerate() {
                    if c == b'\r' {
                        assert_eq!(wire.get(k + 1), Some(&b'\n'), "bare CR in {wire:?}");
                    }
                    if c == b'\n' {
                        assert_eq!(wire[k - 1], b'\r', "bare LF in {wire:?}");
                    }
                }
                let (ev, rest) = run(&[&wire]);
                assert_eq!(body(ev), *want, "{stored:?} cut at {cut}");
                assert!(rest.is_empty(), "a second message was smuggled: {rest:?}");
            }
        }
    }
}
