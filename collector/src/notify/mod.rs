//! Webhook notifications of unit transitions and incidents, per agency.
//!
//! * [`batch`] (pure): an agency's changes within `batch_window` of the
//!   first go out as ONE [`Notification`]; transitions whose reasons carry
//!   an incident id fold under that incident (one message, not forty).
//! * [`outbox`] (pure): bounded, in-order queue with retries
//!   (`muster_base::backoff`: exponential, equal jitter) and dead letters.
//! * [`sign`]: HMAC-SHA256 over `"{timestamp}.{body}"` with the agency's
//!   secret (`X-Muster-Signature: sha256=<hex>`, `X-Muster-Timestamp`).
//! * [`client`]: hyper 1 + rustls (ring), per-attempt timeout.
//! * [`run`]: the I/O loop. It reads the change broadcast the SSE stream
//!   reads, so ingest never waits for it: a slow or dead receiver only fills
//!   its own agency's queue. If the loop itself falls behind the broadcast,
//!   the missed changes are counted (`muster_webhook_missed_changes_total`).
//!
//! At shutdown the open windows are sent at once and the queues get
//! `drain` to empty; whatever is left then is counted as dead letters
//! (reason `shutdown`) and logged — not persisted: a notification about a
//! state hours old is noise, and the feed's `/api/v1/events` keeps every
//! change for whoever needs to catch up.

pub mod batch;
pub mod client;
pub mod config;
pub mod outbox;
pub mod sign;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use batch::{IncidentGroup, Notification};
pub use config::{RawWebhook, WebhookConfig};

use self::batch::Batcher;
use self::client::WebhookClient;
use self::outbox::{After, DeadReason, Outbox};
use crate::clock::SharedClock;
use crate::metrics::notify::WebhookCounters;
use crate::state::Shared;
use crate::store::StoredEvent;
use muster_base::backoff::Jitter;

/// How long shutdown lets the queues drain by default.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("webhook TLS: {0}")]
    Tls(String),
}

/// One attempt's outcome: the 2xx status, or what went wrong.
pub type PostResult = Result<u16, String>;

/// Where notifications go: the HTTP client in production
/// ([`WebhookClient`]); the loop is injected with it, so its timing is
/// tested under `tokio::time::pause()`.
pub trait Transport: Send + Sync + 'static {
    /// One attempt: sign `body` for `timestamp_s` and deliver it.
    fn post(
        self: Arc<Self>,
        delivery: String,
        timestamp_s: u64,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = PostResult> + Send>>;
}

impl Transport for WebhookClient {
    fn post(
        self: Arc<Self>,
        delivery: String,
        timestamp_s: u64,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = PostResult> + Send>> {
        Box::pin(async move { self.send(&delivery, timestamp_s, body).await })
    }
}

/// A notification ready to send: serialized once, signed per attempt.
#[derive(Debug, Clone)]
struct Prepared {
    id: String,
    body: Bytes,
    changes: usize,
    /// The newest event id it carries.
    upto: u64,
}

struct Agency {
    client: Arc<dyn Transport>,
    batcher: Batcher,
    outbox: Outbox<Prepared>,
    counters: Arc<WebhookCounters>,
    last_error: Option<String>,
    /// Event ids in the open window: the first names the notification in
    /// cluster mode, the last is how far it reaches.
    window_ids: Option<(u64, u64)>,
}

/// Cluster mode: where the notifier says how far each agency's
/// notifications are settled (delivered or dead-lettered), so the next
/// coordinator resumes after them (`crate::cluster::webhooks`).
pub type Settled = tokio::sync::mpsc::UnboundedSender<(String, u64)>;

/// The notifier, built before it runs so a bad `ca_file` fails at start.
pub struct WebhookSender {
    agencies: BTreeMap<String, Agency>,
    shared: Arc<Shared>,
    clock: SharedClock,
    jitter: Jitter,
    prefix: String,
    next: u64,
    /// Cluster mode: notifications are named by their first event id
    /// (`evt-<id>`, the same whichever collector sends them: receivers
    /// dedup on `X-Muster-Delivery`), and settled ones are reported here.
    settled: Option<Settled>,
}

type Attempt = (String, Result<u16, String>);

impl WebhookSender {
    pub fn new(
        webhooks: &BTreeMap<String, WebhookConfig>,
        shared: Arc<Shared>,
        clock: SharedClock,
    ) -> Result<WebhookSender, NotifyError> {
        let mut with = BTreeMap::new();
        for (name, cfg) in webhooks {
            let client: Arc<dyn Transport> = Arc::new(WebhookClient::new(cfg, &cfg.key)?);
            if !cfg.https && !is_loopback(&cfg.url) {
                warn!(agency = %name, url = %cfg.url, "Webhook over plain http: bodies are signed but readable on the way.");
            }
            with.insert(name.clone(), (cfg.clone(), client));
        }
        Ok(WebhookSender::with_transports(with, shared, clock))
    }

    /// As [`WebhookSender::new`], with the transport of each agency given.
    pub fn with_transports(
        webhooks: BTreeMap<String, (WebhookConfig, Arc<dyn Transport>)>,
        shared: Arc<Shared>,
        clock: SharedClock,
    ) -> WebhookSender {
        let mut agencies = BTreeMap::new();
        for (name, (cfg, client)) in webhooks {
            agencies.insert(
                name.clone(),
                Agency {
                    client,
                    batcher: Batcher::new(name.clone(), cfg.batch_window),
                    outbox: Outbox::new(cfg.queue, cfg.max_attempts, cfg.backoff),
                    counters: shared.metrics.notify.register(&name),
                    last_error: None,
                    window_ids: None,
                },
            );
        }
        let mut jitter = Jitter::from_entropy();
        let prefix = format!("{:016x}", jitter.next_u64());
        WebhookSender {
            agencies,
            shared,
            clock,
            jitter,
            prefix,
            next: 0,
            settled: None,
        }
    }

    /// Cluster mode ([`Settled`]).
    pub fn clustered(mut self, settled: Settled) -> WebhookSender {
        self.settled = Some(settled);
        self
    }

    fn settle(&self, agency: &str, upto: u64) {
        if let Some(s) = &self.settled {
            let _ = s.send((agency.to_owned(), upto));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.agencies.is_empty()
    }

    /// Queues the windows that closed (all open ones with `force`), of
    /// every agency or `only` one.
    fn take_batches(&mut self, now: Instant, force: bool, only: Option<&str>) {
        for (name, a) in &mut self.agencies {
            if a.batcher.is_empty() || only.is_some_and(|o| o != name) {
                continue;
            }
            self.next += 1;
            let (first, upto) = a.window_ids.unwrap_or((0, 0));
            let id = match self.settled {
                Some(_) => format!("evt-{first}"),
                None => format!("{}-{}", self.prefix, self.next),
            };
            let Some(n) = a.batcher.take(now, force, id, self.clock.now_ms()) else {
                continue;
            };
            a.window_ids = None;
            let changes = n.transitions.len()
                + n.incidents
                    .iter()
                    .map(|g| 1 + g.transitions.len())
                    .sum::<usize>();
            let body = match serde_json::to_vec(&n) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    a.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
                    warn!(agency = %name, id = %n.id, error = %e, "Webhook notification dead-lettered: cannot serialize.");
                    if let Some(s) = &self.settled {
                        let _ = s.send((name.clone(), upto));
                    }
                    continue;
                }
            };
            debug!(agency = %name, id = %n.id, changes, "Webhook notification queued.");
            let p = Prepared {
                id: n.id,
                body,
                changes,
                upto,
            };
            if let Some(lost) = a.outbox.push(p, now) {
                dead_letter(name, a, &lost, DeadReason::QueueFull);
                if let Some(s) = &self.settled {
                    let _ = s.send((name.clone(), lost.upto));
                }
            }
            a.counters
                .queue_depth
                .store(a.outbox.len() as u64, Ordering::Relaxed);
        }
    }

    fn route(&mut self, ev: &StoredEvent, now: Instant) {
        if let Some(a) = self.agencies.get_mut(ev.agency()) {
            a.counters.changes.fetch_add(1, Ordering::Relaxed);
            a.window_ids = Some(match a.window_ids {
                Some((first, _)) => (first, ev.id),
                None => (ev.id, ev.id),
            });
            if a.batcher.add(ev.change.clone(), now) {
                // Full: this agency's window goes now.
                let agency = ev.agency().to_owned();
                self.take_batches(now, true, Some(&agency));
            }
        }
    }

    fn start_due(&mut self, now: Instant, inflight: &mut JoinSet<Attempt>) {
        let ts = self.clock.now_ms() / 1000;
        for (name, a) in &mut self.agencies {
            if let Some((p, attempt)) = a.outbox.next_due(now) {
                let client = Arc::clone(&a.client);
                let name = name.clone();
                debug!(agency = %name, id = %p.id, attempt, "Webhook delivery.");
                inflight.spawn(async move {
                    // A panicking attempt is a failed attempt, never a
                    // queue stuck "in flight".
                    let r = AssertUnwindSafe(client.post(p.id, ts, p.body))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err("the delivery task panicked".into()));
                    (name, r)
                });
            }
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        self.agencies
            .values()
            .flat_map(|a| [a.batcher.deadline(), a.outbox.wake_at()])
            .flatten()
            .min()
    }

    fn on_attempt(&mut self, (name, r): Attempt, now: Instant) {
        let draw = self.jitter.draw();
        let Some(a) = self.agencies.get_mut(&name) else {
            return;
        };
        let ok = r.is_ok();
        let mut settled = None;
        if let Err(e) = &r {
            a.counters.failed.fetch_add(1, Ordering::Relaxed);
            a.last_error = Some(e.clone());
        }
        match a.outbox.on_result(ok, now, draw) {
            Some(After::Delivered(p)) => {
                a.counters.sent.fetch_add(1, Ordering::Relaxed);
                a.last_error = None;
                debug!(agency = %name, id = %p.id, "Webhook delivered.");
                settled = Some(p.upto);
            }
            Some(After::Retry { at, attempts }) => {
                a.counters.retries.fetch_add(1, Ordering::Relaxed);
                info!(
                    agency = %name,
                    attempts,
                    retry_in_ms = at.saturating_duration_since(now).as_millis() as u64,
                    error = a.last_error.as_deref().unwrap_or(""),
                    "Webhook delivery failed; will retry."
                );
            }
            Some(After::Dead(p, reason)) => {
                dead_letter(&name, a, &p, reason);
                settled = Some(p.upto);
            }
            None => {}
        }
        a.counters
            .queue_depth
            .store(a.outbox.len() as u64, Ordering::Relaxed);
        if let Some(upto) = settled {
            self.settle(&name, upto);
        }
    }

    /// Runs until `stop`, then drains for at most `drain`.
    pub async fn run(
        mut self,
        mut changes: broadcast::Receiver<Arc<StoredEvent>>,
        stop: CancellationToken,
        drain: Duration,
    ) {
        let mut inflight: JoinSet<Attempt> = JoinSet::new();
        let missed = |n: u64, shared: &Shared| {
            shared
                .metrics
                .notify
                .missed_changes
                .fetch_add(n, Ordering::Relaxed);
            warn!(
                missed = n,
                "Webhook notifier fell behind; changes missed (see /api/v1/events)."
            );
        };
        loop {
            let now = Instant::now();
            self.take_batches(now, false, None);
            self.start_due(now, &mut inflight);
            let wake = self.wake_at();
            tokio::select! {
                _ = stop.cancelled() => break,
                r = changes.recv() => match r {
                    Ok(ev) => {
                        // Take everything already broadcast before a window
                        // may close: a transition and the incident it names
                        // are broadcast together and go out together.
                        let now = Instant::now();
                        self.route(&ev, now);
                        loop {
                            match changes.try_recv() {
                                Ok(ev) => self.route(&ev, now),
                                Err(TryRecvError::Lagged(n)) => missed(n, &self.shared),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => missed(n, &self.shared),
                    Err(RecvError::Closed) => break,
                },
                Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(a) = r {
                        self.on_attempt(a, Instant::now());
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
        // Drain: what ingest broadcast before it stopped, the open windows
        // at once, then the queues until empty or the deadline.
        let deadline = Instant::now() + drain;
        loop {
            match changes.try_recv() {
                Ok(ev) => self.route(&ev, Instant::now()),
                Err(TryRecvError::Lagged(n)) => missed(n, &self.shared),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        self.take_batches(now, true, None);
        for a in self.agencies.values_mut() {
            a.outbox.hurry(now);
        }
        loop {
            let now = Instant::now();
            self.start_due(now, &mut inflight);
            if inflight.is_empty() && self.agencies.values().all(|a| a.outbox.is_empty()) {
                break;
            }
            let wake = self.wake_at().map_or(deadline, |w| w.min(deadline));
            tokio::select! {
                Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(a) = r {
                        self.on_attempt(a, Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        inflight.abort_all();
        let handed_over = self.settled.is_some();
        for (name, a) in &mut self.agencies {
            for p in a.outbox.drain() {
                if handed_over {
                    // Not settled: the next coordinator sends it.
                    info!(agency = %name, id = %p.id, "Webhook notification left to the next coordinator.");
                } else {
                    dead_letter(name, a, &p, DeadReason::Shutdown);
                }
            }
            a.counters.queue_depth.store(0, Ordering::Relaxed);
        }
        debug!("Webhook notifier stopped.");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn dead_letter(agency: &str, a: &mut Agency, p: &Prepared, reason: DeadReason) {
    a.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
    warn!(
        %agency,
        id = %p.id,
        changes = p.changes,
        reason = reason.as_str(),
        last_error = a.last_error.as_deref().unwrap_or(""),
        "Webhook notification dead-lettered."
    );
}

fn is_loopback(url: &hyper::Uri) -> bool {
    match url.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    //! The loop under `tokio::time::pause()`: batch window, backoff
    //! schedule, dead letters and the shutdown drain, with a scripted
    //! transport (the HTTP client itself is tested against real receivers
    //! in `tests/collector/webhook.rs`).

    use std::sync::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use crate::model::{Change, Status, Transition};
    use crate::store::FjallStore;

    /// Answers from a script, then `Ok(200)`; `None` in the script hangs.
    struct Scripted {
        script: Mutex<Vec<Option<PostResult>>>,
        calls: Mutex<Vec<(Instant, String, u64)>>,
    }

    impl Transport for Scripted {
        fn post(
            self: Arc<Self>,
            delivery: String,
            timestamp_s: u64,
            _body: Bytes,
        ) -> Pin<Box<dyn Future<Output = PostResult> + Send>> {
            self.calls
                .lock()
                .unwrap()
                .push((Instant::now(), delivery, timestamp_s));
            let mut s = self.script.lock().unwrap();
            let next = if s.is_empty() {
                Some(Ok(200))
            } else {
                s.remove(0)
            };
            Box::pin(async move {
                match next {
                    Some(r) => r,
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn cfg(extra: &str) -> WebhookConfig {
        let text = format!(
            "url = \"http://127.0.0.1:9/hook\"\nsecret = \"s3cret-0123456789\"\nbatch_window = \"2s\"\nbackoff_base = \"1s\"\nbackoff_max = \"10s\"\n{extra}"
        );
        toml::from_str::<RawWebhook>(&text)
            .unwrap()
            .validate("agency[0].webhook")
            .unwrap()
    }

    fn transition(unit: &str) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            id: 1,
            change: Change::Transition(Transition {
                agency: "fire".into(),
                unit: unit.into(),
                from: Status::Ok,
                to: Status::Lost,
                at_ms: 1,
                reasons: vec![],
            }),
        })
    }

    struct Rig {
        _dir: muster_testkit::TempDir,
        shared: Arc<Shared>,
        transport: Arc<Scripted>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn rig(extra: &str, script: Vec<Option<PostResult>>, drain: Duration) -> Rig {
        let dir = muster_testkit::TempDir::new().unwrap();
        let store = FjallStore::open(&dir.path().join("s"), 1 << 20).unwrap();
        let shared = Shared::new(Arc::new(store));
        let transport = Arc::new(Scripted {
            script: Mutex::new(script),
            calls: Mutex::default(),
        });
        let t: Arc<dyn Transport> = transport.clone();
        let n = WebhookSender::with_transports(
            BTreeMap::from([("fire".to_string(), (cfg(extra), t))]),
            Arc::clone(&shared),
            ManualClock::new(1_795_000_000_000),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(n.run(shared.changes.subscribe(), stop.clone(), drain));
        Rig {
            _dir: dir,
            shared,
            transport,
            stop,
            task,
        }
    }

    impl Rig {
        fn counter(&self, f: fn(&WebhookCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
            f(&self.shared.metrics.notify.register("fire")).load(Ordering::Relaxed)
        }

        fn calls(&self) -> Vec<(Instant, String, u64)> {
            self.transport.calls.lock().unwrap().clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn window_then_retries_on_the_backoff_schedule_then_a_dead_letter() {
        let fail = || Some(Err("HTTP 500".to_string()));
        let mut r = rig(
            "max_attempts = 4",
            vec![fail(), fail(), fail(), fail()],
            DRAIN_DEADLINE,
        );
        let t0 = Instant::now();
        r.shared.changes.send(transition("E1")).unwrap();
        r.shared.changes.send(transition("E2")).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let calls = r.calls();
        assert_eq!(calls.len(), 4, "max_attempts attempts");
        // One notification for both transitions, the same id every time.
        assert!(calls.iter().all(|c| c.1 == calls[0].1));
        // First attempt when the 2 s window closes; then 0.5-1 s, 1-2 s, 2-4 s.
        assert_eq!(calls[0].0 - t0, Duration::from_secs(2));
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
        for (i, (gap, nominal)) in gaps.iter().zip([1u64, 2, 4]).enumerate() {
            let nominal = Duration::from_secs(nominal);
            assert!(
                *gap >= nominal / 2 && *gap <= nominal,
                "retry {i}: waited {gap:?}, nominal {nominal:?}"
            );
        }
        assert_eq!(r.counter(|c| &c.changes), 2);
        assert_eq!(r.counter(|c| &c.failed), 4);
        assert_eq!(r.counter(|c| &c.retries), 3);
        assert_eq!(r.counter(|c| &c.dead_letters), 1);
        assert_eq!(r.counter(|c| &c.sent), 0);
        assert_eq!(r.counter(|c| &c.queue_depth), 0);
        r.stop.cancel();
        (&mut r.task).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_after_failures_is_sent_and_the_next_follows_in_order() {
        let mut r = rig(
            "",
            vec![Some(Err("HTTP 502".into())), Some(Ok(204))],
            DRAIN_DEADLINE,
        );
        r.shared.changes.send(transition("E1")).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        r.shared.changes.send(transition("E2")).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let calls = r.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].1, calls[1].1);
        assert_ne!(calls[1].1, calls[2].1, "a second notification, its own id");
        assert_eq!(r.counter(|c| &c.sent), 2);
        assert_eq!(r.counter(|c| &c.retries), 1);
        assert_eq!(r.counter(|c| &c.dead_letters), 0);
        r.stop.cancel();
        (&mut r.task).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_the_open_window_and_counts_what_is_left_after_the_deadline() {
        // The receiver hangs on the first notification; a second one waits
        // behind it; a third is still in its window at shutdown.
        let mut r = rig("timeout = \"1m\"", vec![None], Duration::from_secs(3));
        r.shared.changes.send(transition("E1")).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.shared.changes.send(transition("E2")).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.shared.changes.send(transition("E3")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(r.counter(|c| &c.queue_depth), 2);
        let t = Instant::now();
        r.stop.cancel();
        (&mut r.task).await.unwrap();
        assert_eq!(
            Instant::now() - t,
            Duration::from_secs(3),
            "the drain deadline"
        );
        assert_eq!(
            r.counter(|c| &c.dead_letters),
            3,
            "in flight, queued, and the open window"
        );
        assert_eq!(r.counter(|c| &c.queue_depth), 0);
        assert_eq!(r.calls().len(), 1, "nothing else got past the hung attempt");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_delivers_what_it_can_within_the_deadline() {
        let mut r = rig("", vec![], Duration::from_secs(3));
        r.shared.changes.send(transition("E1")).unwrap();
        // Still in its 2 s window when the collector stops: sent at once.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = Instant::now();
        r.stop.cancel();
        (&mut r.task).await.unwrap();
        assert!(Instant::now() - t < Duration::from_secs(1));
        assert_eq!(r.counter(|c| &c.sent), 1);
        assert_eq!(r.counter(|c| &c.dead_letters), 0);
    }
}
