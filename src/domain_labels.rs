//! Bounded label values for per-domain metrics: the busiest destination domains get their own
//! label, everything else is "other", so a bulk sender's millions of domains never explode the
//! series count.
//!
//! A domain earns a label once it has `promote_after` events while fewer than `max` domains are
//! labelled (a heavy-hitter approximation of "top N"); domains listed in config are labelled from
//! the start. Counts live in a bounded map that is halved when full, so rare domains fade out.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

pub struct DomainLabels {
    inner: Mutex<Inner>,
    max: usize,
    promote_after: u64,
}

struct Inner {
    labelled: HashSet<String>,
    counts: HashMap<String, u64>,
}

/// The label for domains without one.
pub const OTHER: &str = "other";
const MAX_TRACKED: usize = 10_000;

impl DomainLabels {
    pub fn new(fixed: &[String], max: usize, promote_after: u64) -> Self {
        let labelled = fixed.iter().map(|d| d.to_ascii_lowercase()).collect();
        DomainLabels {
            inner: Mutex::new(Inner { labelled, counts: HashMap::new() }),
            max,
            promote_after,
        }
    }

    /// The label `domain` has now, without counting an event.
    pub fn peek(&self, domain: &str) -> String {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.labelled.contains(&domain) { domain } else { OTHER.into() }
    }

    /// The label to count one event for `domain` under.
    pub fn label(&self, domain: &str) -> String {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.labelled.contains(&domain) {
            return domain;
        }
        if g.labelled.len() >= self.max {
            return OTHER.into();
        }
        if g.counts.len() >= MAX_TRACKED && !g.counts.contains_key(&domain) {
            g.counts.retain(|_, c| {
                *c /= 2;
                *c > 0
            });
        }
        let c = g.counts.entry(domain.clone()).or_default();
        *c += 1;
        if *c >= self.promote_after {
            g.counts.remove(&domain);
            g.labelled.insert(domain.clone());
            return domain;
        }
        OTHER.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_domains_get_labels_up_to_the_limit() {
        let l = DomainLabels::new(&["Fixed.example".into()], 3, 3);
        assert_eq!(l.label("fixed.example."), "fixed.example");
        // gmail.com earns its label on the third event; one-off domains never do.
        for i in 0..2 {
            assert_eq!(l.label("gmail.com"), OTHER);
            assert_eq!(l.label(&format!("rare{i}.test")), OTHER);
        }
        assert_eq!(l.label("GMAIL.com"), "gmail.com");
        for _ in 0..3 {
            l.label("yahoo.com");
        }
        assert_eq!(l.label("yahoo.com"), "yahoo.com");
        // Three labels now: nothing else gets one, however busy.
        for _ in 0..10 {
            assert_eq!(l.label("outlook.com"), OTHER);
        }
    }

    #[test]
    fn tracking_stays_bounded() {
        let l = DomainLabels::new(&[], 5, 1_000);
        for i in 0..3 * MAX_TRACKED {
            l.label(&format!("d{i}.test"));
        }
        assert!(l.inner.lock().unwrap().counts.len() <= MAX_TRACKED);
    }
}
