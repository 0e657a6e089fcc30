//! Muster's wire contract: the one thing the agent and the collector share.
//!
//! * [`message`]: what travels (host samples, probe results, heartbeats,
//!   batches, acks, presence).
//! * [`ids`]: unit identity, boot ids and their validation.
//! * [`topic`]: the MQTT topic scheme, built and parsed.
//! * [`codec`]: the versioned envelope, `encode` / `decode` with a size limit;
//!   `v1` is the frozen previous schema, still read and written.
//! * [`sign`]: Ed25519 keys, key ids, signed acks, hellos, config documents
//!   and action requests.
//! * [`action`]: action requests and their audit records.
//! * [`rollup`]: the collector's stored rollups, in fixed point (not on the
//!   wire; here because this crate alone knows bincode).
//! * [`presence`]: which presence of a unit a receiver believes (receive
//!   order, births, wills, announcements): part of the contract, so that
//!   every reader of presences orders them the same way.
//!
//! Invariants: this crate does no I/O, never reads a clock, and is the only
//! crate in the workspace that knows bincode. Decoding never panics and never
//! allocates past [`codec::MAX_MESSAGE_BYTES`] on hostile input.

#![forbid(unsafe_code)]

pub mod action;
pub mod codec;
pub mod fixtures;
pub mod ids;
pub mod message;
pub mod presence;
pub mod rollup;
pub mod sign;
pub mod topic;
mod v1;

pub use action::{ActionAudit, ActionParam, ActionRef, ActionRefusal, ActionRequest, ActionStep};
pub use codec::{
    ACCEPTED_VERSIONS, DecodeError, Decoded, EncodeError, MAX_BATCH_RECORDS, MAX_MESSAGE_BYTES,
    SCHEMA_VERSION, decode, decode_action, decode_config, decode_hello, decode_record, encode,
    encode_action, encode_config, encode_hello, encode_record, encode_version, encoded_len,
    message_from_encoded,
};
pub use ids::{BootId, IdentityError, UnitId};
pub use message::*;
pub use sign::{KeyId, PublicKey, Signature, SigningKey, TrustedKeys, VerifyError};
pub use topic::{COLLECTOR_TOPIC, Topic, TopicError, TopicKind};
