//! The SSE stream and the HTTP feed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::expo::Exposition;

#[derive(Debug, Default)]
pub struct StreamMetrics {
    pub clients: AtomicI64,
    pub events: AtomicU64,
    pub lagged: AtomicU64,
    pub http_unauthorized: AtomicU64,
    pub http_forbidden: AtomicU64,
}

impl StreamMetrics {
    pub fn render(&self, e: &mut Exposition) {
        e.family(
            "muster_sse_clients",
            "gauge",
            "Clients connected to /api/v1/stream.",
        );
        e.sample(
            "muster_sse_clients",
            &[],
            self.clients.load(Ordering::Relaxed),
        );
        e.family(
            "muster_sse_events_total",
            "counter",
            "Events sent on the stream, all clients together.",
        );
        e.sample(
            "muster_sse_events_total",
            &[],
            self.events.load(Ordering::Relaxed),
        );
        e.family(
            "muster_sse_lagged_total",
            "counter",
            "Events a slow stream client missed (it is told to resync).",
        );
        e.sample(
            "muster_sse_lagged_total",
            &[],
            self.lagged.load(Ordering::Relaxed),
        );
        e.family(
            "muster_http_auth_failures_total",
            "counter",
            "Feed requests refused, by HTTP status.",
        );
        e.sample(
            "muster_http_auth_failures_total",
            &[("code", "401")],
            self.http_unauthorized.load(Ordering::Relaxed),
        );
        e.sample(
            "muster_http_auth_failures_total",
            &[("code", "403")],
            self.http_forbidden.load(Ordering::Relaxed),
        );
    }
}
