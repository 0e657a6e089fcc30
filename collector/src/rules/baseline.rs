//! Baselines: is a value unusual compared with its own past? Pure: no
//! clock, no I/O; the engine hands in each sample with its event time and
//! the collector's `now_ms`.
//!
//! # Contract
//!
//! * **What is kept.** A *stream* per unit and per field instance that a
//!   baseline rule (`op = "above_baseline"` / `"below_baseline"`) looks at:
//!   `probe[*].total_ms` keeps one stream per probe name the unit reports
//!   (a transaction's steps arrive as probes named `<probe>.<step>`, so
//!   each step has its own), `net.bps` one per unit. Fields no baseline rule
//!   uses keep nothing. Two rules on the same metric share its streams
//!   (`probe[*].total_ms` above and below: one stream per probe); a rule
//!   with a named selector and one with `[*]` on the same metric keep
//!   their streams apart (a known cost, not a fault).
//! * **Bounded.** At most `max_streams_per_unit` streams per unit; a
//!   stream beyond it is not kept, never judged, and counted once per
//!   (unit, stream) in `muster_baseline_streams_refused_total` (the unit
//!   remembers up to `max_streams_per_unit` refused streams; past that,
//!   each sample of another refused stream counts). A unit the engine
//!   forgets (cluster mode: its partition moved) drops its streams.
//! * **Per stream**, by event-time hour (`at_ms / 3_600_000`, UTC):
//!   - a ring of hourly summaries, `ring_hours = max(window,
//!     24 h x hour_of_day_days)` long (`window` alone without
//!     `hour_of_day`): each hour's median, MAD and sample count, values
//!     stored as 16-bit log codes (0.07 % steps, 2^-32 .. 2^32; 0 and
//!     below are 0): 6 bytes an hour;
//!   - the hour being accumulated (*live*): up to 32 of its samples,
//!     systematically thinned (every 2nd, 4th, ... sample once 32 are
//!     held), summarised when a sample of a later hour arrives (then the
//!     hour is *completed*);
//!   - replayed or late samples of an earlier hour go to a second
//!     accumulator of the same kind (allocated only while one is open),
//!     merged into that hour's summary when a sample of another earlier
//!     hour arrives or the live hour completes. Samples older than the
//!     ring, or more than an hour ahead of `now_ms`, are dropped and
//!     counted (`muster_baseline_samples_dropped_total{reason}`).
//!
//!   No raw samples are kept beyond the live hour's 32. Measured: see
//!   [`Stream::bytes`] (about 600 bytes a stream with the defaults).
//! * **The baseline a sample is judged against** comes from completed
//!   hours before the sample's own hour only (a jump is judged against the
//!   past, never against itself):
//!   - with `hour_of_day`, the same hour of day on each of the last
//!     `hour_of_day_days` days, once every one of them has data and they
//!     hold `min_samples` samples together (an hour-of-day *profile*);
//!   - else the last `window` hours, once they hold `min_samples` samples;
//!   - else none: **no baseline, no verdict** (the condition does not
//!     hold; a raised flag clears).
//!
//!   Median and MAD of several hours are those of their summaries taken
//!   as points `median - MAD`, `median`, `median + MAD`, each weighted by
//!   the hour's sample count (exact for one hour; robust across hours:
//!   a few unusual hours do not move it).
//! * **Verdicts** ([`BaselineOp`]): `above_baseline` holds when `value >=
//!   median x factor`, `value - median >= min_delta` and `value - median >
//!   3 x MAD` (the noise gate, [`MAD_K`]); once raised, the flag stays up
//!   while `value >= median x clear` and `value - median >= min_delta / 2`.
//!   `below_baseline` mirrors it: `value <= median / factor` and `median -
//!   value >= min_delta` (no MAD gate: a drop can be no larger than the
//!   median itself); stays while `value <= median / clear` and `median -
//!   value >= min_delta / 2`. `clear` defaults to `sqrt(factor)`.
//! * **Event time.** Every sample, live or replayed history, enters its
//!   own event-time hour. Whether a sample is judged is the engine's call
//!   (replayed history never is).
//! * **Across restarts** ([`write_header`], [`write_unit`], [`finish`],
//!   [`read`]): a snapshot of every unit's streams, `MUSTERBL`, version
//!   [`SNAPSHOT_VERSION`], the ring length, the save time, the metrics'
//!   keys (`probe[*].total_ms@0`), the units (agency, unit, streams: live
//!   and late hour, ring), their count, and an FNV-1a 64 checksum. Read
//!   back only whole: another version or ring length, a bad checksum, more
//!   units than allowed or more streams a unit than `max_streams_per_unit`
//!   refuse it ([`SnapshotError`]); streams of a metric no rule looks at
//!   any more are dropped. The collector writes it at a clean stop
//!   ([`SNAPSHOT_FILE`] in the store directory) and reads it at start.

use std::mem::size_of;

use serde::Deserialize;

use super::config::{RulesError, duration, invalid};

/// One hour is this many ms.
pub const HOUR_MS: u64 = 3_600_000;
/// `above_baseline` needs `value - median > MAD_K x MAD` (unscaled MAD:
/// for normal noise 3 MAD is about 2 standard deviations).
pub const MAD_K: f64 = 3.0;
/// Samples of the live hour held for its summary.
pub const KEEP: usize = 32;

/// The validated `[rules.baseline]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineConfig {
    /// The sliding window, whole hours (1..=168).
    pub window_hours: u32,
    /// No baseline until the hours it is taken from hold this many samples.
    pub min_samples: u32,
    /// Judge each hour against the same hour of the previous days.
    pub hour_of_day: bool,
    /// An hour-of-day profile is used once each of this many previous
    /// days has data for that hour (1..=7).
    pub hour_of_day_days: u32,
    /// Streams kept per unit at most.
    pub max_streams_per_unit: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            window_hours: 24,
            min_samples: 30,
            hour_of_day: true,
            hour_of_day_days: 3,
            max_streams_per_unit: 64,
        }
    }
}

/// `[rules.baseline]`, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBaseline {
    pub window: String,
    pub min_samples: u32,
    pub hour_of_day: bool,
    pub hour_of_day_days: u32,
    pub max_streams_per_unit: u32,
}

impl Default for RawBaseline {
    fn default() -> Self {
        RawBaseline {
            window: "24h".into(),
            min_samples: 30,
            hour_of_day: true,
            hour_of_day_days: 3,
            max_streams_per_unit: 64,
        }
    }
}

/// The most streams a unit may be allowed (`max_streams_per_unit`).
pub const MAX_STREAMS_PER_UNIT: u32 = 1_024;

impl RawBaseline {
    /// Checks the table; errors name the key (`rules.baseline.window: ...`).
    pub fn validate(&self) -> Result<BaselineConfig, RulesError> {
        let key = |k: &str| format!("rules.baseline.{k}");
        let ms = duration(&key("window"), &self.window)?;
        if !(HOUR_MS..=168 * HOUR_MS).contains(&ms) {
            return Err(invalid(key("window"), "must be 1h to 7d"));
        }
        if ms % HOUR_MS != 0 {
            return Err(invalid(
                key("window"),
                format!(
                    "{:?} is not whole hours (baselines keep hourly summaries)",
                    self.window
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.min_samples) {
            return Err(invalid(key("min_samples"), "must be 1 to 1000000"));
        }
        if !(1..=7).contains(&self.hour_of_day_days) {
            return Err(invalid(key("hour_of_day_days"), "must be 1 to 7"));
        }
        if !(1..=MAX_STREAMS_PER_UNIT).contains(&self.max_streams_per_unit) {
            return Err(invalid(
                key("max_streams_per_unit"),
                format!("must be 1 to {MAX_STREAMS_PER_UNIT}"),
            ));
        }
        Ok(BaselineConfig {
            window_hours: (ms / HOUR_MS) as u32,
            min_samples: self.min_samples,
            hour_of_day: self.hour_of_day,
            hour_of_day_days: self.hour_of_day_days,
            max_streams_per_unit: self.max_streams_per_unit as usize,
        })
    }
}

impl BaselineConfig {
    /// Completed hours each stream keeps.
    pub fn ring_hours(&self) -> u32 {
        if self.hour_of_day {
            self.window_hours.max(24 * self.hour_of_day_days)
        } else {
            self.window_hours
        }
    }
}

/// Which way a baseline rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `above_baseline`.
    Above,
    /// `below_baseline`.
    Below,
}

impl Direction {
    /// `above_baseline` / `below_baseline`; other ops are not baseline ops.
    pub fn parse(op: &str) -> Option<Direction> {
        match op {
            "above_baseline" => Some(Direction::Above),
            "below_baseline" => Some(Direction::Below),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Above => "above_baseline",
            Direction::Below => "below_baseline",
        }
    }
}

/// A baseline rule's comparison (validated: `factor > 1`, `1 <= clear <=
/// factor`, `min_delta >= 0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineOp {
    pub direction: Direction,
    pub factor: f64,
    /// Hysteresis, a factor: stays up while beyond `median x clear`
    /// (`median / clear` below).
    pub clear: f64,
    /// In the field's unit (`min_delta_ms` for millisecond fields).
    pub min_delta: f64,
}

/// What a baseline is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The last `hours` completed hours.
    Window { hours: u32 },
    /// Hour of day `hour` (UTC) on each of the last `days` days.
    HourOfDay { hour: u8, days: u8 },
}

/// A stream's usual value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub median: f64,
    pub mad: f64,
    /// Samples it is taken from.
    pub n: u32,
    pub basis: Basis,
}

impl BaselineOp {
    /// Does a value raise the flag (pending, then up after `for`)?
    pub fn raises(&self, v: f64, b: &Baseline) -> bool {
        match self.direction {
            Direction::Above => {
                v >= b.median * self.factor
                    && v - b.median >= self.min_delta
                    && v - b.median > MAD_K * b.mad
            }
            Direction::Below => v <= b.median / self.factor && b.median - v >= self.min_delta,
        }
    }

    /// Does a raised flag stay up?
    pub fn stays(&self, v: f64, b: &Baseline) -> bool {
        match self.direction {
            Direction::Above => v >= b.median * self.clear && v - b.median >= self.min_delta / 2.0,
            Direction::Below => v <= b.median / self.clear && b.median - v >= self.min_delta / 2.0,
        }
    }

    /// The value at which it raises: the `threshold` of its reason.
    pub fn level(&self, b: &Baseline) -> f64 {
        match self.direction {
            Direction::Above => (b.median * self.factor)
                .max(b.median + self.min_delta)
                .max(b.median + MAD_K * b.mad),
            Direction::Below => (b.median / self.factor).min(b.median - self.min_delta),
        }
    }
}

/// How a field's values read (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueUnit {
    Ms,
    BytesPerSec,
    Percent,
    Plain,
}

/// A value as people read it: `912 ms`, `48.2 kB/s`, `12%`, `0.05`.
pub fn show(v: f64, unit: ValueUnit) -> String {
    let num = super::config::show_num;
    match unit {
        ValueUnit::Ms if v >= 100.0 => format!("{} ms", num(v.round())),
        ValueUnit::Ms if v >= 10.0 => format!("{} ms", num((v * 10.0).round() / 10.0)),
        ValueUnit::Ms => format!("{} ms", num(v)),
        ValueUnit::BytesPerSec if v >= 1e6 => format!("{} MB/s", num((v / 1e5).round() / 10.0)),
        ValueUnit::BytesPerSec if v >= 1e3 => format!("{} kB/s", num((v / 1e2).round() / 10.0)),
        ValueUnit::BytesPerSec => format!("{} B/s", num(v.round())),
        ValueUnit::Percent => format!("{}%", num(v)),
        ValueUnit::Plain => num(v),
    }
}

/// The message of a raised baseline flag: `probe["cad-api"].total_ms 912
/// ms, usual 84 ms (median, MAD 6 ms, 14:00-15:00 UTC profile of 3 days)`.
pub fn describe(field: &str, v: f64, b: &Baseline, unit: ValueUnit) -> String {
    let basis = match b.basis {
        Basis::Window { hours } => format!("last {hours}h"),
        Basis::HourOfDay { hour, days } => format!(
            "{hour:02}:00-{:02}:00 UTC profile of {days} days",
            (hour + 1) % 24
        ),
    };
    format!(
        "{field} {}, usual {} (median, MAD {}, {basis})",
        show(v, unit),
        show(b.median, unit),
        show(b.mad, unit)
    )
}

/// A value as a 16-bit log code: 0 for 0 and below, else
/// `round((log2 v + 32) x 1024)` within 1..=65535.
pub fn encode(v: f64) -> u16 {
    if v.is_nan() || v <= 0.0 {
        return 0;
    }
    ((v.log2() + 32.0) * 1024.0).round().clamp(1.0, 65_535.0) as u16
}

/// The value of a log code.
pub fn decode(c: u16) -> f64 {
    if c == 0 {
        0.0
    } else {
        (f64::from(c) / 1024.0 - 32.0).exp2()
    }
}

/// One hour's summary: median and MAD as log codes, and the sample count
/// (saturating). `n == 0`: no data.
type Bucket = [u16; 3];
const EMPTY: Bucket = [0, 0, 0];

/// The samples of one hour, systematically thinned to at most [`KEEP`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acc {
    hour: u32,
    /// Samples of the hour seen.
    seen: u32,
    /// Every `2^stride`-th sample is held.
    stride: u8,
    kept: u8,
    vals: [u16; KEEP],
}

impl Acc {
    fn new(hour: u32) -> Acc {
        Acc {
            hour,
            seen: 0,
            stride: 0,
            kept: 0,
            vals: [0; KEEP],
        }
    }

    fn push(&mut self, code: u16) {
        let i = self.seen;
        self.seen = self.seen.saturating_add(1);
        if i & ((1u32 << self.stride) - 1) != 0 {
            return;
        }
        if usize::from(self.kept) == KEEP {
            // Keep every other one held: every 2^(stride+1)-th sample.
            for j in 0..KEEP / 2 {
                self.vals[j] = self.vals[2 * j];
            }
            self.kept = (KEEP / 2) as u8;
            self.stride += 1;
            if i & ((1u32 << self.stride) - 1) != 0 {
                return;
            }
        }
        self.vals[usize::from(self.kept)] = code;
        self.kept += 1;
    }

    /// Median, MAD and count of the hour; `None` before any sample.
    fn summary(&self) -> Option<Bucket> {
        if self.kept == 0 {
            return None;
        }
        let k = usize::from(self.kept);
        let mut v = [0f64; KEEP];
        for (d, c) in v.iter_mut().zip(&self.vals[..k]) {
            *d = decode(*c);
        }
        let v = &mut v[..k];
        v.sort_by(f64::total_cmp);
        let med = middle(v);
        for x in v.iter_mut() {
            *x = (*x - med).abs();
        }
        v.sort_by(f64::total_cmp);
        let mad = middle(v);
        Some([encode(med), encode(mad), sat16(self.seen)])
    }
}

fn sat16(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The median of sorted values.
fn middle(v: &[f64]) -> f64 {
    let k = v.len();
    if k % 2 == 1 {
        v[k / 2]
    } else {
        (v[k / 2 - 1] + v[k / 2]) / 2.0
    }
}

/// The weighted median of `(value, weight)` points (sorted here).
fn weighted_median(p: &mut [(f64, f64)]) -> f64 {
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = p.iter().map(|x| x.1).sum();
    let mut acc = 0.0;
    for (i, (v, w)) in p.iter().enumerate() {
        acc += w;
        if acc * 2.0 > total + 1e-9 {
            return *v;
        }
        if (acc * 2.0 - total).abs() <= 1e-9 {
            // Exactly half: between this one and the next.
            return match p.get(i + 1) {
                Some((next, _)) => (v + next) / 2.0,
                None => *v,
            };
        }
    }
    p.last().map_or(0.0, |x| x.0)
}

/// Median and MAD of hourly summaries, each taken as three points
/// (`median - MAD`, `median`, `median + MAD`) weighted by its count.
fn combine(buckets: &[Bucket]) -> (f64, f64) {
    let mut p: Vec<(f64, f64)> = Vec::with_capacity(buckets.len() * 3);
    for b in buckets {
        let (m, d, w) = (decode(b[0]), decode(b[1]), f64::from(b[2]));
        p.push(((m - d).max(0.0), w));
        p.push((m, w));
        p.push((m + d, w));
    }
    let med = weighted_median(&mut p);
    for x in p.iter_mut() {
        x.0 = (x.0 - med).abs();
    }
    let mad = weighted_median(&mut p);
    (med, mad)
}

/// Two summaries of one hour as one.
fn merge(a: Bucket, b: Bucket) -> Bucket {
    if a[2] == 0 {
        return b;
    }
    if b[2] == 0 {
        return a;
    }
    let (m, d) = combine(&[a, b]);
    [encode(m), encode(d), a[2].saturating_add(b[2])]
}

/// The cached baseline of one hour.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cached {
    /// `u32::MAX`: nothing cached.
    hour: u32,
    base: Option<Baseline>,
}

const NOTHING: Cached = Cached {
    hour: u32::MAX,
    base: None,
};

/// One field instance's past.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// The engine's feed (metric) index.
    pub feed: u16,
    /// The instance (probe name, disk, interface), or none.
    pub instance: Option<Box<str>>,
    /// Completed hours; hour `h` at `h % len`; valid: `live.hour - len ..
    /// live.hour`.
    ring: Box<[Bucket]>,
    live: Acc,
    /// An earlier hour being filled by replayed or late samples.
    late: Option<Box<Acc>>,
    cache: Cached,
}

/// What happened to a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Kept,
    /// Older than the ring.
    TooOld,
}

impl Stream {
    fn new(cfg: &BaselineConfig, feed: u16, instance: Option<&str>, hour: u32) -> Stream {
        Stream {
            feed,
            instance: instance.map(Into::into),
            ring: vec![EMPTY; cfg.ring_hours().max(1) as usize].into_boxed_slice(),
            live: Acc::new(hour),
            late: None,
            cache: NOTHING,
        }
    }

    /// Bytes this stream holds: itself, its ring, its name and an open
    /// late hour (the allocator's own overhead not counted).
    pub fn bytes(&self) -> usize {
        size_of::<Stream>()
            + self.ring.len() * size_of::<Bucket>()
            + self.instance.as_deref().map_or(0, str::len)
            + self.late.as_ref().map_or(0, |_| size_of::<Acc>())
    }

    fn len(&self) -> u32 {
        self.ring.len() as u32
    }

    /// The oldest hour the ring may hold.
    fn oldest(&self) -> u32 {
        self.live.hour.saturating_sub(self.len())
    }

    /// Adds a sample taken in event-time hour `hour`.
    pub fn push(&mut self, hour: u32, v: f64) -> Taken {
        let code = encode(v);
        if hour > self.live.hour {
            self.advance(hour);
        }
        if hour == self.live.hour {
            self.live.push(code);
            return Taken::Kept;
        }
        if hour < self.oldest() {
            return Taken::TooOld;
        }
        match &mut self.late {
            Some(l) if l.hour == hour => l.push(code),
            _ => {
                if let Some(l) = self.late.take() {
                    self.seal_late(&l);
                }
                let mut l = Box::new(Acc::new(hour));
                l.push(code);
                self.late = Some(l);
            }
        }
        Taken::Kept
    }

    /// The live hour completes: its summary goes into the ring, hours
    /// without data between it and `to` are emptied, an open late hour is
    /// merged.
    fn advance(&mut self, to: u32) {
        let len = self.len();
        let from = self.live.hour;
        if to - from > len {
            self.ring.fill(EMPTY);
        } else {
            for h in from + 1..to {
                self.ring[(h % len) as usize] = EMPTY;
            }
            if let Some(b) = self.live.summary() {
                // Its slot held hour `from - len`, now out of the window.
                self.ring[(from % len) as usize] = b;
            }
        }
        self.live = Acc::new(to);
        if let Some(l) = self.late.take() {
            self.seal_late(&l);
        }
        self.cache = NOTHING;
    }

    fn seal_late(&mut self, l: &Acc) {
        if l.hour < self.oldest() || l.hour >= self.live.hour {
            return;
        }
        if let Some(b) = l.summary() {
            let len = self.len();
            let slot = &mut self.ring[(l.hour % len) as usize];
            *slot = merge(*slot, b);
            self.cache = NOTHING;
        }
    }

    /// A completed hour's summary, if it has data.
    fn completed(&self, hour: u32) -> Option<Bucket> {
        if hour < self.oldest() || hour >= self.live.hour {
            return None;
        }
        let b = self.ring[(hour % self.len()) as usize];
        (b[2] > 0).then_some(b)
    }

    /// The baseline a sample of event-time hour `hour` is judged against
    /// (completed hours before it only), or none yet.
    pub fn baseline(&mut self, cfg: &BaselineConfig, hour: u32) -> Option<Baseline> {
        if self.cache.hour == hour {
            return self.cache.base;
        }
        let base = self.compute(cfg, hour);
        self.cache = Cached { hour, base };
        base
    }

    fn compute(&self, cfg: &BaselineConfig, hour: u32) -> Option<Baseline> {
        let mut buckets: Vec<Bucket> = Vec::new();
        let count = |bs: &[Bucket]| bs.iter().map(|b| u32::from(b[2])).sum::<u32>();
        if cfg.hour_of_day {
            buckets.extend(
                (1..=cfg.hour_of_day_days)
                    .filter_map(|k| hour.checked_sub(24 * k))
                    .filter_map(|h| self.completed(h)),
            );
            let n = count(&buckets);
            if buckets.len() as u32 >= cfg.hour_of_day_days && n >= cfg.min_samples {
                let (median, mad) = combine(&buckets);
                return Some(Baseline {
                    median,
                    mad,
                    n,
                    basis: Basis::HourOfDay {
                        hour: (hour % 24) as u8,
                        days: buckets.len() as u8,
                    },
                });
            }
            buckets.clear();
        }
        buckets.extend(
            (hour.saturating_sub(cfg.window_hours)..hour).filter_map(|h| self.completed(h)),
        );
        let n = count(&buckets);
        if buckets.is_empty() || n < cfg.min_samples {
            return None;
        }
        let (median, mad) = combine(&buckets);
        Some(Baseline {
            median,
            mad,
            n,
            basis: Basis::Window {
                hours: cfg.window_hours,
            },
        })
    }
}

/// The engine's baseline counters (gauges and totals), read by the
/// collector's metrics (`muster_baseline_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Streams kept now.
    pub streams: u64,
    /// Their bytes ([`Stream::bytes`]).
    pub bytes: u64,
    /// Samples taken into a stream.
    pub samples: u64,
    /// Streams not kept: the unit had `max_streams_per_unit`.
    pub refused: u64,
    /// Samples older than the ring.
    pub too_old: u64,
    /// Samples more than an hour ahead of the collector's clock.
    pub future: u64,
}

/// A unit's streams.
#[derive(Debug, Default)]
pub struct UnitStreams {
    streams: Vec<Stream>,
    /// Hashes of refused (feed, instance) keys, so each counts once.
    refused: Vec<u32>,
}

/// A sample for a unit's stream.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub feed: u16,
    pub instance: Option<&'a str>,
    pub at_ms: u64,
    pub value: f64,
}

impl UnitStreams {
    /// Takes a sample into its stream (opened if the unit has room) and,
    /// when `judge`, returns the baseline it is judged against (`None`:
    /// no baseline, not kept, or dropped).
    pub fn observe(
        &mut self,
        cfg: &BaselineConfig,
        s: Sample<'_>,
        now_ms: u64,
        judge: bool,
        stats: &mut Stats,
    ) -> Option<Baseline> {
        if s.at_ms > now_ms.saturating_add(HOUR_MS) {
            stats.future += 1;
            return None;
        }
        let hour = u32::try_from(s.at_ms / HOUR_MS).unwrap_or(u32::MAX - 1);
        let i = match self
            .streams
            .iter()
            .position(|x| x.feed == s.feed && x.instance.as_deref() == s.instance)
        {
            Some(i) => i,
            None if self.streams.len() >= cfg.max_streams_per_unit => {
                let key = key_hash(s.feed, s.instance);
                if !self.refused.contains(&key) {
                    stats.refused += 1;
                    if self.refused.len() < cfg.max_streams_per_unit {
                        self.refused.push(key);
                    }
                }
                return None;
            }
            None => {
                let st = Stream::new(cfg, s.feed, s.instance, hour);
                stats.streams += 1;
                stats.bytes += st.bytes() as u64;
                self.streams.push(st);
                self.streams.len() - 1
            }
        };
        let st = &mut self.streams[i];
        let before = st.bytes();
        let taken = st.push(hour, s.value);
        let after = st.bytes();
        stats.bytes = (stats.bytes + after as u64).saturating_sub(before as u64);
        match taken {
            Taken::Kept => stats.samples += 1,
            Taken::TooOld => {
                stats.too_old += 1;
                return None;
            }
        }
        if judge { st.baseline(cfg, hour) } else { None }
    }

    /// (streams, bytes) held, for the engine's totals when it forgets the unit.
    pub fn held(&self) -> (u64, u64) {
        (
            self.streams.len() as u64,
            self.streams.iter().map(|s| s.bytes() as u64).sum(),
        )
    }

    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }
}

/// FNV-1a of a stream key.
fn key_hash(feed: u16, instance: Option<&str>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    for b in feed.to_le_bytes() {
        eat(b);
    }
    match instance {
        Some(i) => {
            eat(1);
            i.bytes().for_each(&mut eat);
        }
        None => eat(0),
    }
    h
}

// ---- the snapshot (persistence across restarts) ----

/// The file, in the store directory, that holds the baselines across a
/// clean restart (single node).
pub const SNAPSHOT_FILE: &str = "baselines.bin";
const MAGIC: &[u8; 8] = b"MUSTERBL";
/// The snapshot format's version; another is refused (relearned).
pub const SNAPSHOT_VERSION: u16 = 1;

/// Why a snapshot was not loaded (the baselines are then learned again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a baseline snapshot, or a damaged one: {0}")]
    Format(&'static str),
    #[error("snapshot version {0}, this build reads version {SNAPSHOT_VERSION}")]
    Version(u16),
    #[error(
        "the snapshot keeps {saved} hours a stream, [rules.baseline] now {now} (window or hour_of_day_days changed)"
    )]
    Ring { saved: u32, now: u32 },
    #[error("the snapshot holds more {0} than this collector allows")]
    TooMany(&'static str),
}

/// Bytes out, little-endian.
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
        self.0
            .extend_from_slice(&s.as_bytes()[..s.len().min(usize::from(u16::MAX))]);
    }

    fn acc(&mut self, a: &Acc) {
        self.u32(a.hour);
        self.u32(a.seen);
        self.u8(a.stride);
        self.u8(a.kept);
        for v in &a.vals[..usize::from(a.kept)] {
            self.u16(*v);
        }
    }
}

/// Bytes in; every read is bounded by what is left.
pub struct Reader<'a> {
    b: &'a [u8],
}

type Read<T> = Result<T, SnapshotError>;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        if self.b.len() < n {
            return Err(SnapshotError::Format("cut short"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Read<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Read<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Read<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Read<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn str(&mut self) -> Read<&'a str> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| SnapshotError::Format("a name is not UTF-8"))
    }

    fn acc(&mut self) -> Read<Acc> {
        let mut a = Acc::new(self.u32()?);
        a.seen = self.u32()?;
        a.stride = self.u8()?;
        a.kept = self.u8()?;
        if usize::from(a.kept) > KEEP || a.stride > 31 || u32::from(a.kept) > a.seen {
            return Err(SnapshotError::Format("an hour's samples"));
        }
        for v in a.vals.iter_mut().take(usize::from(a.kept)) {
            *v = self.u16()?;
        }
        Ok(a)
    }
}

/// FNV-1a, 64 bits: the snapshot's trailer (a cut or damaged file is refused).
fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A snapshot's header: the format and what the streams' layout depends on.
/// `feeds` are the keys of the metrics the streams belong to
/// ([`Stream::feed`] indexes them).
pub fn write_header(cfg: &BaselineConfig, saved_ms: u64, feeds: &[String]) -> Writer {
    let mut w = Writer(Vec::new());
    w.0.extend_from_slice(MAGIC);
    w.u16(SNAPSHOT_VERSION);
    w.u32(cfg.ring_hours());
    w.u64(saved_ms);
    w.u16(u16::try_from(feeds.len()).unwrap_or(u16::MAX));
    for f in feeds.iter().take(usize::from(u16::MAX)) {
        w.str(f);
    }
    w
}

/// One unit: its ids and streams.
pub fn write_unit(w: &mut Writer, agency: &str, unit: &str, u: &UnitStreams) {
    w.str(agency);
    w.str(unit);
    w.u16(u16::try_from(u.streams.len()).unwrap_or(u16::MAX));
    for s in u.streams.iter().take(usize::from(u16::MAX)) {
        w.u16(s.feed);
        match &s.instance {
            Some(i) => {
                w.u8(1);
                w.str(i);
            }
            None => w.u8(0),
        }
        w.acc(&s.live);
        match &s.late {
            Some(l) => {
                w.u8(1);
                w.acc(l);
            }
            None => w.u8(0),
        }
        for b in s.ring.iter() {
            for x in b {
                w.u16(*x);
            }
        }
    }
}

/// Seals a snapshot: the unit count after the units, then the checksum.
pub fn finish(mut w: Writer, units: u32) -> Vec<u8> {
    w.u32(units);
    let sum = fnv64(&w.0);
    w.u64(sum);
    w.0
}

/// A snapshot read back: per unit (agency, unit), its streams, with
/// [`Stream::feed`] mapped to this config's feeds (streams of metrics no
/// rule looks at any more are dropped).
pub struct Loaded {
    pub saved_ms: u64,
    pub units: Vec<(String, String, UnitStreams)>,
    pub streams: usize,
    pub dropped_streams: usize,
}

/// Reads a snapshot. `feed_of` maps a saved metric's key to this config's
/// feed (`None`: no rule looks at it now); at most `max_units` units and
/// `cfg.max_streams_per_unit` streams a unit.
pub fn read(
    bytes: &[u8],
    cfg: &BaselineConfig,
    feed_of: impl Fn(&str) -> Option<u16>,
    max_units: usize,
) -> Result<Loaded, SnapshotError> {
    if bytes.len() < MAGIC.len() + 2 + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::Format("no header"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if fnv64(body) != u64::from_le_bytes(sum.try_into().expect("8")) {
        return Err(SnapshotError::Format("checksum"));
    }
    let mut r = Reader {
        b: &body[MAGIC.len()..],
    };
    let version = r.u16()?;
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let ring = r.u32()?;
    if ring != cfg.ring_hours() {
        return Err(SnapshotError::Ring {
            saved: ring,
            now: cfg.ring_hours(),
        });
    }
    let saved_ms = r.u64()?;
    let nfeeds = r.u16()?;
    let mut feeds = Vec::with_capacity(usize::from(nfeeds));
    for _ in 0..nfeeds {
        feeds.push(feed_of(r.str()?));
    }
    // The unit count is last but four bytes before the checksum.
    if body.len() < 4 {
        return Err(SnapshotError::Format("cut short"));
    }
    let count = u32::from_le_bytes(body[body.len() - 4..].try_into().expect("4"));
    if count as usize > max_units {
        return Err(SnapshotError::TooMany("units"));
    }
    r.b = &r.b[..r.b.len() - 4];
    let mut out = Loaded {
        saved_ms,
        units: Vec::with_capacity(count as usize),
        streams: 0,
        dropped_streams: 0,
    };
    for _ in 0..count {
        let agency = r.str()?.to_owned();
        let unit = r.str()?.to_owned();
        let n = usize::from(r.u16()?);
        if n > cfg.max_streams_per_unit {
            return Err(SnapshotError::TooMany("streams a unit"));
        }
        let mut u = UnitStreams::default();
        for _ in 0..n {
            let feed = r.u16()?;
            let instance = match r.u8()? {
                0 => None,
                1 => Some(r.str()?),
                _ => return Err(SnapshotError::Format("an instance")),
            };
            let live = r.acc()?;
            let late = match r.u8()? {
                0 => None,
                1 => Some(Box::new(r.acc()?)),
                _ => return Err(SnapshotError::Format("a late hour")),
            };
            let mut ring = vec![EMPTY; ring as usize].into_boxed_slice();
            for b in ring.iter_mut() {
                for x in b.iter_mut() {
                    *x = r.u16()?;
                }
            }
            match feeds.get(usize::from(feed)) {
                Some(Some(now)) => {
                    out.streams += 1;
                    u.streams.push(Stream {
                        feed: *now,
                        instance: instance.map(Into::into),
                        ring,
                        live,
                        late,
                        cache: NOTHING,
                    });
                }
                Some(None) => out.dropped_streams += 1,
                None => return Err(SnapshotError::Format("a stream's metric")),
            }
        }
        out.units.push((agency, unit, u));
    }
    if !r.b.is_empty() {
        return Err(SnapshotError::Format("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "baseline_tests.rs"]
mod tests;
