//! One agency's delivery queue (pure): bounded, in order, one delivery in
//! flight at a time, retried with [`Backoff`] until `max_attempts`, then a
//! dead letter. The I/O loop asks [`Outbox::next_due`] what to send and
//! reports each attempt's result with [`Outbox::on_result`].
//!
//! In order, one at a time: a receiver sees an agency's notifications in
//! the order they happened. A receiver that is down holds the queue; when it
//! is full the OLDEST waiting notification becomes a dead letter (the newest
//! state matters most to a supervisor).

use std::collections::VecDeque;

use tokio::time::{Duration, Instant};

use muster_base::backoff::Backoff;

#[derive(Debug, Clone, PartialEq)]
pub struct Pending<T> {
    pub item: T,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this instant.
    pub due: Instant,
}

/// Why a notification was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// `max_attempts` attempts all failed.
    Exhausted,
    /// The queue was full and this was the oldest waiting one.
    QueueFull,
    /// Still queued when the shutdown deadline passed.
    Shutdown,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Exhausted => "exhausted",
            DeadReason::QueueFull => "queue_full",
            DeadReason::Shutdown => "shutdown",
        }
    }
}

/// What happened to the head after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum After<T> {
    Delivered(T),
    /// Will be tried again at the instant given.
    Retry {
        at: Instant,
        attempts: u32,
    },
    Dead(T, DeadReason),
}

#[derive(Debug)]
pub struct Outbox<T> {
    queue: VecDeque<Pending<T>>,
    capacity: usize,
    max_attempts: u32,
    backoff: Backoff,
    in_flight: bool,
}

impl<T: Clone> Outbox<T> {
    pub fn new(capacity: usize, max_attempts: u32, backoff: Backoff) -> Self {
        Outbox {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            max_attempts: max_attempts.max(1),
            backoff,
            in_flight: false,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Queues a notification, due now. When full, the oldest one not in
    /// flight is given up and returned.
    pub fn push(&mut self, item: T, now: Instant) -> Option<T> {
        let mut dropped = None;
        if self.queue.len() >= self.capacity {
            let idx = usize::from(self.in_flight);
            if idx < self.queue.len() {
                dropped = self.queue.remove(idx).map(|p| p.item);
            }
        }
        if self.queue.len() >= self.capacity {
            // Capacity 1 with the head in flight: the new one is the loser.
            return Some(item);
        }
        self.queue.push_back(Pending {
            item,
            attempts: 0,
            due: now,
        });
        dropped
    }

    /// The head, if it is due and nothing is in flight; marks it in flight.
    pub fn next_due(&mut self, now: Instant) -> Option<(T, u32)> {
        if self.in_flight {
            return None;
        }
        let head = self.queue.front()?;
        if head.due > now {
            return None;
        }
        self.in_flight = true;
        Some((head.item.clone(), head.attempts + 1))
    }

    /// When the loop must wake for this outbox (`None`: nothing to do
    /// until an attempt finishes or something is queued).
    pub fn wake_at(&self) -> Option<Instant> {
        if self.in_flight {
            return None;
        }
        self.queue.front().map(|p| p.due)
    }

    /// The in-flight attempt's result; `jitter` is a draw in `[0, 1)`.
    pub fn on_result(&mut self, ok: bool, now: Instant, jitter: f64) -> Option<After<T>> {
        if !self.in_flight {
            return None;
        }
        self.in_flight = false;
        let head = self.queue.front_mut()?;
        head.attempts += 1;
        if ok {
            return self.queue.pop_front().map(|p| After::Delivered(p.item));
        }
        if head.attempts >= self.max_attempts {
            return self
                .queue
                .pop_front()
                .map(|p| After::Dead(p.item, DeadReason::Exhausted));
        }
        let at = now + self.backoff.equal(head.attempts.saturating_sub(1), jitter);
        head.due = at;
        Some(After::Retry {
            at,
            attempts: head.attempts,
        })
    }

    /// Everything still queued (at shutdown), in flight or not.
    pub fn drain(&mut self) -> Vec<T> {
        self.in_flight = false;
        self.queue.drain(..).map(|p| p.item).collect()
    }

    /// Shortens every wait to `now` (at shutdown: try once more while the
    /// drain deadline lasts rather than sleep past it).
    pub fn hurry(&mut self, now: Instant) {
        for p in &mut self.queue {
            p.due = p.due.min(now);
        }
    }
}

/// A shorthand for tests and the loop.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(cap: usize, max: u32) -> Outbox<&'static str> {
        Outbox::new(cap, max, Backoff::new(ms(100), ms(1000)))
    }

    #[derive(Debug)]
    enum Step {
        Push(&'static str, Option<&'static str>),
        /// Ask at +ms: what is due.
        Due(u64, Option<(&'static str, u32)>),
        /// Result at +ms, ok?, jitter; want.
        Result(u64, bool, f64, Option<Want>),
        Wake(Option<u64>),
        Len(usize),
    }
    use Step::*;

    #[derive(Debug, Clone)]
    enum Want {
        Delivered(&'static str),
        Retry(u64, u32),
        Dead(&'static str, DeadReason),
    }

    fn run(mut o: Outbox<&'static str>, steps: &[Step]) {
        let t0 = Instant::now();
        let at = |n: u64| t0 + ms(n);
        for (i, s) in steps.iter().enumerate() {
            match s {
                Push(x, want) => assert_eq!(o.push(x, t0), *want, "step {i} {s:?}"),
                Due(n, want) => assert_eq!(o.next_due(at(*n)), *want, "step {i} {s:?}"),
                Result(n, ok, j, want) => {
                    let want = want.clone().map(|w| match w {
                        Want::Delivered(x) => After::Delivered(x),
                        Want::Dead(x, r) => After::Dead(x, r),
                        Want::Retry(a, attempts) => After::Retry {
                            at: at(a),
                            attempts,
                        },
                    });
                    assert_eq!(o.on_result(*ok, at(*n), *j), want, "step {i} {s:?}")
                }
                Wake(want) => assert_eq!(o.wake_at(), want.map(at), "step {i} {s:?}"),
                Len(n) => assert_eq!(o.len(), *n, "step {i} {s:?}"),
            }
        }
    }

    fn retry(at_ms: u64, attempts: u32) -> Option<Want> {
        Some(Want::Retry(at_ms, attempts))
    }

    #[test]
    fn delivered_first_time() {
        run(
            outbox(10, 3),
            &[
                Push("a", None),
                Push("b", None),
                Wake(Some(0)),
                Due(0, Some(("a", 1))),
                Due(0, None), // one in flight at a time
                Wake(None),
                Result(5, true, 0.0, Some(Want::Delivered("a"))),
                Due(5, Some(("b", 1))),
                Result(6, true, 0.0, Some(Want::Delivered("b"))),
                Len(0),
                Wake(None),
            ],
        );
    }

    #[test]
    fn fails_twice_then_delivered_with_backoff() {
        // base 100 ms, equal jitter: 1st retry after 50..100, 2nd 100..200.
        run(
            outbox(10, 5),
            &[
                Push("a", None),
                Due(0, Some(("a", 1))),
                Result(10, false, 1.0, retry(110, 1)),
                Wake(Some(110)),
                Due(109, None),
                Due(110, Some(("a", 2))),
                Result(120, false, 0.0, retry(220, 2)),
                Due(219, None),
                Due(220, Some(("a", 3))),
                Result(230, true, 0.0, Some(Want::Delivered("a"))),
                Len(0),
            ],
        );
    }

    #[test]
    fn exhausted_attempts_make_a_dead_letter_and_the_next_goes() {
        run(
            outbox(10, 2),
            &[
                Push("a", None),
                Push("b", None),
                Due(0, Some(("a", 1))),
                Result(0, false, 1.0, retry(100, 1)),
                Due(50, None), // b waits behind a: in order
                Due(100, Some(("a", 2))),
                Result(
                    100,
                    false,
                    1.0,
                    Some(Want::Dead("a", DeadReason::Exhausted)),
                ),
                Due(100, Some(("b", 1))),
            ],
        );
    }

    #[test]
    fn a_full_queue_drops_the_oldest_waiting_not_the_one_in_flight() {
        run(
            outbox(2, 3),
            &[
                Push("a", None),
                Push("b", None),
                Push("c", Some("a")), // a not in flight: oldest goes
                Due(0, Some(("b", 1))),
                Push("d", Some("c")), // b in flight: c is the oldest waiting
                Len(2),
                Result(1, true, 0.0, Some(Want::Delivered("b"))),
                Due(1, Some(("d", 1))),
            ],
        );
        run(
            outbox(1, 3),
            &[
                Push("a", None),
                Due(0, Some(("a", 1))),
                Push("b", Some("b")), // nowhere to put it
                Len(1),
            ],
        );
    }

    #[test]
    fn a_result_without_an_attempt_is_ignored_and_hurry_shortens_waits() {
        let t0 = Instant::now();
        let mut o = outbox(4, 9);
        assert_eq!(o.on_result(true, t0, 0.0), None);
        o.push("a", t0);
        o.next_due(t0);
        o.on_result(false, t0, 1.0);
        assert_eq!(o.wake_at(), Some(t0 + ms(100)));
        o.hurry(t0 + ms(1));
        assert_eq!(o.wake_at(), Some(t0 + ms(1)));
        assert_eq!(o.drain(), vec!["a"]);
        assert!(o.is_empty() && !o.in_flight());
    }
}
