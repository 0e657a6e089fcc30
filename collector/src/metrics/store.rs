//! The store: group commits (each one flush), their duration, errors, size,
//! and what retention rolled up and pruned, by kind.

use std::sync::atomic::{AtomicU64, Ordering};

use super::expo::Exposition;
use super::histogram::Histogram;
use crate::store::{PruneStats, RetainStats};

#[derive(Debug, Default)]
pub struct StoreMetrics {
    pub commits: AtomicU64,
    pub errors: AtomicU64,
    /// Of the errors: commits refused because a partition's lease was
    /// gone (cluster mode's fence).
    pub fenced: AtomicU64,
    pub commit_seconds: Histogram,
    /// Wall time of a whole retention round (rollups, then drops).
    pub retention_seconds: Histogram,
    pub pruned_samples: AtomicU64,
    pub pruned_events: AtomicU64,
    pub pruned_incidents: AtomicU64,
    pub pruned_minutes: AtomicU64,
    pub pruned_hours: AtomicU64,
    pub rolled_minutes: AtomicU64,
    pub rolled_hours: AtomicU64,
    pub rolled_from_raw: AtomicU64,
}

impl StoreMetrics {
    /// Counts one retention round (`store::retention_round`).
    pub fn record_retention(&self, r: &RetainStats, st: &PruneStats) {
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        add(&self.pruned_samples, r.samples_pruned + st.samples);
        add(&self.pruned_events, st.events);
        add(&self.pruned_incidents, st.incidents);
        add(&self.pruned_minutes, r.minutes_pruned);
        add(&self.pruned_hours, r.hours_pruned);
        add(&self.rolled_minutes, r.minutes_rolled);
        add(&self.rolled_hours, r.hours_rolled);
        add(&self.rolled_from_raw, r.minutes_from_raw);
    }

    pub fn render(&self, e: &mut Exposition, size_bytes: u64) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.family(
            "muster_store_commits_total",
            "counter",
            "Group commits written and flushed to disk.",
        );
        e.sample("muster_store_commits_total", &[], get(&self.commits));
        e.family(
            "muster_store_errors_total",
            "counter",
            "Store operations that failed (records then stay unacked and are resent).",
        );
        e.sample("muster_store_errors_total", &[], get(&self.errors));
        e.family(
            "muster_store_fenced_total",
            "counter",
            "Commits refused because this collector no longer held a partition's lease (cluster mode): nothing of them was written.",
        );
        e.sample("muster_store_fenced_total", &[], get(&self.fenced));
        self.commit_seconds.render(
            e,
            "muster_store_commit_seconds",
            "Duration of a group commit including its flush.",
        );
        self.retention_seconds.render(
            e,
            "muster_store_retention_seconds",
            "Duration of a retention round: rolling up what was committed since the last one, then dropping what expired.",
        );
        e.family(
            "muster_store_pruned_total",
            "counter",
            "Entries removed by retention, by kind.",
        );
        e.sample(
            "muster_store_pruned_total",
            &[("kind", "sample")],
            get(&self.pruned_samples),
        );
        for (kind, a) in [
            ("event", &self.pruned_events),
            ("incident", &self.pruned_incidents),
            ("minute", &self.pruned_minutes),
            ("hour", &self.pruned_hours),
        ] {
            e.sample("muster_store_pruned_total", &[("kind", kind)], get(a));
        }
        e.family(
            "muster_store_rolled_total",
            "counter",
            "Rollups written by retention (merged from the records ingest folded, or rebuilt from raw samples), by resolution.",
        );
        for (kind, a) in [
            ("minute", &self.rolled_minutes),
            ("hour", &self.rolled_hours),
        ] {
            e.sample("muster_store_rolled_total", &[("kind", kind)], get(a));
        }
        e.family(
            "muster_store_rolled_from_raw_total",
            "counter",
            "Minute rollups retention rebuilt by reading raw samples back (a probe with more than 19 results in the minute, a minute already in its hour's block, or a mark from an earlier build) rather than merging what ingest folded.",
        );
        e.sample(
            "muster_store_rolled_from_raw_total",
            &[],
            get(&self.rolled_from_raw),
        );
        e.family(
            "muster_store_size_bytes",
            "gauge",
            "Bytes the store takes on disk.",
        );
        e.sample("muster_store_size_bytes", &[], size_bytes);
    }
}
