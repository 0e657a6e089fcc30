//! Ingest: the MQTT connection ([`mqtt`]), the worker that validates,
//! dedups, feeds the rules engine, group-commits and acks ([`worker`]),
//! and its pure refusal reasons ([`refusal`]). The seq accounting it keeps
//! is [`crate::seq`] (the store persists it too); which presence is believed
//! is decided in the wire contract (`muster_proto::presence`), through the
//! rules engine, which the worker asks.

pub mod flow;
pub mod mqtt;
pub mod outqueue;
pub mod parse;
pub mod refusal;
pub mod settle;
pub mod signpool;
pub mod worker;
