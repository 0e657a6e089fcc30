//! Peer comparison (`[rules.peers]`, `crate::rules::peers`): how many
//! cohorts and unit streams it keeps, what it refused or evicted to stay
//! bounded, and what it raised. The rules engine bumps these (atomics; it
//! is handed the `Arc` at wiring, [`crate::rules::Engine::set_peer_metrics`]);
//! gauges are set once per engine tick.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `muster_peers_cohorts` | gauge | cohorts (agency, probe, target) kept |
//! | `muster_peers_members` | gauge | unit streams in them (fresh within `window`) |
//! | `muster_peers_shifts_open` | gauge | latency-shift incidents open |
//! | `muster_peers_cohorts_refused_total` | counter | probe results not compared: a new cohort past `max_cohorts` |
//! | `muster_peers_samples_evicted_total` | counter | latencies dropped before leaving the window: past `max_samples` a stream |
//! | `muster_peers_evaluations_total` | counter | cohort evaluations (medians recomputed) |
//! | `muster_peers_flags_raised_total` | counter | `slower-than-peers` flags raised |
//! | `muster_peers_shifts_opened_total` | counter | latency-shift incidents opened |

use std::sync::atomic::{AtomicU64, Ordering};

use super::expo::Exposition;

#[derive(Debug, Default)]
pub struct PeerMetrics {
    pub cohorts: AtomicU64,
    pub members: AtomicU64,
    pub shifts_open: AtomicU64,
    pub cohorts_refused: AtomicU64,
    pub samples_evicted: AtomicU64,
    pub evaluations: AtomicU64,
    pub flags_raised: AtomicU64,
    pub shifts_opened: AtomicU64,
}

impl PeerMetrics {
    pub fn render(&self, e: &mut Exposition) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, kind, help, v) in [
            (
                "muster_peers_cohorts",
                "gauge",
                "Peer cohorts (agency, probe, target) kept.",
                &self.cohorts,
            ),
            (
                "muster_peers_members",
                "gauge",
                "Unit probe streams in peer cohorts.",
                &self.members,
            ),
            (
                "muster_peers_shifts_open",
                "gauge",
                "Latency-shift incidents open.",
                &self.shifts_open,
            ),
            (
                "muster_peers_cohorts_refused_total",
                "counter",
                "Probe results not compared with peers: their cohort would pass rules.peers.max_cohorts.",
                &self.cohorts_refused,
            ),
            (
                "muster_peers_samples_evicted_total",
                "counter",
                "Latencies dropped before leaving the window: past rules.peers.max_samples a stream.",
                &self.samples_evicted,
            ),
            (
                "muster_peers_evaluations_total",
                "counter",
                "Peer cohort evaluations.",
                &self.evaluations,
            ),
            (
                "muster_peers_flags_raised_total",
                "counter",
                "slower-than-peers flags raised.",
                &self.flags_raised,
            ),
            (
                "muster_peers_shifts_opened_total",
                "counter",
                "Latency-shift incidents opened.",
                &self.shifts_opened,
            ),
        ] {
            e.family(name, kind, help);
            e.sample(name, &[], get(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once() {
        let m = PeerMetrics::default();
        m.flags_raised.store(2, Ordering::Relaxed);
        let mut e = Exposition::default();
        m.render(&mut e);
        let text = e.finish();
        assert_eq!(text.matches("# TYPE ").count(), 8, "{text}");
        assert!(
            text.contains("\nmuster_peers_flags_raised_total 2\n"),
            "{text}"
        );
    }
}
