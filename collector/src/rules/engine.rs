//! The engine: per-unit rule state, presence, staleness, clock skew, and
//! the incidents they feed. See the `rules` module documentation.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use muster_proto::{
    AgentStatus, BootId, HostSample, Outcome, Payload, Presence, PresenceReason, ProbeResult,
    Record, UnitId,
};

use super::baseline::{self, Baseline, Sample, UnitStreams};
use super::config::{RulesConfig, ThresholdRule};
use super::field::{AgentM, Field, ProbeM, Selector, Source, selects};
use super::incident::{GroupShare, Incidents, Membership};
use super::peers::{self, PeerMark, Peers};
use super::skew::{self, SkewTracker};
use super::traffic::{self, Traffic, UnitSeen};
use super::words::{self, NetSummary};
use crate::model::{Change, Incident, Reason, Severity, Status, Transition, UnitHealth};
use muster_proto::presence::{PresenceTrack, Verdict};

/// Most probe results kept per (unit, probe) for windowed rules.
const MAX_WINDOW_RESULTS: usize = 4_096;

/// The newest record of a stream: (boot, seq, event time).
type Newest = (BootId, u64, u64);

/// Is `rec` newer than the stream's newest? Within one boot the sequence
/// number decides (an agent whose clock is stepped back by NTP keeps being
/// current); across boots, the live boot by presence (receive order of
/// births: a record of a retired boot is history, whatever its clock said),
/// and only where presence cannot tell, event time.
fn newer(rec: &Record, newest: &Newest, presence: &PresenceTrack) -> bool {
    let (boot, seq, at) = *newest;
    if rec.boot == boot {
        rec.seq > seq
    } else if let Some(older) = presence.is_older_boot(rec.boot, boot) {
        !older
    } else {
        rec.at_ms >= at
    }
}

/// A threshold rule's state for one unit (and one instance, for `[*]`
/// rules). Only kept while the condition holds (pending) or the flag is up.
#[derive(Debug)]
struct Slot {
    rule: u16,
    /// The instance (disk, process, probe name) of a `[*]` rule.
    instance: Option<Box<str>>,
    /// The field as shown: the rule's text, or with `[*]` resolved.
    field: Arc<str>,
    /// Event time the condition started to hold.
    pending_since: u64,
    observed: f64,
    active: bool,
    /// Evaluation stamp, to find `[*]` instances gone from a sample.
    seen: u32,
    /// The message, fixed when the flag went up.
    message: String,
    /// Automation's word on the raised flag ([`Engine::annotate`]):
    /// joins the message.
    note: Option<Box<str>>,
    /// Automation escalated it: one severity step above the rule's.
    escalated: bool,
    /// A baseline rule's level when the flag went up (its reason's
    /// `threshold`); a threshold rule's threshold.
    limit: f64,
}

#[derive(Debug)]
struct ProbeStream {
    name: Box<str>,
    target: Box<str>,
    newest: Newest,
    /// (event time, failed) of recent results, oldest first.
    window: VecDeque<(u64, bool)>,
    group: Option<usize>,
    /// Its peer cohort (`[rules.peers]`).
    peer: Option<peers::Handle>,
}

#[derive(Debug)]
struct Membered {
    group: usize,
    id: String,
    probe: String,
    message: String,
}

#[derive(Debug)]
struct UnitState {
    id: UnitId,
    health: UnitHealth,
    slots: Vec<Slot>,
    stamp: u32,
    host_at: Option<Newest>,
    status_at: Option<Newest>,
    /// The newest facts record (issue 16): its own stream, so a heartbeat
    /// never makes a unit's facts look like history.
    facts_at: Option<Newest>,
    probes: Vec<ProbeStream>,
    /// Collector time anything was last received from the unit.
    last_rx_ms: Option<u64>,
    host_interval_ms: Option<u64>,
    status_interval_ms: Option<u64>,
    /// The believed birth or will, and the live boot (receive order).
    presence: PresenceTrack,
    /// Boot and event time of the newest record.
    newest: Option<(BootId, u64)>,
    /// The believed departure (will or announcement) and since when
    /// (collector ms): `lost.will`, or `off` / `overdue` when announced.
    gone: Option<(u64, Presence)>,
    /// `overdue` since (collector ms), for an announced departure.
    overdue: Option<u64>,
    /// `lost.stale` since (collector ms of the last receipt).
    stale: Option<u64>,
    /// The newest network context the unit reported (a lost reason's evidence).
    net: Option<NetSummary>,
    skew: SkewTracker,
    /// `clock_skew`: (since, estimate).
    skew_flag: Option<(u64, i64)>,
    prev_dropped: Option<u64>,
    incidents: Vec<Membered>,
    /// `slower-than-peers` flags and `latency-shift` reasons, by cohort.
    peer_marks: Vec<(peers::Handle, peers::Mark)>,
    /// Its agency's index in [`Traffic`] (resolved on its first receipt).
    traffic: Option<usize>,
    /// The traffic-drop incident it is one of the silent units of.
    traffic_tag: Option<traffic::Tag>,
    /// Restored from the store, not heard from since.
    restored: bool,
    /// The unit's baseline streams (`super::baseline`).
    base: UnitStreams,
}

impl UnitState {
    fn new(id: UnitId, since_ms: u64) -> Self {
        UnitState {
            id,
            health: UnitHealth::ok(since_ms),
            slots: Vec::new(),
            stamp: 0,
            host_at: None,
            status_at: None,
            facts_at: None,
            probes: Vec::new(),
            last_rx_ms: None,
            host_interval_ms: None,
            status_interval_ms: None,
            presence: PresenceTrack::default(),
            newest: None,
            gone: None,
            overdue: None,
            stale: None,
            net: None,
            skew: SkewTracker::default(),
            skew_flag: None,
            prev_dropped: None,
            incidents: Vec::new(),
            peer_marks: Vec::new(),
            traffic: None,
            traffic_tag: None,
            restored: false,
            base: UnitStreams::default(),
        }
    }

    /// The unit's interval: the smaller of its samples' and its status',
    /// else `[rules.offline] default_interval`.
    fn interval_ms(&self, cfg: &RulesConfig) -> u64 {
        match (self.host_interval_ms, self.status_interval_ms) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(cfg.offline.default_interval_ms),
        }
    }

    fn stale_after_ms(&self, cfg: &RulesConfig) -> u64 {
        let interval = self.interval_ms(cfg);
        (interval.saturating_mul(u64::from(cfg.offline.stale_factor))).max(cfg.offline.min_stale_ms)
    }

    /// Record this record as the newest of its stream; `false` when it is
    /// older than what the stream already has (replayed history).
    fn is_current(&mut self, rec: &Record) -> bool {
        let me = (rec.boot, rec.seq, rec.at_ms);
        let track = &self.presence;
        let newest = match &rec.payload {
            Payload::Host(_) => &mut self.host_at,
            Payload::Status(_) | Payload::Presence(_) | Payload::Config(_) | Payload::Action(_) => {
                &mut self.status_at
            }
            Payload::Facts(_) => &mut self.facts_at,
            Payload::Probe(p) => {
                return match self.probes.iter_mut().find(|s| *s.name == *p.name) {
                    Some(s) if !newer(rec, &s.newest, track) => false,
                    Some(s) => {
                        s.newest = me;
                        true
                    }
                    None => {
                        self.probes.push(ProbeStream {
                            name: p.name.as_str().into(),
                            target: p.target.as_str().into(),
                            newest: me,
                            window: VecDeque::new(),
                            group: None,
                            peer: None,
                        });
                        true
                    }
                };
            }
        };
        match newest {
            Some(n) if !newer(rec, n, track) => false,
            _ => {
                *newest = Some(me);
                true
            }
        }
    }
}

/// What evaluating a value did to a slot.
#[derive(Default)]
struct Effect {
    /// The set of raised flags changed.
    structural: bool,
    /// An observed value of a raised flag changed.
    observed: bool,
}

/// The rules engine. Pure: every entry point takes the collector's clock as
/// `now_ms`; nothing reads the clock, nothing does I/O.
#[derive(Debug)]
pub struct Engine {
    cfg: RulesConfig,
    host_rules: Vec<u16>,
    probe_rules: Vec<u16>,
    status_rules: Vec<u16>,
    /// The longest window of any windowed rule.
    max_window_ms: u64,
    index: HashMap<UnitId, usize>,
    units: Vec<UnitState>,
    incidents: Incidents,
    /// The fields baseline rules look at, and the baselines' counters.
    feeds: Feeds,
    /// Compared with its peers (`[rules.peers]`).
    pub(super) peers: Peers,
    /// The agencies' message rates (`[rules.traffic]`); `None` when off.
    traffic: Option<Traffic>,
    traffic_metrics: Option<Arc<crate::metrics::traffic::TrafficMetrics>>,
}

impl Engine {
    pub fn new(cfg: RulesConfig) -> Engine {
        let by = |src: Source| -> Vec<u16> {
            cfg.threshold
                .iter()
                .enumerate()
                .filter(|(_, r)| r.field.source() == src && r.baseline.is_none())
                .map(|(i, _)| i as u16)
                .collect()
        };
        Engine {
            feeds: Feeds::of(&cfg),
            host_rules: by(Source::Host),
            probe_rules: by(Source::Probe),
            status_rules: by(Source::Status),
            max_window_ms: cfg.threshold.iter().map(|r| r.window_ms).max().unwrap_or(0),
            index: HashMap::new(),
            units: Vec::new(),
            incidents: Incidents::new(cfg.incidents.clone()),
            peers: Peers::new(cfg.peers.clone()),
            traffic: cfg.traffic.clone().map(Traffic::new),
            traffic_metrics: None,
            cfg,
        }
    }

    /// Where the baselines' counters go (the collector's `/metrics`),
    /// published at every tick.
    pub fn set_baseline_metrics(&mut self, m: Arc<crate::metrics::baseline::BaselineMetrics>) {
        self.feeds.metrics = Some(m);
    }

    /// The baselines' counters now.
    pub fn baseline_stats(&self) -> baseline::Stats {
        self.feeds.stats
    }

    /// Every unit's baselines as a snapshot ([`baseline::read`]), for the
    /// store directory at a clean shutdown; `None` when no rule keeps one.
    pub fn baseline_snapshot(&self, now_ms: u64) -> Option<Vec<u8>> {
        if self.feeds.list.is_empty() {
            return None;
        }
        let mut w = baseline::write_header(&self.cfg.baseline, now_ms, &self.feeds.keys);
        let mut n = 0u32;
        let pending = self.feeds.pending.iter();
        for (id, base) in self.units.iter().map(|u| (&u.id, &u.base)).chain(pending) {
            if !base.streams().is_empty() {
                baseline::write_unit(&mut w, &id.agency, &id.unit, base);
                n += 1;
            }
        }
        Some(baseline::finish(w, n))
    }

    /// Loads a snapshot written by [`Engine::baseline_snapshot`] (at most
    /// `max_units` units): each unit gets its streams now or when it is
    /// first known. Streams of metrics no rule looks at now are dropped;
    /// a snapshot of another format or ring length is refused whole.
    /// Returns (units, streams, streams dropped, when it was saved).
    pub fn load_baselines(
        &mut self,
        bytes: &[u8],
        max_units: usize,
    ) -> Result<(usize, usize, usize, u64), baseline::SnapshotError> {
        let keys = &self.feeds.keys;
        let feed_of = |k: &str| keys.iter().position(|x| x == k).map(|i| i as u16);
        let loaded = baseline::read(bytes, &self.cfg.baseline, feed_of, max_units)?;
        let units = loaded.units.len();
        for (agency, unit, base) in loaded.units {
            let Ok(id) = UnitId::new(agency, unit) else {
                continue;
            };
            match self.index.get(&id) {
                Some(&i) => {
                    let (streams, bytes) = base.held();
                    let st = &mut self.feeds.stats;
                    let (was_s, was_b) = self.units[i].base.held();
                    st.streams = (st.streams + streams).saturating_sub(was_s);
                    st.bytes = (st.bytes + bytes).saturating_sub(was_b);
                    self.units[i].base = base;
                }
                None => {
                    self.feeds.pending.insert(id, base);
                }
            }
        }
        Ok((
            units,
            loaded.streams,
            loaded.dropped_streams,
            loaded.saved_ms,
        ))
    }

    /// Where peer comparison's counters go (the collector's `/metrics`).
    pub fn set_peer_metrics(&mut self, m: Arc<crate::metrics::peers::PeerMetrics>) {
        self.peers.set_metrics(m);
    }

    /// Where the agencies' message rates go (the collector's `/metrics`),
    /// published at every tick.
    pub fn set_traffic_metrics(&mut self, m: Arc<crate::metrics::traffic::TrafficMetrics>) {
        self.traffic_metrics = Some(m);
    }

    /// Cluster mode: as [`Engine::new`], but agency-wide incidents are
    /// decided by the coordinator from every owner's shares
    /// ([`Engine::incident_shares`], [`Engine::tag_incidents`]). Peer
    /// comparison (`[rules.peers]`) is off: a collector sees only its
    /// partitions' units, and every owner would open its own latency shift.
    pub fn clustered(cfg: RulesConfig) -> Engine {
        let mut e = Engine::new(cfg);
        e.incidents = Incidents::new_shared(e.cfg.incidents.clone());
        // Traffic drops (`[rules.traffic]`) are off too: an owner sees only
        // its partitions' traffic, a share of each agency's rate.
        if e.traffic.take().is_some() {
            tracing::info!("Traffic drops ([rules.traffic]) are off in cluster mode.");
        }
        if e.peers.enabled() {
            tracing::info!("Peer comparison ([rules.peers]) is off in cluster mode.");
            e.peers = Peers::new(None);
        }
        e
    }

    /// The rules in force.
    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    fn unit_index(&mut self, unit: &UnitId, since_ms: u64) -> usize {
        if let Some(&i) = self.index.get(unit) {
            return i;
        }
        let i = self.units.len();
        let mut u = UnitState::new(unit.clone(), since_ms);
        if let Some(base) = self.feeds.pending.remove(unit) {
            // Its baselines from before the restart.
            let (streams, bytes) = base.held();
            self.feeds.stats.streams += streams;
            self.feeds.stats.bytes += bytes;
            u.base = base;
        }
        self.units.push(u);
        self.index.insert(unit.clone(), i);
        i
    }

    /// Re-seed a unit's health from the store at collector start. Pending
    /// `for` timers are not persisted; flags of rules no longer configured
    /// and incident tags are dropped (incidents are re-derived from live
    /// data). The unit counts as silent from the first `tick` on, so one
    /// that never reports again goes `lost.stale` (an off one stays off).
    /// Stored reasons named before schema v2 (`offline.will`,
    /// `offline.stale`) are read as `lost.*`.
    pub fn restore(&mut self, unit: &UnitId, health: UnitHealth) {
        let i = self.unit_index(unit, health.since_ms);
        let cfg = &self.cfg;
        let u = &mut self.units[i];
        u.restored = true;
        u.slots.clear();
        u.gone = None;
        u.overdue = None;
        u.stale = None;
        u.skew_flag = None;
        u.incidents.clear();
        for r in &health.reasons {
            let placeholder = |reason| Presence {
                online: false,
                boot: BootId(0),
                connection: 0,
                at_ms: 0,
                reason,
            };
            match r.rule.as_str() {
                // The retained state topic is delivered again on subscribe
                // and decides; until then the unit stays lost or off. The
                // stored presence (`restore_presence`) names the boot.
                "offline.will" | "lost.will" => {
                    u.gone = Some((r.since_ms, placeholder(PresenceReason::Lost)));
                }
                "off" => {
                    u.gone = Some((r.since_ms, placeholder(PresenceReason::Shutdown)));
                }
                "overdue" => {
                    // Re-judged by `tick` from when the unit went off.
                    let since = r.observed.map_or(r.since_ms, |v| v as u64);
                    u.gone = Some((since, placeholder(PresenceReason::Shutdown)));
                }
                "offline.stale" | "lost.stale" => u.stale = Some(r.since_ms),
                "clock_skew" => {
                    if cfg.clock_skew.is_some() {
                        let est = r.observed.unwrap_or(0.0) as i64;
                        u.skew_flag = Some((r.since_ms, est));
                    }
                }
                "incident" => {}
                name => {
                    let Some(ri) = cfg.threshold.iter().position(|x| &*x.name == name) else {
                        continue;
                    };
                    let rule = &cfg.threshold[ri];
                    let instance = match rule.field.selector() {
                        Some(Selector::Any) => match Field::parse(&r.field) {
                            Ok(f) => match f.selector() {
                                Some(Selector::Name(n)) => Some(n.as_str().into()),
                                _ => continue,
                            },
                            Err(_) => continue,
                        },
                        _ => None,
                    };
                    let field: Arc<str> = match &instance {
                        Some(_) => r.field.as_str().into(),
                        None => rule.field_text.clone(),
                    };
                    u.slots.push(Slot {
                        rule: ri as u16,
                        instance,
                        field,
                        pending_since: r.since_ms,
                        observed: r.observed.unwrap_or(rule.threshold),
                        active: true,
                        seen: 0,
                        // A note was joined into the stored message.
                        message: r.message.clone(),
                        note: None,
                        escalated: r.severity > rule.severity,
                        limit: r.threshold.unwrap_or(rule.threshold),
                    });
                }
            }
        }
        let reasons = build_reasons(cfg, u);
        let status = status_of(&reasons);
        u.health = UnitHealth {
            status,
            since_ms: if status == health.status {
                health.since_ms
            } else {
                // Config changed what the stored reasons mean.
                health
                    .since_ms
                    .max(reasons.iter().map(|r| r.since_ms).max().unwrap_or(0))
            },
            reasons,
        };
    }

    /// A record arrived (live or replayed). Rules use the record's own event
    /// time `rec.at_ms`; `now_ms` is the collector's clock at receipt.
    ///
    /// A record older than the newest of its stream (host samples, agent
    /// status, each probe by name) is replayed history: it shows the link is
    /// alive (it clears `lost.stale`) but is ignored for the unit's
    /// current state: it neither raises nor clears flags and is not used to
    /// judge clock skew.
    pub fn on_record(&mut self, unit: &UnitId, rec: &Record, now_ms: u64) -> Vec<Change> {
        let ui = self.unit_index(unit, now_ms);
        let cfg = &self.cfg;
        let u = &mut self.units[ui];
        u.restored = false;
        u.last_rx_ms = Some(u.last_rx_ms.map_or(now_ms, |t| t.max(now_ms)));
        if let Some(t) = &mut self.traffic {
            t.receipt(&mut u.traffic, &u.id.agency, now_ms);
        }
        let mut fx = Effect::default();
        let mut at = now_ms;
        if u.stale.take().is_some() {
            fx.structural = true;
        }
        let announcement = matches!(rec.payload, Payload::Presence(_));
        if !announcement && u.presence.record(rec.boot, rec.seq) && u.gone.take().is_some() {
            // Newer data than the departure: the unit is connected again.
            u.overdue = None;
            fx.structural = true;
        }
        if u.is_current(rec) {
            at = rec.at_ms;
            u.newest = Some((rec.boot, rec.at_ms));
            if cfg.clock_skew.is_some() {
                u.skew.observe(rec.at_ms, now_ms);
            }
            match &rec.payload {
                Payload::Host(s) => {
                    if s.interval_ms > 0 {
                        u.host_interval_ms = Some(u64::from(s.interval_ms));
                    }
                    if let Some(n) = &s.network {
                        match &mut u.net {
                            Some(known) => known.update(n),
                            None => u.net = Some(NetSummary::of(n)),
                        }
                    }
                    eval_host(cfg, &self.host_rules, u, s, rec.at_ms, &mut fx);
                    eval_baselines(cfg, &mut self.feeds, u, rec, now_ms, true, &mut fx);
                }
                Payload::Status(s) => {
                    if s.interval_ms > 0 {
                        u.status_interval_ms = Some(u64::from(s.interval_ms));
                    }
                    if let Some(off) = s.clock_offset_ms {
                        u.skew.agent_estimate(off, now_ms);
                    }
                    eval_status(cfg, &self.status_rules, u, s, rec.at_ms, &mut fx);
                    eval_baselines(cfg, &mut self.feeds, u, rec, now_ms, true, &mut fx);
                    u.prev_dropped = Some(s.dropped.total());
                }
                Payload::Probe(p) => {
                    let group =
                        probe_window(u, p, rec.at_ms, self.max_window_ms, &mut self.incidents);
                    eval_probe(cfg, &self.probe_rules, u, p, rec.at_ms, &mut fx);
                    eval_baselines(cfg, &mut self.feeds, u, rec, now_ms, true, &mut fx);
                    if let Some(g) = group {
                        let failing = p.outcome != Outcome::Ok;
                        self.incidents.result(g, ui, &u.id.unit, failing, now_ms);
                    }
                    if self.peers.enabled()
                        && let Some(s) = u.probes.iter_mut().find(|s| *s.name == *p.name)
                    {
                        let id = &u.id;
                        self.peers
                            .result(&mut s.peer, &id.agency, ui, &id.unit, p, now_ms);
                    }
                }
                Payload::Presence(p) => {
                    let nrb = u.newest.map(|(b, _)| b);
                    if u.presence.announcement(p, rec.seq, nrb) == Verdict::Believed {
                        depart(
                            u,
                            ui,
                            p,
                            now_ms,
                            &mut self.incidents,
                            &mut self.peers,
                            &mut fx,
                        );
                    }
                }
                // Not a rule input: the newest is kept with the unit
                // (`Engine::newest_facts` says which record it is).
                Payload::Facts(_) => {}
                // Not rule inputs: kept with the unit's samples (latest).
                Payload::Config(_) => {}
                // The audit of an action: what automation asked for is
                // matched to its outcome by the collector's actions.
                Payload::Action(_) => {}
            }
            eval_skew(cfg, u, now_ms, &mut fx);
        } else {
            // Replayed history builds the baselines, never judged.
            eval_baselines(cfg, &mut self.feeds, u, rec, now_ms, false, &mut fx);
        }
        let mut out = Vec::new();
        refresh(cfg, u, at, &fx, &mut out);
        out
    }

    /// The unit's retained state topic (birth, announcement or will) changed. Whether it
    /// is believed is decided by [`PresenceTrack`] (receive order, never
    /// the agent's clock); the verdict is returned with the changes, and
    /// [`Engine::presence`] gives the believed presence afterwards.
    pub fn on_presence(&mut self, unit: &UnitId, p: &Presence, now_ms: u64) -> Vec<Change> {
        self.on_presence_verdict(unit, p, now_ms).1
    }

    /// [`Engine::on_presence`], with the verdict.
    pub fn on_presence_verdict(
        &mut self,
        unit: &UnitId,
        p: &Presence,
        now_ms: u64,
    ) -> (Verdict, Vec<Change>) {
        let ui = self.unit_index(unit, now_ms);
        let cfg = &self.cfg;
        let u = &mut self.units[ui];
        let verdict = u.presence.presence(p, u.newest.map(|(b, _)| b));
        if verdict != Verdict::Believed {
            return (verdict, Vec::new());
        }
        let mut fx = Effect::default();
        if p.online {
            u.restored = false;
            u.last_rx_ms = Some(u.last_rx_ms.map_or(now_ms, |t| t.max(now_ms)));
            if let Some(t) = &mut self.traffic {
                t.receipt(&mut u.traffic, &u.id.agency, now_ms);
            }
            fx.structural |= u.gone.take().is_some();
            fx.structural |= u.stale.take().is_some();
            u.overdue = None;
        } else {
            depart(
                u,
                ui,
                p,
                now_ms,
                &mut self.incidents,
                &mut self.peers,
                &mut fx,
            );
        }
        let mut out = Vec::new();
        refresh(cfg, u, now_ms, &fx, &mut out);
        (verdict, out)
    }

    /// The presence the engine believes for `unit`.
    pub fn presence(&self, unit: &UnitId) -> Option<Presence> {
        let &i = self.index.get(unit)?;
        self.units[i].presence.current().copied()
    }

    /// The (boot, seq) of the newest facts record of `unit`: the one whose
    /// labels and facts the unit carries now. A facts record older than it
    /// (replayed history) does not replace it.
    pub fn newest_facts(&self, unit: &UnitId) -> Option<(BootId, u64)> {
        let &i = self.index.get(unit)?;
        self.units[i].facts_at.map(|(boot, seq, _)| (boot, seq))
    }

    /// Re-seed which facts record is the unit's newest, from the store at
    /// start (`boot`, `seq`, event time `at_ms`). Call after
    /// [`Engine::restore_presence`], which orders boots.
    pub fn restore_facts(&mut self, unit: &UnitId, boot: BootId, seq: u64, at_ms: u64) {
        let i = self.unit_index(unit, at_ms);
        self.units[i].facts_at = Some((boot, seq, at_ms));
    }

    /// Re-seed a unit's believed presence from the store at start, with the
    /// highest seq stored for its boot (so records the collector already
    /// had never overrule a stored will). Call after [`Engine::restore`].
    pub fn restore_presence(&mut self, unit: &UnitId, p: Presence, max_seq: u64, since_ms: u64) {
        let i = self.unit_index(unit, since_ms);
        let cfg = &self.cfg;
        let u = &mut self.units[i];
        u.presence = PresenceTrack::restored(p, max_seq);
        if !p.online
            && let Some((since, _)) = u.gone
        {
            // The stored reason keeps its since; it now names the boot and
            // the reason.
            u.gone = Some((since, p));
            u.health.reasons = build_reasons(cfg, u);
        }
    }

    /// Called about once a second: staleness, incident aggregation/expiry.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Change> {
        let cfg = &self.cfg;
        let mut out = Vec::new();
        if let Some(m) = &self.feeds.metrics {
            m.publish(&self.feeds.stats);
        }
        for u in &mut self.units {
            if u.restored && u.last_rx_ms.is_none() {
                // Restored at start: silent from now on unless it reports.
                u.last_rx_ms = Some(now_ms);
            }
            let Some(rx) = u.last_rx_ms else { continue };
            if let Some((since, p)) = u.gone
                && p.reason.is_announced()
            {
                // Off: staleness does not apply; overdue past its limit, and
                // a restart not back within `back_within` plus the unit's
                // stale allowance is lost.
                let back_within = match p.reason {
                    PresenceReason::Stop { back_within_ms } => back_within_ms,
                    _ => None,
                };
                let limit = back_within.unwrap_or_else(|| cfg.off.max_for(&u.id.agency));
                let mut fx = Effect::default();
                if u.overdue.is_none() && now_ms.saturating_sub(since) >= limit {
                    u.overdue = Some(since.saturating_add(limit));
                    fx.structural = true;
                }
                if let Some(b) = back_within
                    && u.stale.is_none()
                    && now_ms.saturating_sub(since) >= b.saturating_add(u.stale_after_ms(cfg))
                {
                    u.stale = Some(rx);
                    fx.structural = true;
                }
                refresh(cfg, u, now_ms, &fx, &mut out);
                continue;
            }
            if u.stale.is_none()
                && u.gone.is_none()
                && now_ms.saturating_sub(rx) >= u.stale_after_ms(cfg)
            {
                u.stale = Some(rx);
                u.slots.retain(|s| s.active);
                let fx = Effect {
                    structural: true,
                    observed: false,
                };
                refresh(cfg, u, now_ms, &fx, &mut out);
            }
        }
        if self.incidents.enabled() {
            let mut changed: Vec<Incident> = Vec::new();
            let mut members: Vec<Membership> = Vec::new();
            self.incidents.tick(now_ms, &mut changed, &mut members);
            // Units first, so a feed that sees the incident finds its units tagged.
            let mut touched: Vec<usize> = Vec::new();
            for (ui, group, id) in members {
                let u = &mut self.units[ui];
                u.incidents.retain(|m| m.group != group);
                if let Some(id) = id {
                    let (agency, probe, target) = self.incidents.summary_of(group);
                    u.incidents.push(Membered {
                        group,
                        message: format!(
                            "{probe} ({target}) is failing for many units of {agency}: incident {id}"
                        ),
                        id,
                        probe: probe.to_string(),
                    });
                }
                touched.push(ui);
            }
            refresh_then_incidents(cfg, &mut self.units, touched, changed, now_ms, &mut out);
        }
        if self.peers.enabled() {
            let mut marks: Vec<PeerMark> = Vec::new();
            let mut changed: Vec<Incident> = Vec::new();
            self.peers.tick(now_ms, &mut marks, &mut changed);
            // Units first, so a feed that sees the incident finds its units tagged.
            let mut touched: Vec<usize> = Vec::new();
            for m in marks {
                let Some(u) = self.units.get_mut(m.unit) else {
                    continue;
                };
                u.peer_marks.retain(|(h, _)| *h != m.cohort);
                match m.mark {
                    Some(mark) if !m.structural => {
                        // Only `observed` changed: in place, no transition.
                        if let Some(r) = u
                            .health
                            .reasons
                            .iter_mut()
                            .find(|r| r.rule == mark.rule && r.field == mark.field)
                        {
                            r.observed = mark.observed;
                        }
                        u.peer_marks.push((m.cohort, mark));
                    }
                    Some(mark) => {
                        u.peer_marks.push((m.cohort, mark));
                        touched.push(m.unit);
                    }
                    None => touched.push(m.unit),
                }
            }
            refresh_then_incidents(cfg, &mut self.units, touched, changed, now_ms, &mut out);
        }
        if let Some(t) = &mut self.traffic {
            let mut changed: Vec<Incident> = Vec::new();
            let mut tags: Vec<(usize, Option<traffic::Tag>)> = Vec::new();
            let seen = self.units.iter().enumerate().filter_map(|(i, u)| {
                // Restored at start and not heard since: not counted.
                if u.restored {
                    return None;
                }
                Some(UnitSeen {
                    unit: i,
                    agency: u.traffic?,
                    name: &u.id.unit,
                    last_rx_ms: u.last_rx_ms?,
                    interval_ms: u.interval_ms(cfg),
                    departed: u.gone.is_some_and(|(_, p)| p.reason.is_announced()),
                })
            });
            t.tick(now_ms, seen, &mut changed, &mut tags);
            // Units first, so a feed that sees the incident finds its units tagged.
            let fx = Effect {
                structural: true,
                observed: false,
            };
            for (ui, tag) in tags {
                let u = &mut self.units[ui];
                u.traffic_tag = tag;
                refresh(cfg, u, now_ms, &fx, &mut out);
            }
            out.extend(changed.into_iter().map(Change::Incident));
            if let Some(m) = &self.traffic_metrics {
                m.publish(t.views(), t.unwatched());
            }
        }
        out
    }

    /// Automation's word on the raised flags of threshold rule `rule` on
    /// `unit` (`crate::automation`): `note` joins each one's message
    /// ("auto: restart-cad-client at 14:02Z, exit 0"), `escalate` raises
    /// its severity one step (kept until the flag clears). Either is a
    /// transition (a note alone: from and to the same status).
    /// Nothing when the flag is not raised (it cleared meanwhile).
    pub fn annotate(
        &mut self,
        unit: &UnitId,
        rule: &str,
        note: Option<&str>,
        escalate: bool,
        now_ms: u64,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        let (Some(&ui), Some(ri)) = (
            self.index.get(unit),
            self.cfg.threshold.iter().position(|r| *r.name == *rule),
        ) else {
            return out;
        };
        let u = &mut self.units[ui];
        let mut fx = Effect::default();
        for s in u
            .slots
            .iter_mut()
            .filter(|s| s.active && usize::from(s.rule) == ri)
        {
            if let Some(n) = note {
                s.note = Some(n.into());
            }
            s.escalated |= escalate;
            fx.structural = true;
        }
        refresh(&self.cfg, u, now_ms, &fx, &mut out);
        if fx.structural && out.is_empty() && note.is_some() {
            // Same flags, same severity, a new note: still a transition (in
            // place), so the events, the stream and webhooks carry it.
            out.push(Change::Transition(Transition {
                agency: u.id.agency.clone(),
                unit: u.id.unit.clone(),
                from: u.health.status,
                to: u.health.status,
                at_ms: now_ms,
                reasons: u.health.reasons.clone(),
            }));
        }
        out
    }

    pub fn health(&self, unit: &UnitId) -> Option<&UnitHealth> {
        self.index.get(unit).map(|&i| &self.units[i].health)
    }

    /// Forgets a unit (cluster mode: its partition moved to another
    /// collector, which restores it from the shared store). Its pending
    /// `for` timers and windows go with it; incidents already open keep
    /// their membership until re-derived.
    pub fn forget(&mut self, unit: &UnitId) {
        let Some(i) = self.index.remove(unit) else {
            return;
        };
        let last = self.units.len() - 1;
        let (streams, bytes) = self.units[i].base.held();
        let st = &mut self.feeds.stats;
        st.streams = st.streams.saturating_sub(streams);
        st.bytes = st.bytes.saturating_sub(bytes);
        self.units.swap_remove(i);
        if let Some(moved) = self.units.get(i) {
            self.index.insert(moved.id.clone(), i);
        }
        self.incidents.forget(i, (i != last).then_some(last));
        self.peers.forget(i, (i != last).then_some(last));
        if let Some(t) = &mut self.traffic {
            t.forget(i, (i != last).then_some(last));
        }
    }

    /// Cluster mode: the incident groups that changed (and, once per
    /// quarter window, every non-empty one), for the owner to store as its
    /// partitions' shares ([`super::incident::Board`] decides).
    pub fn incident_shares(&mut self, now_ms: u64) -> Vec<GroupShare> {
        let mut out = Vec::new();
        self.incidents.shares(now_ms, &mut out);
        out
    }

    /// Cluster mode: tags units with the open incidents (as decided by the
    /// coordinator and read from the store) that name them, and untags
    /// the rest; returns the transitions this causes.
    pub fn tag_incidents<'a>(
        &mut self,
        open: impl IntoIterator<Item = &'a Incident>,
        now_ms: u64,
    ) -> Vec<Change> {
        let mut want: HashMap<usize, Vec<Membered>> = HashMap::new();
        if self.incidents.enabled() {
            for inc in open {
                if inc.ended_ms.is_some() {
                    continue;
                }
                for name in &inc.affected {
                    let Ok(id) = UnitId::new(inc.agency.clone(), name.clone()) else {
                        continue;
                    };
                    let Some(&ui) = self.index.get(&id) else {
                        continue;
                    };
                    let group = self.incidents.group(&inc.agency, &inc.probe, &inc.target);
                    want.entry(ui).or_default().push(Membered {
                        group,
                        message: format!(
                            "{} ({}) is failing for many units of {}: incident {}",
                            inc.probe, inc.target, inc.agency, inc.id
                        ),
                        id: inc.id.clone(),
                        probe: inc.probe.clone(),
                    });
                }
            }
        }
        let cfg = &self.cfg;
        let fx = Effect {
            structural: true,
            observed: false,
        };
        let mut out = Vec::new();
        for (ui, u) in self.units.iter_mut().enumerate() {
            let mut w = want.remove(&ui).unwrap_or_default();
            w.sort_by(|a, b| a.id.cmp(&b.id));
            let same = w.len() == u.incidents.len()
                && w.iter().zip(&u.incidents).all(|(a, b)| a.id == b.id);
            if !same {
                u.incidents = w;
                refresh(cfg, u, now_ms, &fx, &mut out);
            }
        }
        out
    }

    /// Every unit the engine knows, with its health.
    pub fn units(&self) -> impl Iterator<Item = (&UnitId, &UnitHealth)> {
        self.units.iter().map(|u| (&u.id, &u.health))
    }

    /// Open incidents (a latency shift is one too).
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents
            .open()
            .chain(self.peers.open())
            .chain(self.traffic.iter().flat_map(|t| t.open()))
    }
}

/// One rule being evaluated on one record.
#[derive(Clone, Copy)]
struct Eval<'a> {
    idx: u16,
    rule: &'a ThresholdRule,
    /// The unit's evaluation stamp for this rule and record.
    stamp: u32,
    /// The record's event time.
    at: u64,
}

/// Whether a value satisfies a rule: raises it (pending, then up after
/// `for`), keeps a raised flag up; for a baseline rule, the baseline it
/// was judged against.
#[derive(Clone, Copy)]
struct Cond {
    raise: bool,
    stay: bool,
    base: Option<Baseline>,
}

/// Updates one slot with a value taken at event time `ev.at`, judged by the
/// rule's operator and threshold.
fn eval_value(
    ev: Eval<'_>,
    slots: &mut Vec<Slot>,
    instance: Option<&str>,
    v: f64,
    fx: &mut Effect,
) {
    let rule = ev.rule;
    let cond = Cond {
        raise: rule.op.holds(v, rule.threshold),
        stay: rule.op.holds(v, rule.clear),
        base: None,
    };
    eval_cond(ev, slots, instance, v, cond, fx);
}

/// Updates one slot with a value taken at event time `ev.at`, as `c` judges it.
fn eval_cond(
    ev: Eval<'_>,
    slots: &mut Vec<Slot>,
    instance: Option<&str>,
    v: f64,
    c: Cond,
    fx: &mut Effect,
) {
    let Eval {
        idx: rule_idx,
        rule,
        stamp,
        at,
    } = ev;
    let pos = slots
        .iter()
        .position(|s| s.rule == rule_idx && s.instance.as_deref() == instance);
    match pos {
        Some(i) => {
            let s = &mut slots[i];
            s.seen = stamp;
            if s.active {
                if c.stay {
                    if s.observed.to_bits() != v.to_bits() {
                        s.observed = v;
                        fx.observed = true;
                    }
                } else {
                    slots.swap_remove(i);
                    fx.structural = true;
                }
            } else if c.raise {
                s.observed = v;
                if at.saturating_sub(s.pending_since) >= rule.for_ms {
                    raise(rule, s, c.base);
                    fx.structural = true;
                }
            } else {
                slots.swap_remove(i);
            }
        }
        None => {
            if c.raise {
                let field = match instance {
                    Some(name) => Field::instance_text(&rule.field_text, name).into(),
                    None => rule.field_text.clone(),
                };
                let mut s = Slot {
                    rule: rule_idx,
                    instance: instance.map(Into::into),
                    field,
                    pending_since: at,
                    observed: v,
                    active: false,
                    seen: stamp,
                    message: String::new(),
                    note: None,
                    escalated: false,
                    limit: rule.threshold,
                };
                if rule.for_ms == 0 {
                    raise(rule, &mut s, c.base);
                    fx.structural = true;
                }
                slots.push(s);
            }
        }
    }
}

fn raise(rule: &ThresholdRule, s: &mut Slot, base: Option<Baseline>) {
    s.active = true;
    let mut m = format!(
        "{} {} {} {}",
        s.field,
        rule.show(s.observed),
        rule.op.as_str(),
        rule.show(rule.threshold)
    );
    if rule.field.is_bool() || rule.field.is_kind() {
        m = format!(
            "{} {} {}",
            s.field,
            rule.op.as_str(),
            rule.show(rule.threshold)
        );
    }
    if let (Some(op), Some(b)) = (&rule.baseline, &base) {
        // `probe["cad-api"].total_ms 912 ms, usual 84 ms (median, MAD 6 ms, ...)`.
        s.limit = op.level(b);
        m = baseline::describe(&s.field, s.observed, b, rule.field.value_unit());
    }
    if rule.window_ms > 0 {
        m.push_str(&format!(
            " over {}",
            humantime::format_duration(Duration::from_millis(rule.window_ms))
        ));
    }
    if rule.for_ms > 0 {
        m.push_str(&format!(
            " for {}",
            humantime::format_duration(Duration::from_millis(rule.for_ms))
        ));
    }
    s.message = m;
}

/// The fields baseline rules look at (each metric once, with the rules on
/// it), and the baselines' counters.
#[derive(Debug, Default)]
struct Feeds {
    list: Vec<Feed>,
    /// Indexes into `list` by the record kind they read.
    host: Vec<u16>,
    probe: Vec<u16>,
    status: Vec<u16>,
    stats: baseline::Stats,
    metrics: Option<Arc<crate::metrics::baseline::BaselineMetrics>>,
    /// Each feed's key in a snapshot: `probe[*].total_ms@0`.
    keys: Vec<String>,
    /// Streams loaded from a snapshot for units the engine does not know
    /// yet: given to each unit as it comes (`Engine::unit_index`).
    pending: HashMap<UnitId, UnitStreams>,
}

/// One metric baseline rules look at: every instance (`[*]`) of it that
/// one of `rules` selects keeps a stream.
#[derive(Debug)]
struct Feed {
    field: Field,
    window_ms: u64,
    rules: Vec<u16>,
}

impl Feeds {
    fn of(cfg: &RulesConfig) -> Feeds {
        let mut f = Feeds::default();
        for (i, r) in cfg.threshold.iter().enumerate() {
            if r.baseline.is_none() {
                continue;
            }
            let field = r.field.with_any();
            let at = match f
                .list
                .iter()
                .position(|x| x.field == field && x.window_ms == r.window_ms)
            {
                Some(j) => j,
                None => {
                    let j = f.list.len();
                    match field.source() {
                        Source::Host => f.host.push(j as u16),
                        Source::Probe => f.probe.push(j as u16),
                        Source::Status => f.status.push(j as u16),
                    }
                    f.list.push(Feed {
                        field,
                        window_ms: r.window_ms,
                        rules: Vec::new(),
                    });
                    f.keys.push(format!(
                        "{}@{}",
                        Field::any_text(&r.field_text),
                        r.window_ms
                    ));
                    j
                }
            };
            f.list[at].rules.push(i as u16);
        }
        f
    }
}

/// The failure ratio over the last `window_ms` before `at`, of a probe's
/// recent results; `None` without results.
fn failure_ratio(w: &VecDeque<(u64, bool)>, at: u64, window_ms: u64) -> Option<f64> {
    let horizon = at.saturating_sub(window_ms);
    let (n, failed) = w
        .iter()
        .rev()
        .take_while(|(t, _)| *t > horizon)
        .fold((0u32, 0u32), |(n, f), (_, failed)| {
            (n + 1, f + u32::from(*failed))
        });
    (n > 0).then(|| f64::from(failed) / f64::from(n))
}

/// Baseline rules (`above_baseline`, `below_baseline`): each value of a
/// field one of them looks at goes into the unit's stream for it, by its
/// event time; a `current` record's value is then judged against the
/// stream's baseline (no baseline: the condition does not hold). Replayed
/// history (`current == false`) only builds the baselines; it has no
/// `failure_ratio` (the window holds current results) nor `dropped_new`.
fn eval_baselines(
    cfg: &RulesConfig,
    feeds: &mut Feeds,
    u: &mut UnitState,
    rec: &Record,
    now_ms: u64,
    current: bool,
    fx: &mut Effect,
) {
    let (payload, at) = (&rec.payload, rec.at_ms);
    let ids = match payload {
        Payload::Host(_) => &feeds.host,
        Payload::Probe(_) => &feeds.probe,
        Payload::Status(_) => &feeds.status,
        _ => return,
    };
    if ids.is_empty() {
        return;
    }
    u.stamp = u.stamp.wrapping_add(1);
    let stamp = u.stamp;
    let UnitState {
        id,
        slots,
        base,
        probes,
        prev_dropped,
        ..
    } = u;
    let agency = id.agency.as_str();
    let stats = &mut feeds.stats;
    for &fi in ids {
        let feed = &feeds.list[usize::from(fi)];
        let mut take = |inst: Option<&str>, v: f64| {
            let wanted = |ri: &u16| {
                let r = &cfg.threshold[usize::from(*ri)];
                r.applies_to(agency) && inst.is_none_or(|n| r.field.selects_instance(n))
            };
            if !feed.rules.iter().any(wanted) {
                return;
            }
            let sample = Sample {
                feed: fi,
                instance: inst,
                at_ms: at,
                value: v,
            };
            let b = base.observe(&cfg.baseline, sample, now_ms, current, stats);
            if !current {
                return;
            }
            for ri in feed.rules.iter().filter(|ri| wanted(ri)) {
                let rule = &cfg.threshold[usize::from(*ri)];
                let Some(op) = &rule.baseline else { continue };
                let instance = match rule.field.selector() {
                    Some(Selector::Any) => inst,
                    _ => None,
                };
                let cond = match &b {
                    Some(b) => Cond {
                        raise: op.raises(v, b),
                        stay: op.stays(v, b),
                        base: Some(*b),
                    },
                    // No baseline yet: the condition does not hold.
                    None => Cond {
                        raise: false,
                        stay: false,
                        base: None,
                    },
                };
                let ev = Eval {
                    idx: *ri,
                    rule,
                    stamp,
                    at,
                };
                eval_cond(ev, slots, instance, v, cond, fx);
            }
        };
        let had_data = match (payload, &feed.field) {
            (Payload::Host(s), f) => f.host_values(s, &mut take),
            (Payload::Probe(p), Field::Probe(_, m)) => {
                let v = if *m == ProbeM::FailureRatio {
                    if !current {
                        continue;
                    }
                    probes
                        .iter()
                        .find(|x| *x.name == *p.name)
                        .and_then(|x| failure_ratio(&x.window, at, feed.window_ms))
                } else {
                    Field::probe_value(*m, p)
                };
                if let Some(v) = v {
                    take(Some(&p.name), v);
                }
                false
            }
            (Payload::Status(s), Field::Agent(m)) => {
                if !current && *m == AgentM::DroppedNew {
                    continue;
                }
                if let Some(v) = Field::agent_value(*m, s, *prev_dropped) {
                    take(None, v);
                }
                false
            }
            _ => false,
        };
        if current && had_data {
            // `[*]` instances gone from the sample (a disk unmounted): their flags go.
            for &ri in &feed.rules {
                let rule = &cfg.threshold[usize::from(ri)];
                if matches!(rule.field.selector(), Some(Selector::Any)) {
                    let before = slots.len();
                    slots.retain(|x| x.rule != ri || x.seen == stamp);
                    if slots.len() != before {
                        fx.structural = true;
                    }
                }
            }
        }
    }
}

fn eval_host(
    cfg: &RulesConfig,
    rules: &[u16],
    u: &mut UnitState,
    s: &HostSample,
    at: u64,
    fx: &mut Effect,
) {
    for &ri in rules {
        let rule = &cfg.threshold[usize::from(ri)];
        if !rule.applies_to(&u.id.agency) {
            continue;
        }
        u.stamp = u.stamp.wrapping_add(1);
        let stamp = u.stamp;
        let ev = Eval {
            idx: ri,
            rule,
            stamp,
            at,
        };
        let slots = &mut u.slots;
        let had_data = rule
            .field
            .host_values(s, |inst, v| eval_value(ev, slots, inst, v, fx));
        if had_data && matches!(rule.field.selector(), Some(Selector::Any)) {
            // Instances gone from the sample (a disk unmounted): their flags go.
            let before = slots.len();
            slots.retain(|x| x.rule != ri || x.seen == stamp);
            if slots.len() != before {
                fx.structural = true;
            }
        }
    }
}

fn eval_status(
    cfg: &RulesConfig,
    rules: &[u16],
    u: &mut UnitState,
    s: &AgentStatus,
    at: u64,
    fx: &mut Effect,
) {
    for &ri in rules {
        let rule = &cfg.threshold[usize::from(ri)];
        if !rule.applies_to(&u.id.agency) {
            continue;
        }
        let Field::Agent(m) = rule.field else {
            continue;
        };
        if let Some(v) = Field::agent_value(m, s, u.prev_dropped) {
            let ev = Eval {
                idx: ri,
                rule,
                stamp: u.stamp,
                at,
            };
            eval_value(ev, &mut u.slots, None, v, fx);
        }
    }
}

/// Adds a current probe result to its stream's window; returns the stream's
/// incident group (resolved once per stream and target).
fn probe_window(
    u: &mut UnitState,
    p: &ProbeResult,
    at: u64,
    max_window_ms: u64,
    inc: &mut Incidents,
) -> Option<usize> {
    let s = u.probes.iter_mut().find(|s| *s.name == *p.name)?;
    if *s.target != *p.target {
        // Reconfigured: another target is another series.
        s.target = p.target.as_str().into();
        s.window.clear();
        s.group = None;
    }
    if max_window_ms > 0 {
        let horizon = at.saturating_sub(max_window_ms);
        while s.window.front().is_some_and(|(t, _)| *t <= horizon)
            || s.window.len() >= MAX_WINDOW_RESULTS
        {
            s.window.pop_front();
        }
        s.window.push_back((at, p.outcome != Outcome::Ok));
    }
    if !inc.enabled() {
        return None;
    }
    if s.group.is_none() {
        s.group = Some(inc.group(&u.id.agency, &p.name, &p.target));
    }
    s.group
}

fn eval_probe(
    cfg: &RulesConfig,
    rules: &[u16],
    u: &mut UnitState,
    p: &ProbeResult,
    at: u64,
    fx: &mut Effect,
) {
    let stream = u.probes.iter().position(|s| *s.name == *p.name);
    for &ri in rules {
        let rule = &cfg.threshold[usize::from(ri)];
        let Field::Probe(sel, m) = &rule.field else {
            continue;
        };
        if !selects(sel, &p.name) || !rule.applies_to(&u.id.agency) {
            continue;
        }
        let v = if *m == ProbeM::FailureRatio {
            stream.and_then(|i| failure_ratio(&u.probes[i].window, at, rule.window_ms))
        } else {
            Field::probe_value(*m, p)
        };
        let Some(v) = v else { continue };
        let instance = match sel {
            Selector::Any => Some(p.name.as_str()),
            Selector::Name(_) => None,
        };
        let ev = Eval {
            idx: ri,
            rule,
            stamp: u.stamp,
            at,
        };
        eval_value(ev, &mut u.slots, instance, v, fx);
    }
}

fn eval_skew(cfg: &RulesConfig, u: &mut UnitState, now_ms: u64, fx: &mut Effect) {
    let Some(sk) = &cfg.clock_skew else { return };
    let Some(est) = u.skew.estimate(now_ms) else {
        return;
    };
    let limit = i64::try_from(sk.threshold_ms).unwrap_or(i64::MAX);
    match &mut u.skew_flag {
        None if est.abs() > limit => {
            u.skew_flag = Some((now_ms, est));
            fx.structural = true;
        }
        // Hysteresis: clears at three quarters of the threshold.
        Some(_) if est.abs() <= limit / 4 * 3 => {
            u.skew_flag = None;
            fx.structural = true;
        }
        Some((_, e)) if *e != est => {
            *e = est;
            fx.observed = true;
        }
        _ => {}
    }
}

/// A departure (will or announcement) was believed: the unit is `lost` or
/// `off`. An off unit leaves its incident groups (it is neither counted nor
/// failing there).
fn depart(
    u: &mut UnitState,
    ui: usize,
    p: &Presence,
    now_ms: u64,
    inc: &mut Incidents,
    peers: &mut Peers,
    fx: &mut Effect,
) {
    let same_kind = u
        .gone
        .is_some_and(|(_, g)| g.reason.is_announced() == p.reason.is_announced());
    let since = match u.gone {
        Some((t, _)) if same_kind => t,
        _ => {
            u.overdue = None;
            now_ms
        }
    };
    if !same_kind || u.stale.is_some() {
        // Continuity is lost: a `for` timer starts again with new data.
        u.slots.retain(|s| s.active);
        u.stale = None;
        fx.structural = true;
    }
    if u.gone.is_none_or(|(_, g)| g.reason != p.reason) {
        fx.structural = true;
    }
    u.gone = Some((since, *p));
    if p.reason.is_announced() {
        for s in &mut u.probes {
            if let Some(g) = s.group {
                inc.leave(g, ui);
            }
            if let Some(h) = s.peer {
                peers.leave(h, ui);
            }
        }
    }
}

/// Presence decides first (`lost`, then `overdue`, then `off`: threshold
/// flags stay listed under them), else the worst flag.
fn status_of(reasons: &[Reason]) -> Status {
    for (rule, status) in [
        ("lost.", Status::Lost),
        ("overdue", Status::Overdue),
        ("off", Status::Off),
    ] {
        if reasons.iter().any(|r| r.rule.starts_with(rule)) {
            return status;
        }
    }
    reasons
        .iter()
        .map(|r| Status::from(r.severity))
        .max()
        .unwrap_or(Status::Ok)
}

/// Is the presence reason one of the engine's presence rules?
fn is_presence_rule(rule: &str) -> bool {
    rule.starts_with("lost.") || rule == "off" || rule == "overdue"
}

/// The unit's reasons: presence first (lost, overdue, off), then worst
/// first, then by rule name.
fn build_reasons(cfg: &RulesConfig, u: &UnitState) -> Vec<Reason> {
    let mut out = Vec::new();
    let signal = u.net.as_ref().and_then(|n| n.signal_dbm).map(f64::from);
    match (&u.gone, u.stale) {
        (_, Some(rx)) => {
            let after = u.stale_after_ms(cfg);
            let mut message = words::lost(rx, None, u.net.as_ref());
            match &u.gone {
                Some((since, p)) => {
                    message.push_str(&format!("; not back from {}", words::departure(p, *since)))
                }
                None => message.push_str(&format!(
                    "; no data for {} (allowed {} x interval)",
                    humantime::format_duration(Duration::from_secs(after / 1000)),
                    cfg.offline.stale_factor
                )),
            }
            out.push(Reason {
                rule: "lost.stale".into(),
                severity: Severity::Critical,
                field: "last_seen".into(),
                observed: signal,
                threshold: Some(after as f64),
                since_ms: rx,
                runbook: cfg.runbook_link("lost.stale", cfg.offline.runbook.as_deref()),
                message,
                incident: None,
            });
        }
        (Some((since, p)), None) if !p.reason.is_announced() => {
            let how = match p.reason {
                PresenceReason::Unknown { code } => format!("unknown reason code {code}"),
                _ => "MQTT will".to_string(),
            };
            out.push(Reason {
                rule: "lost.will".into(),
                severity: Severity::Critical,
                field: "presence".into(),
                observed: signal,
                threshold: None,
                since_ms: *since,
                runbook: cfg.runbook_link("lost.will", cfg.offline.runbook.as_deref()),
                message: words::lost(*since, Some(&how), u.net.as_ref()),
                incident: None,
            });
        }
        (Some((since, p)), None) => {
            let said = words::departure(p, *since);
            let limit = match p.reason {
                PresenceReason::Stop {
                    back_within_ms: Some(b),
                } => b,
                _ => cfg.off.max_for(&u.id.agency),
            };
            out.push(match u.overdue {
                None => Reason {
                    rule: "off".into(),
                    severity: Severity::Info,
                    // Which announcement: `presence.shutdown`, `presence.stop`,
                    // `presence.sleep` (the feed's strip reads asleep from it).
                    field: format!("presence.{}", p.reason.as_str()),
                    observed: None,
                    threshold: Some(limit as f64),
                    since_ms: *since,
                    runbook: cfg.runbook_link("off", None),
                    message: said,
                    incident: None,
                },
                Some(at) => Reason {
                    rule: "overdue".into(),
                    severity: Severity::Degraded,
                    field: format!("presence.{}", p.reason.as_str()),
                    // When the unit went off (restored from here).
                    observed: Some(*since as f64),
                    threshold: Some(limit as f64),
                    since_ms: at,
                    runbook: cfg.runbook_link("overdue", cfg.off.runbook.as_deref()),
                    message: format!("{said}: off for longer than {}", words::span(limit)),
                    incident: None,
                },
            });
        }
        (None, None) => {}
    }
    if let (Some((since, est)), Some(sk)) = (u.skew_flag, &cfg.clock_skew) {
        out.push(Reason {
            rule: "clock_skew".into(),
            severity: sk.severity,
            field: "clock_offset_ms".into(),
            observed: Some(est as f64),
            threshold: Some(sk.threshold_ms as f64),
            since_ms: since,
            runbook: cfg.runbook_link("clock_skew", sk.runbook.as_deref()),
            message: format!(
                "{} (more than {})",
                skew::describe(est),
                humantime::format_duration(Duration::from_millis(sk.threshold_ms))
            ),
            incident: None,
        });
    }
    for s in u.slots.iter().filter(|s| s.active) {
        let rule = &cfg.threshold[usize::from(s.rule)];
        let incident = match &rule.field {
            Field::Probe(sel, _) => u
                .incidents
                .iter()
                .map(|m| (m.probe.as_str(), &m.id))
                .chain(
                    u.peer_marks
                        .iter()
                        .filter_map(|(_, m)| Some((m.probe.as_str(), m.incident.as_ref()?))),
                )
                .find(|(probe, _)| match (sel, &s.instance) {
                    (Selector::Name(n), _) => n.as_str() == *probe,
                    (Selector::Any, Some(i)) => **i == **probe,
                    (Selector::Any, None) => false,
                })
                .map(|(_, id)| id.clone()),
            _ => None,
        };
        out.push(Reason {
            rule: rule.name.to_string(),
            severity: if s.escalated {
                rule.severity.escalated()
            } else {
                rule.severity
            },
            field: s.field.to_string(),
            observed: Some(s.observed),
            threshold: Some(if rule.baseline.is_some() {
                s.limit
            } else {
                rule.threshold
            }),
            since_ms: s.pending_since,
            runbook: cfg.runbook_link(&rule.name, rule.runbook.as_deref()),
            message: match &s.note {
                Some(n) => format!("{}; {n}", s.message),
                None => s.message.clone(),
            },
            incident,
        });
    }
    if let Some(ic) = &cfg.incidents {
        for m in &u.incidents {
            out.push(Reason {
                rule: "incident".into(),
                severity: ic.severity,
                field: format!(
                    "probe[\"{}\"]",
                    m.probe.replace('\\', "\\\\").replace('"', "\\\"")
                ),
                observed: None,
                threshold: None,
                since_ms: incident_since(&m.id),
                runbook: cfg.runbook_link("incident", ic.runbook.as_deref()),
                message: m.message.clone(),
                incident: Some(m.id.clone()),
            });
        }
    }
    if let (Some(tc), Some(tag)) = (&cfg.traffic, &u.traffic_tag) {
        out.push(Reason {
            rule: traffic::RULE.into(),
            severity: tc.severity,
            field: traffic::PROBE.into(),
            observed: None,
            threshold: None,
            since_ms: tag.since_ms,
            runbook: cfg.runbook_link(traffic::RULE, tc.runbook.as_deref()),
            message: tag.message.clone(),
            incident: Some(tag.id.clone()),
        });
    }
    if let Some(pc) = &cfg.peers {
        for (_, m) in &u.peer_marks {
            let url = if m.rule == peers::SLOWER {
                &pc.runbook
            } else {
                &pc.shift_runbook
            };
            out.push(Reason {
                rule: m.rule.to_owned(),
                severity: m.severity,
                field: m.field.clone(),
                observed: m.observed,
                threshold: m.threshold,
                since_ms: m.since_ms,
                runbook: cfg.runbook_link(m.rule, url.as_deref()),
                message: m.message.clone(),
                incident: m.incident.clone(),
            });
        }
    }
    out.sort_by(|a, b| {
        let off = |r: &Reason| !is_presence_rule(&r.rule);
        (off(a), std::cmp::Reverse(a.severity), &a.rule, &a.field).cmp(&(
            off(b),
            std::cmp::Reverse(b.severity),
            &b.rule,
            &b.field,
        ))
    });
    out
}

/// The incident id ends with its start time.
fn incident_since(id: &str) -> u64 {
    id.rsplit(':')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// After an input: rebuild the unit's reasons if flags changed and emit a
/// transition when the status, the set of flags (rule and field) or their
/// incident tags changed; otherwise just refresh the observed values.
/// Units first, so a feed that sees an incident finds its units tagged:
/// refreshes each touched unit once (a structural change), then emits the
/// incidents that changed.
fn refresh_then_incidents(
    cfg: &RulesConfig,
    units: &mut [UnitState],
    mut touched: Vec<usize>,
    changed: Vec<Incident>,
    now_ms: u64,
    out: &mut Vec<Change>,
) {
    touched.sort_unstable();
    touched.dedup();
    let fx = Effect {
        structural: true,
        observed: false,
    };
    for ui in touched {
        refresh(cfg, &mut units[ui], now_ms, &fx, out);
    }
    out.extend(changed.into_iter().map(Change::Incident));
}

fn refresh(cfg: &RulesConfig, u: &mut UnitState, at: u64, fx: &Effect, out: &mut Vec<Change>) {
    if fx.structural {
        let reasons = build_reasons(cfg, u);
        let status = status_of(&reasons);
        let same_set = reasons.len() == u.health.reasons.len()
            && reasons.iter().zip(&u.health.reasons).all(|(a, b)| {
                a.rule == b.rule
                    && a.field == b.field
                    && a.incident == b.incident
                    && a.severity == b.severity
            });
        if same_set && status == u.health.status {
            u.health.reasons = reasons;
            return;
        }
        let from = u.health.status;
        let since_ms = if status == from {
            u.health.since_ms
        } else {
            at
        };
        u.health = UnitHealth {
            status,
            since_ms,
            reasons,
        };
        out.push(Change::Transition(Transition {
            agency: u.id.agency.clone(),
            unit: u.id.unit.clone(),
            from,
            to: status,
            at_ms: at,
            reasons: u.health.reasons.clone(),
        }));
    } else if fx.observed {
        for s in u.slots.iter().filter(|s| s.active) {
            let name = &cfg.threshold[usize::from(s.rule)].name;
            if let Some(r) = u
                .health
                .reasons
                .iter_mut()
                .find(|r| *r.rule == **name && *r.field == *s.field)
            {
                r.observed = Some(s.observed);
            }
        }
        if let Some((_, est)) = u.skew_flag
            && let Some(r) = u.health.reasons.iter_mut().find(|r| r.rule == "clock_skew")
        {
            r.observed = Some(est as f64);
        }
    }
}
