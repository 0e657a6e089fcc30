//! Exponential backoff with injected randomness: the one home of retry
//! delays (the agent's MQTT reconnect and enrolment, the collector's MQTT
//! reconnect, webhook retries, the feed's accept errors).
//!
//! Contract (pure: the caller passes the attempt number and a uniform draw
//! in `[0, 1)`, so schedules are table-tested):
//! * the ceiling of attempt `n` (0-based) is `min(max, min × 2^n)`, without
//!   overflow for any `n`;
//! * **full jitter** waits `draw × ceiling`: uniform in `[0, ceiling]`.
//!   After a broker restart 2,500 terminals (or several collectors) retry
//!   at uniformly spread moments instead of in lockstep;
//! * **equal jitter** waits `ceiling × (1/2 + draw/2)`: spread, but never
//!   sooner than half the ceiling (webhook receivers coming back);
//! * **no jitter**: the ceiling itself (accept errors: nothing to spread);
//! * a draw outside `[0, 1]` is clamped.
//!
//! [`Retry`] is the stateful counter around it (attempt, reset on success);
//! [`Jitter`] is a small seedable source of draws (no cryptography needed);
//! [`Failover`] is which of several equal servers the next attempt goes to
//! (the agent's `mqtt.urls`, the cluster collector's `[cluster] mqtt`).

use std::time::Duration;

/// The schedule: `min` doubling to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// `max` below `min` is `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
        }
    }

    /// `min(max, min × 2^attempt)` (attempt 0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max.max(self.min))
    }

    /// Uniform in `[0, ceiling(attempt)]`.
    pub fn full(&self, attempt: u32, draw: f64) -> Duration {
        let cap = self.ceiling(attempt);
        let ms = (cap.as_millis() as f64 * draw.clamp(0.0, 1.0)).round() as u64;
        Duration::from_millis(ms).min(cap)
    }

    /// In `[ceiling/2, ceiling]`.
    pub fn equal(&self, attempt: u32, draw: f64) -> Duration {
        self.ceiling(attempt)
            .mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
    }
}

/// A retry counter over a [`Backoff`]: each failure moves one attempt on,
/// a success starts again from `min`.
#[derive(Debug, Clone)]
pub struct Retry {
    pub backoff: Backoff,
    attempt: u32,
}

impl Retry {
    pub fn new(min: Duration, max: Duration) -> Self {
        Retry {
            backoff: Backoff::new(min, max),
            attempt: 0,
        }
    }

    /// The ceiling of the next wait.
    pub fn ceiling(&self) -> Duration {
        self.backoff.ceiling(self.attempt)
    }

    /// The next wait with full jitter; moves one attempt on.
    pub fn next_full(&mut self, draw: f64) -> Duration {
        self.step(self.backoff.full(self.attempt, draw))
    }

    /// The next wait with equal jitter; moves one attempt on.
    pub fn next_equal(&mut self, draw: f64) -> Duration {
        self.step(self.backoff.equal(self.attempt, draw))
    }

    /// The next wait without jitter; moves one attempt on.
    pub fn next_plain(&mut self) -> Duration {
        self.step(self.ceiling())
    }

    fn step(&mut self, wait: Duration) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// A success: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// Which server the next connection attempt goes to (pure): the first
/// listed at start; after every failed attempt or lost connection, the
/// next one (wrapping), so a dead node costs one attempt and one backoff
/// wait, and a client whose link is down cycles through them all at the
/// backoff's pace. A connection that is up stays where it is: there is no
/// failing back to the first server (a cluster's nodes are equals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    servers: usize,
    at: usize,
}

impl Failover {
    /// `servers` >= 1 (0 is treated as 1).
    pub fn new(servers: usize) -> Failover {
        Failover {
            servers: servers.max(1),
            at: 0,
        }
    }

    /// The index of the server connected to, or tried next.
    pub fn current(&self) -> usize {
        self.at
    }

    /// The connection (or attempt) to the current server failed: the index
    /// of the server to try next.
    pub fn failed(&mut self) -> usize {
        self.at = (self.at + 1) % self.servers;
        self.at
    }
}

/// A small xorshift generator of draws: no cryptography needed, just spread.
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

    /// Seeded from the process's hash randomness, the pid and the time:
    /// two processes started together draw differently.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(crate::clock::unix_ms_now());
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

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn schedule_table() {
        let b = Backoff::new(S(1), S(60));
        // (attempt, draw, full, equal)
        let cases: &[(u32, f64, Duration, Duration)] = &[
            (0, 0.0, MS(0), MS(500)),
            (0, 1.0, S(1), S(1)),
            (0, 0.5, MS(500), MS(750)),
            (1, 0.0, MS(0), S(1)),
            (1, 1.0, S(2), S(2)),
            (2, 1.0, S(4), S(4)),
            (5, 1.0, S(32), S(32)),
            (6, 1.0, S(60), S(60)), // 64 s capped
            (6, 0.0, MS(0), S(30)),
            (40, 1.0, S(60), S(60)), // no overflow
            (u32::MAX, 1.0, S(60), S(60)),
            (1, 7.0, S(2), S(2)),   // draw clamped
            (1, -3.0, MS(0), S(1)), // draw clamped
        ];
        for (n, d, full, equal) in cases {
            assert_eq!(b.full(*n, *d), *full, "full, attempt {n}, draw {d}");
            assert_eq!(b.equal(*n, *d), *equal, "equal, attempt {n}, draw {d}");
        }
        assert_eq!(Backoff::new(S(5), S(1)).ceiling(3), S(5), "max below min");
    }

    #[test]
    fn failover_tries_each_server_in_turn_and_wraps() {
        // (servers, failures, the server then current)
        for (servers, failures, at) in [
            (1, 0, 0),
            (1, 5, 0),
            (3, 0, 0),
            (3, 1, 1),
            (3, 2, 2),
            (3, 3, 0),
            (3, 7, 1),
            (0, 2, 0), // a list is never empty; treated as one server
        ] {
            let mut f = Failover::new(servers);
            for _ in 0..failures {
                f.failed();
            }
            assert_eq!(f.current(), at, "{servers} servers, {failures} failures");
        }
    }

    #[test]
    fn retry_counts_and_resets() {
        let mut r = Retry::new(MS(50), S(1));
        let plain: Vec<_> = (0..7).map(|_| r.next_plain()).collect();
        assert_eq!(
            plain,
            [MS(50), MS(100), MS(200), MS(400), MS(800), S(1), S(1)]
        );
        assert_eq!(r.attempt(), 7);
        r.reset();
        assert_eq!(r.ceiling(), MS(50));
        assert!(r.next_full(0.999) <= MS(50));
        assert_eq!(r.attempt(), 1);
        // Equal jitter: never sooner than half the ceiling.
        assert_eq!(r.next_equal(0.0), MS(50));
        assert_eq!(r.next_equal(1.0), MS(200));
    }

    #[test]
    fn full_jitter_spreads_a_fleet_over_the_whole_window() {
        // 2,500 terminals on their 5th attempt (ceiling 16 s): their waits
        // fill the window evenly, no second gets a stampede.
        let mut j = Jitter::new(2500);
        let mut per_second = [0u32; 17];
        for _ in 0..2500 {
            let mut r = Retry::new(S(1), S(60));
            for _ in 0..4 {
                r.next_full(j.draw());
            }
            let d = r.next_full(j.draw());
            per_second[d.as_secs() as usize] += 1;
        }
        let busiest = per_second[..16].iter().max().unwrap();
        let quietest = per_second[..16].iter().min().unwrap();
        // Uniform: 2500/16 ≈ 156 per second.
        assert!(*busiest < 220, "{per_second:?}");
        assert!(*quietest > 100, "{per_second:?}");
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
