//! Muster's wire contract: the one thing the agent and the collector share.
//!
//! * [`message`]: what travels (host samples, probe results, heartbeats,
//!   batches, acks, presence).
//! * [`ids`]: unit identity, boot ids and their validation.
//! * [`topic`]: the MQTT topic scheme, built and parsed.
//! * [`codec`]: the versioned envelope, `encode` / `decode` with a size limit.
//!
//! Invariants: this crate does no I/O, never reads a clock, and is the only
//! crate in the workspace that knows bincode. Decoding never panics and never
//! allocates past [`codec::MAX_MESSAGE_BYTES`] on hostile input.

pub mod codec;
pub mod fixtures;
pub mod ids;
pub mod message;
pub mod topic;

pub use codec::{
    ACCEPTED_VERSIONS, DecodeError, Decoded, EncodeError, MAX_BATCH_RECORDS, MAX_MESSAGE_BYTES,
    SCHEMA_VERSION, decode, decode_record, encode, encode_record, encode_version, encoded_len,
    message_from_encoded,
};
pub use ids::{BootId, IdentityError, UnitId};
pub use message::*;
pub use topic::{Topic, TopicError, TopicKind};
