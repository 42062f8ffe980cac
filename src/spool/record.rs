//! Segment log records: `magic | length | crc32 | payload`, little-endian.
//!
//! ```text
//! header  = magic:u32 ("SLR1") len:u32 (payload octets) crc:u32 (CRC-32 of the payload)
//! payload = kind:u8 data
//!   kind 1 (message): meta_len:u32 meta(postcard Envelope) trace_len:u32 trace body
//!   kind 2 (update):  postcard RecipientUpdate
//!   kind 3 (remove):  id:u64
//! ```
//! A record is valid only if its magic, length and checksum all agree; recovery cuts the log at
//! the first record that is not (a torn or never-synced tail), so a bad record is never served.

use bytes::Bytes;

use super::{Envelope, QueueId, RecipientUpdate, SpoolError};

pub const MAGIC: u32 = u32::from_le_bytes(*b"SLR1");
pub const HEADER_LEN: usize = 12;
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

pub fn encode_message(env: &Envelope, trace: Bytes, body: Bytes) -> Result<Encoded, SpoolError> {
    let meta = postcard::to_stdvec(env).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
    let payload_len = 1 + 4 + meta.len() + 4 + trace.len() + body.len();
    if payload_len > MAX_PAYLOAD {
        return Err(SpoolError::Io("message too large for one record".into()));
    }
    let mut head = Vec::with_capacity(HEADER_LEN + 9 + meta.len());
    head.extend_from_slice(&MAGIC.to_le_bytes());
    head.extend_from_slice(&(payload_len as u32).to_le_bytes());
    head.extend_from_slice(&[0; 4]); // crc, filled below
    head.push(KIND_MESSAGE);
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&meta);
    head.extend_from_slice(&(trace.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[HEADER_LEN..]);
    crc.update(&trace);
    crc.update(&body);
    head[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(Encoded { head, trace, body })
}

fn encode_small(kind: u8, data: &[u8]) -> Encoded {
    let mut head = Vec::with_capacity(HEADER_LEN + 1 + data.len());
    head.extend_from_slice(&MAGIC.to_le_bytes());
    head.extend_from_slice(&((1 + data.len()) as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(data);
    head.extend_from_slice(&crc.finalize().to_le_bytes());
    head.push(kind);
    head.extend_from_slice(data);
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
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes than the header or the declared length: a torn tail.
    Truncated,
    BadMagic,
    BadChecksum,
    BadPayload,
}

/// Decodes the record at the start of `buf`; returns it and its total length.
pub fn decode(buf: &[u8]) -> Result<(Record, usize), Invalid> {
    if buf.len() < HEADER_LEN {
        return Err(Invalid::Truncated);
    }
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    if word(0) != MAGIC {
        return Err(Invalid::BadMagic);
    }
    let len = word(4) as usize;
    let total = HEADER_LEN + len;
    if len == 0 || buf.len() < total {
        return Err(Invalid::Truncated);
    }
    let payload = &buf[HEADER_LEN..total];
    if crc32fast::hash(payload) != word(8) {
        return Err(Invalid::BadChecksum);
    }
    let data = &payload[1..];
    let record = match payload[0] {
        KIND_MESSAGE => {
            let meta_len = read_u32(data, 0)? as usize;
            let meta = data.get(4..4 + meta_len).ok_or(Invalid::BadPayload)?;
            let envelope: Envelope = postcard::from_bytes(meta).map_err(|_| Invalid::BadPayload)?;
            let trace_len = read_u32(data, 4 + meta_len)? as usize;
            let content_offset = HEADER_LEN + 1 + 4 + meta_len + 4;
            if content_offset + trace_len > total {
                return Err(Invalid::BadPayload);
            }
            Record::Message { envelope, content_offset }
        }
        KIND_UPDATE => Record::Update(postcard::from_bytes(data).map_err(|_| Invalid::BadPayload)?),
        KIND_REMOVE => {
            let id: [u8; 8] = data.try_into().map_err(|_| Invalid::BadPayload)?;
            Record::Remove(QueueId(u64::from_le_bytes(id)))
        }
        _ => return Err(Invalid::BadPayload),
    };
    Ok((record, total))
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, Invalid> {
    let b = data.get(at..at + 4).ok_or(Invalid::BadPayload)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RecipientState;

    fn envelope(id: u64) -> Envelope {
        crate::spool::test_envelope(QueueId(id), 9)
    }

    fn flat(e: &Encoded) -> Vec<u8> {
        [&e.head[..], &e.trace[..], &e.body[..]].concat()
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

        let up = RecipientUpdate {
            id: QueueId(7),
            index: 0,
            state: RecipientState::Delivered,
            attempts: 1,
            next_attempt: 0,
            last_reply: Some("250 ok".into()),
            delay_notified: true,
        };
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
}
