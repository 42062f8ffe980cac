//! The octets of `BODY[section]<partial>`. Sections of the whole message (`BODY[]`,
//! `[HEADER]`, `[TEXT]`, `[HEADER.FIELDS ...]`) are read from the file, only the range asked
//! for. Part sections (`BODY[1.2]`, `.MIME`, `.HEADER`, `.TEXT`) need the MIME tree: the
//! message is parsed once, where every part lies in the file is kept (the layout), and later
//! part fetches of that message read only their range. A client that fetches BODYSTRUCTURE,
//! then each part of a 20 MB message, reads the file once, not once per part.

use std::num::NonZeroU32;
use std::ops::Range;
use std::path::Path;

use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::fetch::{Part, Section};

use super::mime::{self, PartRange};
use crate::local::mailstore::{self, MessageInfo};

/// Reads the whole message once per FETCH item list.
pub(super) fn load<'a>(whole: &'a mut Option<Vec<u8>>, path: &Path) -> std::io::Result<&'a [u8]> {
    if whole.is_none() {
        *whole = Some(std::fs::read(path)?);
    }
    Ok(whole.as_deref().unwrap_or_default())
}

/// `len` octets from `start` of the message: from the copy in memory if this FETCH read it,
/// else from the file.
fn read(whole: &Option<Vec<u8>>, path: &Path, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
    match whole {
        Some(w) => {
            let s = (start as usize).min(w.len());
            let e = s.saturating_add(len.min(usize::MAX as u64) as usize).min(w.len());
            Ok(w[s..e].to_vec())
        }
        None => mailstore::read_range(path, start, len),
    }
}

/// The `<offset.length>` slice of `v`.
fn slice(v: Vec<u8>, partial: Option<(u32, NonZeroU32)>) -> Vec<u8> {
    let Some((o, n)) = partial else { return v };
    let s = (o as usize).min(v.len());
    let e = s.saturating_add(n.get() as usize).min(v.len());
    v[s..e].to_vec()
}

/// BODY[section]<partial> of the whole message: all of it, its header, selected header fields
/// or its text. Partial ranges read only their octets from the file.
pub(super) fn section_bytes(
    path: &Path,
    section: Option<&Section<'_>>,
    partial: Option<(u32, NonZeroU32)>,
) -> std::io::Result<Vec<u8>> {
    let (start, len) = match partial {
        Some((o, n)) => (o as u64, n.get() as u64),
        None => (0, u64::MAX),
    };
    match section {
        None => mailstore::read_range(path, start, len),
        Some(Section::Header(None)) => {
            let h = mailstore::header_len(path)?;
            Ok(slice(mailstore::read_range(path, 0, h)?, partial))
        }
        Some(Section::Text(None)) => {
            let h = mailstore::header_len(path)?;
            mailstore::read_range(path, h.saturating_add(start), len)
        }
        Some(Section::HeaderFields(None, names)) => {
            let h = mailstore::header_len(path)?;
            let header = mailstore::read_range(path, 0, h)?;
            Ok(slice(header_fields(&header, names.as_ref(), true), partial))
        }
        Some(Section::HeaderFieldsNot(None, names)) => {
            let h = mailstore::header_len(path)?;
            let header = mailstore::read_range(path, 0, h)?;
            Ok(slice(header_fields(&header, names.as_ref(), false), partial))
        }
        // Sections of a part go through `part_bytes`.
        Some(_) => Ok(Vec::new()),
    }
}

/// The header fields (with their continuation lines) whose names are (`keep`) or are not in
/// `names`, then the blank line.
fn header_fields(header: &[u8], names: &[AString<'_>], keep: bool) -> Vec<u8> {
    let wanted: Vec<String> =
        names.iter().map(|n| String::from_utf8_lossy(n.as_ref()).to_ascii_lowercase()).collect();
    let mut out = Vec::new();
    let mut include = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
            include = wanted.contains(&name) == keep;
        }
        if include {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The part path of a section that names one (`BODY[1.2]`, `BODY[2.MIME]`, `BODY[3.TEXT]`).
pub(super) fn section_part<'s>(section: &'s Section<'_>) -> Option<&'s Part> {
    match section {
        Section::Part(p) | Section::Mime(p) => Some(p),
        Section::Header(p) | Section::Text(p) => p.as_ref(),
        Section::HeaderFields(p, _) | Section::HeaderFieldsNot(p, _) => p.as_ref(),
    }
}

/// Where each part of a message lies in its file. mail-parser reads at most 10,000 parts
/// (its default limit, which BODYSTRUCTURE shares), so a hostile message costs at most that.
pub(super) struct Layout {
    parts: Vec<(Vec<u32>, PartRange)>,
}

impl Layout {
    fn of(raw: &[u8]) -> std::io::Result<Layout> {
        mime::parse(raw, |m| Layout { parts: mime::part_ranges(&m.root(), raw) })
    }

    fn find(&self, path: &[u32]) -> Option<&PartRange> {
        let exact = |p: &[u32]| self.parts.iter().find(|(q, _)| q == p).map(|(_, r)| r);
        exact(path).or_else(|| match path.split_last() {
            Some((1, prefix)) => exact(prefix).filter(|r| r.leaf),
            _ => None,
        })
    }
}

/// The octets of a part section; empty when there is no such part (RFC 3501: a missing part
/// is an empty string, not an error).
pub(super) fn part_bytes(
    msg: &MessageInfo,
    part: &Part,
    section: Option<&Section<'_>>,
    partial: Option<(u32, NonZeroU32)>,
    whole: &mut Option<Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    let path: Vec<u32> = part.0.as_ref().iter().map(|n| n.get()).collect();
    let layout = layout_cache::get_or(&msg.unique, || Layout::of(load(whole, &msg.path)?))?;
    let Some(r) = layout.find(&path).cloned() else { return Ok(Vec::new()) };
    let nested_header = r.nested.as_ref().map(|(h, _)| h.clone());
    // The range to read, and for HEADER.FIELDS (NOT) which fields to keep.
    type Fields<'n> = Option<(&'n [AString<'n>], bool)>;
    let (range, fields): (Option<Range<usize>>, Fields<'_>) = match section {
        Some(Section::Mime(_)) => (Some(r.mime), None),
        Some(Section::Header(_)) => (nested_header, None),
        Some(Section::Text(_)) => (r.nested.map(|(_, t)| t), None),
        Some(Section::HeaderFields(_, names)) => (nested_header, Some((names.as_ref(), true))),
        Some(Section::HeaderFieldsNot(_, names)) => (nested_header, Some((names.as_ref(), false))),
        _ => (Some(r.body), None),
    };
    let Some(range) = range else { return Ok(Vec::new()) };
    let (start, len) = (range.start as u64, range.len() as u64);
    if let Some((names, keep)) = fields {
        let header = read(whole, &msg.path, start, len)?;
        return Ok(slice(header_fields(&header, names, keep), partial));
    }
    // Only the octets asked for, from the part's place in the file.
    let (offset, count) = partial.map_or((0, len), |(o, n)| (o as u64, n.get() as u64));
    let offset = offset.min(len);
    read(whole, &msg.path, start + offset, count.min(len - offset))
}

/// Layouts by message. A Maildir message never changes under its unique name, so an entry
/// never goes stale; the map is bounded by the parts it holds (emptied when full).
mod layout_cache {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};

    use super::Layout;

    /// About 100 octets a part: at most some tens of MB.
    const MAX_PARTS_HELD: usize = 200_000;

    struct Cache {
        layouts: HashMap<String, Arc<Layout>>,
        parts: usize,
    }

    static CACHE: LazyLock<Mutex<Cache>> =
        LazyLock::new(|| Mutex::new(Cache { layouts: HashMap::new(), parts: 0 }));

    pub fn get_or(
        unique: &str,
        make: impl FnOnce() -> std::io::Result<Layout>,
    ) -> std::io::Result<Arc<Layout>> {
        if let Some(l) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).layouts.get(unique) {
            return Ok(l.clone());
        }
        let layout = Arc::new(make()?);
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if cache.parts + layout.parts.len() > MAX_PARTS_HELD {
            cache.layouts.clear();
            cache.parts = 0;
        }
        cache.parts += layout.parts.len();
        if let Some(old) = cache.layouts.insert(unique.to_string(), layout.clone()) {
            cache.parts -= old.parts.len();
        }
        Ok(layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::core::NonEmptyVec;

    #[test]
    fn header_fields_keep_continuations_and_the_blank_line() {
        let h = b"Subject: one\r\n two\r\nFrom: a@b\r\nX-Long: x\r\n\ty\r\n\r\n";
        let names = [AString::try_from("subject").unwrap(), AString::try_from("X-LONG").unwrap()];
        assert_eq!(
            header_fields(h, &names, true),
            b"Subject: one\r\n two\r\nX-Long: x\r\n\ty\r\n\r\n".to_vec()
        );
        assert_eq!(header_fields(h, &names, false), b"From: a@b\r\n\r\n".to_vec());
    }

    fn part(path: &[u32]) -> Part {
        let numbers = path.iter().map(|&n| NonZeroU32::new(n).unwrap()).collect::<Vec<_>>();
        Part(NonEmptyVec::try_from(numbers).unwrap())
    }

    /// A message file in a temporary directory, as the snapshot describes it.
    fn stored(raw: &[u8]) -> (tempfile::TempDir, MessageInfo) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, raw).unwrap();
        let unique = format!("{}.test", crate::local::maildir::unique_token());
        let info = MessageInfo {
            uid: 1,
            unique,
            path,
            size: raw.len() as u64,
            flags: 0,
            keywords: 0,
            internal_date: 0,
            recent: false,
        };
        (dir, info)
    }

    const NESTED: &[u8] = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b--\r\n";

    #[test]
    fn part_sections_find_nested_parts() {
        let (_dir, msg) = stored(NESTED);
        let get = |p: &[u32], s: Option<Section<'static>>| {
            let bytes = part_bytes(&msg, &part(p), s.as_ref(), None, &mut None).unwrap();
            String::from_utf8(bytes).unwrap()
        };
        assert_eq!(get(&[1], None), "one");
        assert_eq!(get(&[1], Some(Section::Mime(part(&[1])))), "Content-Type: text/plain\r\n\r\n");
        assert_eq!(get(&[2], Some(Section::Header(Some(part(&[2]))))), "Subject: inner\r\n\r\n");
        assert_eq!(get(&[2], Some(Section::Text(Some(part(&[2]))))), "inner body");
        assert_eq!(get(&[2, 1], None), "inner body");
        assert_eq!(get(&[3], None), "", "a missing part is empty");
        let names = vec![AString::try_from("subject").unwrap()];
        let fields = Section::HeaderFields(Some(part(&[2])), names.try_into().unwrap());
        assert_eq!(get(&[2], Some(fields)), "Subject: inner\r\n\r\n");
        let (_dir, single) = stored(b"Subject: x\r\n\r\nbody\r\n");
        let bytes = part_bytes(&single, &part(&[1]), None, None, &mut None).unwrap();
        assert_eq!(bytes, b"body\r\n");
    }

    /// Part 1 of a part without parts is that part, only as the last number, and only for a
    /// part of a multipart (Dovecot's answers; the IMAP test compares them octet for octet).
    #[test]
    fn part_one_of_a_leaf_is_the_leaf() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: s\r\n\r\nsingle\r\n--b--\r\n";
        let (_dir, msg) = stored(raw);
        let get = |p: &[u32]| part_bytes(&msg, &part(p), None, None, &mut None).unwrap();
        assert_eq!(get(&[1, 1]), b"one");
        assert_eq!(get(&[1, 1, 1]), b"");
        assert_eq!(get(&[1, 2]), b"");
        assert_eq!(get(&[2, 1]), b"single", "a nested message's body, when not multipart");
        assert_eq!(get(&[2, 1, 1]), b"", "that is the nested message, not a part of its own");
        let (_dir, single) = stored(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(part_bytes(&single, &part(&[1, 1]), None, None, &mut None).unwrap(), b"");
        let (_dir, no_boundary) = stored(b"Content-Type: multipart/mixed\r\n\r\ntext\r\n");
        let bytes = part_bytes(&no_boundary, &part(&[1]), None, None, &mut None).unwrap();
        assert_eq!(bytes, b"", "a multipart without a boundary has no parts");
    }

    /// Once the layout is known, a part fetch reads its range from the file: the message is
    /// not parsed again (proved by changing the file under the same name, which a Maildir
    /// never does, and reading the new octets at the old offsets).
    #[test]
    fn later_part_fetches_read_only_their_range() {
        let (_dir, msg) = stored(NESTED);
        let partial = Some((1, NonZeroU32::new(2).unwrap()));
        assert_eq!(part_bytes(&msg, &part(&[1]), None, partial, &mut None).unwrap(), b"ne");
        let changed: Vec<u8> = NESTED.iter().map(|b| b.to_ascii_uppercase()).collect();
        std::fs::write(&msg.path, &changed).unwrap();
        assert_eq!(part_bytes(&msg, &part(&[1]), None, partial, &mut None).unwrap(), b"NE");
        let text = Section::Text(Some(part(&[2])));
        let bytes = part_bytes(&msg, &part(&[2]), Some(&text), None, &mut None).unwrap();
        assert_eq!(bytes, b"INNER BODY", "part 2 from the layout found with part 1");
        // Past the end of a part: empty, and never another part's octets.
        let far = Some((100, NonZeroU32::new(5).unwrap()));
        assert_eq!(part_bytes(&msg, &part(&[1]), None, far, &mut None).unwrap(), b"");
        let long = Some((0, NonZeroU32::new(1000).unwrap()));
        assert_eq!(part_bytes(&msg, &part(&[1]), None, long, &mut None).unwrap(), b"ONE");
    }

    #[test]
    fn a_layout_lists_every_part_depth_first() {
        let layout = Layout::of(NESTED).unwrap();
        let paths: Vec<Vec<u32>> = layout.parts.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(paths, [vec![1], vec![2], vec![2, 1]]);
    }

    /// A message of 20,000 parts: the layout holds what the parser reads (10,000), no more.
    #[test]
    fn a_layout_is_bounded_by_the_parsers_part_limit() {
        let mut raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for i in 0..20_000 {
            raw.extend_from_slice(format!("--b\r\n\r\np{i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"--b--\r\n");
        let layout = Layout::of(&raw).unwrap();
        assert!(layout.parts.len() < 10_000, "{}", layout.parts.len());
        let (_dir, msg) = stored(&raw);
        let bytes = part_bytes(&msg, &part(&[9]), None, None, &mut None).unwrap();
        assert_eq!(bytes, b"p8");
    }
}
