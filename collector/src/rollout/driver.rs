//! The I/O edge of rollouts: creates them from the live view, ticks every
//! running one ([`Rollout::tick`]) against what the units last reported,
//! judges a wave from the store ([`crate::gate::collect`],
//! [`crate::gate::stats`]), issues and reverts documents through the
//! config book ([`ConfigDocs`]), and hands every step to the ingest worker
//! as an event (stored, streamed, sent to webhooks).
//!
//! Everything here blocks (the books write files, a verdict reads the
//! store): the loop runs each round on a blocking thread, one at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_proto::UnitId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::book::{BookError, RolloutBook};
use super::machine::{Baseline, Docs, JudgeRequest, MachineError, Rollout, order};
use super::spec::{RolloutMetric, RolloutSpec};
use crate::clock::SharedClock;
use crate::feed::config::ConfigDocs;
use crate::gate::collect::{self, Side};
use crate::gate::spec::{Cohort, Span};
use crate::gate::stats::{self, GateVerdict, MetricInput, MetricKind};
use crate::ingest::worker::Control;
use crate::model::{Change, RolloutEvent, Status};
use crate::state::Shared;
use crate::store::KnownConfig;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Book(#[from] BookError),
    #[error(transparent)]
    State(#[from] MachineError),
}

/// Documents issued through the config book at one time.
struct Issuer<'a> {
    docs: &'a ConfigDocs,
    now: u64,
}

impl Docs for Issuer<'_> {
    fn issue(
        &mut self,
        agency: &str,
        unit: &str,
        change: &str,
    ) -> Result<(Option<String>, u64), String> {
        let book = &self.docs.book;
        let prev = book.unit_body(agency, unit);
        let body = crate::remote::book::merge_sections(prev.as_deref(), change)
            .map_err(|e| e.to_string())?;
        let (entry, doc) = book
            .set(
                agency,
                Some(unit),
                body,
                self.docs.signer.current_key(),
                self.now,
            )
            .map_err(|e| e.to_string())?;
        self.docs.publish(entry.topic(), &doc);
        Ok((prev, entry.version))
    }

    fn revert(&mut self, agency: &str, unit: &str, prev: Option<&str>) -> Result<u64, String> {
        let book = &self.docs.book;
        let key = self.docs.signer.current_key();
        let (entry, doc) = match prev {
            Some(b) => book
                .set(agency, Some(unit), b.to_owned(), key, self.now)
                .map_err(|e| e.to_string())?,
            None => match book
                .clear(agency, Some(unit), key, self.now)
                .map_err(|e| e.to_string())?
            {
                Some(x) => x,
                // Cleared already (by an operator): the agents have the
                // empty document; nothing to issue.
                None => {
                    return book
                        .version(agency, Some(unit))
                        .ok_or_else(|| format!("{agency}/{unit} has no document"));
                }
            },
        };
        self.docs.publish(entry.topic(), &doc);
        Ok(entry.version)
    }
}

/// The rollouts of a single-node collector.
pub struct Rollouts {
    pub book: Arc<RolloutBook>,
    pub docs: ConfigDocs,
    pub shared: Arc<Shared>,
    pub clock: SharedClock,
    /// To the ingest worker: the steps, as events.
    pub events: mpsc::Sender<Control>,
    /// Probe results a verdict reads per side at most (`gates.max_results`).
    pub max_results: u64,
}

impl Rollouts {
    fn emit(&self, events: Vec<RolloutEvent>) {
        let m = &self.shared.metrics.remote;
        for e in events {
            m.rollout_step(&e.step);
            if self
                .events
                .blocking_send(Control::Event(Change::Rollout(e)))
                .is_err()
            {
                m.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What a unit of `agency` last reported of its configuration (one
    /// look-up per issued unit and round).
    fn seen<'a>(&'a self, agency: &'a str) -> impl Fn(&str) -> Option<KnownConfig> + 'a {
        move |u: &str| {
            let id = UnitId::new(agency, u).ok()?;
            let view = self.shared.units.read().unwrap_or_else(|e| e.into_inner());
            view.get(&id).and_then(|r| r.config.clone())
        }
    }

    /// Creates a rollout over the target's units as the collector knows
    /// them now (blocking). Refused: a target with no unit, one that
    /// overlaps a running rollout's, or more units than the config book
    /// has room for.
    pub fn create(&self, spec: RolloutSpec) -> Result<Rollout, RolloutError> {
        let now = self.clock.now_ms();
        let units: Vec<String> = {
            let view = self.shared.units.read().unwrap_or_else(|e| e.into_inner());
            let listed: Option<std::collections::HashSet<&str>> = spec
                .target
                .units
                .as_ref()
                .map(|l| l.iter().map(String::as_str).collect());
            let sel = spec.target.selector();
            view.values()
                .filter(|u| u.unit.agency == spec.target.agency)
                .filter(|u| {
                    listed
                        .as_ref()
                        .is_none_or(|l| l.contains(u.unit.unit.as_str()))
                })
                .filter(|u| sel.matches(u.labels()))
                .map(|u| u.unit.unit.clone())
                .collect()
        };
        if let Some(listed) = &spec.target.units {
            // A typo must not shrink the rollout silently.
            let known: std::collections::HashSet<&str> = units.iter().map(String::as_str).collect();
            let missing: Vec<&str> = listed
                .iter()
                .map(String::as_str)
                .filter(|u| !known.contains(u))
                .take(10)
                .collect();
            if !missing.is_empty() {
                return Err(RolloutError::Invalid(format!(
                    "target.units: not known to this collector{}: {}",
                    if spec.target.labels.is_some() {
                        " (or without the labels)"
                    } else {
                        ""
                    },
                    missing.join(", ")
                )));
            }
        }
        if units.is_empty() {
            return Err(RolloutError::Invalid(format!(
                "target: no unit of {} known to this collector matches",
                spec.target.agency
            )));
        }
        let new_scopes = units
            .iter()
            .filter(|u| !self.docs.book.holds(&spec.target.agency, Some(u)))
            .count();
        if new_scopes > self.docs.book.room() {
            return Err(RolloutError::Conflict(format!(
                "the target needs {new_scopes} new unit documents; the config book has room for {} (remote_config.max_docs)",
                self.docs.book.room()
            )));
        }
        let r = self.book.add(|id, running| {
            let mine: std::collections::HashSet<&str> = units.iter().map(String::as_str).collect();
            for o in running {
                if o.spec.target.agency == spec.target.agency
                    && let Some(u) = o.units.iter().find(|u| mine.contains(u.as_str()))
                {
                    return Err(RolloutError::Conflict(format!(
                        "{}/{u} is in rollout {} ({}), still {}",
                        spec.target.agency,
                        o.id,
                        o.spec.name,
                        o.phase.name()
                    )));
                }
            }
            let ordered = order(&id, units.clone());
            Ok(Rollout::new(id, spec, ordered, now))
        })?;
        tracing::info!(rollout = %r.id, name = %r.spec.name, units = r.units.len(), waves = r.wave_ends.len(), "Rollout started.");
        self.emit(vec![r.started()]);
        Ok(r)
    }

    /// An operator's pause, resume or abort (blocking).
    pub fn act(&self, id: &str, action: Action) -> Result<Rollout, RolloutError> {
        let now = self.clock.now_ms();
        let mut issuer = Issuer {
            docs: &self.docs,
            now,
        };
        let (events, r) = self.book.update(id, |r| {
            let out = match action {
                Action::Pause => r.pause_now(now),
                Action::Resume => r.resume_now(now),
                Action::Abort => r.abort_now(now, &mut issuer),
            };
            match out {
                Ok(ev) => (true, Ok((ev, r.clone()))),
                Err(e) => (false, Err(e)),
            }
        })??;
        self.emit(events);
        Ok(r)
    }

    /// One round over every running rollout (blocking).
    pub fn round(&self) {
        let running = self.book.running();
        self.shared
            .metrics
            .remote
            .running
            .store(running.len() as u64, Ordering::Relaxed);
        for id in running {
            let now = self.clock.now_ms();
            let Ok(agency) = self
                .book
                .update(&id, |r| (false, r.spec.target.agency.clone()))
            else {
                continue;
            };
            let seen = self.seen(&agency);
            let mut issuer = Issuer {
                docs: &self.docs,
                now,
            };
            let Ok((tick, snapshot)) = self.book.update(&id, |r| {
                let before = r.fingerprint();
                let t = r.tick(now, &seen, &mut issuer);
                // A copy only to judge from, off the book's lock.
                let snapshot = t.judge.is_some().then(|| r.clone());
                (r.fingerprint() != before, (t, snapshot))
            }) else {
                continue;
            };
            self.emit(tick.events);
            let (Some(req), Some(snapshot)) = (tick.judge, snapshot) else {
                continue;
            };
            let verdict = match self.judge(&snapshot, &req) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(rollout = %id, error = %e, "Rollout: cannot judge the wave now; trying again at the next round.");
                    continue;
                }
            };
            self.shared
                .metrics
                .remote
                .verdict(&verdict.verdict.to_string());
            let now = self.clock.now_ms();
            let mut issuer = Issuer {
                docs: &self.docs,
                now,
            };
            if let Ok(events) = self
                .book
                .update(&id, |r| (true, r.judged(now, &req, &verdict, &mut issuer)))
            {
                self.emit(events);
            }
        }
        self.shared.metrics.remote.save_failures.store(
            self.book.save_failures.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// The verdict on a wave: the canary's results against the baseline's
    /// over the spans asked for.
    fn judge(&self, r: &Rollout, req: &JudgeRequest) -> Result<GateVerdict, String> {
        let spec = &r.spec;
        let agency = &spec.target.agency;
        let cohort = Cohort {
            agency: agency.clone(),
            probe: spec.probe.clone(),
            target: spec.probe_target.clone(),
            units: None,
            labels: None,
        };
        let ids = |names: &[String]| -> Vec<UnitId> {
            names
                .iter()
                .filter_map(|u| UnitId::new(agency.clone(), u.clone()).ok())
                .collect()
        };
        let (c_ids, b_ids) = (ids(&req.canary), ids(req.baseline.units(&req.canary)));
        let span = Span {
            since_ms: req.span.0,
            until_ms: req.span.1,
        };
        let b_span = match req.baseline {
            Baseline::Before((since_ms, until_ms)) => Span { since_ms, until_ms },
            Baseline::Units(_) => span,
        };
        let store = self.shared.store.as_ref();
        let canary = collect::collect(store, &cohort, &c_ids, span, self.max_results)
            .map_err(|e| e.to_string())?;
        let baseline = collect::collect(store, &cohort, &b_ids, b_span, self.max_results)
            .map_err(|e| e.to_string())?;
        // Lost is what the collector believes now: no "before" for it.
        let lost = |ids: &[UnitId]| {
            let view = self.shared.units.read().unwrap_or_else(|e| e.into_inner());
            let known: Vec<_> = ids.iter().filter_map(|u| view.get(u)).collect();
            let lost = known
                .iter()
                .filter(|u| u.health.status == Status::Lost)
                .count();
            (lost as u64, known.len() as u64)
        };
        let (c_lost, b_lost) = match req.baseline {
            Baseline::Units(_) => (lost(&c_ids), lost(&b_ids)),
            Baseline::Before(_) => ((0, 0), (0, 0)),
        };
        let inputs: Vec<MetricInput> = spec
            .metrics
            .iter()
            .map(|(m, opts)| {
                if let Some(pm) = m.probe_metric() {
                    return collect::probe_input(pm, opts.key, &baseline, &canary);
                }
                let units = |f: fn(&Side) -> (usize, usize)| {
                    let ((bf, bt), (cf, ct)) = (f(&baseline), f(&canary));
                    (bf as u64, bt as u64, cf as u64, ct as u64)
                };
                let (bf, bt, cf, ct) = match m {
                    RolloutMetric::ProcessRestarts => {
                        units(|s| (s.units_restarting, s.units_with_processes))
                    }
                    RolloutMetric::AgentDrops => units(|s| (s.units_dropping, s.units_with_status)),
                    _ => (b_lost.0, b_lost.1, c_lost.0, c_lost.1),
                };
                MetricInput {
                    name: m.as_str().to_owned(),
                    key: opts.key,
                    kind: MetricKind::Failures {
                        baseline_fail: bf,
                        baseline_total: bt,
                        canary_fail: cf,
                        canary_total: ct,
                    },
                }
            })
            .collect();
        stats::verdict(&inputs, &spec.config).map_err(|e| e.to_string())
    }

    /// Ticks every `every` until `shutdown`; a round under way finishes
    /// first (its documents and state are written whole).
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = t.tick() => {
                    let this = Arc::clone(&self);
                    if let Err(e) = tokio::task::spawn_blocking(move || this.round()).await {
                        tracing::error!(error = %e, "Rollout round failed.");
                    }
                }
            }
        }
    }
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
}
