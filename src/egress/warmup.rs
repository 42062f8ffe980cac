//! IP warm-up: a new source sends a growing number of messages per site per day
//! (`[warmup.NAME] schedule`, one entry per day; after the last entry, no cap). A source's day 1
//! is the UTC day sluice first ran with its warm-up; the counters (start day, and per site
//! today's count) live in `<data_dir>/warmup.json`, written like the quota counters, so a restart
//! neither resets the schedule nor hands out a fresh day's allowance (a crash forgets at most
//! the last second's counts). Time is an input (Unix milliseconds), so days are tested on a
//! simulated clock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// `[warmup.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    /// Messages per site per day, day 1 first.
    pub schedule: Vec<u64>,
    #[serde(default)]
    pub overflow: Overflow,
}

/// What happens to a warming source's mail for a site past today's cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// It goes to the pool's other sources (those with room); with none, it waits.
    #[default]
    Pool,
    /// It waits for the next day.
    Wait,
}

const DAY_MS: u64 = 86_400_000;
/// Longest schedule (days) accepted.
pub const MAX_DAYS: usize = 366;

/// The UTC day of a Unix-milliseconds time.
pub fn day_of(now_ms: u64) -> u64 {
    now_ms / DAY_MS
}

/// The start of the UTC day after `now_ms`, in Unix milliseconds.
pub fn next_day_ms(now_ms: u64) -> u64 {
    (day_of(now_ms) + 1) * DAY_MS
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct SourceDays {
    /// The UTC day of the source's day 1.
    start: u64,
    /// Per site: the day counted and the messages sent that day.
    sites: HashMap<String, (u64, u64)>,
}

#[derive(Default)]
struct State {
    sources: HashMap<String, SourceDays>,
    dirty: bool,
}

/// The warm-up plans of the warming sources, and their day counters.
pub struct Warmup {
    path: PathBuf,
    plans: HashMap<String, WarmupConfig>,
    state: Mutex<State>,
}

impl Warmup {
    /// `plans`: source name → its warm-up. Counters come from `path`; a warming source seen
    /// for the first time starts its day 1 today (`now_ms`).
    pub fn open(path: &Path, plans: HashMap<String, WarmupConfig>, now_ms: u64) -> Warmup {
        let mut sources: HashMap<String, SourceDays> =
            crate::state_file::read_json(path, "warm-up counters");
        let before = sources.len();
        // Sources no longer warming are forgotten; new ones start today.
        sources.retain(|s, _| plans.contains_key(s));
        let mut dirty = sources.len() != before;
        for s in plans.keys() {
            sources.entry(s.clone()).or_insert_with(|| {
                dirty = true;
                SourceDays { start: day_of(now_ms), sites: HashMap::new() }
            });
        }
        let state = Mutex::new(State { sources, dirty });
        Warmup { path: path.to_path_buf(), plans, state }
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// The overflow rule of a warming source (None: it is not warming).
    pub fn overflow(&self, source: &str) -> Option<Overflow> {
        self.plans.get(source).map(|p| p.overflow)
    }

    /// The source's warm-up day (1 = its first), None when it is not warming or past its
    /// schedule.
    pub fn day(&self, source: &str, now_ms: u64) -> Option<u64> {
        let plan = self.plans.get(source)?;
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let start = st.sources.get(source)?.start;
        let day = day_of(now_ms).saturating_sub(start) + 1;
        (day as usize <= plan.schedule.len()).then_some(day)
    }

    /// Today's cap for the source at a site; None: no cap.
    pub fn cap(&self, source: &str, now_ms: u64) -> Option<u64> {
        let day = self.day(source, now_ms)?;
        Some(self.plans[source].schedule[day as usize - 1])
    }

    /// Whether the source may send one more message to `site` today.
    pub fn has_room(&self, source: &str, site: &str, now_ms: u64) -> bool {
        let Some(cap) = self.cap(source, now_ms) else { return true };
        self.sent_today(source, site, now_ms) < cap
    }

    fn sent_today(&self, source: &str, site: &str, now_ms: u64) -> u64 {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.sources.get(source).and_then(|d| d.sites.get(site)) {
            Some(&(day, n)) if day == day_of(now_ms) => n,
            _ => 0,
        }
    }

    /// Counts one message from the source to `site` (warming sources only).
    pub fn count(&self, source: &str, site: &str, now_ms: u64) {
        if self.day(source, now_ms).is_none() {
            return;
        }
        let today = day_of(now_ms);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(days) = st.sources.get_mut(source) else { return };
        // Bounded: one entry per site the source sends to; yesterday's entries are replaced.
        let e = days.sites.entry(site.to_string()).or_insert((today, 0));
        if e.0 != today {
            *e = (today, 0);
        }
        e.1 += 1;
        st.dirty = true;
    }

    /// Writes the counters if they changed; days before today are dropped.
    pub fn save(&self) -> std::io::Result<()> {
        self.save_at(crate::spool::unix_millis())
    }

    fn save_at(&self, now_ms: u64) -> std::io::Result<()> {
        let text = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            let today = day_of(now_ms);
            for d in st.sources.values_mut() {
                d.sites.retain(|_, (day, _)| *day == today);
            }
            serde_json::to_vec(&st.sources).map_err(std::io::Error::other)?
        };
        crate::state_file::write_atomic(&self.path, &text)
    }
}

impl crate::state_file::Saved for Warmup {
    fn save(&self) -> std::io::Result<()> {
        Warmup::save(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 20_000 * DAY_MS + 3_600_000; // 01:00 UTC on some day

    fn plans(overflow: Overflow) -> HashMap<String, WarmupConfig> {
        let plan = WarmupConfig { schedule: vec![2, 3], overflow };
        HashMap::from([("new".to_string(), plan)])
    }

    #[test]
    fn caps_hold_per_site_per_day_and_grow_with_the_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warmup::open(&dir.path().join("w.json"), plans(Overflow::Pool), T0);
        assert_eq!((w.day("new", T0), w.cap("new", T0)), (Some(1), Some(2)));
        for _ in 0..2 {
            assert!(w.has_room("new", "google", T0));
            w.count("new", "google", T0);
        }
        assert!(!w.has_room("new", "google", T0), "day 1: 2 per site");
        assert!(w.has_room("new", "yahoo", T0), "per site");
        assert!(w.has_room("old", "google", T0), "a source without warm-up has no cap");
        // 22:59 the same day: still capped; 00:00 the next day: day 2, cap 3, a fresh count.
        let late = T0 + 22 * 3_600_000 - 60_000;
        assert!(!w.has_room("new", "google", late));
        let day2 = next_day_ms(T0);
        assert_eq!((w.day("new", day2), w.cap("new", day2)), (Some(2), Some(3)));
        for _ in 0..3 {
            assert!(w.has_room("new", "google", day2));
            w.count("new", "google", day2);
        }
        assert!(!w.has_room("new", "google", day2));
        // After the last entry: no cap, no counting.
        let day3 = next_day_ms(day2);
        assert_eq!(w.day("new", day3), None);
        assert!(w.has_room("new", "google", day3));
    }

    #[test]
    fn counters_and_the_start_day_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        let w = Warmup::open(&path, plans(Overflow::Wait), T0);
        w.count("new", "google", T0);
        w.count("new", "google", T0);
        w.save_at(T0).unwrap();
        // Reopened the next day: the start day is kept (day 2), yesterday's count dropped.
        let day2 = next_day_ms(T0);
        let again = Warmup::open(&path, plans(Overflow::Wait), day2);
        assert_eq!(again.day("new", day2), Some(2));
        assert!(again.has_room("new", "google", day2));
        // Reopened the same day: the count holds.
        let same = Warmup::open(&path, plans(Overflow::Wait), T0);
        assert!(!same.has_room("new", "google", T0));
        assert_eq!(same.overflow("new"), Some(Overflow::Wait));
        // A damaged file starts again rather than stopping mail.
        std::fs::write(&path, b"{not json").unwrap();
        let fresh = Warmup::open(&path, plans(Overflow::Wait), day2);
        assert_eq!(fresh.day("new", day2), Some(1));
    }
}
