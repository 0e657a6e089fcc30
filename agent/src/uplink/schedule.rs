//! Replay scheduling, a pure core: what to publish next.
//!
//! * **Live first.** Records taken while connected, and right after a
//!   reconnect the newest host sample and a fresh heartbeat, go out before
//!   any backlog, so dispatch sees the unit's present state at once.
//! * **Backlog oldest first**, in batches of up to `batch_max_bytes`, from a
//!   cursor (a buffer key) that only moves back when something must be
//!   resent (a timeout, a reconnect).
//! * **Bounded**: at most `max_inflight` publishes await the collector's ack.
//! * **Metered links**: backlog bytes pass a token bucket of
//!   `replay_bytes_per_sec` (live records are not held back by it).
//!
//! The driver asks [`Scheduler::next`] and reports back what it did.

use std::collections::VecDeque;

/// Most live keys queued; beyond that they wait in the backlog (they are in
/// the buffer anyway).
pub const LIVE_QUEUE_MAX: usize = 256;

/// A token bucket over bytes: `rate` per second, burst of one second's worth
/// (at least one batch). Sending may take it into debt; nothing more passes
/// until it is repaid.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    /// Capacity, in byte-milliseconds (bytes × 1000).
    burst_milli: i128,
    /// Tokens, in byte-milliseconds: refilling by `rate` per ms is exact.
    tokens_milli: i128,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u64, min_burst: u64, now_ms: u64) -> Self {
        let burst = i128::from(rate_per_sec.max(min_burst).max(1)) * 1000;
        TokenBucket {
            rate: rate_per_sec.max(1),
            burst_milli: burst,
            tokens_milli: burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens_milli =
            (self.tokens_milli + i128::from(dt) * i128::from(self.rate)).min(self.burst_milli);
    }

    /// `None` if sending may start now, else the time (ms) it may.
    pub fn ready_at(&mut self, now_ms: u64) -> Option<u64> {
        self.refill(now_ms);
        if self.tokens_milli > 0 {
            None
        } else {
            let wait = (-self.tokens_milli) / i128::from(self.rate) + 1;
            Some(self.last_ms + wait as u64)
        }
    }

    pub fn take(&mut self, bytes: u64, now_ms: u64) {
        self.refill(now_ms);
        self.tokens_milli -= i128::from(bytes) * 1000;
    }
}

/// What to publish next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Publish this buffered record on its own, now.
    Live(u64),
    /// Read a batch of up to `max_bytes` from key `from` (skipping keys in
    /// flight) and publish it; then call [`Scheduler::backlog_sent`] or
    /// [`Scheduler::backlog_empty`].
    Backlog { from: u64, max_bytes: u64 },
    /// Nothing may go before this time (the bucket), unless something changes.
    WaitUntil(u64),
    /// Nothing to do (or `max_inflight` reached) until an event.
    Idle,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    max_inflight: usize,
    batch_max_bytes: u64,
    bucket: Option<TokenBucket>,
    live: VecDeque<u64>,
    cursor: u64,
    backlog_done: bool,
    connected: bool,
}

impl Scheduler {
    pub fn new(
        max_inflight: u16,
        batch_max_bytes: u32,
        bytes_per_sec: Option<u64>,
        now_ms: u64,
    ) -> Self {
        Scheduler {
            max_inflight: usize::from(max_inflight.max(1)),
            batch_max_bytes: u64::from(batch_max_bytes.max(1)),
            bucket: bytes_per_sec.map(|r| TokenBucket::new(r, 0, now_ms)),
            live: VecDeque::new(),
            cursor: 0,
            backlog_done: false,
            connected: false,
        }
    }

    /// The link is up. `newest` are keys to send first (the newest host
    /// sample, the fresh heartbeat), in that order.
    pub fn connected(&mut self, newest: &[u64]) {
        self.connected = true;
        self.cursor = 0;
        self.backlog_done = false;
        self.live.clear();
        for &k in newest {
            self.push_live(k);
        }
    }

    /// The link is down: everything not acked is resent after the reconnect.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.live.clear();
        self.cursor = 0;
        self.backlog_done = false;
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// A record was buffered. While connected it goes out live; otherwise it
    /// is backlog.
    pub fn appended(&mut self, key: u64) {
        if self.connected {
            self.push_live(key);
        }
    }

    fn push_live(&mut self, key: u64) {
        if self.live.len() < LIVE_QUEUE_MAX {
            self.live.push_back(key);
        } else {
            // It stays in the buffer; the backlog pass will find it.
            self.resend_from(key);
        }
    }

    /// These keys must go again (an ack timeout): the backlog pass will pick
    /// them up, oldest first.
    pub fn resend(&mut self, keys: &[u64]) {
        if let Some(&min) = keys.iter().min() {
            self.resend_from(min);
        }
    }

    fn resend_from(&mut self, key: u64) {
        self.cursor = self.cursor.min(key);
        self.backlog_done = false;
    }

    /// What to do now, with `inflight` publishes awaiting acks.
    pub fn next(&mut self, now_ms: u64, inflight: usize) -> Next {
        if !self.connected || inflight >= self.max_inflight {
            return Next::Idle;
        }
        if let Some(k) = self.live.pop_front() {
            return Next::Live(k);
        }
        if self.backlog_done {
            return Next::Idle;
        }
        if let Some(b) = self.bucket.as_mut()
            && let Some(at) = b.ready_at(now_ms)
        {
            return Next::WaitUntil(at);
        }
        Next::Backlog {
            from: self.cursor,
            max_bytes: self.batch_max_bytes,
        }
    }

    /// A backlog batch went out: `last_key` was its last record, `bytes` its size.
    pub fn backlog_sent(&mut self, last_key: u64, bytes: u64, now_ms: u64) {
        self.cursor = self.cursor.max(last_key + 1);
        if let Some(b) = self.bucket.as_mut() {
            b.take(bytes, now_ms);
        }
    }

    /// The backlog read found nothing from the cursor on.
    pub fn backlog_empty(&mut self) {
        self.backlog_done = true;
    }

    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_paces_to_the_rate() {
        // 1000 B/s, burst 1000: a 1000 B batch passes at once, the next
        // waits a second.
        let mut b = TokenBucket::new(1000, 0, 0);
        assert_eq!(b.ready_at(0), None);
        b.take(1000, 0);
        assert_eq!(b.ready_at(0), Some(1));
        assert_eq!(b.ready_at(1), None);
        assert_eq!(b.ready_at(500), None);
        // Debt: a 3000 B batch must be repaid before the next.
        let mut b = TokenBucket::new(1000, 0, 0);
        b.take(3000, 0);
        assert_eq!(b.ready_at(0), Some(2001));
        assert_eq!(b.ready_at(2000), Some(2001));
        assert_eq!(b.ready_at(2001), None);
    }

    #[test]
    fn token_bucket_average_rate_over_a_long_run() {
        let mut b = TokenBucket::new(10_000, 0, 0);
        let mut now = 0;
        let mut sent = 0u64;
        while now < 60_000 {
            match b.ready_at(now) {
                None => {
                    b.take(4096, now);
                    sent += 4096;
                }
                Some(at) => now = at,
            }
        }
        // 60 s at 10 kB/s plus the initial burst and one batch of debt.
        assert!(sent <= 600_000 + 10_000 + 4096, "{sent}");
        assert!(sent >= 600_000 - 4096, "{sent}");
    }

    #[test]
    fn live_first_after_reconnect_then_backlog_oldest_first() {
        let mut s = Scheduler::new(4, 1000, None, 0);
        assert_eq!(s.next(0, 0), Next::Idle, "disconnected");
        s.appended(5); // during the outage: backlog only
        s.connected(&[90, 91]);
        s.appended(92);
        assert_eq!(s.next(0, 0), Next::Live(90));
        assert_eq!(s.next(0, 1), Next::Live(91));
        assert_eq!(s.next(0, 2), Next::Live(92));
        assert_eq!(
            s.next(0, 3),
            Next::Backlog {
                from: 0,
                max_bytes: 1000
            }
        );
        s.backlog_sent(40, 900, 0);
        // max_inflight reached.
        assert_eq!(s.next(0, 4), Next::Idle);
        // A new live record jumps the rest of the backlog.
        s.appended(93);
        assert_eq!(s.next(0, 3), Next::Live(93));
        assert_eq!(
            s.next(0, 3),
            Next::Backlog {
                from: 41,
                max_bytes: 1000
            }
        );
        s.backlog_empty();
        assert_eq!(s.next(0, 0), Next::Idle);
    }

    #[test]
    fn resend_moves_the_cursor_back() {
        let mut s = Scheduler::new(4, 1000, None, 0);
        s.connected(&[]);
        s.backlog_sent(100, 10, 0);
        s.backlog_empty();
        assert_eq!(s.next(0, 0), Next::Idle);
        s.resend(&[60, 61, 70]);
        assert_eq!(
            s.next(0, 0),
            Next::Backlog {
                from: 60,
                max_bytes: 1000
            }
        );
    }

    #[test]
    fn disconnect_forgets_live_and_rewinds() {
        let mut s = Scheduler::new(4, 1000, None, 0);
        s.connected(&[1]);
        s.backlog_sent(50, 10, 0);
        s.disconnected();
        s.appended(60);
        assert_eq!(s.next(0, 0), Next::Idle);
        s.connected(&[60]);
        assert_eq!(s.next(0, 0), Next::Live(60));
        assert_eq!(
            s.next(0, 0),
            Next::Backlog {
                from: 0,
                max_bytes: 1000
            }
        );
    }

    #[test]
    fn bucket_holds_backlog_but_not_live() {
        let mut s = Scheduler::new(16, 1000, Some(1000), 0);
        s.connected(&[]);
        assert_eq!(
            s.next(0, 0),
            Next::Backlog {
                from: 0,
                max_bytes: 1000
            }
        );
        s.backlog_sent(9, 1000, 0);
        assert_eq!(s.next(0, 1), Next::WaitUntil(1));
        s.appended(77);
        assert_eq!(s.next(0, 1), Next::Live(77));
        assert_eq!(
            s.next(1, 1),
            Next::Backlog {
                from: 10,
                max_bytes: 1000
            }
        );
    }

    #[test]
    fn live_queue_overflow_falls_back_to_backlog() {
        let mut s = Scheduler::new(1, 1000, None, 0);
        s.connected(&[]);
        s.backlog_empty();
        for k in 1..=(LIVE_QUEUE_MAX as u64 + 5) {
            s.appended(k);
        }
        assert_eq!(s.live_len(), LIVE_QUEUE_MAX);
        // The overflow is found by the backlog pass once the live queue is done.
        for k in 1..=LIVE_QUEUE_MAX as u64 {
            assert_eq!(s.next(0, 0), Next::Live(k));
        }
        assert_eq!(
            s.next(0, 0),
            Next::Backlog {
                from: 0,
                max_bytes: 1000
            },
            "cursor was 0 already"
        );
    }
}
