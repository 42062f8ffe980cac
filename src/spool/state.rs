//! The in-memory index: every queued message's envelope and log location (never its body), a
//! due-time index, and counters kept as records are applied, so that finding due work costs
//! O(k log n) and queue statistics cost nothing, whatever the queue's length (DESIGN.md
//! invariant 5; issue #10 item 8).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::index::{IndexEntry, Location, Position};
use super::{Envelope, QueueId, RecipientState, RecipientUpdate};
use crate::metrics;

/// A durable record's effect on the index.
pub(super) enum Apply {
    Insert(Box<Envelope>),
    Update(RecipientUpdate),
    Remove(QueueId),
}

/// What applying a record did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Applied {
    Done,
    /// A compare-and-set update whose condition no longer held: nothing changed.
    Conflict,
}

#[derive(Default)]
pub(super) struct IndexState {
    /// Boxed: B-tree nodes are often half empty, and an empty slot then costs 8 bytes, not 200.
    pub(super) entries: BTreeMap<QueueId, Box<IndexEntry>>,
    /// (earliest next attempt of a queued recipient, id) for every message with one.
    pub(super) due: BTreeSet<(u64, QueueId)>,
    /// Messages handed out by `lease_due` and not released yet: kept out of `due`.
    pub(super) leased: HashSet<QueueId>,
    /// Recipients per state, over every queued message.
    pub(super) recipients: [u64; 3],
    /// Live messages per existing segment (every segment on disk has a key).
    pub(super) live: BTreeMap<u64, u64>,
    /// Bytes per existing segment.
    pub(super) seg_bytes: BTreeMap<u64, u64>,
    /// Position after the last record applied to `entries`.
    pub(super) applied: Position,
    /// Ids changed since the last checkpoint.
    pub(super) dirty: HashSet<QueueId>,
    pub(super) records_written: u64,
    pub(super) fsyncs: u64,
}

/// When the message next has work: its earliest queued recipient's next attempt.
fn due_key(env: &Envelope) -> Option<(u64, QueueId)> {
    env.recipients
        .iter()
        .filter(|r| r.state == RecipientState::Queued)
        .map(|r| r.next_attempt)
        .min()
        .map(|t| (t, env.id))
}

fn slot(s: RecipientState) -> usize {
    match s {
        RecipientState::Queued => 0,
        RecipientState::Delivered => 1,
        RecipientState::Failed => 2,
    }
}

impl IndexState {
    /// An entry from the checkpoint (already reflects every record before its position).
    pub(super) fn insert_loaded(&mut self, e: IndexEntry) {
        *self.live.entry(e.loc.segment).or_default() += 1;
        self.count(&e.envelope, true);
        self.entries.insert(e.envelope.id, Box::new(e));
    }

    /// Adds (or takes away) a message's recipients and due time.
    fn count(&mut self, env: &Envelope, add: bool) {
        for r in &env.recipients {
            let n = &mut self.recipients[slot(r.state)];
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
        if let Some(k) = due_key(env).filter(|(_, id)| !self.leased.contains(id)) {
            if add {
                self.due.insert(k);
            } else {
                self.due.remove(&k);
            }
        }
    }

    pub(super) fn apply(&mut self, apply: Apply, loc: Location) -> Applied {
        match apply {
            Apply::Insert(env) => {
                let id = env.id;
                if let Some(old) = self.entries.remove(&id) {
                    self.forget(&old); // never written twice; but counters must stay right
                }
                *self.live.entry(loc.segment).or_default() += 1;
                self.count(&env, true);
                self.dirty.insert(id);
                self.entries.insert(id, Box::new(IndexEntry { envelope: *env, loc }));
            }
            Apply::Update(u) => return self.update(u),
            Apply::Remove(id) => {
                if let Some(e) = self.entries.remove(&id) {
                    self.forget(&e);
                    self.dirty.insert(id);
                }
            }
        }
        Applied::Done
    }

    fn forget(&mut self, e: &IndexEntry) {
        if let Some(n) = self.live.get_mut(&e.loc.segment) {
            *n = n.saturating_sub(1);
        }
        self.count(&e.envelope, false);
    }

    fn update(&mut self, u: RecipientUpdate) -> Applied {
        let Some(mut e) = self.entries.remove(&u.id) else { return Applied::Conflict };
        let current = e.envelope.recipients.get(u.index as usize);
        let holds = match (current, u.expect_attempts) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(r), Some(n)) => r.state == RecipientState::Queued && r.attempts == n,
        };
        if holds {
            self.count(&e.envelope, false);
            let r = &mut e.envelope.recipients[u.index as usize];
            r.state = u.state;
            r.attempts = u.attempts;
            r.next_attempt = u.next_attempt;
            r.last_reply = u.last_reply;
            r.delay_notified = u.delay_notified;
            self.count(&e.envelope, true);
            self.dirty.insert(u.id);
        }
        self.entries.insert(u.id, e);
        if holds { Applied::Done } else { Applied::Conflict }
    }

    /// Up to `limit` messages with a queued recipient due at `now_ms`, earliest first, taken
    /// out of the due index until [`IndexState::release`].
    pub(super) fn lease_due(&mut self, now_ms: u64, limit: usize) -> Vec<Envelope> {
        let keys: Vec<(u64, QueueId)> =
            self.due.range(..=(now_ms, QueueId(u64::MAX))).take(limit).copied().collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            self.due.remove(&k);
            self.leased.insert(k.1);
            if let Some(e) = self.entries.get(&k.1) {
                out.push(e.envelope.clone());
            }
        }
        out
    }

    pub(super) fn release(&mut self, id: QueueId) {
        if self.leased.remove(&id)
            && let Some(k) = self.entries.get(&id).and_then(|e| due_key(&e.envelope))
        {
            self.due.insert(k);
        }
    }

    pub(super) fn publish_gauges(&self) {
        metrics::SPOOL_MESSAGES.set(self.entries.len() as i64);
        metrics::SPOOL_SEGMENTS.set(self.live.len() as i64);
        metrics::SPOOL_DISK_BYTES.set(self.seg_bytes.values().sum::<u64>() as i64);
        for (i, label) in ["queued", "delivered", "failed"].iter().enumerate() {
            metrics::QUEUE_RECIPIENTS.with_label_values(&[label]).set(self.recipients[i] as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::test_envelope;

    fn loc() -> Location {
        Location { segment: 1, offset: 0, len: 1, content_offset: 0 }
    }

    fn update(id: u64, state: RecipientState, attempts: u32, next: u64) -> RecipientUpdate {
        RecipientUpdate {
            id: QueueId(id),
            index: 0,
            state,
            attempts,
            next_attempt: next,
            last_reply: None,
            delay_notified: false,
            expect_attempts: Some(attempts - 1),
        }
    }

    /// The due index follows every change, so a deferred message is not found until it is due.
    #[test]
    fn due_index_follows_inserts_updates_and_removals() {
        let mut st = IndexState::default();
        for id in 1..=3 {
            st.apply(Apply::Insert(Box::new(test_envelope(QueueId(id), 1))), loc());
        }
        // Leases are released at once here: this checks the index, not the leasing.
        let ids = |st: &mut IndexState, now| {
            let got: Vec<u64> = st.lease_due(now, 10).iter().map(|e| e.id.0).collect();
            for &id in &got {
                st.release(QueueId(id));
            }
            got
        };
        assert_eq!(ids(&mut st, 0), [1, 2, 3]);
        assert_eq!(
            st.apply(Apply::Update(update(2, RecipientState::Queued, 1, 500)), loc()),
            Applied::Done
        );
        assert_eq!(
            st.apply(Apply::Update(update(3, RecipientState::Delivered, 1, 0)), loc()),
            Applied::Done
        );
        assert_eq!(ids(&mut st, 499), [1]);
        assert_eq!(ids(&mut st, 500), [1, 2]);
        st.apply(Apply::Remove(QueueId(1)), loc());
        assert_eq!(ids(&mut st, u64::MAX), [2]);
        assert_eq!(st.recipients, [1, 1, 0], "queued, delivered, failed of messages 2 and 3");
        assert_eq!(st.due.len(), 1);
    }

    /// Compare-and-set: an update based on a stale snapshot does not overwrite a newer outcome.
    #[test]
    fn a_stale_conditional_update_is_a_conflict_and_changes_nothing() {
        let mut st = IndexState::default();
        st.apply(Apply::Insert(Box::new(test_envelope(QueueId(1), 1))), loc());
        // Delivered on the first attempt...
        assert_eq!(
            st.apply(Apply::Update(update(1, RecipientState::Delivered, 1, 0)), loc()),
            Applied::Done
        );
        // ...then a flush made from the snapshot before it must not re-queue the recipient.
        let flush = RecipientUpdate { next_attempt: 0, ..update(1, RecipientState::Queued, 1, 0) };
        assert_eq!(st.apply(Apply::Update(flush), loc()), Applied::Conflict);
        let r = &st.entries[&QueueId(1)].envelope.recipients[0];
        assert_eq!((r.state, r.attempts), (RecipientState::Delivered, 1));
        assert_eq!(st.due.len(), 0);
    }

    /// A leased message is not handed out twice, whatever happens to it meanwhile, and comes
    /// back when released; one removed while leased is simply gone.
    #[test]
    fn leased_messages_stay_out_of_the_due_index_until_released() {
        let mut st = IndexState::default();
        for id in 1..=3 {
            st.apply(Apply::Insert(Box::new(test_envelope(QueueId(id), 1))), loc());
        }
        let got: Vec<u64> = st.lease_due(0, 2).iter().map(|e| e.id.0).collect();
        assert_eq!(got, [1, 2]);
        assert_eq!(st.lease_due(0, 10).len(), 1, "only 3 is left to lease");
        // An outcome recorded while leased does not put it back.
        st.apply(Apply::Update(update(1, RecipientState::Queued, 1, 0)), loc());
        assert!(st.lease_due(u64::MAX, 10).is_empty());
        st.release(QueueId(1));
        st.apply(Apply::Remove(QueueId(2)), loc());
        st.release(QueueId(2));
        let got: Vec<u64> = st.lease_due(u64::MAX, 10).iter().map(|e| e.id.0).collect();
        assert_eq!(got, [1]);
        assert_eq!(st.due.len(), 0);
    }
}
