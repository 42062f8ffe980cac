//! The durable queue: what has been accepted stays here until it is delivered, bounced or
//! deleted by an operator.
//!
//! Design (DESIGN.md, "The spool"): an append-only, checksummed segment log is the source of truth
//! for envelopes, bodies and every later state change; one commit thread writes each pending batch
//! with one vectored write and one `fdatasync` (group commit), and only then are its waiters told
//! the records are durable. An in-memory index (no bodies) answers queries; it is checkpointed
//! lazily to redb together with the log position it reflects, so a restart replays only the tail.
//! A lost or corrupt index costs a full replay, never a message.
//!
//! What this module does not do: scheduling and delivery (they read and update it through
//! [`Spool`]), and it never holds a body in memory after it is written.

mod index;
pub mod lock;
mod log;
mod record;
mod recovery;
mod segment;
mod state;
mod uring;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use bytes::Bytes;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

pub use self::log::{LogSpool, SpoolOptions, WriterKind, unix_millis};
use crate::proto::smtp::command as smtp;

/// A queued message's id: unique across restarts, shown as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub u64);

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl std::str::FromStr for QueueId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(QueueId)
    }
}

/// Everything known about a message except its content.
///
/// On disk (record payload version 2, see `record.rs`) this struct is encoded with postcard in
/// field order: adding, removing or reordering a field changes the format, so it needs a version
/// bump and a decoder for the old shape. Its field types are the spool's own (never protocol
/// types), so a change in `proto` cannot change the format by accident.
///
/// The queue keeps one per message in memory (a million queued messages must fit in 512 MB), so
/// the strings that are usually short (addresses, HELO name, Message-ID) are `CompactString`s:
/// up to 24 bytes live inline, with no heap allocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: QueueId,
    /// Milliseconds since the Unix epoch.
    pub received_at: u64,
    /// Empty for the null reverse-path `<>`.
    pub sender: CompactString,
    pub recipients: Vec<Recipient>,
    /// The `Message-ID` header, if the message has one.
    pub message_id: Option<CompactString>,
    /// Octets stored: trace header plus body.
    pub size: u64,
    pub helo: CompactString,
    pub client_ip: IpAddr,
    pub body_type: Option<BodyType>,
    pub smtputf8: bool,
    /// RFC 3461 RET and ENVID.
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// Bulk-sending tags (payload version 2); boxed, since most mail has none and the queue keeps
    /// every envelope in memory.
    pub tags: Option<Box<Tags>>,
}

/// Who a message is sent for, carried in the envelope (never in headers that reach the
/// recipient) into the delivery log, metrics and suppression.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tags {
    pub tenant: Option<CompactString>,
    pub campaign: Option<CompactString>,
    /// The injector's own metadata, as JSON text, returned in the delivery log.
    pub meta: Option<String>,
    /// The egress pool the injector asked for (payload version 3); None: chosen by tenant,
    /// route or `default_pool` at delivery.
    pub pool: Option<CompactString>,
    /// The injector's priority (payload version 3); None: the tenant's, else bulk.
    pub priority: Option<Priority>,
}

/// Which ready work goes first within a destination: transactional mail ahead of bulk (which
/// keeps a share of the turns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Priority {
    Bulk,
    Transactional,
}

impl Priority {
    /// `bulk` or `transactional`, as the configuration and the injection API spell it.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "bulk" => Some(Priority::Bulk),
            "transactional" => Some(Priority::Transactional),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Priority::Bulk => "bulk",
            Priority::Transactional => "transactional",
        }
    }
}

impl Envelope {
    pub fn tenant(&self) -> Option<&str> {
        self.tags.as_ref().and_then(|t| t.tenant.as_deref())
    }

    pub fn campaign(&self) -> Option<&str> {
        self.tags.as_ref().and_then(|t| t.campaign.as_deref())
    }

    pub fn pool(&self) -> Option<&str> {
        self.tags.as_ref().and_then(|t| t.pool.as_deref())
    }

    pub fn priority(&self) -> Option<Priority> {
        self.tags.as_ref().and_then(|t| t.priority)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: CompactString,
    /// RFC 3461 ORCPT and NOTIFY.
    pub orcpt: Option<String>,
    pub notify: Option<Notify>,
    pub state: RecipientState,
    pub attempts: u32,
    /// Milliseconds since the Unix epoch; 0 = as soon as possible.
    pub next_attempt: u64,
    pub last_reply: Option<String>,
    /// A delay notice (RFC 3461 NOTIFY=DELAY) went to the sender: never a second one.
    pub delay_notified: bool,
}

impl Recipient {
    /// A recipient waiting for its first attempt.
    pub fn queued(
        address: impl Into<CompactString>,
        orcpt: Option<String>,
        notify: Option<Notify>,
    ) -> Self {
        Recipient {
            address: address.into(),
            orcpt,
            notify,
            state: RecipientState::Queued,
            attempts: 0,
            next_attempt: 0,
            last_reply: None,
            delay_notified: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientState {
    /// Waiting for (another) delivery attempt.
    Queued,
    /// A next hop answered 2xx.
    Delivered,
    /// Permanently failed; a bounce was queued (or not wanted).
    Failed,
}

impl RecipientState {
    pub fn label(self) -> &'static str {
        match self {
            RecipientState::Queued => "queued",
            RecipientState::Delivered => "delivered",
            RecipientState::Failed => "failed",
        }
    }
}

/// A change to one recipient, recorded in the log like everything else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipientUpdate {
    pub id: QueueId,
    pub index: u32,
    pub state: RecipientState,
    pub attempts: u32,
    pub next_attempt: u64,
    pub last_reply: Option<String>,
    pub delay_notified: bool,
    /// Compare-and-set: applied only if the recipient is still queued with exactly this many
    /// attempts, so a change based on a stale snapshot (an operator's flush racing a delivery)
    /// never overwrites a newer outcome. The decision is made when the record is applied, in log
    /// order, so replay after a crash decides the same way. None: unconditional.
    pub expect_attempts: Option<u32>,
}

/// RFC 6152 BODY= as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

/// RFC 3461 RET= as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

/// RFC 3461 NOTIFY= as stored: all false is NEVER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub fn is_never(&self) -> bool {
        !self.success && !self.failure && !self.delay
    }
}

impl BodyType {
    pub fn label(self) -> &'static str {
        smtp::BodyType::from(self).label()
    }
}

impl From<smtp::BodyType> for BodyType {
    fn from(b: smtp::BodyType) -> Self {
        match b {
            smtp::BodyType::SevenBit => BodyType::SevenBit,
            smtp::BodyType::EightBitMime => BodyType::EightBitMime,
        }
    }
}

impl From<BodyType> for smtp::BodyType {
    fn from(b: BodyType) -> Self {
        match b {
            BodyType::SevenBit => smtp::BodyType::SevenBit,
            BodyType::EightBitMime => smtp::BodyType::EightBitMime,
        }
    }
}

impl From<smtp::Ret> for Ret {
    fn from(r: smtp::Ret) -> Self {
        match r {
            smtp::Ret::Full => Ret::Full,
            smtp::Ret::Hdrs => Ret::Hdrs,
        }
    }
}

impl From<Ret> for smtp::Ret {
    fn from(r: Ret) -> Self {
        match r {
            Ret::Full => smtp::Ret::Full,
            Ret::Hdrs => smtp::Ret::Hdrs,
        }
    }
}

impl From<smtp::Notify> for Notify {
    fn from(n: smtp::Notify) -> Self {
        Notify { success: n.success, failure: n.failure, delay: n.delay }
    }
}

impl From<Notify> for smtp::Notify {
    fn from(n: Notify) -> Self {
        smtp::Notify { success: n.success, failure: n.failure, delay: n.delay }
    }
}

/// A message to store: the envelope, the trace header sluice added and the body as received.
/// Both buffers are written as they are (vectored), never copied together.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub envelope: Envelope,
    pub trace: Bytes,
    pub body: Bytes,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The disk is (nearly) full: new mail gets 452 4.3.1, accepted mail is untouched.
    #[error("insufficient storage")]
    NoSpace,
    #[error("spool I/O error: {0}")]
    Io(std::sync::Arc<std::io::Error>),
    /// A record longer than the format's length field allows.
    #[error("message too large for one spool record")]
    TooLarge,
    /// An earlier write failed and could not be repaired: every store fails until a restart.
    #[error("spool disabled after a write failure that could not be repaired")]
    Disabled,
    /// The checkpoint index could not be opened or rebuilt.
    #[error("spool index: {0}")]
    Index(String),
    #[error("spool is closed")]
    Closed,
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("no such message")]
    NotFound,
    /// A conditional update found the recipient changed since the caller's snapshot.
    #[error("the recipient changed meanwhile; update not applied")]
    Conflict,
}

impl From<std::io::Error> for SpoolError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            SpoolError::NoSpace
        } else {
            SpoolError::Io(std::sync::Arc::new(e))
        }
    }
}

/// A one-recipient envelope for unit tests.
#[cfg(test)]
pub(crate) fn test_envelope(id: QueueId, size: u64) -> Envelope {
    Envelope {
        id,
        received_at: 1,
        sender: "a@b.c".into(),
        recipients: vec![Recipient::queued("d@e.f", None, None)],
        message_id: Some("<m@b.c>".into()),
        size,
        helo: "x".into(),
        client_ip: "127.0.0.1".parse().expect("literal"),
        body_type: None,
        smtputf8: false,
        ret: None,
        envid: None,
        tags: None,
    }
}

/// Resolves once the record is durable (or failed). Dropping it does not cancel the write.
pub type Ticket = Pin<Box<dyn Future<Output = Result<(), SpoolError>> + Send>>;

/// Counters for `sluice queue stats` and tests.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SpoolStats {
    pub messages: u64,
    pub recipients_queued: u64,
    pub recipients_delivered: u64,
    pub recipients_failed: u64,
    pub segments: u64,
    pub disk_bytes: u64,
    pub records_written: u64,
    pub fsyncs: u64,
}

/// The durable queue's contract. How records reach the disk (`[spool] writer`: portable writev +
/// fdatasync, or io_uring) is the implementation's choice; callers never see the difference.
pub trait Spool: Send + Sync + 'static {
    /// A fresh id for a message about to be stored. Cheap: no I/O.
    fn next_id(&self) -> QueueId;

    /// Appends a message. The ticket resolves `Ok` only after the record is on disk and
    /// fdatasync'd: only then may the client be told 250.
    fn store(&self, msg: NewMessage) -> Ticket;

    /// Records a recipient state change durably.
    fn update(&self, update: RecipientUpdate) -> Ticket;

    /// Removes a message durably (delivered to all, bounced, or deleted by an operator).
    fn remove(&self, id: QueueId) -> Ticket;

    /// Envelopes of all queued messages, oldest first. Cost: a copy of the index.
    fn list(&self) -> Vec<Envelope>;

    fn get(&self, id: QueueId) -> Option<Envelope>;

    /// Up to `limit` messages with a queued recipient due at `now_ms`, earliest first, each
    /// *leased* to the caller: it is not returned again until [`Spool::release`], whatever its
    /// recipients' times. Cost: O(k log n) in the due-time index; only the results are copied,
    /// so a million deferred (or leased) messages cost nothing per call.
    fn lease_due(&self, now_ms: u64, limit: usize) -> Vec<Envelope>;

    /// Ends a lease: the message is found by `lease_due` again once a recipient is due.
    fn release(&self, id: QueueId);

    /// Messages with no queued recipient left (a crash came between their last outcome and
    /// their removal). Ids only: a walk of the index, no envelope copied.
    fn finished(&self) -> Vec<QueueId>;

    /// The stored message as it will be sent: trace header followed by the body. Reads the
    /// disk and verifies the record's checksum.
    fn read_message(&self, id: QueueId) -> Result<Bytes, SpoolError>;

    fn stats(&self) -> SpoolStats;

    /// Stops accepting records, finishes those pending, writes a final checkpoint.
    fn close(&self);
}
