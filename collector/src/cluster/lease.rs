//! Partition leases: which collector owns which partition of the fleet.
//! Pure: [`plan`] takes the lease table as read, the live collectors and
//! `now`, and says what to write; the SQL edge applies each [`Action`] as
//! a compare-and-set on `(partition, epoch)`, so of two collectors acting
//! on the same snapshot at most one wins each partition.
//!
//! Contract:
//!
//! * A lease is `(partition, owner, epoch, expires_ms)`. The epoch grows by
//!   one whenever the partition changes hands (acquired, including by its
//!   last owner after it expired), and never otherwise: a renewal keeps it.
//!   Every state write for a partition carries the epoch its writer holds,
//!   and is refused unless that is still the partition's epoch, with its
//!   owner, unexpired (fencing): a collector cut off from the database
//!   changes nothing once its lease is gone.
//! * Expiry is judged by the database's clock (`expires_ms` is compared
//!   with the `now` the database sees), so the collectors' clocks may
//!   disagree. A holder treats its lease as valid only until [`Held::until`],
//!   counted on its own monotonic clock from when it *sent* the renewal
//!   that set it, minus a margin: it stops acting before anyone can take
//!   the partition.
//! * Balance: with `L` live collectors (sorted by id), the first `P % L`
//!   aim for `P / L + 1` partitions and the rest for `P / L`. A collector
//!   over its share releases its highest-numbered partitions (epoch kept:
//!   the next owner takes them at epoch + 1); under it, it acquires free or
//!   expired ones, lowest-numbered first. Only the surplus moves when a
//!   collector joins or leaves, and a dead collector's partitions are taken
//!   once its leases expire (takeover time ≤ the lease TTL + one tick).
//! * A collector not in `live` (its own heartbeat not yet seen) acquires
//!   nothing and keeps renewing what it holds.

use std::collections::BTreeMap;

/// One row of the lease table, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub partition: u32,
    /// `None`: released, or never held.
    pub owner: Option<String>,
    pub epoch: u64,
    /// The database's clock, unix ms.
    pub expires_ms: u64,
}

/// What to write: each is a compare-and-set on the partition's epoch
/// (and for a renewal or release, its owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Extend my unexpired lease; the epoch stays.
    Renew { partition: u32, epoch: u64 },
    /// Take a free or expired partition: `epoch` is the one read, the
    /// write sets `epoch + 1` and me as owner.
    Acquire { partition: u32, epoch: u64 },
    /// Give up my lease (over my share): owner cleared, epoch kept.
    Release { partition: u32, epoch: u64 },
}

/// How many partitions `me` aims to hold among `live` (sorted or not).
pub fn share(partitions: u32, live: &[String], me: &str) -> u32 {
    let mut ids: Vec<&str> = live.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let Some(rank) = ids.iter().position(|id| *id == me) else {
        return 0;
    };
    let n = ids.len() as u32;
    partitions / n + u32::from((rank as u32) < partitions % n)
}

/// What `me` should write, given the table (`leases`; a partition with no
/// row is free at epoch 0), the live collectors and the database's `now`.
pub fn plan(
    partitions: u32,
    leases: &[Lease],
    live: &[String],
    me: &str,
    now_ms: u64,
) -> Vec<Action> {
    let by_partition: BTreeMap<u32, &Lease> = leases
        .iter()
        .filter(|l| l.partition < partitions)
        .map(|l| (l.partition, l))
        .collect();
    let row = |p: u32| by_partition.get(&p).copied();
    let mine = |l: &Lease| l.owner.as_deref() == Some(me) && l.expires_ms > now_ms;
    let held: Vec<&Lease> = (0..partitions)
        .filter_map(row)
        .filter(|l| mine(l))
        .collect();
    let mut out = Vec::new();
    let in_live = live.iter().any(|id| id == me);
    let target = if in_live {
        share(partitions, live, me) as usize
    } else {
        held.len()
    };
    // Keep the lowest-numbered `target`, release the rest.
    for (i, l) in held.iter().enumerate() {
        out.push(if i < target {
            Action::Renew {
                partition: l.partition,
                epoch: l.epoch,
            }
        } else {
            Action::Release {
                partition: l.partition,
                epoch: l.epoch,
            }
        });
    }
    let mut want = target.saturating_sub(held.len());
    for p in 0..partitions {
        if want == 0 {
            break;
        }
        let (free, epoch) = match row(p) {
            None => (true, 0),
            Some(l) => (l.owner.is_none() || l.expires_ms <= now_ms, l.epoch),
        };
        if free {
            out.push(Action::Acquire {
                partition: p,
                epoch,
            });
            want -= 1;
        }
    }
    out
}

/// A lease this collector holds, on its own monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub epoch: u64,
    /// Act on the partition only before this (local monotonic ms): when
    /// the renewal that set the lease was sent, plus the TTL, minus the
    /// margin.
    pub until: u64,
}

impl Held {
    /// A lease set by a write sent at `sent_ms` (local monotonic).
    pub fn new(epoch: u64, sent_ms: u64, ttl_ms: u64, margin_ms: u64) -> Held {
        Held {
            epoch,
            until: sent_ms.saturating_add(ttl_ms.saturating_sub(margin_ms)),
        }
    }

    pub fn valid(&self, now_ms: u64) -> bool {
        now_ms < self.until
    }
}

/// How the partitions a collector acts on must change, given the leases it
/// holds now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moves {
    /// Newly held (or held again at a new epoch): adopt, then pull.
    pub acquired: BTreeMap<u32, u64>,
    /// No longer held, or no longer valid on the local clock, or held at
    /// another epoch: stop pulling, then release.
    pub lost: Vec<u32>,
}

impl Moves {
    pub fn is_empty(&self) -> bool {
        self.acquired.is_empty() && self.lost.is_empty()
    }
}

/// `acting`: partition -> epoch the collector acts on now; `held`: the
/// leases as of the last successful tick; `now_ms`: local monotonic.
/// A lease past [`Held::until`] is lost even if the database could not be
/// asked (a collector cut off from it stops on its own clock).
pub fn moves(acting: &BTreeMap<u32, u64>, held: &BTreeMap<u32, Held>, now_ms: u64) -> Moves {
    let valid = |p: &u32| held.get(p).filter(|h| h.valid(now_ms)).map(|h| h.epoch);
    let mut m = Moves::default();
    for (p, e) in acting {
        if valid(p) != Some(*e) {
            m.lost.push(*p);
        }
    }
    for p in held.keys() {
        if let Some(e) = valid(p)
            && acting.get(p) != Some(&e)
        {
            m.acquired.insert(*p, e);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn lease(p: u32, owner: Option<&str>, epoch: u64, expires_ms: u64) -> Lease {
        Lease {
            partition: p,
            owner: owner.map(str::to_owned),
            epoch,
            expires_ms,
        }
    }

    /// Applies `actions` by `me` to the table as the SQL edge does
    /// (compare-and-set on the epoch): acquired and renewed leases expire
    /// at `now + ttl`.
    fn apply(table: &mut BTreeMap<u32, Lease>, me: &str, actions: &[Action], now: u64, ttl: u64) {
        for a in actions {
            match *a {
                Action::Renew { partition, epoch } => {
                    let l = table.get_mut(&partition).unwrap();
                    if l.epoch == epoch && l.owner.as_deref() == Some(me) && l.expires_ms > now {
                        l.expires_ms = now + ttl;
                    }
                }
                Action::Acquire { partition, epoch } => {
                    let l = table
                        .entry(partition)
                        .or_insert_with(|| lease(partition, None, 0, 0));
                    if l.epoch == epoch && (l.owner.is_none() || l.expires_ms <= now) {
                        *l = lease(partition, Some(me), epoch + 1, now + ttl);
                    }
                }
                Action::Release { partition, epoch } => {
                    let l = table.get_mut(&partition).unwrap();
                    if l.epoch == epoch && l.owner.as_deref() == Some(me) {
                        l.owner = None;
                    }
                }
            }
        }
    }

    /// Acquire each of `ps` at the epoch `epoch(p)` read.
    fn acquire(ps: std::ops::Range<u32>, epoch: impl Fn(u32) -> u64) -> Vec<Action> {
        ps.map(|p| Action::Acquire {
            partition: p,
            epoch: epoch(p),
        })
        .collect()
    }

    fn owned(table: &BTreeMap<u32, Lease>, me: &str, now: u64) -> usize {
        table
            .values()
            .filter(|l| l.owner.as_deref() == Some(me) && l.expires_ms > now)
            .count()
    }

    #[test]
    fn shares_split_the_partitions_by_rank() {
        for (p, live, want) in [
            (64, &["a"][..], &[64][..]),
            (64, &["b", "a"][..], &[32, 32][..]),
            (64, &["c", "a", "b"][..], &[22, 21, 21][..]),
            (2, &["a", "b", "c"][..], &[1, 1, 0][..]),
            (64, &["a", "a"][..], &[64][..]),
        ] {
            let live = ids(live);
            let mut sorted = live.clone();
            sorted.sort();
            sorted.dedup();
            let got: Vec<u32> = sorted.iter().map(|me| share(p, &live, me)).collect();
            assert_eq!(got, want, "{p} over {live:?}");
            assert_eq!(got.iter().sum::<u32>(), p);
        }
        assert_eq!(share(64, &ids(&["a"]), "z"), 0);
    }

    #[test]
    fn one_table_of_plans() {
        let mine_a = |p, e, exp| lease(p, Some("a"), e, exp);
        for (name, leases, live, me, now, want) in [
            (
                "empty table, alone: acquire every partition at epoch 0",
                vec![],
                &["a"][..],
                "a",
                100,
                acquire(0..4, |_| 0),
            ),
            (
                "holding all: renew, epochs kept",
                (0..4).map(|p| mine_a(p, 3, 200)).collect(),
                &["a"][..],
                "a",
                100,
                (0..4)
                    .map(|p| Action::Renew {
                        partition: p,
                        epoch: 3,
                    })
                    .collect(),
            ),
            (
                "b joins: a keeps the lowest two, releases the rest",
                (0..4).map(|p| mine_a(p, 3, 200)).collect(),
                &["a", "b"][..],
                "a",
                100,
                vec![
                    Action::Renew {
                        partition: 0,
                        epoch: 3,
                    },
                    Action::Renew {
                        partition: 1,
                        epoch: 3,
                    },
                    Action::Release {
                        partition: 2,
                        epoch: 3,
                    },
                    Action::Release {
                        partition: 3,
                        epoch: 3,
                    },
                ],
            ),
            (
                "b joins: nothing free yet, b waits",
                (0..4).map(|p| mine_a(p, 3, 200)).collect(),
                &["a", "b"][..],
                "b",
                100,
                vec![],
            ),
            (
                "a died: its leases are not taken before they expire",
                (0..4).map(|p| mine_a(p, 3, 200)).collect(),
                &["b"][..],
                "b",
                199,
                vec![],
            ),
            (
                "a died: at expiry b takes them all, at the epochs read",
                (0..4).map(|p| mine_a(p, 3 + p as u64, 200)).collect(),
                &["b"][..],
                "b",
                200,
                acquire(0..4, |p| 3 + p as u64),
            ),
            (
                "my own lease expired: acquired again (new epoch), not renewed",
                vec![mine_a(0, 3, 50)],
                &["a"][..],
                "a",
                100,
                acquire(0..4, |p| if p == 0 { 3 } else { 0 }),
            ),
            (
                "not live yet: renews what it holds, acquires nothing",
                vec![mine_a(1, 3, 200)],
                &["b"][..],
                "a",
                100,
                vec![Action::Renew {
                    partition: 1,
                    epoch: 3,
                }],
            ),
            (
                "rows past the partition count are ignored",
                vec![mine_a(9, 3, 200)],
                &["a"][..],
                "a",
                100,
                acquire(0..4, |_| 0),
            ),
        ] {
            assert_eq!(plan(4, &leases, &ids(live), me, now), want, "{name}");
        }
    }

    /// Collectors ticking against one table (each tick reads it, plans,
    /// applies): a joiner gets its share, a dead one's partitions move
    /// once its leases expire, every partition has one owner at a time,
    /// and an epoch changes only when the owner does.
    #[test]
    fn ticking_collectors_converge_and_fail_over() {
        const P: u32 = 64;
        const TTL: u64 = 10_000;
        const TICK: u64 = 2_000;
        let mut table: BTreeMap<u32, Lease> = BTreeMap::new();
        let mut now = 0;
        let tick = |table: &mut BTreeMap<u32, Lease>, live: &[&str], now: u64| {
            for me in live {
                let rows: Vec<Lease> = table.values().cloned().collect();
                let actions = plan(P, &rows, &ids(live), me, now);
                let before = table.clone();
                apply(table, me, &actions, now, TTL);
                for (p, l) in table.iter() {
                    if let Some(b) = before.get(p)
                        && b.owner == l.owner
                        && b.owner.is_some()
                    {
                        assert_eq!(b.epoch, l.epoch, "same owner, same epoch");
                    }
                }
            }
        };
        for _ in 0..3 {
            tick(&mut table, &["a"], now);
            now += TICK;
        }
        assert_eq!(owned(&table, "a", now), 64);
        // b joins: within two ticks the split is even.
        for _ in 0..2 {
            tick(&mut table, &["a", "b"], now);
            now += TICK;
        }
        assert_eq!((owned(&table, "a", now), owned(&table, "b", now)), (32, 32));
        let b_epochs: Vec<u64> = table
            .values()
            .filter(|l| l.owner.as_deref() == Some("b"))
            .map(|l| l.epoch)
            .collect();
        assert!(
            b_epochs.iter().all(|e| *e == 2),
            "taken over once: {b_epochs:?}"
        );
        // a is killed (stops ticking): b takes a's partitions only once
        // they expire, within the TTL and a tick.
        let killed = now;
        let a_expires = table
            .values()
            .filter(|l| l.owner.as_deref() == Some("a"))
            .map(|l| l.expires_ms)
            .max()
            .unwrap();
        let mut taken = None;
        for _ in 0..10 {
            tick(&mut table, &["b"], now);
            if owned(&table, "b", now) > 32 {
                assert!(
                    now >= a_expires,
                    "b took a partition of a's before it expired"
                );
            }
            if owned(&table, "b", now) == 64 {
                taken = Some(now - killed);
                break;
            }
            now += TICK;
        }
        let taken = taken.expect("b took every partition");
        assert!(taken <= TTL + TICK, "{taken} ms");
        // a third collector: 22 / 21 / 21 by rank among the live.
        for _ in 0..3 {
            tick(&mut table, &["b", "c", "d"], now);
            now += TICK;
        }
        assert_eq!(
            [
                owned(&table, "b", now),
                owned(&table, "c", now),
                owned(&table, "d", now)
            ],
            [22, 21, 21]
        );
    }

    #[test]
    fn a_held_lease_is_valid_until_ttl_less_margin_from_its_send() {
        let h = Held::new(4, 1_000, 10_000, 2_000);
        assert!(h.valid(8_999));
        assert!(!h.valid(9_000));
        assert!(!Held::new(1, 0, 1_000, 5_000).valid(0));
    }

    #[test]
    fn moves_follow_the_leases_and_the_local_clock() {
        let held = |v: &[(u32, u64, u64)]| -> BTreeMap<u32, Held> {
            v.iter()
                .map(|&(p, epoch, until)| (p, Held { epoch, until }))
                .collect()
        };
        let acting = |v: &[(u32, u64)]| -> BTreeMap<u32, u64> { v.iter().copied().collect() };
        // (acting, held, now) -> (acquired, lost)
        // (acting, held, now, acquired, lost)
        type Case = (
            BTreeMap<u32, u64>,
            BTreeMap<u32, Held>,
            u64,
            Vec<(u32, u64)>,
            Vec<u32>,
        );
        let cases: Vec<Case> = vec![
            // First tick: everything held is acquired.
            (
                acting(&[]),
                held(&[(0, 1, 100), (1, 1, 100)]),
                10,
                vec![(0, 1), (1, 1)],
                vec![],
            ),
            // Renewed: nothing moves.
            (acting(&[(0, 1)]), held(&[(0, 1, 200)]), 150, vec![], vec![]),
            // Released over my share: lost.
            (
                acting(&[(0, 1), (1, 1)]),
                held(&[(0, 1, 200)]),
                150,
                vec![],
                vec![1],
            ),
            // The database could not be asked: valid until `until` ...
            (acting(&[(0, 1)]), held(&[(0, 1, 200)]), 199, vec![], vec![]),
            // ... and lost from then on, on the local clock.
            (
                acting(&[(0, 1)]),
                held(&[(0, 1, 200)]),
                200,
                vec![],
                vec![0],
            ),
            // Taken by another and taken back: a new epoch is a new tenure.
            (
                acting(&[(0, 1)]),
                held(&[(0, 3, 300)]),
                250,
                vec![(0, 3)],
                vec![0],
            ),
        ];
        for (i, (a, h, now, acq, lost)) in cases.into_iter().enumerate() {
            let m = moves(&a, &h, now);
            assert_eq!(m.acquired.into_iter().collect::<Vec<_>>(), acq, "case {i}");
            assert_eq!(m.lost, lost, "case {i}");
        }
    }
}
