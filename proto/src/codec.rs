//! The versioned envelope and its codec.
//!
//! Wire layout of every Muster payload (telemetry, state, ack, hello):
//!
//! ```text
//! +--------+---------------------------------------------+
//! | u8     | schema version (SCHEMA_VERSION)             |
//! +--------+---------------------------------------------+
//! | bytes  | bincode 2, standard config (little endian,  |
//! |        | varint integers) of `Message`               |
//! +--------+---------------------------------------------+
//! ```
//!
//! The version byte comes first so that a reader can refuse a version it does
//! not know before it looks at anything else. The collector accepts every
//! version in [`ACCEPTED_VERSIONS`]: the current one and, once there is one,
//! the previous one, so a fleet can upgrade unit by unit. It answers each unit
//! in the version that unit spoke ([`encode_version`]).
//!
//! Version 2 (current) signs acks, adds `AgentStatus.acks_refused` and
//! `observations_dropped`, the presence's reason, announcement records and
//! the host sample's network context;
//! version 1 is read and written through the frozen `crate::v1` types. The
//! collector hello (`muster/v1/collector`) is not a `Message`: it has its
//! own [`encode_hello`] / [`decode_hello`], same envelope and limits, from
//! version 2 on.
//!
//! Limits: a payload is at most [`MAX_MESSAGE_BYTES`]. `decode` refuses a
//! longer input up front and runs bincode with the same limit, so a hostile
//! length prefix can neither allocate past it nor panic; trailing bytes,
//! invalid identities and a presence whose online flag contradicts its
//! reason are errors too (`malformed`).

use std::ops::RangeInclusive;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};

use crate::ids::{IdentityError, UnitId};
use crate::message::{
    Body, ConfigDoc, DocScope, Hello, MAX_CONFIG_BODY, MAX_HELLO_KEYS, Message, Payload, Presence,
    Record,
};
use crate::v1;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u8 = 2;

/// The schema versions this build reads: N and N-1 while a fleet upgrades.
pub const ACCEPTED_VERSIONS: RangeInclusive<u8> = 1..=SCHEMA_VERSION;

/// The first schema version with a collector hello.
pub const HELLO_MIN_VERSION: u8 = 2;

/// Largest encoded payload, version byte included. A replay batch is sized
/// by the agent to stay under it.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Most records in one batch.
pub const MAX_BATCH_RECORDS: usize = 1000;

pub(crate) type Config = Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE_BYTES>>;

pub(crate) fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("schema version {0} cannot be written by this build")]
    UnknownVersion(u8),
    #[error("message is {len} bytes; the limit is {MAX_MESSAGE_BYTES}")]
    TooLarge { len: usize },
    #[error("batch holds {0} records; the limit is {MAX_BATCH_RECORDS}")]
    BatchTooLong(usize),
    #[error("invalid identity: {0}")]
    Identity(IdentityError),
    #[error("a single-record message needs exactly one record, not {0}")]
    NotSingle(usize),
    #[error("a stored record does not decode: {0}")]
    BadStoredRecord(DecodeError),
    #[error("bincode: {0}")]
    Bincode(bincode::error::EncodeError),
    #[error("hello announces {0} keys; the limit is {MAX_HELLO_KEYS}")]
    TooManyKeys(usize),
    #[error("{0} cannot be written in schema version {1}")]
    NotInVersion(&'static str, u8),
    #[error("{0}")]
    Invalid(String),
}

/// Why a payload was refused. Each variant is a counted reason at the collector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload is {len} bytes; the limit is {MAX_MESSAGE_BYTES}")]
    TooLarge { len: usize },
    #[error("schema version {got} is not accepted (this build reads {}..={})", ACCEPTED_VERSIONS.start(), ACCEPTED_VERSIONS.end())]
    UnknownVersion { got: u8 },
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("batch holds {0} records; the limit is {MAX_BATCH_RECORDS}")]
    BatchTooLong(usize),
    #[error("invalid identity: {0}")]
    Identity(IdentityError),
    #[error("hello announces {0} keys; the limit is {MAX_HELLO_KEYS}")]
    TooManyKeys(usize),
}

impl DecodeError {
    /// A short, stable label for counting refusals by reason (a metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty | DecodeError::Malformed(_) | DecodeError::TrailingBytes(_) => {
                "malformed"
            }
            DecodeError::TooLarge { .. }
            | DecodeError::BatchTooLong(_)
            | DecodeError::TooManyKeys(_) => "oversized",
            DecodeError::UnknownVersion { .. } => "unknown_version",
            DecodeError::Identity(_) => "bad_identity",
        }
    }
}

/// Encodes `msg` at the current [`SCHEMA_VERSION`].
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    encode_version(msg, SCHEMA_VERSION)
}

/// Encodes `msg` at `version`, one of [`ACCEPTED_VERSIONS`]: the collector
/// answers a unit in the version that unit spoke.
pub fn encode_version(msg: &Message, version: u8) -> Result<Vec<u8>, EncodeError> {
    if !ACCEPTED_VERSIONS.contains(&version) {
        return Err(EncodeError::UnknownVersion(version));
    }
    msg.unit.validate()?;
    if let Body::Batch(records) = &msg.body
        && records.len() > MAX_BATCH_RECORDS
    {
        return Err(EncodeError::BatchTooLong(records.len()));
    }
    let mut out = Vec::with_capacity(256);
    out.push(version);
    if version == 1 {
        bincode::serde::encode_into_std_write(v1::Message::try_from(msg)?, &mut out, config())?;
    } else {
        bincode::serde::encode_into_std_write(msg, &mut out, config())?;
    }
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge { len: out.len() });
    }
    Ok(out)
}

/// The encoded size of `msg`, without keeping the bytes. The agent uses it to
/// fill a replay batch up to a byte budget.
pub fn encoded_len(msg: &Message) -> Result<usize, EncodeError> {
    let mut counter = Counter(1);
    bincode::serde::encode_into_std_write(msg, &mut counter, config())?;
    Ok(counter.0)
}

struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A decoded payload and the schema version it was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub version: u8,
    pub message: Message,
}

/// Decodes a payload of any accepted version. Never panics; every failure is
/// a [`DecodeError`].
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    if !ACCEPTED_VERSIONS.contains(&version) {
        return Err(DecodeError::UnknownVersion { got: version });
    }
    let message: Message = if version == 1 {
        decode_exact::<v1::Message>(body, bytes.len())?.into()
    } else {
        decode_exact(body, bytes.len())?
    };
    if let Body::Batch(records) = &message.body
        && records.len() > MAX_BATCH_RECORDS
    {
        return Err(DecodeError::BatchTooLong(records.len()));
    }
    message.unit.validate()?;
    match &message.body {
        Body::Presence(p) => check_presence(p)?,
        Body::Record(r) => check_record(r)?,
        Body::Batch(rs) => rs.iter().try_for_each(check_record)?,
        Body::Ack(_) => {}
    }
    Ok(Decoded { version, message })
}

/// A presence's online flag must fit its reason (`Presence::is_consistent`).
fn check_presence(p: &Presence) -> Result<(), DecodeError> {
    if p.is_consistent() {
        Ok(())
    } else {
        Err(DecodeError::Malformed(format!(
            "presence says online={} with reason {}",
            p.online,
            p.reason.as_str()
        )))
    }
}

/// An announcement record is a departure of the record's own boot.
fn check_record(r: &Record) -> Result<(), DecodeError> {
    if let Payload::Facts(f) = &r.payload {
        return f
            .validate()
            .map_err(|e| DecodeError::Malformed(format!("facts: {e}")));
    }
    if let Payload::Config(c) = &r.payload {
        return c.validate().map_err(DecodeError::Malformed);
    }
    if let Payload::Action(a) = &r.payload {
        return a.validate().map_err(DecodeError::Malformed);
    }
    let Payload::Presence(p) = &r.payload else {
        return Ok(());
    };
    check_presence(p)?;
    if p.online || p.boot != r.boot {
        return Err(DecodeError::Malformed(
            "an announcement record must be offline and of the record's boot".into(),
        ));
    }
    Ok(())
}

/// bincode-decodes exactly `body` (no trailing bytes) under the size limit.
pub(crate) fn decode_exact<T: serde::de::DeserializeOwned>(
    body: &[u8],
    total_len: usize,
) -> Result<T, DecodeError> {
    let (v, used): (T, usize) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| match e {
            bincode::error::DecodeError::LimitExceeded => DecodeError::TooLarge { len: total_len },
            other => DecodeError::Malformed(other.to_string()),
        })?;
    if used != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - used));
    }
    Ok(v)
}

// ------------------------------------------------- schema-2 envelopes
//
// The collector hello and config documents are not `Message`s: each is
// `[SCHEMA_VERSION][bincode(T)]`, read from schema 2 ([`HELLO_MIN_VERSION`])
// on, within [`MAX_MESSAGE_BYTES`]. One writer and one reader for both.

/// Writes `v` in the schema-2 envelope at the current [`SCHEMA_VERSION`];
/// `capacity` is only a preallocation hint.
fn encode_v2_envelope<T: serde::Serialize>(v: &T, capacity: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(capacity);
    out.push(SCHEMA_VERSION);
    bincode::serde::encode_into_std_write(v, &mut out, config())?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge { len: out.len() });
    }
    Ok(out)
}

/// Reads a schema-2 envelope: not empty, within [`MAX_MESSAGE_BYTES`], a
/// version from [`HELLO_MIN_VERSION`] that this build accepts, and exactly
/// one `T` after it. The caller checks `T`'s own bounds.
fn decode_v2_envelope<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    if version < HELLO_MIN_VERSION || !ACCEPTED_VERSIONS.contains(&version) {
        return Err(DecodeError::UnknownVersion { got: version });
    }
    decode_exact(body, bytes.len())
}

// ------------------------------------------------------------ collector hello

/// Encodes a collector hello at the current [`SCHEMA_VERSION`].
pub fn encode_hello(h: &Hello) -> Result<Vec<u8>, EncodeError> {
    if h.next_keys.len() > MAX_HELLO_KEYS {
        return Err(EncodeError::TooManyKeys(h.next_keys.len()));
    }
    encode_v2_envelope(h, 128 + 33 * h.next_keys.len())
}

/// Decodes a collector hello (schema 2 or later). Never panics.
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, DecodeError> {
    let h: Hello = decode_v2_envelope(bytes)?;
    if h.next_keys.len() > MAX_HELLO_KEYS {
        return Err(DecodeError::TooManyKeys(h.next_keys.len()));
    }
    Ok(h)
}

// ------------------------------------------------------------ config documents

/// Encodes a signed config document at the current [`SCHEMA_VERSION`].
pub fn encode_config(d: &ConfigDoc) -> Result<Vec<u8>, EncodeError> {
    check_config_doc(d).map_err(EncodeError::Invalid)?;
    encode_v2_envelope(d, 160 + d.body.len())
}

/// Decodes a config document (schema 2 or later): its scope's ids valid,
/// its body within [`MAX_CONFIG_BODY`]. Never panics. The signature and
/// whether it is for this unit are the reader's checks.
pub fn decode_config(bytes: &[u8]) -> Result<ConfigDoc, DecodeError> {
    let d: ConfigDoc = decode_v2_envelope(bytes)?;
    check_config_doc(&d).map_err(DecodeError::Malformed)?;
    Ok(d)
}

fn check_config_doc(d: &ConfigDoc) -> Result<(), String> {
    match &d.scope {
        DocScope::Agency { agency } => {
            crate::ids::validate_part("agency", agency).map_err(|e| e.to_string())?
        }
        DocScope::Unit { unit } => unit.validate().map_err(|e| e.to_string())?,
    }
    if d.body.len() > MAX_CONFIG_BODY {
        return Err(format!(
            "config body is {} bytes; the limit is {MAX_CONFIG_BODY}",
            d.body.len()
        ));
    }
    Ok(())
}

// ------------------------------------------------------------ action requests

/// Encodes a signed action request at the current [`SCHEMA_VERSION`].
pub fn encode_action(r: &crate::action::ActionRequest) -> Result<Vec<u8>, EncodeError> {
    r.validate().map_err(EncodeError::Invalid)?;
    encode_v2_envelope(r, 256)
}

/// Decodes an action request (schema 2 or later) within the wire's bounds
/// (`ActionRequest::validate`). Never panics. The signature, the unit, the
/// expiry and the nonce are the agent's checks.
pub fn decode_action(bytes: &[u8]) -> Result<crate::action::ActionRequest, DecodeError> {
    let r: crate::action::ActionRequest = decode_v2_envelope(bytes)?;
    r.validate().map_err(DecodeError::Malformed)?;
    Ok(r)
}

/// Most entries in any list inside a message (cores, disks, records, ...).
pub const MAX_LIST_LEN: usize = 1024;

/// Bytes a list may preallocate on the strength of its length prefix alone;
/// past that it grows only with entries actually decoded.
const PREALLOC_BYTES: usize = 4096;

/// `deserialize_with` for every `Vec` in the schema: refuses more than
/// [`MAX_LIST_LEN`] entries and never trusts a length prefix for more than
/// [`PREALLOC_BYTES`] of preallocation (serde's own cap is 1 MiB, four times
/// the whole payload limit).
pub(crate) fn bounded_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct BoundedVec<T>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for BoundedVec<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_LIST_LEN} entries")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let claimed = seq.size_hint().unwrap_or(0);
            if claimed > MAX_LIST_LEN {
                return Err(serde::de::Error::invalid_length(claimed, &self));
            }
            let mut out = Vec::with_capacity(claimed.min(PREALLOC_BYTES / size_of::<T>().max(1)));
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX_LIST_LEN {
                    return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    d.deserialize_seq(BoundedVec(std::marker::PhantomData))
}

// ------------------------------------------------- pre-encoded records
//
// The agent's disk buffer stores each record encoded once, as
// `[version][bincode(Record)]`. Replay splices stored records into a batch
// without decoding them again: a `Batch` body is the variant index followed
// by the record count and the records' bincode bytes back to back.

/// Encodes one record on its own, for the agent's disk buffer.
pub fn encode_record(rec: &Record) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    out.push(SCHEMA_VERSION);
    bincode::serde::encode_into_std_write(rec, &mut out, config())?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge { len: out.len() });
    }
    Ok(out)
}

/// Decodes a record written by [`encode_record`] (any accepted version).
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    if !ACCEPTED_VERSIONS.contains(&version) {
        return Err(DecodeError::UnknownVersion { got: version });
    }
    let rec: Record = if version == 1 {
        // An upgraded agent's buffer still holds the records it wrote in v1.
        decode_exact::<v1::Record>(body, bytes.len())?.into()
    } else {
        decode_exact(body, bytes.len())?
    };
    check_record(&rec)?;
    Ok(rec)
}

/// Builds the payload of a `Body::Batch` (or, for one record and
/// `single = true`, a `Body::Record`) for `unit` from records encoded by
/// [`encode_record`], without decoding them. Records of another schema
/// version are decoded and re-encoded. The result is exactly what
/// [`encode`] gives for the same message.
pub fn message_from_encoded(
    unit: &UnitId,
    records: &[&[u8]],
    single: bool,
) -> Result<Vec<u8>, EncodeError> {
    unit.validate()?;
    if records.len() > MAX_BATCH_RECORDS {
        return Err(EncodeError::BatchTooLong(records.len()));
    }
    if single && records.len() != 1 {
        return Err(EncodeError::NotSingle(records.len()));
    }
    let total: usize = records.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(total + 64);
    out.push(SCHEMA_VERSION);
    bincode::serde::encode_into_std_write(unit, &mut out, config())?;
    // Variant index of Body::Record (0) or Body::Batch (1), then the count.
    if single {
        bincode::serde::encode_into_std_write(0u32, &mut out, config())?;
    } else {
        bincode::serde::encode_into_std_write(1u32, &mut out, config())?;
        bincode::serde::encode_into_std_write(records.len() as u64, &mut out, config())?;
    }
    for rec in records {
        match rec.split_first() {
            Some((&v, body)) if v == SCHEMA_VERSION => out.extend_from_slice(body),
            _ => {
                let decoded = decode_record(rec).map_err(EncodeError::BadStoredRecord)?;
                bincode::serde::encode_into_std_write(&decoded, &mut out, config())?;
            }
        }
        if out.len() > MAX_MESSAGE_BYTES {
            return Err(EncodeError::TooLarge { len: out.len() });
        }
    }
    Ok(out)
}

impl From<IdentityError> for EncodeError {
    fn from(e: IdentityError) -> Self {
        EncodeError::Identity(e)
    }
}

impl From<bincode::error::EncodeError> for EncodeError {
    fn from(e: bincode::error::EncodeError) -> Self {
        EncodeError::Bincode(e)
    }
}

impl From<IdentityError> for DecodeError {
    fn from(e: IdentityError) -> Self {
        DecodeError::Identity(e)
    }
}
