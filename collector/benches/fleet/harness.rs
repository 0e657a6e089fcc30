//! The processes and connections the bench drives: the collector binary
//! ([`Collector::start`] on the bench's Mosquitto; [`Collector::spawn`] on a
//! config of the caller's, as `--cluster` runs it), `mosquitto_sub` (the
//! transport baseline), and the simulated units' MQTT connections, each
//! subscribed to its agency's ack topics and feeding [`crate::acks::Conn`];
//! and what the default and `--cluster` modes share of their steady phase:
//! the load ([`steady_load`]), the flag-latency watch on a collector's
//! change stream ([`Flags`]) and the end of the phase ([`Steady`]).
//!
//! Contract: every process started here is stopped on drop (the collector
//! with SIGTERM, `mosquitto_sub` killed); a connection's ack subscription
//! is acknowledged before [`connect`] returns, so no ack is published to
//! nobody; waits are bounded ([`drain`]).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_proto::{Body, BootId, MAX_MESSAGE_BYTES, Message, TopicKind, decode, topic};
use muster_testkit::{CollectorToml, Mosquitto, TempDir, http, rss_kib, signal};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::acks::Conn;
use crate::{ADMIN, agency, lat3, procfs};

/// Units marked to send a violating value next (by index).
pub type Violations = Arc<Mutex<std::collections::HashSet<usize>>>;
/// When each violating sample was handed to the client (by unit).
pub type SentAt = Arc<Mutex<std::collections::HashMap<String, Instant>>>;

/// `mosquitto_sub` counting every telemetry message it receives.
pub struct Sub {
    child: Child,
    count: Arc<AtomicU64>,
}

impl Sub {
    pub fn start(port: u16) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args([
                "-i",
                "bench-baseline",
                "-t",
                "muster/v1/+/+/telemetry",
                "-F",
                "%l",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian's mosquitto-clients)");
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for _ in BufReader::new(out).lines() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Sub { child, count }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The threshold rule the flag latency is measured on: cpu above 97 is
/// critical (a violating sample sends 99). The shipped rules stay on,
/// the baseline rules (`latency-spike`, `traffic-drop`) among them.
pub const RULES: &str = r#"[rules]
[[rules.threshold]]
name = "bench-cpu"
field = "cpu.total"
op = ">"
threshold = 97
clear = 90
severity = "critical""#;

/// The collector binary.
pub struct Collector {
    child: Child,
    pub addr: SocketAddr,
    store: PathBuf,
    stopped: bool,
}

impl Drop for Collector {
    fn drop(&mut self) {
        if !self.stopped {
            signal(self.child.id(), "TERM");
            let _ = self.child.wait();
        }
    }
}

impl Collector {
    /// Starts it and waits for `/readyz`.
    /// `separate_publisher`: acks and status on their own connection
    /// (`[mqtt.publisher]`), as a large deployment runs it.
    pub async fn start(broker: &Mosquitto, dir: &TempDir, separate_publisher: bool) -> Collector {
        Collector::start_with(broker, dir, separate_publisher, true).await
    }

    /// As [`Collector::start`]; `baselines: false` disables the shipped
    /// baseline rules (`latency-spike`, `traffic-drop`), so the collector
    /// keeps no baselines (`--baselines off`).
    pub async fn start_with(
        broker: &Mosquitto,
        dir: &TempDir,
        separate_publisher: bool,
        baselines: bool,
    ) -> Collector {
        let config = dir.path().join("collector.toml");
        let store = dir.path().join("store");
        let mut toml = CollectorToml::production(ADMIN, &broker.url(), &store);
        // `FLEET_CACHE_MIB=N` sets `store.cache_mib` (and with it fjall's
        // write buffer and journal: `muster_collector::store::write_buffer_bytes`).
        if let Ok(mib) = std::env::var("FLEET_CACHE_MIB") {
            toml.set("store", "cache_mib", &mib);
        }
        let text = toml
            .set_str("mqtt", "client_id", "bench-collector")
            .extra(&if baselines {
                RULES.to_owned()
            } else {
                RULES.replacen(
                    "[rules]\n",
                    "[rules]\ndisabled = [\"latency-spike\", \"traffic-drop\"]\n",
                    1,
                )
            })
            .extra(if separate_publisher {
                "[mqtt.publisher]\nclient_id = \"bench-collector-publisher\""
            } else {
                ""
            })
            .render();
        std::fs::write(&config, text).unwrap();
        Collector::spawn(&config, store, Duration::from_secs(20)).await
    }

    /// Starts the binary on `config` (its store directory `store`, for
    /// [`Collector::store_bytes`]) and waits up to `ready_within` for
    /// `/readyz`.
    pub async fn spawn(config: &Path, store: PathBuf, ready_within: Duration) -> Collector {
        // `FLEET_WRAP="heaptrack -o /tmp/x"` profiles the collector (RSS and
        // CPU figures are then the wrapper's).
        let wrap = std::env::var("FLEET_WRAP").unwrap_or_default();
        let mut argv: Vec<&str> = wrap.split_whitespace().collect();
        argv.push(env!("CARGO_BIN_EXE_muster-collector"));
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start muster-collector");
        let addr = muster_testkit::collector_listen_addr(child.stdout.take().unwrap())
            .expect("collector exited");
        let c = Collector {
            child,
            addr,
            store,
            stopped: false,
        };
        let deadline = Instant::now() + ready_within;
        while http::get(c.addr, "/readyz", None).await.status != 200 {
            assert!(Instant::now() < deadline, "collector not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c
    }

    /// SIGTERM, and how long it took to exit (systemd allows 20 s).
    pub fn stop(&mut self) -> Duration {
        let asked = Instant::now();
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
        self.stopped = true;
        asked.elapsed()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS in KiB (0 if unreadable).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).map_or(0, |r| r.0)
    }

    /// Bytes on disk under the collector's store directory.
    pub fn store_bytes(&self) -> u64 {
        procfs::du_bytes(&self.store)
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let r = http::get(self.addr, "/metrics", Some(ADMIN)).await;
        r.text()
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// A connection of simulated units: MQTT client, subscribed (before this
/// returns) to its agency's ack topics, feeding acks into `conn`.
pub async fn connect(port: u16, id: String, agency: &str, conn: Arc<Mutex<Conn>>) -> AsyncClient {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    o.set_max_packet_size(MAX_MESSAGE_BYTES + 4096, MAX_MESSAGE_BYTES + 4096);
    let (client, mut ev) = AsyncClient::new(o, 10_000);
    let filter = format!("{}/{agency}/+/{}", topic::PREFIX, TopicKind::Ack.as_str());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sub = client.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // A clean session: (re)subscribe on every connect.
                    let _ = sub.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    match decode(&p.payload).map(|d| d.message) {
                        Ok(Message {
                            unit,
                            body: Body::Ack(ack),
                        }) => conn.lock().unwrap().on_ack(&unit.unit, &ack, now),
                        _ => conn.lock().unwrap().foreign += 1,
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    rx.await.unwrap();
    client
}

/// The simulated units' connections of a [`crate::layout`]: connection
/// `c` is client `{prefix}-{c}` of agency `agency-{c}` on MQTT port
/// `port(c)`, its unit `i` (`U{i:06}`) starting on `boot(i)`. The
/// connections' ack counters, and their clients.
pub async fn connections(
    layout: &[Vec<usize>],
    prefix: &str,
    port: impl Fn(usize) -> u16,
    boot: impl Fn(usize) -> BootId,
) -> (Vec<Arc<Mutex<Conn>>>, Vec<AsyncClient>) {
    let mut conns = Vec::new();
    let mut clients = Vec::new();
    for (c, units) in layout.iter().enumerate() {
        let names: Vec<String> = units.iter().map(|&i| format!("U{i:06}")).collect();
        let boots: Vec<BootId> = units.iter().map(|&i| boot(i)).collect();
        let conn = Arc::new(Mutex::new(Conn::new(&names, &boots)));
        let client = connect(port(c), format!("{prefix}-{c}"), &agency(c), conn.clone()).await;
        conns.push(conn);
        clients.push(client);
    }
    (conns, clients)
}

/// Flag latency, as both steady modes measure it: units marked in
/// `violate` send a violating sample ([`steady_load`] notes its send time
/// in `sent_at`); its transition to critical on a collector's change
/// stream (SSE) ends its latency.
pub struct Flags {
    pub violate: Violations,
    pub sent_at: SentAt,
    latencies: Arc<Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What [`Flags::stop`] found: the flag latencies (ms, sorted) and the
/// violating samples never flagged.
pub struct Flagged {
    pub latencies: Vec<f64>,
    pub unflagged: usize,
}

impl Flags {
    /// Follows the change stream of the collector at `addr` (once it said
    /// `ready`).
    pub async fn watch(addr: SocketAddr) -> Flags {
        let mut sse = http::Sse::connect(addr, "/api/v1/stream", Some(ADMIN)).await;
        assert_eq!(
            sse.next(Duration::from_secs(5)).await.unwrap().event,
            "ready"
        );
        let violate = Violations::default();
        let sent_at = SentAt::default();
        let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
        let task = {
            let sent_at = sent_at.clone();
            let latencies = latencies.clone();
            tokio::spawn(async move {
                while let Some(ev) = sse.next(Duration::from_secs(3600)).await {
                    if ev.event != "transition" {
                        continue;
                    }
                    let v = ev.json();
                    if v["to"] != "critical" {
                        continue;
                    }
                    let key = format!(
                        "{}/{}",
                        v["agency"].as_str().unwrap_or_default(),
                        v["unit"].as_str().unwrap_or_default()
                    );
                    if let Some(t) = sent_at.lock().unwrap().remove(&key) {
                        latencies
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            })
        };
        Flags {
            violate,
            sent_at,
            latencies,
            task,
        }
    }

    /// Half a second for the last transitions on their way, then stops
    /// following.
    pub async fn stop(self) -> Flagged {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.task.abort();
        let mut latencies = self.latencies.lock().unwrap().clone();
        latencies.sort_by(f64::total_cmp);
        let unflagged = self.sent_at.lock().unwrap().len();
        Flagged {
            latencies,
            unflagged,
        }
    }
}

impl Flagged {
    /// The `flag latency` line; `on` names the stream, if it needs naming.
    pub fn print(&self, on: &str) {
        println!(
            "flag latency (first violating sample -> SSE transition{on}): n={} {}; unflagged={}",
            self.latencies.len(),
            lat3(&self.latencies),
            self.unflagged,
        );
    }
}

/// How a steady phase ended, as both steady modes count it.
pub struct Steady {
    /// Seconds from the load's start to its last publish.
    pub elapsed: f64,
    /// Records published.
    pub total: u64,
    /// Records acked by the last publish.
    pub acked_at_end: u64,
    /// Records acked within the grace after it.
    pub acked: u64,
    /// What the baseline received within the grace, if it ran.
    pub baseline: Option<u64>,
}

impl Steady {
    /// Waits for the load ([`steady_load`]'s tasks, started at `start`),
    /// then for acks and for the `baseline`'s count until all are in, each
    /// at most `grace`: what is not in by then is not counted.
    pub async fn end(
        (tasks, marker): Load,
        start: Instant,
        conns: &[Arc<Mutex<Conn>>],
        baseline: Option<impl FnMut() -> u64>,
        grace: Duration,
    ) -> Steady {
        for t in tasks {
            t.await.unwrap();
        }
        marker.await.unwrap();
        let elapsed = start.elapsed().as_secs_f64();
        let (total, acked_at_end, _) = totals(conns);
        let (acked, _) = drain(|| totals(conns).1, total, grace, grace).await;
        let baseline = match baseline {
            Some(count) => Some(drain(count, total, grace, grace).await.0),
            None => None,
        };
        Steady {
            elapsed,
            total,
            acked_at_end,
            acked,
            baseline,
        }
    }

    /// `published N records in S s (R msg/s)`.
    pub fn published(&self) -> String {
        format!(
            "published {} records in {:.1} s ({:.0} msg/s)",
            self.total,
            self.elapsed,
            self.total as f64 / self.elapsed
        )
    }

    /// `acked A by the last publish, B within G s after: {ratio} R`, the
    /// ratio acked / published named `ratio`.
    pub fn acked(&self, grace: Duration, ratio: &str) -> String {
        format!(
            "acked {} by the last publish, {} within {} s after: {ratio} {:.4}",
            self.acked_at_end,
            self.acked,
            grace.as_secs(),
            self.acked as f64 / self.total.max(1) as f64,
        )
    }
}

/// (published, acked, foreign acks) over all connections.
pub fn totals(conns: &[Arc<Mutex<Conn>>]) -> (u64, u64, u64) {
    conns.iter().fold((0, 0, 0), |t, c| {
        let c = c.lock().unwrap();
        (t.0 + c.published, t.1 + c.acked, t.2 + c.foreign)
    })
}

/// Ack latencies (ms) since the last call, sorted.
pub fn take_latencies(conns: &[Arc<Mutex<Conn>>]) -> Vec<f64> {
    let mut v: Vec<f64> = conns
        .iter()
        .flat_map(|c| c.lock().unwrap().take_latencies())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Waits until `get() >= target`, until it has not moved for `stall`, or
/// `max` has passed; returns the last value and when it last moved.
pub async fn drain(
    mut get: impl FnMut() -> u64,
    target: u64,
    stall: Duration,
    max: Duration,
) -> (u64, Instant) {
    let start = Instant::now();
    let mut last = get();
    let mut moved = start;
    while last < target && moved.elapsed() < stall && start.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = get();
        if now != last {
            last = now;
            moved = Instant::now();
        }
    }
    (last, moved)
}

/// A running steady load: the publishers' tasks, and the marker's.
pub type Load = (
    Vec<tokio::task::JoinHandle<()>>,
    tokio::task::JoinHandle<()>,
);

/// The steady load of the default and `--cluster` modes, until `run_for`
/// after `start`: on each connection, each of its units publishes one
/// sample every `interval` ms, unit i of n at offset i × interval / n; a
/// unit marked in `violate` sends one violating value (its send time goes
/// into `sent_at`). With `probes`, every other record of a unit is a probe
/// result (`cad-api`, 80-92 ms) instead of a host sample, so both baseline
/// rules have streams to keep (the violating record is always a host
/// sample). And the marker: 5 units a second, after a warm-up interval.
/// The publishers' tasks, and the marker's.
#[allow(clippy::too_many_arguments)]
pub fn steady_load(
    layout: &[Vec<usize>],
    clients: &[AsyncClient],
    conns: &[Arc<Mutex<Conn>>],
    (violate, sent_at): (&Violations, &SentAt),
    (start, run_for): (Instant, Duration),
    interval: u64,
    n: usize,
    probes: bool,
) -> Load {
    use crate::{now_ms, payload, probe_record, sample, unit_id};
    use muster_proto::UnitId;
    let mut tasks = Vec::new();
    for (c, units) in layout.iter().enumerate() {
        let (violate, sent_at) = (violate.clone(), sent_at.clone());
        let (client, conn) = (clients[c].clone(), conns[c].clone());
        let units = units.clone();
        tasks.push(tokio::spawn(async move {
            let ids: Vec<UnitId> = units.iter().map(|&i| unit_id(c, i)).collect();
            let topics: Vec<String> = ids
                .iter()
                .map(|u| topic::unit_topic(u, TopicKind::Telemetry))
                .collect();
            // Unit i of n sends at offset i * interval / n in each interval.
            let mut due: Vec<(u64, usize)> = units
                .iter()
                .enumerate()
                .map(|(j, &i)| (i as u64 * interval / n as u64, j))
                .collect();
            due.sort_unstable();
            let (mut next, mut cycle) = (0usize, 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                let elapsed = start.elapsed();
                if elapsed >= run_for {
                    return;
                }
                let now = elapsed.as_millis() as u64;
                while cycle * interval + due[next].0 <= now {
                    let j = due[next].1;
                    let bad = violate.lock().unwrap().remove(&units[j]);
                    let (boot, seq) = conn.lock().unwrap().next_live(j, Instant::now());
                    let r = if probes && !bad && cycle % 2 == 1 {
                        probe_record(boot, seq, now_ms())
                    } else {
                        sample(boot, seq, if bad { 99 } else { 20 }, now_ms())
                    };
                    if bad {
                        sent_at
                            .lock()
                            .unwrap()
                            .insert(ids[j].to_string(), Instant::now());
                    }
                    let _ = client
                        .publish(&topics[j], QoS::AtLeastOnce, false, payload(&ids[j], r))
                        .await;
                    next += 1;
                    if next == due.len() {
                        next = 0;
                        cycle += 1;
                    }
                }
            }
        }));
    }
    // Mark 5 units a second to violate, after a warm-up interval.
    let marker = {
        let violate = violate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(interval)).await;
            let mut k = 0usize;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if start.elapsed() + Duration::from_millis(interval) >= run_for {
                    return;
                }
                violate.lock().unwrap().insert((k * 7919) % n);
                k += 1;
            }
        })
    };
    (tasks, marker)
}
