//! Ingest counters: messages, records, duplicates, refusals by reason.

use std::sync::atomic::{AtomicU64, Ordering};

use super::expo::Exposition;
use crate::ingest::refusal::Refusal;

#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub messages: AtomicU64,
    pub records: AtomicU64,
    pub duplicates: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    pub presence: AtomicU64,
}

impl IngestMetrics {
    pub fn refuse(&self, r: Refusal) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r.index()].load(Ordering::Relaxed)
    }

    pub fn render(&self, e: &mut Exposition, queue_depth: usize) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.family(
            "muster_ingest_messages_total",
            "counter",
            "MQTT messages received on the telemetry and state topics.",
        );
        e.sample("muster_ingest_messages_total", &[], get(&self.messages));
        e.family(
            "muster_ingest_records_total",
            "counter",
            "Distinct records accepted (first copy of each unit, boot, seq).",
        );
        e.sample("muster_ingest_records_total", &[], get(&self.records));
        e.family(
            "muster_ingest_duplicates_total",
            "counter",
            "Records dropped as duplicates of one already received.",
        );
        e.sample("muster_ingest_duplicates_total", &[], get(&self.duplicates));
        e.family(
            "muster_ingest_presence_total",
            "counter",
            "Presence messages (birth and will) received.",
        );
        e.sample("muster_ingest_presence_total", &[], get(&self.presence));
        e.family(
            "muster_ingest_refused_total",
            "counter",
            "Messages dropped as invalid, by reason.",
        );
        for r in Refusal::ALL {
            e.sample(
                "muster_ingest_refused_total",
                &[("reason", r.as_str())],
                self.refused(r),
            );
        }
        e.family(
            "muster_ingest_queue_depth",
            "gauge",
            "Messages received and waiting for the ingest worker.",
        );
        e.sample("muster_ingest_queue_depth", &[], queue_depth);
    }
}
