//! Reconnect backoff: exponential with full jitter, a pure core with an
//! injected random source. After a broker restart 2,500 terminals retry at
//! uniformly spread moments instead of in lockstep: attempt `n` waits a
//! uniform random time in `[0, min(max, min × 2^n)]`.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling of the next wait: `min(max, min × 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The wait before the next attempt, drawn from `rng`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rng.random_range(0..=ms))
    }

    /// A connection succeeded: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceiling_doubles_up_to_max() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut rng = StdRng::seed_from_u64(7);
        let expect = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for (i, secs) in expect.iter().enumerate() {
            assert_eq!(b.ceiling(), Duration::from_secs(*secs), "attempt {i}");
            let d = b.next_delay(&mut rng);
            assert!(d <= Duration::from_secs(*secs), "attempt {i}: {d:?}");
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn many_attempts_never_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(60));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }

    #[test]
    fn max_below_min_is_min() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(), Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_spreads_a_fleet_over_the_whole_window() {
        // 2,500 terminals on their 5th attempt (ceiling 16 s): their waits
        // fill the window evenly, no second gets a stampede.
        let mut rng = StdRng::seed_from_u64(2500);
        let mut per_second = [0u32; 17];
        for _ in 0..2500 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            for _ in 0..4 {
                b.next_delay(&mut rng);
            }
            let d = b.next_delay(&mut rng);
            per_second[d.as_secs() as usize] += 1;
        }
        let busiest = per_second[..16].iter().max().unwrap();
        let quietest = per_second[..16].iter().min().unwrap();
        // Uniform: 2500/16 ≈ 156 per second.
        assert!(*busiest < 220, "{per_second:?}");
        assert!(*quietest > 100, "{per_second:?}");
    }
}
