//! The actions task: requests from the uplink in, decided
//! ([`super::decide`]), nonces and starts persisted ([`super::store`]),
//! runs spawned ([`super::exec`]), every step audited as a
//! `Payload::Action` record, counts shown in the status view.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::action::{ActionAudit, ActionRef, ActionRefusal, ActionStep, MAX_ACTION_REASON};
use muster_proto::{Payload, TrustedKeys, UnitId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::decide::{self, Decision, Inputs, Refusal};
use super::exec;
use super::store::{State, Store};
use crate::clock::Clock;
use crate::config::{ActionSpec, Config};
use crate::observation::{Observation, ObservationTx};
use crate::probe::schedule::stopped;
use crate::uplink::UplinkView;

/// The most actions running at once.
pub const MAX_CONCURRENT: usize = 2;

/// Refusals before a request is known to be authentic (malformed,
/// unsigned, untrusted key, bad signature) are audited at most this many
/// per minute; past that they are only counted (`audits_suppressed`), so
/// whoever can write the action topic cannot fill the disk buffer.
pub const UNAUTHENTIC_AUDITS_PER_MIN: u64 = 60;

/// How long a stopping agent waits for its running actions to be killed
/// and audited.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What the uplink shares with the actions task: where requests from the
/// action topic go (bounded; a full queue drops the request, counted, and
/// the collector sees no audit for it).
#[derive(Debug, Clone)]
pub struct ActionLinks {
    pub requests: mpsc::Sender<Vec<u8>>,
    pub dropped: Arc<AtomicU64>,
}

impl ActionLinks {
    /// The links and the receiving end (capacity `cap`).
    pub fn new(cap: usize) -> (ActionLinks, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            ActionLinks {
                requests: tx,
                dropped: Arc::default(),
            },
            rx,
        )
    }
}

/// What `muster-agent status` shows of actions.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct ActionView {
    /// The configured actions, by name.
    pub configured: Vec<String>,
    /// Running now.
    pub running: Vec<String>,
    /// Requests refused since start, by reason.
    pub refused: BTreeMap<String, u64>,
    pub started: u64,
    pub finished: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Requests dropped because the queue from the uplink was full.
    pub dropped: u64,
    /// Unauthentic refusals counted but not audited (over
    /// [`UNAUTHENTIC_AUDITS_PER_MIN`]).
    pub audits_suppressed: u64,
    /// The last step: `"<action> <step>"`, e.g. `restart-cad-client finished (exit 0)`.
    pub last: Option<String>,
    /// Which clock judges expiry: `collector` (the agent's, corrected by
    /// its offset to the collector) or `local`.
    pub clock: String,
}

/// The task's state.
pub struct Actions {
    specs: Arc<Vec<ActionSpec>>,
    me: UnitId,
    trust: crate::trust::TrustConfig,
    data_dir: std::path::PathBuf,
    trusted: TrustedKeys,
    ctx: Arc<exec::Ctx>,
    clock: Arc<dyn Clock>,
    uplink: Arc<UplinkView>,
    tx: ObservationTx,
    view: Arc<Mutex<ActionView>>,
    dropped: Arc<AtomicU64>,
    store: Store,
    state: State,
    running: Vec<String>,
    refused: [u64; ActionRefusal::ALL.len()],
    counts: ActionView,
    /// (minute, unauthentic refusals audited in it).
    unauthentic: (u64, u64),
}

/// What a finished run hands back.
type RunDone = (String, ActionRef, ActionStep);

impl Actions {
    /// The task for `cfg`'s actions; the persisted nonces and starts are
    /// read now (unreadable: a WARN, and a fresh state — every nonce in it
    /// has expired within 20 minutes anyway).
    pub fn new(
        cfg: &Config,
        trusted: TrustedKeys,
        clock: Arc<dyn Clock>,
        tx: ObservationTx,
        uplink: Arc<UplinkView>,
        view: Arc<Mutex<ActionView>>,
        links: &ActionLinks,
    ) -> Actions {
        let store = Store::new(&cfg.data_dir);
        let state = store.load().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Actions: the remembered nonces and starts are unreadable; starting from none.");
            State::default()
        });
        let mut a = Actions {
            specs: Arc::new(cfg.actions.clone()),
            me: cfg.unit.clone(),
            trust: cfg.trust.clone(),
            data_dir: cfg.data_dir.clone(),
            trusted,
            ctx: Arc::new(exec::Ctx {
                data_dir: cfg.data_dir.clone(),
                log: cfg.log.clone(),
                config_path: cfg.path.clone(),
            }),
            clock,
            uplink,
            tx,
            view,
            dropped: links.dropped.clone(),
            store,
            state,
            running: Vec::new(),
            refused: [0; ActionRefusal::ALL.len()],
            counts: ActionView::default(),
            unauthentic: (0, 0),
        };
        a.counts.configured = a.specs.iter().map(|s| s.name.clone()).collect();
        a.publish_view();
        a
    }

    /// Now for expiry: the agent's clock corrected by its offset to the
    /// collector when known; and whether it was corrected.
    fn now(&self) -> (u64, bool) {
        let now = self.clock.now_ms();
        match self.uplink.clock_offset() {
            Some(off) => (now.saturating_add_signed(off), true),
            None => (now, false),
        }
    }

    fn publish_view(&mut self) {
        self.counts.running = self.running.clone();
        self.counts.refused = ActionRefusal::ALL
            .iter()
            .zip(self.refused)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.as_str().to_owned(), n))
            .collect();
        self.counts.dropped = self.dropped.load(Ordering::Relaxed);
        self.counts.clock = if self.uplink.clock_offset().is_some() {
            "collector".into()
        } else {
            "local".into()
        };
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = self.counts.clone();
    }

    /// Sends one audit record, waiting for room: audits are never dropped.
    async fn audit(&self, request: Option<ActionRef>, step: ActionStep) {
        let obs = Observation {
            at_ms: self.clock.now_ms(),
            payload: Payload::Action(ActionAudit { request, step }),
        };
        if self.tx.send(obs).await.is_err() {
            tracing::warn!("Actions: the uplink is gone; an audit record is lost.");
        }
    }

    fn persist(&self) -> Result<(), String> {
        self.store.save(&self.state).map_err(|e| e.to_string())
    }

    fn reload_trust(&mut self) -> bool {
        match crate::trust::load(&self.trust, &self.data_dir) {
            Ok(t) if t.len() != self.trusted.len() => {
                self.trusted = t;
                true
            }
            _ => false,
        }
    }

    fn decide(&self, bytes: &[u8], now_ms: u64) -> Decision {
        decide::decide(
            bytes,
            &Inputs {
                me: &self.me,
                trusted: &self.trusted,
                actions: &self.specs,
                state: &self.state,
                running: &self.running,
                max_concurrent: MAX_CONCURRENT,
                now_ms,
            },
        )
    }

    async fn refuse(&mut self, r: Refusal) {
        let i = ActionRefusal::ALL
            .iter()
            .position(|x| *x == r.reason)
            .unwrap_or(0);
        self.refused[i] += 1;
        let n = self.refused[i];
        let action = r.request.as_ref().map(|q| q.action.as_str()).unwrap_or("");
        // Per reason: the first, then every 100th (a flood of forgeries
        // must not flood the log).
        if n == 1 || n.is_multiple_of(100) {
            tracing::warn!(reason = r.reason.as_str(), refused = n, action, detail = %r.detail, "Action request refused.");
        }
        if let Some((nonce, expires_ms)) = r.remember {
            self.state.remember(nonce, expires_ms);
            if let Err(e) = self.persist() {
                tracing::error!(error = %e, "Actions: cannot persist a nonce; a restart could let its request be replayed.");
            }
        }
        let unauthentic = matches!(
            r.reason,
            ActionRefusal::Malformed
                | ActionRefusal::Unsigned
                | ActionRefusal::UntrustedKey
                | ActionRefusal::BadSignature
        );
        if unauthentic {
            let minute = self.clock.now_ms() / 60_000;
            if self.unauthentic.0 != minute {
                self.unauthentic = (minute, 0);
            }
            if self.unauthentic.1 >= UNAUTHENTIC_AUDITS_PER_MIN {
                self.counts.audits_suppressed += 1;
                self.publish_view();
                return;
            }
            self.unauthentic.1 += 1;
        }
        self.counts.last = Some(format!(
            "{} refused ({})",
            if action.is_empty() { "?" } else { action },
            r.reason.as_str()
        ));
        self.publish_view();
        let detail: String = r.detail.chars().take(MAX_ACTION_REASON).collect();
        self.audit(
            r.request,
            ActionStep::Refused {
                reason: r.reason,
                detail,
            },
        )
        .await;
    }

    async fn on_request(
        &mut self,
        bytes: Vec<u8>,
        runs: &mut JoinSet<RunDone>,
        stop: &watch::Receiver<bool>,
    ) {
        let (now, _) = self.now();
        self.state.prune(now);
        let mut d = self.decide(&bytes, now);
        if matches!(&d, Decision::Refuse(r) if r.reason == ActionRefusal::UntrustedKey)
            && self.reload_trust()
        {
            d = self.decide(&bytes, now);
        }
        let a = match d {
            Decision::Refuse(r) => return self.refuse(r).await,
            Decision::Run(a) => a,
        };
        let spec = self.specs[a.action].clone();
        let reference = a.request.reference();
        let (nonce, expires_ms) = a.remember();
        self.state.remember(nonce, expires_ms);
        self.state.started(&spec.name, spec.rate, now);
        self.counts.started += 1;
        self.audit(Some(reference.clone()), ActionStep::Started)
            .await;
        if let Err(e) = self.persist() {
            // Not run: its nonce would be forgotten at a restart.
            tracing::error!(error = %e, action = %spec.name, "Actions: cannot persist the request's nonce; not run.");
            self.counts.failed += 1;
            self.counts.last = Some(format!("{} failed", spec.name));
            self.publish_view();
            self.audit(
                Some(reference),
                ActionStep::Failed {
                    reason: format!("cannot record the request durably ({e}); not run")
                        .chars()
                        .take(MAX_ACTION_REASON)
                        .collect(),
                    duration_ms: 0,
                },
            )
            .await;
            return;
        }
        tracing::info!(action = %spec.name, kind = spec.kind.as_str(), requested_by = %reference.requested_by, nonce = %muster_proto::sign::hex_of(&reference.nonce), "Action started.");
        self.running.push(spec.name.clone());
        self.counts.last = Some(format!("{} started", spec.name));
        self.publish_view();
        let ctx = self.ctx.clone();
        let stop = stop.clone();
        let argv = a.argv;
        runs.spawn(async move {
            let step = exec::run(&spec, &argv, &ctx, stop).await;
            (spec.name, reference, step)
        });
    }

    async fn on_done(&mut self, (name, reference, step): RunDone) {
        self.running.retain(|n| *n != name);
        let what = match &step {
            ActionStep::Finished {
                exit_code,
                timed_out,
                duration_ms,
                ..
            } => {
                self.counts.finished += 1;
                if *timed_out {
                    self.counts.timed_out += 1;
                }
                tracing::info!(action = %name, exit_code = ?exit_code, timed_out, duration_ms, "Action finished.");
                match (exit_code, timed_out) {
                    (_, true) => "finished (timed out)".to_owned(),
                    (Some(c), _) => format!("finished (exit {c})"),
                    (None, _) => "finished (killed)".to_owned(),
                }
            }
            ActionStep::Failed {
                reason,
                duration_ms,
            } => {
                self.counts.failed += 1;
                tracing::warn!(action = %name, %reason, duration_ms, "Action failed.");
                "failed".to_owned()
            }
            other => other.as_str().to_owned(),
        };
        self.counts.last = Some(format!("{name} {what}"));
        self.publish_view();
        self.audit(Some(reference), step).await;
    }

    /// Runs until `stop`: takes requests, runs actions, audits. At the
    /// stop, running actions are killed and audited before it returns.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Vec<u8>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut runs: JoinSet<RunDone> = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = requests.recv() => match r {
                    Some(bytes) => self.on_request(bytes, &mut runs, &stop).await,
                    None => break,
                },
                Some(done) = runs.join_next(), if !runs.is_empty() => match done {
                    Ok(d) => self.on_done(d).await,
                    Err(e) => tracing::error!(error = %e, "Actions: a run panicked."),
                },
                _ = tick.tick() => {
                    let (now, _) = self.now();
                    if self.state.prune(now) && let Err(e) = self.persist() {
                        tracing::warn!(error = %e, "Actions: cannot persist the pruned state.");
                    }
                    self.publish_view();
                }
                _ = stopped(&mut stop) => break,
            }
        }
        // The runs see the same stop and kill what they run.
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while !runs.is_empty() {
            match tokio::time::timeout_at(deadline, runs.join_next()).await {
                Ok(Some(Ok(d))) => self.on_done(d).await,
                Ok(Some(Err(e))) => tracing::error!(error = %e, "Actions: a run panicked."),
                Ok(None) => break,
                Err(_) => {
                    tracing::error!(running = ?self.running, "Actions: runs still going after the stop; abandoning them.");
                    runs.abort_all();
                    break;
                }
            }
        }
        tracing::debug!("Actions stopped.");
    }
}
