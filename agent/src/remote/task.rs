//! The remote config task: documents from the uplink in, checked, merged,
//! handed to the run loop to apply ([`Reconfigure`]), reported as
//! `ConfigStatus` records, watched for a health window, rolled back.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::{
    ConfigDoc, ConfigState, ConfigStatus, DocRef, DocScopeKind, Payload, RefusalReason, TrustedKeys,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::decide::{self, Effective, Refused};
use super::health::{self, AtStart, Baseline, Verdict};
use super::store::{Docs, Store, Window};
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
    /// The health window carried over the restart (this start counted).
    pub window: Option<Window>,
    /// Rolled back at this start ([`health::at_start`]): the document and
    /// why, reported `rolled_back` once the task runs.
    pub rolled_back: Option<((DocScopeKind, DocRef), String)>,
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
/// A health window persisted open is carried over, this start counted, or
/// rolls back to the last known good ([`health::at_start`]); `now_ms` is
/// the agent's clock.
pub fn startup(local: &Config, trusted: &TrustedKeys, now_ms: u64) -> Startup {
    let store = Store::new(&local.data_dir);
    let mut seen = store.seen().unwrap_or_else(|e| {
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
    // (effective, running, last known good)
    let local_only = || {
        let effective = decide::merge(local, None, None).expect("the local config is valid");
        (effective, Docs::default(), Docs::default())
    };
    let attempt = |docs: &Docs| {
        decide::merge(local, docs.agency.as_ref(), docs.unit.as_ref()).map_err(|e| e.to_string())
    };
    let (mut effective, mut running, mut lkg) = if local.remote.allow.is_empty() {
        local_only()
    } else {
        let running = store
            .load_raw(false)
            .map_err(|e| e.to_string())
            .and_then(|raw| check_stored(raw, local, trusted));
        match running.and_then(|d| attempt(&d).map(|e| (d, e))) {
            Ok((running, effective)) => (effective, running, lkg),
            Err(e) => {
                tracing::warn!(error = %e, "Remote config: running documents unusable; starting on the last known good.");
                match attempt(&lkg) {
                    Ok(effective) => (effective, lkg.clone(), lkg),
                    Err(e) => {
                        tracing::warn!(error = %e, "Remote config: last known good unusable; starting on the local config.");
                        local_only()
                    }
                }
            }
        }
    };
    // The health window left open by the last process. Remote config off:
    // left as it is, for when it is on again.
    let persisted = if local.remote.allow.is_empty() {
        None
    } else {
        store.window().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Remote config: the persisted health window is unreadable; dropped.");
            let _ = store.save_window(None);
            None
        })
    };
    let mut window = None;
    let mut rolled_back = None;
    if let Some(w) = persisted {
        let save = |w: Option<&Window>| {
            if let Err(e) = store.save_window(w) {
                tracing::error!(error = %e, "Remote config: cannot persist the health window.");
            }
        };
        if running.get(w.scope).map(decide::doc_ref) != Some(w.doc) {
            // The document it was about does not run (it no longer
            // verifies, say): nothing to watch.
            tracing::info!(scope = ?w.scope, version = w.doc.version, "Remote config: the persisted health window is about a document not running; dropped.");
            save(None);
        } else {
            let window_ms = local.remote.health_window.as_millis() as u64;
            match health::at_start(&w, now_ms, window_ms) {
                AtStart::Watch(next) => {
                    tracing::info!(scope = ?next.scope, version = next.doc.version, starts = next.starts, until_ms = next.opened_ms.saturating_add(next.window_ms), "Remote config: a health window is open; watching it again.");
                    save(Some(&next));
                    window = Some(next);
                }
                AtStart::RollBack(reason) => {
                    tracing::warn!(%reason, "Remote config: restarting in a loop within a health window; starting on the last known good.");
                    (effective, running, lkg) = match attempt(&lkg) {
                        Ok(effective) => (effective, lkg.clone(), lkg),
                        Err(e) => {
                            tracing::warn!(error = %e, "Remote config: last known good unusable; starting on the local config.");
                            local_only()
                        }
                    };
                    if let Err(e) = store.save(&running, false) {
                        tracing::error!(error = %e, "Remote config: cannot persist the rollback.");
                    }
                    // Never applied again, even were the version seen lost.
                    let seen_k = match w.scope {
                        DocScopeKind::Agency => &mut seen.0,
                        DocScopeKind::Unit => &mut seen.1,
                    };
                    if seen_k.is_none_or(|s| s.version < w.doc.version) {
                        *seen_k = Some(w.doc);
                        if let Err(e) = store.save_seen(seen.0, seen.1) {
                            tracing::error!(error = %e, "Remote config: cannot persist the versions seen.");
                        }
                    }
                    save(None);
                    rolled_back = Some(((w.scope, w.doc), reason));
                }
            }
        }
    }
    Startup {
        effective,
        running,
        lkg,
        seen,
        window,
        rolled_back,
    }
}

/// The task's state.
pub struct Remote {
    local: Config,
    trusted: TrustedKeys,
    store: Store,
    clock: Arc<dyn Clock>,
    tx: ObservationTx,
    reconf: mpsc::Sender<Reconfigure>,
    /// The uplink's view: the last ack and the counts the health window
    /// judges ([`crate::uplink::UplinkView::health`]).
    uplink: Arc<crate::uplink::UplinkView>,
    view: Arc<Mutex<ConfigView>>,
    running: Docs,
    running_hash: [u8; 32],
    lkg: Docs,
    seen_agency: Option<DocRef>,
    seen_unit: Option<DocRef>,
    /// An open health window: its baseline and what is persisted of it
    /// (the document it is about, the starts within it). Rolling back goes
    /// to the last known good.
    window: Option<(Baseline, Window)>,
    /// Rolled back at start, to report first.
    rolled_back: Option<((DocScopeKind, DocRef), String)>,
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
        uplink: Arc<crate::uplink::UplinkView>,
        view: Arc<Mutex<ConfigView>>,
    ) -> Remote {
        Remote {
            store: Store::new(&local.data_dir),
            local,
            trusted,
            clock,
            tx,
            reconf,
            uplink,
            view,
            running_hash: start.effective.hash,
            running: start.running,
            lkg: start.lkg,
            seen_agency: start.seen.0,
            seen_unit: start.seen.1,
            window: start
                .window
                .map(|w| (health::carried(w.opened_ms, w.window_ms), w)),
            rolled_back: start.rolled_back,
            refused: [0; RefusalReason::ALL.len()],
        }
    }

    /// Opens (`Some`) or closes the health window, persisted.
    fn set_window(&mut self, w: Option<(Baseline, Window)>) {
        if let Err(e) = self.store.save_window(w.as_ref().map(|(_, w)| w)) {
            tracing::error!(error = %e, "Remote config: cannot persist the health window; a crash loop within it would not roll back.");
        }
        self.window = w;
    }

    /// The agent is stopping in order (a terminate asked for, not the
    /// uplink failing): the next start, within an open health window, is
    /// not counted as a crash.
    pub fn stopped_cleanly(&self) {
        let Some((_, w)) = &self.window else {
            return;
        };
        let w = Window {
            clean_stop: true,
            ..*w
        };
        match self.store.save_window(Some(&w)) {
            Ok(()) => {
                tracing::debug!("Remote config: clean stop recorded in the open health window.")
            }
            Err(e) => {
                tracing::warn!(error = %e, "Remote config: cannot record the clean stop; the next start counts as a crash.")
            }
        }
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
                .map(|(b, _)| b.applied_ms.saturating_add(b.window_ms));
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
        let checked = decide::check(&bytes, k, &self.local.unit, &self.trusted, self.seen(k));
        let checked = match checked {
            Err(e) if e.reason == RefusalReason::UntrustedKey && self.reload_trust() => {
                decide::check(&bytes, k, &self.local.unit, &self.trusted, self.seen(k))
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
        self.set_window(Some((
            health::baseline(&self.uplink.health(), now, window_ms),
            Window {
                scope: k,
                doc: r,
                opened_ms: now,
                window_ms,
                starts: 1,
                clean_stop: false,
            },
        )));
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
        let Some((b, w)) = self.window else {
            return;
        };
        let about = (w.scope, w.doc);
        match health::judge(&b, &self.uplink.health(), self.clock.now_ms()) {
            Verdict::Watching => {}
            Verdict::Healthy => {
                self.set_window(None);
                self.lkg = self.running.clone();
                if let Err(e) = self.store.save(&self.lkg, true) {
                    tracing::error!(error = %e, "Remote config: cannot persist the last known good.");
                }
                tracing::info!(origin = %self.origin(), "Remote config health window passed; last known good now.");
                let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
                v.watching_until_ms = None;
            }
            Verdict::Regressed(reason) => {
                // The persisted window goes once the rollback is: a crash
                // before then still counts against the document.
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
                self.set_window(None);
            }
        }
    }

    /// Runs until `stop`: reports the running configuration (or the
    /// rollback made at start), then takes documents and judges health
    /// windows. Returns itself, for [`Remote::stopped_cleanly`].
    pub async fn run(
        mut self,
        mut docs: mpsc::Receiver<(DocScopeKind, Vec<u8>)>,
        mut stop: watch::Receiver<bool>,
    ) -> Remote {
        match self.rolled_back.take() {
            Some((about, reason)) => self.report(Some(about), ConfigState::RolledBack { reason }),
            None => self.report(None, ConfigState::Applied),
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                d = docs.recv() => match d {
                    Some((k, bytes)) => self.on_doc(k, bytes).await,
                    None => return self,
                },
                _ = tick.tick() => self.judge().await,
                _ = crate::probe::schedule::stopped(&mut stop) => return self,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::{DocScope, SigningKey, UnitId, sign};

    use muster_base::clock::ManualClock;

    const T0: u64 = 1_700_000_000_000;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[9; 32])
    }

    fn local(dir: &std::path::Path, allow: &str) -> Config {
        let text = format!(
            "agency = \"metro-pd\"\nunit_id = \"car-12\"\ndata_dir = {dir:?}\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n\
             [trust]\ncollector_keys = [\"{}\"]\n\
             [remote]\nallow = [{allow}]\n\
             [sampling]\ninterval = \"5s\"\n",
            key().public_key()
        );
        Config::parse(&text).unwrap()
    }

    fn trusted() -> TrustedKeys {
        let mut t = TrustedKeys::new();
        t.insert(key().public_key()).unwrap();
        t
    }

    fn unit_docs(version: u64, interval: &str) -> Docs {
        let unit = UnitId::new("metro-pd", "car-12").unwrap();
        let body = format!("[sampling]\ninterval = \"{interval}\"\n");
        Docs {
            agency: None,
            unit: Some(sign::sign_config(
                &key(),
                DocScope::Unit { unit },
                version,
                1,
                body,
            )),
        }
    }

    /// Each fall-back of [`startup`]: the running documents, the last
    /// known good, the local config; and remote config off.
    #[test]
    fn startup_falls_back_running_then_last_known_good_then_local() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let store = Store::new(dir.path());
        let (running, lkg) = (unit_docs(2, "10s"), unit_docs(1, "20s"));
        store.save(&running, false).unwrap();
        store.save(&lkg, true).unwrap();
        let seen = DocRef {
            version: 2,
            hash: sign::config_hash(running.unit.as_ref().unwrap()),
        };
        store.save_seen(None, Some(seen)).unwrap();
        let on = local(dir.path(), "\"sampling\"");
        let interval = |s: &Startup| s.effective.config.sampling.interval.as_secs();

        let s = startup(&on, &trusted(), T0);
        assert_eq!(
            (interval(&s), &s.running, &s.lkg, s.seen),
            (10, &running, &lkg, (None, Some(seen)))
        );

        // Remote config off: the local config alone, whatever is stored.
        let s = startup(&local(dir.path(), ""), &trusted(), T0);
        assert_eq!(
            (interval(&s), &s.running, &s.lkg, s.seen),
            (5, &Docs::default(), &Docs::default(), (None, Some(seen)))
        );

        // The running documents no longer verify: the last known good.
        let running_file = dir.path().join("remote").join("unit.doc");
        std::fs::write(&running_file, b"garbage").unwrap();
        let s = startup(&on, &trusted(), T0);
        assert_eq!((interval(&s), &s.running, &s.lkg), (20, &lkg, &lkg));

        // Neither does the last known good: the local config.
        std::fs::write(dir.path().join("remote").join("lkg-unit.doc"), b"garbage").unwrap();
        let s = startup(&on, &trusted(), T0);
        assert_eq!(
            (interval(&s), &s.running, &s.lkg),
            (5, &Docs::default(), &Docs::default())
        );
    }

    fn unit_ref(d: &Docs) -> DocRef {
        decide::doc_ref(d.unit.as_ref().unwrap())
    }

    /// What a persisted window does at [`startup`] where it is not about
    /// the running documents, and with remote config off.
    #[test]
    fn startup_drops_a_window_about_another_document_and_keeps_it_with_remote_off() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let store = Store::new(dir.path());
        let running = unit_docs(2, "10s");
        store.save(&running, false).unwrap();
        let w = Window {
            scope: DocScopeKind::Unit,
            doc: unit_ref(&running),
            opened_ms: T0,
            window_ms: 60_000,
            starts: 1,
            clean_stop: false,
        };
        store.save_window(Some(&w)).unwrap();
        // Off: untouched, not counted.
        let s = startup(&local(dir.path(), ""), &trusted(), T0 + 1_000);
        assert_eq!((s.window, &s.rolled_back), (None, &None));
        assert_eq!(store.window().unwrap(), Some(w));
        // About another version of the unit's document: dropped.
        let other = Window {
            doc: unit_ref(&unit_docs(3, "10s")),
            ..w
        };
        store.save_window(Some(&other)).unwrap();
        let on = local(dir.path(), "\"sampling\"");
        let s = startup(&on, &trusted(), T0 + 1_000);
        assert_eq!(
            (s.window, &s.rolled_back, &s.running),
            (None, &None, &running)
        );
        assert_eq!(store.window().unwrap(), None);
        // Unreadable: dropped too.
        std::fs::write(dir.path().join("remote").join("window.json"), b"[").unwrap();
        let s = startup(&on, &trusted(), T0 + 1_000);
        assert_eq!((s.window, &s.running), (None, &running));
        assert_eq!(store.window().unwrap(), None);
    }

    /// The running task, where documents go, its stop, what it reports.
    type Running = (
        tokio::task::JoinHandle<Remote>,
        mpsc::Sender<(DocScopeKind, Vec<u8>)>,
        watch::Sender<bool>,
        mpsc::Receiver<Observation>,
    );

    /// The task with the run loop's side answering every reconfiguration.
    fn task(on: &Config, start: Startup, clock: Arc<ManualClock>) -> Running {
        let (tx, rx) = mpsc::channel(64);
        let (reconf_tx, mut reconf_rx) = mpsc::channel::<Reconfigure>(1);
        tokio::spawn(async move {
            while let Some(r) = reconf_rx.recv().await {
                let _ = r.done.send(Ok(()));
            }
        });
        let r = Remote::new(
            on.clone(),
            trusted(),
            start,
            clock,
            tx,
            reconf_tx,
            Arc::default(),
            Arc::default(),
        );
        let (docs_tx, docs_rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = watch::channel(false);
        (tokio::spawn(r.run(docs_rx, stop_rx)), docs_tx, stop_tx, rx)
    }

    async fn next_step(rx: &mut mpsc::Receiver<Observation>) -> ConfigStatus {
        match rx.recv().await.expect("a step").payload {
            Payload::Config(c) => c,
            other => panic!("{other:?}"),
        }
    }

    /// The health window across restarts: persisted when a document
    /// applies, counted at each start, not counted after a clean stop,
    /// and at the third counted start the last known good runs, the
    /// document is reported rolled back and is never applied again.
    #[tokio::test(start_paused = true)]
    async fn a_crash_loop_within_the_health_window_rolls_back_at_start() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let store = Store::new(dir.path());
        let lkg = unit_docs(1, "20s");
        store.save(&lkg, false).unwrap();
        store.save(&lkg, true).unwrap();
        store.save_seen(None, Some(unit_ref(&lkg))).unwrap();
        let on = local(dir.path(), "\"sampling\"");
        let lkg_hash = startup(&on, &trusted(), T0).effective.hash;

        // Start 1: v2 arrives and applies; its window is persisted.
        let (t, docs, _stop, mut rx) =
            task(&on, startup(&on, &trusted(), T0), ManualClock::new(T0));
        assert_eq!(next_step(&mut rx).await.state, ConfigState::Applied);
        let v2 = unit_docs(2, "10s");
        let v2_bytes = muster_proto::encode_config(v2.unit.as_ref().unwrap()).unwrap();
        docs.send((DocScopeKind::Unit, v2_bytes.clone()))
            .await
            .unwrap();
        assert_eq!(next_step(&mut rx).await.state, ConfigState::Applying);
        let applied = next_step(&mut rx).await;
        assert_eq!(applied.state, ConfigState::Applied);
        let w = Window {
            scope: DocScopeKind::Unit,
            doc: unit_ref(&v2),
            opened_ms: T0,
            window_ms: 300_000,
            starts: 1,
            clean_stop: false,
        };
        assert_eq!(store.window().unwrap(), Some(w));
        // kill -9: nothing more is written.
        t.abort();

        // Start 2, 10 s later: v2 runs, the window carried, counted.
        let s = startup(&on, &trusted(), T0 + 10_000);
        assert_eq!((&s.running, &s.rolled_back), (&v2, &None));
        let carried = Window { starts: 2, ..w };
        assert_eq!(
            (s.window, store.window().unwrap()),
            (Some(carried), Some(carried))
        );
        // ... stopped cleanly (SIGTERM): recorded.
        let (t, _docs, stop, mut rx) = task(&on, s, ManualClock::new(T0 + 10_000));
        let first = next_step(&mut rx).await;
        assert_eq!((first.doc, first.running_unit), (None, Some(unit_ref(&v2))));
        stop.send(true).unwrap();
        t.await.unwrap().stopped_cleanly();
        let clean = Window {
            clean_stop: true,
            ..carried
        };
        assert_eq!(store.window().unwrap(), Some(clean));

        // Start 3: after a clean stop, not counted.
        let s = startup(&on, &trusted(), T0 + 20_000);
        assert_eq!((&s.running, s.window), (&v2, Some(carried)));
        // kill -9 again (no clean stop recorded). Start 4: the third
        // counted start within the window: the last known good.
        let s = startup(&on, &trusted(), T0 + 30_000);
        let reason = "the agent restarted 2 times within the health window of unit v2";
        assert_eq!(
            (&s.running, &s.lkg, s.window, s.effective.hash),
            (&lkg, &lkg, None, lkg_hash)
        );
        assert_eq!(
            s.rolled_back,
            Some(((DocScopeKind::Unit, unit_ref(&v2)), reason.to_owned()))
        );
        assert_eq!(s.effective.config.sampling.interval.as_secs(), 20);
        // Persisted: the next start is on the last known good, no window.
        assert_eq!(store.window().unwrap(), None);
        let again = startup(&on, &trusted(), T0 + 31_000);
        assert_eq!(
            (&again.running, again.window, &again.rolled_back),
            (&lkg, None, &None)
        );
        assert_eq!(again.seen.1, Some(unit_ref(&v2)));

        // Reported, as a record, for v2, running the last known good.
        let (_t, docs, _stop, mut rx) = task(&on, s, ManualClock::new(T0 + 30_000));
        let back = next_step(&mut rx).await;
        assert_eq!(
            back,
            ConfigStatus {
                doc: Some((DocScopeKind::Unit, unit_ref(&v2))),
                state: ConfigState::RolledBack {
                    reason: reason.to_owned()
                },
                running: lkg_hash,
                running_agency: None,
                running_unit: Some(unit_ref(&lkg)),
            }
        );
        // v2 again (retained, redelivered): nothing; v3 applies.
        docs.send((DocScopeKind::Unit, v2_bytes)).await.unwrap();
        let v3 = unit_docs(3, "30s");
        let v3_bytes = muster_proto::encode_config(v3.unit.as_ref().unwrap()).unwrap();
        docs.send((DocScopeKind::Unit, v3_bytes)).await.unwrap();
        let next = next_step(&mut rx).await;
        assert_eq!(
            (next.doc, next.state),
            (
                Some((DocScopeKind::Unit, unit_ref(&v3))),
                ConfigState::Applying
            )
        );
    }

    /// A window carried over a restart ends when it would have: still up
    /// then, the documents become the last known good and the persisted
    /// window goes.
    #[tokio::test(start_paused = true)]
    async fn a_carried_window_passes_at_its_end() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let store = Store::new(dir.path());
        let v2 = unit_docs(2, "10s");
        store.save(&v2, false).unwrap();
        let w = Window {
            scope: DocScopeKind::Unit,
            doc: unit_ref(&v2),
            opened_ms: T0,
            window_ms: 60_000,
            starts: 1,
            clean_stop: false,
        };
        store.save_window(Some(&w)).unwrap();
        let on = local(dir.path(), "\"sampling\"");
        let s = startup(&on, &trusted(), T0 + 50_000);
        assert_eq!(s.window, Some(Window { starts: 2, ..w }));
        let clock = ManualClock::new(T0 + 50_000);
        let (_t, _docs, _stop, mut rx) = task(&on, s, clock.clone());
        next_step(&mut rx).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(store.window().unwrap().is_some(), "still open");
        assert!(store.load_raw(true).unwrap().is_empty());
        clock.set(T0 + 60_000);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(store.window().unwrap(), None);
        assert_eq!(
            store.load_raw(true).unwrap(),
            vec![(
                DocScopeKind::Unit,
                muster_proto::encode_config(v2.unit.as_ref().unwrap()).unwrap()
            )]
        );
    }
}
