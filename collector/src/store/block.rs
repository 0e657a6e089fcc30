//! An hour of one unit's minute rollups in one stored value, column by
//! column (issue 14 §3: a 10,000-unit, 7-day store in a few GB).
//!
//! A minute rollup stored on its own (`muster_proto::rollup`, one key per
//! minute) took 61-72 B on disk after lz4 (store bench, `--profile walk` /
//! noise): most of it the parts that barely change from one minute to the
//! next (sample counts, the probe names, times within the minute, a disk
//! that stays as full), each repeated in every row and each a bincode varint
//! that takes 3 bytes from 251 up. Here the minutes of an hour are
//! transposed: each field is one column over the minutes that have it, its
//! "level" values (counts, minimums, times) as zigzag LEB128 deltas from the
//! previous minute's, its spreads (max, last and sum above the minimum) as
//! plain LEB128. A field that does not change then costs a byte a minute
//! before compression and nearly nothing after.
//!
//! Layout:
//!
//! ```text
//! u8        BLOCK_FORMAT (0x03; 0x02 as earlier builds wrote it still reads)
//! u8        k: minutes in the block, 1..=60
//! k × u8    each minute's offset in the hour, strictly ascending, < 60
//! host      bitmap (LEB128) of the k minutes that have a host part, then
//!           for those: samples Δ, last_after_ms Δ, and the stats cpu,
//!           memory, disk_max, load1
//! LEB128    p: distinct probe names
//! p ×       name (LEB128 length, UTF-8), bitmap of minutes, then for those:
//!           count Δ, failures Δ, last_after_ms Δ, last_ok bitmap, the
//!           stat total, p95 Δ, the stats dns, connect, tls, ttfb
//! stat      bitmap (over the minutes of its part) of minutes that have it,
//!           then for those: n Δ, min Δ, max-min, last-min, and sum-n×min
//!           as its quotient and remainder by n (one value when n is 0; 0x02
//!           has the one value always)
//! ```
//!
//! Why the quotient and remainder: the sum above the minimum is n times
//! the mean above it, its largest value by log2(n) bits. Rollups store
//! minute sums as n × the rounded mean (`rollup::encode_minutes`), so the
//! remainder is 0 and compresses to nearly nothing, while any sum still
//! round-trips exactly.
//!
//! Contract:
//! * `decode(encode(m)) == m` for every input `encode` takes: minutes
//!   ascending and < 60, each minute's probes unique and in name order, as
//!   rollups keep them (values need not be ordered; deltas wrap).
//! * Decoding refuses a wrong format byte, truncation, trailing bytes, a
//!   count or length past the input, and input over
//!   [`muster_proto::MAX_MESSAGE_BYTES`]; it never panics.

use muster_proto::rollup::{FixedStat, StoredHost, StoredProbe, StoredRollup};

/// The format byte of a minute block (`muster_proto::rollup` values, one
/// minute each, start with 0x01; JSON ones with `{`).
pub const BLOCK_FORMAT: u8 = 0x03;
/// Blocks as issue 14's first cut wrote them (a stat's sum as one value).
const BLOCK_FORMAT_V2: u8 = 0x02;

/// Whether a stored value is a minute block (of either format).
pub fn is_block(v: &[u8]) -> bool {
    matches!(v.first(), Some(&BLOCK_FORMAT | &BLOCK_FORMAT_V2))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("minute block: {0}")]
    Malformed(&'static str),
    #[error("minute block: {0} trailing bytes")]
    Trailing(usize),
    #[error("minute block: {0} bytes is over the limit")]
    TooLarge(usize),
}

/// The minutes of one hour, by offset (0..60) in ascending order.
pub type Minutes = [(u8, StoredRollup)];

/// 1 to 60 minute offsets, strictly ascending, each < 60.
fn check_offsets(offsets: &[u8]) -> Result<(), BlockError> {
    if offsets.is_empty() || offsets.len() > 60 {
        return Err(BlockError::Malformed("a block holds 1 to 60 minutes"));
    }
    if offsets.windows(2).any(|w| w[0] >= w[1]) || offsets[offsets.len() - 1] >= 60 {
        return Err(BlockError::Malformed("minutes must ascend and be < 60"));
    }
    Ok(())
}

pub fn encode(minutes: &Minutes) -> Result<Vec<u8>, BlockError> {
    let k = minutes.len();
    let offsets: Vec<u8> = minutes.iter().map(|(m, _)| *m).collect();
    check_offsets(&offsets)?;
    let mut w = Writer(Vec::with_capacity(64 * k));
    w.0.push(BLOCK_FORMAT);
    w.0.push(k as u8);
    w.0.extend(&offsets);

    let hosts: Vec<&StoredHost> = minutes
        .iter()
        .filter_map(|(_, r)| r.host.as_ref())
        .collect();
    w.uint(bitmap(minutes.iter().map(|(_, r)| r.host.is_some())));
    w.deltas(hosts.iter().map(|h| i64::from(h.samples)));
    w.deltas(hosts.iter().map(|h| h.last_after_ms));
    for get in [
        |h: &StoredHost| h.cpu,
        |h: &StoredHost| h.memory,
        |h: &StoredHost| h.disk_max,
        |h: &StoredHost| h.load1,
    ] {
        w.stats(hosts.iter().map(|h| get(h)));
    }

    let mut names: Vec<&str> = minutes
        .iter()
        .flat_map(|(_, r)| r.probes.iter().map(|p| p.name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    w.uint(names.len() as u64);
    for name in names {
        w.uint(name.len() as u64);
        w.0.extend_from_slice(name.as_bytes());
        fn of<'a>(r: &'a StoredRollup, name: &str) -> Option<&'a StoredProbe> {
            r.probes.iter().find(|p| p.name == name)
        }
        w.uint(bitmap(minutes.iter().map(|(_, r)| of(r, name).is_some())));
        let ps: Vec<&StoredProbe> = minutes.iter().filter_map(|(_, r)| of(r, name)).collect();
        w.deltas(ps.iter().map(|p| i64::from(p.count)));
        w.deltas(ps.iter().map(|p| i64::from(p.failures)));
        w.deltas(ps.iter().map(|p| p.last_after_ms));
        w.uint(bitmap(ps.iter().map(|p| p.last_ok)));
        w.stats(ps.iter().map(|p| p.total));
        w.deltas(ps.iter().map(|p| p.p95));
        for get in [
            |p: &StoredProbe| p.dns,
            |p: &StoredProbe| p.connect,
            |p: &StoredProbe| p.tls,
            |p: &StoredProbe| p.ttfb,
        ] {
            w.stats(ps.iter().map(|p| get(p)));
        }
    }
    if w.0.len() > muster_proto::MAX_MESSAGE_BYTES {
        return Err(BlockError::TooLarge(w.0.len()));
    }
    Ok(w.0)
}

pub fn decode(bytes: &[u8]) -> Result<Vec<(u8, StoredRollup)>, BlockError> {
    if bytes.len() > muster_proto::MAX_MESSAGE_BYTES {
        return Err(BlockError::TooLarge(bytes.len()));
    }
    let mut r = Reader {
        rest: bytes,
        split_sums: false,
    };
    r.split_sums = match r.byte()? {
        BLOCK_FORMAT => true,
        BLOCK_FORMAT_V2 => false,
        _ => return Err(BlockError::Malformed("not a minute block")),
    };
    let k = usize::from(r.byte()?);
    let offsets = r.take(k)?.to_vec();
    check_offsets(&offsets)?;
    let mut out: Vec<(u8, StoredRollup)> = offsets
        .into_iter()
        .map(|m| (m, StoredRollup::default()))
        .collect();

    let with_host = r.members(k)?;
    let n = with_host.len();
    let samples = r.deltas(n)?;
    let last_after = r.deltas(n)?;
    let stats = [r.stats(n)?, r.stats(n)?, r.stats(n)?, r.stats(n)?];
    for (j, &i) in with_host.iter().enumerate() {
        out[i].1.host = Some(StoredHost {
            samples: samples[j] as u32,
            last_after_ms: last_after[j],
            cpu: stats[0][j],
            memory: stats[1][j],
            disk_max: stats[2][j],
            load1: stats[3][j],
        });
    }

    let names = r.uint()?;
    if names > bytes.len() as u64 {
        return Err(BlockError::Malformed("more probe names than bytes"));
    }
    for _ in 0..names {
        let len = usize::try_from(r.uint()?).map_err(|_| BlockError::Malformed("name length"))?;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| BlockError::Malformed("a probe name is not UTF-8"))?
            .to_owned();
        let with = r.members(k)?;
        let n = with.len();
        let count = r.deltas(n)?;
        let failures = r.deltas(n)?;
        let last_after = r.deltas(n)?;
        let ok = r.uint()?;
        let total = r.stats(n)?;
        let p95 = r.deltas(n)?;
        let phases = [r.stats(n)?, r.stats(n)?, r.stats(n)?, r.stats(n)?];
        for (j, &i) in with.iter().enumerate() {
            let probes = &mut out[i].1.probes;
            if probes.iter().any(|p| p.name == name) {
                return Err(BlockError::Malformed("a probe name twice"));
            }
            probes.push(StoredProbe {
                name: name.clone(),
                count: count[j] as u32,
                failures: failures[j] as u32,
                last_after_ms: last_after[j],
                last_ok: ok >> j & 1 == 1,
                total: total[j],
                p95: p95[j],
                dns: phases[0][j],
                connect: phases[1][j],
                tls: phases[2][j],
                ttfb: phases[3][j],
            });
        }
    }
    if !r.rest.is_empty() {
        return Err(BlockError::Trailing(r.rest.len()));
    }
    // Names were written sorted: each minute's probes come out in name
    // order, as rollups keep them.
    Ok(out)
}

/// Bit i set for the i-th true item (at most 64 items: a block has ≤ 60).
fn bitmap(items: impl Iterator<Item = bool>) -> u64 {
    items
        .enumerate()
        .fold(0, |b, (i, on)| if on { b | 1 << i } else { b })
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    (u >> 1) as i64 ^ -((u & 1) as i64)
}

struct Writer(Vec<u8>);

impl Writer {
    /// LEB128.
    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// Each value as the zigzag of its difference from the one before
    /// (the first from 0).
    fn deltas(&mut self, values: impl Iterator<Item = i64>) {
        let mut prev = 0i64;
        for v in values {
            self.uint(zigzag(v.wrapping_sub(prev)));
            prev = v;
        }
    }

    fn stats(&mut self, stats: impl Iterator<Item = Option<FixedStat>> + Clone) {
        self.uint(bitmap(stats.clone().map(|s| s.is_some())));
        let present: Vec<FixedStat> = stats.flatten().collect();
        self.deltas(present.iter().map(|s| i64::from(s.n)));
        self.deltas(present.iter().map(|s| s.min));
        for s in &present {
            self.uint(s.max.wrapping_sub(s.min) as u64);
            self.uint(s.last.wrapping_sub(s.min) as u64);
            let above = s.sum.wrapping_sub(s.min.wrapping_mul(i64::from(s.n))) as u64;
            match u64::from(s.n) {
                0 => self.uint(above),
                n => {
                    self.uint(above / n);
                    self.uint(above % n);
                }
            }
        }
    }
}

struct Reader<'a> {
    rest: &'a [u8],
    /// Format 0x03: a sum above the minimum as quotient and remainder.
    split_sums: bool,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, BlockError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or(BlockError::Malformed("truncated"))?;
        self.rest = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], BlockError> {
        if n > self.rest.len() {
            return Err(BlockError::Malformed("truncated"));
        }
        let (a, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(a)
    }

    /// A stat's sum above its minimum (see the layout).
    fn above(&mut self, n: u32) -> Result<u64, BlockError> {
        let first = self.uint()?;
        if !self.split_sums || n == 0 {
            return Ok(first);
        }
        let rem = self.uint()?;
        let n = u64::from(n);
        if rem >= n {
            return Err(BlockError::Malformed("a remainder not below its count"));
        }
        first
            .checked_mul(n)
            .and_then(|q| q.checked_add(rem))
            .ok_or(BlockError::Malformed("a sum past 64 bits"))
    }

    fn uint(&mut self) -> Result<u64, BlockError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BlockError::Malformed("a varint over 10 bytes"))
    }

    /// A bitmap over `of` items: the indexes set.
    fn members(&mut self, of: usize) -> Result<Vec<usize>, BlockError> {
        let b = self.uint()?;
        if of < 64 && b >> of != 0 {
            return Err(BlockError::Malformed("a bitmap past its items"));
        }
        Ok((0..of).filter(|i| b >> i & 1 == 1).collect())
    }

    fn deltas(&mut self, n: usize) -> Result<Vec<i64>, BlockError> {
        let mut prev = 0i64;
        (0..n)
            .map(|_| {
                prev = prev.wrapping_add(unzigzag(self.uint()?));
                Ok(prev)
            })
            .collect()
    }

    fn stats(&mut self, of: usize) -> Result<Vec<Option<FixedStat>>, BlockError> {
        let with = self.members(of)?;
        let n = self.deltas(with.len())?;
        let min = self.deltas(with.len())?;
        let mut out = vec![None; of];
        for (j, &i) in with.iter().enumerate() {
            let at = |d: u64| min[j].wrapping_add(d as i64);
            let count = n[j] as u32;
            let max = at(self.uint()?);
            let last = at(self.uint()?);
            let sum = min[j]
                .wrapping_mul(i64::from(count))
                .wrapping_add(self.above(count)? as i64);
            out[i] = Some(FixedStat {
                n: count,
                min: min[j],
                max,
                sum,
                last,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stat(base: i64) -> FixedStat {
        FixedStat {
            n: 12,
            min: base,
            max: base * 3,
            sum: base * 24,
            last: base * 2,
        }
    }

    fn minute(m: u8, cpu: i64) -> (u8, StoredRollup) {
        (
            m,
            StoredRollup {
                host: Some(StoredHost {
                    samples: 12,
                    last_after_ms: 55_000,
                    cpu: Some(stat(cpu)),
                    memory: Some(stat(6_543)),
                    disk_max: Some(stat(7_000)),
                    load1: None,
                }),
                probes: vec![
                    StoredProbe {
                        name: "cad-http".into(),
                        count: 12,
                        failures: 0,
                        last_after_ms: 55_001,
                        last_ok: true,
                        total: Some(stat(120_000 + cpu)),
                        p95: 360_000,
                        dns: None,
                        connect: Some(stat(25_000)),
                        tls: None,
                        ttfb: None,
                    },
                    StoredProbe {
                        name: "gw-icmp".into(),
                        count: 12,
                        failures: 12,
                        last_after_ms: 55_002,
                        last_ok: false,
                        ..StoredProbe::default()
                    },
                ],
            },
        )
    }

    /// A block as issue 14's first cut wrote it (0x02: a sum above the
    /// minimum as one value) still reads; the same minute now takes a
    /// quotient and remainder.
    #[test]
    fn the_first_format_still_reads() {
        let v2 = [
            0x02, 1, 5, // one minute, offset 5
            1, 24, 0, // host: samples 12, last_after 0
            1, 4, 0xc8, 0x01, 50, 10, 30, // cpu: n 2, min 100, +50, +10, sum +30
            0, 0, 0, // memory, disk, load: none
            0, // no probes
        ];
        let cpu = FixedStat {
            n: 2,
            min: 100,
            max: 150,
            sum: 230,
            last: 110,
        };
        let want = vec![(
            5,
            StoredRollup {
                host: Some(StoredHost {
                    samples: 12,
                    last_after_ms: 0,
                    cpu: Some(cpu),
                    memory: None,
                    disk_max: None,
                    load1: None,
                }),
                probes: vec![],
            },
        )];
        assert!(is_block(&v2));
        assert_eq!(decode(&v2).unwrap(), want);
        let v3 = encode(&want).unwrap();
        assert_eq!(v3[0], BLOCK_FORMAT);
        assert_eq!(&v3[1..12], &v2[1..12]);
        assert_eq!(&v3[12..], [15, 0, 0, 0, 0, 0], "30 = 15 x 2 + 0");
        // A remainder not below its count is refused.
        let mut bad = v3.clone();
        bad[13] = 2;
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn an_hour_round_trips_and_a_steady_field_costs_about_a_byte_a_minute() {
        let hour: Vec<_> = (0..60).map(|m| minute(m, 1_000 + i64::from(m))).collect();
        let b = encode(&hour).unwrap();
        assert_eq!(decode(&b).unwrap(), hour);
        // The row form (`muster_proto::rollup`) of one of these minutes.
        let row = muster_proto::rollup::encode_rollup(&hour[0].1)
            .unwrap()
            .len();
        let per_minute = b.len() as f64 / 60.0;
        assert!(
            per_minute < row as f64 * 0.6,
            "{per_minute:.1} B a minute in a block, {row} B alone"
        );
    }

    #[test]
    fn gaps_missing_parts_and_probes_that_come_and_go_round_trip() {
        let mut hour = vec![minute(0, 5), minute(7, 9), minute(59, 1)];
        hour[1].1.host = None;
        hour[2].1.probes.remove(0);
        hour.insert(1, (3, StoredRollup::default()));
        assert_eq!(decode(&encode(&hour).unwrap()).unwrap(), hour);
    }

    #[test]
    fn refuses_bad_blocks() {
        let b = encode(&[minute(1, 5), minute(2, 6)]).unwrap();
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(BlockError::Trailing(1)));
        let mut other = b.clone();
        other[0] = 0x01;
        assert!(decode(&other).is_err());
        let mut unordered = b.clone();
        unordered[2] = 2; // minutes 2, 2
        assert!(decode(&unordered).is_err());
        assert!(encode(&[]).is_err());
        assert!(encode(&[minute(3, 1), minute(3, 1)]).is_err());
        assert!(encode(&[minute(60, 1)]).is_err());
        let mut huge = vec![BLOCK_FORMAT];
        huge.resize(muster_proto::MAX_MESSAGE_BYTES + 1, 0);
        assert_eq!(
            decode(&huge),
            Err(BlockError::TooLarge(muster_proto::MAX_MESSAGE_BYTES + 1))
        );
    }

    fn any_stat() -> impl Strategy<Value = Option<FixedStat>> {
        proptest::option::of(
            (
                any::<u32>(),
                any::<i64>(),
                any::<i64>(),
                any::<i64>(),
                any::<i64>(),
            )
                .prop_map(|(n, min, max, sum, last)| FixedStat {
                    n,
                    min,
                    max,
                    sum,
                    last,
                }),
        )
    }

    fn any_minute() -> impl Strategy<Value = StoredRollup> {
        let host = proptest::option::of(
            (
                any::<u32>(),
                any::<i64>(),
                any_stat(),
                any_stat(),
                any_stat(),
                any_stat(),
            )
                .prop_map(|(samples, last_after_ms, cpu, memory, disk_max, load1)| {
                    StoredHost {
                        samples,
                        last_after_ms,
                        cpu,
                        memory,
                        disk_max,
                        load1,
                    }
                }),
        );
        let probe = (
            "[a-c]{1,3}",
            any::<u32>(),
            any::<u32>(),
            any::<i64>(),
            any::<bool>(),
            any_stat(),
            any::<i64>(),
            any_stat(),
            any_stat(),
        )
            .prop_map(
                |(name, count, failures, last_after_ms, last_ok, total, p95, dns, ttfb)| {
                    StoredProbe {
                        name,
                        count,
                        failures,
                        last_after_ms,
                        last_ok,
                        total,
                        p95,
                        dns,
                        connect: None,
                        tls: total,
                        ttfb,
                    }
                },
            );
        (host, proptest::collection::vec(probe, 0..4)).prop_map(|(host, mut probes)| {
            probes.sort_by(|a, b| a.name.cmp(&b.name));
            probes.dedup_by(|a, b| a.name == b.name);
            StoredRollup { host, probes }
        })
    }

    proptest! {
        /// Any hour (any values, any subset of minutes) reads back as written.
        #[test]
        fn any_hour_round_trips(
            minutes in proptest::collection::btree_map(0u8..60, any_minute(), 1..8)
        ) {
            let hour: Vec<(u8, StoredRollup)> = minutes.into_iter().collect();
            prop_assert_eq!(decode(&encode(&hour).unwrap()).unwrap(), hour);
        }

        /// Arbitrary bytes, and any byte of a good block flipped, never panic.
        #[test]
        fn bad_bytes_never_panic(
            b in proptest::collection::vec(any::<u8>(), 0..256),
            at in any::<usize>(),
            to in any::<u8>(),
        ) {
            let _ = decode(&b);
            let mut good = encode(&[minute(1, 5), minute(9, 6)]).unwrap();
            let i = at % good.len();
            good[i] = to;
            let _ = decode(&good);
        }
    }
}
