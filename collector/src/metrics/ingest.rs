//! Ingest counters: messages, records, duplicates, refusals by reason.

use std::sync::atomic::{AtomicU64, Ordering};

use super::expo::Exposition;
use super::histogram::Histogram;
use crate::ingest::refusal::Refusal;
use muster_proto::PresenceReason;

/// The `reason` labels of `muster_ingest_presence_total`
/// (`PresenceReason::as_str`).
pub const PRESENCE_REASONS: [&str; 7] = [
    "connected",
    "resumed",
    "lost",
    "shutdown",
    "stop",
    "sleep",
    "unknown",
];

#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub messages: AtomicU64,
    pub records: AtomicU64,
    pub duplicates: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    presence: [AtomicU64; PRESENCE_REASONS.len()],
    pub presence_unknown_reason: AtomicU64,
    /// Records in group commits that were durable (the point of truth).
    pub stored: AtomicU64,
    /// Arrival to durable commit, per message.
    pub wait: Histogram,
    /// Times ingest became overloaded.
    pub overloads: AtomicU64,
}

/// The flow gauges, read from the live state at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowGauges {
    pub queue_depth: usize,
    pub holding: usize,
    pub outbound: usize,
    pub overloaded: bool,
}

impl IngestMetrics {
    pub fn refuse(&self, r: Refusal) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A presence (state topic) or announcement record arrived.
    pub fn presence(&self, r: PresenceReason) {
        let i = PRESENCE_REASONS
            .iter()
            .position(|l| *l == r.as_str())
            .unwrap_or(PRESENCE_REASONS.len() - 1);
        self.presence[i].fetch_add(1, Ordering::Relaxed);
        if matches!(r, PresenceReason::Unknown { .. }) {
            self.presence_unknown_reason.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn presences(&self, label: &str) -> u64 {
        PRESENCE_REASONS
            .iter()
            .position(|l| *l == label)
            .map_or(0, |i| self.presence[i].load(Ordering::Relaxed))
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r.index()].load(Ordering::Relaxed)
    }

    pub fn render(&self, e: &mut Exposition, flow: FlowGauges) {
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
            "Presences received (births, wills, announcements on the state topic and as records), by reason.",
        );
        for (i, r) in PRESENCE_REASONS.iter().enumerate() {
            e.sample(
                "muster_ingest_presence_total",
                &[("reason", r)],
                get(&self.presence[i]),
            );
        }
        e.family(
            "muster_ingest_presence_unknown_reason_total",
            "counter",
            "Presences with a reason code this collector does not know (a newer agent's): offline ones are treated as lost.",
        );
        e.sample(
            "muster_ingest_presence_unknown_reason_total",
            &[],
            get(&self.presence_unknown_reason),
        );
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
        e.sample("muster_ingest_queue_depth", &[], flow.queue_depth);
        e.family(
            "muster_ingest_holding",
            "gauge",
            "Messages the ingest worker has taken and not yet answered (at most ingest.receive_maximum).",
        );
        e.sample("muster_ingest_holding", &[], flow.holding);
        e.family(
            "muster_ingest_outbound_depth",
            "gauge",
            "Acks and status messages queued for the MQTT publisher.",
        );
        e.sample("muster_ingest_outbound_depth", &[], flow.outbound);
        e.family(
            "muster_ingest_stored_records_total",
            "counter",
            "Records in group commits that are durable on disk (acked after this).",
        );
        e.sample("muster_ingest_stored_records_total", &[], get(&self.stored));
        self.wait.render(
            e,
            "muster_ingest_wait_seconds",
            "Time from a message's arrival to the durable commit that covers it.",
        );
        e.family(
            "muster_ingest_overloaded",
            "gauge",
            "1 while the oldest message not yet durable has waited ingest.overload_wait or more, or ingest has been busy without a break for that long (the backlog is then in the broker).",
        );
        e.sample("muster_ingest_overloaded", &[], u64::from(flow.overloaded));
        e.family(
            "muster_ingest_overloads_total",
            "counter",
            "Times ingest became overloaded.",
        );
        e.sample("muster_ingest_overloads_total", &[], get(&self.overloads));
    }
}
