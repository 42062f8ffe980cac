//! A destination's ready queue, fair between tenants: work is kept per tenant and taken by
//! smooth weighted round-robin (`[tenant.NAME] weight`), so one tenant's backlog of 20,000
//! messages does not delay another's 100 behind it. Transactional work goes ahead of bulk, but
//! while both wait, bulk still gets at least `bulk_share` of the turns, so it never starves.
//! Sans-IO: no clock, no sockets; the dispatcher pushes and pops.

use std::collections::{BTreeMap, VecDeque};

use compact_str::CompactString;

/// One tenant's work in one class, and its round-robin state.
struct Lane<J> {
    jobs: VecDeque<J>,
    weight: i64,
    current: i64,
}

/// The tenants (None: untagged mail) with work in one class.
struct Class<J> {
    lanes: BTreeMap<Option<CompactString>, Lane<J>>,
}

impl<J> Default for Class<J> {
    fn default() -> Self {
        Class { lanes: BTreeMap::new() }
    }
}

impl<J> Class<J> {
    fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    fn push(&mut self, job: J, tenant: Option<&str>, weight: u32) {
        let lane = self.lanes.entry(tenant.map(CompactString::from)).or_insert_with(|| Lane {
            jobs: VecDeque::new(),
            weight: i64::from(weight.max(1)),
            current: 0,
        });
        lane.jobs.push_back(job);
    }

    /// The next job by smooth weighted round-robin over the tenants with work; an emptied
    /// tenant leaves (memory stays bounded by the tenants waiting).
    fn pop(&mut self) -> Option<J> {
        if self.lanes.len() == 1 {
            let mut only = self.lanes.first_entry()?;
            let job = only.get_mut().jobs.pop_front();
            if only.get().jobs.is_empty() {
                only.remove();
            }
            return job;
        }
        let total: i64 = self.lanes.values().map(|l| l.weight).sum();
        let mut best: Option<(&Option<CompactString>, i64)> = None;
        for (tenant, lane) in self.lanes.iter_mut() {
            lane.current += lane.weight;
            if best.is_none_or(|(_, c)| lane.current > c) {
                best = Some((tenant, lane.current));
            }
        }
        let key = best?.0.clone();
        let lane = self.lanes.get_mut(&key)?;
        lane.current -= total;
        let job = lane.jobs.pop_front();
        if lane.jobs.is_empty() {
            self.lanes.remove(&key);
        }
        job
    }

    /// Keeps the jobs `keep` says; returns how many went.
    fn retain(&mut self, keep: &mut impl FnMut(&J) -> bool) -> usize {
        let mut gone = 0;
        self.lanes.retain(|_, lane| {
            let before = lane.jobs.len();
            lane.jobs.retain(|j| keep(j));
            gone += before - lane.jobs.len();
            !lane.jobs.is_empty()
        });
        gone
    }

    /// Takes out the jobs `pick` says, in order.
    fn take(&mut self, pick: &impl Fn(&J) -> bool, out: &mut Vec<J>) {
        self.lanes.retain(|_, lane| {
            let (taken, kept): (VecDeque<J>, VecDeque<J>) =
                std::mem::take(&mut lane.jobs).into_iter().partition(|j| pick(j));
            out.extend(taken);
            lane.jobs = kept;
            !lane.jobs.is_empty()
        });
    }

    fn drain(&mut self) -> impl Iterator<Item = J> + '_ {
        std::mem::take(&mut self.lanes).into_values().flat_map(|l| l.jobs)
    }
}

/// The ready work of one destination.
pub struct Ready<J> {
    transactional: Class<J>,
    bulk: Class<J>,
    len: usize,
    /// Transactional jobs taken in a row while bulk waited.
    streak: u32,
    /// After this many transactional jobs in a row, a waiting bulk job goes (from `bulk_share`).
    max_streak: u32,
}

impl<J> Ready<J> {
    /// `bulk_share`: the least share of turns bulk gets while transactional work waits
    /// (0: strict priority; 0.2: one in five).
    pub fn new(bulk_share: f64) -> Self {
        let max_streak = if bulk_share <= 0.0 {
            u32::MAX
        } else {
            ((1.0 / bulk_share.min(1.0)).ceil() as u32).saturating_sub(1)
        };
        Ready {
            transactional: Class::default(),
            bulk: Class::default(),
            len: 0,
            streak: 0,
            max_streak,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, job: J, tenant: Option<&str>, weight: u32, transactional: bool) {
        let class = if transactional { &mut self.transactional } else { &mut self.bulk };
        class.push(job, tenant, weight);
        self.len += 1;
    }

    pub fn pop(&mut self) -> Option<J> {
        let bulk_turn = self.transactional.is_empty()
            || (!self.bulk.is_empty() && self.streak >= self.max_streak);
        let job = if bulk_turn {
            self.streak = 0;
            self.bulk.pop()
        } else {
            if !self.bulk.is_empty() {
                self.streak += 1;
            }
            self.transactional.pop()
        }?;
        self.len -= 1;
        Some(job)
    }

    /// Keeps the jobs `keep` says (an operator withdraws a message); returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&J) -> bool) -> usize {
        let gone = self.transactional.retain(&mut keep) + self.bulk.retain(&mut keep);
        self.len -= gone;
        gone
    }

    /// Takes out the jobs `pick` says (a rule suspends or bounces them).
    pub fn take(&mut self, pick: impl Fn(&J) -> bool) -> Vec<J> {
        let mut out = Vec::new();
        self.transactional.take(&pick, &mut out);
        self.bulk.take(&pick, &mut out);
        self.len -= out.len();
        out
    }

    /// Everything, in no particular order (the destination is unreachable).
    pub fn drain(&mut self) -> Vec<J> {
        self.len = 0;
        self.streak = 0;
        self.transactional.drain().chain(self.bulk.drain()).collect::<Vec<_>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backlog of one tenant does not delay another's work behind it: with equal weights the
    /// newcomer's jobs alternate with the backlog from its first.
    #[test]
    fn a_tenants_backlog_does_not_delay_another() {
        let mut r = Ready::new(0.2);
        for i in 0..20_000 {
            r.push(("a", i), Some("a"), 1, false);
        }
        for i in 0..100 {
            r.push(("b", i), Some("b"), 1, false);
        }
        let first: Vec<_> = (0..200).map(|_| r.pop().unwrap()).collect();
        let b: Vec<_> = first.iter().filter(|(t, _)| *t == "b").map(|(_, i)| *i).collect();
        assert_eq!(b, (0..100).collect::<Vec<_>>(), "all of b's within 200 turns, in order");
        assert_eq!(r.len(), 20_000 - 100);
        assert!(std::iter::from_fn(|| r.pop()).all(|(t, _)| t == "a"));
        assert!(r.is_empty());
    }

    #[test]
    fn weights_share_the_turns() {
        let mut r = Ready::new(0.2);
        for i in 0..1000 {
            r.push("a", Some("a"), 3, false);
            r.push("b", Some("b"), 1, false);
            r.push("u", None, 1, false);
            let _ = i;
        }
        let turns: Vec<_> = (0..500).map(|_| r.pop().unwrap()).collect();
        let n = |t| turns.iter().filter(|x| **x == t).count();
        assert_eq!((n("a"), n("b"), n("u")), (300, 100, 100));
    }

    /// Transactional work overtakes bulk, which keeps one turn in five while both wait.
    #[test]
    fn transactional_first_but_bulk_keeps_its_share() {
        let mut r = Ready::new(0.2);
        for _ in 0..100 {
            r.push("bulk", Some("a"), 1, false);
        }
        r.push("tx", Some("a"), 1, true);
        assert_eq!(r.pop(), Some("tx"), "overtakes 100 bulk jobs");
        for _ in 0..100 {
            r.push("tx", None, 1, true);
        }
        let turns: Vec<_> = (0..50).map(|_| r.pop().unwrap()).collect();
        for w in turns.chunks(5) {
            assert_eq!(w.iter().filter(|x| **x == "bulk").count(), 1, "{w:?}");
        }
        let mut strict = Ready::new(0.0);
        strict.push("bulk", None, 1, false);
        strict.push("tx", None, 1, true);
        strict.push("tx", None, 1, true);
        assert_eq!(
            [strict.pop(), strict.pop(), strict.pop()],
            [Some("tx"), Some("tx"), Some("bulk")]
        );
    }

    #[test]
    fn drain_empties_every_class() {
        let mut r = Ready::new(0.2);
        r.push(1, Some("a"), 1, false);
        r.push(2, None, 1, true);
        r.push(3, Some("b"), 1, false);
        assert_eq!(r.retain(|j| *j != 3), 1);
        assert_eq!(r.len(), 2);
        let mut all = r.drain();
        all.sort();
        assert_eq!(all, [1, 2]);
        assert!(r.is_empty() && r.pop().is_none());
    }
}
