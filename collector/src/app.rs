//! Wires the collector together: store, rules engine, ingest (MQTT loop,
//! worker, publisher), retention pruning and the HTTP feed. The caller
//! injects the HTTP listener, the clock and the shutdown future (mini-redis
//! style), so tests run the real thing on `127.0.0.1:0`.
//!
//! Shutdown order: the feed stops accepting and open streams end; ingest
//! stops taking messages, commits what it holds and publishes the last
//! acks; the publisher drains and disconnects cleanly; the store is
//! flushed and closed. A broker that is gone cannot hold this up past
//! [`SHUTDOWN_GRACE`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::v5::AsyncClient;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::config::Config;
use crate::enroll::{Enroll, Registry};
use crate::feed::{self, Auth, FeedState};
use crate::gate::book::GateBook;
use crate::ingest::mqtt::{self, MqttError};
use crate::ingest::worker::Worker;
use crate::notify::{self, WebhookSender};
use crate::rules::Engine;
use crate::signing::Signer;
use crate::state::Shared;
use crate::store::{FjallStore, Store, StoreError};

/// How long shutdown waits for the broker to take the last acks.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("store at {path}: {error}")]
    Store { path: String, error: StoreError },
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error(transparent)]
    Signing(#[from] crate::signing::SigningError),
    #[error("gates: {0}")]
    Gates(#[from] crate::gate::book::BookError),
    #[error("actions: {0}")]
    Actions(#[from] crate::actions::audit::AuditError),
}

/// Wraps the opened store (tests inject a slow or failing one around it).
pub type StoreLayer = Box<dyn FnOnce(Arc<dyn Store>) -> Arc<dyn Store> + Send>;

/// Optional wiring of [`run_with`].
#[derive(Default)]
pub struct Wiring {
    /// Wraps the store once it is open.
    pub store_layer: Option<StoreLayer>,
    /// Receives the enrolment registry once it is open (tests use it).
    pub registry: Option<tokio::sync::oneshot::Sender<Arc<Registry>>>,
    /// The embedded broker run by this process: the gate admits the units
    /// the registry holds, and its metrics are served in `/metrics`.
    pub broker: Option<(
        Arc<crate::broker::auth::FleetCredentials>,
        Arc<crate::metrics::broker::BrokerMetrics>,
    )>,
}

/// Runs the collector until `shutdown` completes, then stops cleanly.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    run_with(cfg, listener, clock, shutdown, Wiring::default()).await
}

/// As [`run`], with the optional [`Wiring`].
pub async fn run_with(
    cfg: Config,
    listener: TcpListener,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
    wiring: Wiring,
) -> Result<(), AppError> {
    let nonces = Arc::new(crate::actions::OsNonces);
    run_injected(cfg, listener, clock, shutdown, wiring, nonces).await
}

/// As [`run_with`], with the source of action request nonces injected
/// (tests seed it; [`run`] uses the OS RNG).
pub async fn run_injected(
    cfg: Config,
    listener: TcpListener,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
    wiring: Wiring,
    nonces: Arc<dyn crate::actions::Nonces>,
) -> Result<(), AppError> {
    let store_path = cfg.store.path.clone();
    let cache = cfg.store.cache_bytes;
    let store = tokio::task::spawn_blocking(move || FjallStore::open(&store_path, cache))
        .await
        .map_err(|e| AppError::Task(e.to_string()))?
        .map_err(|source| AppError::Store {
            path: cfg.store.path.display().to_string(),
            error: source,
        })?;
    let mut store: Arc<dyn Store> = Arc::new(store);
    if let Some(layer) = wiring.store_layer {
        store = layer(store);
    }
    let signer = Arc::new(Signer::load(&cfg.signing)?);
    let gates = open_gates(&cfg)?;
    info!(
        public_key = %signer.public_key(),
        next_key = %signer.next_public_key().map(|k| k.to_string()).unwrap_or_else(|| "none".into()),
        key_file = %cfg.signing.key_file.display(),
        "Signing acks and hellos."
    );
    let shared = Shared::new(Arc::clone(&store));
    let registry = {
        let store = Arc::clone(&store);
        let max_pending = cfg.enroll.max_pending;
        let keys: Vec<String> = std::iter::once(signer.public_key())
            .chain(signer.next_public_key())
            .map(|k| k.to_string())
            .collect();
        tokio::task::spawn_blocking(move || Registry::open(store, max_pending, keys))
            .await
            .map_err(|e| AppError::Task(e.to_string()))?
            .map_err(|source| AppError::Store {
                path: cfg.store.path.display().to_string(),
                error: source,
            })?
    };
    let registry = Arc::new(registry);
    if let Some(tx) = wiring.registry {
        let _ = tx.send(Arc::clone(&registry));
    }
    if let Some((units, metrics)) = wiring.broker {
        units.set_enrolled(Arc::clone(&registry) as Arc<dyn crate::broker::auth::UnitCredentials>);
        let _ = shared.metrics.broker.set(metrics);
    }

    let opts = mqtt::options(&cfg.mqtt, cfg.ingest.receive_maximum)?;
    let filters = mqtt::filters(cfg.mqtt.shared_group.as_deref())?;
    // Small: acks wait in the publisher's coalescing queue, not here.
    let (client, eventloop) = AsyncClient::new(opts, 1_024);
    // Acks and status on their own connection when configured (and always
    // on the embedded broker): `Role::Publisher`.
    let publisher_conn = match cfg.mqtt.publisher_connection() {
        Some(p) => {
            // It takes no publishes: a small window.
            let (c, e) = AsyncClient::new(mqtt::options(&p, 16)?, 1_024);
            shared
                .metrics
                .mqtt
                .separate_publisher
                .store(true, Ordering::Relaxed);
            Some((c, e))
        }
        None => None,
    };
    // Raw messages wait for the parse stage (`ingest.queue`); parsed ones,
    // which take several times the memory, in a short hand-off.
    let (raw_tx, raw_rx) = mpsc::channel(cfg.ingest.queue);
    let (in_tx, in_rx) = mpsc::channel(cfg.ingest.queue.min(mqtt::PARSED_QUEUE));
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let config_out = out_tx.clone();

    // Webhooks read the change broadcast: subscribed before ingest starts,
    // so they miss nothing, and never in ingest's way.
    let notifier = WebhookSender::new(&cfg.webhooks, Arc::clone(&shared), Arc::clone(&clock))?;
    let stop_notify = CancellationToken::new();
    let notifier = (!notifier.is_empty()).then(|| {
        tokio::spawn(notifier.run(
            shared.changes.subscribe(),
            stop_notify.clone(),
            notify::DRAIN_DEADLINE,
        ))
    });

    let mut engine = Engine::new(cfg.rules.clone());
    engine.set_baseline_metrics(Arc::clone(&shared.metrics.baseline));
    // The baselines saved at the last clean stop (`rules::baseline`).
    let baseline_file = cfg.store.path.join(crate::rules::baseline::SNAPSHOT_FILE);
    match std::fs::read(&baseline_file) {
        Ok(bytes) => match engine.load_baselines(&bytes, cfg.ingest.max_units) {
            Ok((units, streams, dropped, saved_ms)) => tracing::info!(
                path = %baseline_file.display(),
                units,
                streams,
                dropped,
                saved_ms,
                "Loaded the baselines saved at the last stop."
            ),
            Err(e) => tracing::warn!(
                path = %baseline_file.display(),
                error = %e,
                "Cannot load the saved baselines: they are learned again."
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            path = %baseline_file.display(),
            error = %e,
            "Cannot read the saved baselines: they are learned again."
        ),
    }
    engine.set_peer_metrics(Arc::clone(&shared.metrics.peers));
    engine.set_traffic_metrics(Arc::clone(&shared.metrics.traffic));
    let worker = Worker::new(
        engine,
        Arc::clone(&shared),
        Arc::clone(&clock),
        out_tx,
        cfg.ingest.clone(),
        cfg.mqtt.publish_status,
    )
    .map_err(|source| AppError::Store {
        path: cfg.store.path.display().to_string(),
        error: source,
    })?;
    let worker = worker.with_baseline_file(baseline_file);

    let stop_ingest = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let stop_feed = CancellationToken::new();

    let event_loop = tokio::spawn(mqtt::run_event_loop(
        eventloop,
        client.clone(),
        mqtt::Role::Subscriber {
            inbound: raw_tx,
            hello: mqtt::OnConnect {
                filters,
                signer: Arc::clone(&signer),
                started_ms: clock.now_ms(),
                counter: 0,
            },
        },
        Arc::clone(&shared),
        stop_ingest.clone(),
        hard_stop.clone(),
    ));
    // The publisher disconnects its client once everything queued is out;
    // with a separate connection, the subscriber's is disconnected after it.
    let (publishing_client, publisher_loop, subscriber_client) = match publisher_conn {
        Some((c, e)) => {
            let task = tokio::spawn(mqtt::run_event_loop(
                e,
                c.clone(),
                mqtt::Role::Publisher,
                Arc::clone(&shared),
                stop_ingest.clone(),
                hard_stop.clone(),
            ));
            (c, Some(task), Some(client))
        }
        None => (client, None, None),
    };
    let publisher = tokio::spawn(mqtt::run_publisher(
        publishing_client,
        out_rx,
        Arc::clone(&shared),
        Arc::clone(&signer),
    ));
    let parser = tokio::spawn(mqtt::run_parser(raw_rx, in_tx));
    // The worker's control queue: rollout steps become events there, and
    // action steps are logged there.
    let (control_tx, control_rx) = mpsc::channel(256);
    let actions = Arc::new(crate::actions::Actions::open(
        cfg.actions,
        &cfg.store.path,
        crate::actions::Wires {
            shared: Arc::clone(&shared),
            signer: Arc::clone(&signer),
            control: control_tx.clone(),
            nonces,
            clock: Arc::clone(&clock),
        },
    )?);
    {
        let (a, now) = (Arc::clone(&actions), clock.now_ms());
        let restored = tokio::task::spawn_blocking(move || a.restore(now))
            .await
            .map_err(|e| AppError::Task(e.to_string()))?
            .map_err(|source| AppError::Store {
                path: cfg.store.path.display().to_string(),
                error: source,
            })?;
        if restored > 0 {
            info!(
                pending = restored,
                "Action requests still waiting for their units."
            );
        }
    }
    let automation = Arc::new(
        crate::automation::Automation::open(&cfg.rules, Some(cfg.store.path.as_path()))
            .map_err(|e| AppError::Task(format!("automation: {e}")))?,
    );
    let worker = worker
        .with_actions(Arc::clone(&actions))
        .with_automation(Arc::clone(&automation));
    let worker = tokio::spawn(worker.run_controlled(in_rx, control_rx, stop_ingest.clone()));
    let stop_actions = CancellationToken::new();
    let actions_loop = tokio::spawn(Arc::clone(&actions).run(stop_actions.clone()));
    let pruner = tokio::spawn(prune_loop(
        Arc::clone(&shared),
        Arc::clone(&clock),
        retention(&cfg),
        cfg.store.event_retention,
        cfg.store.prune_interval,
        stop_ingest.clone(),
    ));

    let config_docs = crate::feed::config::ConfigDocs {
        book: Arc::new(
            crate::remote::ConfigBook::open(Some(cfg.store.path.as_path()), cfg.max_config_docs)
                .map_err(|e| AppError::Task(format!("remote config documents: {e}")))?,
        ),
        signer: Arc::clone(&signer),
        out: config_out,
    };
    let republished = config_docs.republish_all();
    if republished > 0 {
        info!(
            documents = republished,
            "Remote config documents republished (retained)."
        );
    }
    let rollouts = Arc::new(crate::rollout::Rollouts {
        book: Arc::new(
            crate::rollout::book::RolloutBook::open(
                Some(cfg.store.path.as_path()),
                cfg.rollouts.max,
            )
            .map_err(|e| AppError::Task(format!("rollouts: {e}")))?,
        ),
        docs: config_docs.clone(),
        shared: Arc::clone(&shared),
        clock: Arc::clone(&clock),
        events: control_tx,
        max_results: cfg.gates.max_results,
    });
    let stop_rollouts = CancellationToken::new();
    let rollout_loop =
        tokio::spawn(Arc::clone(&rollouts).run(cfg.rollouts.tick, stop_rollouts.clone()));
    let http = spawn_feed_with(
        &cfg,
        listener,
        Arc::clone(&shared),
        Arc::clone(&clock),
        FeedParts {
            registry: Arc::clone(&registry),
            gates,
            config_docs: Some(config_docs),
            rollouts: Some(rollouts),
            automation: Some(Arc::clone(&automation)),
        },
        Some(actions),
        stop_feed.clone(),
    );

    let systemd = tokio::spawn(crate::service::systemd(
        Arc::clone(&shared),
        stop_feed.clone(),
    ));

    shutdown.await;
    info!("Shutting down.");
    stop_feed.cancel();
    let _ = systemd.await;
    // Rollouts stop before ingest: their last steps reach the worker.
    stop_rollouts.cancel();
    if let Err(e) = rollout_loop.await {
        warn!(error = %e, "Rollout loop failed.");
    }
    stop_ingest.cancel();
    let grace = tokio::spawn({
        let hard_stop = hard_stop.clone();
        async move {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            warn!("Shutdown grace period over; dropping the MQTT connection.");
            hard_stop.cancel();
        }
    });
    let mut result = Ok(());
    if let Err(e) = http.await {
        result = Err(AppError::Task(e.to_string()));
    }
    // The parser ends with the subscriber's event loop (which holds its
    // input), awaited last.
    for (name, t) in [("ingest worker", worker), ("pruner", pruner)] {
        if let Err(e) = t.await {
            warn!(task = name, error = %e, "Task failed.");
        }
    }
    // The worker's last commit is in: the audit file takes the last steps.
    stop_actions.cancel();
    if let Err(e) = actions_loop.await {
        warn!(error = %e, "Actions task failed.");
    }
    // Ingest has broadcast its last changes: the webhooks drain them.
    stop_notify.cancel();
    if let Some(n) = notifier
        && let Err(e) = n.await
    {
        warn!(error = %e, "Webhook notifier failed.");
    }
    if let Err(e) = publisher.await {
        warn!(error = %e, "Publisher task failed.");
    }
    if let Some(t) = publisher_loop
        && let Err(e) = t.await
    {
        warn!(error = %e, "MQTT publisher connection task failed.");
    }
    if let Some(c) = subscriber_client {
        let _ = c.disconnect().await;
    }
    if let Err(e) = event_loop.await {
        warn!(error = %e, "MQTT task failed.");
    }
    if let Err(e) = parser.await {
        warn!(task = "parser", error = %e, "Task failed.");
    }
    grace.abort();
    let store = Arc::clone(&shared.store);
    drop(shared);
    // Everything acked is already flushed; this closes the store.
    drop(store);
    info!("Stopped.");
    result
}

/// What the feed serves besides the live view: enrolment, deploy gates
/// and (single node) remote config documents.
pub(crate) struct FeedParts {
    pub registry: Arc<Registry>,
    pub gates: Arc<GateBook>,
    pub config_docs: Option<crate::feed::config::ConfigDocs>,
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
    /// Single node: automation's kill switches (`crate::automation`).
    pub automation: Option<Arc<crate::automation::Automation>>,
}

/// Serves the HTTP feed on `listener` until `stop_feed` (both modes);
/// without actions (cluster mode: 501).
pub(crate) fn spawn_feed(
    cfg: &Config,
    listener: TcpListener,
    shared: Arc<Shared>,
    clock: SharedClock,
    parts: FeedParts,
    stop_feed: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    spawn_feed_with(cfg, listener, shared, clock, parts, None, stop_feed)
}

/// As [`spawn_feed`], with the actions a single node issues.
pub(crate) fn spawn_feed_with(
    cfg: &Config,
    listener: TcpListener,
    shared: Arc<Shared>,
    clock: SharedClock,
    parts: FeedParts,
    actions: Option<Arc<crate::actions::Actions>>,
    stop_feed: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let FeedParts {
        registry,
        gates,
        config_docs,
        rollouts,
        automation,
    } = parts;
    let drop_log = Arc::new(feed::server::DropLog::new(cfg.ingest.refusal_log_interval));
    let limits = feed::server::ServerLimits {
        timeouts: feed::limits::Timeouts {
            header_read: cfg.http.header_read_timeout,
            idle: cfg.http.idle_timeout,
        },
        max_connections: cfg.http.max_connections,
    };
    let state = FeedState {
        shared: Arc::clone(&shared),
        auth: Arc::new(
            Auth::new(cfg.admin_token.clone(), cfg.agencies.clone())
                .with_operators(cfg.operators.clone()),
        ),
        clock: Arc::clone(&clock),
        sse_keep_alive: cfg.http.sse_keep_alive,
        metrics_require_token: cfg.http.metrics_require_token,
        shutdown: stop_feed.clone(),
        sse_buffer: cfg.http.sse_buffer,
        sse_send_timeout: cfg.http.sse_send_timeout,
        drop_log: Arc::clone(&drop_log),
        enroll: Arc::new(Enroll::new(
            registry,
            &cfg.enroll,
            cfg.ingest.refusal_log_interval.as_millis() as u64,
        )),
        retention: retention(cfg),
        gates,
        gate_max_results: cfg.gates.max_results,
        config_docs,
        rollouts,
        automation,
        runbooks: Arc::clone(&cfg.runbooks),
        actions,
        action_refusals: Arc::new(std::sync::Mutex::new(
            crate::ingest::refusal::RefusalLog::new(
                cfg.ingest.refusal_log_interval.as_millis() as u64
            ),
        )),
    };
    if let Ok(addr) = listener.local_addr() {
        match &cfg.cluster {
            None => {
                info!(%addr, broker = %format!("{}:{}", cfg.mqtt.host, cfg.mqtt.port), "Collector started.")
            }
            Some(c) => {
                info!(%addr, id = %c.id, nats = ?c.nats, "Collector started (cluster mode).")
            }
        }
    }
    tokio::spawn(feed::server::serve(
        listener,
        feed::router(state),
        limits,
        shared,
        drop_log,
        stop_feed,
    ))
}

/// The deploy gates: single node, persisted beside the store; cluster
/// mode, in memory (`crate::gate::book`).
pub(crate) fn open_gates(cfg: &Config) -> Result<Arc<GateBook>, AppError> {
    let dir = cfg.cluster.is_none().then_some(cfg.store.path.as_path());
    Ok(Arc::new(GateBook::open(dir, cfg.gates.max)?))
}

/// The store's retention, from `[store]`.
pub(crate) fn retention(cfg: &Config) -> crate::store::rollup::Retention {
    crate::store::rollup::Retention {
        raw: cfg.store.sample_retention,
        minute: cfg.store.minute_retention,
        hour: cfg.store.hour_retention,
    }
}

/// Every `every`: one retention round (`store::retention_round`): rolls up
/// raw samples, then drops what expired.
pub(crate) async fn prune_loop(
    shared: Arc<Shared>,
    clock: SharedClock,
    retention: crate::store::rollup::Retention,
    event_retention: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = t.tick() => {}
        }
        let now = clock.now_ms();
        let store = Arc::clone(&shared.store);
        let started = tokio::time::Instant::now();
        match tokio::task::spawn_blocking(move || {
            crate::store::retention_round(&*store, now, &retention, event_retention)
        })
        .await
        {
            Ok(Ok((r, st))) => {
                let m = &shared.metrics.store;
                m.retention_seconds.observe(started.elapsed());
                m.record_retention(&r, &st);
                if r.samples_pruned
                    + st.samples
                    + st.events
                    + st.incidents
                    + r.minutes_pruned
                    + r.hours_pruned
                    > 0
                {
                    info!(
                        minutes_rolled = r.minutes_rolled,
                        hours_rolled = r.hours_rolled,
                        samples = r.samples_pruned + st.samples,
                        minutes = r.minutes_pruned,
                        hours = r.hours_pruned,
                        events = st.events,
                        incidents = st.incidents,
                        "Pruned."
                    );
                }
            }
            Ok(Err(e)) => {
                shared.metrics.store.errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "Retention round failed.");
            }
            Err(e) => warn!(error = %e, "Retention task failed."),
        }
    }
}
