//! The ingest worker: one task that owns the rules engine and the units'
//! state. For each message: validate, dedup, account seqs, feed the engine,
//! queue for the store. Every `ingest.commit_interval` (or
//! `ingest.commit_max_records`) it seals a group commit, hands it to a
//! blocking thread that writes and flushes it, keeps ingesting meanwhile,
//! and publishes that commit's acks (one per unit and boot) only once the
//! flush returned. Commits are sequential and a failed one is retried, never
//! skipped, so an ack never covers a record that is not on disk.
//!
//! Backpressure (`super::flow`): the worker holds at most
//! `ingest.receive_maximum` messages it has not answered, and at most two
//! commits' worth (`ingest.commit_max_records` × 2) of their records; past
//! that it stops taking, and the hand-off queues and then the broker hold the rest.
//! The age of the oldest message not yet durable drives the overload state.
//!
//! Acks go to the publisher unsigned; it signs them (schema v2, with the
//! collector's key: an agent frees records only on a signed ack; a v1 unit
//! is answered in v1, unsigned) when it sends them, after merging an ack
//! still queued with a newer one for the same unit (`super::outqueue`).
//!
//! Action steps (`crate::actions`): a unit's audit record, new after dedup,
//! and each step `Control::Action` hands over (a request issued, one
//! expired) get an id from the events' sequence and are committed with the
//! next group commit; a request issued is published only once the commit
//! holding its `requested` step is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_proto::{Body, BootId, Payload, Presence, Record, TopicKind, UnitId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::flow::Overload;
use super::mqtt::Inbound;
use super::parse::{Parsed, Refused};
use super::refusal::{PresenceNote, Refusal, RefusalLog};
use super::settle::{Scope, Settle};
use crate::actions::{ActionEvent, Actions, StoredAction};
use crate::clock::SharedClock;
use crate::config::IngestConfig;
use crate::model::{Change, Incident};
use crate::rules::Engine;
use crate::rules::incident::IncidentShare;
use crate::seq::Observed;
use crate::state::Shared;
use crate::status_pub::{self, AckOut, Out, Outbound};
use crate::store::{CommitBatch, KnownFacts, StoreError, StoredEvent, UnitRecord};
use muster_proto::presence::Verdict;

/// Hands a message to the publisher, counted in `outbound_depth` until it
/// is sent.
pub(crate) fn enqueue(shared: &Shared, out: &mpsc::UnboundedSender<Out>, o: impl Into<Out>) {
    shared.outbound_depth.fetch_add(1, Ordering::Relaxed);
    if out.send(o.into()).is_err() {
        shared.outbound_depth.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Pending {
    samples: Vec<(UnitId, Record)>,
    events: Vec<StoredEvent>,
    incidents: Vec<Incident>,
    /// Cluster mode: the held partitions' incident shares.
    shares: Vec<IncidentShare>,
    /// Seqs stored or seen again in this commit, per unit and boot.
    touched: HashMap<(UnitId, BootId), Vec<u64>>,
    /// When the first message of each unit in this commit arrived.
    first_rx: HashMap<UnitId, Instant>,
    records: usize,
    /// When each message handled for this commit arrived, in order.
    received: Vec<Instant>,
    /// Deliveries to settle once this commit is durable (JetStream), with
    /// the unit each message spoke for (`None`: refused unparsed).
    settle: Vec<(Option<UnitId>, Box<dyn Settle>)>,
    /// Action steps to store with this commit.
    actions: Vec<StoredAction>,
    /// Action requests to publish once this commit (holding their
    /// `requested` steps) is durable.
    publish: Vec<Outbound>,
}

/// What a commit answers once durable: the units' acks, and the messages
/// it frees from the worker's window (when each arrived).
struct Answers {
    acks: Vec<AckOut>,
    received: Vec<Instant>,
    settle: Vec<(Option<UnitId>, Box<dyn Settle>)>,
    /// Action requests whose `requested` steps the commit holds.
    publish: Vec<Outbound>,
}

/// Cluster mode's instructions to the worker from the lease loop.
pub enum Control {
    /// Partitions were acquired: take over their units (read from the
    /// shared store) before any of their messages is pulled.
    Adopt {
        units: Vec<UnitRecord>,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Partitions were lost (the scope already says so, and their pulls
    /// stopped): forget every unit the scope no longer owns, and what is
    /// pending for them (their deliveries are nak'd).
    Release {
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// A change from outside the rules engine (a rollout's step): given
    /// an event id, stored with the next commit and broadcast to the
    /// stream and the webhooks like the engine's own.
    Event(Change),
    /// An action step from outside ingest (`crate::actions`: a request
    /// issued, one expired unanswered): given an id from the same
    /// sequence, streamed, stored with the next commit; `publish` (the
    /// request itself) goes out once that commit is durable.
    Action {
        event: Box<ActionEvent>,
        publish: Option<Outbound>,
    },
}

/// A commit that failed, handed back to be written again.
struct Failed {
    batch: Option<CommitBatch>,
    answers: Answers,
}

struct InFlight {
    task: JoinHandle<(CommitBatch, Result<(), StoreError>)>,
    answers: Answers,
    started: Instant,
    /// Records in the commit.
    records: usize,
}

pub struct Worker {
    engine: Engine,
    units: HashMap<UnitId, UnitRecord>,
    dirty: HashSet<UnitId>,
    pending: Pending,
    next_event_id: u64,
    shared: Arc<Shared>,
    clock: SharedClock,
    out: mpsc::UnboundedSender<Out>,
    overload: Overload,
    /// The last time the worker found nothing waiting for it: a worker that
    /// has not been idle for `ingest.overload_wait` is behind, however
    /// quickly it commits what it takes (the backlog is then in the broker).
    last_idle: Instant,
    /// Commits failed in a row (the log says so once a minute, not per retry).
    failed_commits: u64,
    refusals: RefusalLog,
    notes: RefusalLog<PresenceNote>,
    cfg: IngestConfig,
    publish_status: bool,
    /// Cluster mode: which units this collector owns now.
    scope: Option<Arc<dyn Scope>>,
    /// Changes are broadcast to the feed's stream and webhooks as decided
    /// (single node); in cluster mode they are not: every collector
    /// broadcasts what the shared store's event log holds, whoever decided it.
    broadcast: bool,
    /// Cluster mode: per incident group, the partitions whose share this
    /// collector last stored non-empty (emptied ones are stored once more,
    /// with no member).
    share_parts: HashMap<(String, String, String), BTreeSet<u32>>,
    /// Single node: actions (`crate::actions`), which log units' audit
    /// steps. Without it (cluster mode) they are counted and stored as the
    /// units' samples only.
    actions: Option<Arc<Actions>>,
    /// Rate-limited log of units' action steps.
    action_log: RefusalLog<ActionNote>,
    /// Single node: automation (`crate::automation`), fed transitions,
    /// audit steps and ticks; it asks for actions through `actions`.
    automation: Option<Arc<crate::automation::Automation>>,
    /// Single node: where the engine's baselines are saved at a clean
    /// stop (`crate::rules::baseline::SNAPSHOT_FILE` in the store directory).
    baseline_file: Option<std::path::PathBuf>,
}

/// Units' action steps: one log line per interval (a unit controls how
/// many it sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionNote {
    Step,
}

impl super::refusal::LogReason for ActionNote {
    const COUNT: usize = 1;
    fn index(self) -> usize {
        0
    }
}

impl Worker {
    /// Restores units from the store into the engine and the live view.
    pub fn new(
        mut engine: Engine,
        shared: Arc<Shared>,
        clock: SharedClock,
        out: mpsc::UnboundedSender<Out>,
        cfg: IngestConfig,
        publish_status: bool,
    ) -> Result<Worker, StoreError> {
        let now = clock.now_ms();
        let stored = shared.store.load_units()?;
        let mut units = HashMap::with_capacity(stored.len());
        {
            let mut view = shared.units.write().unwrap_or_else(|e| e.into_inner());
            for u in stored {
                engine.restore(&u.unit, u.health.clone());
                if let Some(p) = u.presence {
                    let max_seq = u.seq.boot(p.boot).map_or(0, |b| b.max_seq());
                    engine.restore_presence(&u.unit, p, max_seq, now);
                }
                if let Some(f) = &u.facts {
                    engine.restore_facts(&u.unit, f.boot, f.seq, f.at_ms);
                }
                view.insert(u.unit.clone(), Arc::new(u.clone()));
                units.insert(u.unit.clone(), u);
            }
        }
        // Incidents open when we stopped are closed: the engine recomputes
        // the ones still going on from fresh data.
        let mut pending = Pending::default();
        {
            let mut incidents = shared.incidents.write().unwrap_or_else(|e| e.into_inner());
            for mut i in shared.store.incidents()? {
                if i.ended_ms.is_none() {
                    i.ended_ms = Some(now);
                    pending.incidents.push(i.clone());
                }
                incidents.insert(i.id.clone(), i);
            }
        }
        let next_event_id = shared.store.last_event_id()? + 1;
        info!(
            units = units.len(),
            next_event_id, "Restored state from the store."
        );
        Ok(Worker {
            units,
            pending,
            next_event_id,
            ..Worker::empty(engine, shared, clock, out, cfg, publish_status)
        })
    }

    /// Cluster mode: the worker starts with no units and adopts and
    /// releases them as partitions move (`Control`); a failed commit is
    /// retried without what is no longer owned; changes are not broadcast
    /// here (every collector broadcasts the shared store's event log), and
    /// event ids are the store's.
    pub fn clustered(
        engine: Engine,
        shared: Arc<Shared>,
        clock: SharedClock,
        out: mpsc::UnboundedSender<Out>,
        cfg: IngestConfig,
        publish_status: bool,
        scope: Arc<dyn Scope>,
    ) -> Worker {
        Worker {
            scope: Some(scope),
            broadcast: false,
            ..Worker::empty(engine, shared, clock, out, cfg, publish_status)
        }
    }

    /// A single node's worker holding nothing yet: no units, nothing
    /// pending, event ids from 1. [`Worker::new`] and [`Worker::clustered`]
    /// start from it.
    fn empty(
        engine: Engine,
        shared: Arc<Shared>,
        clock: SharedClock,
        out: mpsc::UnboundedSender<Out>,
        cfg: IngestConfig,
        publish_status: bool,
    ) -> Worker {
        Worker {
            engine,
            units: HashMap::new(),
            dirty: HashSet::new(),
            pending: Pending::default(),
            next_event_id: 1,
            overload: Overload::new(cfg.overload_wait.as_millis() as u64),
            failed_commits: 0,
            last_idle: Instant::now(),
            refusals: RefusalLog::new(cfg.refusal_log_interval.as_millis() as u64),
            notes: RefusalLog::new(cfg.refusal_log_interval.as_millis() as u64),
            action_log: RefusalLog::new(cfg.refusal_log_interval.as_millis() as u64),
            actions: None,
            automation: None,
            shared,
            clock,
            out,
            cfg,
            publish_status,
            scope: None,
            broadcast: true,
            share_parts: HashMap::new(),
            baseline_file: None,
        }
    }

    /// Saves the engine's baselines to `path` when it stops (single node).
    pub fn with_baseline_file(mut self, path: std::path::PathBuf) -> Worker {
        self.baseline_file = Some(path);
        self
    }

    /// The baselines' snapshot and where it goes, when this worker saves one.
    fn baseline_snapshot(&self) -> Option<(std::path::PathBuf, Vec<u8>)> {
        let path = self.baseline_file.clone()?;
        Some((path, self.engine.baseline_snapshot(self.clock.now_ms())?))
    }

    /// Writes the baselines' snapshot (atomically, fsynced), off the runtime.
    async fn save_baselines(save: Option<(std::path::PathBuf, Vec<u8>)>) {
        let Some((path, bytes)) = save else {
            return;
        };
        let len = bytes.len();
        let write = tokio::task::spawn_blocking(move || {
            muster_base::fsutil::write_atomic(&path, &bytes, muster_base::fsutil::Mode::Default)
                .map(|()| path)
        });
        match write.await {
            Ok(Ok(path)) => {
                info!(path = %path.display(), bytes = len, "Saved the baselines for the next start.")
            }
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot save the baselines: they are learned again after the restart.")
            }
            Err(e) => {
                warn!(error = %e, "Cannot save the baselines: they are learned again after the restart.")
            }
        }
    }

    /// Logs action steps (single node: `crate::actions`).
    pub fn with_actions(mut self, actions: Arc<Actions>) -> Worker {
        self.actions = Some(actions);
        self
    }

    /// Runs automation (single node, with actions): the flags raised in
    /// the restored health are known raised, not new.
    pub fn with_automation(mut self, automation: Arc<crate::automation::Automation>) -> Worker {
        {
            let mut m = automation.lock();
            for (unit, u) in &self.units {
                m.seed(unit, u.health.reasons.iter().map(|r| r.rule.as_str()));
            }
        }
        self.automation = Some(automation);
        self
    }

    /// Carries out what automation says: requests through `actions`,
    /// notes and escalations through the engine, steps as changes.
    fn automate(&mut self, outs: Vec<crate::automation::Out>) {
        use crate::automation::Out as A;
        let Some(auto) = self.automation.clone() else {
            return;
        };
        if outs.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let mut queue: std::collections::VecDeque<A> = outs.into();
        let mut changes = Vec::new();
        let mut requested = false;
        while let Some(o) = queue.pop_front() {
            match o {
                A::Request { unit, rule, action } => {
                    requested = true;
                    let by = crate::actions::request::RequestedBy::Auto(rule.to_string());
                    let sent = match &self.actions {
                        Some(a) => a
                            .request(&unit, &action, &BTreeMap::new(), &by, now)
                            .map_err(|e| e.to_string()),
                        None => Err("this collector sends no actions".to_owned()),
                    };
                    match sent {
                        Ok(issued) => auto.lock().issued(&unit, &rule, issued.nonce),
                        Err(e) => {
                            warn!(%unit, %rule, %action, error = %e, "Automation could not request its action.");
                            queue.extend(auto.lock().issue_failed(&unit, &rule, &e, now));
                        }
                    }
                }
                A::Annotate {
                    unit,
                    rule,
                    note,
                    escalate,
                } => changes.extend(self.engine.annotate(
                    &unit,
                    &rule,
                    note.as_deref(),
                    escalate,
                    now,
                )),
                A::Event(e) => {
                    self.shared.metrics.actions.automation_step(e.step);
                    info!(agency = %e.agency, unit = %e.unit, rule = %e.rule, action = %e.action, step = e.step.as_str(), summary = %e.summary, "Automation step.");
                    changes.push(Change::Automation(e));
                }
            }
        }
        if requested && let Err(e) = auto.save() {
            warn!(error = %e, "Cannot persist automation's limits; they hold until a restart.");
        }
        self.apply_changes(changes);
    }

    /// Runs until `shutdown`, then commits what it holds and publishes the
    /// last acks.
    pub async fn run(self, inbound: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
        let (_tx, control) = mpsc::channel(1);
        self.run_controlled(inbound, control, shutdown).await
    }

    /// As [`Worker::run`], taking cluster mode's [`Control`] too.
    pub async fn run_controlled(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut control: mpsc::Receiver<Control>,
        shutdown: CancellationToken,
    ) {
        self.shared.started.store(true, Ordering::Relaxed);
        let mut commit_timer = tokio::time::interval(self.cfg.commit_interval);
        commit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick_timer = tokio::time::interval(self.cfg.tick_interval);
        tick_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight: Option<InFlight> = None;
        let mut retry_at: Option<Instant> = None;
        loop {
            // Timers come before the inbound queue so that a sustained flood
            // of messages cannot starve commits (acks) or ticks (staleness).
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = async { (&mut in_flight.as_mut().expect("guarded").task).await }, if in_flight.is_some() => {
                    let f = in_flight.take().expect("guarded");
                    match self.finish_commit(f.answers, f.started, r) {
                        Ok(()) => {
                            retry_at = None;
                            if self.pending.records >= self.cfg.commit_max_records {
                                in_flight = self.seal();
                            }
                        }
                        Err(again) => {
                            retry_at = Some(Instant::now() + Duration::from_secs(1));
                            self.requeue(*again);
                        }
                    }
                    self.observe_overload(in_flight.as_ref());
                }
                _ = commit_timer.tick() => {
                    if in_flight.is_none() && retry_at.is_none_or(|t| Instant::now() >= t) {
                        retry_at = None;
                        in_flight = self.seal();
                    }
                }
                Some(c) = control.recv() => self.control(c),
                _ = tick_timer.tick() => {
                    let now = self.clock.now_ms();
                    let changes = self.engine.tick(now);
                    self.apply_changes(changes);
                    if let Some(a) = &self.automation {
                        let outs = a.lock().tick(now);
                        self.automate(outs);
                    }
                    self.incident_round(now);
                    self.shared.worker_ticks.fetch_add(1, Ordering::Relaxed);
                    if inbound.is_empty() {
                        self.last_idle = Instant::now();
                    }
                    self.observe_overload(in_flight.as_ref());
                }
                // Take no more than the window: past it, the hand-off queues
                // fill and the MQTT task stops reading the socket until a
                // commit frees room (flow.rs).
                msg = inbound.recv(), if self.may_take(in_flight.as_ref()) => {
                    let Some(msg) = msg else { break };
                    self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    self.handle(msg);
                    if inbound.is_empty() {
                        self.last_idle = Instant::now();
                    }
                    if in_flight.is_none()
                        && retry_at.is_none()
                        && self.pending.records >= self.cfg.commit_max_records
                    {
                        in_flight = self.seal();
                    }
                }
            }
        }
        // Shutdown: finish the commit in flight, then commit the rest.
        if let Some(f) = in_flight.take() {
            let r = f.task.await;
            if let Err(again) = self.finish_commit(f.answers, f.started, r) {
                self.requeue(*again);
            }
        }
        for _ in 0..3 {
            let Some(f) = self.seal() else { break };
            let r = f.task.await;
            match self.finish_commit(f.answers, f.started, r) {
                Ok(()) => break,
                Err(again) => self.requeue(*again),
            }
        }
        Worker::save_baselines(self.baseline_snapshot()).await;
        info!("Ingest stopped; state committed.");
    }

    /// Messages taken and not yet answered (pending, and the commit in flight).
    fn holding(&self, in_flight: Option<&InFlight>) -> usize {
        self.pending.received.len() + in_flight.map_or(0, |f| f.answers.received.len())
    }

    /// May the worker take another message? Not past its window of
    /// messages, nor past two commits' worth of records (a message may be
    /// a batch of hundreds: the records are what takes memory).
    fn may_take(&self, in_flight: Option<&InFlight>) -> bool {
        let records = self.pending.records + in_flight.map_or(0, |f| f.records);
        self.holding(in_flight) < usize::from(self.cfg.receive_maximum)
            && records < 2 * self.cfg.commit_max_records
    }

    /// Updates the overload state from the oldest message not yet durable
    /// and how long the worker has gone without being idle; one log line
    /// per change.
    fn observe_overload(&mut self, in_flight: Option<&InFlight>) {
        let unstored = in_flight
            .and_then(|f| f.answers.received.first())
            .or(self.pending.received.first())
            .map(|t| t.elapsed().as_millis() as u64);
        let unstored = unstored.unwrap_or(0);
        let busy = self.last_idle.elapsed().as_millis() as u64;
        let Some(on) = self.overload.observe(unstored.max(busy)) else {
            return;
        };
        self.shared.overloaded.store(on, Ordering::Relaxed);
        let m = &self.shared.metrics.ingest;
        if on {
            m.overloads.fetch_add(1, Ordering::Relaxed);
            warn!(
                oldest_unstored_ms = unstored,
                busy_ms = busy,
                holding = self.shared.holding.load(Ordering::Relaxed),
                "Ingest is overloaded: it has been busy, or records have waited to be stored, for longer than ingest.overload_wait; the broker holds the rest (not ready)."
            );
        } else {
            info!(
                oldest_unstored_ms = unstored,
                busy_ms = busy,
                "Ingest has caught up (ready)."
            );
        }
    }

    fn send(&self, o: impl Into<Out>) {
        enqueue(&self.shared, &self.out, o);
    }

    fn refuse(&mut self, r: Refusal, topic: &str, detail: &dyn std::fmt::Display) {
        self.shared.metrics.ingest.refuse(r);
        if let Some(suppressed) = self.refusals.admit(r, self.clock.now_ms()) {
            warn!(reason = r.as_str(), topic, suppressed, %detail, "Refused a message.");
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Event(change) => self.apply_changes(vec![change]),
            Control::Action { event, publish } => {
                // Published only with its audit (no actions here: neither).
                if self.push_action(*event)
                    && let Some(p) = publish
                {
                    self.pending.publish.push(p);
                }
            }
            Control::Adopt { units, done } => {
                let now = self.clock.now_ms();
                let n = units.len();
                let mut view = self.shared.units.write().unwrap_or_else(|e| e.into_inner());
                for u in units {
                    self.engine.forget(&u.unit);
                    self.engine.restore(&u.unit, u.health.clone());
                    if let Some(p) = u.presence {
                        let max_seq = u.seq.boot(p.boot).map_or(0, |b| b.max_seq());
                        self.engine.restore_presence(&u.unit, p, max_seq, now);
                    }
                    if let Some(f) = &u.facts {
                        self.engine.restore_facts(&u.unit, f.boot, f.seq, f.at_ms);
                    }
                    view.insert(u.unit.clone(), Arc::new(u.clone()));
                    self.units.insert(u.unit.clone(), u);
                }
                drop(view);
                info!(
                    units = n,
                    owned = self.units.len(),
                    "Adopted units of acquired partitions."
                );
                let _ = done.send(());
            }
            Control::Release { done } => {
                let before = self.units.len();
                self.drop_unowned();
                info!(
                    units = before - self.units.len(),
                    owned = self.units.len(),
                    "Released units of lost partitions."
                );
                let _ = done.send(());
            }
        }
    }

    /// Cluster mode: stores this collector's shares of agency-wide incident
    /// groups (split by partition) and tags its units with the incidents
    /// the coordinator decided (`rules::incident::Board`), as the feed's
    /// view of the store holds them.
    fn incident_round(&mut self, now: u64) {
        let Some(scope) = self.scope.clone() else {
            return;
        };
        for g in self.engine.incident_shares(now) {
            let mut parts: BTreeMap<u32, (usize, Vec<String>)> = BTreeMap::new();
            for (unit, failing) in g.members {
                let Some(p) = UnitId::new(g.agency.clone(), unit.clone())
                    .ok()
                    .and_then(|u| scope.partition(&u))
                else {
                    continue;
                };
                let e = parts.entry(p).or_default();
                e.0 += 1;
                if failing {
                    e.1.push(unit);
                }
            }
            let key = (g.agency, g.probe, g.target);
            let before = self.share_parts.remove(&key).unwrap_or_default();
            let now_parts: BTreeSet<u32> =
                parts.keys().copied().filter(|&p| scope.holds(p)).collect();
            for p in before.union(&now_parts) {
                if !scope.holds(*p) {
                    continue;
                }
                let (of_units, failing) = parts.remove(p).unwrap_or_default();
                self.pending.shares.push(IncidentShare {
                    partition: *p,
                    agency: key.0.clone(),
                    probe: key.1.clone(),
                    target: key.2.clone(),
                    of_units,
                    failing,
                    as_of_ms: now,
                });
            }
            if !now_parts.is_empty() {
                self.share_parts.insert(key, now_parts);
            }
        }
        let changes = {
            let incidents = self
                .shared
                .incidents
                .read()
                .unwrap_or_else(|e| e.into_inner());
            self.engine.tag_incidents(incidents.values(), now)
        };
        self.apply_changes(changes);
    }

    /// Forgets every unit the scope does not own, with what is pending
    /// for them; their deliveries are nak'd (the new owner gets them).
    fn drop_unowned(&mut self) {
        let Some(scope) = self.scope.clone() else {
            return;
        };
        let gone: Vec<UnitId> = self
            .units
            .keys()
            .filter(|u| !scope.owns(u))
            .cloned()
            .collect();
        for u in &gone {
            self.units.remove(u);
            self.engine.forget(u);
            self.dirty.remove(u);
        }
        let p = &mut self.pending;
        let before = p.samples.len();
        p.samples.retain(|(u, _)| scope.owns(u));
        // `records` counts what this commit took in, not what a failed
        // one handed back (`requeue_all`): it may be below `samples`.
        p.records = p.records.saturating_sub(before - p.samples.len());
        p.events.retain(|e| match &e.change {
            Change::Transition(t) => scope.owns(&t.unit_id()),
            Change::Incident(_) | Change::Rollout(_) => true,
            Change::Automation(a) => {
                UnitId::new(a.agency.clone(), a.unit.clone()).is_ok_and(|u| scope.owns(&u))
            }
        });
        p.touched.retain(|(u, _), _| scope.owns(u));
        p.first_rx.retain(|u, _| scope.owns(u));
        p.shares.retain(|s| scope.holds(s.partition));
        let (keep, nak): (Vec<_>, Vec<_>) = std::mem::take(&mut p.settle)
            .into_iter()
            .partition(|(u, _)| u.as_ref().is_none_or(|u| scope.owns(u)));
        p.settle = keep;
        for (_, s) in nak {
            s.nak();
        }
    }

    /// One message from the broker.
    pub fn handle(&mut self, msg: Inbound) {
        self.shared
            .metrics
            .ingest
            .messages
            .fetch_add(1, Ordering::Relaxed);
        self.pending.received.push(msg.received);
        if let Some(s) = msg.settle {
            let unit = msg.parsed.as_ref().ok().map(|p| p.unit.clone());
            self.pending.settle.push((unit, s));
        }
        self.shared.holding.fetch_add(1, Ordering::Relaxed);
        match msg.parsed {
            Err(Refused {
                reason,
                topic,
                detail,
            }) => self.refuse(reason, &topic, &detail),
            Ok(Parsed {
                unit,
                kind,
                version,
                body,
            }) => match (kind, body) {
                (TopicKind::Telemetry, Body::Record(r)) => {
                    self.records(unit, version, vec![r], msg.received)
                }
                (TopicKind::Telemetry, Body::Batch(rs)) => {
                    self.records(unit, version, rs, msg.received)
                }
                (TopicKind::State, Body::Presence(p)) => self.presence(unit, p),
                // `parse` refuses every other pairing.
                (_, b) => {
                    let detail = format!("{} body", super::parse::body_name(&b));
                    self.refuse(Refusal::UnexpectedBody, &unit.to_string(), &detail);
                }
            },
        }
    }

    /// The unit's state, created for a new unit; `None` (refused and
    /// counted: `unit_limit`) for a new unit while `ingest.max_units` are
    /// known.
    fn unit_entry(&mut self, unit: &UnitId, now: u64) -> Option<&mut UnitRecord> {
        if !self.units.contains_key(unit) {
            if self.units.len() >= self.cfg.max_units {
                let detail = format!("{} units known (ingest.max_units)", self.units.len());
                self.refuse(Refusal::UnitLimit, &unit.to_string(), &detail);
                return None;
            }
            info!(%unit, "New unit.");
            let rec = UnitRecord::new(unit.clone(), now);
            if self.publish_status {
                self.send(status_pub::unit_status(&rec));
            }
            self.units.insert(unit.clone(), rec);
        }
        self.units.get_mut(unit)
    }

    fn records(&mut self, unit: UnitId, version: u8, records: Vec<Record>, received: Instant) {
        let now = self.clock.now_ms();
        let metrics = Arc::clone(&self.shared);
        let m = &metrics.metrics.ingest;
        // A record with seq 0 is malformed (seqs start at 1): refused and
        // counted, and a message of nothing else never creates a unit.
        let bad_seq = records.iter().filter(|r| r.seq == 0).count();
        if bad_seq < records.len() && self.unit_entry(&unit, now).is_none() {
            // Not touched: no ack covers them, and the agent resends.
            return;
        }
        for r in records {
            if r.seq == 0 {
                continue;
            }
            let Some(state) = self.units.get_mut(&unit) else {
                return;
            };
            state.last_seen_ms = now;
            state.wire_version = version;
            let obs = state.seq.observe(r.boot, r.seq, r.at_ms);
            self.pending
                .touched
                .entry((unit.clone(), r.boot))
                .or_default()
                .push(r.seq);
            if obs == Observed::Duplicate {
                m.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            m.records.fetch_add(1, Ordering::Relaxed);
            state.last_at_ms = Some(state.last_at_ms.map_or(r.at_ms, |t| t.max(r.at_ms)));
            match &r.payload {
                Payload::Host(h) if h.interval_ms > 0 => state.interval_ms = Some(h.interval_ms),
                Payload::Status(s) => {
                    if s.interval_ms > 0 {
                        state.interval_ms = Some(s.interval_ms);
                    }
                    state.agent = Some(s.clone());
                }
                Payload::Config(c) => {
                    crate::store::KnownConfig::update(&mut state.config, r.at_ms, c);
                    metrics.metrics.remote.config_step(&c.state);
                }
                _ => {}
            }
            let changes = self.engine.on_record(&unit, &r, now);
            if let Payload::Facts(f) = &r.payload
                && self.engine.newest_facts(&unit) == Some((r.boot, r.seq))
                && let Some(state) = self.units.get_mut(&unit)
            {
                // The unit's newest labels and facts (the engine orders
                // them; replayed history does not replace them).
                state.facts = Some(KnownFacts {
                    boot: r.boot,
                    seq: r.seq,
                    at_ms: r.at_ms,
                    facts: f.clone(),
                });
            }
            if let Payload::Action(a) = &r.payload {
                // New (not a duplicate): logged once, committed with the
                // record and the seq state that makes a replay a duplicate.
                self.unit_action(&unit, &r, a, now);
            }
            if let Payload::Presence(p) = &r.payload {
                // An announcement record: stored and acked like every
                // record; the engine decides whether it is believed.
                self.note_presence(&unit, p);
                if let Some(state) = self.units.get_mut(&unit) {
                    state.presence = self.engine.presence(&unit);
                }
            }
            self.pending.samples.push((unit.clone(), r));
            self.pending.records += 1;
            self.apply_changes(changes);
        }
        if bad_seq > 0 {
            for _ in 0..bad_seq {
                self.refuse(Refusal::Malformed, &unit.to_string(), &"record with seq 0");
            }
        }
        if self.units.contains_key(&unit) {
            self.refresh_health(&unit);
            self.dirty.insert(unit.clone());
            self.pending.first_rx.entry(unit).or_insert(received);
        }
    }

    /// A unit's audit step (a new record): counted, and logged as an action
    /// step when this collector logs them.
    fn unit_action(&mut self, unit: &UnitId, r: &Record, a: &muster_proto::ActionAudit, now: u64) {
        self.shared.metrics.actions.step(&a.step);
        let Some(actions) = self.actions.clone() else {
            return;
        };
        let ev = actions.unit_step(unit, (r.boot, r.seq, r.at_ms), a, now);
        if let (Some(auto), Some(req)) = (self.automation.clone(), &a.request) {
            let outs = auto.lock().audit(unit, req.nonce, &a.step, now);
            self.automate(outs);
        }
        if let Some(suppressed) = self.action_log.admit(ActionNote::Step, now) {
            info!(%unit, step = ev.step.as_str(), request = ev.request.as_deref().unwrap_or("-"), action = ev.action.as_deref().unwrap_or("-"), suppressed, summary = %ev.summary, "Action step from a unit.");
        }
        let _ = self.push_action(ev);
    }

    /// Gives an action step its id, streams it, and stores it with the
    /// next commit; `false` when this worker logs no actions.
    fn push_action(&mut self, event: ActionEvent) -> bool {
        let Some(actions) = self.actions.clone() else {
            return false;
        };
        let stored = Arc::new(StoredAction {
            id: self.next_event_id,
            event,
        });
        self.next_event_id += 1;
        actions.emitted(&stored);
        self.pending.actions.push(Arc::unwrap_or_clone(stored));
        true
    }

    /// Counts a presence by reason; an unknown reason is logged (rate-limited).
    fn note_presence(&mut self, unit: &UnitId, p: &Presence) {
        self.shared.metrics.ingest.presence(p.reason);
        if let muster_proto::PresenceReason::Unknown { code } = p.reason
            && let Some(suppressed) = self
                .notes
                .admit(PresenceNote::UnknownReason, self.clock.now_ms())
        {
            warn!(%unit, code, online = p.online, suppressed,
                "Presence with a reason this collector does not know (a newer agent?): treated as {}.",
                if p.online { "a birth" } else { "lost" });
        }
    }

    fn presence(&mut self, unit: UnitId, p: Presence) {
        let now = self.clock.now_ms();
        self.note_presence(&unit, &p);
        if self.unit_entry(&unit, now).is_none() {
            return;
        }
        // The engine decides what is believed (receive order, never the
        // agent's clock); the unit keeps what the engine believes.
        let (verdict, changes) = self.engine.on_presence_verdict(&unit, &p, now);
        if let Verdict::Ignored(why) = verdict {
            debug!(%unit, boot = %p.boot, connection = p.connection, online = p.online, why, "Presence ignored.");
            return;
        }
        let Some(state) = self.units.get_mut(&unit) else {
            return;
        };
        state.presence = Some(p);
        if p.online {
            state.last_seen_ms = now;
        }
        self.apply_changes(changes);
        self.refresh_health(&unit);
        self.dirty.insert(unit);
    }

    fn refresh_health(&mut self, unit: &UnitId) {
        let (Some(h), Some(state)) = (self.engine.health(unit), self.units.get_mut(unit)) else {
            return;
        };
        if state.health != *h {
            state.health = h.clone();
            self.dirty.insert(unit.clone());
        }
    }

    fn apply_changes(&mut self, changes: Vec<Change>) {
        let mut auto_outs = Vec::new();
        for change in changes {
            let mut touched_agency = None;
            match &change {
                Change::Transition(t) => {
                    self.shared.metrics.transitions.count(t.to);
                    let unit = t.unit_id();
                    if let Some(a) = &self.automation {
                        auto_outs.extend(a.lock().transition(
                            &unit,
                            t.reasons.iter().map(|r| r.rule.as_str()),
                            self.clock.now_ms(),
                        ));
                    }
                    info!(%unit, from = t.from.as_str(), to = t.to.as_str(), "Status changed.");
                    self.refresh_health(&unit);
                    if self.publish_status
                        && let Some(state) = self.units.get(&unit)
                    {
                        self.send(status_pub::unit_status(state));
                    }
                }
                Change::Incident(i) => {
                    self.shared
                        .metrics
                        .transitions
                        .incidents
                        .fetch_add(1, Ordering::Relaxed);
                    info!(id = %i.id, affected = i.affected.len(), of = i.of_units, ended = i.ended_ms.is_some(), "Incident changed.");
                    self.shared
                        .incidents
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(i.id.clone(), i.clone());
                    self.pending.incidents.push(i.clone());
                    for u in &i.affected {
                        if let Ok(id) = UnitId::new(i.agency.clone(), u.clone()) {
                            self.refresh_health(&id);
                        }
                    }
                    touched_agency = Some(i.agency.clone());
                }
                Change::Rollout(r) => {
                    info!(rollout = %r.rollout, step = %r.step, wave = r.wave, phase = %r.phase, summary = %r.summary, "Rollout step.");
                }
                Change::Automation(_) => {}
            }
            let ev = StoredEvent {
                id: self.next_event_id,
                change,
            };
            self.next_event_id += 1;
            if self.broadcast {
                let ev = Arc::new(ev.clone());
                let _ = self.shared.changes.send(ev);
            }
            self.pending.events.push(ev);
            if let (true, Some(agency)) = (self.publish_status, touched_agency) {
                let incidents = self
                    .shared
                    .incidents
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(o) = status_pub::agency_incidents(&agency, incidents.values()) {
                    self.send(o);
                }
            }
        }
        self.automate(auto_outs);
    }

    /// Seals the pending commit and starts writing it. It never waits on
    /// the publisher: the publisher waits on the MQTT task, which waits on
    /// this worker to take messages, so waiting here could close a cycle.
    fn seal(&mut self) -> Option<InFlight> {
        if self.dirty.is_empty()
            && self.pending.samples.is_empty()
            && self.pending.events.is_empty()
            && self.pending.incidents.is_empty()
            && self.pending.shares.is_empty()
            && self.pending.received.is_empty()
            && self.pending.settle.is_empty()
            && self.pending.actions.is_empty()
            && self.pending.publish.is_empty()
        {
            return None;
        }
        let now = self.clock.now_ms();
        let p = std::mem::take(&mut self.pending);
        let mut batch = CommitBatch {
            samples: p.samples,
            events: p.events,
            incidents: p.incidents,
            units: Vec::with_capacity(self.dirty.len()),
            shares: p.shares,
            actions: p.actions,
        };
        {
            let mut view = self.shared.units.write().unwrap_or_else(|e| e.into_inner());
            for id in self.dirty.drain() {
                if let Some(u) = self.units.get(&id) {
                    batch.units.push(u.clone());
                    view.insert(id, Arc::new(u.clone()));
                }
            }
        }
        // The acks are computed now, from seq state that holds exactly what
        // this and earlier commits hold.
        let mut acks = Vec::with_capacity(p.touched.len());
        for ((unit, boot), seqs) in p.touched {
            let Some(state) = self.units.get(&unit) else {
                continue;
            };
            let Some(b) = state.seq.boot(boot) else {
                continue;
            };
            // Signed and encoded by the publisher, which may merge it with
            // a newer one first (outqueue.rs).
            acks.push(AckOut {
                unit: unit.clone(),
                ack: b.ack(&seqs, now),
                version: state.wire_version,
                since: p.first_rx.get(&unit).copied(),
            });
        }
        Some(self.start_commit(
            batch,
            Answers {
                acks,
                received: p.received,
                settle: p.settle,
                publish: p.publish,
            },
        ))
    }

    fn start_commit(&self, batch: CommitBatch, answers: Answers) -> InFlight {
        let store = Arc::clone(&self.shared.store);
        InFlight {
            records: batch.samples.len(),
            task: tokio::task::spawn_blocking(move || {
                let r = if batch.is_empty() {
                    Ok(()) // nothing to write (refused or duplicate messages)
                } else {
                    store.commit(&batch)
                };
                (batch, r)
            }),
            answers,
            started: Instant::now(),
        }
    }

    /// Publishes the acks of a commit that is durable and frees its window; hands a
    /// failed one back.
    fn finish_commit(
        &mut self,
        answers: Answers,
        started: Instant,
        r: Result<(CommitBatch, Result<(), StoreError>), tokio::task::JoinError>,
    ) -> Result<(), Box<Failed>> {
        let shared = Arc::clone(&self.shared);
        let m = &shared.metrics;
        match r {
            Ok((batch, Ok(()))) => {
                if !batch.is_empty() {
                    m.store.commits.fetch_add(1, Ordering::Relaxed);
                    m.store.commit_seconds.observe(started.elapsed());
                }
                m.ingest
                    .stored
                    .fetch_add(batch.samples.len() as u64, Ordering::Relaxed);
                self.shared.store_ok.store(true, Ordering::Relaxed);
                if self.failed_commits > 0 {
                    info!(
                        failed = self.failed_commits,
                        "Store commits succeed again; acks resume."
                    );
                    self.failed_commits = 0;
                }
                for a in answers.acks {
                    self.send(Out::Ack(a));
                }
                // Their `requested` steps are durable now.
                for p in answers.publish {
                    self.send(p);
                }
                if !batch.actions.is_empty()
                    && let Some(a) = &self.actions
                {
                    a.committed();
                }
                for (_, s) in answers.settle {
                    s.ack();
                }
                let now = Instant::now();
                for at in &answers.received {
                    m.ingest.wait.observe(now.duration_since(*at));
                }
                self.shared
                    .holding
                    .fetch_sub(answers.received.len(), Ordering::Relaxed);
                Ok(())
            }
            Ok((batch, Err(StoreError::Fenced { partition, epoch }))) => {
                // Cluster mode: the partition moved. Nothing was written;
                // the commit is retried without what is no longer owned
                // (`requeue`), and the store is fine.
                m.store.errors.fetch_add(1, Ordering::Relaxed);
                m.store.fenced.fetch_add(1, Ordering::Relaxed);
                warn!(
                    partition,
                    ?epoch,
                    units = batch.units.len(),
                    records = batch.samples.len(),
                    "Commit refused: this collector no longer holds the partition's lease (fenced); nothing written, the new owner takes its units."
                );
                Err(Box::new(Failed {
                    batch: Some(batch),
                    answers,
                }))
            }
            Ok((batch, Err(e))) => {
                m.store.errors.fetch_add(1, Ordering::Relaxed);
                self.shared.store_ok.store(false, Ordering::Relaxed);
                self.failed_commits += 1;
                if self.failed_commits % 60 == 1 {
                    error!(error = %e, failed_in_a_row = self.failed_commits,
                        "Store commit failed (disk full or failing?): not ready, nothing more is acked, retrying every second. Agents keep their data; free space, then restart if it does not recover.");
                }
                Err(Box::new(Failed {
                    batch: Some(batch),
                    answers,
                }))
            }
            Err(e) => {
                m.store.errors.fetch_add(1, Ordering::Relaxed);
                self.shared.store_ok.store(false, Ordering::Relaxed);
                self.failed_commits += 1;
                if self.failed_commits % 60 == 1 {
                    error!(error = %e, failed_in_a_row = self.failed_commits,
                        "Store commit task failed; retrying, acks held back.");
                }
                Err(Box::new(Failed {
                    batch: None,
                    answers,
                }))
            }
        }
    }

    /// Puts a failed commit back in front of what is pending, so the next
    /// commit writes it again (writes are idempotent) before anything newer
    /// is acked.
    fn requeue(&mut self, failed: Failed) {
        self.requeue_all(failed);
        // Cluster mode: a commit refused because a partition moved (fenced)
        // is retried without that partition's units.
        self.drop_unowned();
    }

    fn requeue_all(&mut self, failed: Failed) {
        let Failed { batch, answers } = failed;
        // Its messages stay held, ahead of newer ones.
        let mut received = answers.received;
        received.append(&mut self.pending.received);
        self.pending.received = received;
        let mut settle = answers.settle;
        settle.append(&mut self.pending.settle);
        self.pending.settle = settle;
        let acks = answers.acks;
        let Some(batch) = batch else {
            // The batch was lost with its task: re-dirty every unit so the
            // seq state is rewritten; its records are resent by agents since
            // they were never acked.
            self.dirty.extend(self.units.keys().cloned());
            self.held_acks_dropped(acks.len());
            // Its action steps are lost with it: their requests are never
            // published (no request goes out unaudited); they expire.
            for p in answers.publish {
                self.shared.metrics.actions.dequeued(false);
                warn!(topic = %p.topic, "Action request dropped: the commit holding its audit was lost.");
            }
            return;
        };
        let mut publish = answers.publish;
        publish.append(&mut self.pending.publish);
        self.pending.publish = publish;
        let mut actions = batch.actions;
        actions.append(&mut self.pending.actions);
        self.pending.actions = actions;
        let mut samples = batch.samples;
        samples.append(&mut self.pending.samples);
        self.pending.samples = samples;
        let mut events = batch.events;
        events.append(&mut self.pending.events);
        self.pending.events = events;
        let mut incidents = batch.incidents;
        incidents.append(&mut self.pending.incidents);
        self.pending.incidents = incidents;
        let mut shares = batch.shares;
        shares.append(&mut self.pending.shares);
        self.pending.shares = shares;
        for u in batch.units {
            self.dirty.insert(u.unit);
        }
        // Re-ack the requeued seqs with the next commit.
        for a in acks {
            let seqs = self
                .pending
                .touched
                .entry((a.unit.clone(), a.ack.boot))
                .or_default();
            if a.ack.upto > 0 {
                seqs.push(a.ack.upto);
            }
            seqs.extend(a.ack.ranges.iter().map(|r| r.last));
            if let Some(s) = a.since {
                self.pending.first_rx.entry(a.unit).or_insert(s);
            }
        }
    }

    fn held_acks_dropped(&self, n: usize) {
        if n > 0 {
            warn!(
                acks = n,
                "Acks of a failed commit dropped; agents will resend."
            );
        }
    }
}
