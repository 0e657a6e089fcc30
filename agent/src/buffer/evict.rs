//! The eviction policy, a pure core: given the buffer's size, the incoming
//! record and the oldest stored records, which records to drop and why.
//! No I/O; `now` comes in as an argument. The buffer feeds it candidates in
//! chunks, oldest first, and carries out the drops.

use std::time::Duration;

use super::record::Kind;

/// A stored record as eviction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub key: u64,
    pub bytes: u64,
    pub at_ms: u64,
    pub kind: Kind,
    /// Published and awaiting the collector's ack: never evicted (it is
    /// either acked soon or resent; dropping it could count a loss that did
    /// not happen).
    pub inflight: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictReason {
    /// The buffer reached `max_bytes`: oldest first.
    Full,
    /// Older than `max_age`.
    Expired,
    /// Thinned out (keep 1 of N host samples) to make room.
    Thinned,
}

/// Bytes that must be freed before `incoming` bytes fit under `max_bytes`.
pub fn room_needed(total_bytes: u64, incoming: u64, max_bytes: u64) -> u64 {
    (total_bytes + incoming).saturating_sub(max_bytes)
}

/// Persisted progress of thinning: records with keys up to `upto` have been
/// thinned once already; `host_seen` counts the host samples examined so
/// far, so "keep 1 of N" continues across calls and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ThinState {
    pub upto: u64,
    pub host_seen: u64,
}

/// One chunk's worth of decisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pass {
    pub drops: Vec<(u64, EvictReason)>,
    pub freed: u64,
}

/// Drop the oldest records (not in flight) until `need` bytes are freed.
pub fn oldest_pass(need: u64, candidates: &[Candidate]) -> Pass {
    let mut p = Pass::default();
    for c in candidates {
        if p.freed >= need {
            break;
        }
        if c.inflight {
            continue;
        }
        p.drops.push((c.key, EvictReason::Full));
        p.freed += c.bytes;
    }
    p
}

/// Thin the oldest not-yet-thinned records: of the host samples, keep the
/// first of every `keep_one_in` and drop the others, until `need` bytes are
/// freed. Probe results and heartbeats are kept (they are rarer and each
/// says something the next one may not). Candidates at or below
/// `state.upto` were thinned before and are skipped.
pub fn thin_pass(
    need: u64,
    keep_one_in: u32,
    state: &mut ThinState,
    candidates: &[Candidate],
) -> Pass {
    let n = u64::from(keep_one_in.max(1));
    let mut p = Pass::default();
    for c in candidates {
        if p.freed >= need {
            break;
        }
        if c.key <= state.upto {
            continue;
        }
        state.upto = c.key;
        if c.kind != Kind::Host || c.inflight {
            continue;
        }
        let keep = state.host_seen.is_multiple_of(n);
        state.host_seen += 1;
        if !keep {
            p.drops.push((c.key, EvictReason::Thinned));
            p.freed += c.bytes;
        }
    }
    p
}

/// Drop records older than `max_age` at `now`, oldest first; stops at the
/// first record young enough (records are appended in time order; a record
/// with a later key but an older clock reading waits for its turn).
pub fn expiry_pass(now_ms: u64, max_age: Duration, candidates: &[Candidate]) -> Pass {
    let limit = now_ms.saturating_sub(max_age.as_millis() as u64);
    let mut p = Pass::default();
    for c in candidates {
        if c.at_ms >= limit {
            break;
        }
        if c.inflight {
            continue;
        }
        p.drops.push((c.key, EvictReason::Expired));
        p.freed += c.bytes;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: u64, bytes: u64, at_ms: u64, kind: Kind, inflight: bool) -> Candidate {
        Candidate {
            key,
            bytes,
            at_ms,
            kind,
            inflight,
        }
    }
    fn h(key: u64) -> Candidate {
        c(key, 100, key * 1000, Kind::Host, false)
    }

    #[test]
    fn room_needed_table() {
        let cases = [
            // total, incoming, max, need
            (0, 100, 1000, 0),
            (900, 100, 1000, 0),
            (901, 100, 1000, 1),
            (1000, 100, 1000, 100),
            (5000, 100, 1000, 4100),
        ];
        for (total, inc, max, need) in cases {
            assert_eq!(room_needed(total, inc, max), need, "{total} {inc} {max}");
        }
    }

    #[test]
    fn oldest_pass_table() {
        let cands = [h(1), c(2, 100, 2000, Kind::Probe, true), h(3), h(4)];
        let cases: &[(u64, &[u64], u64)] = &[
            (0, &[], 0),
            (1, &[1], 100),
            (100, &[1], 100),
            // key 2 is in flight: skipped, never dropped.
            (101, &[1, 3], 200),
            (300, &[1, 3, 4], 300),
            // Not enough to free: drops all it may and reports the shortfall.
            (1000, &[1, 3, 4], 300),
        ];
        for (need, keys, freed) in cases {
            let p = oldest_pass(*need, &cands);
            let got: Vec<u64> = p.drops.iter().map(|d| d.0).collect();
            assert_eq!(&got, keys, "need {need}");
            assert_eq!(p.freed, *freed, "need {need}");
            assert!(p.drops.iter().all(|d| d.1 == EvictReason::Full));
        }
    }

    #[test]
    fn thin_keeps_one_in_n_host_samples() {
        let cands: Vec<Candidate> = (1..=9).map(h).collect();
        let mut st = ThinState::default();
        let p = thin_pass(u64::MAX, 3, &mut st, &cands);
        let got: Vec<u64> = p.drops.iter().map(|d| d.0).collect();
        // Keeps 1, 4, 7; drops the rest.
        assert_eq!(got, vec![2, 3, 5, 6, 8, 9]);
        assert!(p.drops.iter().all(|d| d.1 == EvictReason::Thinned));
        assert_eq!(
            st,
            ThinState {
                upto: 9,
                host_seen: 9
            }
        );
    }

    #[test]
    fn thin_stops_when_enough_is_freed_and_resumes_where_it_stopped() {
        let cands: Vec<Candidate> = (1..=9).map(h).collect();
        let mut st = ThinState::default();
        let p = thin_pass(150, 2, &mut st, &cands);
        assert_eq!(
            p.drops,
            vec![(2, EvictReason::Thinned), (4, EvictReason::Thinned)]
        );
        assert_eq!(st.upto, 4);
        // The next call skips what was thinned (1..=4) and carries the phase on.
        let rest: Vec<Candidate> = cands
            .iter()
            .copied()
            .filter(|c| ![2, 4].contains(&c.key))
            .collect();
        let p = thin_pass(100, 2, &mut st, &rest);
        assert_eq!(p.drops, vec![(6, EvictReason::Thinned)]);
    }

    #[test]
    fn thin_spares_probes_heartbeats_and_inflight() {
        let cands = [
            h(1),
            c(2, 100, 0, Kind::Probe, false),
            c(3, 100, 0, Kind::Host, true),
            h(4),
            c(5, 100, 0, Kind::Status, false),
            h(6),
        ];
        let mut st = ThinState::default();
        let p = thin_pass(u64::MAX, 2, &mut st, &cands);
        // host samples examined: 1 (keep), 4 (drop), 6 (keep); 3 is in flight.
        assert_eq!(p.drops, vec![(4, EvictReason::Thinned)]);
        assert_eq!(p.freed, 100);
    }

    #[test]
    fn thin_with_nothing_left_frees_nothing() {
        let cands: Vec<Candidate> = (1..=3).map(h).collect();
        let mut st = ThinState {
            upto: 3,
            host_seen: 3,
        };
        assert_eq!(thin_pass(100, 2, &mut st, &cands), Pass::default());
    }

    #[test]
    fn expiry_table() {
        let cands = [
            c(1, 10, 1_000, Kind::Host, false),
            c(2, 10, 2_000, Kind::Host, true),
            c(3, 10, 3_000, Kind::Host, false),
            c(4, 10, 9_000, Kind::Host, false),
        ];
        let cases: &[(u64, u64, &[u64])] = &[
            // now, max_age s, dropped
            (5_000, 10, &[]),
            (11_500, 10, &[1]),
            (13_500, 10, &[1, 3]),
            (100_000, 10, &[1, 3, 4]),
        ];
        for (now, age, keys) in cases {
            let p = expiry_pass(*now, Duration::from_secs(*age), &cands);
            let got: Vec<u64> = p.drops.iter().map(|d| d.0).collect();
            assert_eq!(&got, keys, "now {now}");
            assert!(p.drops.iter().all(|d| d.1 == EvictReason::Expired));
        }
    }
}
