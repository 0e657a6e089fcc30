//! Counting at the point of truth: the collector's acks, as the simulated
//! units receive them.
//!
//! Contract:
//! * A record counts as acked when an ack the collector published for its
//!   unit and boot covers its seq (`upto` or one of the `ranges`), and only
//!   if the bench published that seq: an ack is clamped to the seqs
//!   published so far (`upto` also means "or never sent").
//! * Each (unit, boot, seq) counts once: a re-ack, or an ack repeating an
//!   earlier one, adds nothing ([`AckedSet::add`] returns only new seqs).
//! * Units share a connection by agency, so a connection's one wildcard
//!   subscription `muster/v1/{agency}/+/ack` receives its own units' acks
//!   and no one else's ([`Conn::on_ack`] counts an ack for a unit it does not
//!   hold in `foreign`, which should stay zero).
//! * Live records (steady, burst, soak) keep their publish instant until
//!   acked, for the ack latency; replay batches (storm) are tracked by the
//!   storm driver, which asks [`Conn::covers`].
//!
//! Everything here is pure (the caller passes `now`) and checked by
//! [`self_test`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use muster_proto::{Ack, BootId};

/// A set of seqs as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AckedSet {
    ranges: Vec<(u64, u64)>,
    len: u64,
}

impl AckedSet {
    /// Adds `first..=last`; returns how many of those seqs were not in the
    /// set before.
    pub fn add(&mut self, first: u64, last: u64) -> u64 {
        if first > last {
            return 0;
        }
        let (mut lo, mut hi) = (first, last);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        let mut len = 0;
        for &(a, b) in &self.ranges {
            if b.saturating_add(1) < lo {
                out.push((a, b));
                len += b - a + 1;
            } else if a > hi.saturating_add(1) {
                if !placed {
                    out.push((lo, hi));
                    len += hi - lo + 1;
                    placed = true;
                }
                out.push((a, b));
                len += b - a + 1;
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            out.push((lo, hi));
            len += hi - lo + 1;
        }
        let added = len - self.len;
        self.ranges = out;
        self.len = len;
        added
    }

    /// Is every seq of `first..=last` in the set?
    pub fn covers(&self, first: u64, last: u64) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= first && last <= b)
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.covers(seq, seq)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Adds what `ack` covers within `1..=published`; returns the new seqs.
    pub fn apply(&mut self, ack: &Ack, published: u64) -> u64 {
        let mut added = self.add(1, ack.upto.min(published));
        for r in &ack.ranges {
            added += self.add(r.first.max(1), r.last.min(published));
        }
        added
    }
}

/// One boot of a simulated unit.
#[derive(Debug)]
struct BootTrack {
    boot: BootId,
    /// Highest seq published (seqs go 1, 2, 3... with no gaps).
    published: u64,
    acked: AckedSet,
    /// Live records not yet acked: (seq, published at).
    pending: VecDeque<(u64, Instant)>,
}

/// A simulated unit: its current boot last.
#[derive(Debug)]
struct UnitTrack {
    boots: Vec<BootTrack>,
}

impl UnitTrack {
    fn boot_mut(&mut self, boot: BootId) -> Option<&mut BootTrack> {
        self.boots.iter_mut().rev().find(|b| b.boot == boot)
    }
}

/// The units of one connection and what the collector acked of them.
#[derive(Debug)]
pub struct Conn {
    units: Vec<UnitTrack>,
    index: HashMap<String, usize>,
    /// Ack latencies (ms) of live records since the last [`Conn::take_latencies`].
    latencies: Vec<f64>,
    pub published: u64,
    pub acked: u64,
    /// Acks for a unit, or a boot, this connection does not hold, and
    /// publishes on its ack subscription that are not acks: should stay 0.
    pub foreign: u64,
}

impl Conn {
    /// `names[j]` is unit j's unit id (within the connection's agency);
    /// each starts on `boots[j]`.
    pub fn new(names: &[String], boots: &[BootId]) -> Conn {
        Conn {
            units: boots
                .iter()
                .map(|&boot| UnitTrack {
                    boots: vec![BootTrack {
                        boot,
                        published: 0,
                        acked: AckedSet::default(),
                        pending: VecDeque::new(),
                    }],
                })
                .collect(),
            index: names
                .iter()
                .enumerate()
                .map(|(j, n)| (n.clone(), j))
                .collect(),
            latencies: Vec::new(),
            published: 0,
            acked: 0,
            foreign: 0,
        }
    }

    /// Unit `j` starts a new boot; the old one's late acks still count.
    pub fn new_boot(&mut self, j: usize, boot: BootId) {
        let u = &mut self.units[j];
        if let Some(old) = u.boots.last_mut() {
            old.pending.clear();
        }
        u.boots.push(BootTrack {
            boot,
            published: 0,
            acked: AckedSet::default(),
            pending: VecDeque::new(),
        });
    }

    /// Unit `j` publishes its next live record: returns (boot, seq).
    pub fn next_live(&mut self, j: usize, now: Instant) -> (BootId, u64) {
        let b = self.units[j].boots.last_mut().expect("a boot");
        b.published += 1;
        b.pending.push_back((b.published, now));
        self.published += 1;
        (b.boot, b.published)
    }

    /// Unit `j` publishes replay seqs `first..=last` of its current boot for
    /// the first time (no latency tracking; see [`Conn::covers`]).
    pub fn replayed(&mut self, j: usize, last: u64) {
        let b = self.units[j].boots.last_mut().expect("a boot");
        if last > b.published {
            self.published += last - b.published;
            b.published = last;
        }
    }

    /// Is `first..=last` of unit `j`'s current boot acked?
    pub fn covers(&self, j: usize, first: u64, last: u64) -> bool {
        self.units[j]
            .boots
            .last()
            .is_some_and(|b| b.acked.covers(first, last))
    }

    /// An ack for `unit` arrived at `now`.
    pub fn on_ack(&mut self, unit: &str, ack: &Ack, now: Instant) {
        let Some(b) = self
            .index
            .get(unit)
            .and_then(|&j| self.units[j].boot_mut(ack.boot))
        else {
            self.foreign += 1;
            return;
        };
        self.acked += b.acked.apply(ack, b.published);
        while let Some(&(seq, at)) = b.pending.front() {
            if !b.acked.contains(seq) {
                break;
            }
            self.latencies.push(ms(now.saturating_duration_since(at)));
            b.pending.pop_front();
        }
        if !ack.ranges.is_empty() {
            let acked = &b.acked;
            let lat = &mut self.latencies;
            b.pending.retain(|&(seq, at)| {
                let done = acked.contains(seq);
                if done {
                    lat.push(ms(now.saturating_duration_since(at)));
                }
                !done
            });
        }
    }

    pub fn take_latencies(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.latencies)
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Table checks of this module (run by the bench binary without `--bench`).
pub fn self_test() -> usize {
    use muster_proto::{KeyId, SeqRange, Signature};
    let mut n = 0;
    // AckedSet::add: (existing ranges, add, want ranges, want added)
    type Ranges = &'static [(u64, u64)];
    let cases: &[(Ranges, (u64, u64), Ranges, u64)] = &[
        (&[], (1, 5), &[(1, 5)], 5),
        (&[(1, 5)], (1, 5), &[(1, 5)], 0),
        (&[(1, 5)], (6, 8), &[(1, 8)], 3),
        (&[(1, 5)], (3, 9), &[(1, 9)], 4),
        (&[(1, 2), (8, 9)], (4, 5), &[(1, 2), (4, 5), (8, 9)], 2),
        (&[(1, 2), (8, 9)], (3, 7), &[(1, 9)], 5),
        (&[(4, 5)], (1, 1), &[(1, 1), (4, 5)], 1),
        (&[(4, 5), (10, 12)], (2, 20), &[(2, 20)], 14),
        (&[(4, 5)], (6, 5), &[(4, 5)], 0),
    ];
    for (have, (f, l), want, added) in cases {
        let mut s = AckedSet::default();
        for &(a, b) in *have {
            s.add(a, b);
        }
        assert_eq!(s.add(*f, *l), *added, "{have:?} + {f}..={l}");
        assert_eq!(s.ranges, *want, "{have:?} + {f}..={l}");
        assert_eq!(s.len(), want.iter().map(|(a, b)| b - a + 1).sum::<u64>());
        n += 1;
    }
    let ack = |boot: u64, upto: u64, ranges: &[(u64, u64)]| Ack {
        boot: BootId(boot),
        upto,
        ranges: ranges
            .iter()
            .map(|&(first, last)| SeqRange { first, last })
            .collect(),
        collector_ms: 0,
        key_id: KeyId([0; 8]),
        sig: Signature([0; 32], [0; 32]),
    };
    // Clamped to what was published; a re-ack counts nothing.
    let mut s = AckedSet::default();
    assert_eq!(s.apply(&ack(1, 10, &[(12, 20)]), 15), 14);
    assert_eq!(s.apply(&ack(1, 10, &[(12, 20)]), 15), 0);
    assert_eq!(s.apply(&ack(1, 20, &[]), 20), 6);
    n += 3;

    // Conn: latency of live records, re-acks, other boots, foreign units.
    let t0 = Instant::now();
    let names = vec!["U1".to_owned(), "U2".to_owned()];
    let mut c = Conn::new(&names, &[BootId(7), BootId(8)]);
    for k in 0..3 {
        assert_eq!(
            c.next_live(0, t0 + Duration::from_millis(k * 10)),
            (BootId(7), k + 1)
        );
    }
    let t1 = t0 + Duration::from_millis(100);
    c.on_ack("U1", &ack(7, 1, &[(3, 3)]), t1);
    assert_eq!((c.published, c.acked), (3, 2));
    assert_eq!(c.take_latencies(), vec![100.0, 80.0]);
    c.on_ack("U1", &ack(7, 3, &[]), t1);
    assert_eq!(c.acked, 3);
    assert_eq!(c.take_latencies(), vec![90.0]);
    c.on_ack("U1", &ack(7, 3, &[]), t1);
    assert_eq!(c.acked, 3, "a re-ack counts nothing");
    c.on_ack("U9", &ack(7, 3, &[]), t1);
    c.on_ack("U2", &ack(7, 3, &[]), t1);
    assert_eq!((c.acked, c.foreign), (3, 2));
    // An old boot's late ack still counts; the new boot's seqs are its own.
    c.next_live(1, t0);
    c.new_boot(1, BootId(9));
    c.replayed(1, 600);
    assert!(!c.covers(1, 1, 300));
    c.on_ack("U2", &ack(8, 1, &[]), t1);
    c.on_ack("U2", &ack(9, 300, &[]), t1);
    assert!(c.covers(1, 1, 300) && !c.covers(1, 301, 600));
    assert_eq!((c.published, c.acked), (604, 304));
    n += 8;
    n
}
