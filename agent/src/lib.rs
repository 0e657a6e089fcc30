//! Muster agent library: everything but argument parsing lives here.
//!
//! * [`sample`]: host health (sysinfo), one file per metric family.
//! * [`probe`]: synthetic transactions (http/https, tcp, dns, icmp), their
//!   failure classification and scheduler.
//! * [`report`]: the CAD client's loopback self-report endpoint.
//! * [`observation`]: the seam: measuring sends `Observation`s to the uplink.
//! * [`buffer`] + [`uplink`]: store-and-forward over MQTT.
//! * [`enroll`]: enrolment by claim (the unit's own broker credential).
//! * [`facts`]: the unit's labels and what it reports about itself (agent,
//!   OS and CAD client versions), sent at start and on change.
//! * [`action`]: signed requests from the collector to run one of the
//!   actions the local config defines, checked, bounded and audited.
//! * [`power`]: why the agent goes away (shutdown, stop, sleep), announced before it goes.
//! * [`dbus`] (Linux): a small blocking D-Bus client for logind and ModemManager.
//! * [`config`], [`run`], [`service`]: configuration, wiring, running as a service.

pub mod action;
pub mod buffer;
/// The injected clock (its home is `muster_base::clock`).
pub use muster_base::clock;
pub mod config;
#[cfg(target_os = "linux")]
pub mod dbus;
pub mod enroll;
pub mod facts;
pub mod observation;
pub mod power;
pub mod probe;
pub mod remote;
pub mod report;
pub mod run;
pub mod sample;
pub mod service;
pub mod status;
pub mod trust;
pub mod uplink;
