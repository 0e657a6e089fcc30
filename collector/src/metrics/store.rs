//! The store: group commits (each one flush), their duration, errors, size.

use std::sync::atomic::{AtomicU64, Ordering};

use super::expo::Exposition;
use super::histogram::Histogram;

#[derive(Debug, Default)]
pub struct StoreMetrics {
    pub commits: AtomicU64,
    pub errors: AtomicU64,
    pub commit_seconds: Histogram,
    pub pruned_samples: AtomicU64,
    pub pruned_events: AtomicU64,
}

impl StoreMetrics {
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
        self.commit_seconds.render(
            e,
            "muster_store_commit_seconds",
            "Duration of a group commit including its flush.",
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
        e.sample(
            "muster_store_pruned_total",
            &[("kind", "event")],
            get(&self.pruned_events),
        );
        e.family(
            "muster_store_size_bytes",
            "gauge",
            "Bytes the store takes on disk.",
        );
        e.sample("muster_store_size_bytes", &[], size_bytes);
    }
}
