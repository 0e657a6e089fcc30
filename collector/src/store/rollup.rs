//! Rollups: per unit, per minute and per hour, what the dashboard charts
//! (host cpu, memory used %, max disk used %, load1; per probe count,
//! failures, total latency min/max/mean/p95, mean per phase), so history
//! outlives the short raw retention (issue 14 §3). Pure and sync; the store
//! runs it (`FjallStore::retain`).
//!
//! Contract:
//! * A minute rollup is built from the raw records of that minute
//!   ([`roll`]); its latency p95 is exact (nearest rank over the minute's
//!   raw totals).
//! * An hour rollup is the [`merge`] of its minute rollups; its p95 is the
//!   MAX of the minutes' p95s (an upper bound of the true hourly p95: a
//!   chart of p95 never hides a bad minute).
//! * Late data (an agent's backlog replayed) marks its minute dirty. When
//!   the minute's raw records are all still kept ([`Action::Replace`]) the
//!   minute is rebuilt from raw: exact, as if the data had come in time. When
//!   some of its raw records were already pruned ([`Action::MergeMinute`])
//!   the late records' rollup is merged into the stored minute (counts and
//!   sums add, min/max widen, `last` is the later one, p95 is the max) and
//!   the late raw records are deleted in the same batch, so nothing counts
//!   twice. When the minute itself has expired ([`Action::MergeHour`]) the
//!   late records merge straight into their hour.
//! * Retention cut-offs ([`cutoffs`]) are aligned: raw by whole minutes,
//!   minutes by whole hours, hours by whole hours; raw <= minute <= hour
//!   retention (config validates it), so a minute is rolled before its raw
//!   records go and an hour before its minutes go.

use std::time::Duration;

use muster_proto::rollup::{FixedStat, StoredHost, StoredProbe, StoredRollup};
use muster_proto::{Outcome, Payload};
use serde::{Deserialize, Serialize};

use super::StoredSample;

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Minute,
    Hour,
}

impl Resolution {
    pub fn step_ms(self) -> u64 {
        match self {
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Resolution::Minute => "minute",
            Resolution::Hour => "hour",
        }
    }
}

/// Count, min, max, sum and the last value of a series.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Stat {
    pub n: u32,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub last: f64,
}

impl Stat {
    /// Values come in event-time order: the last pushed is `last`.
    pub fn push(&mut self, v: f64) {
        if self.n == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.n += 1;
        self.sum += v;
        self.last = v;
    }

    /// `o` covers later data when `o_later`.
    pub fn merge(&mut self, o: &Stat, o_later: bool) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.n += o.n;
        self.sum += o.sum;
        if o_later {
            self.last = o.last;
        }
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostRollup {
    pub samples: u32,
    pub last_at_ms: u64,
    pub cpu_pct: Stat,
    pub memory_pct: Stat,
    /// The fullest disk of each sample.
    pub disk_max_pct: Stat,
    pub load1: Stat,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProbeRollup {
    pub name: String,
    pub count: u32,
    pub failures: u32,
    pub last_at_ms: u64,
    pub last_ok: bool,
    /// Total latency in ms.
    pub total_ms: Stat,
    /// p95 of the total latency in ms (see the module docs for hours and
    /// merged minutes).
    pub p95_ms: f64,
    /// DNS, connect, TLS, time to first byte, in ms (mean = sum / n).
    pub dns_ms: Stat,
    pub connect_ms: Stat,
    pub tls_ms: Stat,
    pub ttfb_ms: Stat,
}

/// One unit's minute or hour.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Rollup {
    pub start_ms: u64,
    pub host: Option<HostRollup>,
    /// By name.
    pub probes: Vec<ProbeRollup>,
}

pub fn floor(at_ms: u64, step_ms: u64) -> u64 {
    at_ms - at_ms % step_ms
}

/// Exact p95 by nearest rank.
fn p95(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = (values.len() * 95).div_ceil(100).max(1);
    values[rank - 1]
}

/// The rollup of `samples` (event-time order) into the bucket at `start_ms`.
/// Presence and status records are not rolled up.
pub fn roll(start_ms: u64, samples: &[StoredSample]) -> Rollup {
    roll_points(start_ms, samples.iter().map(|s| (s.at_ms, &s.payload)))
}

/// Whether `payload` is rolled up (presence and status records are not).
pub fn rolled_up(payload: &Payload) -> bool {
    matches!(payload, Payload::Host(_) | Payload::Probe(_))
}

/// A probe with at most this many results in a bucket has its nearest-rank
/// p95 equal to its maximum: rank ceil(0.95 n) is n exactly when n < 20.
pub const P95_IS_MAX_UP_TO: u32 = 19;

/// Whether every p95 of `r`, a [`merge`] of parts, is exact: merging takes
/// the parts' maximum, which is the p95 while a probe has at most
/// [`P95_IS_MAX_UP_TO`] results.
pub fn p95_exact_by_merge(r: &Rollup) -> bool {
    r.probes.iter().all(|p| p.count <= P95_IS_MAX_UP_TO)
}

/// [`roll`] over `(at_ms, payload)` pairs (event-time order).
pub fn roll_points<'a>(
    start_ms: u64,
    samples: impl IntoIterator<Item = (u64, &'a Payload)>,
) -> Rollup {
    let mut host: Option<HostRollup> = None;
    let mut probes: std::collections::BTreeMap<String, (ProbeRollup, Vec<f64>)> =
        Default::default();
    let us = |v: u32| f64::from(v) / 1000.0;
    for (at_ms, payload) in samples {
        match payload {
            Payload::Host(h) => {
                let r = host.get_or_insert_with(HostRollup::default);
                r.samples += 1;
                r.last_at_ms = r.last_at_ms.max(at_ms);
                if let Some(c) = &h.cpu {
                    r.cpu_pct.push(f64::from(c.total_bp) / 100.0);
                }
                if let Some(m) = &h.memory
                    && m.total_kib > 0
                {
                    r.memory_pct
                        .push(100.0 * m.used_kib as f64 / m.total_kib as f64);
                }
                let fullest = h
                    .disks
                    .iter()
                    .filter(|d| d.total_kib > 0)
                    .map(|d| 100.0 * d.used_kib as f64 / d.total_kib as f64)
                    .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
                if let Some(v) = fullest {
                    r.disk_max_pct.push(v);
                }
                if let Some(l) = h.load_x100 {
                    r.load1.push(f64::from(l[0]) / 100.0);
                }
            }
            Payload::Probe(p) => {
                let (r, totals) = probes.entry(p.name.clone()).or_insert_with(|| {
                    (
                        ProbeRollup {
                            name: p.name.clone(),
                            ..ProbeRollup::default()
                        },
                        Vec::new(),
                    )
                });
                r.count += 1;
                let ok = p.outcome == Outcome::Ok;
                if !ok {
                    r.failures += 1;
                }
                if at_ms >= r.last_at_ms {
                    r.last_at_ms = at_ms;
                    r.last_ok = ok;
                }
                let total = us(p.phases.total_us);
                r.total_ms.push(total);
                totals.push(total);
                for (stat, v) in [
                    (&mut r.dns_ms, p.phases.dns_us),
                    (&mut r.connect_ms, p.phases.connect_us),
                    (&mut r.tls_ms, p.phases.tls_us),
                    (&mut r.ttfb_ms, p.phases.ttfb_us),
                ] {
                    if let Some(v) = v {
                        stat.push(us(v));
                    }
                }
            }
            _ => {}
        }
    }
    Rollup {
        start_ms,
        host,
        probes: probes
            .into_values()
            .map(|(mut r, mut totals)| {
                r.p95_ms = p95(&mut totals);
                r
            })
            .collect(),
    }
}

/// Merges `b` into `a` (same unit; `b` may cover a smaller or the same
/// bucket: a minute into its hour, or late records into their minute).
pub fn merge(a: &mut Rollup, b: &Rollup) {
    match (&mut a.host, &b.host) {
        (_, None) => {}
        (None, Some(h)) => a.host = Some(h.clone()),
        (Some(x), Some(y)) => {
            let later = y.last_at_ms >= x.last_at_ms;
            x.samples += y.samples;
            x.last_at_ms = x.last_at_ms.max(y.last_at_ms);
            x.cpu_pct.merge(&y.cpu_pct, later);
            x.memory_pct.merge(&y.memory_pct, later);
            x.disk_max_pct.merge(&y.disk_max_pct, later);
            x.load1.merge(&y.load1, later);
        }
    }
    for y in &b.probes {
        match a.probes.binary_search_by(|x| x.name.cmp(&y.name)) {
            Err(i) => a.probes.insert(i, y.clone()),
            Ok(i) => {
                let x = &mut a.probes[i];
                let later = y.last_at_ms >= x.last_at_ms;
                x.count += y.count;
                x.failures += y.failures;
                if later {
                    x.last_at_ms = y.last_at_ms;
                    x.last_ok = y.last_ok;
                }
                x.total_ms.merge(&y.total_ms, later);
                x.p95_ms = x.p95_ms.max(y.p95_ms);
                x.dns_ms.merge(&y.dns_ms, later);
                x.connect_ms.merge(&y.connect_ms, later);
                x.tls_ms.merge(&y.tls_ms, later);
                x.ttfb_ms.merge(&y.ttfb_ms, later);
            }
        }
    }
}

/// The hour at `start_ms` from its minutes.
pub fn roll_hour<'a>(start_ms: u64, minutes: impl IntoIterator<Item = &'a Rollup>) -> Rollup {
    let mut h = Rollup {
        start_ms,
        ..Rollup::default()
    };
    for m in minutes {
        merge(&mut h, m);
    }
    h
}

// ------------------------------------------------------------ stored form

/// Fixed-point scales of the stored form (`muster_proto::rollup`): how
/// many stored units make one of the rollup's (a percent, a millisecond).
#[derive(Debug, Clone, Copy)]
struct Scales {
    pct: f64,
    load: f64,
    ms: f64,
    /// Sums stored as n × the mean rounded to the scale (not exact).
    mean_sums: bool,
}

/// Hour rollups: values in the integer unit their source has (basis
/// points, load × 100, µs), so a round trip is exact.
const EXACT: Scales = Scales {
    pct: 100.0,
    load: 100.0,
    ms: 1000.0,
    mean_sums: false,
};

/// Minute blocks ([`encode_minutes`]): percentages to 0.1 and latencies to
/// 0.1 ms (the dashboard shows whole ms and whole percents; raw records
/// and hour rollups keep the source's precision), sums as n × the rounded
/// mean (`super::block` then stores no remainder). What each step saved a
/// minute on disk (store bench, 500 units x 2 h, walk / noise profile,
/// deflated): the exact scales 26.1 / 34.5 B; percentages to 0.1 22.0 /
/// 30.7 B; and latencies to 0.1 ms 16.8 / 26.4 B. Rounded sums: 0.6 B.
const MINUTE: Scales = Scales {
    pct: 10.0,
    load: 100.0,
    ms: 10.0,
    mean_sums: true,
};

fn fix(s: &Stat, scale: f64, mean_sums: bool) -> Option<FixedStat> {
    let q = |v: f64| (v * scale).round() as i64;
    (s.n > 0).then(|| FixedStat {
        n: s.n,
        min: q(s.min),
        max: q(s.max),
        sum: if mean_sums {
            q(s.sum / f64::from(s.n)).saturating_mul(i64::from(s.n))
        } else {
            q(s.sum)
        },
        last: q(s.last),
    })
}

fn unfix(s: Option<FixedStat>, scale: f64) -> Stat {
    s.map_or_else(Stat::default, |s| Stat {
        n: s.n,
        min: s.min as f64 / scale,
        max: s.max as f64 / scale,
        sum: s.sum as f64 / scale,
        last: s.last as f64 / scale,
    })
}

/// `r` in the stored (fixed-point) form, its times relative to its start.
fn to_stored(r: &Rollup, sc: Scales) -> StoredRollup {
    let after = |at: u64| at as i64 - r.start_ms as i64;
    let fix = |s: &Stat, scale: f64| fix(s, scale, sc.mean_sums);
    let ms = sc.ms;
    StoredRollup {
        host: r.host.as_ref().map(|h| StoredHost {
            samples: h.samples,
            last_after_ms: after(h.last_at_ms),
            cpu: fix(&h.cpu_pct, sc.pct),
            memory: fix(&h.memory_pct, sc.pct),
            disk_max: fix(&h.disk_max_pct, sc.pct),
            load1: fix(&h.load1, sc.load),
        }),
        probes: r
            .probes
            .iter()
            .map(|p| StoredProbe {
                name: p.name.clone(),
                count: p.count,
                failures: p.failures,
                last_after_ms: after(p.last_at_ms),
                last_ok: p.last_ok,
                total: fix(&p.total_ms, ms),
                p95: (p.p95_ms * ms).round() as i64,
                dns: fix(&p.dns_ms, ms),
                connect: fix(&p.connect_ms, ms),
                tls: fix(&p.tls_ms, ms),
                ttfb: fix(&p.ttfb_ms, ms),
            })
            .collect(),
    }
}

fn from_stored(start_ms: u64, s: StoredRollup, sc: Scales) -> Rollup {
    let at = |after: i64| start_ms.saturating_add_signed(after);
    let ms = sc.ms;
    Rollup {
        start_ms,
        host: s.host.map(|h| HostRollup {
            samples: h.samples,
            last_at_ms: at(h.last_after_ms),
            cpu_pct: unfix(h.cpu, sc.pct),
            memory_pct: unfix(h.memory, sc.pct),
            disk_max_pct: unfix(h.disk_max, sc.pct),
            load1: unfix(h.load1, sc.load),
        }),
        probes: s
            .probes
            .into_iter()
            .map(|p| ProbeRollup {
                name: p.name,
                count: p.count,
                failures: p.failures,
                last_at_ms: at(p.last_after_ms),
                last_ok: p.last_ok,
                total_ms: unfix(p.total, ms),
                p95_ms: p.p95 as f64 / ms,
                dns_ms: unfix(p.dns, ms),
                connect_ms: unfix(p.connect, ms),
                tls_ms: unfix(p.tls, ms),
                ttfb_ms: unfix(p.ttfb, ms),
            })
            .collect(),
    }
}

/// The bytes a rollup is stored as on its own (an hour rollup):
/// `muster_proto::rollup`, about a fifth of its JSON.
pub fn encode(r: &Rollup) -> Result<Vec<u8>, muster_proto::EncodeError> {
    muster_proto::rollup::encode_rollup(&to_stored(r, EXACT))
}

/// The rollup of the bucket at `start_ms` (from its key) stored as `v`:
/// [`encode`]'s form, or the JSON that builds before it wrote.
pub fn decode(start_ms: u64, v: &[u8]) -> Result<Rollup, String> {
    if v.first() == Some(&b'{') {
        return serde_json::from_slice(v).map_err(|e| e.to_string());
    }
    let s = muster_proto::rollup::decode_rollup(v).map_err(|e| e.to_string())?;
    Ok(from_stored(start_ms, s, EXACT))
}

/// The minutes of the hour at `hour_ms` as one value (`super::block`):
/// each minute's start must be a whole minute within that hour, ascending.
/// Kept to [`MINUTE`]'s precision (coarser than [`encode`]'s).
pub fn encode_minutes(hour_ms: u64, minutes: &[Rollup]) -> Result<Vec<u8>, String> {
    let stored: Vec<(u8, StoredRollup)> = minutes
        .iter()
        .map(|r| {
            let off = r.start_ms.checked_sub(hour_ms).map(|d| d / MINUTE_MS);
            match off {
                Some(o) if o < 60 && r.start_ms % MINUTE_MS == 0 => {
                    Ok((o as u8, to_stored(r, MINUTE)))
                }
                _ => Err(format!(
                    "minute {} is not in the hour {hour_ms}",
                    r.start_ms
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    super::block::encode(&stored).map_err(|e| e.to_string())
}

/// The minute rollups stored under a key whose start is `start_ms`: a
/// block of the hour's minutes ([`encode_minutes`]), or one minute on its
/// own as earlier builds wrote them ([`decode`]).
pub fn decode_minutes(start_ms: u64, v: &[u8]) -> Result<Vec<Rollup>, String> {
    if !super::block::is_block(v) {
        return decode(start_ms, v).map(|r| vec![r]);
    }
    Ok(super::block::decode(v)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(m, s)| from_stored(start_ms + u64::from(m) * MINUTE_MS, s, MINUTE))
        .collect())
}

/// How long each resolution is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw: Duration,
    pub minute: Duration,
    pub hour: Duration,
}

/// What is older than these goes (event time, unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Raw records before this (a whole minute).
    pub raw_before: u64,
    /// Minute rollups before this (a whole hour).
    pub minute_before: u64,
    /// Hour rollups before this (a whole hour).
    pub hour_before: u64,
}

pub fn cutoffs(now_ms: u64, r: &Retention) -> Cutoffs {
    let ago = |d: Duration| now_ms.saturating_sub(d.as_millis() as u64);
    Cutoffs {
        raw_before: floor(ago(r.raw), MINUTE_MS),
        minute_before: floor(ago(r.minute), HOUR_MS),
        hour_before: floor(ago(r.hour), HOUR_MS),
    }
}

/// The resolution `resolution=auto` serves for a range from `since_ms`
/// (`None`: from the start, which means raw, as before rollups): raw while
/// the range is within raw retention, else minutes within minute
/// retention, else hours. `None` = raw.
pub fn auto_resolution(since_ms: Option<u64>, now_ms: u64, r: &Retention) -> Option<Resolution> {
    let since = since_ms?;
    let ago = now_ms.saturating_sub(since);
    if ago <= r.raw.as_millis() as u64 {
        None
    } else if ago <= r.minute.as_millis() as u64 {
        Some(Resolution::Minute)
    } else {
        Some(Resolution::Hour)
    }
}

/// What to do with a dirty minute (one that got records since it was last
/// rolled), given what of this unit was already pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// All its raw records are kept: rebuild the minute from raw.
    Replace,
    /// Some raw records were pruned: merge the present (late) ones into the
    /// stored minute and delete them.
    MergeMinute,
    /// The minute itself has expired: merge the late records into their hour
    /// and delete them.
    MergeHour,
}

pub fn action(minute_ms: u64, raw_pruned_before: u64, minutes_pruned_before: u64) -> Action {
    if minute_ms >= raw_pruned_before {
        Action::Replace
    } else if minute_ms >= minutes_pruned_before {
        Action::MergeMinute
    } else {
        Action::MergeHour
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::{ErrorClass, fixtures};

    fn probe(at_ms: u64, total_ms: u32, ok: bool) -> StoredSample {
        let mut p = fixtures::http_probe();
        p.phases.total_us = total_ms * 1000;
        if !ok {
            p.outcome = Outcome::Fail(ErrorClass::Timeout);
        }
        StoredSample {
            boot: fixtures::BOOT,
            seq: at_ms,
            at_ms,
            payload: Payload::Probe(p),
        }
    }

    fn host(at_ms: u64, cpu_bp: u16) -> StoredSample {
        let mut h = fixtures::host_sample();
        h.cpu.as_mut().unwrap().total_bp = cpu_bp;
        StoredSample {
            boot: fixtures::BOOT,
            seq: at_ms,
            at_ms,
            payload: Payload::Host(h),
        }
    }

    #[test]
    fn auto_picks_the_finest_resolution_that_covers_the_range() {
        let r = Retention {
            raw: Duration::from_secs(7200),
            minute: Duration::from_secs(7 * 86_400),
            hour: Duration::from_secs(90 * 86_400),
        };
        let now = 100 * 86_400_000;
        let h = HOUR_MS;
        for (since, want) in [
            (None, None),
            (Some(now), None),
            (Some(now - 2 * h), None),
            (Some(now - 2 * h - 1), Some(Resolution::Minute)),
            (Some(now - 24 * h), Some(Resolution::Minute)),
            (Some(now - 7 * 24 * h), Some(Resolution::Minute)),
            (Some(now - 7 * 24 * h - 1), Some(Resolution::Hour)),
            (Some(0), Some(Resolution::Hour)),
            (Some(now + h), None),
        ] {
            assert_eq!(auto_resolution(since, now, &r), want, "{since:?}");
        }
    }

    #[test]
    fn p95_is_nearest_rank() {
        for (vals, want) in [
            (vec![], 0.0),
            (vec![7.0], 7.0),
            ((1..=20).map(f64::from).collect::<Vec<_>>(), 19.0),
            ((1..=100).map(f64::from).collect(), 95.0),
            (vec![5.0, 1.0, 3.0], 5.0),
        ] {
            assert_eq!(p95(&mut vals.clone()), want, "{vals:?}");
        }
    }

    #[test]
    fn a_minute_rolls_host_and_probes() {
        let mut s: Vec<StoredSample> = (0..12)
            .map(|i| host(i * 5_000, 1_000 + i as u16 * 100))
            .collect();
        s.extend((0..20).map(|i| probe(i * 3_000, (i + 1) as u32 * 10, i % 5 != 0)));
        s.sort_by_key(|x| x.at_ms);
        let r = roll(0, &s);
        let h = r.host.unwrap();
        assert_eq!(h.samples, 12);
        assert_eq!(h.cpu_pct.min, 10.0);
        assert_eq!(h.cpu_pct.max, 21.0);
        assert_eq!(h.cpu_pct.last, 21.0);
        assert!((h.cpu_pct.mean().unwrap() - 15.5).abs() < 1e-9);
        assert_eq!(h.load1.last, 0.84);
        assert!(h.memory_pct.last > 55.0 && h.memory_pct.last < 56.0);
        assert!(h.disk_max_pct.n == 12);
        let p = &r.probes[0];
        assert_eq!((p.name.as_str(), p.count, p.failures), ("cad-api", 20, 4));
        assert_eq!(
            (p.total_ms.min, p.total_ms.max, p.p95_ms),
            (10.0, 200.0, 190.0)
        );
        assert_eq!(p.connect_ms.mean(), Some(38.0));
        assert!(p.last_ok);
    }

    /// The stored form: exact for values with an integer source (cpu in
    /// basis points, load x 100, latencies in µs), within 0.005 % for
    /// memory and disk use (computed ratios, kept in basis points); stable
    /// under re-encoding (an hour merged from decoded minutes); about a
    /// fifth of the JSON; and the JSON of earlier builds still reads.
    #[test]
    fn the_stored_form_round_trips_and_reads_old_json() {
        let start = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;
        let mut s: Vec<StoredSample> = (0..12)
            .map(|i| host(start + i * 5_000, 1_000 + i as u16 * 37))
            .collect();
        s.extend((0..20).map(|i| probe(start + i * 3_000 + 1, (i + 1) as u32 * 13, i % 5 != 0)));
        s.sort_by_key(|x| x.at_ms);
        let r = roll(start, &s);
        let b = encode(&r).unwrap();
        let json = serde_json::to_vec(&r).unwrap();
        assert!(
            b.len() * 4 < json.len(),
            "{} vs JSON {}",
            b.len(),
            json.len()
        );
        let back = decode(start, &b).unwrap();
        let (h, hb) = (r.host.as_ref().unwrap(), back.host.as_ref().unwrap());
        assert_eq!((hb.cpu_pct, hb.load1), (h.cpu_pct, h.load1));
        assert_eq!((hb.samples, hb.last_at_ms), (h.samples, h.last_at_ms));
        let near = |a: &Stat, b: &Stat, tol: f64| {
            assert_eq!(a.n, b.n);
            for (x, y) in [
                (a.min, b.min),
                (a.max, b.max),
                (a.sum, b.sum),
                (a.last, b.last),
            ] {
                assert!((x - y).abs() <= tol, "{x} vs {y}");
            }
        };
        near(&h.memory_pct, &hb.memory_pct, 0.005);
        near(&h.disk_max_pct, &hb.disk_max_pct, 0.005);
        assert_eq!(back.probes.len(), r.probes.len());
        for (a, b) in r.probes.iter().zip(&back.probes) {
            assert_eq!(
                (
                    &a.name,
                    a.count,
                    a.failures,
                    a.last_at_ms,
                    a.last_ok,
                    a.p95_ms
                ),
                (
                    &b.name,
                    b.count,
                    b.failures,
                    b.last_at_ms,
                    b.last_ok,
                    b.p95_ms
                )
            );
            // (A float sum of µs / 1000 is off by ulps; the fixed point is exact.)
            for (x, y) in [
                (&a.total_ms, &b.total_ms),
                (&a.dns_ms, &b.dns_ms),
                (&a.connect_ms, &b.connect_ms),
                (&a.tls_ms, &b.tls_ms),
                (&a.ttfb_ms, &b.ttfb_ms),
            ] {
                near(x, y, 1e-9);
            }
        }
        assert_eq!(encode(&back).unwrap(), b, "re-encoding is stable");
        // An hour from decoded minutes stores as it reads.
        let hr = roll_hour(start, &[back.clone(), decode(start, &b).unwrap()]);
        let hb = encode(&hr).unwrap();
        assert_eq!(encode(&decode(start, &hb).unwrap()).unwrap(), hb);
        // A rollup an earlier build stored as JSON.
        assert_eq!(decode(start, &json).unwrap(), r);
        assert!(decode(start, b"\x07junk").is_err());
    }

    /// An hour's minutes stored as one block read back with their starts,
    /// counts and times exact, percentages and latencies to 0.1 ([`MINUTE`]);
    /// a minute outside the hour is refused; a minute stored alone (earlier
    /// builds) still reads.
    #[test]
    fn minute_blocks_keep_a_tenth_of_a_percent_and_of_a_millisecond() {
        let h = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;
        let minute = |m: u64| {
            let at = h + m * MINUTE_MS;
            let s: Vec<StoredSample> = (0..12)
                .map(|i| probe(at + i * 5_000 + 7, 100 + (m * 12 + i) as u32, i % 4 != 0))
                .chain((0..12).map(|i| host(at + i * 5_000, 2_000 + (m * 7 + i) as u16)))
                .collect();
            let mut r = roll(at, &s);
            // A latency with µs digits, which the block rounds to 0.1 ms.
            r.probes[0].total_ms.max += 0.123;
            r
        };
        // Within half the stored unit: min, max, last and the mean; n exact.
        fn close(a: &Stat, b: &Stat, unit: f64, what: &str) {
            let tol = unit / 2.0 + 1e-9;
            assert_eq!(a.n, b.n, "{what}");
            for (x, y) in [(a.min, b.min), (a.max, b.max), (a.last, b.last)] {
                assert!((x - y).abs() <= tol, "{what}: {a:?} vs {b:?}");
            }
            let (ma, mb) = (a.mean().unwrap(), b.mean().unwrap());
            assert!((ma - mb).abs() <= tol, "{what} mean: {ma} vs {mb}");
        }
        let mins: Vec<Rollup> = [0, 1, 2, 30, 59].into_iter().map(minute).collect();
        let v = encode_minutes(h, &mins).unwrap();
        let back = decode_minutes(h, &v).unwrap();
        assert_eq!(back.len(), mins.len());
        let mut rounded = false;
        for (a, b) in mins.iter().zip(&back) {
            assert_eq!(a.start_ms, b.start_ms);
            let (x, y) = (a.host.as_ref().unwrap(), b.host.as_ref().unwrap());
            assert_eq!((x.samples, x.last_at_ms), (y.samples, y.last_at_ms));
            close(&x.cpu_pct, &y.cpu_pct, 0.1, "cpu");
            close(&x.memory_pct, &y.memory_pct, 0.1, "memory");
            close(&x.disk_max_pct, &y.disk_max_pct, 0.1, "disk");
            close(&x.load1, &y.load1, 0.01, "load");
            // Sums are n x a mean in whole stored units (the block then
            // stores no remainder).
            let mean_units = y.cpu_pct.sum * 10.0 / f64::from(y.cpu_pct.n);
            assert!(
                (mean_units - mean_units.round()).abs() < 1e-6,
                "{mean_units}"
            );
            let (p, q) = (&a.probes[0], &b.probes[0]);
            assert_eq!(
                (p.count, p.failures, p.last_at_ms, p.last_ok),
                (q.count, q.failures, q.last_at_ms, q.last_ok)
            );
            close(&p.total_ms, &q.total_ms, 0.1, "total");
            close(&p.connect_ms, &q.connect_ms, 0.1, "connect");
            assert!((p.p95_ms - q.p95_ms).abs() <= 0.05 + 1e-9);
            rounded |= (p.total_ms.max - q.total_ms.max).abs() > 0.0;
            // Stored again, a decoded minute is what it was (no drift when
            // an hour is rewritten for late data).
            let again = decode_minutes(h, &encode_minutes(h, &back).unwrap()).unwrap();
            assert_eq!(again, back);
        }
        assert!(rounded, "the µs digits were rounded away");
        assert!(encode_minutes(h, &[minute(60)]).is_err());
        assert!(encode_minutes(h + MINUTE_MS, &[minute(0)]).is_err());
        let alone = encode(&mins[1]).unwrap();
        assert_eq!(
            decode_minutes(mins[1].start_ms, &alone).unwrap(),
            [decode(mins[1].start_ms, &alone).unwrap()]
        );
    }

    /// Late data: merging the late records' rollup into the stored minute
    /// gives the same counts, sums, min, max and last as rolling everything
    /// at once; p95 becomes the max of the two p95s (>= the exact one).
    #[test]
    fn merging_late_records_matches_a_full_roll_but_p95() {
        let all: Vec<StoredSample> = (0..20)
            .map(|i| probe(i * 3_000, (i * 7 % 20 + 1) as u32, i != 3))
            .collect();
        let (early, late) = all.split_at(13);
        let full = roll(0, &all);
        let mut merged = roll(0, early);
        merge(&mut merged, &roll(0, late));
        let (f, m) = (&full.probes[0], &merged.probes[0]);
        assert_eq!(
            (m.count, m.failures, m.last_at_ms, m.last_ok),
            (f.count, f.failures, f.last_at_ms, f.last_ok)
        );
        assert_eq!(
            (
                m.total_ms.min,
                m.total_ms.max,
                m.total_ms.n,
                m.total_ms.last
            ),
            (
                f.total_ms.min,
                f.total_ms.max,
                f.total_ms.n,
                f.total_ms.last
            )
        );
        assert!((m.total_ms.sum - f.total_ms.sum).abs() < 1e-9);
        assert!(m.p95_ms >= f.p95_ms);
        let (pe, pl) = (
            roll(0, early).probes[0].p95_ms,
            roll(0, late).probes[0].p95_ms,
        );
        assert_eq!(m.p95_ms, pe.max(pl));
        // Either order: the max, not the last merged.
        let mut m3 = roll(0, early);
        merge(&mut m3, &roll(0, &late[..1]));
        assert_eq!(
            m3.probes[0].p95_ms,
            pe.max(roll(0, &late[..1]).probes[0].p95_ms)
        );
        // Late records that are OLDER than the stored ones keep the newer last.
        let mut m2 = roll(0, late);
        merge(&mut m2, &roll(0, early));
        assert_eq!(m2.probes[0].total_ms.last, f.total_ms.last);
        assert_eq!(m2.probes[0].last_at_ms, f.last_at_ms);
    }

    #[test]
    fn an_hour_is_its_minutes_merged_with_p95_the_max() {
        let minutes: Vec<Rollup> = (0..60)
            .map(|m| {
                roll(
                    m * MINUTE_MS,
                    &[
                        probe(m * MINUTE_MS, (m + 1) as u32, true),
                        host(m * MINUTE_MS, 100),
                    ],
                )
            })
            .collect();
        let h = roll_hour(0, &minutes);
        let p = &h.probes[0];
        assert_eq!(
            (p.count, p.total_ms.min, p.total_ms.max, p.p95_ms),
            (60, 1.0, 60.0, 60.0)
        );
        assert_eq!(h.host.unwrap().samples, 60);
    }

    #[test]
    fn cutoffs_are_aligned_and_actions_follow_what_was_pruned() {
        let r = Retention {
            raw: Duration::from_secs(7200),
            minute: Duration::from_secs(7 * 86_400),
            hour: Duration::from_secs(90 * 86_400),
        };
        let now = 100 * 86_400_000 + 5 * HOUR_MS + 17 * MINUTE_MS + 4_321;
        let c = cutoffs(now, &r);
        assert_eq!(
            c.raw_before,
            100 * 86_400_000 + 3 * HOUR_MS + 17 * MINUTE_MS
        );
        assert_eq!(c.minute_before, 93 * 86_400_000 + 5 * HOUR_MS);
        assert_eq!(c.hour_before, 10 * 86_400_000 + 5 * HOUR_MS);
        assert_eq!(cutoffs(1_000, &r).raw_before, 0);
        for (m, raw_pb, min_pb, want) in [
            (600_000, 0, 0, Action::Replace),
            (600_000, 600_000, 0, Action::Replace),
            (600_000, 660_000, 0, Action::MergeMinute),
            (600_000, 660_000, 600_000, Action::MergeMinute),
            (600_000, 660_000, HOUR_MS, Action::MergeHour),
        ] {
            assert_eq!(action(m, raw_pb, min_pb), want, "{m} {raw_pb} {min_pb}");
        }
    }
}
