//! The feed's connection limits, as pure decisions (the I/O is in
//! `server.rs`; every function here takes `now`).
//!
//! Contract:
//! - [`ConnPhase`]: a connection is *reading a head* from the moment it is
//!   accepted, and again from the first byte of its next request; it must
//!   complete the head within `header_read_timeout` (slowloris). While a
//!   request is being answered (any response, an SSE stream included) no
//!   timer runs. Once the last response has been written the connection is
//!   *idle* and is closed after `idle_timeout` unless a byte arrives.
//! - [`accept_backoff`]: accept errors (EMFILE, ENFILE, ENOBUFS...) wait 50 ms,
//!   doubling to 1 s; an accepted connection resets it.
//! - [`HttpDrop`]: every connection or stream the feed drops has a named
//!   reason, the `reason` label of its counter.

use muster_base::backoff::Retry;
use std::time::Duration;

use tokio::time::Instant;

/// Why the feed closed a connection or a stream itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpDrop {
    /// Over `http.max_connections`: accepted and closed at once.
    ConnectionCap,
    /// No complete request head within `http.header_read_timeout`.
    HeaderTimeout,
    /// A stream client `http.sse_buffer` events behind (it stopped reading).
    SseOverflow,
    /// `accept()` failed (out of file descriptors, buffers...).
    AcceptError,
}

impl HttpDrop {
    pub const ALL: [HttpDrop; 4] = [
        HttpDrop::ConnectionCap,
        HttpDrop::HeaderTimeout,
        HttpDrop::SseOverflow,
        HttpDrop::AcceptError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpDrop::ConnectionCap => "connection_cap",
            HttpDrop::HeaderTimeout => "header_timeout",
            HttpDrop::SseOverflow => "sse_overflow",
            HttpDrop::AcceptError => "accept_error",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl crate::ingest::refusal::LogReason for HttpDrop {
    const COUNT: usize = HttpDrop::ALL.len();
    fn index(self) -> usize {
        HttpDrop::index(self)
    }
}

/// Why a connection's timer ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Reading a head for longer than `header_read_timeout`.
    Header,
    /// Idle between requests for longer than `idle_timeout`.
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnPhase {
    /// Requests being answered (hyper's HTTP/1 answers one at a time; a
    /// count keeps this right whatever the order of the calls).
    busy: u32,
    /// Reading a head (true) or idle (false), when not busy.
    head: bool,
    since: Instant,
}

impl ConnPhase {
    /// A connection just accepted: reading its first head.
    pub fn accepted(now: Instant) -> Self {
        ConnPhase {
            busy: 0,
            head: true,
            since: now,
        }
    }

    /// A complete head arrived: the request is being answered.
    pub fn request_started(&mut self) {
        self.busy += 1;
    }

    /// A response was written (or abandoned).
    pub fn request_ended(&mut self, now: Instant) {
        self.busy = self.busy.saturating_sub(1);
        if self.busy == 0 {
            self.head = false;
            self.since = now;
        }
    }

    /// Bytes arrived. Returns whether the phase changed (an idle connection
    /// started its next head).
    pub fn bytes_read(&mut self, now: Instant) -> bool {
        if self.busy == 0 && !self.head {
            self.head = true;
            self.since = now;
            true
        } else {
            false
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy > 0
    }

    /// When this phase runs out, and why; `None` while busy.
    pub fn deadline(&self, t: &Timeouts) -> Option<(Instant, Expiry)> {
        if self.busy > 0 {
            None
        } else if self.head {
            Some((self.since + t.header_read, Expiry::Header))
        } else {
            Some((self.since + t.idle, Expiry::Idle))
        }
    }

    /// Whether the phase has run out at `now`.
    pub fn expired(&self, t: &Timeouts, now: Instant) -> Option<Expiry> {
        self.deadline(t)
            .and_then(|(at, why)| (now >= at).then_some(why))
    }
}

/// Accept-error backoff: 50 ms doubling to 1 s, reset by a success (no
/// jitter: there is nothing to spread).
pub fn accept_backoff() -> Retry {
    Retry::new(Duration::from_millis(50), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn phases_table() {
        let t0 = Instant::now();
        let mut p = ConnPhase::accepted(t0);
        // Fresh connection: the header clock runs from accept, bytes or not.
        assert_eq!(p.deadline(&T), Some((t0 + s(10), Expiry::Header)));
        assert!(!p.bytes_read(t0 + s(3)), "bytes of a head restart nothing");
        assert_eq!(p.expired(&T, t0 + s(9)), None);
        assert_eq!(p.expired(&T, t0 + s(10)), Some(Expiry::Header));
        // A complete head: no timer while answering, however long (SSE).
        p.request_started();
        assert_eq!(p.deadline(&T), None);
        assert!(!p.bytes_read(t0 + s(20)), "bytes while busy change nothing");
        assert_eq!(p.expired(&T, t0 + s(10_000)), None);
        // Answered: idle clock.
        p.request_ended(t0 + s(30));
        assert_eq!(p.deadline(&T), Some((t0 + s(90), Expiry::Idle)));
        assert_eq!(p.expired(&T, t0 + s(89)), None);
        assert_eq!(p.expired(&T, t0 + s(90)), Some(Expiry::Idle));
        // The first byte of the next request: the header clock again.
        assert!(p.bytes_read(t0 + s(40)));
        assert!(!p.bytes_read(t0 + s(45)));
        assert_eq!(p.deadline(&T), Some((t0 + s(50), Expiry::Header)));
        // Overlapping calls: busy until the last one ends.
        p.request_started();
        p.request_started();
        p.request_ended(t0 + s(41));
        assert!(p.is_busy());
        p.request_ended(t0 + s(42));
        assert!(!p.is_busy());
        assert_eq!(p.deadline(&T), Some((t0 + s(102), Expiry::Idle)));
        // An extra end never underflows.
        p.request_ended(t0 + s(43));
        assert_eq!(p.deadline(&T), Some((t0 + s(103), Expiry::Idle)));
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = accept_backoff();
        let got: Vec<u64> = (0..8).map(|_| b.next_plain().as_millis() as u64).collect();
        assert_eq!(got, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        for _ in 0..100 {
            assert_eq!(b.next_plain(), Duration::from_secs(1));
        }
        b.reset();
        assert_eq!(b.next_plain(), Duration::from_millis(50));
    }

    #[test]
    fn drop_labels_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in HttpDrop::ALL {
            assert!(seen.insert(r.as_str()));
            assert_eq!(HttpDrop::ALL[r.index()], r);
        }
    }
}
