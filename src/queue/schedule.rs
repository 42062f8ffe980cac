//! Retry schedule (DESIGN.md `[queue] retry`, `max_age`): after the n-th temporary failure a
//! recipient waits `retry[n-1]` (the last interval repeats), with ±10 % jitter so that recipients
//! that failed together do not retry together; after `max_age` it expires.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetrySchedule {
    intervals: Vec<Duration>,
    max_age: Duration,
}

impl RetrySchedule {
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// `intervals` must not be empty (config validation guarantees it).
    pub fn new(intervals: Vec<Duration>, max_age: Duration) -> Self {
        let intervals =
            if intervals.is_empty() { vec![Duration::from_secs(300)] } else { intervals };
        RetrySchedule { intervals, max_age }
    }

    /// The wait after `failures` temporary failures (1 = after the first), jittered by `seed`
    /// (e.g. the queue id), deterministically.
    pub fn delay(&self, failures: u32, seed: u64) -> Duration {
        let i = (failures.max(1) as usize - 1).min(self.intervals.len() - 1);
        let base = self.intervals[i];
        // splitmix64 of (seed, failures) -> a factor in [0.9, 1.1).
        let mut z = seed ^ (u64::from(failures) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let factor = 0.9 + (z % 2000) as f64 / 10_000.0;
        base.mul_f64(factor)
    }

    /// Unix milliseconds of the next attempt after a failure at `now_ms`.
    pub fn next_attempt(&self, failures: u32, seed: u64, now_ms: u64) -> u64 {
        now_ms + self.delay(failures, seed).as_millis() as u64
    }

    /// Whether a message received at `received_ms` is past its maximum age at `now_ms`.
    pub fn is_expired(&self, received_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(received_ms) >= self.max_age.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        let m = |n: u64| Duration::from_secs(n * 60);
        RetrySchedule::new(
            vec![m(5), m(10), m(20), m(40), m(60), m(120), m(240)],
            Duration::from_secs(5 * 86_400),
        )
    }

    #[test]
    fn intervals_grow_then_the_last_repeats_with_bounded_jitter() {
        let s = schedule();
        let expect = [5, 10, 20, 40, 60, 120, 240, 240, 240];
        for (i, minutes) in expect.iter().enumerate() {
            let base = Duration::from_secs(minutes * 60);
            for seed in 0..50 {
                let d = s.delay(i as u32 + 1, seed);
                assert!(d >= base.mul_f64(0.9) && d < base.mul_f64(1.1), "attempt {i}: {d:?}");
            }
        }
        // Jitter spreads recipients that failed together.
        let spread: std::collections::HashSet<_> = (0..50).map(|seed| s.delay(1, seed)).collect();
        assert!(spread.len() > 40);
        assert_eq!(s.delay(3, 7), s.delay(3, 7), "deterministic per seed");
    }

    #[test]
    fn expiry_after_max_age() {
        let s = schedule();
        let day = 86_400_000;
        assert!(!s.is_expired(0, 5 * day - 1));
        assert!(s.is_expired(0, 5 * day));
    }
}
