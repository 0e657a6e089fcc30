//! The stored form of one record: a fixed header that the buffer and the
//! uplink read without decoding, then the `encode_record` bytes.
//!
//! ```text
//! offset  size  field
//!      0     4  crc32 (IEEE, little endian) of bytes 4..end
//!      4     1  header format (FORMAT = 1)
//!      5     1  payload kind: 0 host, 1 probe, 2 status
//!      6     8  boot id, big endian
//!     14     8  seq, big endian
//!     22     8  at_ms (event time, unix ms), big endian
//!     30     n  muster_proto::encode_record bytes ([schema version][bincode])
//! ```

use muster_proto::{BootId, Payload, Record};

pub const FORMAT: u8 = 1;
pub const HEADER_LEN: usize = 30;

/// What kind of payload a stored record holds (thinning keeps 1 of N host samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Host,
    Probe,
    Status,
}

impl Kind {
    pub fn of(p: &Payload) -> Kind {
        match p {
            Payload::Host(_) => Kind::Host,
            Payload::Probe(_) => Kind::Probe,
            // An announcement, the unit's facts, a config step or an
            // action's audit are never thinned, like a heartbeat.
            Payload::Status(_)
            | Payload::Presence(_)
            | Payload::Facts(_)
            | Payload::Config(_)
            | Payload::Action(_) => Kind::Status,
        }
    }
    fn byte(self) -> u8 {
        match self {
            Kind::Host => 0,
            Kind::Probe => 1,
            Kind::Status => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Host),
            1 => Some(Kind::Probe),
            2 => Some(Kind::Status),
            _ => None,
        }
    }
}

/// The header fields of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub boot: BootId,
    pub seq: u64,
    pub at_ms: u64,
}

impl Meta {
    pub fn of(rec: &Record) -> Meta {
        Meta {
            kind: Kind::of(&rec.payload),
            boot: rec.boot,
            seq: rec.seq,
            at_ms: rec.at_ms,
        }
    }
}

/// Why a stored value was refused on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corrupt {
    #[error("value is {0} bytes, shorter than the header")]
    Short(usize),
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown header format {0}")]
    Format(u8),
    #[error("unknown payload kind {0}")]
    Kind(u8),
}

/// Builds the stored value for a record already encoded with `encode_record`.
pub fn encode_value(meta: &Meta, encoded: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + encoded.len());
    v.extend_from_slice(&[0; 4]);
    v.push(FORMAT);
    v.push(meta.kind.byte());
    v.extend_from_slice(&meta.boot.0.to_be_bytes());
    v.extend_from_slice(&meta.seq.to_be_bytes());
    v.extend_from_slice(&meta.at_ms.to_be_bytes());
    v.extend_from_slice(encoded);
    let crc = crc32fast::hash(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    v
}

/// Checks a stored value and splits it into its header and the
/// `encode_record` bytes.
pub fn decode_value(v: &[u8]) -> Result<(Meta, &[u8]), Corrupt> {
    if v.len() < HEADER_LEN {
        return Err(Corrupt::Short(v.len()));
    }
    let crc = u32::from_le_bytes(v[..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&v[4..]) != crc {
        return Err(Corrupt::Checksum);
    }
    if v[4] != FORMAT {
        return Err(Corrupt::Format(v[4]));
    }
    let kind = Kind::from_byte(v[5]).ok_or(Corrupt::Kind(v[5]))?;
    let u = |at: usize| u64::from_be_bytes(v[at..at + 8].try_into().expect("8 bytes"));
    Ok((
        Meta {
            kind,
            boot: BootId(u(6)),
            seq: u(14),
            at_ms: u(22),
        },
        &v[HEADER_LEN..],
    ))
}

/// A buffer key: the append counter, big endian so sled's byte order is append order.
pub fn key_bytes(key: u64) -> [u8; 8] {
    key.to_be_bytes()
}

pub fn key_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            kind: Kind::Probe,
            boot: BootId(0xdead_beef),
            seq: 42,
            at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trip() {
        let v = encode_value(&meta(), b"\x01abc");
        assert_eq!(v.len(), HEADER_LEN + 4);
        let (m, body) = decode_value(&v).unwrap();
        assert_eq!(m, meta());
        assert_eq!(body, b"\x01abc");
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let v = encode_value(&meta(), b"\x01some record bytes");
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut bad = v.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode_value(&bad).is_err(),
                    "flip of byte {i} bit {bit} passed"
                );
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let v = encode_value(&meta(), b"\x01some record bytes");
        for len in 0..v.len() {
            assert!(
                decode_value(&v[..len]).is_err(),
                "truncated to {len} passed"
            );
        }
        assert_eq!(decode_value(&v[..3]), Err(Corrupt::Short(3)));
    }

    #[test]
    fn keys_sort_in_append_order() {
        let mut ks: Vec<[u8; 8]> = [300u64, 1, 256, 255, u64::MAX].map(key_bytes).to_vec();
        ks.sort();
        let back: Vec<u64> = ks.iter().map(|k| key_of(k).unwrap()).collect();
        assert_eq!(back, vec![1, 255, 256, 300, u64::MAX]);
    }
}
