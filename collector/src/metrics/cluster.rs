//! Cluster mode (`crate::cluster::node`): `muster_cluster_partitions_owned`,
//! the partitions this collector acts on now, and
//! `muster_cluster_partition_moves_total{move}`, partitions acquired and
//! lost; `muster_cluster_lease_rounds_total{result}` and
//! `muster_cluster_lease_round_last_ms`, the lease rounds with PostgreSQL
//! and how long the last one took (a round near the lease TTL means
//! partitions are about to be dropped). Rendered only in cluster mode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::expo::Exposition;

#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub enabled: AtomicBool,
    pub partitions: AtomicU64,
    pub acquired: AtomicU64,
    pub lost: AtomicU64,
    pub rounds_ok: AtomicU64,
    pub rounds_failed: AtomicU64,
    pub round_last_ms: AtomicU64,
}

impl ClusterMetrics {
    pub fn render(&self, e: &mut Exposition) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        e.family(
            "muster_cluster_partitions_owned",
            "gauge",
            "Partitions this collector holds the lease of and ingests.",
        );
        e.sample(
            "muster_cluster_partitions_owned",
            &[],
            self.partitions.load(Ordering::Relaxed),
        );
        e.family(
            "muster_cluster_partition_moves_total",
            "counter",
            "Partitions this collector acquired or lost (released, expired or taken).",
        );
        for (m, v) in [("acquired", &self.acquired), ("lost", &self.lost)] {
            e.sample(
                "muster_cluster_partition_moves_total",
                &[("move", m)],
                v.load(Ordering::Relaxed),
            );
        }
        e.family(
            "muster_cluster_lease_rounds_total",
            "counter",
            "Lease rounds with PostgreSQL (renew, re-plan), by result.",
        );
        for (r, v) in [("ok", &self.rounds_ok), ("failed", &self.rounds_failed)] {
            e.sample(
                "muster_cluster_lease_rounds_total",
                &[("result", r)],
                v.load(Ordering::Relaxed),
            );
        }
        e.family(
            "muster_cluster_lease_round_last_ms",
            "gauge",
            "How long the last lease round took, ms (failed rounds included).",
        );
        e.sample(
            "muster_cluster_lease_round_last_ms",
            &[],
            self.round_last_ms.load(Ordering::Relaxed),
        );
    }
}
