//! The collector's stored rollup: a unit's minute or hour in fixed point,
//! compact on disk (issue 14 §3). Not on the wire between agent and
//! collector; it lives here because this crate is the only one that knows
//! bincode.
//!
//! Layout of a stored value:
//!
//! ```text
//! +--------+---------------------------------------------+
//! | u8     | ROLLUP_FORMAT (0x01)                        |
//! +--------+---------------------------------------------+
//! | bytes  | bincode 2, standard config (varint), of     |
//! |        | `StoredRollup`                              |
//! +--------+---------------------------------------------+
//! ```
//!
//! Contract:
//! * Every value is an integer in the unit its source has: cpu and memory /
//!   disk use in basis points (1/100 %), load × 100, latencies in µs. The
//!   collector converts (`muster_collector::store::rollup`); sums are
//!   integers too, so merging two rollups adds exactly.
//! * Times are offsets from the bucket's start, which the reader has from
//!   the key: a minute costs 3 bytes, not 9.
//! * A series with no values is `None` (1 byte).
//! * The first byte is never `{`: a reader tells this format from the JSON
//!   rollups of earlier builds by it.
//! * Decoding refuses trailing bytes, an unknown format byte and input over
//!   [`crate::MAX_MESSAGE_BYTES`]; it never panics on hostile input.

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, EncodeError, config, decode_exact};

/// The format byte of [`encode_rollup`].
pub const ROLLUP_FORMAT: u8 = 0x01;

/// Count, min, max, sum and the last (latest in event time) value of a
/// series, in fixed point. Stored as the min and offsets from it
/// ([`Offsets`]), which are small where the absolute values are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "Offsets", from = "Offsets")]
pub struct FixedStat {
    pub n: u32,
    pub min: i64,
    pub max: i64,
    pub sum: i64,
    pub last: i64,
}

/// [`FixedStat`] on disk: varints of `max - min`, `last - min` and
/// `sum - n * min` take a byte or three where the values take five.
#[derive(Serialize, Deserialize)]
struct Offsets {
    n: u32,
    min: i64,
    max: u64,
    last: u64,
    sum: u64,
}

impl From<FixedStat> for Offsets {
    /// A stat whose values are out of order (not one a rollup builds) is
    /// stored with wrapping offsets and reads back as it was.
    fn from(s: FixedStat) -> Offsets {
        let off = |v: i64| v.wrapping_sub(s.min) as u64;
        Offsets {
            n: s.n,
            min: s.min,
            max: off(s.max),
            last: off(s.last),
            sum: s.sum.wrapping_sub(s.min.wrapping_mul(i64::from(s.n))) as u64,
        }
    }
}

impl From<Offsets> for FixedStat {
    fn from(o: Offsets) -> FixedStat {
        let at = |d: u64| o.min.wrapping_add(d as i64);
        FixedStat {
            n: o.n,
            min: o.min,
            max: at(o.max),
            last: at(o.last),
            sum: o
                .min
                .wrapping_mul(i64::from(o.n))
                .wrapping_add(o.sum as i64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredHost {
    pub samples: u32,
    /// The latest sample's time, ms after the bucket's start.
    pub last_after_ms: i64,
    /// Basis points.
    pub cpu: Option<FixedStat>,
    /// Basis points.
    pub memory: Option<FixedStat>,
    /// Basis points, the fullest disk of each sample.
    pub disk_max: Option<FixedStat>,
    /// Load × 100.
    pub load1: Option<FixedStat>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredProbe {
    pub name: String,
    pub count: u32,
    pub failures: u32,
    pub last_after_ms: i64,
    pub last_ok: bool,
    /// Latencies in µs.
    pub total: Option<FixedStat>,
    pub p95: i64,
    pub dns: Option<FixedStat>,
    pub connect: Option<FixedStat>,
    pub tls: Option<FixedStat>,
    pub ttfb: Option<FixedStat>,
}

/// One unit's minute or hour; its start is in the key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredRollup {
    pub host: Option<StoredHost>,
    pub probes: Vec<StoredProbe>,
}

pub fn encode_rollup(r: &StoredRollup) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(96);
    out.push(ROLLUP_FORMAT);
    bincode::serde::encode_into_std_write(r, &mut out, config())?;
    Ok(out)
}

pub fn decode_rollup(bytes: &[u8]) -> Result<StoredRollup, DecodeError> {
    let (&format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > crate::MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    if format != ROLLUP_FORMAT {
        return Err(DecodeError::Malformed(format!(
            "rollup format {format:#04x} is not {ROLLUP_FORMAT:#04x}"
        )));
    }
    decode_exact(body, bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredRollup {
        let s = |base: i64| {
            Some(FixedStat {
                n: 12,
                min: base,
                max: base * 3,
                sum: base * 12 * 2,
                last: base * 2,
            })
        };
        StoredRollup {
            host: Some(StoredHost {
                samples: 12,
                last_after_ms: 55_000,
                cpu: s(1_234),
                memory: s(6_543),
                disk_max: s(7_000),
                load1: None,
            }),
            probes: vec![StoredProbe {
                name: "cad-http".into(),
                count: 12,
                failures: 1,
                last_after_ms: 55_001,
                last_ok: true,
                total: s(120_000),
                p95: 360_000,
                dns: None,
                connect: s(25_000),
                tls: None,
                ttfb: None,
            }],
        }
    }

    #[test]
    fn round_trips_and_is_compact() {
        let r = sample();
        let b = encode_rollup(&r).unwrap();
        assert_eq!(b[0], ROLLUP_FORMAT);
        assert_eq!(decode_rollup(&b).unwrap(), r);
        // Host 4 series + one probe with 2 series: well under the ~1 KB of
        // the JSON it replaces.
        assert!(b.len() < 130, "{} bytes", b.len());
    }

    #[test]
    fn refuses_json_trailing_bytes_truncation_and_oversize() {
        let b = encode_rollup(&sample()).unwrap();
        assert!(matches!(
            decode_rollup(b"{}"),
            Err(DecodeError::Malformed(_))
        ));
        // A valid body under another format byte is refused, not misread.
        let mut other = b.clone();
        other[0] = ROLLUP_FORMAT + 1;
        assert!(matches!(
            decode_rollup(&other),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(decode_rollup(&[]), Err(DecodeError::Empty));
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode_rollup(&long), Err(DecodeError::TrailingBytes(1)));
        for cut in 1..b.len() {
            assert!(decode_rollup(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = vec![ROLLUP_FORMAT];
        huge.resize(crate::MAX_MESSAGE_BYTES + 1, 0xff);
        assert!(matches!(
            decode_rollup(&huge),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    proptest::proptest! {
        /// Any stat, ordered or not, reads back as it was written.
        #[test]
        fn any_stat_round_trips(n: u32, min: i64, max: i64, sum: i64, last: i64) {
            let r = StoredRollup {
                host: Some(StoredHost {
                    cpu: Some(FixedStat { n, min, max, sum, last }),
                    ..StoredHost::default()
                }),
                probes: vec![],
            };
            proptest::prop_assert_eq!(decode_rollup(&encode_rollup(&r).unwrap()).unwrap(), r);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(0u8..=255, 0..512)) {
            let _ = decode_rollup(&b);
        }
    }
}
