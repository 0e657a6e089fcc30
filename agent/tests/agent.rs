//! The agent's integration tests: one binary, one module per area.

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

#[cfg(target_os = "linux")]
#[path = "agent/actions.rs"]
mod actions;
#[path = "agent/buffer.rs"]
mod buffer;
#[path = "agent/uplink.rs"]
mod uplink;

#[path = "agent/cli.rs"]
mod cli;
#[path = "agent/config.rs"]
mod config;
#[cfg(unix)]
#[path = "agent/facts.rs"]
mod facts;
#[cfg(target_os = "linux")]
#[path = "agent/network.rs"]
mod network;
#[path = "agent/network_config.rs"]
mod network_config;
#[cfg(target_os = "linux")]
#[path = "agent/power.rs"]
mod power;
#[path = "agent/probes.rs"]
mod probes;
#[path = "agent/report.rs"]
mod report;
#[cfg(unix)]
#[path = "agent/run.rs"]
mod run;
#[path = "agent/schedule.rs"]
mod schedule;
#[path = "agent/servers.rs"]
mod servers;
#[cfg(unix)]
#[path = "agent/transaction.rs"]
mod transaction;
