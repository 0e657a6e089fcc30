//! The feed's connection limits (`feed/server.rs`, `feed/stream.rs`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::expo::Exposition;
use crate::feed::limits::HttpDrop;

#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Open connections.
    pub connections: AtomicI64,
    /// Connections and streams the feed dropped, by [`HttpDrop::index`].
    pub drops: [AtomicU64; HttpDrop::ALL.len()],
    /// Keep-alive connections closed after `http.idle_timeout`.
    pub idle_closed: AtomicU64,
}

impl HttpMetrics {
    pub fn dropped(&self, why: HttpDrop) {
        self.drops[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, why: HttpDrop) -> u64 {
        self.drops[why.index()].load(Ordering::Relaxed)
    }

    pub fn render(&self, e: &mut Exposition) {
        e.family(
            "muster_http_connections",
            "gauge",
            "Open HTTP connections to the feed.",
        );
        e.sample(
            "muster_http_connections",
            &[],
            self.connections.load(Ordering::Relaxed),
        );
        e.family(
            "muster_http_refused_total",
            "counter",
            "HTTP connections the feed closed: over http.max_connections, or no complete request head within http.header_read_timeout.",
        );
        for why in [HttpDrop::ConnectionCap, HttpDrop::HeaderTimeout] {
            e.sample(
                "muster_http_refused_total",
                &[("reason", why.as_str())],
                self.get(why),
            );
        }
        e.family(
            "muster_http_idle_closed_total",
            "counter",
            "Keep-alive connections closed after http.idle_timeout without a request.",
        );
        e.sample(
            "muster_http_idle_closed_total",
            &[],
            self.idle_closed.load(Ordering::Relaxed),
        );
        e.family(
            "muster_http_accept_errors_total",
            "counter",
            "Failed accepts (e.g. out of file descriptors); the listener backs off.",
        );
        e.sample(
            "muster_http_accept_errors_total",
            &[],
            self.get(HttpDrop::AcceptError),
        );
        e.family(
            "muster_sse_dropped_total",
            "counter",
            "Stream clients disconnected: their http.sse_buffer queue stayed full for http.sse_send_timeout.",
        );
        e.sample(
            "muster_sse_dropped_total",
            &[],
            self.get(HttpDrop::SseOverflow),
        );
    }
}
