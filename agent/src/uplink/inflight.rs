//! The in-flight table, a pure core: which buffer keys each publish carried,
//! which of them an ack frees, and which publishes timed out and must be
//! resent. `now` comes in as an argument.
//!
//! A publish is *in flight* from the moment it is handed to MQTT until the
//! collector's ack covers all of its records. A broker PUBACK does not
//! count. On a disconnect the whole table is cleared: everything in it is
//! sent again after the reconnect (the collector deduplicates).

use std::collections::{BTreeMap, HashSet};

use muster_proto::{Ack, BootId};

/// One record of a publish: its buffer key and its name on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub key: u64,
    pub boot: BootId,
    pub seq: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    records: Vec<Sent>,
    sent_ms: u64,
    bytes: usize,
}

/// What an ack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acked {
    /// Buffer keys the ack covers: delete them.
    pub freed: Vec<u64>,
    /// Publishes fully acknowledged by this ack.
    pub completed: usize,
    /// Collector clock minus agent clock, estimated from the completed
    /// publish with the shortest round trip: `collector_ms − (sent + now) / 2`.
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct Inflight {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    keys: HashSet<u64>,
}

impl Inflight {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a publish; returns its id.
    pub fn insert(&mut self, records: Vec<Sent>, bytes: usize, now_ms: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.keys.extend(records.iter().map(|r| r.key));
        self.entries.insert(
            id,
            Entry {
                records,
                sent_ms: now_ms,
                bytes,
            },
        );
        id
    }

    /// Publishes awaiting an ack.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes awaiting an ack.
    pub fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.bytes).sum()
    }

    /// Is this buffer key awaiting an ack?
    pub fn contains_key(&self, key: u64) -> bool {
        self.keys.contains(&key)
    }

    /// Applies a collector ack: frees every in-flight record it covers.
    pub fn ack(&mut self, ack: &Ack, now_ms: u64) -> Acked {
        let mut out = Acked::default();
        let mut best_rtt = u64::MAX;
        let mut done = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            let before = e.records.len();
            e.records.retain(|r| {
                if ack.covers(r.boot, r.seq) {
                    out.freed.push(r.key);
                    false
                } else {
                    true
                }
            });
            if e.records.is_empty() && before > 0 {
                done.push(*id);
                let rtt = now_ms.saturating_sub(e.sent_ms);
                if rtt < best_rtt {
                    best_rtt = rtt;
                    let mid = e.sent_ms + rtt / 2;
                    out.clock_offset_ms = Some(ack.collector_ms as i64 - mid as i64);
                }
            }
        }
        for id in &done {
            self.entries.remove(id);
        }
        for k in &out.freed {
            self.keys.remove(k);
        }
        out.completed = done.len();
        out
    }

    /// Removes publishes sent before `now - timeout` that are still not
    /// (fully) acked; returns their remaining keys, smallest first, to be
    /// resent.
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<u64> {
        let late: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| now_ms.saturating_sub(e.sent_ms) >= timeout_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut keys = Vec::new();
        for id in late {
            if let Some(e) = self.entries.remove(&id) {
                keys.extend(e.records.iter().map(|r| r.key));
            }
        }
        for k in &keys {
            self.keys.remove(k);
        }
        keys.sort_unstable();
        keys
    }

    /// Expires every publish now, whatever its age (the collector has just
    /// (re)subscribed: earlier sends may have reached nobody); returns the
    /// keys still unacked, smallest first, to be resent.
    pub fn expire_all(&mut self) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .entries
            .values()
            .flat_map(|e| e.records.iter().map(|r| r.key))
            .collect();
        self.entries.clear();
        self.keys.clear();
        keys.sort_unstable();
        keys
    }

    /// When the oldest publish times out, if any.
    pub fn next_deadline(&self, timeout_ms: u64) -> Option<u64> {
        self.entries.values().map(|e| e.sent_ms + timeout_ms).min()
    }

    /// The connection dropped: forget everything (it is all resent).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::SeqRange;

    const B: BootId = BootId(7);

    fn sent(keys_seqs: &[(u64, u64)]) -> Vec<Sent> {
        keys_seqs
            .iter()
            .map(|&(key, seq)| Sent { key, boot: B, seq })
            .collect()
    }

    fn ack(upto: u64, ranges: &[(u64, u64)], collector_ms: u64) -> Ack {
        Ack {
            boot: B,
            upto,
            ranges: ranges
                .iter()
                .map(|&(first, last)| SeqRange { first, last })
                .collect(),
            collector_ms,
            key_id: muster_proto::KeyId::NONE,
            sig: muster_proto::Signature::NONE,
        }
    }

    #[test]
    fn ack_table() {
        // (acks to apply in order, freed keys after the last one, entries left)
        type Case = (
            &'static [(u64, &'static [(u64, u64)])],
            &'static [u64],
            usize,
        );
        let cases: &[Case] = &[
            // Cumulative ack of everything.
            (&[(5, &[])], &[10, 11, 12, 20], 0),
            // Cumulative ack of the batch only: the live record stays.
            (&[(3, &[])], &[10, 11, 12], 1),
            // Selective ack of the live record sent ahead of the backlog.
            (&[(0, &[(5, 5)])], &[20], 1),
            // Partial ack of the batch: the entry stays until the rest is acked.
            (&[(2, &[])], &[10, 11], 2),
            (&[(2, &[]), (3, &[(5, 5)])], &[12, 20], 0),
            // An ack up to 0 with no ranges frees nothing.
            (&[(0, &[])], &[], 2),
        ];
        for (acks, freed, left) in cases {
            let mut t = Inflight::new();
            t.insert(sent(&[(10, 1), (11, 2), (12, 3)]), 300, 1_000);
            t.insert(sent(&[(20, 5)]), 100, 1_100);
            let mut last = Acked::default();
            for (upto, ranges) in acks.iter() {
                last = t.ack(&ack(*upto, ranges, 0), 2_000);
            }
            assert_eq!(&last.freed, freed, "{acks:?}");
            assert_eq!(t.len(), *left, "{acks:?}");
            for k in freed.iter() {
                assert!(!t.contains_key(*k));
            }
        }
    }

    #[test]
    fn ack_of_other_boot_is_ignored() {
        let mut t = Inflight::new();
        t.insert(sent(&[(1, 1)]), 10, 0);
        let mut a = ack(10, &[], 0);
        a.boot = BootId(8);
        assert_eq!(t.ack(&a, 5), Acked::default());
        assert!(t.contains_key(1));
    }

    #[test]
    fn clock_offset_from_round_trip_midpoint() {
        let mut t = Inflight::new();
        t.insert(sent(&[(1, 1)]), 10, 10_000);
        // Sent at 10_000, acked at 10_200: midpoint 10_100; collector said 15_100.
        let a = t.ack(&ack(1, &[], 15_100), 10_200);
        assert_eq!(a.clock_offset_ms, Some(5_000));
        assert_eq!(a.completed, 1);
        // Negative offsets too.
        t.insert(sent(&[(2, 2)]), 10, 20_000);
        let a = t.ack(&ack(2, &[], 19_000), 20_000);
        assert_eq!(a.clock_offset_ms, Some(-1_000));
    }

    #[test]
    fn timeouts_return_keys_for_resend() {
        let mut t = Inflight::new();
        t.insert(sent(&[(3, 3), (4, 4)]), 20, 1_000);
        t.insert(sent(&[(1, 1)]), 10, 5_000);
        assert_eq!(t.next_deadline(30_000), Some(31_000));
        assert!(t.expire(30_999, 30_000).is_empty());
        assert_eq!(t.expire(31_000, 30_000), vec![3, 4]);
        assert!(!t.contains_key(3));
        assert!(t.contains_key(1));
        assert_eq!(t.expire(100_000, 30_000), vec![1]);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(30_000), None);
    }

    #[test]
    fn partially_acked_publish_resends_only_the_rest() {
        let mut t = Inflight::new();
        t.insert(sent(&[(1, 1), (2, 2), (3, 3)]), 30, 0);
        t.ack(&ack(0, &[(2, 2)], 0), 10);
        assert_eq!(t.expire(30_000, 30_000), vec![1, 3]);
    }

    #[test]
    fn expire_all_resends_everything_unacked_at_once() {
        // (publishes: (keys and seqs, sent_ms), ack upto before, keys to resend)
        type Case = (&'static [(&'static [(u64, u64)], u64)], u64, &'static [u64]);
        let cases: &[Case] = &[
            (&[], 0, &[]),
            // Fresh and old alike, whatever the timeout.
            (
                &[(&[(3, 3), (4, 4)], 1_000), (&[(1, 1)], 999_999)],
                0,
                &[1, 3, 4],
            ),
            // What an ack already freed is not resent.
            (&[(&[(1, 1), (2, 2)], 0), (&[(5, 5)], 0)], 1, &[2, 5]),
            (&[(&[(1, 1)], 0)], 1, &[]),
        ];
        for (pubs, upto, want) in cases {
            let mut t = Inflight::new();
            for (recs, at) in pubs.iter() {
                t.insert(sent(recs), 10, *at);
            }
            t.ack(&ack(*upto, &[], 0), 1_000_000);
            assert_eq!(t.expire_all(), want.to_vec(), "{pubs:?}");
            assert!(t.is_empty());
            assert_eq!(t.next_deadline(30_000), None);
            assert!(want.iter().all(|k| !t.contains_key(*k)));
        }
    }

    #[test]
    fn clear_forgets_everything() {
        let mut t = Inflight::new();
        t.insert(sent(&[(1, 1)]), 10, 0);
        t.insert(sent(&[(2, 2)]), 10, 0);
        assert_eq!(t.bytes(), 20);
        t.clear();
        assert!(t.is_empty());
        assert!(!t.contains_key(1));
        assert_eq!(t.bytes(), 0);
    }
}
