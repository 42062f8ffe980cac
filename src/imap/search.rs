//! SEARCH (RFC 3501 6.4.4), every key: flags, sizes, sequence and UID sets from the snapshot;
//! dates against the internal date (BEFORE/ON/SINCE) or the Date: field (SENT*); header and
//! text keys as case-insensitive substrings of the raw header value or its decoded form, and
//! of the raw or decoded body; FROM/TO/CC/BCC also against each parsed address
//! (`user@domain` and the display name, comments and folding removed, as ENVELOPE reads them).
//!
//! A message file is read only when a key needs its content, and then read, parsed and
//! lowered once per SEARCH however many keys look at it (20,000 `NOT TEXT` keys cost 20,000
//! substring searches, not 20,000 parses).

use std::path::Path;

use chrono::Datelike;
use imap_codec::imap_types::core::{AString, NString, Tag};
use imap_codec::imap_types::response::Data;
use imap_codec::imap_types::search::SearchKey;

use super::state::{Session, contains, nz};
use crate::local::Maildir;
use crate::local::keywords::Keywords;
use crate::local::mailstore::{MessageInfo, flag};

impl Session {
    pub(super) fn search(
        &mut self,
        tag: &Tag<'_>,
        charset: Option<&str>,
        key: &SearchKey<'_>,
        uid: bool,
    ) {
        if let Some(c) = charset
            && !["US-ASCII", "UTF-8"].iter().any(|k| k.eq_ignore_ascii_case(c))
        {
            return self.no(tag, "[BADCHARSET (US-ASCII UTF-8)] Unsupported charset");
        }
        if key_count(key, MAX_KEYS + 1) > MAX_KEYS {
            return self.no(tag, "[LIMIT] Too many search keys");
        }
        let Some(v) = self.view() else { return };
        let msgs = &v.snapshot.messages;
        let (n, largest_uid) = (msgs.len() as u32, msgs.last().map_or(0, |m| m.uid));
        let mut hits = Vec::new();
        let started = std::time::Instant::now();
        for (i, m) in msgs.iter().enumerate() {
            if started.elapsed() > SEARCH_BUDGET {
                return self.no(tag, "[LIMIT] SEARCH took too long; narrow it down");
            }
            let mut c = Candidate::new(Some(&v.folder), m, i as u32 + 1, n, largest_uid);
            c.recent = v.is_recent(m.uid);
            c.keywords = Some(&v.keywords);
            if c.matches(key) {
                hits.push(nz(if uid { m.uid } else { i as u32 + 1 }));
            }
        }
        self.data(Data::Search(hits));
        self.ok(tag, None, "SEARCH completed");
    }
}

/// Search keys one SEARCH may hold (a UID or sequence set is one key, however long).
const MAX_KEYS: usize = 1000;
/// The time one SEARCH may take (a text search of a large mailbox takes seconds; an
/// amplification attempt is cut).
const SEARCH_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

/// The criteria (leaf keys: NOT, OR and lists only combine them) in `key`, counting no
/// further than `stop`.
fn key_count(key: &SearchKey<'_>, stop: usize) -> usize {
    let mut count = 0;
    let mut todo = vec![key];
    while let Some(k) = todo.pop() {
        match k {
            SearchKey::And(keys) => todo.extend(keys.as_ref().iter()),
            SearchKey::Or(a, b) => todo.extend([a.as_ref(), b.as_ref()]),
            SearchKey::Not(k) => todo.push(k),
            _ => count += 1,
        }
        if count >= stop {
            return count;
        }
    }
    count
}

/// One message being searched; its file is read and parsed on first need, once.
struct Candidate<'a> {
    folder: Option<&'a Maildir>,
    m: &'a MessageInfo,
    /// \Recent to the searching session.
    recent: bool,
    /// The folder's keyword names.
    keywords: Option<&'a Keywords>,
    seq: u32,
    n: u32,
    largest_uid: u32,
    header: Option<HeaderText>,
    text: Option<BodyText>,
    raw: Option<Vec<u8>>,
}

/// A header field as SEARCH compares it, lowered.
struct Field {
    name: String,
    /// The value as written, unfolded.
    raw: String,
    /// Encoded words decoded.
    decoded: String,
    /// For address fields: `user@domain` and the display name of each address.
    addresses: Vec<String>,
}

struct HeaderText {
    fields: Vec<Field>,
    sent: Option<chrono::NaiveDate>,
}

/// What BODY and TEXT search, lowered.
struct BodyText {
    header: String,
    body: String,
    /// The decoded text of each part.
    parts: Vec<String>,
}

fn lower(s: &AString<'_>) -> String {
    String::from_utf8_lossy(s.as_ref()).to_lowercase()
}

fn lower_bytes(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_lowercase()
}

fn date_of(secs: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().date_naive()
}

fn nstring_bytes<'a>(n: &'a NString<'_>) -> &'a [u8] {
    n.0.as_ref().map_or(&[], |s| s.as_ref())
}

/// `user@domain` and the display name of each address in an address field's raw value, as
/// ENVELOPE parses them (comments, folding and quoting removed).
fn addresses_of(raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for a in super::mime::parse_addresses(raw) {
        let (mailbox, host) = (nstring_bytes(&a.mailbox), nstring_bytes(&a.host));
        if !mailbox.is_empty() && !host.is_empty() {
            out.push(format!("{}@{}", lower_bytes(mailbox), lower_bytes(host)));
        }
        let name = nstring_bytes(&a.name);
        if !name.is_empty() {
            out.push(lower_bytes(name));
        }
    }
    out
}

const ADDRESS_FIELDS: [&str; 7] = ["from", "to", "cc", "bcc", "sender", "reply-to", "resent-from"];

impl<'a> Candidate<'a> {
    fn new(
        folder: Option<&'a Maildir>,
        m: &'a MessageInfo,
        seq: u32,
        n: u32,
        largest_uid: u32,
    ) -> Candidate<'a> {
        let recent = m.recent;
        Candidate {
            folder,
            m,
            recent,
            keywords: None,
            seq,
            n,
            largest_uid,
            header: None,
            text: None,
            raw: None,
        }
    }

    /// The message's octets (empty if it is gone); found by its unique name if another
    /// session renamed the file since the snapshot.
    fn raw(&mut self) -> &[u8] {
        if self.raw.is_none() {
            let read = match self.folder {
                Some(f) => f.with_file(self.m, |p| std::fs::read(p)).map(|(b, _)| b),
                None => std::fs::read(Path::new(&self.m.path)),
            };
            self.raw = Some(read.unwrap_or_default());
        }
        self.raw.as_deref().unwrap_or_default()
    }

    fn header_text(&mut self) -> &HeaderText {
        if self.header.is_none() {
            let raw = self.raw();
            let h = match mail_parser::MessageParser::new().parse_headers(raw) {
                None => HeaderText { fields: Vec::new(), sent: None },
                Some(msg) => {
                    let root = msg.root();
                    let fields = root
                        .headers()
                        .iter()
                        .map(|h| {
                            let name = h.raw_name().to_ascii_lowercase();
                            let unfolded: Vec<u8> = h
                                .raw_value()
                                .iter()
                                .copied()
                                .filter(|&b| b != b'\r' && b != b'\n')
                                .collect();
                            let addresses = match ADDRESS_FIELDS.contains(&name.as_str()) {
                                true => addresses_of(&unfolded),
                                false => Vec::new(),
                            };
                            Field {
                                raw: lower_bytes(&unfolded),
                                decoded: h
                                    .value()
                                    .as_text()
                                    .map(str::to_lowercase)
                                    .unwrap_or_default(),
                                name,
                                addresses,
                            }
                        })
                        .collect();
                    let sent = root.date().and_then(|d| {
                        chrono::NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)
                            .filter(|n| n.year() == d.year as i32)
                    });
                    HeaderText { fields, sent }
                }
            };
            self.header = Some(h);
        }
        self.header.as_ref().expect("set above")
    }

    fn body_text(&mut self) -> &BodyText {
        if self.text.is_none() {
            let raw = self.raw();
            let t = match mail_parser::MessageParser::new().parse(raw) {
                None => BodyText { header: String::new(), body: String::new(), parts: Vec::new() },
                Some(msg) => {
                    let root = msg.root();
                    let part = root.root_part();
                    let (whole, body) = (part.raw(), part.raw_body());
                    let header = &whole[..whole.len().saturating_sub(body.len())];
                    BodyText {
                        header: lower_bytes(header),
                        body: lower_bytes(body),
                        parts: msg
                            .parts()
                            .filter_map(|p| p.text().map(|t| t.to_lowercase()))
                            .collect(),
                    }
                }
            };
            self.text = Some(t);
        }
        self.text.as_ref().expect("set above")
    }

    fn matches(&mut self, key: &SearchKey<'_>) -> bool {
        let has = |bit: u8| self.m.flags & bit != 0;
        match key {
            SearchKey::All => true,
            SearchKey::And(keys) => keys.as_ref().iter().all(|k| self.matches(k)),
            SearchKey::Or(a, b) => self.matches(a) || self.matches(b),
            SearchKey::Not(k) => !self.matches(k),
            SearchKey::SequenceSet(s) => contains(s, self.seq, self.n),
            SearchKey::Uid(s) => contains(s, self.m.uid, self.largest_uid),
            SearchKey::Seen => has(flag::SEEN),
            SearchKey::Unseen => !has(flag::SEEN),
            SearchKey::Answered => has(flag::ANSWERED),
            SearchKey::Unanswered => !has(flag::ANSWERED),
            SearchKey::Flagged => has(flag::FLAGGED),
            SearchKey::Unflagged => !has(flag::FLAGGED),
            SearchKey::Deleted => has(flag::DELETED),
            SearchKey::Undeleted => !has(flag::DELETED),
            SearchKey::Draft => has(flag::DRAFT),
            SearchKey::Undraft => !has(flag::DRAFT),
            SearchKey::Recent => self.recent,
            SearchKey::Old => !self.recent,
            SearchKey::New => self.recent && !has(flag::SEEN),
            SearchKey::Keyword(k) => self.has_keyword(k.as_ref()),
            SearchKey::Unkeyword(k) => !self.has_keyword(k.as_ref()),
            SearchKey::Larger(x) => self.m.size > *x as u64,
            SearchKey::Smaller(x) => self.m.size < *x as u64,
            SearchKey::Before(d) => date_of(self.m.internal_date) < *d.as_ref(),
            SearchKey::On(d) => date_of(self.m.internal_date) == *d.as_ref(),
            SearchKey::Since(d) => date_of(self.m.internal_date) >= *d.as_ref(),
            SearchKey::SentBefore(d) => self.header_text().sent.is_some_and(|s| s < *d.as_ref()),
            SearchKey::SentOn(d) => self.header_text().sent.is_some_and(|s| s == *d.as_ref()),
            SearchKey::SentSince(d) => self.header_text().sent.is_some_and(|s| s >= *d.as_ref()),
            SearchKey::From(s) => self.header("from", &lower(s)),
            SearchKey::To(s) => self.header("to", &lower(s)),
            SearchKey::Cc(s) => self.header("cc", &lower(s)),
            SearchKey::Bcc(s) => self.header("bcc", &lower(s)),
            SearchKey::Subject(s) => self.header("subject", &lower(s)),
            SearchKey::Header(name, s) => {
                let name = String::from_utf8_lossy(name.as_ref()).to_ascii_lowercase();
                self.header(&name, &lower(s))
            }
            SearchKey::Body(s) => self.text(&lower(s), false),
            SearchKey::Text(s) => self.text(&lower(s), true),
        }
    }

    fn has_keyword(&self, name: &str) -> bool {
        let index = self.keywords.and_then(|k| k.index(name));
        index.is_some_and(|i| self.m.keywords & (1 << i) != 0)
    }

    /// Whether a field named `name` (lowered) contains `needle` (raw, decoded, or in one of
    /// its addresses); an empty needle asks only that the field exists.
    fn header(&mut self, name: &str, needle: &str) -> bool {
        self.header_text().fields.iter().filter(|f| f.name == name).any(|f| {
            f.raw.contains(needle)
                || f.decoded.contains(needle)
                || f.addresses.iter().any(|a| a.contains(needle))
        })
    }

    /// BODY (`with_header` false) or TEXT: the raw body or the decoded text of its parts.
    fn text(&mut self, needle: &str, with_header: bool) -> bool {
        let t = self.body_text();
        (with_header && t.header.contains(needle))
            || t.body.contains(needle)
            || t.parts.iter().any(|p| p.contains(needle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::sequence::SequenceSet;

    fn info(path: &Path, flags: u8, recent: bool, size: u64) -> MessageInfo {
        MessageInfo {
            uid: 7,
            unique: "u".into(),
            path: path.into(),
            size,
            flags,
            keywords: 0,
            internal_date: 1_700_000_000, // 2023-11-14
            recent,
        }
    }

    fn hit(key: SearchKey<'static>, m: &MessageInfo) -> bool {
        Candidate::new(None, m, 1, 1, 7).matches(&key)
    }

    fn a(s: &str) -> AString<'static> {
        AString::try_from(s.to_string()).unwrap()
    }

    fn day(y: i32, m: u32, d: u32) -> imap_codec::imap_types::datetime::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap().try_into().unwrap()
    }

    #[test]
    fn flag_and_size_keys_combine() {
        let p = Path::new("/nonexistent");
        let seen_big = info(p, flag::SEEN, false, 5000);
        let new_small = info(p, 0, true, 10);
        assert!(hit(SearchKey::New, &new_small));
        assert!(!hit(SearchKey::New, &seen_big));
        let or = SearchKey::Or(Box::new(SearchKey::Larger(1000)), Box::new(SearchKey::Recent));
        assert!(hit(or.clone(), &seen_big));
        assert!(!hit(SearchKey::Not(Box::new(or)), &new_small));
        assert!(hit(SearchKey::Uid(SequenceSet::try_from("5:7").unwrap()), &seen_big));
        assert!(hit(SearchKey::On(day(2023, 11, 14)), &seen_big));
        assert!(hit(SearchKey::Before(day(2023, 11, 15)), &seen_big));
        assert!(!hit(SearchKey::Since(day(2023, 11, 15)), &seen_big));
    }

    #[test]
    fn header_text_and_sent_date_keys_read_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::write(
            &p,
            "Date: Tue, 3 Jan 2023 23:30:00 -0800\r\nFrom: Ann <ann@example.com>\r\n\
             Subject: =?utf-8?q?Caf=C3=A9?= menu\r\nX-Tag: Alpha\r\n\r\nToday: soup.\r\n",
        )
        .unwrap();
        let m = info(&p, 0, false, 10);
        assert!(hit(SearchKey::From(a("ANN@example")), &m));
        assert!(hit(SearchKey::Subject(a("café")), &m), "decoded");
        assert!(hit(SearchKey::Subject(a("=?utf-8?q")), &m), "raw");
        assert!(hit(SearchKey::Header(a("x-tag"), a("alp")), &m));
        assert!(hit(SearchKey::Header(a("X-Tag"), a("")), &m));
        assert!(!hit(SearchKey::Header(a("X-None"), a("")), &m));
        assert!(hit(SearchKey::Body(a("SOUP")), &m));
        assert!(!hit(SearchKey::Body(a("alpha")), &m));
        assert!(hit(SearchKey::Text(a("alpha")), &m));
        assert!(hit(SearchKey::SentOn(day(2023, 1, 3)), &m), "the date as written");
        assert!(hit(SearchKey::SentSince(day(2023, 1, 3)), &m));
        assert!(!hit(SearchKey::SentBefore(day(2023, 1, 3)), &m));
        assert!(!hit(SearchKey::Keyword("x".try_into().unwrap()), &m));
    }

    /// FROM/TO/CC/BCC read the addresses as ENVELOPE does: comments, spaces and folding
    /// between the parts of an address do not hide it.
    #[test]
    fn address_keys_match_parsed_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::write(
            &p,
            "From: <user (comment)@ (comment) domain.org>\r\nTo: Ann (x) <ann @\r\n example.net>\r\n\
             Cc: \"Doe, J.\" <j@d.example>\r\nSubject: s\r\n\r\nx\r\n",
        )
        .unwrap();
        let m = info(&p, 0, false, 10);
        assert!(hit(SearchKey::From(a("user@domain.org")), &m));
        assert!(hit(SearchKey::To(a("ANN@example.net")), &m));
        assert!(hit(SearchKey::Cc(a("doe, j.")), &m), "the display name");
        assert!(!hit(SearchKey::From(a("ann@example.net")), &m));
        assert!(!hit(SearchKey::Bcc(a("")), &m), "no Bcc field");
    }
}
