//! Ingest: the MQTT connection ([`mqtt`]), the worker that validates,
//! dedups, feeds the rules engine, group-commits and acks ([`worker`]),
//! and its pure parts: seq accounting ([`seq`]) and refusal reasons
//! ([`refusal`]). Presence ordering lives with the rules engine
//! (`rules::presence`), which the worker asks.

pub mod mqtt;
pub mod refusal;
pub mod seq;
pub mod worker;
