//! Self and fleet metrics in the Prometheus text exposition format (valid
//! under `promtool check metrics`). One file per metric family group;
//! counters are atomics bumped on the hot path, fleet gauges are computed
//! from the live view at scrape time.

pub mod ack;
pub mod actions;
pub mod baseline;
pub mod broker;
pub mod cluster;
pub mod enroll;
pub mod expo;
pub mod fleet;
pub mod histogram;
pub mod http;
pub mod ingest;
pub mod mqtt;
pub mod notify;
pub mod peers;
pub mod remote;
pub mod store;
pub mod stream;
pub mod traffic;

use std::collections::BTreeMap;

use muster_proto::UnitId;

use crate::model::Incident;
use crate::store::UnitRecord;

/// Every self-metric of the collector.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ingest: ingest::IngestMetrics,
    pub ack: ack::AckMetrics,
    pub store: store::StoreMetrics,
    pub stream: stream::StreamMetrics,
    pub http: http::HttpMetrics,
    pub mqtt: mqtt::MqttMetrics,
    pub transitions: fleet::TransitionMetrics,
    pub notify: notify::NotifyMetrics,
    pub enroll: enroll::EnrollMetrics,
    pub cluster: cluster::ClusterMetrics,
    pub remote: remote::RemoteMetrics,
    pub actions: actions::ActionMetrics,
    /// Peer comparison: the rules engine holds a handle (`Engine::set_peer_metrics`).
    pub peers: std::sync::Arc<peers::PeerMetrics>,
    /// Agencies' message rates: the rules engine holds a handle (`Engine::set_traffic_metrics`).
    pub traffic: std::sync::Arc<traffic::TrafficMetrics>,
    /// Baselines: the rules engine holds a handle (`Engine::set_baseline_metrics`).
    pub baseline: std::sync::Arc<baseline::BaselineMetrics>,
    /// Set when this process runs the embedded broker.
    pub broker: std::sync::OnceLock<std::sync::Arc<broker::BrokerMetrics>>,
}

impl Metrics {
    /// The whole exposition.
    pub fn render<'a>(
        &self,
        units: &BTreeMap<UnitId, std::sync::Arc<UnitRecord>>,
        incidents: impl Iterator<Item = &'a Incident>,
        flow: ingest::FlowGauges,
        store_bytes: u64,
    ) -> String {
        let mut e = expo::Exposition::default();
        fleet::render(&mut e, units, incidents);
        self.transitions.render(&mut e);
        self.ingest.render(&mut e, flow);
        self.ack.render(&mut e);
        self.store.render(&mut e, store_bytes);
        self.stream.render(&mut e);
        self.http.render(&mut e);
        self.mqtt.render(&mut e);
        self.notify.render(&mut e);
        self.enroll.render(&mut e);
        self.cluster.render(&mut e);
        self.remote.render(&mut e);
        self.actions.render(&mut e);
        self.peers.render(&mut e);
        self.traffic.render(&mut e);
        self.baseline.render(&mut e);
        if let Some(b) = self.broker.get() {
            b.render(&mut e);
        }
        e.finish()
    }
}
