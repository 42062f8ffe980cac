//! A seeded xorshift64 generator for the randomized tests: deterministic (a failure replays
//! the same way), no dependency.

/// Successive pseudo-random numbers from `seed` (which must not be zero).
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
