//! The agent says why it goes away, end to end: the built binary, a real
//! Mosquitto, a private dbus-daemon on which the test exports a fake
//! `org.freedesktop.login1` Manager (`muster_testkit::logind`: its
//! `Inhibit` hands out the write end of a real pipe, the test keeps the read
//! end and sees when the agent releases its delay lock), and the test
//! playing the collector (signed acks, as in `uplink.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_proto::{
    Body, BootId, Message, Payload, Presence, PresenceReason, Record, TopicKind, UnitId, decode,
    encode, topic::unit_topic,
};
use muster_testkit::logind::{Logind, Systemd};
use muster_testkit::{DbusDaemon, KillOnDrop, Mosquitto, TcpProxy, eventually};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_muster-agent");

fn unit() -> UnitId {
    UnitId::new("metro-fire", "E12").unwrap()
}

// ------------------------------------------------------------ the collector

#[derive(Default)]
struct Log {
    /// Every telemetry record, when it arrived.
    records: Vec<(Instant, Record)>,
    /// Every presence on the state topic, when it arrived.
    states: Vec<(Instant, Presence)>,
    /// When each ack was published.
    acks: Vec<Instant>,
}

impl Log {
    fn departures(&self) -> Vec<(Instant, Presence)> {
        self.records
            .iter()
            .filter_map(|(t, r)| match &r.payload {
                Payload::Presence(p) => Some((*t, *p)),
                _ => None,
            })
            .collect()
    }
    fn seqs(&self, boot: BootId) -> BTreeSet<u64> {
        self.records
            .iter()
            .filter(|(_, r)| r.boot == boot)
            .map(|(_, r)| r.seq)
            .collect()
    }
}

/// Subscribes to the unit's telemetry and state; acks (signed) while
/// `acking`, or when told to ([`Collector::ack_all`]).
struct Collector {
    log: Arc<Mutex<Log>>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start(port: u16, acking: bool) -> Collector {
        let mut o = MqttOptions::new(
            format!("test-collector-{}", rand::random::<u32>()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 1000);
        let log = Arc::new(Mutex::new(Log::default()));
        let acking = Arc::new(AtomicBool::new(acking));
        let (sub_tx, mut sub_rx) = watch::channel(0u32);
        let task = {
            let (log, acking, client) = (log.clone(), acking.clone(), client.clone());
            tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let u = unit();
                            for kind in [TopicKind::Telemetry, TopicKind::State] {
                                client
                                    .subscribe(unit_topic(&u, kind), QoS::AtLeastOnce)
                                    .await
                                    .unwrap();
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            sub_tx.send_modify(|n| *n += 1);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let Ok(d) = decode(&p.payload) else {
                                panic!("undecodable payload on {}", p.topic)
                            };
                            let now = Instant::now();
                            let recs = match d.message.body {
                                Body::Record(r) => vec![r],
                                Body::Batch(rs) => rs,
                                Body::Presence(pr) => {
                                    log.lock().unwrap().states.push((now, pr));
                                    continue;
                                }
                                other => panic!("unexpected {other:?}"),
                            };
                            let boots: BTreeSet<BootId> = recs.iter().map(|r| r.boot).collect();
                            log.lock()
                                .unwrap()
                                .records
                                .extend(recs.into_iter().map(|r| (now, r)));
                            if acking.load(Ordering::SeqCst) {
                                for boot in boots {
                                    ack(&client, &log, boot).await;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), sub_rx.wait_for(|n| *n >= 2))
            .await
            .expect("collector subscribed")
            .unwrap();
        Collector { log, client, task }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    /// Acks everything received so far, every boot.
    async fn ack_all(&self) {
        let boots: BTreeSet<BootId> = self.log().records.iter().map(|(_, r)| r.boot).collect();
        for boot in boots {
            ack(&self.client, &self.log, boot).await;
        }
    }
}

async fn ack(client: &AsyncClient, log: &Mutex<Log>, boot: BootId) {
    let got = log.lock().unwrap().seqs(boot);
    let ack = crate::uplink::ack_for(&unit(), boot, &got);
    let msg = Message {
        unit: unit(),
        body: Body::Ack(ack),
    };
    client
        .publish(
            unit_topic(&unit(), TopicKind::Ack),
            QoS::AtLeastOnce,
            false,
            encode(&msg).unwrap(),
        )
        .await
        .unwrap();
    log.lock().unwrap().acks.push(Instant::now());
}

/// The retained presence on the unit's state topic, as a new subscriber
/// gets it.
async fn retained_state(port: u16) -> Option<Presence> {
    let mut o = MqttOptions::new(
        format!("test-retained-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(o, 10);
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe(unit_topic(&unit(), TopicKind::State), QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                    match decode(&p.payload).unwrap().message.body {
                        Body::Presence(pr) => return Some(pr),
                        other => panic!("unexpected {other:?} on the state topic"),
                    }
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), wait)
        .await
        .ok()
        .flatten()
}

// ------------------------------------------------------------ the agent

struct Rig {
    dir: PathBuf,
    cfg: PathBuf,
    broker: Mosquitto,
    bus: DbusDaemon,
    /// Between the agent and the broker: counts the agent's connections.
    proxy: TcpProxy,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let dir = crate::servers::scratch(name);
        let broker = Mosquitto::start();
        let bus = DbusDaemon::start();
        let proxy = TcpProxy::start(broker.port());
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
agency = "metro-fire"
unit_id = "E12"
data_dir = {:?}
[mqtt]
url = "{}"
keepalive = "5s"
[sampling]
interval = "1s"
[uplink]
heartbeat_interval = "1s"
[power]
announce_timeout = "4s"
{trust}
"#,
                dir.display().to_string(),
                proxy.url(),
                trust = muster_testkit::agent_trust_toml(),
            ),
        )
        .unwrap();
        Rig {
            dir,
            cfg,
            broker,
            bus,
            proxy,
        }
    }

    fn start_agent(&self, bus_address: &str) -> KillOnDrop {
        let n = std::fs::read_dir(&self.dir).unwrap().count();
        let log = std::fs::File::create(self.dir.join(format!("agent-{n}.log"))).unwrap();
        KillOnDrop(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&self.cfg)
                .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
                .env("RUST_LOG", "muster_agent=debug")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

/// Waits for the agent to exit; its status.
fn wait_exit(agent: &mut KillOnDrop, timeout: Duration) -> std::process::ExitStatus {
    muster_testkit::eventually_blocking("the agent to stop", timeout, || agent.try_wait().unwrap())
}

async fn connected_births(c: &Collector) -> usize {
    c.log()
        .states
        .iter()
        .filter(|(_, p)| p.reason.is_online())
        .count()
}

fn lost(c: &Collector) -> Vec<Presence> {
    c.log()
        .states
        .iter()
        .filter(|(_, p)| p.reason == PresenceReason::Lost)
        .map(|(_, p)| *p)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logind_shutdown_is_announced_acked_and_only_then_the_lock_is_released() {
    let rig = Rig::new("power-shutdown");
    let logind = Logind::start(&rig.bus).await;
    let collector = Collector::start(rig.broker.port(), false).await;
    let mut agent = rig.start_agent(rig.bus.address());

    eventually(
        "a birth and a delay lock",
        Duration::from_secs(15),
        async || !collector.log().states.is_empty() && !logind.locks().calls.is_empty(),
    )
    .await;
    assert_eq!(
        logind.locks().calls[0],
        (
            "shutdown:sleep".into(),
            "muster-agent".into(),
            "announce the unit's departure to dispatch".into(),
            "delay".into()
        )
    );
    // Let some records flow (unacked: the collector holds its acks).
    eventually("a host sample", Duration::from_secs(10), async || {
        collector
            .log()
            .records
            .iter()
            .any(|(_, r)| matches!(r.payload, Payload::Host(_)))
    })
    .await;

    logind.shutdown(true).await;
    eventually(
        "the shutdown announcement record",
        Duration::from_secs(5),
        async || !collector.log().departures().is_empty(),
    )
    .await;
    let (_, p) = collector.log().departures()[0];
    assert_eq!(p.reason, PresenceReason::Shutdown);
    assert!(!p.online);
    assert_eq!(
        retained_state(rig.broker.port()).await.map(|p| p.reason),
        Some(PresenceReason::Shutdown),
        "the retained state says shutdown"
    );

    // Not acked yet: the lock is held (the announce timeout is 4 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        logind.locks().released[0],
        None,
        "the delay lock was released before the announcement was acked"
    );
    collector.ack_all().await;
    let acked_at = *collector.log().acks.last().unwrap();
    eventually(
        "the delay lock released",
        Duration::from_secs(3),
        async || logind.locks().released[0].is_some(),
    )
    .await;
    let released = logind.locks().released[0].unwrap();
    assert!(released >= acked_at);
    assert!(
        released - acked_at < Duration::from_millis(1500),
        "released {:?} after the ack: it waited out the deadline instead",
        released - acked_at
    );

    // A clean DISCONNECT: no will (mosquitto publishes it at once when a
    // socket closes without one).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(lost(&collector).is_empty(), "the will was published");
    assert_eq!(
        retained_state(rig.broker.port()).await.map(|p| p.reason),
        Some(PresenceReason::Shutdown)
    );

    // systemd's SIGTERM follows: no second announcement.
    muster_testkit::signal(agent.id(), "TERM");
    let status = tokio::task::block_in_place(|| wait_exit(&mut agent, Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    assert_eq!(collector.log().departures().len(), 1);
    assert_eq!(
        retained_state(rig.broker.port()).await.map(|p| p.reason),
        Some(PresenceReason::Shutdown)
    );
}

/// Attack: a local unprivileged client emits logind's `PrepareForShutdown`
/// on logind's path and interface, broadcast and unicast to every other
/// connection (a unicast signal bypasses match rules). The agent must not
/// announce "off" nor drop its lock; logind's own signal still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_prepare_for_shutdown_from_another_client_is_ignored() {
    let rig = Rig::new("power-forged");
    let logind = Logind::start(&rig.bus).await;
    let collector = Collector::start(rig.broker.port(), true).await;
    let _agent = rig.start_agent(rig.bus.address());
    eventually(
        "a birth and a delay lock",
        Duration::from_secs(15),
        async || !collector.log().states.is_empty() && !logind.locks().calls.is_empty(),
    )
    .await;

    let forger = zbus::connection::Builder::address(rig.bus.address())
        .unwrap()
        .build()
        .await
        .unwrap();
    let dbus = zbus::fdo::DBusProxy::new(&forger).await.unwrap();
    let me = forger.unique_name().unwrap().to_string();
    let victims: Vec<String> = dbus
        .list_names()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.to_string())
        .filter(|n| n.starts_with(':') && *n != me)
        .collect();
    assert!(victims.len() >= 2, "logind and the agent: {victims:?}");
    let forge = |dest: Option<String>| {
        let forger = forger.clone();
        async move {
            forger
                .emit_signal(
                    dest.as_deref(),
                    "/org/freedesktop/login1",
                    "org.freedesktop.login1.Manager",
                    "PrepareForShutdown",
                    &(true,),
                )
                .await
                .unwrap();
        }
    };
    forge(None).await;
    for v in victims {
        forge(Some(v)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        collector.log().departures().is_empty(),
        "a forged PrepareForShutdown was announced: {:?}",
        collector.log().departures()
    );
    assert_eq!(logind.locks().released[0], None, "the lock was released");

    // logind itself is still heard.
    logind.shutdown(true).await;
    eventually(
        "the real announcement",
        Duration::from_secs(5),
        async || !collector.log().departures().is_empty(),
    )
    .await;
    assert_eq!(
        collector.log().departures()[0].1.reason,
        PresenceReason::Shutdown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_is_announced_and_the_resume_says_how_long() {
    let rig = Rig::new("power-sleep");
    let logind = Logind::start(&rig.bus).await;
    let collector = Collector::start(rig.broker.port(), true).await;
    let mut agent = rig.start_agent(rig.bus.address());
    eventually(
        "a birth and a delay lock",
        Duration::from_secs(15),
        async || !collector.log().states.is_empty() && !logind.locks().calls.is_empty(),
    )
    .await;
    assert_eq!(
        collector.log().states[0].1.reason,
        PresenceReason::Connected
    );

    logind.sleep(true).await;
    let slept_at = Instant::now();
    eventually("the lock released", Duration::from_secs(6), async || {
        logind.locks().released[0].is_some()
    })
    .await;
    let deps = collector.log().departures();
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].1.reason, PresenceReason::Sleep);
    assert_eq!(
        retained_state(rig.broker.port()).await.map(|p| p.reason),
        Some(PresenceReason::Sleep)
    );
    let births = connected_births(&collector).await;
    let records = collector.log().records.len();
    let connections = rig.proxy.accepted();

    // Asleep: no will, no reconnect, nothing sent.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rig.proxy.accepted(), connections, "connected while asleep");
    assert!(lost(&collector).is_empty(), "the will was published");
    assert_eq!(
        connected_births(&collector).await,
        births,
        "reconnected while asleep"
    );
    assert_eq!(collector.log().records.len(), records, "sent while asleep");

    logind.sleep(false).await;
    let gap = slept_at.elapsed();
    eventually("the resumed birth", Duration::from_secs(5), async || {
        collector
            .log()
            .states
            .iter()
            .any(|(_, p)| matches!(p.reason, PresenceReason::Resumed { .. }))
    })
    .await;
    let slept_ms = collector
        .log()
        .states
        .iter()
        .find_map(|(_, p)| match p.reason {
            PresenceReason::Resumed { slept_ms } => Some(slept_ms),
            _ => None,
        })
        .unwrap();
    let gap_ms = gap.as_millis() as u64;
    assert!(
        slept_ms.abs_diff(gap_ms) < 600,
        "slept {slept_ms} ms, the test slept {gap_ms} ms"
    );
    eventually("a new delay lock", Duration::from_secs(5), async || {
        logind.locks().calls.len() == 2
    })
    .await;
    // Sends again after the resume.
    eventually(
        "records after the resume",
        Duration::from_secs(5),
        async || collector.log().records.len() > records + 1,
    )
    .await;

    // A plain SIGTERM with logind there: a stop.
    muster_testkit::signal(agent.id(), "TERM");
    let status = tokio::task::block_in_place(|| wait_exit(&mut agent, Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    let deps = collector.log().departures();
    assert_eq!(deps.len(), 2, "{deps:?}");
    assert_eq!(
        deps[1].1.reason,
        PresenceReason::Stop {
            back_within_ms: None
        }
    );
    assert!(lost(&collector).is_empty(), "the will was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_without_logind_is_a_stop_and_with_a_marker_a_restart() {
    let rig = Rig::new("power-stop");
    // A bus without logind on it.
    let collector = Collector::start(rig.broker.port(), true).await;

    // A marker left from before the start is not this run's.
    let marker = rig.dir.join("restart-announced");
    announce_restart(&rig.cfg, "1m");
    assert!(marker.exists());
    let mut agent = rig.start_agent(rig.bus.address());
    eventually("a birth", Duration::from_secs(15), async || {
        !collector.log().states.is_empty()
    })
    .await;
    assert!(!marker.exists(), "a marker found at start is removed");

    // Announced restart.
    announce_restart(&rig.cfg, "2m");
    muster_testkit::signal(agent.id(), "TERM");
    let status = tokio::task::block_in_place(|| wait_exit(&mut agent, Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    let want = PresenceReason::Stop {
        back_within_ms: Some(120_000),
    };
    assert_eq!(
        collector.log().departures().last().map(|d| d.1.reason),
        Some(want)
    );
    assert_eq!(
        retained_state(rig.broker.port()).await.map(|p| p.reason),
        Some(want)
    );
    assert!(!marker.exists(), "the marker is consumed");

    // Again, no marker: a plain stop.
    let mut agent = rig.start_agent(rig.bus.address());
    eventually("a second birth", Duration::from_secs(15), async || {
        connected(&collector) >= 2
    })
    .await;
    muster_testkit::signal(agent.id(), "TERM");
    let status = tokio::task::block_in_place(|| wait_exit(&mut agent, Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    let plain = PresenceReason::Stop {
        back_within_ms: None,
    };
    assert_eq!(
        collector.log().departures().last().map(|d| d.1.reason),
        Some(plain)
    );
    assert_eq!(
        retained_state(rig.broker.port()).await.map(|p| p.reason),
        Some(plain)
    );
    assert!(lost(&collector).is_empty(), "the will was published");

    // A stale marker is ignored and removed.
    let mut agent = rig.start_agent("unix:path=/nonexistent/bus");
    eventually("a third birth", Duration::from_secs(15), async || {
        connected(&collector) >= 3
    })
    .await;
    std::fs::write(
        &marker,
        "muster restart marker v1\nback_within_ms=1000\nexpires_ms=1001\n",
    )
    .unwrap();
    muster_testkit::signal(agent.id(), "TERM");
    let status = tokio::task::block_in_place(|| wait_exit(&mut agent, Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    assert_eq!(
        collector.log().departures().last().map(|d| d.1.reason),
        Some(plain),
        "no bus at all: a stop"
    );
    assert!(!marker.exists());
}

fn announce_restart(cfg: &std::path::Path, within: &str) {
    let out = Command::new(BIN)
        .args(["announce-restart", "--config"])
        .arg(cfg)
        .args(["--within", within])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// How many boots said they connected (an agent may republish its birth
/// when it sees the previous boot's retained departure).
fn connected(c: &Collector) -> usize {
    c.log()
        .states
        .iter()
        .filter(|(_, p)| p.reason == PresenceReason::Connected)
        .map(|(_, p)| p.boot)
        .collect::<BTreeSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_systemd_is_stopping_is_a_shutdown_without_logind() {
    let rig = Rig::new("power-stopping");
    let _systemd = Systemd::start(&rig.bus, "stopping").await;
    let collector = Collector::start(rig.broker.port(), true).await;
    let mut agent = rig.start_agent(rig.bus.address());
    eventually("a birth", Duration::from_secs(15), async || {
        !collector.log().states.is_empty()
    })
    .await;
    muster_testkit::signal(agent.id(), "TERM");
    let status = tokio::task::block_in_place(|| wait_exit(&mut agent, Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    assert_eq!(
        collector.log().departures().last().map(|d| d.1.reason),
        Some(PresenceReason::Shutdown)
    );
    assert_eq!(
        retained_state(rig.broker.port()).await.map(|p| p.reason),
        Some(PresenceReason::Shutdown)
    );
}

/// The heartbeat carries the measuring side's drop counter (it said 0
/// before issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_carries_the_observations_dropped() {
    use muster_agent::observation::Observation;
    use muster_agent::sample::DropCounter;

    let broker = Mosquitto::start();
    let collector = Collector::start(broker.port(), true).await;
    let dir = crate::servers::scratch("power-drops");
    // Two drops on a full channel of one.
    let drops = Arc::new(DropCounter::default());
    let (full_tx, _full_rx) = tokio::sync::mpsc::channel(1);
    for _ in 0..3 {
        let obs = Observation {
            at_ms: 1,
            payload: Payload::Host(muster_proto::fixtures::host_sample()),
        };
        assert!(drops.try_send(&full_tx, obs, "test"));
    }
    assert_eq!(drops.get(), 2);

    let mut buffer = muster_agent::buffer::BufferSettings::new(dir.join("buffer"));
    buffer.flush_interval = Duration::from_millis(100);
    let u = unit();
    let cfg = muster_agent::uplink::UplinkConfig {
        mqtt: muster_agent::uplink::MqttSettings {
            brokers: vec![("127.0.0.1".into(), broker.port())],
            tls: false,
            client_id: "muster-metro-fire-E12".into(),
            keepalive: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
        },
        uplink: muster_agent::uplink::UplinkSettings {
            heartbeat_interval: Duration::from_secs(1),
            ..Default::default()
        },
        buffer: buffer.clone(),
        interval_ms: 1000,
        agent_version: "test".into(),
        unit: u,
        trust: {
            let mut t = muster_proto::TrustedKeys::new();
            t.insert(muster_testkit::test_collector_key().public_key())
                .unwrap();
            t
        },
        trusted_keys_file: None,
    };
    let (_tx, rx) = tokio::sync::mpsc::channel(16);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let clock = Arc::new(muster_agent::clock::SystemClock);
    let buf = muster_agent::buffer::Buffer::open(buffer, 0).unwrap();
    let task = tokio::spawn(muster_agent::uplink::run_hooked(
        cfg,
        buf,
        rx,
        clock,
        muster_agent::uplink::Hooks {
            observations_dropped: Some(drops),
            ..Default::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    eventually("a heartbeat", Duration::from_secs(10), async || {
        collector
            .log()
            .records
            .iter()
            .any(|(_, r)| matches!(r.payload, Payload::Status(_)))
    })
    .await;
    let dropped = collector
        .log()
        .records
        .iter()
        .find_map(|(_, r)| match &r.payload {
            Payload::Status(s) => Some(s.observations_dropped),
            _ => None,
        });
    assert_eq!(dropped, Some(2));
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    // The in-process stop announced a plain stop, as a record and retained.
    assert_eq!(
        collector.log().departures().last().map(|d| d.1.reason),
        Some(PresenceReason::Stop {
            back_within_ms: None
        })
    );
    assert_eq!(
        retained_state(broker.port()).await.map(|p| p.reason),
        Some(PresenceReason::Stop {
            back_within_ms: None
        })
    );
}

#[test]
fn power_announce_timeout_is_bounded_and_named() {
    use muster_agent::config::Config;
    let base =
        "agency = \"metro-fire\"\nunit_id = \"E12\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";
    let parse = |extra: &str| Config::parse(&format!("{base}{extra}"));
    assert_eq!(
        parse("").unwrap().power.announce_timeout,
        Duration::from_secs(3)
    );
    assert_eq!(
        parse("[power]\nannounce_timeout = \"4s\"\n")
            .unwrap()
            .power
            .announce_timeout,
        Duration::from_secs(4)
    );
    for bad in ["\"0s\"", "\"50ms\"", "\"21s\"", "\"soon\""] {
        let e = parse(&format!("[power]\nannounce_timeout = {bad}\n")).unwrap_err();
        assert_eq!(e.key(), Some("power.announce_timeout"), "{bad}: {e}");
    }
    assert!(
        parse("[power]\nwhat = 1\n").is_err(),
        "unknown keys are refused"
    );
}
