//! The remote config task: documents from the uplink in, checked, merged,
//! handed to the run loop to apply ([`Reconfigure`]), reported as
//! `ConfigStatus` records, watched for a health window, rolled back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::{
    ConfigDoc, ConfigState, ConfigStatus, DocRef, DocScopeKind, Payload, RefusalReason,
    TrustedKeys, UnitId,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::decide::{self, Effective, Refused};
use super::health::{self, Baseline, Counters, Verdict};
use super::store::{Docs, Store};
use crate::clock::Clock;
use crate::config::Config;
use crate::observation::{Observation, ObservationTx};

/// What the uplink shares with remote config: where received documents go
/// (bounded; a full queue drops the delivery, counted, and the retained
/// document comes again at the next connection).
#[derive(Debug, Clone)]
pub struct RemoteLinks {
    pub docs: mpsc::Sender<(DocScopeKind, Vec<u8>)>,
    pub docs_dropped: Arc<AtomicU64>,
}

/// Asks the run loop to rebuild the measuring side from `config`; the
/// answer says whether it runs (an error: the previous one still does).
#[derive(Debug)]
pub struct Reconfigure {
    pub config: Box<Config>,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// What `muster-agent status` shows of the configuration.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct ConfigView {
    /// `local`, or the documents: `agency v3 + unit v7`.
    pub origin: String,
    /// SHA-256 of the effective configuration, hex.
    pub hash: String,
    /// The last step: `applied`, `applying`, `failed`, `refused`, `rolled_back`.
    pub last_state: String,
    pub last_reason: Option<String>,
    /// A health window is open until this time (unix ms).
    pub watching_until_ms: Option<u64>,
    /// Documents refused since start, by reason.
    pub refused: std::collections::BTreeMap<String, u64>,
}

/// The configuration to start with, and what remote config knows.
pub struct Startup {
    pub effective: Effective,
    pub running: Docs,
    pub lkg: Docs,
    pub seen: (Option<DocRef>, Option<DocRef>),
}

fn check_stored(
    raw: Vec<(DocScopeKind, Vec<u8>)>,
    local: &Config,
    trusted: &TrustedKeys,
) -> Result<Docs, String> {
    let mut docs = Docs::default();
    for (k, bytes) in raw {
        match decide::check(&bytes, k, &local.unit, trusted, None) {
            Ok(Some(d)) => docs.set(k, Some(d)),
            Ok(None) => unreachable!("nothing seen: never the same document"),
            Err(e) => return Err(format!("stored {k:?} document: {e}")),
        }
    }
    Ok(docs)
}

/// The effective configuration at start: the running documents persisted
/// last time, verified and merged again; failing that the last known
/// good; failing that the local config alone. Each fall-back is logged.
pub fn startup(local: &Config, trusted: &TrustedKeys) -> Startup {
    let store = Store::new(&local.data_dir);
    let seen = store.seen().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "Remote config: cannot read the versions seen; starting from none.");
        (None, None)
    });
    let lkg = store
        .load_raw(true)
        .map_err(|e| e.to_string())
        .and_then(|raw| check_stored(raw, local, trusted))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Remote config: last known good documents unusable.");
            Docs::default()
        });
    let local_only = || decide::merge(local, None, None).expect("the local config is valid");
    if local.remote.allow.is_empty() {
        return Startup {
            effective: local_only(),
            running: Docs::default(),
            lkg: Docs::default(),
            seen,
        };
    }
    let running = store
        .load_raw(false)
        .map_err(|e| e.to_string())
        .and_then(|raw| check_stored(raw, local, trusted));
    let attempt = |docs: &Docs| {
        decide::merge(local, docs.agency.as_ref(), docs.unit.as_ref()).map_err(|e| e.to_string())
    };
    match running.and_then(|d| attempt(&d).map(|e| (d, e))) {
        Ok((running, effective)) => Startup {
            effective,
            running,
            lkg,
            seen,
        },
        Err(e) => {
            tracing::warn!(error = %e, "Remote config: running documents unusable; starting on the last known good.");
            match attempt(&lkg) {
                Ok(effective) => Startup {
                    effective,
                    running: lkg.clone(),
                    lkg,
                    seen,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "Remote config: last known good unusable; starting on the local config.");
                    Startup {
                        effective: local_only(),
                        running: Docs::default(),
                        lkg: Docs::default(),
                        seen,
                    }
                }
            }
        }
    }
}

/// The task's state.
pub struct Remote {
    local: Config,
    unit: UnitId,
    trusted: TrustedKeys,
    store: Store,
    clock: Arc<dyn Clock>,
    tx: ObservationTx,
    reconf: mpsc::Sender<Reconfigure>,
    counters: Arc<Mutex<Counters>>,
    uplink: Arc<crate::uplink::UplinkView>,
    view: Arc<Mutex<ConfigView>>,
    running: Docs,
    running_hash: [u8; 32],
    lkg: Docs,
    seen_agency: Option<DocRef>,
    seen_unit: Option<DocRef>,
    /// An open health window: its baseline, the documents before it (to
    /// roll back to: the last known good) and the document it is about.
    window: Option<(Baseline, (DocScopeKind, DocRef))>,
    refused: [u64; RefusalReason::ALL.len()],
}

#[allow(clippy::too_many_arguments)]
impl Remote {
    pub fn new(
        local: Config,
        trusted: TrustedKeys,
        start: Startup,
        clock: Arc<dyn Clock>,
        tx: ObservationTx,
        reconf: mpsc::Sender<Reconfigure>,
        counters: Arc<Mutex<Counters>>,
        uplink: Arc<crate::uplink::UplinkView>,
        view: Arc<Mutex<ConfigView>>,
    ) -> Remote {
        Remote {
            unit: local.unit.clone(),
            store: Store::new(&local.data_dir),
            local,
            trusted,
            clock,
            tx,
            reconf,
            counters,
            uplink,
            view,
            running_hash: start.effective.hash,
            running: start.running,
            lkg: start.lkg,
            seen_agency: start.seen.0,
            seen_unit: start.seen.1,
            window: None,
            refused: [0; RefusalReason::ALL.len()],
        }
    }

    fn counters(&self) -> Counters {
        let mut c = *self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let ack = self.uplink.last_ack_ms.load(Ordering::Relaxed);
        c.last_ack_ms = (ack > 0).then_some(ack);
        c
    }

    fn origin(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.running.agency {
            parts.push(format!("agency v{}", d.version));
        }
        if let Some(d) = &self.running.unit {
            parts.push(format!("unit v{}", d.version));
        }
        if parts.is_empty() {
            "local".into()
        } else {
            parts.join(" + ")
        }
    }

    /// Sends a `ConfigStatus` record (through the buffer, acked like every
    /// record) and updates the status view.
    fn report(&self, doc: Option<(DocScopeKind, DocRef)>, state: ConfigState) {
        let reason = match &state {
            ConfigState::Failed { reason } | ConfigState::RolledBack { reason } => {
                Some(reason.clone())
            }
            ConfigState::Refused { detail, .. } => Some(detail.clone()),
            _ => None,
        };
        {
            let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
            v.origin = self.origin();
            v.hash = muster_proto::sign::hex_of(&self.running_hash);
            v.last_state = state.as_str().into();
            v.last_reason = reason;
            v.watching_until_ms = self
                .window
                .as_ref()
                .map(|(b, _)| b.applied_ms + b.window_ms);
            v.refused = RefusalReason::ALL
                .iter()
                .zip(self.refused)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.as_str().to_owned(), n))
                .collect();
        }
        let mut state = state;
        let cut = |s: &mut String| {
            if s.chars().count() > muster_proto::MAX_CONFIG_REASON {
                *s = s.chars().take(muster_proto::MAX_CONFIG_REASON).collect();
            }
        };
        match &mut state {
            ConfigState::Failed { reason } | ConfigState::RolledBack { reason } => cut(reason),
            ConfigState::Refused { detail, .. } => cut(detail),
            _ => {}
        }
        let status = ConfigStatus {
            doc,
            state,
            running: self.running_hash,
            running_agency: self.running.agency.as_ref().map(decide::doc_ref),
            running_unit: self.running.unit.as_ref().map(decide::doc_ref),
        };
        let obs = Observation {
            at_ms: self.clock.now_ms(),
            payload: Payload::Config(status),
        };
        // A config step is rare and must not be lost to a full channel:
        // wait for room (bounded by the uplink draining it).
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(obs).await;
        });
    }

    fn refuse(&mut self, k: DocScopeKind, doc: Option<DocRef>, e: Refused) {
        let i = RefusalReason::ALL
            .iter()
            .position(|r| *r == e.reason)
            .unwrap_or(0);
        self.refused[i] += 1;
        let n = self.refused[i];
        // Per reason: the first, then every 100th (a flood of forgeries
        // must not flood the log).
        if n == 1 || n.is_multiple_of(100) {
            tracing::warn!(scope = ?k, reason = e.reason.as_str(), refused = n, detail = %e.detail, "Remote config document refused.");
        }
        self.report(
            doc.map(|d| (k, d)),
            ConfigState::Refused {
                reason: e.reason,
                detail: e.detail,
            },
        );
    }

    fn seen(&self, k: DocScopeKind) -> Option<DocRef> {
        match k {
            DocScopeKind::Agency => self.seen_agency,
            DocScopeKind::Unit => self.seen_unit,
        }
    }

    fn mark_seen(&mut self, k: DocScopeKind, r: DocRef) {
        match k {
            DocScopeKind::Agency => self.seen_agency = Some(r),
            DocScopeKind::Unit => self.seen_unit = Some(r),
        }
        if let Err(e) = self.store.save_seen(self.seen_agency, self.seen_unit) {
            tracing::error!(error = %e, "Remote config: cannot persist the versions seen.");
        }
    }

    async fn apply(&self, e: &Effective) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.reconf
            .send(Reconfigure {
                config: Box::new(e.config.clone()),
                done,
            })
            .await
            .map_err(|_| "the agent is stopping".to_owned())?;
        answer
            .await
            .map_err(|_| "the agent is stopping".to_owned())?
    }

    async fn on_doc(&mut self, k: DocScopeKind, bytes: Vec<u8>) {
        let checked = decide::check(&bytes, k, &self.unit, &self.trusted, self.seen(k));
        let checked = match checked {
            Err(e) if e.reason == RefusalReason::UntrustedKey && self.reload_trust() => {
                decide::check(&bytes, k, &self.unit, &self.trusted, self.seen(k))
            }
            other => other,
        };
        let doc: ConfigDoc = match checked {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                // Authentic and ours (an old version) or not: either way
                // nothing is marked seen, so a forger burns no version.
                let about = muster_proto::decode_config(&bytes)
                    .ok()
                    .map(|d| decide::doc_ref(&d));
                self.refuse(k, about, e);
                return;
            }
        };
        let r = decide::doc_ref(&doc);
        let mut next = self.running.clone();
        next.set(k, Some(doc));
        let effective = match decide::merge(&self.local, next.agency.as_ref(), next.unit.as_ref()) {
            Ok(e) => e,
            Err(e) => {
                self.mark_seen(k, r);
                self.refuse(k, Some(r), e);
                return;
            }
        };
        self.mark_seen(k, r);
        self.report(Some((k, r)), ConfigState::Applying);
        if let Err(e) = self.apply(&effective).await {
            tracing::warn!(scope = ?k, version = r.version, error = %e, "Remote config document failed to apply; the previous config keeps running.");
            self.report(Some((k, r)), ConfigState::Failed { reason: e });
            return;
        }
        // Rolling back goes to the last known good, not to what ran
        // before a document still in its window.
        self.running = next;
        self.running_hash = effective.hash;
        if let Err(e) = self.store.save(&self.running, false) {
            tracing::error!(error = %e, "Remote config: cannot persist the running documents; a restart starts on the last known good.");
        }
        let now = self.clock.now_ms();
        let window_ms = self.local.remote.health_window.as_millis() as u64;
        self.window = Some((health::baseline(&self.counters(), now, window_ms), (k, r)));
        tracing::info!(scope = ?k, version = r.version, hash = %muster_proto::sign::hex_of(&r.hash), origin = %self.origin(), "Remote config applied; watching its health.");
        self.report(Some((k, r)), ConfigState::Applied);
    }

    fn reload_trust(&mut self) -> bool {
        match crate::trust::load(&self.local.trust, &self.local.data_dir) {
            Ok(t) if t.len() != self.trusted.len() => {
                self.trusted = t;
                true
            }
            _ => false,
        }
    }

    async fn judge(&mut self) {
        let Some((b, about)) = self.window else {
            return;
        };
        match health::judge(&b, &self.counters(), self.clock.now_ms()) {
            Verdict::Watching => {}
            Verdict::Healthy => {
                self.window = None;
                self.lkg = self.running.clone();
                if let Err(e) = self.store.save(&self.lkg, true) {
                    tracing::error!(error = %e, "Remote config: cannot persist the last known good.");
                }
                tracing::info!(origin = %self.origin(), "Remote config health window passed; last known good now.");
                let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
                v.watching_until_ms = None;
            }
            Verdict::Regressed(reason) => {
                self.window = None;
                let lkg = self.lkg.clone();
                let back = decide::merge(&self.local, lkg.agency.as_ref(), lkg.unit.as_ref());
                let back = match back {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, "Remote config: the last known good no longer validates; rolling back to the local config.");
                        self.lkg = Docs::default();
                        decide::merge(&self.local, None, None).expect("the local config is valid")
                    }
                };
                match self.apply(&back).await {
                    Ok(()) => {
                        self.running = self.lkg.clone();
                        self.running_hash = back.hash;
                        if let Err(e) = self.store.save(&self.running, false) {
                            tracing::error!(error = %e, "Remote config: cannot persist the rollback.");
                        }
                        tracing::warn!(%reason, origin = %self.origin(), "Remote config rolled back to the last known good.");
                        self.report(Some(about), ConfigState::RolledBack { reason });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, %reason, "Remote config: the rollback failed to apply.");
                        self.report(
                            Some(about),
                            ConfigState::Failed {
                                reason: format!("rollback ({reason}) failed: {e}"),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Runs until `stop`: reports the running configuration, then takes
    /// documents and judges health windows.
    pub async fn run(
        mut self,
        mut docs: mpsc::Receiver<(DocScopeKind, Vec<u8>)>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.report(None, ConfigState::Applied);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                d = docs.recv() => match d {
                    Some((k, bytes)) => self.on_doc(k, bytes).await,
                    None => return,
                },
                _ = tick.tick() => self.judge().await,
                _ = crate::probe::schedule::stopped(&mut stop) => return,
            }
        }
    }
}
