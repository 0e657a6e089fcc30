//! Fleet simulator: N virtual units publishing host samples through a real
//! Mosquitto to the real collector (the release binary, its own process).
//!
//! ```text
//! cargo bench -p muster-collector --bench fleet -- --units 1000,10000 --seconds 30
//! ```
//!
//! For each fleet size it prints:
//! * steady state: N units at `--interval-ms` (default 5 s), the messages
//!   the collector ingested as a ratio to what `mosquitto_sub` alone
//!   received of the same stream in the same run; flag latency p50/p99,
//!   from publishing a unit's first violating sample to its transition on
//!   the SSE stream; the collector's RSS (now, peak) and CPU use;
//! * burst: `--burst` records published as fast as the broker takes them;
//!   the collector's ingest rate as a ratio to `mosquitto_sub`'s rate (the
//!   transport's ceiling).
//!
//! Units share `--connections` MQTT connections (real agents have one
//! each); everything (load, broker, `mosquitto_sub`, collector) shares this
//! machine's cores, so the figures are for that contention.

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use muster_proto::{
    Body, BootId, Message, Payload, Record, TopicKind, UnitId, encode, fixtures, topic,
};
use muster_testkit::{CollectorToml, Mosquitto, TempDir, http, rss_kib, signal};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const ADMIN: &str = "bench-admin-token-0123456789";

struct Args {
    units: Vec<usize>,
    seconds: u64,
    interval_ms: u64,
    connections: usize,
    burst: u64,
}

fn args() -> Args {
    let mut a = Args {
        units: vec![1_000, 10_000],
        seconds: 30,
        interval_ms: 5_000,
        connections: 20,
        burst: 50_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--units" => {
                a.units = v()
                    .split(',')
                    .map(|s| s.parse().expect("--units"))
                    .collect()
            }
            "--seconds" => a.seconds = v().parse().expect("--seconds"),
            "--interval-ms" => a.interval_ms = v().parse().expect("--interval-ms"),
            "--connections" => a.connections = v().parse().expect("--connections"),
            "--burst" => a.burst = v().parse().expect("--burst"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn unit_id(i: usize) -> UnitId {
    UnitId::new(format!("agency-{}", i % 10), format!("U{i:05}")).unwrap()
}

fn sample(boot: BootId, seq: u64, cpu_pct: u16) -> Record {
    let mut h = fixtures::host_sample();
    if let Some(c) = h.cpu.as_mut() {
        c.total_bp = cpu_pct * 100;
    }
    Record {
        boot,
        seq,
        at_ms: now_ms(),
        payload: Payload::Host(h),
    }
}

fn payload(u: &UnitId, r: Record) -> Vec<u8> {
    encode(&Message {
        unit: u.clone(),
        body: Body::Record(r),
    })
    .unwrap()
}

/// `mosquitto_sub` counting every telemetry message it receives.
struct Sub {
    child: Child,
    count: Arc<AtomicU64>,
}

impl Sub {
    fn start(port: u16) -> Sub {
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

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The collector binary.
struct Collector {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Collector {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

impl Collector {
    fn start(broker: &Mosquitto, dir: &TempDir) -> Collector {
        let config = dir.path().join("collector.toml");
        let text = CollectorToml::production(ADMIN, &broker.url(), &dir.path().join("store"))
            .set_str("mqtt", "client_id", "bench-collector")
            .extra(
                r#"[rules]
[[rules.threshold]]
name = "bench-cpu"
field = "cpu.total"
op = ">"
threshold = 97
clear = 90
severity = "critical""#,
            )
            .render();
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_muster-collector"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start muster-collector");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "collector exited");
            if let Some(a) = line
                .trim()
                .strip_prefix("muster-collector listening on http://")
            {
                break a.parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in out.lines() {});
        Collector { child, addr }
    }

    async fn metric(&self, name: &str) -> f64 {
        let r = http::get(self.addr, "/metrics", Some(ADMIN)).await;
        r.text()
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// CPU seconds used so far (utime + stime).
    fn cpu_s(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<u64> = after
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // Fields after the comm: state is not numeric, so utime/stime are
        // at 10 and 11 here (14 and 15 in proc(5) numbering).
        let tick = 100.0;
        (f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)) as f64 / tick
    }
}

async fn connect(port: u16, id: String) -> AsyncClient {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (client, mut ev) = AsyncClient::new(o, 10_000);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn wait_metric(c: &Collector, name: &str, target: f64, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if c.metric(name).await >= target {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(n: usize, a: &Args) {
    println!(
        "== {n} units, {} ms interval, {} s ==",
        a.interval_ms, a.seconds
    );
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let collector = Collector::start(&broker, &dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http::get(collector.addr, "/readyz", None).await.status != 200 {
        assert!(Instant::now() < deadline, "collector not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sub = Sub::start(broker.port());
    tokio::time::sleep(Duration::from_millis(300)).await; // let mosquitto_sub subscribe
    let mut sse = http::Sse::connect(collector.addr, "/api/v1/stream", Some(ADMIN)).await;
    assert_eq!(
        sse.next(Duration::from_secs(5)).await.unwrap().event,
        "ready"
    );

    // Flag latency: units marked to violate send cpu 99 in their next sample.
    let violate: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let sse_task = {
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
                    v["agency"].as_str().unwrap(),
                    v["unit"].as_str().unwrap()
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

    let cpu0 = collector.cpu_s();
    let published = Arc::new(AtomicU64::new(0));
    let run_for = Duration::from_secs(a.seconds);
    let start = Instant::now();
    let per_conn = n.div_ceil(a.connections);
    let mut tasks = Vec::new();
    for c in 0..a.connections {
        let units: Vec<usize> = (c * per_conn..((c + 1) * per_conn).min(n)).collect();
        if units.is_empty() {
            continue;
        }
        let client = connect(broker.port(), format!("bench-load-{c}")).await;
        let (violate, sent_at, published) = (violate.clone(), sent_at.clone(), published.clone());
        let interval = a.interval_ms;
        tasks.push(tokio::spawn(async move {
            let ids: Vec<UnitId> = units.iter().map(|&i| unit_id(i)).collect();
            let topics: Vec<String> = ids
                .iter()
                .map(|u| topic::unit_topic(u, TopicKind::Telemetry))
                .collect();
            let boot = BootId(0xb0 + c as u64);
            let mut seq = vec![0u64; units.len()];
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
                    seq[j] += 1;
                    let bad = violate.lock().unwrap().remove(&units[j]);
                    let r = sample(boot, seq[j], if bad { 99 } else { 20 });
                    if bad {
                        sent_at
                            .lock()
                            .unwrap()
                            .insert(ids[j].to_string(), Instant::now());
                    }
                    let _ = client
                        .publish(&topics[j], QoS::AtLeastOnce, false, payload(&ids[j], r))
                        .await;
                    published.fetch_add(1, Ordering::Relaxed);
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
        let interval = a.interval_ms;
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
    for t in tasks {
        t.await.unwrap();
    }
    marker.await.unwrap();
    let total = published.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    // Drain: both subscribers get the same stream; wait until the collector
    // has it all or 10 s pass.
    wait_metric(
        &collector,
        "muster_ingest_messages_total",
        total as f64,
        Duration::from_secs(10),
    )
    .await;
    let sub_deadline = Instant::now() + Duration::from_secs(10);
    while sub.count() < total && Instant::now() < sub_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = collector.metric("muster_ingest_messages_total").await as u64;
    let base = sub.count();
    let cpu = collector.cpu_s() - cpu0;
    let (rss, hwm) = rss_kib(collector.child.id()).unwrap_or((0, 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    sse_task.abort();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    let unflagged = sent_at.lock().unwrap().len();
    println!(
        "steady: published {total} in {elapsed:.1} s ({:.0} msg/s); collector ingested {got}, mosquitto_sub received {base}: ratio {:.4}",
        total as f64 / elapsed,
        got as f64 / base.max(1) as f64
    );
    println!(
        "flag latency (first violating sample -> SSE transition): n={} p50={:.1} ms p99={:.1} ms max={:.1} ms; unflagged={unflagged}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "collector: RSS {:.1} MiB (peak {:.1} MiB), CPU {:.2} s over {elapsed:.1} s ({:.0}% of one core), store {:.1} MiB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        cpu,
        100.0 * cpu / elapsed,
        collector.metric("muster_store_size_bytes").await / 1_048_576.0
    );

    // Burst: as fast as the broker takes it.
    let before_c = got as f64;
    let before_s = base;
    let burst = a.burst;
    let conns = 4u64;
    let mut clients = Vec::new();
    for c in 0..conns {
        clients.push(connect(broker.port(), format!("bench-burst-{c}")).await);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let per = burst / conns;
            for s in 0..per {
                let i = (c as u64 * per + s) as usize % n;
                let u = unit_id(i);
                let r = sample(BootId(0xbb00 + c as u64), s + 1, 20);
                let _ = client
                    .publish(
                        topic::unit_topic(&u, TopicKind::Telemetry),
                        QoS::AtLeastOnce,
                        false,
                        payload(&u, r),
                    )
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = (burst / conns) * conns;
    let sub_done = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if sub.count() >= before_s + sent {
                break Some(Instant::now());
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let col_done = wait_metric(
        &collector,
        "muster_ingest_messages_total",
        before_c + sent as f64,
        Duration::from_secs(120),
    )
    .await;
    match (sub_done, col_done) {
        (Some(s), Some(c)) => {
            let rs = sent as f64 / (s - t0).as_secs_f64();
            let rc = sent as f64 / (c - t0).as_secs_f64();
            println!(
                "burst: {sent} records; mosquitto_sub {rs:.0} msg/s, collector {rc:.0} msg/s (stored, acked): ratio {:.3}",
                rc / rs
            );
        }
        _ => println!(
            "burst: {sent} records; incomplete: mosquitto_sub got {}, collector {}",
            sub.count() - before_s,
            collector.metric("muster_ingest_messages_total").await - before_c
        ),
    }
    let acks = collector.metric("muster_acks_published_total").await;
    let commits = collector.metric("muster_store_commits_total").await;
    let (rss, hwm) = rss_kib(collector.child.id()).unwrap_or((0, 0));
    println!(
        "after burst: RSS {:.1} MiB (peak {:.1} MiB); {commits} commits, {acks} acks",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(collector);
    drop(sub);
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for &n in &a.units {
        rt.block_on(run(n, &a));
    }
}
