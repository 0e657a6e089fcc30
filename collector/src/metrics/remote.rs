//! Remote config and rollouts (issue 16):
//!
//! * `muster_config_steps_total{state}`: configuration steps units
//!   reported (`applying`, `applied`, `failed`, `refused`, `rolled_back`);
//! * `muster_config_refusals_total{reason}`: documents units refused, by
//!   reason (`muster_proto::RefusalReason`);
//! * `muster_rollout_steps_total{step}`: rollout steps taken;
//! * `muster_rollout_verdicts_total{verdict}`: wave judgements;
//! * `muster_rollouts_running`: rollouts under way;
//! * `muster_rollout_save_failures_total`: rollout state that could not be
//!   written to disk;
//! * `muster_rollout_events_dropped_total`: rollout steps that could not
//!   be handed to the event store (the collector stopping).
//!
//! Every label set is bounded: fixed names.

use std::sync::atomic::{AtomicU64, Ordering};

use muster_proto::{ConfigState, RefusalReason};

use super::expo::Exposition;

const STATES: [&str; 5] = ["applying", "applied", "failed", "refused", "rolled_back"];
pub const STEPS: [&str; 11] = [
    "started",
    "wave_issued",
    "wave_applied",
    "wave_judged",
    "paused",
    "resumed",
    "rolling_back",
    "aborting",
    "rolled_back",
    "aborted",
    "completed",
];
const VERDICTS: [&str; 4] = ["pass", "fail", "inconclusive", "no_data"];

#[derive(Debug, Default)]
pub struct RemoteMetrics {
    steps: [AtomicU64; STATES.len()],
    refusals: [AtomicU64; RefusalReason::ALL.len()],
    rollout_steps: [AtomicU64; STEPS.len()],
    verdicts: [AtomicU64; VERDICTS.len()],
    pub running: AtomicU64,
    pub save_failures: AtomicU64,
    pub events_dropped: AtomicU64,
}

impl RemoteMetrics {
    /// A unit's configuration step (a new record, not a duplicate).
    pub fn config_step(&self, s: &ConfigState) {
        if let Some(i) = STATES.iter().position(|x| *x == s.as_str()) {
            self.steps[i].fetch_add(1, Ordering::Relaxed);
        }
        if let ConfigState::Refused { reason, .. } = s
            && let Some(i) = RefusalReason::ALL.iter().position(|r| r == reason)
        {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn rollout_step(&self, step: &str) {
        if let Some(i) = STEPS.iter().position(|x| *x == step) {
            self.rollout_steps[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn verdict(&self, v: &str) {
        if let Some(i) = VERDICTS.iter().position(|x| *x == v) {
            self.verdicts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refusals(&self, r: RefusalReason) -> u64 {
        RefusalReason::ALL
            .iter()
            .position(|x| *x == r)
            .map_or(0, |i| self.refusals[i].load(Ordering::Relaxed))
    }

    pub fn render(&self, e: &mut Exposition) {
        e.counters(
            "muster_config_steps_total",
            "Configuration steps units reported, by state.",
            "state",
            &STATES,
            &self.steps,
        );
        let reasons: Vec<&str> = RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        e.counters(
            "muster_config_refusals_total",
            "Remote config documents units refused, by reason.",
            "reason",
            &reasons,
            &self.refusals,
        );
        e.counters(
            "muster_rollout_steps_total",
            "Rollout steps taken, by step.",
            "step",
            &STEPS,
            &self.rollout_steps,
        );
        e.counters(
            "muster_rollout_verdicts_total",
            "Rollout wave judgements, by verdict.",
            "verdict",
            &VERDICTS,
            &self.verdicts,
        );
        e.family("muster_rollouts_running", "gauge", "Rollouts under way.");
        e.sample(
            "muster_rollouts_running",
            &[],
            self.running.load(Ordering::Relaxed),
        );
        for (name, help, v) in [
            (
                "muster_rollout_save_failures_total",
                "Rollout state changes that could not be written to disk.",
                &self.save_failures,
            ),
            (
                "muster_rollout_events_dropped_total",
                "Rollout steps that could not be handed to the event store.",
                &self.events_dropped,
            ),
        ] {
            e.family(name, "counter", help);
            e.sample(name, &[], v.load(Ordering::Relaxed));
        }
    }
}
