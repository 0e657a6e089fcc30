//! The seam between measuring and shipping: samplers and probes send
//! `Observation`s into a bounded channel; the uplink stamps each with the
//! boot id and the next seq, writes it to the disk buffer, and ships it.

use muster_proto::Payload;

/// One thing the agent measured, at event time `at_ms` (unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub at_ms: u64,
    pub payload: Payload,
}

pub type ObservationTx = tokio::sync::mpsc::Sender<Observation>;
pub type ObservationRx = tokio::sync::mpsc::Receiver<Observation>;
