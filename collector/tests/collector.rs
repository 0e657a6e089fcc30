//! The collector's integration tests: a real Mosquitto per test, the
//! collector in-process on `127.0.0.1:0` with a fed clock, test agents
//! publishing real wire messages with rumqttc.

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]
#![forbid(unsafe_code)]

#[path = "collector/harness.rs"]
mod harness;
#[path = "collector/valve.rs"]
mod valve;

#[path = "collector/actions.rs"]
mod actions;
#[path = "collector/backpressure.rs"]
mod backpressure;
#[path = "collector/baseline.rs"]
mod baseline;
#[path = "collector/cluster_nats.rs"]
mod cluster_nats;
#[path = "collector/cluster_pg.rs"]
mod cluster_pg;
#[path = "collector/config_body_limit.rs"]
mod config_body_limit;
#[path = "collector/dashboard.rs"]
mod dashboard;
#[path = "collector/demo.rs"]
mod demo;
#[path = "collector/disk_full.rs"]
mod disk_full;
#[path = "collector/enroll.rs"]
mod enroll;
#[path = "collector/feed_limits.rs"]
mod feed_limits;
#[path = "collector/fuzz.rs"]
mod fuzz;
#[path = "collector/gate_body_limit.rs"]
mod gate_body_limit;
#[path = "collector/grafana.rs"]
mod grafana;
#[path = "collector/ingest.rs"]
mod ingest;
#[path = "collector/limits.rs"]
mod limits;
#[path = "collector/openapi.rs"]
mod openapi;
#[path = "collector/presence.rs"]
mod presence;
#[path = "collector/problems.rs"]
mod problems;
#[path = "collector/restart.rs"]
mod restart;
#[path = "collector/rules.rs"]
mod rules;
#[path = "collector/runbooks.rs"]
mod runbooks;
#[path = "collector/schemathesis.rs"]
mod schemathesis;
#[path = "collector/scoping.rs"]
mod scoping;
#[path = "collector/tls.rs"]
mod tls;
#[path = "collector/traffic.rs"]
mod traffic;
#[path = "collector/webhook.rs"]
mod webhook;
