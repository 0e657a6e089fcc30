//! Uplink integration tests against a real Mosquitto. The test plays the
//! collector: it subscribes to every unit's telemetry, decodes, and (when
//! told to) publishes `Ack`s, exactly as the collector does after storing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_agent::buffer::{Buffer, BufferSettings};
use muster_agent::clock::SystemClock;
use muster_agent::observation::Observation;
use muster_agent::uplink::{self, MqttSettings, UplinkConfig, UplinkSettings};
use muster_proto::{
    Ack, Body, BootId, Message, Payload, Presence, SeqRange, TopicKind, UnitId, decode, encode,
    fixtures, topic::unit_topic,
};
use muster_testkit::{
    Mosquitto, MosquittoOptions, NatsCluster, ProxyMode, TcpProxy, TempDir, free_port,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

use muster_testkit::eventually;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

fn unit() -> UnitId {
    UnitId::new("metro-fire", "E12").unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ------------------------------------------------------------ the collector

/// One telemetry publish as the collector saw it.
#[derive(Debug, Clone)]
struct Seen {
    batch: bool,
    /// (boot, seq, kind)
    records: Vec<(BootId, u64, &'static str)>,
}

#[derive(Default)]
struct Log {
    messages: Vec<Seen>,
    states: Vec<Presence>,
    /// `backlog_records` of each heartbeat, per boot, in arrival order.
    backlogs: BTreeMap<BootId, Vec<u64>>,
    /// The drop counts of the latest heartbeat, per boot.
    drops: BTreeMap<BootId, muster_proto::DropCounts>,
    /// Per boot: seqs received, and how many times each.
    got: BTreeMap<BootId, BTreeMap<u64, u32>>,
}

impl Log {
    fn distinct(&self, boot: BootId) -> BTreeSet<u64> {
        self.got
            .get(&boot)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }
    fn boots(&self) -> Vec<BootId> {
        self.got.keys().copied().collect()
    }
    fn max_times(&self) -> u32 {
        self.got
            .values()
            .flat_map(|m| m.values())
            .copied()
            .max()
            .unwrap_or(0)
    }
}

/// The test's stand-in for the collector: subscribes, records, acks.
struct Collector {
    log: Arc<Mutex<Log>>,
    acking: Arc<AtomicBool>,
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Collector {
    async fn start(port: u16) -> Collector {
        let mut o = MqttOptions::new(
            format!("test-collector-{}", rand::random::<u32>()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 1000);
        let log = Arc::new(Mutex::new(Log::default()));
        let acking = Arc::new(AtomicBool::new(true));
        let (subscribed_tx, mut subscribed_rx) = watch::channel(false);
        let task = {
            let log = log.clone();
            let acking = acking.clone();
            let client = client.clone();
            tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            client
                                .subscribe("muster/v1/+/+/telemetry", QoS::AtLeastOnce)
                                .await
                                .unwrap();
                            client
                                .subscribe("muster/v1/+/+/state", QoS::AtLeastOnce)
                                .await
                                .unwrap();
                        }
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                                // Refused (a NATS cluster still electing after
                                // a node loss times out the consumer create):
                                // ask again, as the collector's reconnect does.
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                for t in ["muster/v1/+/+/telemetry", "muster/v1/+/+/state"] {
                                    let _ = client.subscribe(t, QoS::AtLeastOnce).await;
                                }
                            } else {
                                let _ = subscribed_tx.send(true);
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let Ok(d) = decode(&p.payload) else {
                                panic!("collector got an undecodable payload on {}", p.topic)
                            };
                            let unit = d.message.unit.clone();
                            let recs = match d.message.body {
                                Body::Record(r) => (false, vec![r]),
                                Body::Batch(rs) => (true, rs),
                                Body::Presence(pr) => {
                                    log.lock().unwrap().states.push(pr);
                                    continue;
                                }
                                other => panic!("unexpected {other:?}"),
                            };
                            let mut acks = Vec::new();
                            {
                                let mut l = log.lock().unwrap();
                                l.messages.push(Seen {
                                    batch: recs.0,
                                    records: recs
                                        .1
                                        .iter()
                                        .map(|r| (r.boot, r.seq, r.payload.kind_name()))
                                        .collect(),
                                });
                                for r in &recs.1 {
                                    if let Payload::Status(st) = &r.payload {
                                        l.backlogs
                                            .entry(r.boot)
                                            .or_default()
                                            .push(st.backlog_records);
                                        l.drops.insert(r.boot, st.dropped);
                                    }
                                    *l.got.entry(r.boot).or_default().entry(r.seq).or_default() +=
                                        1;
                                }
                                if acking.load(Ordering::SeqCst) {
                                    let boots: BTreeSet<BootId> =
                                        recs.1.iter().map(|r| r.boot).collect();
                                    for boot in boots {
                                        acks.push(ack_for(&unit, boot, &l.distinct(boot)));
                                    }
                                }
                            }
                            for ack in acks {
                                let msg = Message {
                                    unit: unit.clone(),
                                    body: Body::Ack(ack),
                                };
                                let topic = unit_topic(&unit, TopicKind::Ack);
                                let _ = client
                                    .publish(topic, QoS::AtLeastOnce, false, encode(&msg).unwrap())
                                    .await;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };
        // Wait for both subscriptions.
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx.wait_for(|s| *s))
            .await
            .expect("collector subscribed")
            .unwrap();
        Collector {
            log,
            acking,
            client,
            task,
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the collector acks after storing: everything up to the first gap,
/// plus the ranges above it, signed with the suite's collector key.
pub(crate) fn ack_for(unit: &UnitId, boot: BootId, got: &BTreeSet<u64>) -> Ack {
    let mut upto = 0;
    while got.contains(&(upto + 1)) {
        upto += 1;
    }
    let mut ranges: Vec<SeqRange> = Vec::new();
    for &s in got.range(upto + 1..) {
        match ranges.last_mut() {
            Some(r) if r.last + 1 == s => r.last = s,
            _ => ranges.push(SeqRange { first: s, last: s }),
        }
    }
    ranges.truncate(1000);
    let ack = Ack {
        boot,
        upto,
        ranges,
        collector_ms: now_ms(),
        key_id: muster_proto::KeyId::NONE,
        sig: muster_proto::Signature::NONE,
    };
    muster_proto::sign::sign_ack(&muster_testkit::test_collector_key(), unit, ack)
}

fn trusted() -> muster_proto::TrustedKeys {
    let mut t = muster_proto::TrustedKeys::new();
    t.insert(muster_testkit::test_collector_key().public_key())
        .unwrap();
    t
}

// ------------------------------------------------------------ the agent

fn config(dir: &Path, port: u16) -> UplinkConfig {
    let unit = unit();
    let mut buffer = BufferSettings::new(dir.join("buffer"));
    buffer.flush_interval = Duration::from_millis(100);
    UplinkConfig {
        mqtt: MqttSettings {
            brokers: vec![("127.0.0.1".into(), port)],
            tls: false,
            client_id: format!("muster-{}-{}", unit.agency, unit.unit),
            keepalive: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
        },
        uplink: UplinkSettings {
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(400),
            ack_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            ..UplinkSettings::default()
        },
        buffer,
        interval_ms: 50,
        agent_version: "test".into(),
        unit,
        trust: trusted(),
        trusted_keys_file: Some(dir.join("trusted_keys")),
    }
}

struct Agent {
    tx: tokio::sync::mpsc::Sender<Observation>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), uplink::UplinkError>>>,
    host_sent: u64,
}

impl Agent {
    fn start(cfg: UplinkConfig) -> Agent {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(uplink::run(cfg, rx, Arc::new(SystemClock), async move {
            let _ = stopped.await;
        }));
        Agent {
            tx,
            stop: Some(stop),
            task: Some(task),
            host_sent: 0,
        }
    }

    async fn sample(&mut self) {
        self.host_sent += 1;
        self.tx
            .send(Observation {
                at_ms: now_ms(),
                payload: Payload::Host(fixtures::host_sample()),
            })
            .await
            .unwrap();
    }

    /// Samples every `every` for `n` samples.
    async fn sample_for(&mut self, n: u64, every: Duration) {
        for _ in 0..n {
            self.sample().await;
            tokio::time::sleep(every).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let res = tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("uplink shuts down within 10 s")
            .expect("uplink task did not panic");
        res.expect("uplink returned an error");
    }
}

/// The host-sample seqs of a boot the collector has.
fn host_seqs(log: &Log, boot: BootId) -> BTreeSet<u64> {
    log.messages
        .iter()
        .flat_map(|m| m.records.iter())
        .filter(|r| r.0 == boot && r.2 == "host")
        .map(|r| r.1)
        .collect()
}

fn only_boot(log: &Log) -> BootId {
    let boots = log.boots();
    assert_eq!(boots.len(), 1, "{boots:?}");
    boots[0]
}

/// Every seq from 1 to the highest received arrived.
fn no_gaps(log: &Log, boot: BootId) -> bool {
    let d = log.distinct(boot);
    d.last().is_some_and(|&max| d.len() as u64 == max)
}

/// Waits until a heartbeat of `boot` says the buffer is empty (acks
/// arrived and freed everything), then a little more for that heartbeat.
async fn drained(collector: &Collector, boot: BootId) {
    let seen = collector.log().backlogs.get(&boot).map_or(0, Vec::len);
    eventually(
        "a heartbeat reporting an empty buffer",
        Duration::from_secs(15),
        async || {
            let l = collector.log();
            match l.backlogs.get(&boot) {
                Some(b) if b.len() > seen && b.last() == Some(&0) => Ok(()),
                b => Err(format!("backlogs: {b:?}")),
            }
        },
    )
    .await;
}

/// All `n` host samples of `boot` arrived with no gap in any seq, the
/// buffer drained, and the agent stopped with at most what it took at
/// shutdown left on disk.
async fn all_arrived_and_acked(
    collector: &Collector,
    boot: BootId,
    n: usize,
    within: Duration,
    agent: Agent,
    dir: &Path,
) {
    eventually(&format!("all {n} host samples"), within, async || {
        let got = host_seqs(&collector.log(), boot).len();
        (got == n).then_some(()).ok_or(format!("{got} of {n}"))
    })
    .await;
    eventually("no gap in seq", Duration::from_secs(10), async || {
        no_gaps(&collector.log(), boot)
    })
    .await;
    drained(collector, boot).await;
    stopped_with_nothing_left(agent, dir).await;
}

/// Stops the agent; everything was acked except, at most, what was taken
/// at shutdown.
async fn stopped_with_nothing_left(agent: Agent, dir: &Path) {
    agent.stop().await;
    let left = buffered(dir);
    assert!(left <= 2, "{left} records left on disk after acks");
}

fn buffered(dir: &Path) -> u64 {
    let b = Buffer::open(BufferSettings::new(dir.join("buffer")), 0).unwrap();
    b.records()
}

// ------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seq_arrives_through_a_broker_kill_and_restart_and_the_buffer_drains() {
    let t = TempDir::new().unwrap();
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: false,
        ..Default::default()
    });
    let collector = Collector::start(broker.port()).await;
    let mut agent = Agent::start(config(t.path(), broker.port()));
    agent.sample_for(40, Duration::from_millis(20)).await;
    eventually("first records", Duration::from_secs(10), async || {
        collector.log().got.len() == 1
    })
    .await;

    // Broker dies mid-stream (persistence off: what it held is lost).
    broker.kill();
    agent.sample_for(60, Duration::from_millis(20)).await;
    broker.start_again();
    agent.sample_for(40, Duration::from_millis(20)).await;

    let boot = only_boot(&collector.log());
    all_arrived_and_acked(
        &collector,
        boot,
        140,
        Duration::from_secs(30),
        agent,
        t.path(),
    )
    .await;
}

/// `mqtt.urls`: the agent fails over to the next broker when its broker
/// dies (kill -9), resends there what the dead one never got acked, and
/// fails over again (wrapping to the first) when that one dies too. Each
/// broker has its own stand-in collector (a cluster's nodes share their
/// subscribers; two Mosquittos do not), so "nothing missing" is the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fails_over_between_the_listed_brokers_and_nothing_is_missing() {
    let t = TempDir::new().unwrap();
    let opts = || MosquittoOptions {
        persistence: false,
        ..Default::default()
    };
    let mut a = Mosquitto::start_with(opts());
    let mut b = Mosquitto::start_with(opts());
    let at_a = Collector::start(a.port()).await;
    let at_b = Collector::start(b.port()).await;
    let mut cfg = config(t.path(), a.port());
    cfg.mqtt.brokers.push(("127.0.0.1".into(), b.port()));
    let mut agent = Agent::start(cfg);
    agent.sample_for(30, Duration::from_millis(20)).await;
    eventually(
        "records at the first broker",
        Duration::from_secs(10),
        async || !at_a.log().got.is_empty(),
    )
    .await;
    assert!(
        at_b.log().got.is_empty(),
        "the second broker is only a fallback"
    );

    a.kill();
    agent.sample_for(30, Duration::from_millis(20)).await;
    eventually(
        "records at the second broker",
        Duration::from_secs(10),
        async || !at_b.log().got.is_empty(),
    )
    .await;
    // Back to the first once the second dies too.
    a.start_again();
    let at_a2 = Collector::start(a.port()).await;
    b.kill();
    agent.sample_for(30, Duration::from_millis(20)).await;
    eventually(
        "records at the first broker again",
        Duration::from_secs(10),
        async || !at_a2.log().got.is_empty(),
    )
    .await;

    let boot = only_boot(&at_a.log());
    let union = || -> BTreeSet<u64> {
        [&at_a, &at_b, &at_a2]
            .iter()
            .flat_map(|c| host_seqs(&c.log(), boot))
            .collect()
    };
    eventually(
        "all 90 host samples, across the brokers",
        Duration::from_secs(30),
        async || {
            let u = union();
            (u.len() == 90)
                .then_some(())
                .ok_or(format!("{} of 90", u.len()))
        },
    )
    .await;
    // No gap in any kind (heartbeats share the seq space).
    let all: BTreeSet<u64> = [&at_a, &at_b, &at_a2]
        .iter()
        .flat_map(|c| c.log().distinct(boot))
        .collect();
    assert_eq!(all.len() as u64, *all.last().unwrap(), "a seq is missing");
    drained(&at_a2, boot).await;
    stopped_with_nothing_left(agent, t.path()).await;
}

/// Issue 15 (must show 2, at the agent): a 3-node NATS JetStream cluster
/// with MQTT on every node (Debian's nats-server 2.9). The agent lists two
/// nodes, the collector's stand-in is on the third; kill -9 the agent's
/// node: the agent fails over to the next, the cluster routes its records
/// to the collector and the collector's acks back, and nothing is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_nats_cluster_a_node_killed_costs_nothing() {
    let t = TempDir::new().unwrap();
    let mut nats = tokio::task::spawn_blocking(|| NatsCluster::start(3))
        .await
        .unwrap();
    let collector = Collector::start(nats.mqtt_port(2)).await;
    let mut cfg = config(t.path(), nats.mqtt_port(0));
    cfg.mqtt
        .brokers
        .push(("127.0.0.1".into(), nats.mqtt_port(1)));
    let mut agent = Agent::start(cfg);
    agent.sample_for(30, Duration::from_millis(20)).await;
    eventually(
        "records through node 1",
        Duration::from_secs(15),
        async || !collector.log().got.is_empty(),
    )
    .await;
    tokio::task::block_in_place(|| nats.kill(0));
    agent.sample_for(30, Duration::from_millis(20)).await;
    let boot = only_boot(&collector.log());
    // NATS needs its JetStream quorum back before MQTT sessions work again:
    // 8 s on a quiet machine, over 30 s beside the rest of CI (run 28).
    all_arrived_and_acked(
        &collector,
        boot,
        60,
        Duration::from_secs(90),
        agent,
        t.path(),
    )
    .await;
}

/// Once the uplink's future has completed, its buffer is closed and
/// unlocked: this process can open it again at once (as the tests above do
/// to count what is left on disk), even while another thread is starting a
/// process. A forked child holds a copy of every descriptor until its exec
/// closes it, and the `LOCK` flock used to go only with the last copy: a
/// reopen in that window failed with `Locked` (the failover test, on a
/// loaded 2-core CI machine). Here a thread starts `true(1)` in a loop; no
/// open may fail. Without the buffer's explicit unlock most rounds fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_uplink_has_released_its_buffer_even_while_the_process_forks() {
    let t = TempDir::new().unwrap();
    // No broker: the uplink retries in the background and stops at once.
    let cfg = config(t.path(), free_port());
    let forking = Arc::new(AtomicBool::new(true));
    let forker = {
        let forking = forking.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while forking.load(Ordering::SeqCst) {
                std::process::Command::new("true")
                    .stdin(std::process::Stdio::null())
                    .status()
                    .expect("run true(1)");
                n += 1;
            }
            n
        })
    };
    let mut failed = Vec::new();
    const ROUNDS: usize = 40;
    for round in 0..ROUNDS {
        // The uplink opens the buffer the previous round's test open just
        // closed, ...
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(uplink::run(
            cfg.clone(),
            rx,
            Arc::new(SystemClock),
            async move {
                let _ = stopped.await;
            },
        ));
        for _ in 0..2 {
            let o = Observation {
                at_ms: now_ms(),
                payload: Payload::Host(fixtures::host_sample()),
            };
            let _ = tx.send(o).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop.send(());
        let res = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("uplink shuts down within 10 s")
            .expect("uplink task did not panic");
        if let Err(e) = res {
            failed.push(format!("round {round}, the uplink: {e}"));
        }
        // ... and the test opens it as soon as the uplink has returned.
        if let Err(e) = Buffer::open(cfg.buffer.clone(), now_ms()) {
            failed.push(format!("round {round}, reopened: {e}"));
        }
    }
    forking.store(false, Ordering::SeqCst);
    let forks = tokio::task::spawn_blocking(move || forker.join().unwrap())
        .await
        .unwrap();
    assert!(forks > 0, "the forking thread ran");
    assert!(
        failed.is_empty(),
        "{} of {ROUNDS} reopens right after the uplink stopped failed ({forks} forks meanwhile): {failed:#?}",
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acks_records_stay_on_disk_and_are_resent() {
    let t = TempDir::new().unwrap();
    let broker = Mosquitto::start();
    let collector = Collector::start(broker.port()).await;
    collector.acking.store(false, Ordering::SeqCst);

    let mut cfg = config(t.path(), broker.port());
    cfg.uplink.ack_timeout = Duration::from_millis(700);
    let mut agent = Agent::start(cfg.clone());
    agent.sample_for(10, Duration::from_millis(10)).await;
    // A PUBACK from the broker is not enough: with no collector ack, the
    // records are sent again after the ack timeout...
    eventually(
        "a resend after the ack timeout",
        Duration::from_secs(10),
        async || collector.log().max_times() >= 2,
    )
    .await;
    agent.stop().await;
    let boot1 = only_boot(&collector.log());
    assert!(host_seqs(&collector.log(), boot1).len() == 10);
    // ... and stay on disk.
    let left = buffered(t.path());
    assert!(left >= 10, "only {left} records on disk without any ack");

    // Next start (a new boot) with the collector acking: the old boot's
    // records go again, are acked, and the buffer drains.
    collector.acking.store(true, Ordering::SeqCst);
    let before: BTreeMap<u64, u32> = collector.log().got[&boot1].clone();
    let mut agent = Agent::start(cfg);
    agent.sample_for(5, Duration::from_millis(10)).await;
    eventually(
        "the old boot's records resent",
        Duration::from_secs(15),
        async || {
            let l = collector.log();
            before
                .iter()
                .all(|(seq, n)| l.got[&boot1].get(seq).copied().unwrap_or(0) > *n)
        },
    )
    .await;
    eventually(
        "the new boot's samples",
        Duration::from_secs(10),
        async || {
            let l = collector.log();
            l.boots().len() == 2
                && l.boots()
                    .iter()
                    .any(|b| *b != boot1 && host_seqs(&l, *b).len() == 5)
        },
    )
    .await;
    let boot2 = *collector
        .log()
        .boots()
        .iter()
        .find(|b| **b != boot1)
        .unwrap();
    drained(&collector, boot2).await;
    stopped_with_nothing_left(agent, t.path()).await;
}

/// Remote config's health window reads what the uplink took to the disk
/// buffer (`UplinkView::health`): probe results passed and failed, host
/// samples and those with sampler failures; counted with no broker too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_counts_what_the_health_window_judges_as_it_buffers() {
    let t = TempDir::new().unwrap();
    // Nothing listens there: every observation waits in the buffer.
    let cfg = config(t.path(), free_port());
    let view = Arc::new(uplink::UplinkView::default());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (stop, stopped) = oneshot::channel::<()>();
    let buffer = Buffer::open(cfg.buffer.clone(), now_ms()).unwrap();
    let task = tokio::spawn(uplink::run_hooked(
        cfg,
        buffer,
        rx,
        Arc::new(SystemClock),
        uplink::Hooks {
            view: Some(view.clone()),
            ..Default::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let mut failing = fixtures::host_sample();
    failing.failures.push(muster_proto::SamplerFailure {
        collector: muster_proto::SamplerFamily::Wifi,
        reason: "no adapter".into(),
    });
    let observations = [
        (1_000, Payload::Probe(fixtures::http_probe())),
        (1_001, Payload::Probe(fixtures::icmp_probe_failed())),
        (1_002, Payload::Probe(fixtures::icmp_probe_failed())),
        (1_003, Payload::Host(fixtures::host_sample())),
        (1_004, Payload::Host(failing)),
    ];
    for (at_ms, payload) in observations {
        tx.send(Observation { at_ms, payload }).await.unwrap();
    }
    let want = muster_agent::remote::health::Counters {
        probe_ok: 1,
        probe_failed: 2,
        last_probe_ok_ms: Some(1_000),
        samples: 2,
        samples_failing: 1,
        last_sample_failing: true,
        last_ack_ms: None,
    };
    eventually("the counts", Duration::from_secs(10), async || {
        let got = view.health();
        if got == want { Ok(()) } else { Err(got) }
    })
    .await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("uplink shuts down within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(view.health(), want, "heartbeats and the stop count nothing");
    // Counted as they went to the buffer: all of them are there.
    assert!(buffered(t.path()) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_first_after_reconnect_then_backlog_oldest_first() {
    let t = TempDir::new().unwrap();
    let broker = Mosquitto::start();
    let collector = Collector::start(broker.port()).await;
    let proxy = TcpProxy::start(broker.port());
    proxy.set(ProxyMode::Refuse);

    let mut cfg = config(t.path(), proxy.port());
    // A metered link: the backlog trickles, so "live first" is visible.
    cfg.uplink.replay_bytes_per_sec = Some(20_000);
    cfg.uplink.batch_max_bytes = 4096;
    cfg.uplink.heartbeat_interval = Duration::from_secs(3600);
    let mut agent = Agent::start(cfg);
    // An outage: 300 samples buffered.
    agent.sample_for(300, Duration::from_millis(2)).await;
    let newest = agent.host_sent + 1; // seq 1 is the start-up heartbeat
    proxy.set(ProxyMode::Forward);

    eventually("the first messages", Duration::from_secs(15), async || {
        collector.log().messages.len() >= 3
    })
    .await;
    {
        let l = collector.log();
        let first = &l.messages[0];
        assert!(!first.batch, "{first:?}");
        assert_eq!(
            first.records[0].1, newest,
            "the newest host sample goes first: {first:?}"
        );
        assert_eq!(first.records[0].2, "host");
        let second = &l.messages[1];
        assert!(!second.batch);
        assert_eq!(
            second.records[0].2, "status",
            "then a fresh heartbeat: {second:?}"
        );
        let third = &l.messages[2];
        assert!(third.batch, "then the backlog, in batches: {third:?}");
        assert_eq!(third.records[0].1, 1, "oldest first: {third:?}");
    }
    // While the backlog drains, new samples still go out at once.
    agent.sample().await;
    let live = agent.host_sent + 2;
    eventually("the live sample", Duration::from_secs(5), async || {
        collector
            .log()
            .messages
            .iter()
            .any(|m| !m.batch && m.records[0].1 == live)
    })
    .await;
    let boot = only_boot(&collector.log());
    assert!(
        host_seqs(&collector.log(), boot).len() < 301,
        "backlog is still draining when the live sample arrived"
    );
    eventually("the whole backlog", Duration::from_secs(30), async || {
        no_gaps(&collector.log(), boot)
    })
    .await;
    // Batches came oldest first.
    let firsts: Vec<u64> = collector
        .log()
        .messages
        .iter()
        .filter(|m| m.batch)
        .map(|m| m.records[0].1)
        .collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_fires_when_the_link_is_black_holed_and_the_buffer_takes_over() {
    let t = TempDir::new().unwrap();
    let broker = Mosquitto::start();
    let collector = Collector::start(broker.port()).await;
    let proxy = TcpProxy::start(broker.port());
    let mut cfg = config(t.path(), proxy.port());
    cfg.mqtt.keepalive = Duration::from_secs(1);
    let mut agent = Agent::start(cfg);
    agent.sample_for(10, Duration::from_millis(10)).await;
    eventually("birth", Duration::from_secs(10), async || {
        collector
            .log()
            .states
            .iter()
            .any(|p| p.online && p.connection == 1)
    })
    .await;

    // Black-hole the link: no RST, no FIN, nothing gets through.
    proxy.set(ProxyMode::BlackHole);
    let cut = tokio::time::Instant::now();
    agent.sample_for(50, Duration::from_millis(40)).await;
    eventually("the will", Duration::from_secs(10), async || {
        collector
            .log()
            .states
            .iter()
            .any(|p| !p.online && p.connection == 1)
    })
    .await;
    let will_after = cut.elapsed();
    eprintln!("will seen {will_after:?} after the link was black-holed (keepalive 1 s)");

    proxy.set(ProxyMode::Forward);
    agent.sample_for(10, Duration::from_millis(10)).await;
    eventually("a new birth", Duration::from_secs(15), async || {
        collector
            .log()
            .states
            .iter()
            .any(|p| p.online && p.connection >= 2)
    })
    .await;
    let boot = only_boot(&collector.log());
    eventually(
        "every sample after the partition",
        Duration::from_secs(20),
        async || host_seqs(&collector.log(), boot).len() == 70 && no_gaps(&collector.log(), boot),
    )
    .await;

    // A late will of an old connection overwrites the retained state: the
    // agent sees its own state say offline and republishes its birth.
    let births = collector.log().states.iter().filter(|p| p.online).count();
    let late_will = Message {
        unit: unit(),
        body: Body::Presence(Presence {
            online: false,
            boot,
            connection: 1,
            at_ms: now_ms(),
            reason: muster_proto::PresenceReason::Lost,
        }),
    };
    collector
        .client
        .publish(
            unit_topic(&unit(), TopicKind::State),
            QoS::AtLeastOnce,
            true,
            encode(&late_will).unwrap(),
        )
        .await
        .unwrap();
    eventually(
        "the birth republished",
        Duration::from_secs(10),
        async || collector.log().states.iter().filter(|p| p.online).count() > births,
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_ca_file_client_certificate_and_password() {
    let t = TempDir::new().unwrap();
    let pki = Pki::new(t.path());
    let port = free_port();
    // A plain listener for the test's collector, a TLS one requiring a client certificate for the agent.
    let broker = Mosquitto::start_with(MosquittoOptions {
        persistence: false,
        extra: vec![
            format!("listener {port} 127.0.0.1"),
            format!("cafile {}", pki.ca.display()),
            format!("certfile {}", pki.server_cert.display()),
            format!("keyfile {}", pki.server_key.display()),
            "require_certificate true".into(),
            "use_identity_as_username false".into(),
        ],
        ..Default::default()
    });
    let collector = Collector::start(broker.port()).await;
    let mut cfg = config(t.path(), port);
    cfg.mqtt.tls = true;
    cfg.mqtt.brokers[0].0 = "localhost".into();
    cfg.mqtt.ca_file = Some(pki.ca.clone());
    cfg.mqtt.client_cert = Some((pki.client_cert.clone(), pki.client_key.clone()));
    cfg.mqtt.username = Some("e12".into());
    cfg.mqtt.password = Some("secret".into());
    let mut agent = Agent::start(cfg.clone());
    agent.sample_for(5, Duration::from_millis(10)).await;
    eventually("records over mTLS", Duration::from_secs(15), async || {
        let l = collector.log();
        l.boots().len() == 1 && host_seqs(&l, l.boots()[0]).len() == 5
    })
    .await;
    agent.stop().await;

    // Without the client certificate the broker refuses; the agent keeps
    // buffering and retrying instead of failing.
    let proxy = TcpProxy::start(port);
    let mut no_cert = cfg;
    no_cert.mqtt.client_cert = None;
    no_cert.mqtt.brokers[0].1 = proxy.port();
    let mut agent = Agent::start(no_cert);
    agent.sample_for(3, Duration::from_millis(10)).await;
    eventually(
        "three refused attempts",
        Duration::from_secs(15),
        async || proxy.accepted() >= 3,
    )
    .await;
    assert_eq!(
        collector.log().boots().len(),
        1,
        "nothing arrived without a client certificate"
    );
    agent.stop().await;
    assert!(buffered(t.path()) >= 3);
}

#[test]
fn a_bad_ca_file_is_a_clear_error() {
    let t = TempDir::new().unwrap();
    let mut cfg = config(t.path(), 1);
    cfg.mqtt.tls = true;
    cfg.mqtt.ca_file = Some(t.path().join("missing.pem"));
    let e = uplink::mqtt::tls_config(&cfg.mqtt).unwrap_err().to_string();
    assert!(
        e.contains("mqtt.ca_file") && e.contains("missing.pem"),
        "{e}"
    );
    std::fs::write(t.path().join("empty.pem"), "").unwrap();
    cfg.mqtt.ca_file = Some(t.path().join("empty.pem"));
    let e = uplink::mqtt::tls_config(&cfg.mqtt).unwrap_err().to_string();
    assert!(e.contains("no certificate"), "{e}");
}

// ------------------------------------------------------------ test PKI

struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "muster test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let mut sp = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        sp.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let sk = rcgen::KeyPair::generate().unwrap();
        let server = sp.signed_by(&sk, &ca).unwrap();

        let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name
            .push(rcgen::DnType::CommonName, "metro-fire/E12");
        cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let ck = rcgen::KeyPair::generate().unwrap();
        let client = cp.signed_by(&ck, &ca).unwrap();

        let w = |name: &str, body: String| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        Pki {
            ca: w("ca.pem", ca.pem()),
            server_cert: w("server.pem", server.pem()),
            server_key: w("server.key", sk.serialize_pem()),
            client_cert: w("client.pem", client.pem()),
            client_key: w("client.key", ck.serialize_pem()),
        }
    }
}

// ------------------------------------------------------------ kill -9

/// The built agent, `kill -9`ed again and again at random moments during an
/// outage and during replay: no boot ever shows a gap (sled recovers a
/// prefix of what was written, and every record kept is delivered), and in
/// the end the buffer drains.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_outage_and_replay_loses_no_flushed_record() {
    use rand::Rng;
    let t = TempDir::new().unwrap();
    let broker = Mosquitto::start();
    let collector = Collector::start(broker.port()).await;
    let proxy = TcpProxy::start(broker.port());
    let cfg = t.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
agency = "metro-fire"
unit_id = "E12"
data_dir = {:?}
[mqtt]
url = "mqtt://127.0.0.1:{}"
keepalive = "5s"
[sampling]
interval = "1s"
[buffer]
flush_interval = "200ms"
[uplink]
reconnect_min = "50ms"
reconnect_max = "300ms"
heartbeat_interval = "1s"
ack_timeout = "2s"
{}
"#,
            t.path().display().to_string(),
            proxy.port(),
            muster_testkit::agent_trust_toml()
        ),
    )
    .unwrap();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_muster-agent"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start muster-agent")
    };
    let mut rng = rand::rng();
    for round in 0..20 {
        // Even rounds: an outage; odd rounds: the link is up (replay).
        proxy.set(if round % 2 == 0 {
            ProxyMode::Refuse
        } else {
            ProxyMode::Forward
        });
        let mut child = start();
        let ms = rng.random_range(1200..2600);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    proxy.set(ProxyMode::Forward);
    let before: BTreeSet<BootId> = collector.log().boots().into_iter().collect();
    assert!(
        before.len() >= 5,
        "only {} boots seen during the kill rounds",
        before.len()
    );
    let mut child = start();
    // Wait until the final boot reports an empty buffer.
    eventually(
        "the final boot's empty-buffer heartbeat",
        Duration::from_secs(60),
        async || {
            let l = collector.log();
            l.backlogs
                .iter()
                .any(|(boot, b)| !before.contains(boot) && b.len() > 1 && b.last() == Some(&0))
        },
    )
    .await;
    muster_testkit::signal(child.id(), "TERM");
    child.wait().unwrap();
    let l = collector.log();
    for boot in l.boots() {
        let d = l.distinct(boot);
        assert!(
            no_gaps(&l, boot),
            "boot {boot}: {} distinct seqs up to {:?}: a gap",
            d.len(),
            d.last()
        );
    }
    let total: usize = l.boots().iter().map(|b| l.distinct(*b).len()).sum();
    let last = l.boots().into_iter().find(|b| !before.contains(b)).unwrap();
    let drops = l.drops[&last];
    eprintln!(
        "{} boots, {total} records delivered; drops reported by the last boot: {drops:?}",
        l.boots().len()
    );
    assert_eq!(drops.total(), 0, "nothing was dropped: {drops:?}");
    drop(l);
    assert!(buffered(t.path()) <= 2, "the buffer drained");
}
