//! Retry delays: exponential backoff with "equal jitter". Pure: the caller
//! passes the jitter draw, so the schedule is table-tested.

use std::time::Duration;

/// `delay(n)` for the n-th failed attempt (1-based) is
/// `min(max, base * 2^(n-1))`, then scaled into `[1/2, 1]` of that by the
/// jitter draw, so receivers coming back from an outage are not hit by every
/// collector's retries in the same instant, yet no retry comes sooner than
/// half the nominal delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The nominal (un-jittered) delay after `failures` failed attempts.
    pub fn nominal(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        let factor = 1u64 << exp;
        let ms = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max)
    }

    /// The delay to wait after `failures` failed attempts, with `jitter` a
    /// uniform draw in `[0, 1)`.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let n = self.nominal(failures);
        let j = jitter.clamp(0.0, 1.0);
        n.mul_f64(0.5 + 0.5 * j)
    }
}

/// A small xorshift generator for jitter: no crypto needed, just spread.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: nearby seeds give unrelated streams, and
        // the state is never zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Jitter((z ^ (z >> 31)) | 1)
    }

    /// Seeded from the process's hash randomness and the time.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Jitter::new(h.finish())
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[0, 1)`.
    pub fn draw(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_table() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        // (failures, jitter, want)
        let cases: &[(u32, f64, Duration)] = &[
            (1, 0.0, Duration::from_millis(500)),
            (1, 1.0, Duration::from_secs(1)),
            (1, 0.5, Duration::from_millis(750)),
            (2, 0.0, Duration::from_secs(1)),
            (2, 1.0, Duration::from_secs(2)),
            (3, 1.0, Duration::from_secs(4)),
            (6, 1.0, Duration::from_secs(32)),
            (7, 1.0, Duration::from_secs(60)), // 64 s capped
            (7, 0.0, Duration::from_secs(30)),
            (40, 1.0, Duration::from_secs(60)), // no overflow
            (u32::MAX, 1.0, Duration::from_secs(60)),
            (0, 1.0, Duration::from_secs(1)), // treated as the first
            (2, 7.0, Duration::from_secs(2)), // draw clamped
        ];
        for (n, j, want) in cases {
            assert_eq!(b.delay(*n, *j), *want, "failures {n}, jitter {j}");
        }
    }

    #[test]
    fn jitter_is_spread_over_the_unit_interval() {
        let mut j = Jitter::new(42);
        let draws: Vec<f64> = (0..10_000).map(|_| j.draw()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((4_500..5_500).contains(&low), "{low} of 10000 below 0.5");
        // Two generators with different seeds do not move in lockstep.
        let mut k = Jitter::new(43);
        let mut j = Jitter::new(42);
        assert!((0..10).any(|_| j.next_u64() != k.next_u64()));
    }
}
