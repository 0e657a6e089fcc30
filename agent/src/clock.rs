//! The agent's clock, injected so tests can run on paused tokio time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_ms_now()
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wall-clock time that advances with tokio's clock: under
/// `tokio::time::pause()` it moves only when the test advances time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at the current wall-clock time.
    pub fn new() -> Self {
        Self::starting_at(unix_ms_now())
    }

    /// Starts at `base_ms` (unix ms): tests pick a fixed epoch.
    pub fn starting_at(base_ms: u64) -> Self {
        TokioClock {
            base_ms,
            base: tokio::time::Instant::now(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::starting_at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        tokio::time::advance(std::time::Duration::from_millis(2_500)).await;
        assert_eq!(c.now_ms(), 3_500);
    }
}
