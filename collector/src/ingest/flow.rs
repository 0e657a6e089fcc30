//! Flow control: what bounds ingest's memory, and when the collector says
//! it is overloaded. Pure; the caller passes `now`.
//!
//! Contract (see also ARCHITECTURE.md, "Backpressure"):
//! * The ingest worker holds at most `ingest.receive_maximum` messages it
//!   has not answered (a message is answered once the group commit after
//!   it is durable and its unit's ack is queued, or once it is refused),
//!   and at most `2 × ingest.commit_max_records` of their records.
//!   Past that it stops taking; the bounded hand-offs (raw messages:
//!   `ingest.queue`; parsed: at most 256) fill, the MQTT task stops
//!   reading the socket, and TCP pushes back on the broker, which holds the
//!   rest (and behind it the agents, whose disk buffers keep every record
//!   until its signed ack). So ingest holds at most
//!   `receive_maximum + queue + 256 + 1` messages, whatever the load.
//! * Nothing waits on the publisher: the publisher waits on the MQTT task,
//!   which waits on the worker, so a wait the other way would be a cycle.
//! * PUBACKs are rumqttc's automatic ones, written in batches as messages
//!   are read. Holding them until the commit (MQTT 5 receive maximum) was
//!   built and measured, and dropped: Mosquitto 2.0.11 honours the receive
//!   maximum for the first window only (32 announced, 1,024 in flight once
//!   PUBACKs flowed), and rumqttc 0.25 writes each manual PUBACK as its own
//!   request and flush, one per event-loop turn against ten packets read,
//!   which starved the acks (100,000 units: 374,000 PUBACKs and 764,000
//!   acks queued, acked ratio 0.06). A PUBACKed message the collector dies
//!   holding is not lost: its unit was never acked, so the agent resends it
//!   (on the collector's next hello, or after its ack timeout).
//! * [`Overload`]: the collector is overloaded while its oldest message
//!   not yet durable has waited `ingest.overload_wait` or more (a slow
//!   store), or the worker has not once found its queue empty for that
//!   long (it is the bottleneck, and the backlog is in the broker, where we
//!   cannot see its age); and is no longer once both are under half of it
//!   (hysteresis, so the state does not flap). It is reported on `/readyz`, as a metric, and in one
//!   log line per change.

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

    /// `wait_ms`: how long ingest has been behind (the oldest message not
    /// yet durable, or the time since the worker was last idle; 0 when
    /// neither). Returns the new state on a change.
    pub fn observe(&mut self, wait: u64) -> Option<bool> {
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
        let steps: &[(u64, Option<bool>)] = &[
            (0, None),
            (100, None),
            (1_999, None),
            (2_000, Some(true)),
            (5_000, None),
            (1_500, None), // still above half: stays on
            (1_000, None), // exactly half: stays on
            (999, Some(false)),
            (1_500, None), // below the threshold: stays off
            (2_500, Some(true)),
            (0, Some(false)), // nothing waits
        ];
        let mut o = Overload::new(2_000);
        for (i, (wait, want)) in steps.iter().enumerate() {
            assert_eq!(o.observe(*wait), *want, "step {i}: wait {wait}");
        }
    }
}
