//! End-to-end tests: real processes, real brokers, loopback only. Module
//! files live in `tests/e2e/` (a test crate root resolves `mod x;` next to
//! itself, hence the `#[path]`s).

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]
#![forbid(unsafe_code)]

#[path = "e2e/acks.rs"]
mod acks;
#[path = "e2e/actions.rs"]
mod actions;
#[path = "e2e/broker_acl.rs"]
mod broker_acl;
#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "e2e/enroll.rs"]
mod enroll;
#[path = "e2e/gates.rs"]
mod gates;
#[path = "e2e/labels.rs"]
mod labels;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/peers.rs"]
mod peers;
#[path = "e2e/procs.rs"]
mod procs;
#[path = "e2e/remote_config.rs"]
mod remote_config;
#[path = "e2e/rollouts.rs"]
mod rollouts;
#[path = "e2e/store_forward.rs"]
mod store_forward;
