//! The publisher's queue: bounded by the unit count, not by time. Pure.
//!
//! Contract: acks and status messages wait here until the MQTT client takes
//! them. An ack still waiting is merged with a newer one for the same unit
//! and boot (`crate::seq::merge_acks`: the merge covers every seq either
//! covered), and a retained status message still waiting is replaced by a
//! newer one for the same topic (retained: only the newest counts). So
//! however far the MQTT connection's output falls behind ingest, the queue
//! holds at most one ack per unit and boot and one message per status
//! topic, in the order each key was first queued. Merges are counted.
//! Action requests (`OutboundKind::Action`) and other messages that are
//! not retained are never merged: each is its own entry. Requests are
//! bounded before they get here (`[actions] max_pending`, counted in
//! `muster_actions_queued` until the publisher takes them).

use std::collections::{HashMap, VecDeque};

use muster_proto::{BootId, UnitId};

use crate::seq::merge_acks;
use crate::status_pub::{Out, OutboundKind};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ack(UnitId, BootId),
    Retained(String),
    /// A message that must not be coalesced (not retained).
    Once(u64),
}

#[derive(Debug, Default)]
pub struct OutQueue {
    order: VecDeque<Key>,
    items: HashMap<Key, Out>,
    next_once: u64,
    /// Items merged into one already queued.
    pub merged: u64,
}

impl OutQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn push(&mut self, o: Out) {
        let key = match &o {
            Out::Ack(a) => Key::Ack(a.unit.clone(), a.ack.boot),
            Out::Message(m) if m.retain && m.kind != OutboundKind::Action => {
                Key::Retained(m.topic.clone())
            }
            Out::Message(_) => {
                self.next_once += 1;
                Key::Once(self.next_once)
            }
        };
        match self.items.get_mut(&key) {
            Some(Out::Ack(queued)) => {
                if let Out::Ack(new) = o {
                    queued.ack = merge_acks(&queued.ack, &new.ack);
                    queued.version = new.version;
                    queued.since = match (queued.since, new.since) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                self.merged += 1;
            }
            Some(queued) => {
                *queued = o;
                self.merged += 1;
            }
            None => {
                self.order.push_back(key.clone());
                self.items.insert(key, o);
            }
        }
    }

    pub fn pop(&mut self) -> Option<Out> {
        let key = self.order.pop_front()?;
        self.items.remove(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_pub::{AckOut, Outbound};
    use muster_proto::{Ack, KeyId, SeqRange, Signature};

    fn ack(unit: &str, boot: u64, upto: u64, ranges: &[(u64, u64)]) -> Out {
        Out::Ack(AckOut {
            unit: UnitId::new("metro-fire", unit).unwrap(),
            ack: Ack {
                boot: BootId(boot),
                upto,
                ranges: ranges
                    .iter()
                    .map(|&(first, last)| SeqRange { first, last })
                    .collect(),
                collector_ms: 0,
                key_id: KeyId::NONE,
                sig: Signature::NONE,
            },
            version: 2,
            since: None,
        })
    }

    fn status(topic: &str, body: &str, retain: bool) -> Out {
        Out::Message(Outbound {
            topic: topic.into(),
            payload: body.as_bytes().to_vec(),
            retain,
            since: None,
            kind: OutboundKind::Status,
        })
    }

    fn describe(o: Out) -> String {
        match o {
            Out::Ack(a) => format!(
                "ack {} boot {} upto {} {:?}",
                a.unit.unit,
                a.ack.boot.0,
                a.ack.upto,
                a.ack
                    .ranges
                    .iter()
                    .map(|r| (r.first, r.last))
                    .collect::<Vec<_>>()
            ),
            Out::Message(m) => format!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)),
        }
    }

    #[test]
    fn the_queue_holds_one_ack_per_unit_and_boot_and_one_message_per_retained_topic() {
        let mut q = OutQueue::default();
        q.push(ack("E1", 1, 3, &[]));
        q.push(status("s/E1", "warn", true));
        q.push(ack("E2", 1, 1, &[]));
        q.push(ack("E1", 1, 5, &[(8, 8)])); // merged into the first
        q.push(ack("E1", 2, 1, &[])); // another boot: its own
        q.push(status("s/E1", "crit", true)); // replaces, keeps its place
        q.push(status("log", "a", false));
        q.push(status("log", "b", false)); // not retained: both go
        assert_eq!(q.len(), 6);
        assert_eq!(q.merged, 2);
        let got: Vec<String> = std::iter::from_fn(|| q.pop()).map(describe).collect();
        assert_eq!(
            got,
            [
                "ack E1 boot 1 upto 5 [(8, 8)]",
                "s/E1 crit",
                "ack E2 boot 1 upto 1 []",
                "ack E1 boot 2 upto 1 []",
                "log a",
                "log b",
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn action_requests_are_never_merged_even_on_one_topic() {
        let mut q = OutQueue::default();
        let request = |body: &str, retain: bool| {
            Out::Message(Outbound {
                topic: "muster/v1/metro-fire/E1/action".into(),
                payload: body.as_bytes().to_vec(),
                retain,
                since: None,
                kind: OutboundKind::Action,
            })
        };
        q.push(request("a", false));
        q.push(status("s/E1", "ok", true));
        q.push(request("b", false));
        // Even one marked retained by mistake keeps its own entry.
        q.push(request("c", true));
        assert_eq!((q.len(), q.merged), (4, 0));
        let got: Vec<String> = std::iter::from_fn(|| q.pop()).map(describe).collect();
        assert_eq!(
            got,
            [
                "muster/v1/metro-fire/E1/action a",
                "s/E1 ok",
                "muster/v1/metro-fire/E1/action b",
                "muster/v1/metro-fire/E1/action c",
            ]
        );
    }
}
