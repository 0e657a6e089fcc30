//! The live view the feed reads and ingest writes: units, incidents, the
//! change broadcast, metrics and readiness. Ingest updates the unit view
//! once per group commit (every `ingest.commit_interval`), never per
//! message, so readers rarely contend with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use muster_proto::UnitId;
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::model::Incident;
use crate::store::{Store, StoredEvent, UnitRecord};

/// Changes buffered per stream client before it counts as lagging.
pub const STREAM_BUFFER: usize = 4096;

pub struct Shared {
    pub units: RwLock<BTreeMap<UnitId, Arc<UnitRecord>>>,
    /// Incidents by id: open ones and those ended since start.
    pub incidents: RwLock<BTreeMap<String, Incident>>,
    pub changes: broadcast::Sender<Arc<StoredEvent>>,
    pub metrics: Metrics,
    pub store: Arc<dyn Store>,
    /// Messages handed from the MQTT loop to the ingest worker, not yet taken.
    pub queue_depth: AtomicUsize,
    /// Messages the worker has taken and not yet answered (stored and
    /// acked, or refused): at most `ingest.receive_maximum`.
    pub holding: AtomicUsize,
    /// Acks and status messages handed to the publisher, not yet taken.
    pub outbound_depth: AtomicUsize,
    /// Acks and status messages waiting in the publisher's coalescing
    /// queue (at most one per unit and boot, and per status topic).
    pub outbound_queued: AtomicUsize,
    /// Ingest is overloaded (`ingest::flow::Overload`).
    pub overloaded: AtomicBool,
    /// The last group commit succeeded.
    pub store_ok: AtomicBool,
    /// Units restored from the store and the engine are ready.
    pub started: AtomicBool,
    /// Rules-engine ticks the ingest worker has run: the systemd watchdog
    /// is fed only while this moves.
    pub worker_ticks: AtomicU64,
    /// Cluster mode: the lease loop reached PostgreSQL within a lease TTL
    /// (always true on a single node).
    pub leases_ok: AtomicBool,
}

impl Shared {
    pub fn new(store: Arc<dyn Store>) -> Arc<Shared> {
        let (changes, _) = broadcast::channel(STREAM_BUFFER);
        Arc::new(Shared {
            units: RwLock::new(BTreeMap::new()),
            incidents: RwLock::new(BTreeMap::new()),
            changes,
            metrics: Metrics::default(),
            store,
            queue_depth: AtomicUsize::new(0),
            holding: AtomicUsize::new(0),
            outbound_depth: AtomicUsize::new(0),
            outbound_queued: AtomicUsize::new(0),
            overloaded: AtomicBool::new(false),
            store_ok: AtomicBool::new(true),
            started: AtomicBool::new(false),
            worker_ticks: AtomicU64::new(0),
            leases_ok: AtomicBool::new(true),
        })
    }

    /// Subscribed, and the publisher connection (if separate) is up: acks
    /// can go out.
    pub fn mqtt_ready(&self) -> bool {
        let m = &self.metrics.mqtt;
        m.subscriber.connected.load(Ordering::Relaxed)
            && (!m.separate_publisher.load(Ordering::Relaxed)
                || m.publisher.connected.load(Ordering::Relaxed))
    }

    /// The Prometheus exposition of everything.
    pub fn render_metrics(&self) -> String {
        let units = self.units.read().unwrap_or_else(|e| e.into_inner());
        let incidents = self.incidents.read().unwrap_or_else(|e| e.into_inner());
        self.metrics.render(
            &units,
            incidents.values(),
            crate::metrics::ingest::FlowGauges {
                queue_depth: self.queue_depth.load(Ordering::Relaxed),
                holding: self.holding.load(Ordering::Relaxed),
                outbound: self.outbound_depth.load(Ordering::Relaxed)
                    + self.outbound_queued.load(Ordering::Relaxed),
                overloaded: self.overloaded.load(Ordering::Relaxed),
            },
            self.store.size_on_disk(),
        )
    }
}
