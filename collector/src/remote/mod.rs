//! Remote config documents (issue 16): what the collector signs and
//! publishes, retained, for agents to apply (the agent's side:
//! `muster_agent::remote`).
//!
//! Contract:
//!
//! * A document is for an agency (`muster/v1/{agency}/config`) or one unit
//!   (`muster/v1/{agency}/{unit}/config`); a unit's overrides its agency's,
//!   section by section, on the agent.
//! * Its body is TOML whose top-level keys are all in
//!   [`muster_proto::REMOTE_SECTIONS`], at most
//!   [`muster_proto::MAX_CONFIG_BODY`] bytes; anything else is refused here
//!   with a message naming the section (the agent checks again, against
//!   its own `[remote] allow` and with `check-config`'s validation).
//! * Versions only grow per scope, also across a clear: setting a scope
//!   after clearing it continues from the last version. The book is
//!   persisted (`config_docs.json` beside the store, written atomically)
//!   and bounded (`[remote_config] max_docs`).
//! * Every document is signed with the collector's current signing key
//!   when it is set, and republished (retained) at every start, so a
//!   broker that lost its retained messages (the embedded one always does
//!   at a restart) has them again.
//! * Single node only in this version: in cluster mode two collectors
//!   could issue one version twice, so the endpoints answer 501.

pub mod book;

pub use book::{ConfigBook, DocEntry, DocError};
