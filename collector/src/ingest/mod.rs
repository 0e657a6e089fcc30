//! Ingest: the MQTT connection ([`mqtt`]), the worker that validates,
//! dedups, feeds the rules engine, group-commits and acks ([`worker`]),
//! and its pure parts: seq accounting ([`seq`]), presence ordering
//! ([`presence`]) and refusal reasons ([`refusal`]).

pub mod mqtt;
pub mod presence;
pub mod refusal;
pub mod seq;
pub mod worker;
