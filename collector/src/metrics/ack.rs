//! Acks to agents: how many, and how long from a record's arrival to its ack.

use std::sync::atomic::{AtomicU64, Ordering};

use super::expo::Exposition;
use super::histogram::Histogram;

#[derive(Debug, Default)]
pub struct AckMetrics {
    pub published: AtomicU64,
    pub errors: AtomicU64,
    pub latency: Histogram,
    /// Acks and status messages merged into one still queued (outqueue.rs).
    pub coalesced: AtomicU64,
}

impl AckMetrics {
    pub fn render(&self, e: &mut Exposition) {
        e.family(
            "muster_acks_published_total",
            "counter",
            "Acks published to agents after a durable commit.",
        );
        e.sample(
            "muster_acks_published_total",
            &[],
            self.published.load(Ordering::Relaxed),
        );
        e.family(
            "muster_ack_publish_errors_total",
            "counter",
            "Acks that could not be handed to the MQTT client.",
        );
        e.sample(
            "muster_ack_publish_errors_total",
            &[],
            self.errors.load(Ordering::Relaxed),
        );
        e.family(
            "muster_publish_coalesced_total",
            "counter",
            "Acks merged into a queued ack for the same unit and boot, and status messages replaced by a newer one for the same topic, while the MQTT output was behind.",
        );
        e.sample(
            "muster_publish_coalesced_total",
            &[],
            self.coalesced.load(Ordering::Relaxed),
        );
        self.latency.render(
            e,
            "muster_ack_latency_seconds",
            "Time from a unit's first record in a commit arriving to its ack being published.",
        );
    }
}
