//! Compared with its peers (issue 18, part 3): a unit far slower than the
//! other units probing the same target is flagged `slower-than-peers` (its
//! terminal or its network, not the server); the whole cohort slower at
//! once is an agency incident of kind `latency_shift` (the server or the
//! path they share). Pure: every entry point takes the collector's clock.
//!
//! # Contract
//!
//! **Cohorts.** Per (agency, probe name, target's server): the target as
//! the agents report it, cut to `scheme://host[:port]` when it is a URL
//! (`http://cad:8080/api/ping/E3` and `…/E4` are one server), as is
//! otherwise (`host:port`, a DNS name, an address). Transaction steps come
//! as probes named `<probe>.<step>` and are cohorts like any other. At most
//! `max_cohorts` cohorts: a result that would open one more is not compared
//! (counted: `muster_peers_cohorts_refused_total`, one WARN). A cohort with
//! no member and no open incident for `window` + `baseline` is dropped.
//!
//! **A unit's current latency** on a probe: the median of its successful
//! results *received* within `window` (collector clock: units' clocks
//! differ), at most the newest `max_samples` of them (older ones evicted
//! and counted). Latency is `total_ms`, `rtt_ms` for ICMP. Failures are not
//! latencies. A unit's replayed history (a record older than its stream's
//! newest, see the engine) never enters. A unit is *fresh* while its latest
//! result (success or failure) was received within `window`; a unit that
//! announced its departure (`off`) leaves (its reasons go at the next
//! tick); stale ones drop out.
//!
//! **`slower-than-peers`** (a unit flag, `severity`, field
//! `probe["<name>"].total_ms`). For each fresh unit with a current latency
//! `L`, its peers are the *other* fresh units; `M` is the median of their
//! current latencies. The condition holds when
//! `L >= factor × M` and `L − M >= min_delta_ms`, while the peers are fine:
//! at least `min_peers` of them have a current latency, at most half of
//! them failed their latest result, the cohort is not shifting (no
//! latency-shift incident open or pending, and `M` is not itself
//! `shift_factor` × and `shift_min_delta_ms` above the cohort's baseline).
//! It raises once it has held at every evaluation for `for` (collector
//! time); once raised it stays while `L >= clear × M` and
//! `L − M >= min_delta_ms / 2` (`clear = 1 + (factor − 1) / 2`: half-way),
//! and the peers are fine. `observed` = `L` (updated), `threshold` = the
//! level it crossed, `since_ms` = when the condition started, message
//! `cad-api (http://cad:8080) 950 ms, 8 peers' median 92 ms`. A unit with no
//! current latency (all failing, or gone stale) has no flag.
//!
//! **Latency shift** (an agency incident, `IncidentKind::LatencyShift`).
//! The cohort's median `C` = the median of every fresh unit's current
//! latency. Its *baseline* `B` = the median of per-slot cohort medians
//! (slot = `baseline` / 30, at least 1 s; each slot the mean of the medians
//! evaluated in it) of the slots that ended before the current `window`
//! and started within `baseline` before it; at least 10 such slots (a third
//! of `baseline`), else no baseline and no shift. The baseline is not
//! learned while a shift is pending or open (a long outage never becomes
//! the usual). A shift is pending while `C >= shift_factor × B` and
//! `C − B >= shift_min_delta_ms`, with `B` frozen when it started; held for
//! `shift_for`, and with at least `shift_min_units` units above the clear
//! level, an incident opens: id `{agency}:{probe}:shift:{since_ms}`,
//! `probe`, `target` (the server as above), `affected` = the units whose
//! own current latency is above the clear level (the end condition below,
//! applied to the unit), `of_units` = the units with a current latency,
//! summary `cad-api (http://cad:8080)
//! slower for 12 of 12 units: median 85 ms before, 870 ms since
//! 14:02:10Z`. It is updated when `affected` or `of_units` change, and
//! ends when `C < (1 + (shift_factor − 1) / 2) × B` or `C − B <
//! shift_min_delta_ms / 2`, or no unit has a current latency. While it is
//! open, its affected units carry a `latency-shift` reason
//! (`shift_severity`, `incident` = its id) and no unit of the cohort is
//! `slower-than-peers`; their probe flags on that probe carry its id.
//!
//! **Cost.** A result: one handle check and a push. A cohort is evaluated
//! in `tick` when a result arrived since, at most once a second, and at
//! least every `window / 4` (1 s to 5 s; expiry, `for`): the members'
//! medians (each ≤ `max_samples` values, recomputed only when their
//! samples changed), one sort of the cohort's latencies, then O(1) per
//! member (the median without one element is read off the sorted list).
//! Measured (`peers_cost_at_30000_units`, release, on a loaded 2-core
//! machine): 30,000 units × 3 probes every 30 s in 300 cohorts add 0.3–0.6
//! µs a result and 2–4 ms a tick (one cohort of 30,000: 4–8 ms a tick);
//! about 360 B of state a unit and probe (`max_samples` = 10).
//!
//! **Cluster mode**: off (`Engine::clustered`): a collector sees only its
//! partitions' units, and every owner would open its own shift incident.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use muster_proto::{Outcome, ProbeKind, ProbeResult};
use serde::Deserialize;

use super::config::{RulesError, duration, invalid, runbook, severity};
use crate::metrics::peers::PeerMetrics;
use crate::model::{Incident, IncidentKind, Severity};

/// The unit flag's rule name.
pub const SLOWER: &str = "slower-than-peers";
/// The rule name of the reason a unit carries inside a latency shift.
pub const SHIFT: &str = "latency-shift";

/// Baseline slots in `baseline`.
const BASELINE_SLOTS: u64 = 30;
/// Completed slots needed before a cohort has a baseline.
const MIN_BASELINE_SLOTS: usize = 10;
/// An idle cohort is evaluated at least this often (and every window / 4).
const REEVALUATE_MS: u64 = 5_000;
/// A cohort is evaluated at most this often.
const MIN_EVAL_MS: u64 = 1_000;

/// `[rules.peers]`, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPeers {
    pub enabled: bool,
    pub min_peers: usize,
    pub factor: f64,
    pub min_delta_ms: f64,
    #[serde(rename = "for")]
    pub for_: String,
    pub window: String,
    pub max_samples: usize,
    pub severity: String,
    pub runbook: Option<String>,
    pub shift_factor: f64,
    pub shift_min_delta_ms: f64,
    pub shift_for: String,
    pub baseline: String,
    pub shift_min_units: usize,
    pub shift_severity: String,
    pub shift_runbook: Option<String>,
    pub max_cohorts: usize,
}

impl Default for RawPeers {
    fn default() -> Self {
        RawPeers {
            enabled: true,
            min_peers: 3,
            factor: 3.0,
            min_delta_ms: 100.0,
            for_: "1m".into(),
            window: "2m".into(),
            max_samples: 10,
            severity: "degraded".into(),
            runbook: None,
            shift_factor: 3.0,
            shift_min_delta_ms: 100.0,
            shift_for: "1m".into(),
            baseline: "30m".into(),
            shift_min_units: 3,
            shift_severity: "degraded".into(),
            shift_runbook: None,
            max_cohorts: 10_000,
        }
    }
}

/// The validated `[rules.peers]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub min_peers: usize,
    pub factor: f64,
    /// Half-way between 1 and `factor`: a raised flag stays above it.
    pub clear_factor: f64,
    pub min_delta_ms: f64,
    pub for_ms: u64,
    pub window_ms: u64,
    pub max_samples: usize,
    pub severity: Severity,
    pub runbook: Option<String>,
    pub shift_factor: f64,
    /// Half-way between 1 and `shift_factor`: an open shift stays above it.
    pub shift_clear_factor: f64,
    pub shift_min_delta_ms: f64,
    pub shift_for_ms: u64,
    pub baseline_ms: u64,
    pub shift_min_units: usize,
    pub shift_severity: Severity,
    pub shift_runbook: Option<String>,
    pub max_cohorts: usize,
}

impl RawPeers {
    /// Checks the table; `None` when disabled. Errors name the key:
    /// `rules.peers.factor: 0.5 is not above 1`.
    pub fn validate(&self) -> Result<Option<PeerConfig>, RulesError> {
        let k = |sub: &str| format!("rules.peers.{sub}");
        let above_one = |key: &str, v: f64| {
            if v.is_finite() && v > 1.0 {
                Ok(v)
            } else {
                Err(invalid(k(key), format!("{v} is not above 1")))
            }
        };
        let delta = |key: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(invalid(k(key), format!("{v} is not 0 or more (ms)")))
            }
        };
        let at_least_two = |key: &str, v: usize, why: &str| {
            if v >= 2 {
                Ok(v)
            } else {
                Err(invalid(k(key), format!("must be at least 2 ({why})")))
            }
        };
        let factor = above_one("factor", self.factor)?;
        let shift_factor = above_one("shift_factor", self.shift_factor)?;
        let window_ms = duration(&k("window"), &self.window)?;
        if window_ms < 1_000 {
            return Err(invalid(k("window"), "must be at least 1s"));
        }
        let baseline_ms = duration(&k("baseline"), &self.baseline)?;
        if !(30_000..=7 * 86_400_000).contains(&baseline_ms) {
            return Err(invalid(k("baseline"), "must be 30s to 7d"));
        }
        if baseline_ms < window_ms {
            return Err(invalid(
                k("baseline"),
                format!(
                    "{:?} is shorter than window {:?}: the usual median must span more than the current one",
                    self.baseline, self.window
                ),
            ));
        }
        if !(1..=64).contains(&self.max_samples) {
            return Err(invalid(k("max_samples"), "must be 1 to 64"));
        }
        if !(1..=1_000_000).contains(&self.max_cohorts) {
            return Err(invalid(k("max_cohorts"), "must be 1 to 1000000"));
        }
        let cfg = PeerConfig {
            min_peers: at_least_two(
                "min_peers",
                self.min_peers,
                "a median of one unit is that unit",
            )?,
            factor,
            clear_factor: 1.0 + (factor - 1.0) / 2.0,
            min_delta_ms: delta("min_delta_ms", self.min_delta_ms)?,
            for_ms: duration(&k("for"), &self.for_)?,
            window_ms,
            max_samples: self.max_samples,
            severity: severity(&k("severity"), &self.severity)?,
            runbook: runbook(&k("runbook"), self.runbook.clone())?,
            shift_factor,
            shift_clear_factor: 1.0 + (shift_factor - 1.0) / 2.0,
            shift_min_delta_ms: delta("shift_min_delta_ms", self.shift_min_delta_ms)?,
            shift_for_ms: duration(&k("shift_for"), &self.shift_for)?,
            baseline_ms,
            shift_min_units: at_least_two(
                "shift_min_units",
                self.shift_min_units,
                "one slow unit is that unit's problem",
            )?,
            shift_severity: severity(&k("shift_severity"), &self.shift_severity)?,
            shift_runbook: runbook(&k("shift_runbook"), self.shift_runbook.clone())?,
            max_cohorts: self.max_cohorts,
        };
        Ok(self.enabled.then_some(cfg))
    }
}

/// A probe stream's cohort, cached by the engine: a slot and the
/// generation of the cohort in it (a dropped cohort's slot is reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    slot: usize,
    generation: u64,
}

/// A reason the peers put on a unit (or take off it).
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// [`SLOWER`] or [`SHIFT`].
    pub rule: &'static str,
    pub probe: String,
    /// `probe["<name>"].total_ms` (`.rtt_ms` for ICMP).
    pub field: String,
    pub severity: Severity,
    pub observed: Option<f64>,
    pub threshold: Option<f64>,
    pub since_ms: u64,
    pub message: String,
    /// The latency-shift incident's id.
    pub incident: Option<String>,
}

/// What a tick did to a unit: its mark for cohort `cohort` is now `mark`
/// (`None`: removed). `structural` is false when only `observed` changed.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerMark {
    pub unit: usize,
    pub cohort: Handle,
    pub mark: Option<Mark>,
    pub structural: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Flag {
    Quiet,
    Pending(u64),
    Raised {
        since: u64,
        observed: f64,
        threshold: f64,
        message: String,
    },
}

/// What the engine was last told about a member.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Told {
    Nothing,
    Slower(f64),
    Shift,
}

#[derive(Debug)]
struct Member {
    name: Box<str>,
    /// (received ms, latency ms) of successes, oldest first.
    samples: VecDeque<(u64, f32)>,
    last_rx: u64,
    last_failed: bool,
    current: Option<f64>,
    recompute: bool,
    flag: Flag,
    in_shift: bool,
    told: Told,
}

#[derive(Debug, Default)]
struct Shift {
    pending: Option<u64>,
    /// The baseline frozen when the shift started to be pending.
    before: f64,
    peak: f64,
    open: Option<Incident>,
}

/// The cohort's usual median: a ring of per-slot means of its medians.
#[derive(Debug)]
struct Baseline {
    slot_ms: u64,
    cap: usize,
    /// (slot index, sum of medians, evaluations).
    slots: VecDeque<(u64, f64, u32)>,
}

impl Baseline {
    fn new(cfg: &PeerConfig) -> Baseline {
        let slot_ms = (cfg.baseline_ms / BASELINE_SLOTS).max(1_000);
        Baseline {
            slot_ms,
            cap: ((cfg.baseline_ms + cfg.window_ms) / slot_ms) as usize + 2,
            slots: VecDeque::new(),
        }
    }

    fn learn(&mut self, now: u64, median: f64) {
        let idx = now / self.slot_ms;
        match self.slots.back_mut() {
            Some((i, sum, n)) if *i == idx => {
                *sum += median;
                *n += 1;
            }
            _ => {
                if self.slots.len() >= self.cap {
                    self.slots.pop_front();
                }
                self.slots.push_back((idx, median, 1));
            }
        }
    }

    /// The median of the slots that ended before the window and began
    /// within `baseline` before it.
    fn median(&self, now: u64, cfg: &PeerConfig, scratch: &mut Vec<f64>) -> Option<f64> {
        let end = now.saturating_sub(cfg.window_ms);
        let start = end.saturating_sub(cfg.baseline_ms);
        scratch.clear();
        scratch.extend(
            self.slots
                .iter()
                .filter(|(i, _, _)| i * self.slot_ms >= start && (i + 1) * self.slot_ms <= end)
                .map(|(_, sum, n)| sum / f64::from(*n)),
        );
        if scratch.len() < MIN_BASELINE_SLOTS {
            return None;
        }
        scratch.sort_unstable_by(f64::total_cmp);
        Some(median_sorted(scratch))
    }
}

#[derive(Debug)]
struct Cohort {
    generation: u64,
    agency: String,
    probe: String,
    target: String,
    field: String,
    members: HashMap<usize, Member>,
    dirty: bool,
    last_eval: u64,
    /// Collector time of the newest result.
    last_active: u64,
    baseline: Baseline,
    shift: Shift,
}

/// Every cohort, and what changed for the engine since the last tick.
#[derive(Debug)]
pub struct Peers {
    cfg: Option<PeerConfig>,
    index: HashMap<(String, String, String), usize>,
    cohorts: Vec<Option<Cohort>>,
    free: Vec<usize>,
    live: usize,
    next_generation: u64,
    /// Removals from `leave` and target changes, for the next tick.
    pending: Vec<PeerMark>,
    scratch: Vec<(f64, usize)>,
    scratch_f: Vec<f64>,
    metrics: Arc<PeerMetrics>,
    warned_full: bool,
}

/// The cohort part of a probe target: `scheme://authority` of a URL, the
/// target itself otherwise.
pub fn cohort_target(target: &str) -> &str {
    match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            let end = rest
                .find(['/', '?', '#'])
                .map_or(target.len(), |j| i + 3 + j);
            &target[..end]
        }
        None => target,
    }
}

/// A successful result's latency in ms: the round trip for ICMP, else the
/// whole check.
fn latency_ms(p: &ProbeResult) -> Option<f32> {
    if p.outcome != Outcome::Ok {
        return None;
    }
    let us = match p.kind {
        ProbeKind::Icmp => p.icmp.and_then(|i| i.avg_us)?,
        _ => p.phases.total_us,
    };
    Some(us as f32 / 1000.0)
}

fn field_of(probe: &str, kind: ProbeKind) -> String {
    let metric = if kind == ProbeKind::Icmp {
        "rtt_ms"
    } else {
        "total_ms"
    };
    format!(
        "probe[\"{}\"].{metric}",
        probe.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

use crate::gate::stats::median_sorted;

/// The median of sorted `v` without its element `skip` (`v.len() >= 2`).
fn median_without(v: &[(f64, usize)], skip: usize) -> f64 {
    let m = v.len() - 1;
    let at = |k: usize| if k < skip { v[k].0 } else { v[k + 1].0 };
    if m % 2 == 1 {
        at(m / 2)
    } else {
        (at(m / 2 - 1) + at(m / 2)) / 2.0
    }
}

/// The median of a stream's samples (at most 64: `max_samples`), without
/// allocating.
fn median_of(samples: &VecDeque<(u64, f32)>) -> Option<f64> {
    let mut buf = [0f64; 64];
    let n = samples.len().min(buf.len());
    if n == 0 {
        return None;
    }
    for (b, (_, l)) in buf.iter_mut().zip(samples) {
        *b = f64::from(*l);
    }
    let v = &mut buf[..n];
    v.sort_unstable_by(f64::total_cmp);
    Some(median_sorted(v))
}

/// Milliseconds for people: `85`, `2.5`.
fn show_ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{}", v.round() as i64)
    } else {
        format!("{}", (v * 10.0).round() / 10.0)
    }
}

/// UTC `HH:MM:SS` of a unix time in ms.
fn hhmmss(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Peers {
    pub fn new(cfg: Option<PeerConfig>) -> Peers {
        Peers {
            cfg,
            index: HashMap::new(),
            cohorts: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_generation: 0,
            pending: Vec::new(),
            scratch: Vec::new(),
            scratch_f: Vec::new(),
            metrics: Arc::default(),
            warned_full: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.is_some()
    }

    /// Where the counters go (the collector's `/metrics`).
    pub fn set_metrics(&mut self, m: Arc<PeerMetrics>) {
        self.metrics = m;
    }

    pub fn metrics(&self) -> &PeerMetrics {
        &self.metrics
    }

    /// A unit's current (never replayed) probe result, received at
    /// `now_ms`. `handle` is the stream's cached cohort.
    pub fn result(
        &mut self,
        handle: &mut Option<Handle>,
        agency: &str,
        unit: usize,
        unit_name: &str,
        p: &ProbeResult,
        now_ms: u64,
    ) {
        let Some(cfg) = &self.cfg else { return };
        let (max_samples, window_ms) = (cfg.max_samples, cfg.window_ms);
        let target = cohort_target(&p.target);
        let valid = handle.and_then(|h| {
            let c = self.cohorts.get(h.slot)?.as_ref()?;
            (c.generation == h.generation && c.target == target).then_some(h.slot)
        });
        let slot = match valid {
            Some(s) => s,
            None => {
                if let Some(old) = handle.take() {
                    // Reconfigured to another server: another series.
                    self.leave(old, unit);
                }
                let Some(h) = self.resolve(agency, &p.name, target, p.kind) else {
                    return;
                };
                *handle = Some(h);
                h.slot
            }
        };
        let c = self.cohorts[slot].as_mut().expect("valid slot");
        c.dirty = true;
        c.last_active = now_ms;
        let m = c.members.entry(unit).or_insert_with(|| Member {
            name: unit_name.into(),
            samples: VecDeque::with_capacity(max_samples),
            last_rx: now_ms,
            last_failed: false,
            current: None,
            recompute: false,
            flag: Flag::Quiet,
            in_shift: false,
            told: Told::Nothing,
        });
        m.last_rx = now_ms;
        m.last_failed = p.outcome != Outcome::Ok;
        if let Some(ms) = latency_ms(p) {
            if m.samples.len() >= max_samples
                && let Some((t, _)) = m.samples.pop_front()
                && t >= now_ms.saturating_sub(window_ms)
            {
                self.metrics.samples_evicted.fetch_add(1, Ordering::Relaxed);
            }
            m.samples.push_back((now_ms, ms));
            m.recompute = true;
        }
    }

    fn resolve(
        &mut self,
        agency: &str,
        probe: &str,
        target: &str,
        kind: ProbeKind,
    ) -> Option<Handle> {
        let cfg = self.cfg.as_ref()?;
        let key = (agency.to_owned(), probe.to_owned(), target.to_owned());
        if let Some(&slot) = self.index.get(&key) {
            let c = self.cohorts[slot].as_ref()?;
            return Some(Handle {
                slot,
                generation: c.generation,
            });
        }
        if self.live >= cfg.max_cohorts {
            self.metrics.cohorts_refused.fetch_add(1, Ordering::Relaxed);
            if !self.warned_full {
                self.warned_full = true;
                tracing::warn!(
                    max_cohorts = cfg.max_cohorts,
                    agency,
                    probe,
                    target,
                    "Peer comparison is full: results of new cohorts are not compared (rules.peers.max_cohorts)."
                );
            }
            return None;
        }
        self.next_generation += 1;
        let cohort = Cohort {
            generation: self.next_generation,
            agency: key.0.clone(),
            probe: key.1.clone(),
            target: key.2.clone(),
            field: field_of(probe, kind),
            members: HashMap::new(),
            dirty: false,
            last_eval: 0,
            last_active: 0,
            baseline: Baseline::new(cfg),
            shift: Shift::default(),
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.cohorts[s] = Some(cohort);
                s
            }
            None => {
                self.cohorts.push(Some(cohort));
                self.cohorts.len() - 1
            }
        };
        self.index.insert(key, slot);
        self.live += 1;
        Some(Handle {
            slot,
            generation: self.next_generation,
        })
    }

    /// The unit left the cohort (it went `off`, or its target changed):
    /// its marks go at the next tick.
    pub fn leave(&mut self, h: Handle, unit: usize) {
        let Some(Some(c)) = self.cohorts.get_mut(h.slot) else {
            return;
        };
        if c.generation != h.generation {
            return;
        }
        if let Some(m) = c.members.remove(&unit) {
            c.dirty = true;
            if m.told != Told::Nothing {
                self.pending.push(PeerMark {
                    unit,
                    cohort: h,
                    mark: None,
                    structural: true,
                });
            }
        }
    }

    /// The engine forgot unit `unit` and moved unit `moved` into its index.
    pub fn forget(&mut self, unit: usize, moved: Option<usize>) {
        for c in self.cohorts.iter_mut().flatten() {
            if c.members.remove(&unit).is_some() {
                c.dirty = true;
            }
            if let Some(from) = moved
                && let Some(m) = c.members.remove(&from)
            {
                c.members.insert(unit, m);
            }
        }
        self.pending.retain(|p| p.unit != unit);
        if let Some(from) = moved {
            for p in &mut self.pending {
                if p.unit == from {
                    p.unit = unit;
                }
            }
        }
    }

    /// Open latency-shift incidents.
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.cohorts
            .iter()
            .flatten()
            .filter_map(|c| c.shift.open.as_ref())
    }

    /// Evaluates the cohorts due; pushes the units' mark changes (units
    /// first) and the incidents that opened, changed or ended.
    pub fn tick(&mut self, now_ms: u64, marks: &mut Vec<PeerMark>, changed: &mut Vec<Incident>) {
        let Some(cfg) = &self.cfg else { return };
        marks.append(&mut self.pending);
        let every = (cfg.window_ms / 4).clamp(MIN_EVAL_MS, REEVALUATE_MS);
        let (mut members, mut open) = (0, 0);
        for slot in 0..self.cohorts.len() {
            let Some(c) = self.cohorts[slot].as_mut() else {
                continue;
            };
            let since = now_ms.saturating_sub(c.last_eval);
            if (c.dirty && since >= MIN_EVAL_MS) || since >= every {
                let me = Handle {
                    slot,
                    generation: c.generation,
                };
                let mut ctx = Ctx {
                    cfg,
                    me,
                    now: now_ms,
                    scratch: &mut self.scratch,
                    scratch_f: &mut self.scratch_f,
                    marks,
                    changed,
                    metrics: &self.metrics,
                };
                c.evaluate(&mut ctx);
                self.metrics.evaluations.fetch_add(1, Ordering::Relaxed);
            }
            if c.members.is_empty()
                && c.shift.open.is_none()
                && now_ms.saturating_sub(c.last_active) > cfg.window_ms + cfg.baseline_ms
            {
                let key = (
                    std::mem::take(&mut c.agency),
                    std::mem::take(&mut c.probe),
                    std::mem::take(&mut c.target),
                );
                self.index.remove(&key);
                self.cohorts[slot] = None;
                self.free.push(slot);
                self.live -= 1;
                continue;
            }
            members += c.members.len();
            open += usize::from(c.shift.open.is_some());
        }
        let m = &self.metrics;
        m.cohorts.store(self.live as u64, Ordering::Relaxed);
        m.members.store(members as u64, Ordering::Relaxed);
        m.shifts_open.store(open as u64, Ordering::Relaxed);
    }
}

/// One evaluation's inputs and outputs.
struct Ctx<'a> {
    cfg: &'a PeerConfig,
    me: Handle,
    now: u64,
    /// (current latency, unit), sorted by latency.
    scratch: &'a mut Vec<(f64, usize)>,
    scratch_f: &'a mut Vec<f64>,
    marks: &'a mut Vec<PeerMark>,
    changed: &'a mut Vec<Incident>,
    metrics: &'a PeerMetrics,
}

impl Cohort {
    fn evaluate(&mut self, x: &mut Ctx<'_>) {
        let cfg = x.cfg;
        self.dirty = false;
        self.last_eval = x.now;
        let horizon = x.now.saturating_sub(cfg.window_ms);
        // Stale members drop out.
        let (marks, me) = (&mut *x.marks, x.me);
        self.members.retain(|&unit, m| {
            let keep = m.last_rx >= horizon;
            if !keep && m.told != Told::Nothing {
                marks.push(PeerMark {
                    unit,
                    cohort: me,
                    mark: None,
                    structural: true,
                });
            }
            keep
        });
        // Current latencies.
        x.scratch.clear();
        let mut failing = 0usize;
        for (&unit, m) in &mut self.members {
            while m.samples.front().is_some_and(|(t, _)| *t < horizon) {
                m.samples.pop_front();
                m.recompute = true;
            }
            if m.recompute {
                m.current = median_of(&m.samples);
                m.recompute = false;
            }
            failing += usize::from(m.last_failed);
            match m.current {
                Some(c) => x.scratch.push((c, unit)),
                None => m.flag = Flag::Quiet,
            }
        }
        x.scratch.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let n = x.scratch.len();
        let fresh = self.members.len();
        let median = (n > 0).then(|| {
            let n2 = n / 2;
            if n % 2 == 1 {
                x.scratch[n2].0
            } else {
                (x.scratch[n2 - 1].0 + x.scratch[n2].0) / 2.0
            }
        });
        let baseline = self.baseline.median(x.now, cfg, x.scratch_f);
        self.judge_shift(x, median, baseline);
        if self.shift.open.is_none()
            && self.shift.pending.is_none()
            && let Some(md) = median
        {
            self.baseline.learn(x.now, md);
        }
        // slower-than-peers.
        let calm = self.shift.open.is_none() && self.shift.pending.is_none();
        for (pos, &(l, unit)) in x.scratch.iter().enumerate() {
            let m = self.members.get_mut(&unit).expect("member");
            let peers = n - 1;
            let pm = if peers > 0 {
                median_without(x.scratch, pos)
            } else {
                l
            };
            // Of the other fresh units, how many failed their latest result.
            let (others, others_failing) = (fresh - 1, failing - usize::from(m.last_failed));
            let peers_shifted = baseline
                .is_some_and(|b| pm >= b * cfg.shift_factor && pm - b >= cfg.shift_min_delta_ms);
            let fine =
                calm && peers >= cfg.min_peers && others_failing * 2 <= others && !peers_shifted;
            let raise = fine && l >= pm * cfg.factor && l - pm >= cfg.min_delta_ms;
            let keep = fine && l >= pm * cfg.clear_factor && l - pm >= cfg.min_delta_ms / 2.0;
            m.flag = match std::mem::replace(&mut m.flag, Flag::Quiet) {
                Flag::Raised {
                    since,
                    threshold,
                    message,
                    ..
                } if keep => Flag::Raised {
                    since,
                    observed: l,
                    threshold,
                    message,
                },
                Flag::Raised { .. } => Flag::Quiet,
                _ if !raise => Flag::Quiet,
                Flag::Quiet if cfg.for_ms > 0 => Flag::Pending(x.now),
                Flag::Pending(since) if x.now.saturating_sub(since) < cfg.for_ms => {
                    Flag::Pending(since)
                }
                f => {
                    let since = match f {
                        Flag::Pending(s) => s,
                        _ => x.now,
                    };
                    x.metrics.flags_raised.fetch_add(1, Ordering::Relaxed);
                    Flag::Raised {
                        since,
                        observed: l,
                        threshold: (pm * cfg.factor).max(pm + cfg.min_delta_ms),
                        message: format!(
                            "{} ({}) {} ms, {peers} peers' median {} ms",
                            self.probe,
                            self.target,
                            show_ms(l),
                            show_ms(pm)
                        ),
                    }
                }
            };
        }
        // What the engine is told.
        for (&unit, m) in &mut self.members {
            let want = match (&self.shift.open, &m.flag) {
                (Some(_), _) if m.in_shift => Told::Shift,
                (_, Flag::Raised { observed, .. }) => Told::Slower(*observed),
                _ => Told::Nothing,
            };
            let structural = std::mem::discriminant(&want) != std::mem::discriminant(&m.told);
            if !(structural
                || matches!((want, m.told), (Told::Slower(a), Told::Slower(b)) if a.to_bits() != b.to_bits()))
            {
                continue;
            }
            m.told = want;
            let mark = match (want, &m.flag, &self.shift.open) {
                (Told::Nothing, _, _) => None,
                (
                    Told::Slower(observed),
                    Flag::Raised {
                        since,
                        threshold,
                        message,
                        ..
                    },
                    _,
                ) => Some(Mark {
                    rule: SLOWER,
                    probe: self.probe.clone(),
                    field: self.field.clone(),
                    severity: cfg.severity,
                    observed: Some(observed),
                    threshold: Some(*threshold),
                    since_ms: *since,
                    message: message.clone(),
                    incident: None,
                }),
                (_, _, Some(inc)) => Some(Mark {
                    rule: SHIFT,
                    probe: self.probe.clone(),
                    field: self.field.clone(),
                    severity: cfg.shift_severity,
                    observed: None,
                    threshold: None,
                    since_ms: inc.since_ms,
                    message: format!(
                        "{} ({}) is slower for many units of {} (usual median {} ms): incident {}",
                        self.probe,
                        self.target,
                        self.agency,
                        show_ms(self.shift.before),
                        inc.id
                    ),
                    incident: Some(inc.id.clone()),
                }),
                _ => None,
            };
            x.marks.push(PeerMark {
                unit,
                cohort: x.me,
                mark,
                structural,
            });
        }
    }

    /// Opens, updates or ends the cohort's latency-shift incident, and
    /// marks the members inside it.
    fn judge_shift(&mut self, x: &mut Ctx<'_>, median: Option<f64>, baseline: Option<f64>) {
        let cfg = x.cfg;
        let n = x.scratch.len();
        let above = |before: f64, v: f64| {
            v >= before * cfg.shift_clear_factor && v - before >= cfg.shift_min_delta_ms / 2.0
        };
        for m in self.members.values_mut() {
            m.in_shift = false;
        }
        if let Some(inc) = &mut self.shift.open {
            let before = self.shift.before;
            let still = median.filter(|md| above(before, *md));
            let Some(md) = still else {
                let mut ended = self.shift.open.take().expect("open");
                ended.ended_ms = Some(x.now);
                ended.summary = match median {
                    Some(md) => format!(
                        "{} ({}) back to median {} ms (usual {} ms, {} ms at worst) after being slower since {}Z; ended",
                        self.probe,
                        self.target,
                        show_ms(md),
                        show_ms(before),
                        show_ms(self.shift.peak),
                        hhmmss(self.shift.pending.unwrap_or(ended.since_ms))
                    ),
                    None => format!(
                        "{} ({}): no unit has a current latency (usual {} ms); ended",
                        self.probe,
                        self.target,
                        show_ms(before)
                    ),
                };
                ended.of_units = n;
                self.shift.pending = None;
                x.changed.push(ended);
                return;
            };
            self.shift.peak = self.shift.peak.max(md);
            let affected = affected(&mut self.members, x.scratch, |v| above(before, v));
            if affected != inc.affected || n != inc.of_units {
                inc.summary = shift_summary(
                    &self.probe,
                    &self.target,
                    affected.len(),
                    n,
                    before,
                    md,
                    self.shift.pending.unwrap_or(inc.since_ms),
                );
                inc.affected = affected;
                inc.of_units = n;
                x.changed.push(inc.clone());
            }
            return;
        }
        let shifted = match (median, baseline) {
            (Some(md), Some(b)) => md >= b * cfg.shift_factor && md - b >= cfg.shift_min_delta_ms,
            _ => false,
        };
        let (Some(md), true) = (median, shifted) else {
            self.shift.pending = None;
            return;
        };
        let since = match self.shift.pending {
            Some(s) => s,
            None => {
                self.shift.pending = Some(x.now);
                self.shift.before = baseline.unwrap_or(0.0);
                x.now
            }
        };
        if x.now.saturating_sub(since) < cfg.shift_for_ms {
            return;
        }
        let before = self.shift.before;
        let affected = affected(&mut self.members, x.scratch, |v| above(before, v));
        if affected.len() < cfg.shift_min_units {
            return;
        }
        let inc = Incident {
            id: format!("{}:{}:shift:{}", self.agency, self.probe, x.now),
            kind: IncidentKind::LatencyShift,
            agency: self.agency.clone(),
            probe: self.probe.clone(),
            target: self.target.clone(),
            summary: shift_summary(
                &self.probe,
                &self.target,
                affected.len(),
                n,
                before,
                md,
                since,
            ),
            affected,
            of_units: n,
            since_ms: x.now,
            ended_ms: None,
        };
        x.metrics.shifts_opened.fetch_add(1, Ordering::Relaxed);
        self.shift.peak = md;
        self.shift.open = Some(inc.clone());
        x.changed.push(inc);
    }
}

/// The sorted names of the members whose latency `is_in`, marked as in
/// the shift.
fn affected(
    members: &mut HashMap<usize, Member>,
    sorted: &[(f64, usize)],
    is_in: impl Fn(f64) -> bool,
) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for &(l, unit) in sorted {
        if is_in(l)
            && let Some(m) = members.get_mut(&unit)
        {
            m.in_shift = true;
            v.push(m.name.to_string());
        }
    }
    v.sort_unstable();
    v
}

fn shift_summary(
    probe: &str,
    target: &str,
    affected: usize,
    of: usize,
    before: f64,
    after: f64,
    since: u64,
) -> String {
    format!(
        "{probe} ({target}) slower for {affected} of {of} units: median {} ms before, {} ms since {}Z",
        show_ms(before),
        show_ms(after),
        hhmmss(since)
    )
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
