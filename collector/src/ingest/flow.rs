//! Flow control: what bounds ingest's memory, and when the collector says
//! it is overloaded. Pure; the caller passes `now`.
//!
//! Contract (see also ARCHITECTURE.md, "Backpressure"):
//! * The collector's MQTT session uses manual acks. A QoS 1 message from
//!   the broker is PUBACKed only once the group commit that follows its
//!   handling is durable, in the order received, whatever became of it
//!   (stored, duplicate or refused). So the messages the collector holds
//!   (hand-off queue, pending commit, commit in flight) are at most the
//!   receive maximum it announces (`ingest.receive_maximum`; the embedded
//!   broker's per-connection in-flight limit is set to the same), and the
//!   broker, and behind it the agents' disk buffers, hold the rest.
//! * A PUBACK carries the connection generation it belongs to. One from an
//!   earlier connection is not sent (the resumed session redelivers that
//!   message, which is then acked by its new packet id) and is counted.
//! * [`Overload`]: the collector is overloaded while its oldest message
//!   not yet durable has waited `ingest.overload_wait` or more, and is no
//!   longer once that wait is under half of it (hysteresis, so the state
//!   does not flap). It is reported on `/readyz`, as a metric, and in one
//!   log line per change.

/// One QoS 1 delivery to PUBACK: its packet id on the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAckId {
    pub generation: u64,
    pub pkid: u16,
}

/// The overload state, with hysteresis.
#[derive(Debug, Clone)]
pub struct Overload {
    enter_ms: u64,
    on: bool,
}

impl Overload {
    pub fn new(enter_ms: u64) -> Overload {
        Overload {
            enter_ms: enter_ms.max(1),
            on: false,
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// `oldest_wait_ms`: how long the oldest message not yet durable has
    /// waited (`None`: nothing waits). Returns the new state on a change.
    pub fn observe(&mut self, oldest_wait_ms: Option<u64>) -> Option<bool> {
        let wait = oldest_wait_ms.unwrap_or(0);
        let next = if self.on {
            wait >= self.enter_ms / 2
        } else {
            wait >= self.enter_ms
        };
        (next != self.on).then(|| {
            self.on = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_enters_at_the_wait_and_leaves_under_half_of_it() {
        // (oldest wait, expected change) in sequence, threshold 2000 ms.
        let steps: &[(Option<u64>, Option<bool>)] = &[
            (None, None),
            (Some(100), None),
            (Some(1_999), None),
            (Some(2_000), Some(true)),
            (Some(5_000), None),
            (Some(1_500), None), // still above half: stays on
            (Some(1_000), None), // exactly half: stays on
            (Some(999), Some(false)),
            (Some(1_500), None), // below the threshold: stays off
            (Some(2_500), Some(true)),
            (None, Some(false)), // nothing waits
        ];
        let mut o = Overload::new(2_000);
        for (i, (wait, want)) in steps.iter().enumerate() {
            assert_eq!(o.observe(*wait), *want, "step {i}: wait {wait:?}");
        }
    }
}
