//! SEARCH (RFC 3501 6.4.4), every key: flags, sizes, sequence and UID sets from the snapshot;
//! dates against the internal date (BEFORE/ON/SINCE) or the Date: field (SENT*); header and
//! text keys as case-insensitive substrings of the raw header value or its decoded form, and
//! of the raw or decoded body. A message file is read only when a key needs its content.

use std::path::Path;

use chrono::Datelike;
use imap_codec::imap_types::core::{AString, Tag};
use imap_codec::imap_types::response::Data;
use imap_codec::imap_types::search::SearchKey;

use super::state::{Session, contains, nz};
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
        let Some(v) = self.view() else { return };
        let msgs = &v.snapshot.messages;
        let (n, largest_uid) = (msgs.len() as u32, msgs.last().map_or(0, |m| m.uid));
        let mut hits = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let mut c = Candidate { m, seq: i as u32 + 1, n, largest_uid, content: None };
            if c.matches(key) {
                hits.push(nz(if uid { m.uid } else { i as u32 + 1 }));
            }
        }
        self.data(Data::Search(hits));
        self.ok(tag, None, "SEARCH completed");
    }
}

/// One message being searched; its file is read on first need.
struct Candidate<'a> {
    m: &'a MessageInfo,
    seq: u32,
    n: u32,
    largest_uid: u32,
    content: Option<Vec<u8>>,
}

fn lower(s: &AString<'_>) -> String {
    String::from_utf8_lossy(s.as_ref()).to_lowercase()
}

fn date_of(secs: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().date_naive()
}

impl Candidate<'_> {
    fn raw(&mut self) -> &[u8] {
        if self.content.is_none() {
            self.content = Some(std::fs::read(Path::new(&self.m.path)).unwrap_or_default());
        }
        self.content.as_deref().unwrap_or_default()
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
            SearchKey::Recent => self.m.recent,
            SearchKey::Old => !self.m.recent,
            SearchKey::New => self.m.recent && !has(flag::SEEN),
            // Keywords are not kept (PERMANENTFLAGS lists the system flags only).
            SearchKey::Keyword(_) => false,
            SearchKey::Unkeyword(_) => true,
            SearchKey::Larger(x) => self.m.size > *x as u64,
            SearchKey::Smaller(x) => self.m.size < *x as u64,
            SearchKey::Before(d) => date_of(self.m.internal_date) < *d.as_ref(),
            SearchKey::On(d) => date_of(self.m.internal_date) == *d.as_ref(),
            SearchKey::Since(d) => date_of(self.m.internal_date) >= *d.as_ref(),
            SearchKey::SentBefore(d) => self.sent().is_some_and(|s| s < *d.as_ref()),
            SearchKey::SentOn(d) => self.sent().is_some_and(|s| s == *d.as_ref()),
            SearchKey::SentSince(d) => self.sent().is_some_and(|s| s >= *d.as_ref()),
            SearchKey::From(s) => self.header("From", &lower(s)),
            SearchKey::To(s) => self.header("To", &lower(s)),
            SearchKey::Cc(s) => self.header("Cc", &lower(s)),
            SearchKey::Bcc(s) => self.header("Bcc", &lower(s)),
            SearchKey::Subject(s) => self.header("Subject", &lower(s)),
            SearchKey::Header(name, s) => {
                let name = String::from_utf8_lossy(name.as_ref()).into_owned();
                self.header(&name, &lower(s))
            }
            SearchKey::Body(s) => self.text(&lower(s), false),
            SearchKey::Text(s) => self.text(&lower(s), true),
        }
    }

    /// The date of the Date: field as written (time and zone disregarded, RFC 3501).
    fn sent(&mut self) -> Option<chrono::NaiveDate> {
        let raw = self.raw();
        let msg = mail_parser::MessageParser::new().parse_headers(raw)?;
        let d = msg.root().date()?;
        chrono::NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)
            .filter(|n| n.year() == d.year as i32)
    }

    /// Whether a field named `name` contains `needle` (raw or decoded); an empty needle asks
    /// only that the field exists.
    fn header(&mut self, name: &str, needle: &str) -> bool {
        let raw = self.raw();
        let Some(msg) = mail_parser::MessageParser::new().parse_headers(raw) else { return false };
        let root = msg.root();
        let headers = root.headers();
        headers.iter().filter(|h| h.raw_name().eq_ignore_ascii_case(name)).any(|h| {
            let unfolded: Vec<u8> =
                h.raw_value().iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
            let decoded = match h.value().as_text() {
                Some(t) => t.to_lowercase(),
                None => String::new(),
            };
            String::from_utf8_lossy(&unfolded).to_lowercase().contains(needle)
                || decoded.contains(needle)
        })
    }

    /// BODY (`with_header` false) or TEXT: the raw body or the decoded text of its parts.
    fn text(&mut self, needle: &str, with_header: bool) -> bool {
        let raw = self.raw();
        let Some(msg) = mail_parser::MessageParser::new().parse(raw) else { return false };
        let root = msg.root();
        let part = root.root_part();
        let searched = if with_header { part.raw() } else { part.raw_body() };
        if String::from_utf8_lossy(searched).to_lowercase().contains(needle) {
            return true;
        }
        msg.parts().any(|p| p.text().is_some_and(|t| t.to_lowercase().contains(needle)))
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
            internal_date: 1_700_000_000, // 2023-11-14
            recent,
        }
    }

    fn hit(key: SearchKey<'static>, m: &MessageInfo) -> bool {
        Candidate { m, seq: 1, n: 1, largest_uid: 7, content: None }.matches(&key)
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
}
