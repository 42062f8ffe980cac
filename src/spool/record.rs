//! Segment log records, little-endian.
//!
//! ```text
//! format 2 (written):
//!   header  = magic:u32 ("SLR2") version:u8 kind:u8 reserved:u16 len:u32 crc:u32 header_crc:u32
//!             len = payload octets, crc = CRC-32 of the payload, header_crc = CRC-32 of the 16
//!             header octets before it (so a damaged length is never trusted)
//!   payload, by kind:
//!     1 message: meta_len:u32 meta (postcard Envelope) trace_len:u32 trace body
//!                (payload version 1: the Envelope without `tags`; 2: tags without `pool`, `priority`)
//!     2 update:  postcard RecipientUpdate (the same in payload versions 1 to 3)
//!     3 remove:  id:u64
//! format 1 ("SLR1", written until 2026-12; read, never written):
//!   header  = magic:u32 len:u32 crc:u32;  payload = kind:u8 data, data as above for version 1
//!   except that an update has no `expect_attempts`.
//! ```
//! `version` is the version of the payload's encoding (today [`VERSION`]). A record of a newer
//! version stops recovery with an error: it is never skipped or cut, so an old binary started on
//! a newer spool destroys nothing. Every change to [`Envelope`] or [`RecipientUpdate`] (their
//! field order is the encoding) needs a version bump, a decoder for the old version, and a
//! fixture written by the old one (`tests/fixtures/`).
//!
//! The magic and the header checksum are the sync marker: after a damaged record, recovery
//! scans forward for the next offset where a whole valid record starts ([`resync`]).

use bytes::Bytes;
use memchr::memmem;
use serde::Deserialize;

use super::{Envelope, QueueId, RecipientState, RecipientUpdate, SpoolError};

pub const MAGIC: u32 = u32::from_le_bytes(*b"SLR2");
const MAGIC_V1: u32 = u32::from_le_bytes(*b"SLR1");
pub const HEADER_LEN: usize = 20;
const HEADER_LEN_V1: usize = 12;
/// The payload encoding this build writes; it reads this one and every older one.
/// 2 (2026-12): the envelope gained `tags` (tenant, campaign, metadata).
/// 3 (2026-12): the tags gained `pool` and `priority` (asked for at injection).
pub const VERSION: u8 = 3;
/// Payload length is a u32; messages are capped well below it in config.
pub const MAX_PAYLOAD: usize = u32::MAX as usize - 64;

const KIND_MESSAGE: u8 = 1;
const KIND_UPDATE: u8 = 2;
const KIND_REMOVE: u8 = 3;

/// A record ready to write: a small owned head plus borrowed (refcounted) trace and body.
pub struct Encoded {
    pub head: Vec<u8>,
    pub trace: Bytes,
    pub body: Bytes,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.head.len() + self.trace.len() + self.body.len()
    }
}

/// Fills in the header of `head` (whose first HEADER_LEN octets are reserved for it).
fn seal(head: &mut [u8], kind: u8, payload_len: usize, crc: u32) {
    head[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    head[4] = VERSION;
    head[5] = kind;
    head[6..8].copy_from_slice(&[0, 0]);
    head[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    head[12..16].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32fast::hash(&head[..16]);
    head[16..20].copy_from_slice(&hcrc.to_le_bytes());
}

pub fn encode_message(env: &Envelope, trace: Bytes, body: Bytes) -> Result<Encoded, SpoolError> {
    let meta = postcard::to_stdvec(env).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
    let payload_len = 4 + meta.len() + 4 + trace.len() + body.len();
    if payload_len > MAX_PAYLOAD {
        return Err(SpoolError::TooLarge);
    }
    let mut head = Vec::with_capacity(HEADER_LEN + 8 + meta.len());
    head.resize(HEADER_LEN, 0);
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&meta);
    head.extend_from_slice(&(trace.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[HEADER_LEN..]);
    crc.update(&trace);
    crc.update(&body);
    seal(&mut head, KIND_MESSAGE, payload_len, crc.finalize());
    Ok(Encoded { head, trace, body })
}

fn encode_small(kind: u8, data: &[u8]) -> Encoded {
    let mut head = Vec::with_capacity(HEADER_LEN + data.len());
    head.resize(HEADER_LEN, 0);
    head.extend_from_slice(data);
    seal(&mut head, kind, data.len(), crc32fast::hash(data));
    Encoded { head, trace: Bytes::new(), body: Bytes::new() }
}

pub fn encode_update(u: &RecipientUpdate) -> Result<Encoded, SpoolError> {
    let data = postcard::to_stdvec(u).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
    Ok(encode_small(KIND_UPDATE, &data))
}

pub fn encode_remove(id: QueueId) -> Encoded {
    encode_small(KIND_REMOVE, &id.0.to_le_bytes())
}

/// A decoded record. Message records keep positions instead of copies of their content.
#[derive(Debug)]
pub enum Record {
    Message { envelope: Envelope, content_offset: usize },
    Update(RecipientUpdate),
    Remove(QueueId),
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes than the header or the declared length: a torn tail (if nothing valid follows).
    Truncated,
    /// No magic, or a header whose own checksum fails.
    BadHeader,
    BadChecksum,
    /// The checksum passes but the payload does not decode: a bug or a deliberate edit.
    BadPayload,
    /// Written by a newer sluice: recovery must stop, never skip or cut it.
    NewerVersion(u8),
}

/// Decodes the record at the start of `buf`; returns it and its total length.
pub fn decode(buf: &[u8]) -> Result<(Record, usize), Invalid> {
    let (kind, version, payload, total) = frame(buf)?;
    let record = match (kind, version) {
        (KIND_MESSAGE, 0..=3) => {
            let meta_len = read_u32(payload, 0)? as usize;
            let meta = payload.get(4..4 + meta_len).ok_or(Invalid::BadPayload)?;
            let envelope = decode_envelope(version, meta).ok_or(Invalid::BadPayload)?;
            let trace_len = read_u32(payload, 4 + meta_len)? as usize;
            let content_offset = (total - payload.len()) + 4 + meta_len + 4;
            if content_offset + trace_len > total {
                return Err(Invalid::BadPayload);
            }
            Record::Message { envelope, content_offset }
        }
        (KIND_UPDATE, 0) => Record::Update(
            postcard::from_bytes::<UpdateV0>(payload).map_err(|_| Invalid::BadPayload)?.into(),
        ),
        (KIND_UPDATE, 1..=3) => {
            Record::Update(postcard::from_bytes(payload).map_err(|_| Invalid::BadPayload)?)
        }
        (KIND_REMOVE, 0..=3) => {
            let id: [u8; 8] = payload.try_into().map_err(|_| Invalid::BadPayload)?;
            Record::Remove(QueueId(u64::from_le_bytes(id)))
        }
        _ => return Err(Invalid::BadPayload),
    };
    Ok((record, total))
}

/// Checks the framing (magic, lengths, checksums) of the record at the start of `buf`; returns
/// its kind, payload version (0 for format 1), payload and total length.
fn frame(buf: &[u8]) -> Result<(u8, u8, &[u8], usize), Invalid> {
    if buf.len() < 4 {
        return Err(Invalid::Truncated);
    }
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    match word(0) {
        MAGIC => {
            if buf.len() < HEADER_LEN {
                return Err(Invalid::Truncated);
            }
            if crc32fast::hash(&buf[..16]) != word(16) {
                return Err(Invalid::BadHeader);
            }
            let (version, kind, len) = (buf[4], buf[5], word(8) as usize);
            if version > VERSION {
                return Err(Invalid::NewerVersion(version));
            }
            if version == 0 || len > MAX_PAYLOAD {
                return Err(Invalid::BadHeader);
            }
            let total = HEADER_LEN + len;
            let payload = buf.get(HEADER_LEN..total).ok_or(Invalid::Truncated)?;
            if crc32fast::hash(payload) != word(12) {
                return Err(Invalid::BadChecksum);
            }
            Ok((kind, version, payload, total))
        }
        MAGIC_V1 => {
            if buf.len() < HEADER_LEN_V1 {
                return Err(Invalid::Truncated);
            }
            let len = word(4) as usize;
            let total = HEADER_LEN_V1 + len;
            if len == 0 || buf.len() < total {
                return Err(Invalid::Truncated);
            }
            let payload = &buf[HEADER_LEN_V1..total];
            if crc32fast::hash(payload) != word(8) {
                return Err(Invalid::BadChecksum);
            }
            Ok((payload[0], 0, &payload[1..], total))
        }
        _ => Err(Invalid::BadHeader),
    }
}

/// The first offset at or after `from` where a whole valid record starts (or one of a newer
/// version, which the caller must not skip).
pub fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let finder = memmem::Finder::new(b"SLR");
    let mut at = from;
    while at < buf.len() {
        let found = at + finder.find(&buf[at..])?;
        match buf.get(found + 3) {
            Some(b'1' | b'2') => match decode(&buf[found..]) {
                Ok(_) | Err(Invalid::NewerVersion(_)) => return Some(found),
                Err(_) => {}
            },
            Some(_) => {}
            None => return None,
        }
        at = found + 1;
    }
    None
}

/// Best effort for a damaged message record: the envelope, if its header and metadata survived
/// (the damage was in the body), so the operator learns which message it was.
pub fn salvage_envelope(buf: &[u8]) -> Option<Envelope> {
    let word = |i: usize| buf.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let meta_at = match word(0)? {
        MAGIC if buf.get(5) == Some(&KIND_MESSAGE) => HEADER_LEN,
        MAGIC_V1 if buf.get(HEADER_LEN_V1) == Some(&KIND_MESSAGE) => HEADER_LEN_V1 + 1,
        _ => return None,
    };
    let version = if word(0)? == MAGIC { *buf.get(4)? } else { 0 };
    let meta_len = word(meta_at)? as usize;
    decode_envelope(version, buf.get(meta_at + 4..meta_at + 4 + meta_len)?)
}

/// The envelope of a message record of payload `version`.
fn decode_envelope(version: u8, meta: &[u8]) -> Option<Envelope> {
    match version {
        3.. => postcard::from_bytes(meta).ok(),
        2 => postcard::from_bytes::<EnvelopeV2>(meta).ok().map(from_v2),
        _ => postcard::from_bytes::<EnvelopeV1>(meta).ok().map(Into::into),
    }
}

/// An envelope as payload version 2 wrote it: version 1's fields, then tags without `pool` and
/// `priority` (postcard writes a struct as its fields in order, so the pair reads the same bytes).
type EnvelopeV2 = (EnvelopeV1, Option<Box<TagsV2>>);

#[derive(Deserialize)]
struct TagsV2 {
    tenant: Option<compact_str::CompactString>,
    campaign: Option<compact_str::CompactString>,
    meta: Option<String>,
}

fn from_v2((v1, tags): EnvelopeV2) -> Envelope {
    let tags = tags.map(|t| {
        Box::new(super::Tags {
            tenant: t.tenant,
            campaign: t.campaign,
            meta: t.meta,
            pool: None,
            priority: None,
        })
    });
    Envelope { tags, ..v1.into() }
}

/// An envelope as payload versions 0 and 1 wrote it (no tags).
#[derive(Deserialize)]
struct EnvelopeV1 {
    id: QueueId,
    received_at: u64,
    sender: compact_str::CompactString,
    recipients: Vec<super::Recipient>,
    message_id: Option<compact_str::CompactString>,
    size: u64,
    helo: compact_str::CompactString,
    client_ip: std::net::IpAddr,
    body_type: Option<super::BodyType>,
    smtputf8: bool,
    ret: Option<super::Ret>,
    envid: Option<String>,
}

impl From<EnvelopeV1> for Envelope {
    fn from(e: EnvelopeV1) -> Self {
        Envelope {
            id: e.id,
            received_at: e.received_at,
            sender: e.sender,
            recipients: e.recipients,
            message_id: e.message_id,
            size: e.size,
            helo: e.helo,
            client_ip: e.client_ip,
            body_type: e.body_type,
            smtputf8: e.smtputf8,
            ret: e.ret,
            envid: e.envid,
            tags: None,
        }
    }
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, Invalid> {
    let b = data.get(at..at + 4).ok_or(Invalid::BadPayload)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// An update as format 1 wrote it (no compare-and-set condition).
#[derive(Deserialize)]
struct UpdateV0 {
    id: QueueId,
    index: u32,
    state: RecipientState,
    attempts: u32,
    next_attempt: u64,
    last_reply: Option<String>,
    delay_notified: bool,
}

impl From<UpdateV0> for RecipientUpdate {
    fn from(u: UpdateV0) -> Self {
        RecipientUpdate {
            id: u.id,
            index: u.index,
            state: u.state,
            attempts: u.attempts,
            next_attempt: u.next_attempt,
            last_reply: u.last_reply,
            delay_notified: u.delay_notified,
            expect_attempts: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: u64) -> Envelope {
        crate::spool::test_envelope(QueueId(id), 9)
    }

    fn flat(e: &Encoded) -> Vec<u8> {
        [&e.head[..], &e.trace[..], &e.body[..]].concat()
    }

    fn update() -> RecipientUpdate {
        RecipientUpdate {
            id: QueueId(7),
            index: 0,
            state: RecipientState::Delivered,
            attempts: 1,
            next_attempt: 0,
            last_reply: Some("250 ok".into()),
            delay_notified: true,
            expect_attempts: Some(0),
        }
    }

    #[test]
    fn round_trip_every_kind() {
        let env = envelope(7);
        let msg = flat(
            &encode_message(&env, Bytes::from_static(b"T:\r\n"), Bytes::from_static(b"body\r\n"))
                .unwrap(),
        );
        let (rec, len) = decode(&msg).unwrap();
        assert_eq!(len, msg.len());
        let Record::Message { envelope, content_offset } = rec else { panic!() };
        assert_eq!(envelope, env);
        assert_eq!(&msg[content_offset..], b"T:\r\nbody\r\n");

        let up = update();
        let buf = flat(&encode_update(&up).unwrap());
        assert!(matches!(decode(&buf).unwrap().0, Record::Update(u) if u == up));
        let buf = flat(&encode_remove(QueueId(7)));
        assert!(matches!(decode(&buf).unwrap().0, Record::Remove(QueueId(7))));
    }

    /// A torn or flipped record is never decoded, whatever byte is damaged.
    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let msg = flat(
            &encode_message(
                &envelope(1),
                Bytes::from_static(b"T:\r\n"),
                Bytes::from_static(b"body\r\n"),
            )
            .unwrap(),
        );
        for cut in 0..msg.len() {
            assert!(decode(&msg[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
    }

    /// After damage anywhere in one record, the scan finds the next record exactly.
    #[test]
    fn resync_finds_the_next_record_after_any_damage() {
        let a = flat(
            &encode_message(&envelope(1), Bytes::new(), Bytes::from(vec![b'x'; 300])).unwrap(),
        );
        let b = flat(&encode_update(&update()).unwrap());
        let log = [a.clone(), b.clone()].concat();
        for i in 0..a.len() {
            let mut bad = log.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "flip at {i}");
            assert_eq!(resync(&bad, 1), Some(a.len()), "flip at {i}");
        }
        assert_eq!(resync(&log[..log.len() - 1], 1), None, "a torn last record is not found");
    }

    /// A length damaged to something huge is caught by the header checksum, not trusted.
    #[test]
    fn a_damaged_length_is_a_bad_header_not_a_truncation() {
        let mut buf = flat(&encode_remove(QueueId(3)));
        buf[10] = 0x7f;
        assert_eq!(decode(&buf).unwrap_err(), Invalid::BadHeader);
    }

    /// A newer version is reported as such (recovery stops), even with a valid checksum.
    #[test]
    fn a_newer_version_is_reported_not_skipped() {
        let mut buf = flat(&encode_remove(QueueId(3)));
        buf[4] = VERSION + 1;
        let hcrc = crc32fast::hash(&buf[..16]);
        buf[16..20].copy_from_slice(&hcrc.to_le_bytes());
        assert_eq!(decode(&buf).unwrap_err(), Invalid::NewerVersion(VERSION + 1));
        assert_eq!(resync(&[&[0u8; 5][..], &buf].concat(), 1), Some(5));
    }

    /// Randomised round trips: arbitrary strings and numbers in every field come back unchanged,
    /// and random bytes never decode (nor panic).
    #[test]
    fn randomised_round_trip_and_garbage() {
        let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let mut env = envelope(next());
            let text: String = (0..next() % 80)
                .map(|_| char::from_u32((next() % 0x2000) as u32).unwrap_or('?'))
                .collect();
            env.sender = text.as_str().into();
            env.recipients[0].last_reply = Some(text.clone());
            env.recipients[0].attempts = next() as u32;
            env.received_at = next();
            env.envid = next().is_multiple_of(2).then(|| text.clone());
            env.tags = next().is_multiple_of(2).then(|| {
                Box::new(super::super::Tags {
                    tenant: Some(text.as_str().into()),
                    campaign: next().is_multiple_of(2).then(|| "c".into()),
                    meta: Some(format!("{{\"k\":{}}}", next())),
                    pool: next().is_multiple_of(2).then(|| "p".into()),
                    priority: next()
                        .is_multiple_of(2)
                        .then_some(super::super::Priority::Transactional),
                })
            });
            let body: Vec<u8> = (0..next() % 2000).map(|_| next() as u8).collect();
            let buf = flat(&encode_message(&env, Bytes::new(), Bytes::from(body.clone())).unwrap());
            let (Record::Message { envelope, content_offset }, len) = decode(&buf).unwrap() else {
                panic!()
            };
            assert_eq!((envelope, &buf[content_offset..len]), (env, &body[..]));
            let garbage: Vec<u8> = (0..next() % 200).map(|_| next() as u8).collect();
            assert!(decode(&garbage).is_err());
            let _ = resync(&garbage, 0);
        }
    }
}
