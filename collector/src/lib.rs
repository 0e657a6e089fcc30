//! Muster collector library: everything but argument parsing lives here, so
//! tests drive the real thing with injected listeners, clock and shutdown.
//!
//! * [`actions`]: signed action requests to units, and their audit.
//! * [`config`]: TOML config, validated with errors naming the key.
//! * [`ingest`]: MQTT in, dedup, seq accounting, rules, group commit, acks.
//! * [`rules`]: the pure rules engine (health, transitions, incidents).
//! * [`runbooks`]: the built-in and site runbooks, and their safe rendering.
//! * [`selector`]: label selectors (which units carry given labels), pure.
//! * [`seq`]: the pure per-unit seq accounting and acks, which ingest and
//!   the store both reach down to.
//! * [`store`]: durable state behind the [`store::Store`] trait (sled).
//! * [`feed`]: the agencies' HTTP API, SSE stream, /metrics, health.
//! * [`status_pub`]: retained JSON status and incidents over MQTT.
//! * [`notify`]: webhook notifications of transitions and incidents.
//! * [`broker`]: the optional embedded MQTT broker (rumqttd).
//! * [`enroll`]: enrolment by claim: per-unit broker credentials.
//! * [`service`]: systemd readiness and watchdog.
//! * [`fdlimit`]: the soft open-file limit raised to the hard one at start.
//! * [`cluster`]: cluster mode's pure partition-lease planner.
//! * [`app`]: wires it all together with a clean shutdown.

#![forbid(unsafe_code)]

pub mod actions;
pub mod app;
pub mod automation;
pub mod broker;
pub mod cluster;
/// The injected clock (its home is `muster_base::clock`).
pub use muster_base::clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod enroll;
pub mod fdlimit;
pub mod feed;
pub mod gate;
pub mod ingest;
pub mod jsonfile;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod remote;
pub mod rollout;
pub mod rules;
pub mod runbooks;
pub mod selector;
pub mod seq;
pub mod service;
pub mod signing;
pub mod state;
pub mod status_pub;
pub mod store;
