//! Actions (issue 17): the collector asks one unit to run one of the
//! actions its agent's own config defines, signed, and logs every step.
//!
//! # Contract
//!
//! * **Who may ask.** `POST /api/v1/units/{agency}/{unit}/actions`
//!   (`crate::feed::actions`): the admin token, or the operator token of
//!   the unit's agency. A viewer token, or another agency's operator, is
//!   refused (403), counted (`muster_actions_api_refused_total{reason}`)
//!   and audited as a `denied` step (at most `per_agency_per_min` a minute
//!   per requesting agency; past that counted only, so a leaked token
//!   cannot flush the audit file). Automation calls [`Actions::request`] with
//!   [`RequestedBy::Auto`]. Single node only (the pending book and the
//!   nonces are one process's): 501 in cluster mode.
//! * **What is sent.** An [`muster_proto::ActionRequest`] for exactly that
//!   unit: the action's name and parameters within the wire's bounds
//!   (`ActionRequest::validate`, 400 otherwise), a 16-byte nonce from the
//!   injected [`Nonces`] (the OS RNG in production; tests seed it), issued
//!   at the caller's `now_ms` (the injected clock), expiring `ttl` later
//!   (`[actions] ttl`, 60 s, or the caller's, at most
//!   `MAX_ACTION_TTL_MS`), `requested_by` (`admin`, `operator:<agency>`,
//!   `auto:<rule>`), signed with the collector's current key. It goes to
//!   the unit's `…/{unit}/action` topic, QoS 1, **never retained and never
//!   coalesced** (`OutboundKind::Action`: a queue key of its own in the
//!   publisher), so each request is delivered once per publish.
//! * **Audit first.** The `requested` step is handed to the ingest worker,
//!   which gives it an event id and commits it with its next group commit;
//!   the request is published only once that commit is durable. A request
//!   no audit holds never reaches a unit; a failed commit holds its
//!   requests back with it.
//! * **Bounded.** At most `[actions] max_pending` requests are pending
//!   (issued, not yet answered by their unit, not expired) collector-wide,
//!   and at most that many request messages wait for the MQTT publisher;
//!   past either, 429 with `Retry-After`. Each agency issues at most
//!   `[actions] per_agency_per_min` within any minute (429). The request
//!   queue to the worker is the worker's bounded control queue (full: 429,
//!   `Retry-After: 1`).
//! * **Every step is logged exactly once**, as an [`ActionEvent`] with an
//!   id from the store's event sequence: `requested`; each audit record a
//!   unit sends (`refused`, `started`, `finished`, `failed`), taken where
//!   the worker handles records after dedup, so a replayed record (same
//!   unit, boot and seq) is logged once; and `expired_unanswered`, once,
//!   when a pending request's expiry passes with no step from its unit
//!   (counted in `muster_actions_unanswered_total`). A step is correlated
//!   with its pending request by nonce, and only from the unit the request
//!   was for. Steps are committed atomically with the unit's record and
//!   the unit's seq state, so a crash never logs one twice nor loses one
//!   that was acked.
//! * **Where steps show.** `/api/v1/events` (with transitions, incidents
//!   and rollout steps; `?unit=` gives the unit's), `/api/v1/actions`
//!   (newest first, `?agency&unit&since_ms&limit&cursor`), the stream's
//!   `action` event, and the audit file ([`audit`]:
//!   `<store.path>/actions/audit.jsonl`, one previous file kept, rotated at
//!   `[actions] audit_max_bytes`, drops counted in
//!   `muster_actions_audit_dropped_total`), which follows the store and is
//!   exported whole by `GET /api/v1/actions/export` (admin, NDJSON). A
//!   unit's audit records are also its samples (`kind=action`). The store
//!   keeps steps `store.event_retention`; the audit file keeps the newest
//!   `audit_max_bytes` to twice that, whatever their age.
//! * **Restart.** Pending requests are rebuilt from the store's steps of
//!   the last `MAX_ACTION_TTL_MS`: a request with no answer is pending
//!   again, and expires unanswered once.
//!
//! Pure parts: [`request`] (body, bounds, who asked), [`pending`] (the
//! pending book and agency rates), [`event`] (steps from what they come
//! from). [`audit`] is the file; [`Actions`] the I/O edge.

pub mod audit;
pub mod event;
pub mod pending;
pub mod request;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use muster_proto::action::MAX_ACTION_TTL_MS;
use muster_proto::sign::hex_of;
use muster_proto::{ActionAudit, BootId, TopicKind, UnitId};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use event::{ActionEvent, ActionView, Step, StoredAction};
pub use request::RequestedBy;

use self::audit::AuditLog;
use self::pending::{AgencyRates, PendingBook, PendingRequest};
use crate::clock::SharedClock;
use crate::config::ActionsConfig;
use crate::ingest::worker::Control;
use crate::state::Shared;
use crate::status_pub::{Outbound, OutboundKind};
use crate::store::{ActionQuery, StoreError};

/// Steps kept for the stream's subscribers before one counts as lagging
/// (a step carries up to 32 KiB of output: at most 8 MiB held).
const BROADCAST: usize = 256;
/// Store entries the audit file takes per read.
const FOLLOW_BATCH: usize = 256;

/// Where request nonces come from (injected: tests seed it).
pub trait Nonces: Send + Sync {
    /// 16 fresh bytes; `None` when the source failed.
    fn nonce(&self) -> Option<[u8; 16]>;
}

/// The OS random number generator (production).
#[derive(Debug, Default)]
pub struct OsNonces;

impl Nonces for OsNonces {
    fn nonce(&self) -> Option<[u8; 16]> {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut b).ok()?;
        Some(b)
    }
}

/// A seeded sequence (tests): the same seed, the same nonces.
#[derive(Debug)]
pub struct SeededNonces(Mutex<muster_base::backoff::Jitter>);

impl SeededNonces {
    pub fn new(seed: u64) -> Self {
        SeededNonces(Mutex::new(muster_base::backoff::Jitter::new(seed)))
    }
}

impl Nonces for SeededNonces {
    fn nonce(&self) -> Option<[u8; 16]> {
        let mut j = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&j.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&j.next_u64().to_le_bytes());
        Some(b)
    }
}

/// Why a request was not issued. Messages are for API users: they name
/// the limit and never the collector's internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// Out of the wire's bounds, or a validity out of range (400).
    #[error("{0}")]
    Invalid(String),
    /// This collector has no such unit (404).
    #[error("no unit {0}")]
    UnknownUnit(UnitId),
    /// `[actions] max_pending` requests are pending (429).
    #[error(
        "{pending} action requests are waiting for their units (actions.max_pending); retry in {retry_after_s}s"
    )]
    TooManyPending { pending: usize, retry_after_s: u64 },
    /// The agency issued its `[actions] per_agency_per_min` (429).
    #[error(
        "agency {agency:?} issued {limit} action requests within the last minute (actions.per_agency_per_min); retry in {retry_after_s}s"
    )]
    RateLimited {
        agency: String,
        limit: u32,
        retry_after_s: u64,
    },
    /// The publisher or the worker is behind (429, retry in a second).
    #[error("action requests are queued behind the MQTT connection; retry in 1s")]
    Busy,
    /// The collector is stopping, or its random source failed (503).
    #[error("the collector cannot issue action requests now")]
    Unavailable,
}

impl ActionError {
    /// Seconds a client should wait, for a `Retry-After` header.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ActionError::TooManyPending { retry_after_s, .. }
            | ActionError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            ActionError::Busy => Some(1),
            _ => None,
        }
    }
}

/// A request issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub unit: UnitId,
    pub action: String,
    pub nonce: [u8; 16],
    pub issued_ms: u64,
    pub expires_ms: u64,
}

impl Issued {
    /// The nonce in hex: how the audit and the API name the request.
    pub fn request(&self) -> String {
        hex_of(&self.nonce)
    }
}

/// Told of every step as it is logged, exactly once, on the ingest
/// worker's task: it must not block.
pub type Observer = Arc<dyn Fn(&StoredAction) + Send + Sync>;

#[derive(Debug)]
struct State {
    pending: PendingBook,
    rates: AgencyRates,
    /// Denials audited per requesting agency (the rest are counted only).
    denials: AgencyRates,
}

/// What [`Actions::new`] wires to.
pub struct Wires {
    pub shared: Arc<Shared>,
    pub signer: Arc<crate::signing::Signer>,
    /// The ingest worker's control queue: steps to log, requests to
    /// publish once logged.
    pub control: mpsc::Sender<Control>,
    pub nonces: Arc<dyn Nonces>,
    pub clock: SharedClock,
}

/// Actions of a single-node collector (see the module's contract).
pub struct Actions {
    cfg: ActionsConfig,
    w: Wires,
    state: Mutex<State>,
    steps: broadcast::Sender<Arc<StoredAction>>,
    audit: AuditLog,
    wake: Notify,
    observer: OnceLock<Observer>,
    /// Rate-limited warnings: the audit file failing.
    audit_warned_ms: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actions")
            .field("cfg", &self.cfg)
            .field("audit", &self.audit.dir())
            .finish_non_exhaustive()
    }
}

/// `ms` as whole seconds, rounded up.
fn secs_up(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

impl Actions {
    /// Opens the audit file in `<store>/actions/` and wires the rest.
    pub fn open(
        cfg: ActionsConfig,
        store_dir: &std::path::Path,
        w: Wires,
    ) -> Result<Actions, audit::AuditError> {
        let audit = AuditLog::open(&store_dir.join("actions"), cfg.audit_max_bytes)?;
        let (steps, _) = broadcast::channel(BROADCAST);
        Ok(Actions {
            state: Mutex::new(State {
                pending: PendingBook::new(cfg.max_pending),
                rates: AgencyRates::new(cfg.per_agency_per_min),
                denials: AgencyRates::new(cfg.per_agency_per_min),
            }),
            cfg,
            w,
            steps,
            audit,
            wake: Notify::new(),
            observer: OnceLock::new(),
            audit_warned_ms: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &ActionsConfig {
        &self.cfg
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn metrics(&self) -> &crate::metrics::actions::ActionMetrics {
        &self.w.shared.metrics.actions
    }

    /// Requests pending now.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Every step as it is logged (the stream). A subscriber that falls
    /// more than 256 behind is told it lagged.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredAction>> {
        self.steps.subscribe()
    }

    /// Sets the one observer told of every step exactly once (automation);
    /// `false` if one was set already.
    pub fn set_observer(&self, f: Observer) -> bool {
        self.observer.set(f).is_ok()
    }

    /// The audit file.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Asks `unit` to run `action` with `params`, valid the configured
    /// `[actions] ttl` from `now_ms` (the collector's clock). See the
    /// module's contract; never blocks on I/O.
    pub fn request(
        &self,
        unit: &UnitId,
        action: &str,
        params: &BTreeMap<String, String>,
        requested_by: &RequestedBy,
        now_ms: u64,
    ) -> Result<Issued, ActionError> {
        self.request_with_ttl(unit, action, params, requested_by, self.cfg.ttl, now_ms)
    }

    /// As [`Actions::request`], valid `ttl`.
    pub fn request_with_ttl(
        &self,
        unit: &UnitId,
        action: &str,
        params: &BTreeMap<String, String>,
        requested_by: &RequestedBy,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Issued, ActionError> {
        let known = self
            .w
            .shared
            .units
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(unit);
        if !known {
            return Err(ActionError::UnknownUnit(unit.clone()));
        }
        let m = self.metrics();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut st = self.state();
        if let Err(full) = st.pending.room(now_ms) {
            return Err(ActionError::TooManyPending {
                pending: st.pending.len(),
                retry_after_s: secs_up(full.retry_after_ms),
            });
        }
        if let Err(full) = st.rates.check(&unit.agency, now_ms) {
            return Err(ActionError::RateLimited {
                agency: unit.agency.clone(),
                limit: self.cfg.per_agency_per_min,
                retry_after_s: secs_up(full.retry_after_ms),
            });
        }
        // Requests answered or expired while their messages still wait
        // (the MQTT connection is down): the queue has its own bound.
        if m.queued.load(Ordering::Relaxed) >= self.cfg.max_pending as u64 {
            return Err(ActionError::Busy);
        }
        // A nonce not pending now (a repeat of a 128-bit draw is a broken
        // source, not luck).
        let nonce = (0..4)
            .filter_map(|_| self.w.nonces.nonce())
            .find(|n| !st.pending.contains(n))
            .ok_or(ActionError::Unavailable)?;
        let req = request::build(unit, action, params, requested_by, ttl_ms, now_ms, nonce)
            .map_err(ActionError::Invalid)?;
        let req = muster_proto::sign::sign_action(self.w.signer.current_key(), req);
        let payload = muster_proto::encode_action(&req).map_err(|e| {
            // Within the validated bounds this cannot happen.
            warn!(%unit, error = %e, "Cannot encode an action request.");
            ActionError::Invalid(format!("the request does not encode: {e}"))
        })?;
        let publish = Outbound {
            topic: muster_proto::topic::unit_topic(unit, TopicKind::Action),
            payload,
            retain: false,
            since: None,
            kind: OutboundKind::Action,
        };
        let ev = ActionEvent::requested(&req, now_ms);
        match self.w.control.try_send(Control::Action {
            event: Box::new(ev),
            publish: Some(publish),
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(ActionError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ActionError::Unavailable),
        }
        m.queued.fetch_add(1, Ordering::Relaxed);
        st.pending.insert(
            nonce,
            PendingRequest {
                unit: unit.clone(),
                action: req.action.clone(),
                requested_by: req.requested_by.clone(),
                issued_ms: req.issued_ms,
                expires_ms: req.expires_ms,
            },
        );
        st.rates.take(&unit.agency, now_ms);
        m.pending.store(st.pending.len() as u64, Ordering::Relaxed);
        drop(st);
        m.requested(requested_by.kind());
        let issued = Issued {
            unit: unit.clone(),
            action: req.action,
            nonce,
            issued_ms: req.issued_ms,
            expires_ms: req.expires_ms,
        };
        info!(%unit, action = %issued.action, request = %issued.request(), requested_by = %requested_by, expires_ms = issued.expires_ms, "Action requested.");
        Ok(issued)
    }

    /// The API refused `requested_by` (of `requester_agency`) a request of
    /// `action` from `unit` for `reason` (`viewer`, `other_agency`): logged
    /// as a `denied` step, at most `[actions] per_agency_per_min` a minute
    /// per requesting agency (beyond that only counted, so a leaked token
    /// cannot flush the audit file). Whether it was logged.
    pub fn denied(
        &self,
        unit: &UnitId,
        requester_agency: &str,
        requested_by: &str,
        action: Option<&str>,
        reason: &str,
        now_ms: u64,
    ) -> bool {
        {
            let mut st = self.state();
            if st.denials.check(requester_agency, now_ms).is_err() {
                return false;
            }
            st.denials.take(requester_agency, now_ms);
        }
        let event = ActionEvent::denied(unit, requested_by, action, reason, now_ms);
        self.w
            .control
            .try_send(Control::Action {
                event: Box::new(event),
                publish: None,
            })
            .is_ok()
    }

    /// `unit` reported `a` in its record `(boot, seq, record_at_ms)` — a
    /// new record, after dedup. Correlates it with the pending request it
    /// answers (only the unit it was for answers it) and returns the step
    /// to log.
    pub(crate) fn unit_step(
        &self,
        unit: &UnitId,
        (boot, seq, record_at_ms): (BootId, u64, u64),
        a: &ActionAudit,
        now_ms: u64,
    ) -> ActionEvent {
        if let Some(r) = &a.request {
            let mut st = self.state();
            if st.pending.answered(unit, &r.nonce).is_some() {
                self.metrics()
                    .pending
                    .store(st.pending.len() as u64, Ordering::Relaxed);
            }
        }
        ActionEvent::from_unit(unit, boot, seq, record_at_ms, a, now_ms)
    }

    /// A step was given its id (by the worker): to the stream and the
    /// observer.
    pub(crate) fn emitted(&self, s: &Arc<StoredAction>) {
        let _ = self.steps.send(Arc::clone(s));
        if let Some(f) = self.observer.get() {
            f(s);
        }
    }

    /// Steps were committed: the audit file follows.
    pub(crate) fn committed(&self) {
        self.wake.notify_one();
    }

    /// Pending requests again after a restart, from the store's steps of
    /// the last [`MAX_ACTION_TTL_MS`] (blocking): a request with no step
    /// from its unit and not expired-logged is pending. Returns how many.
    pub fn restore(&self, now_ms: u64) -> Result<usize, StoreError> {
        let since_ms = now_ms.saturating_sub(MAX_ACTION_TTL_MS + 60_000);
        let mut answered: HashSet<(String, String, String)> = HashSet::new();
        let mut found = Vec::new();
        let mut before_id = None;
        loop {
            let (page, more) = self.w.shared.store.actions(&ActionQuery {
                agency: None,
                unit: None,
                before_id,
                since_ms,
                limit: 1_000,
            })?;
            for s in &page {
                let e = &s.event;
                let Some(nonce) = &e.request else { continue };
                let key = (e.agency.clone(), e.unit.clone(), nonce.clone());
                match e.step {
                    Step::Requested => {
                        if !answered.contains(&key)
                            && let (Some(n), Some(unit), Some(issued_ms), Some(expires_ms)) =
                                (parse_nonce(nonce), e.unit_id(), e.issued_ms, e.expires_ms)
                        {
                            found.push((
                                n,
                                PendingRequest {
                                    unit,
                                    action: e.action.clone().unwrap_or_default(),
                                    requested_by: e.requested_by.clone().unwrap_or_default(),
                                    issued_ms,
                                    expires_ms,
                                },
                            ));
                        }
                    }
                    _ => {
                        answered.insert(key);
                    }
                }
            }
            before_id = page.last().map(|s| s.id);
            if !more || before_id.is_none() {
                break;
            }
        }
        let mut st = self.state();
        let mut n = 0;
        for (nonce, p) in found {
            if st.pending.insert(nonce, p) {
                n += 1;
            }
        }
        self.metrics()
            .pending
            .store(st.pending.len() as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Expires what is due and keeps the audit file following the store,
    /// until `stop`; then follows once more (run it until the worker's
    /// last commit is in).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    self.expire_due().await;
                    self.follow().await;
                }
                _ = self.wake.notified() => self.follow().await,
            }
        }
        self.follow().await;
    }

    /// Logs each pending request whose expiry passed, once.
    async fn expire_due(&self) {
        let now = self.w.clock.now_ms();
        let due = {
            let mut st = self.state();
            let due = st.pending.expire(now);
            self.metrics()
                .pending
                .store(st.pending.len() as u64, Ordering::Relaxed);
            due
        };
        for (nonce, p) in due {
            self.metrics().unanswered.fetch_add(1, Ordering::Relaxed);
            info!(unit = %p.unit, action = %p.action, request = %hex_of(&nonce), expires_ms = p.expires_ms, "Action request expired unanswered.");
            let event = ActionEvent::expired(&nonce, &p, now);
            if self
                .w
                .control
                .send(Control::Action {
                    event: Box::new(event),
                    publish: None,
                })
                .await
                .is_err()
            {
                // The worker is gone (stopping): the restart's `restore`
                // finds it pending and expires it then.
                return;
            }
        }
    }

    /// Appends the store's steps the audit file does not hold yet (on a
    /// blocking thread).
    async fn follow(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let r = tokio::task::spawn_blocking(move || me.follow_blocking())
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = r {
            self.metrics().audit_errors.fetch_add(1, Ordering::Relaxed);
            let now = self.w.clock.now_ms();
            let mut last = self
                .audit_warned_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| now >= t.saturating_add(60_000)) {
                *last = Some(now);
                warn!(error = %e, dir = %self.audit.dir().display(), "The action audit file cannot be written; it catches up from the store once it can.");
            }
        }
    }

    fn follow_blocking(&self) -> Result<(), String> {
        loop {
            let after = self.audit.last_id();
            let batch = self
                .w
                .shared
                .store
                .actions_after(after, FOLLOW_BATCH)
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                return Ok(());
            }
            let done = self.audit.append(&batch).map_err(|e| e.to_string())?;
            let m = self.metrics();
            m.audit_dropped.fetch_add(done.dropped, Ordering::Relaxed);
            m.audit_bytes.store(self.audit.size(), Ordering::Relaxed);
            if batch.len() < FOLLOW_BATCH {
                return Ok(());
            }
        }
    }
}

/// 32 hex digits as a nonce.
fn parse_nonce(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_nonces_repeat_per_seed_and_differ_across_draws() {
        let (a, b) = (SeededNonces::new(7), SeededNonces::new(7));
        let xs: Vec<_> = (0..3).map(|_| a.nonce().unwrap()).collect();
        let ys: Vec<_> = (0..3).map(|_| b.nonce().unwrap()).collect();
        assert_eq!(xs, ys);
        assert!(xs[0] != xs[1] && xs[1] != xs[2]);
        assert_ne!(SeededNonces::new(8).nonce(), Some(xs[0]));
        assert!(OsNonces.nonce().is_some());
    }

    #[test]
    fn nonces_read_back_from_hex() {
        let n = [0x0f, 0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xff];
        assert_eq!(parse_nonce(&hex_of(&n)), Some(n));
        for bad in ["", "0f", &"zz".repeat(16), &"0".repeat(33)] {
            assert_eq!(parse_nonce(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_say_when_to_retry() {
        let table = [
            (
                ActionError::TooManyPending {
                    pending: 3,
                    retry_after_s: 40,
                },
                Some(40),
            ),
            (
                ActionError::RateLimited {
                    agency: "a".into(),
                    limit: 60,
                    retry_after_s: 12,
                },
                Some(12),
            ),
            (ActionError::Busy, Some(1)),
            (ActionError::Unavailable, None),
            (ActionError::Invalid("x".into()), None),
        ];
        for (e, want) in table {
            assert_eq!(e.retry_after_s(), want, "{e}");
        }
        assert_eq!(secs_up(1), 1);
        assert_eq!(secs_up(1_001), 2);
        assert_eq!(secs_up(0), 1);
    }
}
