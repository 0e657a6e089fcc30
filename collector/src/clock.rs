//! The collector's clock, injected everywhere time is read, so tests control
//! it. The rules engine never reads it: ingest reads it once per input and
//! passes `now_ms` along.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time as unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// Wall time anchored once at creation, then advanced by tokio's monotonic
/// clock: it never goes backwards, and `tokio::time::pause()` /
/// `advance()` move it in tests.
#[derive(Debug)]
pub struct TokioClock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        TokioClock {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }

    pub fn shared() -> SharedClock {
        Arc::new(TokioClock::new())
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }
}

/// A clock that only moves when told to: tests feed it.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicU64::new(now_ms)))
    }

    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by_ms: u64) -> u64 {
        self.0.fetch_add(by_ms, Ordering::SeqCst) + by_ms
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        let t0 = c.now_ms();
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        assert_eq!(c.now_ms() - t0, 90_000);
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_ms(), 1_000);
        assert_eq!(c.advance(500), 1_500);
        c.set(10);
        assert_eq!(c.now_ms(), 10);
    }
}
