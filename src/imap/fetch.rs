//! FETCH (RFC 3501 6.4.5): flags, sizes and dates from the snapshot; BODY[section] octets
//! from [`super::sections`] (only the range asked for); ENVELOPE (from the header),
//! BODYSTRUCTURE and BODY parse the message once and are kept encoded by message.

use std::num::NonZeroU32;

use imap_codec::imap_types::core::{Literal, NString, NonEmptyVec, Tag};
use imap_codec::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_codec::imap_types::response::Data;
use imap_codec::imap_types::sequence::SequenceSet;

use super::mime;
use super::sections::{load, part_bytes, section_bytes, section_part};
use super::state::{PendingFetch, Session, fetch_flags, internal_date, nz};
use crate::local::mailstore::{self, flag};
use structure_cache::Kind;

/// How much output a FETCH prepares before the driver sends it.
const OUTPUT_CHUNK: usize = 256 << 10;

impl Session {
    pub(super) fn fetch(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        names: MacroOrMessageDataItemNames<'static>,
        uid: bool,
    ) {
        use imap_codec::imap_types::fetch::Macro;
        let mut names = match names {
            MacroOrMessageDataItemNames::Macro(m) => {
                let mut v = vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                ];
                if matches!(m, Macro::All | Macro::Full) {
                    v.push(MessageDataItemName::Envelope);
                }
                if matches!(m, Macro::Full) {
                    v.push(MessageDataItemName::Body);
                }
                v
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(n) => n,
        };
        if uid && !names.contains(&MessageDataItemName::Uid) {
            names.insert(0, MessageDataItemName::Uid);
        }
        let todo = self.matching(set, uid).into();
        self.pending = Some(PendingFetch { tag: tag.clone(), todo, names });
        self.fetch_more();
    }

    /// Answers the pending FETCH until about [`OUTPUT_CHUNK`] octets are waiting to be sent (the
    /// driver sends them and calls again), so `FETCH 1:* BODY[]` on a mailbox of gigabytes
    /// never holds more than that in memory.
    pub fn fetch_more(&mut self) {
        let Some(mut p) = self.pending.take() else { return };
        while let Some(i) = p.todo.pop_front() {
            let mut answer = self.fetch_one(i, &p.names);
            // Renamed by another session's flag change: read it where it is now.
            if answer.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                && self.relocate(i)
            {
                answer = self.fetch_one(i, &p.names);
            }
            match answer {
                Ok((items, structure)) => self.fetch_response(nz(i as u32 + 1), items, &structure),
                // Gone since the snapshot (expunged by another session): skip it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return self.no(&p.tag, &format!("[SERVERBUG] {e}")),
            }
            if self.output_len() >= OUTPUT_CHUNK && !p.todo.is_empty() {
                self.pending = Some(p);
                return;
            }
        }
        self.ok(&p.tag, None, "FETCH completed");
    }

    /// `* n FETCH (...)`: the items imap-codec encodes, then the structure items.
    fn fetch_response(
        &mut self,
        seq: NonZeroU32,
        items: Vec<MessageDataItem<'static>>,
        structure: &[u8],
    ) {
        use imap_codec::encode::Encoder;
        let mut line = match NonEmptyVec::try_from(items) {
            Ok(items) => {
                let r =
                    imap_codec::imap_types::response::Response::Data(Data::Fetch { seq, items });
                imap_codec::ResponseCodec::default().encode(&r).dump()
            }
            Err(_) if structure.is_empty() => return,
            Err(_) => format!("* {seq} FETCH ()\r\n").into_bytes(),
        };
        // Before the closing ")\r\n"; an empty list loses the space that would lead.
        let at = line.len() - 3;
        let skip = usize::from(line[at - 1] == b'(');
        line.splice(at..at, structure[skip..].iter().copied());
        self.out_raw(&line);
    }

    fn fetch_one(
        &mut self,
        i: usize,
        names: &[MessageDataItemName<'_>],
    ) -> std::io::Result<(Vec<MessageDataItem<'static>>, Vec<u8>)> {
        let (msg, read_only, recent) = match self.view() {
            Some(v) => {
                let m = v.snapshot.messages[i].clone();
                let recent = v.is_recent(m.uid);
                (m, v.read_only, recent)
            }
            None => return Ok((Vec::new(), Vec::new())),
        };
        let mut items = Vec::new();
        let mut seen = false;
        // The whole message, read and parsed once, only for items that need its MIME tree.
        let mut whole: Option<Vec<u8>> = None;
        let mut flags_at = None;
        // ENVELOPE and BODY[STRUCTURE], encoded by `mime::wire` (each with a leading space).
        let mut structure = Vec::new();
        for n in names {
            let item = match n {
                MessageDataItemName::Uid => MessageDataItem::Uid(nz(msg.uid)),
                MessageDataItemName::Flags => {
                    // Filled in last: a body fetch in this command may set \Seen.
                    flags_at = Some(items.len());
                    continue;
                }
                MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(msg.size as u32),
                MessageDataItemName::InternalDate => {
                    MessageDataItem::InternalDate(internal_date(msg.internal_date))
                }
                MessageDataItemName::Rfc822 => {
                    seen = true;
                    MessageDataItem::Rfc822(nstring(mailstore::read_range(&msg.path, 0, u64::MAX)?))
                }
                MessageDataItemName::Rfc822Header => {
                    let h = mailstore::header_len(&msg.path)?;
                    MessageDataItem::Rfc822Header(nstring(mailstore::read_range(&msg.path, 0, h)?))
                }
                MessageDataItemName::Rfc822Text => {
                    seen = true;
                    let h = mailstore::header_len(&msg.path)?;
                    MessageDataItem::Rfc822Text(nstring(mailstore::read_range(
                        &msg.path,
                        h,
                        u64::MAX,
                    )?))
                }
                MessageDataItemName::Envelope
                | MessageDataItemName::BodyStructure
                | MessageDataItemName::Body => {
                    structure_item(&mut structure, n, &msg, &mut whole)?;
                    continue;
                }
                MessageDataItemName::BodyExt { section, partial, peek } => {
                    seen |= !peek;
                    let bytes = match section.as_ref().and_then(section_part) {
                        Some(part) => {
                            part_bytes(&msg, part, section.as_ref(), *partial, &mut whole)?
                        }
                        None => section_bytes(&msg.path, section.as_ref(), *partial)?,
                    };
                    MessageDataItem::BodyExt {
                        section: section.clone().map(to_static_section),
                        origin: partial.map(|(o, _)| o),
                        data: nstring(bytes),
                    }
                }
            };
            items.push(item);
        }
        let mut flags = (msg.flags, msg.keywords);
        if seen && !read_only && flags.0 & flag::SEEN == 0 {
            flags = match self.update_flags(i, |f, k| (f | flag::SEEN, k)) {
                Ok(Some(f)) => f,
                _ => (flags.0 | flag::SEEN, flags.1),
            };
        }
        if flags_at.is_some() || flags.0 != msg.flags {
            let at = flags_at.unwrap_or(items.len());
            let Some(v) = self.view() else { return Ok((items, structure)) };
            let list = fetch_flags(flags.0, flags.1, &v.keywords, recent);
            items.insert(at, MessageDataItem::Flags(list));
        }
        Ok((items, structure))
    }
}

/// ` ENVELOPE (...)`, ` BODY (...)` or ` BODYSTRUCTURE (...)` for `msg`, from the cache or
/// from the message (only its header for ENVELOPE).
fn structure_item(
    out: &mut Vec<u8>,
    name: &MessageDataItemName<'_>,
    msg: &crate::local::mailstore::MessageInfo,
    whole: &mut Option<Vec<u8>>,
) -> std::io::Result<()> {
    let (kind, label): (Kind, &[u8]) = match name {
        MessageDataItemName::Envelope => (Kind::Envelope, b" ENVELOPE "),
        MessageDataItemName::BodyStructure => (Kind::BodyStructure, b" BODYSTRUCTURE "),
        _ => (Kind::Body, b" BODY "),
    };
    let encoded = structure_cache::get_or(&msg.unique, kind, || {
        let mut out = Vec::new();
        if kind == Kind::Envelope {
            // The header is enough (a 20 MB message is not read for it).
            let header = match whole {
                Some(w) => w[..mailstore::header_len_of(w)].to_vec(),
                None => {
                    let h = mailstore::header_len(&msg.path)?;
                    mailstore::read_range(&msg.path, 0, h)?
                }
            };
            let e = mime::parse(&header, |m| mime::envelope(&m.root()))?;
            mime::wire::envelope(&mut out, &e);
        } else {
            let extended = kind == Kind::BodyStructure;
            let raw = load(whole, &msg.path)?;
            let b = mime::parse(raw, |m| mime::body_structure(&m.root().root_part(), extended))?;
            mime::wire::body(&mut out, &b);
        }
        Ok(out)
    })?;
    out.extend_from_slice(label);
    out.extend_from_slice(&encoded);
    Ok(())
}

/// A message's bytes as a literal (NUL never occurs: sluice refuses NUL at intake).
fn nstring(bytes: Vec<u8>) -> NString<'static> {
    NString::from(Literal::unvalidated(bytes))
}

fn to_static_section(s: Section<'_>) -> Section<'static> {
    use bounded_static::IntoBoundedStatic;
    s.into_static()
}

/// Encoded ENVELOPE, BODY and BODYSTRUCTURE answers by message. A Maildir message never
/// changes under its unique name, so an entry never goes stale; the map is bounded (emptied
/// when full), so memory stays within tens of MB whatever the mailboxes hold.
mod structure_cache {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};

    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Kind {
        Envelope,
        Body,
        BodyStructure,
    }

    const MAX_ENTRIES: usize = 100_000;

    type Entries = HashMap<(String, Kind), Arc<Vec<u8>>>;
    static CACHE: LazyLock<Mutex<Entries>> = LazyLock::new(|| Mutex::new(HashMap::new()));

    pub fn get_or(
        unique: &str,
        kind: Kind,
        make: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<Arc<Vec<u8>>> {
        let key = (unique.to_string(), kind);
        if let Some(v) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(v.clone());
        }
        let v = Arc::new(make()?);
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(text: &str) -> imap_codec::imap_types::command::Command<'static> {
        use imap_codec::decode::Decoder;
        imap_codec::CommandCodec::default().decode_static(text.as_bytes()).unwrap().1
    }

    /// FETCH 1:* BODY[] on 2 MB of mail is answered in parts of about 256 KiB, not at once.
    #[test]
    fn a_large_fetch_is_answered_in_parts() {
        use super::super::state::{ImapConfig, Next};
        let dir = tempfile::tempdir().unwrap();
        let md = crate::local::Maildir::new(dir.path().join("Maildir"));
        let body = vec![b'x'; 10_000];
        for _ in 0..200 {
            md.deliver(&[b"Subject: s\r\n\r\n", &body], "h").unwrap();
        }
        let cfg = ImapConfig {
            hostname: "h".into(),
            starttls: false,
            plaintext_ok: true,
            max_folders: 9,
        };
        let mut s = Session::new(cfg, false);
        s.login_result(&Tag::try_from("l").unwrap(), Ok(md));
        assert!(matches!(s.execute(command("s SELECT INBOX\r\n")), Next::Continue));
        s.take_output();
        let mut next = s.execute(command("f FETCH 1:* BODY.PEEK[]\r\n"));
        let mut parts = Vec::new();
        while matches!(next, Next::More) {
            parts.push(s.take_output().len());
            s.fetch_more();
            next = if s.has_more() { Next::More } else { Next::Continue };
        }
        let last = String::from_utf8(s.take_output()).unwrap();
        assert!(last.ends_with("f OK FETCH completed\r\n"), "{}", &last[last.len() - 40..]);
        assert!(parts.len() >= 7, "{parts:?}");
        assert!(parts.iter().all(|&n| n < OUTPUT_CHUNK + 11_000), "{parts:?}");
    }
}
