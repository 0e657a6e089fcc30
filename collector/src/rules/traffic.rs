//! The collector watches its own traffic: a sudden drop in an agency's
//! message rate, with many of its units falling silent at once, is an
//! agency incident of its own (`traffic_drop`): a carrier outage, a VPN
//! concentrator down, a firewall change. It raises before the units go
//! `lost.stale` one by one, and names how many fell silent and when.
//!
//! Pure: no clock, no I/O. Every entry point takes the collector's clock as
//! `now_ms`; all times here are collector time (receipt), never the units'
//! event time: units' clocks differ, and a unit replaying history is traffic
//! now.
//!
//! # Contract
//!
//! `[rules.traffic]` (defaults in `default_rules.toml`):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `enabled` | `true` | off: no rate is kept, no incident raised |
//! | `bucket` | `"5s"` | the rate is counted in buckets of this (collector time, aligned to multiples of it) |
//! | `baseline` | `"10m"` | the agency's usual rate: the median of the completed buckets over this span (10 to 4096 buckets); none until half the span has been seen |
//! | `drop_ratio` | `0.5` | raise only when the current rate < drop_ratio x usual |
//! | `clear_ratio` | `0.8` | the rate counts as back at >= clear_ratio x usual (>= drop_ratio) |
//! | `min_units` | `5` | at least this many units fell silent at once (>= 2) |
//! | `min_ratio` | `0.3` | ... and at least this share of the agency's active units |
//! | `silent` | `"10s"`, at most 2/3 of `[rules.offline] min_stale` | a unit is silent when nothing was received from it for max(silent, 1.5 x its interval) |
//! | `within` | `"1m"` | "at once": the units' silence began within this span of now (bucket..=baseline) |
//! | `max_affected` | `1000` | most unit ids listed in an incident's `affected` (the summary keeps the count) |
//! | `max_agencies` | `1000` | most agencies watched; receipts of others are counted (`muster_traffic_unwatched_total`) and not watched |
//! | `severity` | `"degraded"` | of the `agency-traffic-drop` reason on each silent unit |
//! | `runbook` | – | an http(s) URL; else `/runbooks/agency-traffic-drop` |
//!
//! `silent` must be shorter than `[rules.offline] min_stale`, and
//! `stale_factor` at least 2, so that a unit is silent before it is stale
//! (`lost.stale` after max(stale_factor x interval, min_stale)): the
//! incident comes before the units go stale one by one. Both are refused
//! otherwise, naming the key and the relation.
//!
//! * **Receipts.** Every record the engine takes (not duplicates; replayed
//!   history too: it is traffic now) and every believed birth counts one
//!   message in its agency's current bucket: O(1). A completed bucket goes
//!   to the agency's ring of `baseline / bucket` buckets (and to a small
//!   ring of the recent ones); buckets nobody spoke in are zeros. The
//!   first bucket of an agency (and of a collector
//!   start) is partial and not kept. The **usual rate** is the median of
//!   the ring once it holds half the span; the **current rate** is the
//!   mean of the last max(1, silent / (2 x bucket)) completed buckets (so
//!   it has dropped by the time the units count as silent).
//! * **Who counts** (`of_units`, *active*): units heard within the
//!   baseline span (collector time) that have not announced their
//!   departure (an `off` presence: a parked car that said goodbye is not a
//!   lost one; it is neither silent nor counted until it is heard again),
//!   and, after a collector restart, only units heard since.
//! * **Silent**: an active unit whose last receipt is older than
//!   max(silent, 1.5 x its interval); its silence *began* at its last
//!   receipt plus that allowance. It fell silent *at once* with the others
//!   when that was within `within` of now.
//! * **Opens** (`Change::Incident`, kind `traffic_drop`, id
//!   `{agency}:traffic:{since_ms}`, probe `traffic`, target `messages`)
//!   when the agency has a usual rate > 0, the current rate < `drop_ratio`
//!   x usual, and the units that fell silent at once are at least
//!   `min_units` and at least `min_ratio` of the active units. `affected`
//!   = those units (sorted, at most `max_affected`), `of_units` = the
//!   active units, summary: `37 of 40 units fell silent at 14:02:10Z
//!   (messages 3.1/s, usual 40.2/s)` (the time: the median last receipt of
//!   the silent units at opening, UTC).
//! * **While open** the incident's units are the active units that are
//!   still silent and whose silence began at most `within` before it
//!   opened; units active when it opened stay counted however long the
//!   outage lasts, and the usual rate is the one it opened with: **the
//!   baseline does not learn while an incident is open** (a long outage
//!   never becomes the new normal). Updated (`Change::Incident` again)
//!   when its units or `of_units` change.
//! * **Ends** (`ended_ms` set) when fewer than `min_units` of its units are
//!   still silent (they are heard again, or said goodbye), or when the
//!   rate is back (>= `clear_ratio` x the usual rate) and the still silent
//!   ones are below `min_ratio` of the active units. A burst of replayed
//!   backlog from the units that came back does not end it while many are
//!   still silent. Summary: `37 of 40 units fell silent at 14:02:10Z
//!   (usual 40.2/s); ended: 2 still silent, messages 39.0/s` (the most
//!   silent at once, of how many).
//! * **Units.** Each unit of an open incident (all of them, not only the
//!   listed ones) carries a reason `agency-traffic-drop` (severity
//!   `severity`, field `traffic`, the incident's id in `incident`, its
//!   `since_ms`, message `fell silent with many units of metro-fire at
//!   14:02:10Z: incident metro-fire:traffic:…`), until it is heard again,
//!   says goodbye or the incident ends; it also goes `lost.stale` in its
//!   own time.
//! * **A slow decline** (units leaving one by one without a word) does not
//!   raise: fewer than `min_units` fall silent within any `within`.
//! * **Cluster mode**: off (a collector sees only its partitions' traffic;
//!   summing the rates across owners is not done): `Engine::clustered`
//!   keeps no traffic state whatever `[rules.traffic]` says.
//! * **Bounds**: per agency one ring of `baseline / bucket` (<= 4096)
//!   counts and one of the recent ones; at most `max_agencies` agencies;
//!   per unit, in the engine's state, its agency's index and, while it is
//!   in an incident, the tag. A tick walks the units once (as staleness
//!   does) and sorts only the silent ones; the median is recomputed once a
//!   completed bucket (O(buckets)).

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use super::config::{OfflineConfig, RulesError, duration, invalid, ratio, runbook, severity};
use crate::model::{Incident, IncidentKind, Severity};

/// The rule name of the reason on a unit of the incident (and of its runbook).
pub const RULE: &str = "agency-traffic-drop";
/// An incident's `probe` for a traffic drop.
pub const PROBE: &str = "traffic";
/// An incident's `target` for a traffic drop: what was counted.
pub const TARGET: &str = "messages";
/// The most buckets in a baseline.
pub const MAX_BUCKETS: u64 = 4096;
/// The fewest buckets in a baseline.
pub const MIN_BUCKETS: u64 = 10;

/// `[rules.traffic]`, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTraffic {
    pub enabled: bool,
    pub bucket: String,
    pub baseline: String,
    pub drop_ratio: f64,
    pub clear_ratio: f64,
    pub min_units: usize,
    pub min_ratio: f64,
    /// Unset: 10 s, or 2/3 of `[rules.offline] min_stale` when that is less.
    pub silent: Option<String>,
    pub within: String,
    pub max_affected: usize,
    pub max_agencies: usize,
    pub severity: String,
    pub runbook: Option<String>,
}

impl Default for RawTraffic {
    fn default() -> Self {
        RawTraffic {
            enabled: true,
            bucket: "5s".into(),
            baseline: "10m".into(),
            drop_ratio: 0.5,
            clear_ratio: 0.8,
            min_units: 5,
            min_ratio: 0.3,
            silent: None,
            within: "1m".into(),
            max_affected: 1000,
            max_agencies: 1000,
            severity: "degraded".into(),
            runbook: None,
        }
    }
}

/// The default `silent`, when `[rules.offline] min_stale` allows it.
pub const DEFAULT_SILENT_MS: u64 = 10_000;

/// The validated `[rules.traffic]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficConfig {
    pub bucket_ms: u64,
    pub baseline_ms: u64,
    pub drop_ratio: f64,
    pub clear_ratio: f64,
    pub min_units: usize,
    pub min_ratio: f64,
    pub silent_ms: u64,
    pub within_ms: u64,
    pub max_affected: usize,
    pub max_agencies: usize,
    pub severity: Severity,
    pub runbook: Option<String>,
}

impl RawTraffic {
    /// Checks the table against `[rules.offline]` (already validated);
    /// `None` when disabled. Errors name the key: `rules.traffic.silent:
    /// …`.
    pub fn validate(&self, offline: &OfflineConfig) -> Result<Option<TrafficConfig>, RulesError> {
        let positive = |key: &str, v: &str| -> Result<u64, RulesError> {
            match duration(key, v)? {
                0 => Err(invalid(key, "must not be zero")),
                ms => Ok(ms),
            }
        };
        let bucket_ms = positive("rules.traffic.bucket", &self.bucket)?;
        if bucket_ms < 1_000 {
            return Err(invalid(
                "rules.traffic.bucket",
                "must be at least 1s (the engine ticks about once a second)",
            ));
        }
        let baseline_ms = positive("rules.traffic.baseline", &self.baseline)?;
        let buckets = baseline_ms / bucket_ms;
        if !(MIN_BUCKETS..=MAX_BUCKETS).contains(&buckets) {
            return Err(invalid(
                "rules.traffic.baseline",
                format!(
                    "{} is {buckets} buckets of {}: give {MIN_BUCKETS} to {MAX_BUCKETS}",
                    self.baseline, self.bucket
                ),
            ));
        }
        let drop_ratio = ratio("rules.traffic.drop_ratio", self.drop_ratio)?;
        if drop_ratio == 0.0 || drop_ratio >= 1.0 {
            return Err(invalid(
                "rules.traffic.drop_ratio",
                format!("{drop_ratio} must be above 0 and below 1"),
            ));
        }
        let clear_ratio = ratio("rules.traffic.clear_ratio", self.clear_ratio)?;
        if clear_ratio < drop_ratio {
            return Err(invalid(
                "rules.traffic.clear_ratio",
                format!("{clear_ratio} is below drop_ratio {drop_ratio}: the incident would flap"),
            ));
        }
        if self.min_units < 2 {
            return Err(invalid(
                "rules.traffic.min_units",
                "must be at least 2 (one unit silent is that unit's problem)",
            ));
        }
        let min_ratio = ratio("rules.traffic.min_ratio", self.min_ratio)?;
        if min_ratio == 0.0 {
            return Err(invalid("rules.traffic.min_ratio", "must be above 0"));
        }
        let min_stale = offline.min_stale_ms;
        let silent_ms = match &self.silent {
            None => DEFAULT_SILENT_MS.min(min_stale / 3 * 2),
            Some(s) => {
                let ms = duration("rules.traffic.silent", s)?;
                if ms > 0 && ms >= min_stale {
                    return Err(invalid(
                        "rules.traffic.silent",
                        format!(
                            "{s} is not shorter than [rules.offline] min_stale {}: units would \
                             go lost.stale before the traffic drop could raise; make it shorter \
                             (e.g. 2/3 of min_stale)",
                            humantime::format_duration(std::time::Duration::from_millis(min_stale))
                        ),
                    ));
                }
                ms
            }
        };
        if self.enabled && offline.stale_factor < 2 {
            return Err(invalid(
                "rules.offline.stale_factor",
                format!(
                    "{} would make units go lost.stale before [rules.traffic] finds them silent \
                     (1.5 x their interval): use 2 or more, or disable [rules.traffic]",
                    offline.stale_factor
                ),
            ));
        }
        let within_ms = positive("rules.traffic.within", &self.within)?;
        if within_ms < bucket_ms || within_ms > baseline_ms {
            return Err(invalid(
                "rules.traffic.within",
                format!(
                    "{} must be between bucket {} and baseline {}",
                    self.within, self.bucket, self.baseline
                ),
            ));
        }
        if !(1..=10_000).contains(&self.max_affected) {
            return Err(invalid("rules.traffic.max_affected", "must be 1 to 10000"));
        }
        if !(1..=100_000).contains(&self.max_agencies) {
            return Err(invalid("rules.traffic.max_agencies", "must be 1 to 100000"));
        }
        let cfg = TrafficConfig {
            bucket_ms,
            baseline_ms,
            drop_ratio,
            clear_ratio,
            min_units: self.min_units,
            min_ratio,
            silent_ms,
            within_ms,
            max_affected: self.max_affected,
            max_agencies: self.max_agencies,
            severity: severity("rules.traffic.severity", &self.severity)?,
            runbook: runbook("rules.traffic.runbook", self.runbook.clone())?,
        };
        Ok(self.enabled.then_some(cfg))
    }
}

impl TrafficConfig {
    /// Completed buckets in the baseline ring.
    fn buckets(&self) -> usize {
        (self.baseline_ms / self.bucket_ms) as usize
    }

    /// Completed buckets the current rate is the mean of: half the
    /// silence allowance, so that the rate has dropped by the time the
    /// units are silent.
    fn recent(&self) -> usize {
        ((self.silent_ms / (2 * self.bucket_ms)) as usize).clamp(1, self.buckets())
    }

    /// How long a unit sending every `interval_ms` may say nothing before
    /// it is silent.
    pub fn silent_after(&self, interval_ms: u64) -> u64 {
        self.silent_ms.max(interval_ms.saturating_mul(3) / 2)
    }
}

/// One unit as the engine sees it at a tick.
#[derive(Debug, Clone, Copy)]
pub struct UnitSeen<'a> {
    /// The engine's index of the unit (for tags).
    pub unit: usize,
    /// Its agency's index ([`Traffic::receipt`] gave it).
    pub agency: usize,
    /// The unit's id within the agency.
    pub name: &'a str,
    /// Collector time anything was last received from it.
    pub last_rx_ms: u64,
    /// Its sampling interval (as the engine knows it).
    pub interval_ms: u64,
    /// It announced its departure (`off`, `overdue`) and was not heard since.
    pub departed: bool,
}

/// What a unit of an open incident carries (`None`: nothing any more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub id: String,
    pub since_ms: u64,
    pub message: String,
}

/// An agency's figures as of the last tick (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgencyView<'a> {
    pub agency: &'a str,
    /// Messages per second over the last completed buckets.
    pub rate: Option<f64>,
    /// The usual rate (messages per second); `None` until there is one.
    pub usual: Option<f64>,
    /// Units counted (`of_units`).
    pub active: usize,
    /// Units that fell silent at once (or, while open, the incident's).
    pub silent: usize,
    pub open: bool,
    /// Incidents opened since start.
    pub opened: u64,
}

#[derive(Debug)]
struct Open {
    incident: Incident,
    /// The usual rate when it opened (messages/s), until it ends.
    usual: f64,
    /// Units heard since this count as active while it is open.
    active_from: u64,
    /// Units whose silence began since this are its units.
    fell_from: u64,
    /// The median last receipt of its units when it opened.
    fell_at: u64,
    /// Its units silent as last told (the count, beyond the capped list).
    count: usize,
    /// The most of its units silent at once, of how many.
    peak: usize,
    peak_of: usize,
}

#[derive(Debug)]
struct Agency {
    name: String,
    /// Completed buckets the usual rate is the median of, oldest first;
    /// not fed while an incident is open.
    history: VecDeque<u32>,
    /// The last completed buckets (the current rate), always fed.
    recent: VecDeque<u32>,
    /// Start of the current bucket (a multiple of the bucket).
    start_ms: u64,
    count: u32,
    /// The current bucket was not watched from its start.
    partial: bool,
    /// Median of `history` in messages per bucket, once half-full.
    usual: Option<f64>,
    open: Option<Open>,
    /// Units (engine indices, sorted) told they are in `open`.
    tagged: Vec<usize>,
    active: usize,
    silent: usize,
    opened: u64,
}

/// Per-agency message rates and the traffic-drop incidents.
#[derive(Debug)]
pub struct Traffic {
    cfg: TrafficConfig,
    index: HashMap<String, usize>,
    agencies: Vec<Agency>,
    /// Receipts of agencies beyond `max_agencies`: not watched.
    unwatched: u64,
    scratch: Vec<u32>,
}

/// A silent unit at a tick.
struct Silent<'a> {
    agency: usize,
    unit: usize,
    name: &'a str,
    last_rx_ms: u64,
}

impl Traffic {
    pub fn new(cfg: TrafficConfig) -> Traffic {
        Traffic {
            cfg,
            index: HashMap::new(),
            agencies: Vec::new(),
            unwatched: 0,
            scratch: Vec::new(),
        }
    }

    pub fn config(&self) -> &TrafficConfig {
        &self.cfg
    }

    /// One message from a unit of `agency`, received at `now_ms`. `cached`
    /// is the unit's copy of its agency's index (resolved on its first
    /// receipt); `None` after the call when the agency is not watched
    /// (`max_agencies`; counted).
    pub fn receipt(&mut self, cached: &mut Option<usize>, agency: &str, now_ms: u64) {
        let ai = match *cached {
            Some(i) => i,
            None => match self.index.get(agency) {
                Some(&i) => i,
                None if self.agencies.len() >= self.cfg.max_agencies => {
                    self.unwatched += 1;
                    return;
                }
                None => {
                    let i = self.agencies.len();
                    self.agencies.push(Agency::new(agency, &self.cfg, now_ms));
                    self.index.insert(agency.to_owned(), i);
                    i
                }
            },
        };
        *cached = Some(ai);
        let a = &mut self.agencies[ai];
        a.roll(&self.cfg, now_ms, &mut self.scratch);
        a.count = a.count.saturating_add(1);
    }

    /// Receipts not watched (agencies beyond `max_agencies`).
    pub fn unwatched(&self) -> u64 {
        self.unwatched
    }

    /// Closes buckets, counts the agencies' active and silent units, and
    /// opens, updates or ends incidents. Pushes the incidents that changed
    /// to `changed` and the units whose tag changed to `tags` (units first
    /// in the caller, so a feed that sees the incident finds them tagged).
    pub fn tick<'a>(
        &mut self,
        now_ms: u64,
        units: impl IntoIterator<Item = UnitSeen<'a>>,
        changed: &mut Vec<Incident>,
        tags: &mut Vec<(usize, Option<Tag>)>,
    ) {
        let cfg = &self.cfg;
        for a in &mut self.agencies {
            a.roll(cfg, now_ms, &mut self.scratch);
            a.active = 0;
            a.silent = 0;
        }
        let mut silent: Vec<Silent<'a>> = Vec::new();
        for u in units {
            let Some(a) = self.agencies.get_mut(u.agency) else {
                continue;
            };
            if u.departed {
                continue;
            }
            let active_from = match &a.open {
                Some(o) => o.active_from.min(now_ms.saturating_sub(cfg.baseline_ms)),
                None => now_ms.saturating_sub(cfg.baseline_ms),
            };
            if u.last_rx_ms < active_from {
                continue;
            }
            a.active += 1;
            let after = cfg.silent_after(u.interval_ms);
            if now_ms.saturating_sub(u.last_rx_ms) < after {
                continue;
            }
            let began = u.last_rx_ms.saturating_add(after);
            let from = match &a.open {
                Some(o) => o.fell_from,
                None => now_ms.saturating_sub(cfg.within_ms),
            };
            if began >= from {
                a.silent += 1;
                silent.push(Silent {
                    agency: u.agency,
                    unit: u.unit,
                    name: u.name,
                    last_rx_ms: u.last_rx_ms,
                });
            }
        }
        silent.sort_unstable_by(|x, y| (x.agency, x.name).cmp(&(y.agency, y.name)));
        let mut rest: &[Silent<'a>] = &silent;
        for (ai, a) in self.agencies.iter_mut().enumerate() {
            let n = rest.iter().take_while(|s| s.agency == ai).count();
            let (mine, more) = rest.split_at(n);
            rest = more;
            if let Some(inc) = a.decide(cfg, mine, now_ms, &mut self.scratch) {
                changed.push(inc);
            }
            a.retag(mine, tags);
        }
    }

    /// Open incidents.
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.agencies
            .iter()
            .filter_map(|a| a.open.as_ref().map(|o| &o.incident))
    }

    /// Every watched agency's figures as of the last tick.
    pub fn views(&self) -> impl Iterator<Item = AgencyView<'_>> {
        let cfg = &self.cfg;
        self.agencies.iter().map(move |a| AgencyView {
            agency: &a.name,
            rate: a.rate(cfg),
            usual: a.usual(cfg),
            active: a.active,
            silent: a.silent,
            open: a.open.is_some(),
            opened: a.opened,
        })
    }

    /// The engine forgot unit `unit` and moved unit `moved` into its index
    /// (`swap_remove`): its tags are re-keyed.
    pub fn forget(&mut self, unit: usize, moved: Option<usize>) {
        for a in &mut self.agencies {
            if let Ok(i) = a.tagged.binary_search(&unit) {
                a.tagged.remove(i);
            }
            if let Some(from) = moved
                && let Ok(i) = a.tagged.binary_search(&from)
            {
                a.tagged.remove(i);
                let at = a.tagged.binary_search(&unit).unwrap_or_else(|e| e);
                a.tagged.insert(at, unit);
            }
        }
    }
}

impl Agency {
    fn new(name: &str, cfg: &TrafficConfig, now_ms: u64) -> Agency {
        Agency {
            name: name.to_owned(),
            history: VecDeque::with_capacity(cfg.buckets()),
            recent: VecDeque::with_capacity(cfg.recent()),
            start_ms: now_ms - now_ms % cfg.bucket_ms,
            count: 0,
            partial: true,
            usual: None,
            open: None,
            tagged: Vec::new(),
            active: 0,
            silent: 0,
            opened: 0,
        }
    }

    /// Closes the current bucket and any empty ones after it, up to `now_ms`.
    fn roll(&mut self, cfg: &TrafficConfig, now_ms: u64, scratch: &mut Vec<u32>) {
        let b = cfg.bucket_ms;
        if now_ms < self.start_ms.saturating_add(b) {
            return;
        }
        let elapsed = (now_ms - self.start_ms) / b;
        let learn = self.open.is_none();
        let first = (!self.partial).then_some(self.count);
        // Empty buckets after it: a ring's worth at most.
        let zeros = (elapsed - 1).min(cfg.buckets() as u64) as usize;
        let mut learned = false;
        for c in first.into_iter().chain(std::iter::repeat_n(0, zeros)) {
            push(&mut self.recent, cfg.recent(), c);
            if learn {
                push(&mut self.history, cfg.buckets(), c);
                learned = true;
            }
        }
        self.start_ms = self.start_ms.saturating_add(elapsed.saturating_mul(b));
        self.count = 0;
        self.partial = false;
        if learned {
            self.usual = (self.history.len() * 2 >= cfg.buckets()).then(|| {
                scratch.clear();
                scratch.extend(self.history.iter().copied());
                median(scratch)
            });
        }
    }

    /// Messages per second over the recent buckets, once there are enough.
    fn rate(&self, cfg: &TrafficConfig) -> Option<f64> {
        (self.recent.len() >= cfg.recent()).then(|| {
            let sum: u64 = self.recent.iter().map(|&c| u64::from(c)).sum();
            per_s(sum as f64 / self.recent.len() as f64, cfg)
        })
    }

    /// The usual rate, messages per second.
    fn usual(&self, cfg: &TrafficConfig) -> Option<f64> {
        self.usual.map(|u| per_s(u, cfg))
    }

    /// Opens, updates or ends the incident for the agency's silent units
    /// (`silent`, sorted by name); returns it when it changed.
    fn decide(
        &mut self,
        cfg: &TrafficConfig,
        silent: &[Silent<'_>],
        now_ms: u64,
        scratch: &mut Vec<u32>,
    ) -> Option<Incident> {
        let n = silent.len();
        let of = self.active;
        let rate = self.rate(cfg);
        let share = |n: usize| n as f64 >= cfg.min_ratio * of as f64;
        match &mut self.open {
            None => {
                let (Some(rate), Some(usual)) = (rate, self.usual(cfg)) else {
                    return None;
                };
                if !(usual > 0.0 && rate < cfg.drop_ratio * usual && n >= cfg.min_units && share(n))
                {
                    return None;
                }
                // When they fell silent: the median of their last receipts
                // (as seconds: `scratch` holds u32).
                scratch.clear();
                scratch.extend(silent.iter().map(|s| (s.last_rx_ms / 1000) as u32));
                let fell_at = (median(scratch) * 1000.0) as u64;
                let incident = Incident {
                    id: format!("{}:{PROBE}:{now_ms}", self.name),
                    kind: IncidentKind::TrafficDrop,
                    agency: self.name.clone(),
                    probe: PROBE.to_owned(),
                    target: TARGET.to_owned(),
                    affected: listed(silent, cfg.max_affected),
                    of_units: of,
                    since_ms: now_ms,
                    ended_ms: None,
                    summary: format!(
                        "{n} of {of} units fell silent at {} (messages {}/s, usual {}/s)",
                        hhmmss(fell_at),
                        one(rate),
                        one(usual)
                    ),
                };
                self.open = Some(Open {
                    incident: incident.clone(),
                    usual,
                    active_from: now_ms.saturating_sub(cfg.baseline_ms),
                    fell_from: now_ms.saturating_sub(cfg.within_ms),
                    fell_at,
                    count: n,
                    peak: n,
                    peak_of: of,
                });
                self.opened += 1;
                Some(incident)
            }
            Some(o) => {
                if n > o.peak {
                    (o.peak, o.peak_of) = (n, of);
                }
                let back = rate.is_some_and(|r| r >= cfg.clear_ratio * o.usual);
                let rate_words = rate.map_or_else(|| "?".to_owned(), one);
                if n < cfg.min_units || (back && !share(n)) {
                    let o = self.open.take().expect("open");
                    let mut ended = o.incident;
                    ended.affected = listed(silent, cfg.max_affected);
                    ended.of_units = of;
                    ended.ended_ms = Some(now_ms);
                    ended.summary = format!(
                        "{} of {} units fell silent at {} (usual {}/s); ended: {n} still silent, \
                         messages {rate_words}/s",
                        o.peak,
                        o.peak_of,
                        hhmmss(o.fell_at),
                        one(o.usual)
                    );
                    return Some(ended);
                }
                let affected = listed(silent, cfg.max_affected);
                // `affected` is capped: a change beyond the list shows in the count.
                if affected == o.incident.affected && of == o.incident.of_units && n == o.count {
                    return None;
                }
                o.count = n;
                let inc = &mut o.incident;
                inc.affected = affected;
                inc.of_units = of;
                inc.summary = format!(
                    "{n} of {of} units fell silent at {} (messages {rate_words}/s, usual {}/s)",
                    hhmmss(o.fell_at),
                    one(o.usual)
                );
                Some(inc.clone())
            }
        }
    }

    /// Tags the incident's units while it is open; untags the rest.
    fn retag(&mut self, silent: &[Silent<'_>], tags: &mut Vec<(usize, Option<Tag>)>) {
        let mut want: Vec<usize> = match &self.open {
            None => Vec::new(),
            Some(_) => silent.iter().map(|s| s.unit).collect(),
        };
        want.sort_unstable();
        if want == self.tagged {
            return;
        }
        if let Some(o) = &self.open {
            let tag = Tag {
                id: o.incident.id.clone(),
                since_ms: o.incident.since_ms,
                message: format!(
                    "fell silent with many units of {} at {}: incident {}",
                    self.name,
                    hhmmss(o.fell_at),
                    o.incident.id
                ),
            };
            for &u in &want {
                if self.tagged.binary_search(&u).is_err() {
                    tags.push((u, Some(tag.clone())));
                }
            }
        }
        for &u in &self.tagged {
            if want.binary_search(&u).is_err() {
                tags.push((u, None));
            }
        }
        self.tagged = want;
    }
}

fn push(ring: &mut VecDeque<u32>, cap: usize, c: u32) {
    if ring.len() >= cap {
        ring.pop_front();
    }
    ring.push_back(c);
}

/// The median of `v` (reordered); 0 when empty.
fn median(v: &mut [u32]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let (_, &mut hi, _) = v.select_nth_unstable(n / 2);
    if n % 2 == 1 {
        return f64::from(hi);
    }
    let lo = v[..n / 2].iter().copied().max().unwrap_or(hi);
    (f64::from(lo) + f64::from(hi)) / 2.0
}

fn per_s(per_bucket: f64, cfg: &TrafficConfig) -> f64 {
    per_bucket * 1000.0 / cfg.bucket_ms as f64
}

/// The silent units' ids (already sorted), at most `max`.
fn listed(silent: &[Silent<'_>], max: usize) -> Vec<String> {
    silent.iter().take(max).map(|s| s.name.to_owned()).collect()
}

/// One decimal: `3.1`.
fn one(v: f64) -> String {
    format!("{v:.1}")
}

/// UTC `HH:MM:SSZ` of a unix time in ms.
pub fn hhmmss(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RawRules, RulesConfig};

    /// The shipped `[rules.traffic]` and `[rules.offline]`.
    fn shipped() -> (TrafficConfig, OfflineConfig) {
        let rules = RulesConfig::default();
        (rules.traffic.expect("on by default"), rules.offline)
    }

    /// One simulated unit: it sends one message every `interval_ms`
    /// (collector time), at its own phase, while `talking`.
    struct Sim {
        name: String,
        agency: &'static str,
        cached: Option<usize>,
        last_rx: Option<u64>,
        interval_ms: u64,
        phase_ms: u64,
        talking: bool,
        departed: bool,
        /// Messages per send (a replaying unit sends many).
        burst: u32,
    }

    /// A fleet driven in 1 s steps, ticked every second as the ingest
    /// worker does.
    struct Fleet {
        t: Traffic,
        units: Vec<Sim>,
        now: u64,
        /// Every incident change, in order.
        changes: Vec<Incident>,
        tags: HashMap<usize, Tag>,
    }

    /// 2026-11-21 00:00:00Z-ish.
    const T0: u64 = 1_795_000_000_000;

    impl Fleet {
        fn new(cfg: TrafficConfig) -> Fleet {
            Fleet {
                t: Traffic::new(cfg),
                units: Vec::new(),
                now: T0,
                changes: Vec::new(),
                tags: HashMap::new(),
            }
        }

        /// `n` units of `agency` sending every `interval_ms`, phases spread
        /// over whole seconds of the interval.
        fn add(&mut self, agency: &'static str, n: usize, interval_ms: u64) {
            for i in 0..n {
                let k = self.units.len();
                self.units.push(Sim {
                    name: format!("U{k:03}"),
                    agency,
                    cached: None,
                    last_rx: None,
                    interval_ms,
                    phase_ms: (i as u64 * 1000) % interval_ms,
                    talking: true,
                    departed: false,
                    burst: 1,
                });
            }
        }

        /// Runs to `until` (collector ms) in 1 s steps.
        fn run_to(&mut self, until: u64) {
            while self.now < until {
                self.now += 1000;
                let now = self.now;
                for u in &mut self.units {
                    if u.talking && (now - T0) % u.interval_ms == u.phase_ms {
                        for _ in 0..u.burst {
                            self.t.receipt(&mut u.cached, u.agency, now);
                        }
                        u.last_rx = Some(now);
                        u.departed = false;
                        u.burst = 1;
                    }
                }
                let seen = self.units.iter().enumerate().filter_map(|(i, u)| {
                    Some(UnitSeen {
                        unit: i,
                        agency: u.cached?,
                        name: &u.name,
                        last_rx_ms: u.last_rx?,
                        interval_ms: u.interval_ms,
                        departed: u.departed,
                    })
                });
                let mut tags = Vec::new();
                self.t.tick(now, seen, &mut self.changes, &mut tags);
                for (u, tag) in tags {
                    match tag {
                        Some(t) => assert!(self.tags.insert(u, t).is_none(), "tagged twice"),
                        None => assert!(self.tags.remove(&u).is_some(), "untagged untagged"),
                    }
                }
            }
        }

        fn run_for(&mut self, ms: u64) {
            self.run_to(self.now + ms);
        }

        fn stop(&mut self, units: std::ops::Range<usize>) {
            for u in &mut self.units[units] {
                u.talking = false;
            }
        }

        /// The units say goodbye (an `off` presence) and stop.
        fn depart(&mut self, units: std::ops::Range<usize>) {
            for u in &mut self.units[units] {
                u.talking = false;
                u.departed = true;
            }
        }

        fn resume(&mut self, units: std::ops::Range<usize>, burst: u32) {
            for u in &mut self.units[units] {
                u.talking = true;
                u.burst = burst;
            }
        }

        fn opened(&self) -> Vec<&Incident> {
            let mut ids: Vec<&str> = Vec::new();
            let mut out = Vec::new();
            for c in &self.changes {
                if !ids.contains(&c.id.as_str()) {
                    ids.push(&c.id);
                    out.push(c);
                }
            }
            out
        }

        fn last(&self) -> &Incident {
            self.changes.last().expect("an incident change")
        }

        fn view(&self, agency: &str) -> AgencyView<'_> {
            self.t.views().find(|v| v.agency == agency).unwrap()
        }

        /// When the first of `units` would go `lost.stale` (collector ms).
        fn first_stale(&self, units: std::ops::Range<usize>, off: &OfflineConfig) -> u64 {
            self.units[units]
                .iter()
                .map(|u| {
                    let after = (u.interval_ms * u64::from(off.stale_factor)).max(off.min_stale_ms);
                    u.last_rx.unwrap() + after
                })
                .min()
                .unwrap()
        }
    }

    /// A steady fleet: 40 units every 5 s (8 messages/s), past a full
    /// baseline.
    fn steady_forty() -> (Fleet, OfflineConfig) {
        let (cfg, off) = shipped();
        let mut f = Fleet::new(cfg);
        f.add("metro-fire", 40, 5_000);
        f.run_for(11 * 60_000);
        assert!(f.changes.is_empty(), "steady traffic: {:?}", f.changes);
        let v = f.view("metro-fire");
        assert_eq!((v.rate, v.usual), (Some(8.0), Some(8.0)));
        assert_eq!((v.active, v.silent), (40, 0));
        (f, off)
    }

    #[test]
    fn thirty_of_forty_falling_silent_at_once_raise_before_they_go_stale() {
        let (mut f, off) = steady_forty();
        let stop = f.now;
        f.stop(0..30);
        f.run_for(60_000);
        let opened = f.opened();
        assert_eq!(opened.len(), 1, "{:#?}", f.changes);
        let inc = opened[0];
        let stale = f.first_stale(0..30, &off);
        println!(
            "stopped at +0 s: incident at +{:.1} s, first unit stale at +{:.1} s",
            (inc.since_ms - stop) as f64 / 1e3,
            (stale - stop) as f64 / 1e3
        );
        assert!(
            inc.since_ms < stale,
            "the incident ({}) comes before the first unit goes stale ({stale})",
            inc.since_ms
        );
        assert!(
            inc.since_ms - stop <= 10_000,
            "within two buckets of silence"
        );
        assert_eq!(inc.kind, IncidentKind::TrafficDrop);
        assert_eq!(
            (inc.probe.as_str(), inc.target.as_str()),
            ("traffic", "messages")
        );
        assert_eq!(inc.id, format!("metro-fire:traffic:{}", inc.since_ms));
        assert_eq!(inc.of_units, 40);
        // Updated as the rest of the 30 fall silent; all 30 in the end.
        let now = f.last();
        assert_eq!(now.id, inc.id);
        assert_eq!(now.ended_ms, None);
        let want: Vec<String> = (0..30).map(|k| format!("U{k:03}")).collect();
        assert_eq!(now.affected, want);
        // Their last receipts were 4 s to 0 s before the stop; it opened
        // with the first 12 silent (30 % of 40: last heard 4 s and 3 s
        // before), whose median is the time given. The rate is 10 units / 5 s.
        assert_eq!(inc.since_ms - stop, 7_000);
        assert_eq!(
            now.summary,
            format!(
                "30 of 40 units fell silent at {} (messages 2.0/s, usual 8.0/s)",
                hhmmss(stop - 3_500)
            )
        );
        assert_eq!(f.tags.len(), 30, "each silent unit is tagged");
        let tag = &f.tags[&0];
        assert_eq!(tag.id, inc.id);
        assert_eq!(tag.since_ms, inc.since_ms);
        assert!(
            tag.message
                .starts_with("fell silent with many units of metro-fire at ")
        );
        let v = f.view("metro-fire");
        assert_eq!((v.silent, v.active, v.open, v.opened), (30, 40, true, 1));
    }

    #[test]
    fn a_shift_change_that_says_goodbye_raises_nothing() {
        let (mut f, _) = steady_forty();
        f.depart(0..30);
        f.run_for(120_000);
        assert!(f.changes.is_empty(), "{:#?}", f.changes);
        let v = f.view("metro-fire");
        // The rate did fall below half the usual: only the goodbye kept it quiet.
        assert_eq!((v.rate, v.usual), (Some(2.0), Some(8.0)));
        assert_eq!(
            (v.active, v.silent),
            (10, 0),
            "departed units are not counted"
        );
    }

    #[test]
    fn a_slow_decline_over_an_hour_raises_nothing() {
        let (mut f, _) = steady_forty();
        // One unit leaves without a word every 90 s: all 40 gone in an hour.
        for k in 0..40 {
            f.stop(k..k + 1);
            f.run_for(90_000);
        }
        f.run_for(10 * 60_000);
        assert!(f.changes.is_empty(), "{:#?}", f.changes);
        assert_eq!(f.view("metro-fire").rate, Some(0.0));
    }

    #[test]
    fn below_min_units_never_raises() {
        let (cfg, _) = shipped();
        let mut f = Fleet::new(cfg);
        // Small agency: 6 units; 4 fall silent (67 %, rate a third): below
        // min_units 5.
        f.add("county-ems", 6, 5_000);
        f.run_for(11 * 60_000);
        f.stop(0..4);
        f.run_for(5 * 60_000);
        assert!(f.changes.is_empty(), "{:#?}", f.changes);
        // And 30 % of a big agency is needed: 11 of 40 is not enough.
        let (mut f, _) = steady_forty();
        f.stop(0..11);
        f.run_for(5 * 60_000);
        assert!(f.changes.is_empty(), "{:#?}", f.changes);
    }

    #[test]
    fn it_ends_when_they_are_heard_again() {
        let (mut f, _) = steady_forty();
        f.stop(0..30);
        f.run_for(60_000);
        let id = f.last().id.clone();
        f.resume(0..30, 1);
        f.run_for(10_000);
        let end = f.last();
        assert_eq!(end.id, id);
        let ended = end.ended_ms.expect("ended");
        assert!(ended > end.since_ms);
        assert!(
            end.summary.starts_with("30 of 40 units fell silent at "),
            "{}",
            end.summary
        );
        assert!(end.summary.contains("; ended: "), "{}", end.summary);
        assert!(f.tags.is_empty(), "untagged: {:?}", f.tags.keys());
        assert!(f.t.open().next().is_none());
        // Nothing more while all is well.
        let n = f.changes.len();
        f.run_for(5 * 60_000);
        assert_eq!(f.changes.len(), n);
    }

    #[test]
    fn the_baseline_does_not_learn_during_a_long_outage() {
        let (mut f, _) = steady_forty();
        f.stop(0..30);
        f.run_for(60_000);
        let id = f.last().id.clone();
        // 30 minutes: three times the baseline span.
        f.run_for(30 * 60_000);
        let v = f.view("metro-fire");
        assert_eq!(
            v.usual,
            Some(8.0),
            "the low rate did not become the usual one"
        );
        assert_eq!(v.rate, Some(2.0));
        assert!(v.open);
        let inc = f.last();
        assert_eq!((inc.id.as_str(), inc.ended_ms), (id.as_str(), None));
        assert_eq!(inc.affected.len(), 30, "still its units");
        assert_eq!(inc.of_units, 40, "units active when it opened still count");
        assert_eq!(f.opened().len(), 1);
        // Back: it ends, and the usual rate is what it was.
        f.resume(0..30, 1);
        f.run_for(10_000);
        assert!(f.last().ended_ms.is_some());
        assert_eq!(f.view("metro-fire").usual, Some(8.0));
    }

    #[test]
    fn a_replay_burst_from_some_does_not_end_it_while_many_are_silent() {
        let (mut f, _) = steady_forty();
        f.stop(0..30);
        f.run_for(60_000);
        // Ten come back and replay a big backlog: the rate jumps far above
        // the usual, 20 of 40 are still silent.
        f.resume(0..10, 200);
        f.run_for(10_000);
        assert!(f.view("metro-fire").rate.unwrap() > 8.0);
        let now = f.last();
        assert_eq!(now.ended_ms, None, "{}", now.summary);
        assert_eq!(now.affected.len(), 20);
        assert!(
            now.summary.starts_with("20 of 40 units fell silent at "),
            "{}",
            now.summary
        );
        assert_eq!(f.tags.len(), 20);
        // Then 18 more come back, a phase of them a second: it ends once
        // fewer than 30 % of the 40 are still silent and the rate is back
        // (9 still silent: below min_ratio, not yet below min_units).
        f.resume(10..28, 1);
        f.run_for(10_000);
        let end = f.last();
        assert!(end.ended_ms.is_some());
        assert!(
            end.summary
                .contains("; ended: 9 still silent, messages 83.6/s"),
            "{}",
            end.summary
        );
    }

    #[test]
    fn a_new_agency_with_no_baseline_never_raises() {
        let (cfg, _) = shipped();
        let mut f = Fleet::new(cfg);
        f.add("metro-fire", 40, 5_000);
        // Two minutes: less than half the 10-minute baseline.
        f.run_for(2 * 60_000);
        assert_eq!(f.view("metro-fire").usual, None);
        f.stop(0..30);
        // Once there is a usual rate (after 5 min), the silence is old news.
        f.run_for(8 * 60_000);
        assert!(f.view("metro-fire").usual.is_some());
        assert!(f.changes.is_empty(), "{:#?}", f.changes);
    }

    #[test]
    fn agencies_are_judged_apart_and_bounded() {
        let (mut cfg, _) = shipped();
        cfg.max_agencies = 2;
        let mut f = Fleet::new(cfg);
        f.add("metro-fire", 40, 5_000);
        f.add("county-ems", 40, 5_000);
        f.add("city-pd", 5, 5_000);
        f.run_for(11 * 60_000);
        // county-ems falls silent: metro-fire's units are not counted in it.
        f.stop(40..70);
        f.run_for(60_000);
        let opened = f.opened();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].agency, "county-ems");
        assert_eq!(f.last().of_units, 40);
        // The third agency is not watched; its messages are counted.
        assert_eq!(f.t.views().count(), 2);
        assert_eq!(f.t.unwatched(), 5 * (12 * 60) / 5);
    }

    #[test]
    fn the_median_and_the_clock() {
        for (v, m) in [
            (&[][..], 0.0),
            (&[5][..], 5.0),
            (&[1, 9][..], 5.0),
            (&[9, 1, 4][..], 4.0),
            (&[40, 40, 0, 40, 200, 40][..], 40.0),
        ] {
            assert_eq!(median(&mut v.to_vec()), m, "{v:?}");
        }
        let midnight = T0 - T0 % 86_400_000;
        assert_eq!(hhmmss(midnight + 50_530_000), "14:02:10Z");
    }

    /// Through the engine's hooks: receipts counted in `on_record` and
    /// `on_presence`, the incident decided in `tick` before the units go
    /// `lost.stale`, its units tagged with a reason linking its runbook, an
    /// `off` presence honoured.
    #[test]
    fn through_the_engine_it_raises_before_staleness_and_honours_goodbyes() {
        use crate::model::{Change, Status};
        use crate::rules::Engine;
        use muster_proto::{BootId, Payload, Presence, PresenceReason, Record, UnitId, fixtures};

        #[derive(Deserialize)]
        struct File {
            rules: RawRules,
        }
        let body = "[rules]\ndefaults = false\n[rules.traffic]\nbucket = \"1s\"\n\
                    baseline = \"30s\"\nsilent = \"3s\"\nwithin = \"10s\"\n";
        let cfg = toml::from_str::<File>(body)
            .unwrap()
            .rules
            .validate()
            .unwrap();
        let mut e = Engine::new(cfg);
        let units: Vec<UnitId> = (0..20)
            .map(|i| UnitId::new("metro-fire", format!("E{i:02}")).unwrap())
            .collect();
        let boot = fixtures::BOOT;
        let presence = |online: bool, reason: PresenceReason| Presence {
            online,
            boot,
            connection: 1,
            at_ms: T0,
            reason,
        };
        let mut seq = [0u64; 20];
        let mut talking = [true; 20];
        let record = |e: &mut Engine, seq: &mut [u64; 20], i: usize, payload: Payload, now: u64| {
            seq[i] += 1;
            let r = Record {
                boot: BootId(boot.0),
                seq: seq[i],
                at_ms: now,
                payload,
            };
            e.on_record(&units[i], &r, now)
        };
        let host = {
            let mut h = fixtures::host_sample();
            h.interval_ms = 1_000;
            Payload::Host(h)
        };
        // Every talking unit sends a sample a second; the engine ticks
        // after them; returns the tick's changes.
        let second = |e: &mut Engine, seq: &mut [u64; 20], talking: &[bool; 20], now: u64| {
            for (i, t) in talking.iter().enumerate() {
                if *t {
                    record(e, seq, i, host.clone(), now);
                }
            }
            e.tick(now)
        };
        let mut now = T0;
        for u in &units {
            e.on_presence(u, &presence(true, PresenceReason::Connected), now);
        }
        for _ in 0..40 {
            now += 1_000;
            assert!(second(&mut e, &mut seq, &talking, now).is_empty());
        }
        // 12 of 20 fall silent at once.
        let stop = now;
        talking[..12].fill(false);
        let (mut opened, mut stale) = (None, None);
        for _ in 0..20 {
            now += 1_000;
            for c in second(&mut e, &mut seq, &talking, now) {
                match c {
                    Change::Incident(i) if opened.is_none() => opened = Some(i),
                    Change::Transition(t) if t.to == Status::Lost && stale.is_none() => {
                        stale = Some(t.at_ms)
                    }
                    _ => {}
                }
            }
            if opened.is_some() && stale.is_none() {
                // Between the two: the silent units are tagged, not yet lost.
                let h = e.health(&units[0]).unwrap();
                assert_eq!(h.status, Status::Degraded, "{h:?}");
            }
        }
        let inc = opened.expect("an incident");
        let stale = stale.expect("the units went stale too");
        assert_eq!(inc.since_ms - stop, 3_000, "silent after 3 s");
        assert_eq!(stale - stop, 15_000, "min_stale");
        assert_eq!(
            inc.summary,
            format!(
                "12 of 20 units fell silent at {} (messages 8.0/s, usual 20.0/s)",
                hhmmss(stop)
            )
        );
        assert_eq!(
            e.incidents()
                .filter(|i| i.kind == IncidentKind::TrafficDrop)
                .count(),
            1
        );
        let h = e.health(&units[0]).unwrap();
        assert_eq!(h.status, Status::Lost);
        let r = h.reasons.iter().find(|r| r.rule == RULE).expect("tagged");
        assert_eq!(r.incident.as_deref(), Some(inc.id.as_str()));
        assert_eq!(r.runbook.as_deref(), Some("/runbooks/agency-traffic-drop"));
        assert_eq!((r.field.as_str(), r.since_ms), ("traffic", inc.since_ms));
        assert!(
            e.health(&units[12]).unwrap().reasons.is_empty(),
            "a talking unit is not tagged"
        );
        // They are heard again: it ends, the tags go.
        talking.fill(true);
        now += 1_000;
        let ended: Vec<Change> = second(&mut e, &mut seq, &talking, now)
            .into_iter()
            .filter(|c| matches!(c, Change::Incident(_)))
            .collect();
        assert!(
            matches!(&ended[..], [Change::Incident(i)] if i.ended_ms == Some(now)),
            "{ended:?}"
        );
        assert_eq!(e.health(&units[0]).unwrap().status, Status::Ok);
        for _ in 0..40 {
            now += 1_000;
            second(&mut e, &mut seq, &talking, now);
        }
        // A shift change: the same 12 say goodbye (an announcement record
        // and the retained state), then nothing.
        let bye = presence(false, PresenceReason::Shutdown);
        for (i, u) in units.iter().enumerate().take(12) {
            record(&mut e, &mut seq, i, Payload::Presence(bye), now);
            e.on_presence(u, &bye, now);
        }
        talking[..12].fill(false);
        for _ in 0..60 {
            now += 1_000;
            let changes = second(&mut e, &mut seq, &talking, now);
            assert!(
                !changes.iter().any(|c| matches!(c, Change::Incident(_))),
                "{changes:?}"
            );
        }
        assert_eq!(e.health(&units[0]).unwrap().status, Status::Off);
    }

    /// Cost at fleet scale (run with `--ignored --nocapture`): receipts
    /// and ticks for 100,000 units in 100 agencies, 60 % of them falling silent.
    #[test]
    #[ignore = "a measurement, not a check"]
    // It measures real CPU time: the clock it reads is not the rules'.
    #[allow(clippy::disallowed_methods)]
    fn cost_at_a_hundred_thousand_units() {
        let (cfg, _) = shipped();
        let mut t = Traffic::new(cfg);
        let n = 100_000;
        let names: Vec<String> = (0..n).map(|i| format!("U{i}")).collect();
        let agencies: Vec<String> = (0..100).map(|a| format!("agency-{a}")).collect();
        let mut cached = vec![None; n];
        let mut last = vec![T0; n];
        let mut now = T0;
        let (mut receipts, mut receipt_time) = (0u64, std::time::Duration::ZERO);
        let (mut ticks, mut tick_time) = (0u32, std::time::Duration::ZERO);
        let mut slowest = std::time::Duration::ZERO;
        for second in 0..700u64 {
            now += 1_000;
            let started = std::time::Instant::now();
            // Every unit every 5 s; the last 60 % stop after 650 s.
            for i in (0..n).filter(|i| (*i as u64 + second).is_multiple_of(5)) {
                if second > 650 && i >= n - 6 * n / 10 {
                    continue;
                }
                t.receipt(&mut cached[i], &agencies[i % 100], now);
                last[i] = now;
                receipts += 1;
            }
            receipt_time += started.elapsed();
            let started = std::time::Instant::now();
            let seen = (0..n).filter_map(|i| {
                Some(UnitSeen {
                    unit: i,
                    agency: cached[i]?,
                    name: &names[i],
                    last_rx_ms: last[i],
                    interval_ms: 5_000,
                    departed: false,
                })
            });
            let (mut changed, mut tags) = (Vec::new(), Vec::new());
            t.tick(now, seen, &mut changed, &mut tags);
            tick_time += started.elapsed();
            slowest = slowest.max(started.elapsed());
            ticks += 1;
        }
        println!(
            "100,000 units, 100 agencies: {:.0} ns a receipt, {:.1} ms a tick (slowest {:.1} ms); \
             {} incidents open",
            receipt_time.as_nanos() as f64 / receipts as f64,
            tick_time.as_secs_f64() * 1e3 / f64::from(ticks),
            slowest.as_secs_f64() * 1e3,
            t.open().count()
        );
    }

    fn validate(body: &str) -> Result<Option<TrafficConfig>, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            rules: RawRules,
        }
        let f: File = toml::from_str(body).map_err(|e| e.to_string())?;
        f.rules
            .validate()
            .map(|c| c.traffic)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn shipped_defaults_and_the_silence_allowance() {
        assert_eq!(RawRules::default().traffic, RawTraffic::default());
        let (cfg, _) = shipped();
        assert_eq!(
            (cfg.bucket_ms, cfg.baseline_ms, cfg.silent_ms, cfg.within_ms),
            (5_000, 600_000, 10_000, 60_000)
        );
        assert_eq!(
            (cfg.min_units, cfg.drop_ratio, cfg.clear_ratio),
            (5, 0.5, 0.8)
        );
        assert_eq!((cfg.buckets(), cfg.recent()), (120, 1));
        assert_eq!(cfg.silent_after(1_000), 10_000);
        assert_eq!(cfg.silent_after(30_000), 45_000);
        // A shorter min_stale shortens the default silence.
        let c = validate("[rules.offline]\nmin_stale = \"6s\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.silent_ms, 4_000);
        let c = validate("[rules.offline]\nmin_stale = \"1s\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.silent_ms, 666);
        assert!(
            validate("[rules.traffic]\nenabled = false\n")
                .unwrap()
                .is_none()
        );
        // Off, the relation to staleness does not matter.
        assert!(
            validate("[rules.offline]\nstale_factor = 1\n[rules.traffic]\nenabled = false\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_keys_are_refused_naming_them() {
        let cases = [
            (
                "[rules.traffic]\nsilent = \"15s\"\n",
                "rules.traffic.silent: 15s is not shorter than [rules.offline] min_stale 15s: units \
                 would go lost.stale before the traffic drop could raise; make it shorter (e.g. 2/3 \
                 of min_stale)",
            ),
            (
                "[rules.offline]\nmin_stale = \"5s\"\n[rules.traffic]\nsilent = \"10s\"\n",
                "rules.traffic.silent: 10s is not shorter than [rules.offline] min_stale 5s: units \
                 would go lost.stale before the traffic drop could raise; make it shorter (e.g. 2/3 \
                 of min_stale)",
            ),
            (
                "[rules.offline]\nstale_factor = 1\n",
                "rules.offline.stale_factor: 1 would make units go lost.stale before \
                 [rules.traffic] finds them silent (1.5 x their interval): use 2 or more, or \
                 disable [rules.traffic]",
            ),
            (
                "[rules.traffic]\nbucket = \"500ms\"\n",
                "rules.traffic.bucket: must be at least 1s (the engine ticks about once a second)",
            ),
            (
                "[rules.traffic]\nbucket = \"soon\"\n",
                r#"rules.traffic.bucket: "soon" is not a duration (e.g. "30s", "5m")"#,
            ),
            (
                "[rules.traffic]\nbaseline = \"30s\"\n",
                "rules.traffic.baseline: 30s is 6 buckets of 5s: give 10 to 4096",
            ),
            (
                "[rules.traffic]\nbucket = \"1s\"\nbaseline = \"2h\"\n",
                "rules.traffic.baseline: 2h is 7200 buckets of 1s: give 10 to 4096",
            ),
            (
                "[rules.traffic]\ndrop_ratio = 1.0\n",
                "rules.traffic.drop_ratio: 1 must be above 0 and below 1",
            ),
            (
                "[rules.traffic]\ndrop_ratio = 1.5\n",
                "rules.traffic.drop_ratio: 1.5 is not a ratio between 0 and 1",
            ),
            (
                "[rules.traffic]\nclear_ratio = 0.4\n",
                "rules.traffic.clear_ratio: 0.4 is below drop_ratio 0.5: the incident would flap",
            ),
            (
                "[rules.traffic]\nmin_units = 1\n",
                "rules.traffic.min_units: must be at least 2 (one unit silent is that unit's problem)",
            ),
            (
                "[rules.traffic]\nmin_ratio = 0.0\n",
                "rules.traffic.min_ratio: must be above 0",
            ),
            (
                "[rules.traffic]\nwithin = \"1h\"\n",
                "rules.traffic.within: 1h must be between bucket 5s and baseline 10m",
            ),
            (
                "[rules.traffic]\nmax_affected = 0\n",
                "rules.traffic.max_affected: must be 1 to 10000",
            ),
            (
                "[rules.traffic]\nmax_agencies = 0\n",
                "rules.traffic.max_agencies: must be 1 to 100000",
            ),
            (
                "[rules.traffic]\nseverity = \"info\"\n",
                r#"rules.traffic.severity: "info" is not a severity; expected "degraded" or "critical""#,
            ),
            (
                "[rules.traffic]\nrunbook = \"wiki/traffic\"\n",
                r#"rules.traffic.runbook: "wiki/traffic" is not an http(s) URL"#,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(validate(body).unwrap_err(), want, "{body}");
        }
        let e = validate("[rules.traffic]\nbuckets = \"5s\"\n").unwrap_err();
        assert!(e.contains("unknown field `buckets`"), "{e}");
        // The rule name is the engine's own.
        let e = validate(
            "[[rules.threshold]]\nname = \"agency-traffic-drop\"\nfield = \"cpu.total\"\nop = \">\"\nthreshold = 1\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            r#"rules.threshold[0].name: "agency-traffic-drop" is reserved for a built-in rule"#
        );
    }
}
