//! Sequence accounting per unit: dedup by (boot, seq), counts of received,
//! duplicate and missing records, and the ack each flush sends back. Pure:
//! no I/O, no clock; persisted with the unit so a restart neither loses nor
//! double-counts.
//!
//! Per boot the seqs seen are kept as sorted, disjoint, non-adjacent ranges,
//! so a healthy unit costs one range however long it runs; a unit's gaps
//! each cost one more. `missing = max_seq_seen - distinct_received`.

use muster_proto::{Ack, BootId, SeqRange};
use serde::{Deserialize, Serialize};

/// Boots remembered per unit; the one quiet the longest is folded into
/// `retired` totals. An MCT can power-cycle many times in one outage, and
/// all those boots replay after it: each must be remembered until it has
/// drained, or its resent records would count again.
pub const MAX_BOOTS: usize = 64;
/// Ranges above `upto` listed in one ack (the wire's list bound is 1024).
pub const MAX_ACK_RANGES: usize = 512;

/// Received / duplicates / missing for a unit or a boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqTotals {
    /// Distinct records received.
    pub received: u64,
    /// Records that arrived again after the first copy.
    pub duplicates: u64,
    /// Seqs below the highest seen that never arrived (yet).
    pub missing: u64,
}

impl std::ops::AddAssign for SeqTotals {
    fn add_assign(&mut self, o: SeqTotals) {
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.missing += o.missing;
    }
}

/// What happened to one observed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    New,
    Duplicate,
}

/// The seqs seen from one boot of a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSeq {
    pub boot: BootId,
    /// Sorted, disjoint, non-adjacent inclusive ranges of seqs received.
    pub ranges: Vec<(u64, u64)>,
    pub received: u64,
    pub duplicates: u64,
    /// Order of first appearance among this unit's boots.
    pub order: u64,
    /// Order of the latest record observed (any boot of the unit counts):
    /// the boot quiet the longest is the one retired.
    #[serde(default)]
    pub active: u64,
    /// Newest event time (unix ms) among this boot's records: the unit's
    /// current boot is the one with the newest data, not a replayed one.
    #[serde(default)]
    pub newest_at_ms: u64,
}

impl BootSeq {
    pub fn new(boot: BootId, order: u64) -> Self {
        BootSeq {
            boot,
            ranges: Vec::new(),
            received: 0,
            duplicates: 0,
            order,
            active: order,
            newest_at_ms: 0,
        }
    }

    pub fn max_seq(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    pub fn missing(&self) -> u64 {
        self.max_seq() - self.received
    }

    pub fn totals(&self) -> SeqTotals {
        SeqTotals {
            received: self.received,
            duplicates: self.duplicates,
            missing: self.missing(),
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < seq);
        i < self.ranges.len() && self.ranges[i].0 <= seq
    }

    /// Records `seq` (>= 1) as seen.
    pub fn observe(&mut self, seq: u64) -> Observed {
        let i = self.ranges.partition_point(|r| r.1 < seq);
        if i < self.ranges.len() && self.ranges[i].0 <= seq {
            self.duplicates += 1;
            return Observed::Duplicate;
        }
        self.received += 1;
        let joins_prev = i > 0 && self.ranges[i - 1].1 + 1 == seq;
        let joins_next = i < self.ranges.len() && self.ranges[i].0 == seq + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = seq,
            (false, true) => self.ranges[i].0 = seq,
            (false, false) => self.ranges.insert(i, (seq, seq)),
        }
        Observed::New
    }

    /// The ack for this boot after a flush (unsigned: the worker signs it) that stored (or saw again) the
    /// seqs in `touched`: everything up to the end of the range starting at
    /// 1, plus the ranges above it that hold a touched seq.
    pub fn ack(&self, touched: &[u64], collector_ms: u64) -> Ack {
        let upto = match self.ranges.first() {
            Some(&(1, last)) => last,
            _ => 0,
        };
        let mut ranges: Vec<SeqRange> = Vec::new();
        let mut last_idx = usize::MAX;
        let mut sorted: Vec<u64> = touched.iter().copied().filter(|&s| s > upto).collect();
        sorted.sort_unstable();
        for seq in sorted {
            let i = self.ranges.partition_point(|r| r.1 < seq);
            if i == last_idx || i >= self.ranges.len() || self.ranges[i].0 > seq {
                continue;
            }
            last_idx = i;
            let (first, last) = self.ranges[i];
            ranges.push(SeqRange { first, last });
            if ranges.len() == MAX_ACK_RANGES {
                break;
            }
        }
        Ack {
            boot: self.boot,
            upto,
            ranges,
            collector_ms,
            key_id: muster_proto::KeyId::NONE,
            sig: muster_proto::Signature::NONE,
        }
    }
}

/// A unit's sequence accounting across its boots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqAccount {
    pub boots: Vec<BootSeq>,
    /// Totals of boots no longer remembered.
    pub retired: SeqTotals,
    next_order: u64,
}

impl SeqAccount {
    /// Records `seq` of `boot`, taken at `at_ms` (event time).
    pub fn observe(&mut self, boot: BootId, seq: u64, at_ms: u64) -> Observed {
        let tick = self.next_order;
        self.next_order += 1;
        if let Some(b) = self.boots.iter_mut().find(|b| b.boot == boot) {
            b.active = tick;
            b.newest_at_ms = b.newest_at_ms.max(at_ms);
            return b.observe(seq);
        }
        if self.boots.len() >= MAX_BOOTS {
            // Retire the boot quiet the longest: never the running one,
            // whose live records keep arriving while old boots replay.
            let quiet = self
                .boots
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.active)
                .map(|(i, _)| i)
                .unwrap_or(0);
            let gone = self.boots.remove(quiet);
            self.retired += gone.totals();
        }
        let mut b = BootSeq::new(boot, tick);
        b.newest_at_ms = at_ms;
        let o = b.observe(seq);
        self.boots.push(b);
        o
    }

    pub fn boot(&self, boot: BootId) -> Option<&BootSeq> {
        self.boots.iter().find(|b| b.boot == boot)
    }

    pub fn totals(&self) -> SeqTotals {
        let mut t = self.retired;
        for b in &self.boots {
            t += b.totals();
        }
        t
    }

    /// The unit's current boot: the one with the newest data (event time),
    /// not one whose backlog is replaying; ties go to the newer boot.
    pub fn current_boot(&self) -> Option<&BootSeq> {
        self.boots.iter().max_by_key(|b| (b.newest_at_ms, b.order))
    }
}

/// One ack that says everything two acks of the same boot say: the higher
/// cumulative `upto`, and the union of their ranges above it (at most
/// [`MAX_ACK_RANGES`], lowest first; a seq left out is resent by the agent
/// and deduplicated), with the later `collector_ms`. Unsigned: the caller
/// signs the result. The publish queue merges an ack not yet sent with a
/// newer one for the same unit and boot (`ingest::outqueue`).
pub fn merge_acks(a: &Ack, b: &Ack) -> Ack {
    debug_assert_eq!(a.boot, b.boot);
    let mut upto = a.upto.max(b.upto);
    let mut all: Vec<(u64, u64)> = a
        .ranges
        .iter()
        .chain(&b.ranges)
        .map(|r| (r.first, r.last))
        .filter(|&(_, last)| last > upto)
        .collect();
    all.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (first, last) in all {
        let first = first.max(upto + 1);
        match merged.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    // A range that now starts right after upto extends it.
    if let Some(&(first, last)) = merged.first()
        && first == upto + 1
    {
        upto = last;
        merged.remove(0);
    }
    merged.truncate(MAX_ACK_RANGES);
    Ack {
        boot: a.boot,
        upto,
        ranges: merged
            .into_iter()
            .map(|(first, last)| SeqRange { first, last })
            .collect(),
        collector_ms: a.collector_ms.max(b.collector_ms),
        key_id: muster_proto::KeyId::NONE,
        sig: muster_proto::Signature::NONE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: BootId = BootId(7);

    type Ranges = &'static [(u64, u64)];

    fn run(seqs: &[u64]) -> BootSeq {
        let mut b = BootSeq::new(B, 0);
        for &s in seqs {
            b.observe(s);
        }
        b
    }

    #[test]
    fn accounting_table() {
        // seqs in arrival order -> (received, duplicates, missing, ranges)
        let cases: &[(&[u64], u64, u64, u64, Ranges)] = &[
            (&[], 0, 0, 0, &[]),
            (&[1, 2, 3], 3, 0, 0, &[(1, 3)]),
            (&[1, 2, 2, 3, 1], 3, 2, 0, &[(1, 3)]),
            (&[1, 5], 2, 0, 3, &[(1, 1), (5, 5)]),
            (&[1, 5, 3], 3, 0, 2, &[(1, 1), (3, 3), (5, 5)]),
            (&[1, 5, 3, 2, 4], 5, 0, 0, &[(1, 5)]),
            (&[5, 4, 3, 2, 1], 5, 0, 0, &[(1, 5)]),
            (&[10], 1, 0, 9, &[(10, 10)]),
            (&[10, 10, 10], 1, 2, 9, &[(10, 10)]),
            (&[3, 1, 2, 2], 3, 1, 0, &[(1, 3)]),
        ];
        for (seqs, received, dups, missing, ranges) in cases {
            let b = run(seqs);
            assert_eq!(b.received, *received, "{seqs:?} received");
            assert_eq!(b.missing(), *missing, "{seqs:?} missing");
            assert_eq!(b.duplicates, *dups, "{seqs:?} duplicates");
            assert_eq!(b.ranges, *ranges, "{seqs:?} ranges");
        }
    }

    #[test]
    fn observe_reports_duplicates() {
        let mut b = BootSeq::new(B, 0);
        assert_eq!(b.observe(4), Observed::New);
        assert_eq!(b.observe(4), Observed::Duplicate);
        assert!(b.contains(4));
        assert!(!b.contains(3));
    }

    #[test]
    fn ack_table() {
        // seen, touched -> (upto, ranges)
        let cases: &[(&[u64], &[u64], u64, Ranges)] = &[
            (&[1, 2, 3], &[3], 3, &[]),
            (&[1, 2, 3], &[1, 2, 3], 3, &[]),
            // Live record sent ahead of a backlog: selectively acked.
            (&[1, 2, 50], &[50], 2, &[(50, 50)]),
            (&[1, 2, 50, 51], &[50, 51], 2, &[(50, 51)]),
            // Nothing from seq 1 (dropped by the agent's cap): ranges only.
            (&[7, 8, 20], &[8, 20], 0, &[(7, 8), (20, 20)]),
            // A duplicate is acked again.
            (&[1, 2, 3], &[2], 3, &[]),
            (&[1, 9], &[9, 9], 1, &[(9, 9)]),
        ];
        for (seen, touched, upto, ranges) in cases {
            let b = run(seen);
            let ack = b.ack(touched, 42);
            assert_eq!(ack.upto, *upto, "{seen:?}/{touched:?}");
            let got: Vec<(u64, u64)> = ack.ranges.iter().map(|r| (r.first, r.last)).collect();
            assert_eq!(got, *ranges, "{seen:?}/{touched:?}");
            for &t in *touched {
                assert!(ack.covers(B, t), "{seen:?}: ack does not cover {t}");
            }
        }
    }

    #[test]
    fn ack_ranges_are_bounded() {
        let seen: Vec<u64> = (1..=2_000).map(|i| i * 2).collect();
        let b = run(&seen);
        let ack = b.ack(&seen, 0);
        assert_eq!(ack.ranges.len(), MAX_ACK_RANGES);
    }

    #[test]
    fn boots_are_separate_and_old_ones_retire() {
        let mut a = SeqAccount::default();
        a.observe(BootId(1), 1, 0);
        a.observe(BootId(1), 3, 0);
        a.observe(BootId(2), 1, 0);
        assert_eq!(a.observe(BootId(2), 1, 0), Observed::Duplicate);
        assert_eq!(
            a.totals(),
            SeqTotals {
                received: 3,
                duplicates: 1,
                missing: 1
            }
        );
        assert_eq!(a.current_boot().unwrap().boot, BootId(2));
        for b in 3..(3 + MAX_BOOTS as u64) {
            a.observe(BootId(b), 1, 0);
        }
        assert_eq!(a.boots.len(), MAX_BOOTS);
        assert!(a.boot(BootId(1)).is_none(), "the quietest boot retired");
        // Totals survive retirement.
        let t = a.totals();
        assert_eq!(t.received, 3 + MAX_BOOTS as u64);
        assert_eq!(t.missing, 1);
        assert_eq!(t.duplicates, 1);
    }

    /// Ten power cycles in one outage, then the running boot's live records
    /// arrive between the replays of more old boots than `MAX_BOOTS` used to
    /// hold: the running boot is never retired, is the current one, and
    /// nothing is counted twice or missing.
    #[test]
    fn running_boot_survives_replay_of_many_old_boots() {
        let running = BootId(1_000);
        let mut a = SeqAccount::default();
        let mut live = 0;
        for old in 0..(MAX_BOOTS as u64 + 10) {
            live += 1;
            a.observe(running, live, 10_000 + live);
            for seq in 1..=3 {
                a.observe(BootId(old), seq, old * 10 + seq);
            }
        }
        let r = a.boot(running).expect("running boot remembered");
        assert_eq!(
            r.totals(),
            SeqTotals {
                received: live,
                duplicates: 0,
                missing: 0
            }
        );
        assert_eq!(a.current_boot().unwrap().boot, running);
        // A resend of the running boot is a duplicate, not a new record.
        assert_eq!(a.observe(running, 1, 10_001), Observed::Duplicate);
        let t = a.totals();
        assert_eq!(t.received, live + 3 * (MAX_BOOTS as u64 + 10));
        assert_eq!(t.missing, 0);
    }

    #[test]
    fn current_boot_is_the_one_with_the_newest_data() {
        let mut a = SeqAccount::default();
        a.observe(BootId(2), 1, 5_000); // the running boot, live first
        a.observe(BootId(1), 1, 1_000); // then an older boot's replay
        a.observe(BootId(1), 2, 1_100);
        assert_eq!(a.current_boot().unwrap().boot, BootId(2));
    }

    #[test]
    fn survives_a_json_round_trip() {
        let mut a = SeqAccount::default();
        for s in [1, 2, 5, 9] {
            a.observe(BootId(u64::MAX), s, 0);
        }
        let j = serde_json::to_string(&a).unwrap();
        let b: SeqAccount = serde_json::from_str(&j).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn merged_acks_cover_exactly_what_either_covered() {
        fn ack(upto: u64, ranges: &[(u64, u64)]) -> Ack {
            Ack {
                boot: BootId(1),
                upto,
                ranges: ranges
                    .iter()
                    .map(|&(first, last)| SeqRange { first, last })
                    .collect(),
                collector_ms: upto,
                key_id: muster_proto::KeyId::NONE,
                sig: muster_proto::Signature::NONE,
            }
        }
        // (a, b, merged upto, merged ranges)
        let cases: &[(Ack, Ack, u64, Ranges)] = &[
            (ack(5, &[]), ack(9, &[]), 9, &[]),
            (
                ack(5, &[(8, 9)]),
                ack(5, &[(12, 12)]),
                5,
                &[(8, 9), (12, 12)],
            ),
            // a range next to upto extends it
            (ack(5, &[(7, 9)]), ack(6, &[]), 9, &[]),
            // overlapping and adjacent ranges join
            (
                ack(2, &[(4, 6), (10, 11)]),
                ack(2, &[(5, 8), (9, 9)]),
                2,
                &[(4, 11)],
            ),
            // ranges under the new upto vanish
            (ack(2, &[(4, 6)]), ack(20, &[(30, 31)]), 20, &[(30, 31)]),
        ];
        for (i, (a, b, upto, ranges)) in cases.iter().enumerate() {
            let m = merge_acks(a, b);
            assert_eq!(m.upto, *upto, "case {i}");
            let got: Vec<(u64, u64)> = m.ranges.iter().map(|r| (r.first, r.last)).collect();
            assert_eq!(got, *ranges, "case {i}");
            for seq in 1..40 {
                assert_eq!(
                    m.covers(BootId(1), seq),
                    a.covers(BootId(1), seq) || b.covers(BootId(1), seq),
                    "case {i} seq {seq}"
                );
            }
        }
    }
}
