//! One collector of a cluster: ingest from JetStream partition consumers
//! into the shared PostgreSQL store, for the partitions this collector
//! leases, and the whole fleet's feed from that store.
//!
//! Contract:
//! * **Ownership.** The lease loop ticks every `cluster.lease_renew`
//!   (heartbeat, read, [`super::lease::plan`], compare-and-sets). Its
//!   result is turned into [`super::lease::moves`] against the partitions
//!   acted on. A lost partition: its pull stops, the store's held epochs
//!   drop it (its commits are then refused, [`super::pg::fence`]), and the
//!   worker forgets its units, nak'ing their unstored deliveries. An
//!   acquired one: the held epoch is set, the worker adopts the
//!   partition's units from the store, and only then does its pull start.
//!   A lease is acted on only until its local-clock deadline
//!   ([`super::lease::Held::until`]): a collector cut off from PostgreSQL
//!   stops pulling on its own, before anyone else may take the partition.
//! * **Delivery.** A telemetry message is acked to JetStream after the
//!   commit that stores it (`crate::ingest::settle`): the consumer's
//!   `max_ack_pending` is the backpressure window, and what a dead or
//!   fenced collector did not store is delivered again to the next owner.
//!   The agent's disk buffer still holds every record until the
//!   collector's signed ack, as on a single node.
//! * **State topics** are not partitioned (agents subscribe to their own),
//!   so one durable consumer (`state`) is shared by every collector: a
//!   collector that pulls a unit it does not own naks it with a short
//!   delay, and it reaches the owner (or waits, pending, while the
//!   partition has none).
//! * **Acks** go out as core NATS messages on the MQTT topics' subjects;
//!   NATS delivers them to the agents' MQTT subscriptions at QoS 0 (a lost
//!   ack means a resend, absorbed by dedup). **Status** (unit status and
//!   agency incidents, retained topics) goes out over one MQTT 3.1.1
//!   connection to the NATS nodes' MQTT listeners when `[cluster] mqtt` is
//!   set ([`super::status`]: QoS 1, retained, failover along the list,
//!   bounded, drops counted), because NATS 2.9 keeps retained MQTT messages
//!   only from MQTT publishers; unset, it goes through core NATS too and
//!   is live only, not retained (said once at start). Only a unit's
//!   partition owner publishes its status: the worker handles only units
//!   of partitions this collector holds (see Ownership and State topics);
//!   a status emitted just before a partition is lost may still go out
//!   after it, and the new owner publishes at the unit's next transition.
//! * **The feed** is the whole fleet's: units this collector does not own
//!   are refreshed from the store every second ([`VIEW_REFRESH`]), and the
//!   change stream (SSE) is the store's event log tailed by id
//!   ([`EVENT_TAIL`]), so a client on any collector sees every collector's
//!   transitions, in one order.
//! * **Webhooks** are sent by one collector, the coordinator (the holder
//!   of partition 0's lease: [`super::webhooks`]), from the store's event
//!   log; retention rounds run there too.
//! * **Agency-wide incidents** (`[rules.incidents]`): owners store their
//!   partitions' shares of each group and tag their units; the coordinator
//!   decides ([`super::incidents`]).
//! * **Stopping** cleanly: the feed stops, pulls stop, the worker commits
//!   what it holds, then the collector leaves the lease table (leases
//!   released, heartbeat removed), so the others take its partitions at
//!   their next tick instead of after the TTL: a rolling restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use muster_proto::UnitId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::ClusterConfig;
use super::lease::{Held, moves};
use super::partition;
use super::pg::LeaseTable;
use super::status::{ClusterSink, StatusLink};
use super::stream::{self, STATE_SUBJECT};
use crate::app::{AppError, spawn_feed};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::enroll::Registry;
use crate::ingest::mqtt::{self, Raw};
use crate::ingest::settle::{Scope, Settle};
use crate::ingest::worker::{Control, Worker};
use crate::rules::Engine;
use crate::signing::Signer;
use crate::state::Shared;
use crate::store::{HeldEpochs, PgStore, PgStoreOptions, Store};

/// How often units other collectors own are refreshed into the feed.
pub const VIEW_REFRESH: Duration = Duration::from_secs(1);
/// How often the store's event log is tailed for the change stream.
pub const EVENT_TAIL: Duration = Duration::from_millis(250);
/// A state message for a unit another collector owns is delivered again after this.
const STATE_NAK_DELAY: Duration = Duration::from_millis(100);
/// Consumers created at once at start.
const CONSUMERS_AT_ONCE: usize = 16;
/// Messages a pull asks for at once.
const PULL_BATCH: usize = 256;

/// The units whose partitions this collector holds.
#[derive(Debug)]
pub struct Owned {
    held: Arc<HeldEpochs>,
    partitions: u32,
}

impl Scope for Owned {
    fn owns(&self, unit: &UnitId) -> bool {
        self.partition(unit).is_some_and(|p| self.holds(p))
    }

    fn partition(&self, unit: &UnitId) -> Option<u32> {
        partition::of(unit, self.partitions).ok()
    }

    fn holds(&self, p: u32) -> bool {
        self.held.get(p).is_some()
    }
}

/// A JetStream delivery, settled by the acker task.
struct JsSettle {
    acker: Option<jetstream::message::Acker>,
    tx: mpsc::UnboundedSender<(jetstream::message::Acker, AckKind)>,
}

impl std::fmt::Debug for JsSettle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsSettle")
    }
}

impl Settle for JsSettle {
    fn ack(mut self: Box<Self>) {
        if let Some(a) = self.acker.take() {
            let _ = self.tx.send((a, AckKind::Ack));
        }
    }

    fn nak(mut self: Box<Self>) {
        if let Some(a) = self.acker.take() {
            let _ = self.tx.send((a, AckKind::Nak(None)));
        }
    }
}

/// The MQTT topic of a partitioned telemetry subject
/// (`muster.v1.<a>.<u>.telemetry.<p>`), when `p` is this consumer's
/// partition and the unit's; anything else keeps its extra token and is
/// refused by the parser as a bad topic (counted).
pub fn topic_of(subject: &str, p: u32, partitions: u32) -> String {
    if let Some((base, token)) = subject.rsplit_once('.')
        && token.parse::<u32>().ok() == Some(p)
        && base.ends_with(".telemetry")
    {
        let topic = base.replace('.', "/");
        let mine = muster_proto::Topic::parse(&topic)
            .ok()
            .and_then(|t| partition::of(&t.unit, partitions).ok())
            == Some(p);
        if mine {
            return topic;
        }
    }
    subject.replace('.', "/")
}

/// Runs one cluster collector until `shutdown` completes.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let Some(cl) = cfg.cluster.clone() else {
        return Err(AppError::Task(
            "cluster::node::run without [cluster]".into(),
        ));
    };
    let stop_all = CancellationToken::new();
    let shutdown_token = stop_all.clone();
    tokio::spawn(async move {
        shutdown.await;
        shutdown_token.cancel();
    });

    let store = loop {
        let opts = PgStoreOptions {
            url: cl.postgres.clone(),
            me: cl.id.clone(),
            partitions: cl.stream.partitions,
            pool: cl.pg_pool,
        };
        match tokio::task::spawn_blocking(move || PgStore::open(opts))
            .await
            .map_err(|e| AppError::Task(e.to_string()))?
        {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                warn!(error = %e, "PostgreSQL not reachable yet; retrying in 2 s.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop_all.cancelled() => return Ok(()),
                }
            }
        }
    };
    let held = store.leases();
    let signer = Arc::new(Signer::load(&cfg.signing)?);
    let gates = crate::app::open_gates(&cfg)?;
    info!(id = %cl.id, public_key = %signer.public_key(), partitions = cl.stream.partitions, "Cluster collector starting.");
    let shared = Shared::new(Arc::clone(&store) as Arc<dyn Store>);
    shared.leases_ok.store(false, Ordering::Relaxed);
    shared
        .metrics
        .cluster
        .enabled
        .store(true, Ordering::Relaxed);
    let registry = {
        let store = Arc::clone(&store) as Arc<dyn Store>;
        let max_pending = cfg.enroll.max_pending;
        let keys: Vec<String> = std::iter::once(signer.public_key())
            .chain(signer.next_public_key())
            .map(|k| k.to_string())
            .collect();
        let r = tokio::task::spawn_blocking(move || Registry::open(store, max_pending, keys))
            .await
            .map_err(|e| AppError::Task(e.to_string()))?
            .map_err(|error| AppError::Store {
                path: "postgres".into(),
                error,
            })?;
        Arc::new(r)
    };

    // NATS: reconnects by itself across the listed servers.
    let nats = {
        let shared = Arc::clone(&shared);
        async_nats::ConnectOptions::new()
            .name(format!("muster-collector {}", cl.id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |ev| {
                let shared = Arc::clone(&shared);
                async move {
                    let up = match ev {
                        async_nats::Event::Connected => Some(true),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => Some(false),
                        _ => None,
                    };
                    if let Some(up) = up {
                        shared
                            .metrics
                            .mqtt
                            .subscriber
                            .connected
                            .store(up, Ordering::Relaxed);
                        info!(event = %ev, "NATS connection.");
                    }
                }
            })
            .connect(cl.nats.clone())
            .await
            .map_err(|e| AppError::Task(format!("nats: {e}")))?
    };
    shared
        .metrics
        .mqtt
        .subscriber
        .connected
        .store(true, Ordering::Relaxed);
    let js = jetstream::new(nats.clone());
    let consumers = loop {
        match consumers(&js, &cl).await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, "JetStream stream or consumers not ready; retrying in 2 s.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop_all.cancelled() => return Ok(()),
                }
            }
        }
    };

    let (raw_tx, raw_rx) = mpsc::channel(cfg.ingest.queue);
    let (in_tx, in_rx) = mpsc::channel(cfg.ingest.queue.min(mqtt::PARSED_QUEUE));
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::channel(4);
    let scope = Arc::new(Owned {
        held: Arc::clone(&held),
        partitions: cl.stream.partitions,
    });
    let stop_incidents = CancellationToken::new();
    let incidents = cfg.rules.incidents.clone().map(|ic| {
        tokio::spawn(super::incidents::run(
            ic,
            Arc::clone(&store),
            Arc::clone(&shared),
            Arc::clone(&clock),
            cfg.mqtt.publish_status.then(|| out_tx.clone()),
            stop_incidents.clone(),
        ))
    });
    let mut engine = Engine::clustered(cfg.rules.clone());
    engine.set_baseline_metrics(Arc::clone(&shared.metrics.baseline));
    let worker = Worker::clustered(
        engine,
        Arc::clone(&shared),
        Arc::clone(&clock),
        out_tx,
        cfg.ingest.clone(),
        cfg.mqtt.publish_status,
        Arc::clone(&scope) as Arc<dyn Scope>,
    );
    let stop_ingest = CancellationToken::new();
    let stop_pull = CancellationToken::new();
    let stop_feed = CancellationToken::new();

    let acker = tokio::spawn(run_acker(ack_rx));
    let parser = tokio::spawn(mqtt::run_parser(raw_rx, in_tx));
    let worker = tokio::spawn(worker.run_controlled(in_rx, control_rx, stop_ingest.clone()));
    let status_link = match &cl.mqtt {
        Some(m) => {
            info!(listeners = ?m.brokers, client_id = %super::status::client_id(&cl.id), "Retained status over MQTT to the NATS nodes' listeners ([cluster] mqtt).");
            Some(StatusLink::start(m, &cl.id, Arc::clone(&shared)))
        }
        None => {
            info!(
                "[cluster] mqtt is not set: unit status and incident topics are live only (core NATS), not retained; a subscriber sees a unit's status at its next transition."
            );
            None
        }
    };
    let publisher = tokio::spawn(mqtt::run_publisher(
        ClusterSink {
            nats: nats.clone(),
            mqtt: status_link,
        },
        out_rx,
        Arc::clone(&shared),
        Arc::clone(&signer),
    ));
    let state_pull = tokio::spawn(pull_state(
        consumers.state.clone(),
        Arc::clone(&scope),
        raw_tx.clone(),
        ack_tx.clone(),
        stop_pull.clone(),
    ));
    let leases = tokio::spawn(lease_loop(LeaseLoop {
        cl: cl.clone(),
        store: Arc::clone(&store),
        held: Arc::clone(&held),
        consumers: consumers.telemetry,
        raw: raw_tx,
        acks: ack_tx,
        control: control_tx,
        shared: Arc::clone(&shared),
        stop: stop_pull.clone(),
    }));
    let stop_webhooks = CancellationToken::new();
    let webhooks = (!cfg.webhooks.is_empty()).then(|| {
        tokio::spawn(super::webhooks::run(
            cfg.webhooks.clone(),
            Arc::clone(&store),
            Arc::clone(&held),
            cl.postgres.clone(),
            cl.id.clone(),
            Arc::clone(&shared),
            Arc::clone(&clock),
            stop_webhooks.clone(),
        ))
    });
    let retention = tokio::spawn(coordinate_retention(
        Arc::clone(&shared),
        Arc::clone(&held),
        Arc::clone(&clock),
        crate::app::retention(&cfg),
        cfg.store.event_retention,
        cfg.store.prune_interval,
        stop_feed.clone(),
    ));
    let view = tokio::spawn(refresh_view(
        Arc::clone(&store),
        Arc::clone(&scope),
        Arc::clone(&shared),
        stop_feed.clone(),
    ));
    let tail = tokio::spawn(tail_events(
        Arc::clone(&store),
        Arc::clone(&shared),
        stop_feed.clone(),
    ));
    let http = spawn_feed(
        &cfg,
        listener,
        Arc::clone(&shared),
        Arc::clone(&clock),
        crate::app::FeedParts {
            registry,
            gates,
            config_docs: None,
            rollouts: None,
            automation: None,
        },
        stop_feed.clone(),
    );
    let systemd = tokio::spawn(crate::service::systemd(
        Arc::clone(&shared),
        stop_feed.clone(),
    ));

    stop_all.cancelled().await;
    info!("Shutting down.");
    stop_feed.cancel();
    let _ = systemd.await;
    // Pulls stop first; the worker then commits and acks what it holds;
    // the lease loop leaves the table last.
    stop_pull.cancel();
    let _ = state_pull.await;
    let table = leases.await.map_err(|e| AppError::Task(e.to_string()))?;
    stop_ingest.cancel();
    for (name, t) in [
        ("ingest worker", worker),
        ("view", view),
        ("tail", tail),
        ("retention", retention),
    ] {
        if let Err(e) = t.await {
            warn!(task = name, error = %e, "Task failed.");
        }
    }
    stop_webhooks.cancel();
    if let Some(w) = webhooks {
        let _ = w.await;
    }
    stop_incidents.cancel();
    if let Some(t) = incidents {
        let _ = t.await;
    }
    let _ = parser.await;
    let _ = publisher.await;
    let _ = acker.await;
    if let Some((table, client)) = table {
        match tokio::time::timeout(Duration::from_secs(5), table.leave(&client)).await {
            Ok(Ok(n)) => info!(partitions = n, "Left the cluster: leases released."),
            Ok(Err(e)) => warn!(error = %e, "Could not release leases; they expire."),
            Err(_) => warn!("Releasing leases timed out; they expire."),
        }
    }
    let _ = http.await;
    let _ = nats.drain().await;
    drop(shared);
    info!("Stopped.");
    Ok(())
}

struct Consumers {
    telemetry: Vec<PullConsumer>,
    state: PullConsumer,
}

/// The stream and every consumer, created at start (`stream` module docs:
/// interest retention keeps only what some consumer wants).
async fn consumers(js: &jetstream::Context, cl: &ClusterConfig) -> Result<Consumers, String> {
    let s = stream::ensure(js, &cl.stream)
        .await
        .map_err(|e| e.to_string())?;
    // Concurrently: on a replicated stream each consumer is a Raft group
    // of its own, and one at a time takes seconds for 64.
    let mut telemetry: Vec<(u32, PullConsumer)> =
        futures_util::stream::iter(0..cl.stream.partitions)
            .map(|p| {
                let s = &s;
                async move {
                    stream::partition_consumer(s, &cl.stream, p)
                        .await
                        .map(|c| (p, c))
                        .map_err(|e| e.to_string())
                }
            })
            .buffer_unordered(CONSUMERS_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
    telemetry.sort_by_key(|(p, _)| *p);
    let telemetry = telemetry.into_iter().map(|(_, c)| c).collect();
    let state = s
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("state".into()),
            filter_subject: STATE_SUBJECT.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: cl.stream.ack_wait,
            max_ack_pending: cl.stream.max_ack_pending,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(Consumers { telemetry, state })
}

async fn run_acker(mut rx: mpsc::UnboundedReceiver<(jetstream::message::Acker, AckKind)>) {
    while let Some((a, kind)) = rx.recv().await {
        if let Err(e) = a.ack_with(kind).await {
            debug!(error = %e, "JetStream ack not sent (redelivered after ack_wait).");
        }
    }
}

/// Pulls one consumer into the parse stage until `stop`; `accept` decides
/// each message's topic, or `None` to nak it (not ours).
async fn pull(
    consumer: PullConsumer,
    raw: mpsc::Sender<Raw>,
    acks: mpsc::UnboundedSender<(jetstream::message::Acker, AckKind)>,
    stop: CancellationToken,
    accept: impl Fn(&str) -> Option<String>,
) {
    let mut backoff = Duration::from_millis(200);
    'outer: while !stop.is_cancelled() {
        let msgs = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut msgs = match msgs {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, consumer = ?consumer.cached_info().name, "Pull failed; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                n = msgs.next() => n,
                _ = stop.cancelled() => break 'outer,
            };
            let m = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    debug!(error = %e, "Pull stream error; continuing.");
                    continue;
                }
                None => continue 'outer,
            };
            backoff = Duration::from_millis(200);
            let (m, acker) = m.split();
            let Some(topic) = accept(m.subject.as_str()) else {
                let _ = acks.send((acker, AckKind::Nak(Some(STATE_NAK_DELAY))));
                continue;
            };
            let r = Raw {
                topic: bytes::Bytes::from(topic),
                payload: m.payload,
                received: tokio::time::Instant::now(),
                settle: Some(Box::new(JsSettle {
                    acker: Some(acker),
                    tx: acks.clone(),
                })),
            };
            tokio::select! {
                sent = raw.send(r) => if sent.is_err() { break 'outer },
                _ = stop.cancelled() => break 'outer,
            }
        }
    }
}

async fn pull_state(
    consumer: PullConsumer,
    scope: Arc<Owned>,
    raw: mpsc::Sender<Raw>,
    acks: mpsc::UnboundedSender<(jetstream::message::Acker, AckKind)>,
    stop: CancellationToken,
) {
    pull(consumer, raw, acks, stop, |subject| {
        let topic = subject.replace('.', "/");
        match muster_proto::Topic::parse(&topic) {
            // Another collector's unit: delivered again, to the owner.
            Ok(t) if !scope.owns(&t.unit) => None,
            // Ours, or unparsable (refused and counted by the parser).
            _ => Some(topic),
        }
    })
    .await
}

struct LeaseLoop {
    cl: ClusterConfig,
    store: Arc<PgStore>,
    held: Arc<HeldEpochs>,
    consumers: Vec<PullConsumer>,
    raw: mpsc::Sender<Raw>,
    acks: mpsc::UnboundedSender<(jetstream::message::Acker, AckKind)>,
    control: mpsc::Sender<Control>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

async fn lease_client(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "Lease connection ended.");
        }
    });
    Ok(client)
}

/// Ticks the lease table until `stop`; then stops every pull and hands
/// back the table and a connection to leave it with.
async fn lease_loop(l: LeaseLoop) -> Option<(LeaseTable, tokio_postgres::Client)> {
    let table = LeaseTable {
        partitions: l.cl.stream.partitions,
        me: l.cl.id.clone(),
        ttl: l.cl.lease_ttl,
        margin: l.cl.lease_margin(),
    };
    let base = tokio::time::Instant::now();
    let mono = || base.elapsed().as_millis() as u64;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut leases: BTreeMap<u32, Held> = BTreeMap::new();
    let mut acting: BTreeMap<u32, u64> = BTreeMap::new();
    let mut pulls: BTreeMap<u32, (CancellationToken, JoinHandle<()>)> = BTreeMap::new();
    let mut last_ok: Option<u64> = None;
    let mut failures = 0u64;
    let mut tick = tokio::time::interval(l.cl.lease_renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl_ms = l.cl.lease_ttl.as_millis() as u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = l.stop.cancelled() => break,
        }
        let sent = mono();
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            // Bounded: a connection into a black hole must not stall the
            // loop past the leases it should let lapse.
            client = tokio::time::timeout(l.cl.lease_renew, lease_client(&l.cl.postgres))
                .await
                .ok()
                .and_then(Result::ok);
        }
        // What a round wins is valid from `sent` until ttl - margin (the
        // `Held` it returns), so a slow round is waited for that long: cut
        // at the renewal interval instead, a loaded database that answers
        // every round in just over it would never be heard.
        let result = match &client {
            Some(c) => tokio::time::timeout(l.cl.lease_ttl - table.margin, table.tick(c, sent))
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string())),
            None => Err("not connected".to_owned()),
        };
        let m = &l.shared.metrics.cluster;
        m.round_last_ms
            .store(mono().saturating_sub(sent), Ordering::Relaxed);
        match result {
            Ok(h) => {
                m.rounds_ok.fetch_add(1, Ordering::Relaxed);
                if failures > 0 {
                    info!(failures, "PostgreSQL reachable again; leases renewed.");
                }
                failures = 0;
                leases = h;
                last_ok = Some(sent);
            }
            Err(e) => {
                m.rounds_failed.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                client = None;
                if failures % 30 == 1 {
                    warn!(error = %e, failures, "Lease renewal failed: partitions stop once their leases run out (not ready).");
                }
            }
        }
        let now = mono();
        l.shared.leases_ok.store(
            last_ok.is_some_and(|t| now.saturating_sub(t) < ttl_ms),
            Ordering::Relaxed,
        );
        let mv = moves(&acting, &leases, now);
        if mv.is_empty() {
            continue;
        }
        if !mv.lost.is_empty() {
            let mut now_held = l.held.snapshot();
            for p in &mv.lost {
                now_held.remove(p);
                acting.remove(p);
                if let Some((stop, task)) = pulls.remove(p) {
                    stop.cancel();
                    let _ = task.await;
                }
            }
            l.held.set(now_held);
            let (done, wait) = oneshot::channel();
            if l.control.send(Control::Release { done }).await.is_ok() {
                let _ = wait.await;
            }
            info!(lost = ?mv.lost, held = acting.len(), "Partitions lost.");
        }
        if !mv.acquired.is_empty() {
            let mut now_held = l.held.snapshot();
            now_held.extend(mv.acquired.iter().map(|(p, e)| (*p, *e)));
            l.held.set(now_held);
            let ps: Vec<u32> = mv.acquired.keys().copied().collect();
            let store = Arc::clone(&l.store);
            let loaded = tokio::task::spawn_blocking(move || store.load_units_in(&ps)).await;
            let units = match loaded {
                Ok(Ok(u)) => u,
                other => {
                    let e = match other {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => unreachable!("matched above"),
                    };
                    warn!(error = %e, "Could not load acquired partitions' units; retrying at the next tick.");
                    let mut back = l.held.snapshot();
                    for p in mv.acquired.keys() {
                        back.remove(p);
                    }
                    l.held.set(back);
                    continue;
                }
            };
            let (done, wait) = oneshot::channel();
            if l.control
                .send(Control::Adopt { units, done })
                .await
                .is_err()
            {
                break;
            }
            let _ = wait.await;
            l.shared
                .metrics
                .cluster
                .acquired
                .fetch_add(mv.acquired.len() as u64, Ordering::Relaxed);
            for (p, e) in &mv.acquired {
                acting.insert(*p, *e);
                let stop = l.stop.child_token();
                let consumer = l.consumers[*p as usize].clone();
                let partitions = l.cl.stream.partitions;
                let p = *p;
                let task = tokio::spawn(pull(
                    consumer,
                    l.raw.clone(),
                    l.acks.clone(),
                    stop.clone(),
                    move |s| Some(topic_of(s, p, partitions)),
                ));
                pulls.insert(p, (stop, task));
            }
            info!(acquired = ?mv.acquired.keys().collect::<Vec<_>>(), held = acting.len(), "Partitions acquired.");
        }
        let m = &l.shared.metrics.cluster;
        m.partitions.store(acting.len() as u64, Ordering::Relaxed);
        m.lost.fetch_add(mv.lost.len() as u64, Ordering::Relaxed);
    }
    for (_, (stop, task)) in pulls {
        stop.cancel();
        let _ = task.await;
    }
    client.map(|c| (table, c))
}

/// Retention rounds (`crate::app::prune_loop`) while this collector is
/// the coordinator (partition 0's lease): one collector rolls up and
/// prunes the shared store, not every one.
async fn coordinate_retention(
    shared: Arc<Shared>,
    held: Arc<HeldEpochs>,
    clock: SharedClock,
    retention: crate::store::rollup::Retention,
    event_retention: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let coordinator = super::webhooks::COORDINATOR_PARTITION;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = check.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(epoch) = held.get(coordinator) else {
            continue;
        };
        let round = stop.child_token();
        let task = tokio::spawn(crate::app::prune_loop(
            Arc::clone(&shared),
            Arc::clone(&clock),
            retention,
            event_retention,
            every,
            round.clone(),
        ));
        while held.get(coordinator) == Some(epoch) && !stop.is_cancelled() {
            tokio::select! {
                _ = check.tick() => {}
                _ = stop.cancelled() => {}
            }
        }
        round.cancel();
        let _ = task.await;
    }
}

/// Every [`VIEW_REFRESH`]: units other collectors own, from the store.
async fn refresh_view(
    store: Arc<PgStore>,
    scope: Arc<Owned>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut rev = 0i64;
    let mut t = tokio::time::interval(VIEW_REFRESH);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = t.tick() => {}
            _ = stop.cancelled() => return,
        }
        let (s, scope, shared) = (Arc::clone(&store), Arc::clone(&scope), Arc::clone(&shared));
        let from = rev;
        let r = tokio::task::spawn_blocking(move || {
            // A failed read is tried again at the next tick, from the page
            // after the last one taken.
            let mut rev = from;
            let _ = s.tail(&mut rev, 5_000, PgStore::units_changed_since, |units| {
                let mut view = shared.units.write().unwrap_or_else(|e| e.into_inner());
                for u in units {
                    if !scope.owns(&u.unit) {
                        view.insert(u.unit.clone(), Arc::new(u));
                    }
                }
            });
            rev
        })
        .await;
        if let Ok(next) = r {
            rev = next;
        }
    }
}

/// Every [`EVENT_TAIL`]: the store's new events, broadcast to this
/// collector's change stream (SSE) and incidents view, in id order.
async fn tail_events(store: Arc<PgStore>, shared: Arc<Shared>, stop: CancellationToken) {
    let start = {
        let s = Arc::clone(&store);
        tokio::task::spawn_blocking(move || s.last_event_id())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    };
    // The incidents as they stand (read after the id the tail starts from:
    // a change in between is tailed again, and a tailed version is never
    // older than the last one applied for long).
    let s = Arc::clone(&store);
    if let Ok(Ok(all)) = tokio::task::spawn_blocking(move || s.incidents()).await {
        let mut view = shared.incidents.write().unwrap_or_else(|e| e.into_inner());
        for i in all {
            view.insert(i.id.clone(), i);
        }
    }
    let mut last = start;
    let mut t = tokio::time::interval(EVENT_TAIL);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = t.tick() => {}
            _ = stop.cancelled() => return,
        }
        let (s, shared) = (Arc::clone(&store), Arc::clone(&shared));
        let from = last;
        let r = tokio::task::spawn_blocking(move || {
            // As in `refresh_view`: a failed read is tried again at the next tick.
            let mut last = from;
            let page = |s: &PgStore, last: u64, n| {
                s.events_after(last, n).map(|events| {
                    let next = events.iter().fold(last, |hw, ev| hw.max(ev.id));
                    (events, next)
                })
            };
            let _ = s.tail(&mut last, 1_000, page, |events| {
                for ev in events {
                    if let crate::model::Change::Incident(i) = &ev.change {
                        shared
                            .incidents
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(i.id.clone(), i.clone());
                    }
                    let _ = shared.changes.send(Arc::new(ev));
                }
            });
            last
        })
        .await;
        if let Ok(next) = r {
            last = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_becomes_its_topic_only_in_its_own_partition() {
        let u = UnitId::new("metro", "E1").unwrap();
        let p = partition::of(&u, 64).unwrap();
        let s = format!("muster.v1.metro.E1.telemetry.{p}");
        assert_eq!(topic_of(&s, p, 64), "muster/v1/metro/E1/telemetry");
        // Published straight to another partition's subject: keeps the
        // extra level, which the parser refuses.
        let other = (p + 1) % 64;
        let s = format!("muster.v1.metro.E1.telemetry.{other}");
        assert_eq!(
            topic_of(&s, other, 64),
            format!("muster/v1/metro/E1/telemetry/{other}")
        );
        assert!(muster_proto::Topic::parse(&topic_of(&s, other, 64)).is_err());
    }
}
