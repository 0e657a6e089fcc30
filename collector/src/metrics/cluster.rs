//! Cluster mode (`crate::cluster::node`): `muster_cluster_partitions_owned`,
//! the partitions this collector acts on now, and
//! `muster_cluster_partition_moves_total{move}`, partitions acquired and
//! lost. Rendered only in cluster mode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::expo::Exposition;

#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub enabled: AtomicBool,
    pub partitions: AtomicU64,
    pub acquired: AtomicU64,
    pub lost: AtomicU64,
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
    }
}
