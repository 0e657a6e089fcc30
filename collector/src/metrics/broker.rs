//! The embedded broker's gate: refusals by reason, open connections,
//! accept errors. Rendered only when the collector runs the embedded broker.

use std::sync::atomic::{AtomicU64, Ordering};

use super::expo::Exposition;
use crate::broker::acl::Refusal;

#[derive(Debug, Default)]
pub struct BrokerMetrics {
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Client connections open now.
    pub connections: AtomicU64,
    /// Clients that connected (CONNACK accepted by the broker behind the gate).
    pub connects: AtomicU64,
    /// accept() failures (e.g. EMFILE).
    pub accept_errors: AtomicU64,
}

impl BrokerMetrics {
    pub fn refuse(&self, r: Refusal) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r.index()].load(Ordering::Relaxed)
    }

    pub fn render(&self, e: &mut Exposition) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.family(
            "muster_broker_refused_total",
            "counter",
            "Connections and packets the embedded broker's gate refused, by reason.",
        );
        for r in Refusal::ALL {
            e.sample(
                "muster_broker_refused_total",
                &[("reason", r.as_str())],
                self.refused(r),
            );
        }
        e.family(
            "muster_broker_connections",
            "gauge",
            "Client connections open on the embedded broker's public listener.",
        );
        e.sample("muster_broker_connections", &[], get(&self.connections));
        e.family(
            "muster_broker_connects_total",
            "counter",
            "Clients that authenticated and connected through the gate.",
        );
        e.sample("muster_broker_connects_total", &[], get(&self.connects));
        e.family(
            "muster_broker_accept_errors_total",
            "counter",
            "Failed accepts on the public listener (e.g. out of file descriptors).",
        );
        e.sample(
            "muster_broker_accept_errors_total",
            &[],
            get(&self.accept_errors),
        );
    }
}
