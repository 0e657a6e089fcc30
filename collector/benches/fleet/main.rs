//! Fleet simulator: virtual units publishing through a real Mosquitto to the
//! real collector (the release binary, its own process), counting what the
//! collector ACKED: a record counts only when an ack the collector published
//! after its durable commit covers it ([`acks`]).
//!
//! ```text
//! cargo bench -p muster-collector --bench fleet -- --units 1000,10000 --seconds 30
//! cargo bench -p muster-collector --bench fleet -- --units 10000 --soak 1800
//! cargo bench -p muster-collector --bench fleet -- --storm 2000x600 --rounds 2
//! cargo bench -p muster-collector --bench fleet -- --cluster --units 1000 --seconds 30 --burst 0
//! ```
//!
//! Modes (one greppable line per phase):
//! * default, per `--units` size: `steady:` N units at `--interval-ms`
//!   (default 5 s) for `--seconds`: records published, acked by the last
//!   publish and within `--grace` (default 10 s) after it (ratio acked /
//!   published: it falls below 1 when the collector stops acking what it
//!   cannot store, or cannot ack its backlog within the grace), what
//!   `mosquitto_sub` received of the same stream in the same run (the
//!   transport baseline), the collector's
//!   `muster_ingest_records_total` (decoded, NOT stored: for information),
//!   and ack latency; `flag latency`: first violating sample -> its
//!   transition on the SSE stream, p50/p99/max; `collector:` RSS and CPU
//!   (utime + stime, parsed after the last `)` of /proc/PID/stat); `burst:`
//!   `--burst` records (0: no burst) as fast as the broker takes them, each
//!   unit on a new boot: acked ratio, and acked rate against
//!   `mosquitto_sub`'s rate (each up to its last progress; 10 s without
//!   progress or 120 s end the wait); `after burst:`. Latencies run from
//!   handing a publish to the MQTT client.
//! * `--soak SECONDS`: the steady load for SECONDS, a `soak:` line every
//!   30 s (elapsed, RSS, store size on disk, acked ratio so far, ack
//!   latency p99 in the window), then `soak end:` with RSS first/last/max
//!   and its slope over the last half (KiB/min). No burst.
//! * `--storm UNITSxRECORDS --rounds R` ([`storm`]): units reconnect at once
//!   and replay a backlog as the agent does; a `storm round` line per round.
//! * `--cluster` (with `--burst 0`; [`cluster`]): the steady load against
//!   cluster mode: 3 `nats-server` nodes (connections round-robin over
//!   their MQTT listeners), PostgreSQL, 2 collectors on the shipped
//!   `packaging/cluster` example. `leases:` the partition split at the
//!   start; `cluster steady:` published, acked (ratio acked / published),
//!   what a plain core NATS subscriber of the telemetry subjects received
//!   in the same run (ratio acked / baseline), ack latency; `flag latency`
//!   on collector-1's SSE stream (every collector's transitions);
//!   `collector-1:` / `collector-2:` RSS and CPU; `postgres:` database size
//!   before and after, bytes per unit per day. `--no-baseline` drops the
//!   NATS subscriber.
//! * `--no-baseline` (with `--burst 0`): no `mosquitto_sub`, so the
//!   collector gets the CPU it took (about a fifth of a core here, and
//!   Mosquitto's second delivery of every record).
//! * `--probes`: every other record of a unit is a probe result (`cad-api`)
//!   instead of a host sample (whose interfaces `traffic-drop` reads), so
//!   both shipped baseline rules keep a stream per unit.
//! * `--baselines on|off|compare` (default `on`): the shipped baseline rules
//!   (`latency-spike`, `traffic-drop`) on, disabled, or one run of each per
//!   `--units` size (off first). Each steady run prints `baselines:` —
//!   streams, `muster_baseline_bytes` per unit, the collector's CPU per
//!   stored record (CPU seconds from /proc over the load and its drain /
//!   `muster_ingest_stored_records_total`); `compare` adds `baseline
//!   cost:`, the on / off ratio of that CPU per record. The issue's
//!   must-show: `--units 30000 --probes --baselines compare --burst 0`.
//! * `--one-connection`: no `[mqtt.publisher]`: acks and status share the
//!   subscribing connection (by default they have their own, as a large
//!   deployment is configured).
//! * `FLEET_WRAP="heaptrack -o /tmp/x"` (environment): starts the collector
//!   under that command, to profile it; RSS and CPU are then the wrapper's.
//!
//! Modules: [`acks`] (counting acked records, pure), [`procfs`] (CPU,
//! disk, RSS slope, percentiles, pure), [`harness`] (the processes and MQTT
//! connections), [`storm`] (the replay storm), [`cluster`] (cluster mode).
//!
//! Without `--bench` (`cargo test -p muster-collector --bench fleet`) the
//! binary runs its table checks ([`acks::self_test`],
//! [`procfs::self_test`], [`storm::self_test`], [`cluster::self_test`])
//! and starts nothing.
//!
//! Units share `--connections` MQTT connections (real agents have one
//! each), one agency per connection, so each connection's one wildcard
//! subscription `muster/v1/{agency}/+/ack` receives only its own units'
//! acks. Everything (load, broker, `mosquitto_sub`, collector) shares this
//! machine's cores, so the figures are for that contention.

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

mod acks;
mod cluster;
mod harness;
mod procfs;
mod storm;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{Collector, Flags, Steady, Sub, drain, take_latencies, totals};
use muster_proto::{
    Body, BootId, Message, Payload, Record, TopicKind, UnitId, encode, fixtures, topic,
};
use muster_testkit::{Mosquitto, TempDir, rss_kib};
use procfs::{percentile, slope_kib_per_min};
use rumqttc::QoS;

const ADMIN: &str = "bench-admin-token-0123456789";

/// How often `--soak` prints.
const SOAK_REPORT: Duration = Duration::from_secs(30);
/// How often `--soak` samples RSS (for first/last/max and the slope).
const SOAK_SAMPLE: Duration = Duration::from_secs(5);
/// After the burst, how long the bench waits for acks (and `mosquitto_sub`)
/// without progress, and at most, before it counts what it has.
const BURST_STALL: Duration = Duration::from_secs(10);
const BURST_MAX: Duration = Duration::from_secs(120);

pub struct Args {
    units: Vec<usize>,
    seconds: u64,
    interval_ms: u64,
    connections: usize,
    burst: u64,
    soak: Option<u64>,
    storm: Option<(usize, u64)>,
    rounds: u32,
    /// `--grace SECONDS` (default 10): after the steady load stops, the most
    /// the bench waits for acks (and for `mosquitto_sub`) before it counts
    /// what it has. A collector that keeps up acks within a commit interval;
    /// one past its ceiling has a backlog it cannot ack in time, and the
    /// ratio shows it.
    grace: Duration,
    /// `--one-connection`: acks on the subscribing connection (no
    /// `[mqtt.publisher]`), for comparison.
    one_connection: bool,
    /// `--no-baseline`: no `mosquitto_sub` (steady mode only). On a 2-core
    /// machine it takes about a fifth of a core, and Mosquitto delivers every
    /// record twice for it: near the collector's ceiling that CPU is the
    /// collector's. The acked ratio stays the measurement.
    baseline: bool,
    /// `--cluster`: the steady load against cluster mode ([`cluster`]).
    cluster: bool,
    /// `--probes`: units alternate host samples and probe results.
    probes: bool,
    /// `--baselines on|off|compare`: (on, off) runs per size.
    baselines: (bool, bool),
}

fn args(raw: &[String]) -> Args {
    let mut a = Args {
        units: vec![1_000, 10_000],
        seconds: 30,
        interval_ms: 5_000,
        connections: 20,
        burst: 50_000,
        soak: None,
        storm: None,
        rounds: 2,
        grace: Duration::from_secs(10),
        one_connection: false,
        baseline: true,
        cluster: false,
        probes: false,
        baselines: (true, false),
    };
    let mut it = raw.iter();
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
            "--soak" => a.soak = Some(v().parse().expect("--soak SECONDS")),
            "--storm" => {
                let s = v();
                let (u, r) = s.split_once('x').expect("--storm UNITSxRECORDS");
                a.storm = Some((
                    u.parse().expect("--storm UNITS"),
                    r.parse().expect("--storm RECORDS"),
                ));
            }
            "--rounds" => a.rounds = v().parse().expect("--rounds"),
            "--grace" => a.grace = Duration::from_secs(v().parse().expect("--grace SECONDS")),
            "--one-connection" => a.one_connection = true,
            "--no-baseline" => a.baseline = false,
            "--cluster" => a.cluster = true,
            "--probes" => a.probes = true,
            "--baselines" => {
                a.baselines = match v().as_str() {
                    "on" => (true, false),
                    "off" => (false, true),
                    "compare" => (true, true),
                    other => panic!("--baselines on|off|compare, not {other}"),
                }
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.connections > 0, "--connections must be > 0");
    assert!(
        !a.cluster || (a.burst == 0 && a.soak.is_none() && a.storm.is_none()),
        "--cluster runs the steady phase only: give --burst 0, no --soak, no --storm"
    );
    a
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The bench's fleet layout: connection `c` carries agency `agency-{c}`;
/// unit `i` (of all) is `U{i:06}`.
pub fn agency(c: usize) -> String {
    format!("agency-{c}")
}

pub fn unit_id(c: usize, i: usize) -> UnitId {
    UnitId::new(agency(c), format!("U{i:06}")).unwrap()
}

/// Units `0..n` over `conns` connections, contiguous slices.
pub fn layout(n: usize, conns: usize) -> Vec<Vec<usize>> {
    let per = n.div_ceil(conns.max(1)).max(1);
    (0..conns)
        .map(|c| (c * per..((c + 1) * per).min(n)).collect::<Vec<_>>())
        .filter(|u| !u.is_empty())
        .collect()
}

pub fn sample(boot: BootId, seq: u64, cpu_pct: u16, at_ms: u64) -> Record {
    let mut h = fixtures::host_sample();
    if let Some(c) = h.cpu.as_mut() {
        c.total_bp = cpu_pct * 100;
    }
    Record {
        boot,
        seq,
        at_ms,
        payload: Payload::Host(h),
    }
}

/// A probe result as an agent's `cad-api` HTTP check sends it, 80-92 ms.
pub fn probe_record(boot: BootId, seq: u64, at_ms: u64) -> Record {
    let mut p = fixtures::http_probe();
    p.phases.total_us = 80_000 + (seq % 13) as u32 * 1_000;
    Record {
        boot,
        seq,
        at_ms,
        payload: Payload::Probe(p),
    }
}

fn payload(u: &UnitId, r: Record) -> Vec<u8> {
    encode(&Message {
        unit: u.clone(),
        body: Body::Record(r),
    })
    .unwrap()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn lat3(sorted: &[f64]) -> String {
    format!(
        "p50={:.1} ms p99={:.1} ms max={:.1} ms",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        sorted.last().copied().unwrap_or(f64::NAN)
    )
}

/// What a steady run measured of the baselines' cost.
struct Cost {
    cpu_s: f64,
    stored: f64,
}

impl Cost {
    fn us_per_record(&self) -> f64 {
        self.cpu_s * 1e6 / self.stored.max(1.0)
    }
}

async fn run(n: usize, a: &Args, baselines: bool) -> Cost {
    let soak = a.soak;
    let seconds = soak.unwrap_or(a.seconds);
    println!(
        "== {n} units, {} ms interval, {seconds} s{}{}{}, baselines {} ==",
        a.interval_ms,
        if soak.is_some() { ", soak" } else { "" },
        if a.one_connection {
            ", one connection"
        } else {
            ", acks on [mqtt.publisher]"
        },
        if a.probes {
            ", host samples and probe results"
        } else {
            ", host samples"
        },
        if baselines { "on" } else { "off" },
    );
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let mut collector = Collector::start_with(&broker, &dir, !a.one_connection, baselines).await;
    assert!(
        a.baseline || a.burst == 0,
        "--no-baseline needs --burst 0: the burst is measured against mosquitto_sub"
    );
    let sub = a.baseline.then(|| Sub::start(broker.port()));
    tokio::time::sleep(Duration::from_millis(300)).await; // let mosquitto_sub subscribe
    // Flag latency: units marked to violate send cpu 99 in their next sample.
    let flags = Flags::watch(collector.addr).await;

    // One agency per connection; each connection's units start on boot
    // 0xb0_0000 + unit.
    let layout = layout(n, a.connections);
    let (conns, clients) = harness::connections(
        &layout,
        "bench-load",
        |_| broker.port(),
        |i| BootId(0xb0_0000 + i as u64),
    )
    .await;

    let cpu0 = procfs::cpu_s(collector.pid());
    let run_for = Duration::from_secs(seconds);
    let start = Instant::now();
    let load = harness::steady_load(
        &layout,
        &clients,
        &conns,
        (&flags.violate, &flags.sent_at),
        (start, run_for),
        a.interval_ms,
        n,
        a.probes,
    );
    let mut rss_samples = vec![(Duration::ZERO, collector.rss_kib())];
    if soak.is_some() {
        let mut next_report = SOAK_REPORT;
        while start.elapsed() < run_for {
            tokio::time::sleep(SOAK_SAMPLE.min(run_for.saturating_sub(start.elapsed()))).await;
            let t = start.elapsed();
            rss_samples.push((t, collector.rss_kib()));
            if t >= next_report {
                next_report += SOAK_REPORT;
                let (p, k, _) = totals(&conns);
                let lat = take_latencies(&conns);
                println!("{}", flow_line(&collector).await);
                println!(
                    "soak: t={:.0} s RSS {} KiB store {} KiB acked {k}/{p} ratio {:.4} (unacked {}) ack latency p99 {:.1} ms (window n={})",
                    t.as_secs_f64(),
                    rss_samples.last().unwrap().1,
                    collector.store_bytes() / 1024,
                    k as f64 / p.max(1) as f64,
                    p - k,
                    percentile(&lat, 0.99),
                    lat.len()
                );
            }
        }
    }
    // Drain: wait for acks (and the baseline) until all are in, at most
    // `--grace`. What is not acked by then is not counted.
    let base = sub.as_ref().map(|sub| || sub.count());
    let steady = Steady::end(load, start, &conns, base, a.grace).await;
    let (elapsed, acked) = (steady.elapsed, steady.acked);
    let baseline = match steady.baseline {
        Some(base) => format!(
            "mosquitto_sub received {base}: transport ratio {:.4}",
            base as f64 / steady.total.max(1) as f64
        ),
        None => "mosquitto_sub off (--no-baseline)".to_string(),
    };
    let decoded = collector.metric("muster_ingest_records_total").await as u64;
    let cpu = procfs::cpu_s(collector.pid()) - cpu0;
    let (rss, hwm) = rss_kib(collector.pid()).unwrap_or((0, 0));
    rss_samples.push((start.elapsed(), rss));
    let flagged = flags.stop().await;
    let ack_lat = take_latencies(&conns);
    let foreign = totals(&conns).2;
    println!(
        "steady: {}; {}; {baseline}; ack latency {}; [info: collector decoded {decoded} (muster_ingest_records_total: decoded, not stored)]; foreign acks {foreign}",
        steady.published(),
        steady.acked(a.grace, "ratio"),
        lat3(&ack_lat),
    );
    flagged.print("");
    let store = collector.store_bytes();
    println!(
        "collector: RSS {:.1} MiB (peak {:.1} MiB), CPU {cpu:.2} s over {elapsed:.1} s ({:.0}% of one core), store {:.1} MiB on disk ({:.0} B per acked record)",
        mib(rss),
        mib(hwm),
        100.0 * cpu / elapsed,
        store as f64 / 1_048_576.0,
        store as f64 / acked.max(1) as f64,
    );
    println!("{}", flow_line(&collector).await);
    let stored = collector.metric("muster_ingest_stored_records_total").await;
    let cost = Cost { cpu_s: cpu, stored };
    let streams = collector.metric("muster_baseline_streams").await;
    let bytes = collector.metric("muster_baseline_bytes").await;
    println!(
        "baselines: {}; {streams} streams, {bytes} B: {:.0} B per unit, {:.0} B per stream; collector CPU per stored record {:.1} us ({cpu:.2} s / {stored} records); samples {}, refused streams {}",
        if baselines { "on" } else { "off" },
        bytes / n as f64,
        bytes / streams.max(1.0),
        cost.us_per_record(),
        collector.metric("muster_baseline_samples_total").await,
        collector
            .metric("muster_baseline_streams_refused_total")
            .await,
    );
    if soak.is_some() {
        let first = rss_samples[0].1;
        let last = rss_samples.last().unwrap().1;
        let max = rss_samples.iter().map(|s| s.1).max().unwrap_or(0);
        println!(
            "soak end: {n} units {seconds} s: RSS first {first} KiB last {last} KiB max {max} KiB; slope over the last half {:.1} KiB/min; {:.1} KiB per unit at the end; store {} KiB",
            slope_kib_per_min(&rss_samples),
            last as f64 / n as f64,
            store / 1024
        );
        report_stop(&mut collector);
        return cost;
    }
    if a.burst == 0 {
        report_stop(&mut collector);
        return cost;
    }

    // Burst: every connection publishes its share as fast as the broker
    // takes it, round-robin over its units, each on a new boot.
    let per_conn = a.burst / layout.len() as u64;
    let (before_p, before_k, _) = totals(&conns);
    let sub = sub.expect("a burst runs with the baseline");
    let before_s = sub.count();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, units) in layout.iter().enumerate() {
        let (client, conn) = (clients[c].clone(), conns[c].clone());
        let units = units.clone();
        {
            let mut conn = conn.lock().unwrap();
            for (j, &i) in units.iter().enumerate() {
                conn.new_boot(j, BootId(0xbb_0000 + i as u64));
            }
        }
        tasks.push(tokio::spawn(async move {
            let ids: Vec<UnitId> = units.iter().map(|&i| unit_id(c, i)).collect();
            for s in 0..per_conn {
                let j = s as usize % units.len();
                let (boot, seq) = conn.lock().unwrap().next_live(j, Instant::now());
                let _ = client
                    .publish(
                        topic::unit_topic(&ids[j], TopicKind::Telemetry),
                        QoS::AtLeastOnce,
                        false,
                        payload(&ids[j], sample(boot, seq, 20, now_ms())),
                    )
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let published_s = t0.elapsed().as_secs_f64();
    let sent = totals(&conns).0 - before_p;
    let (got_s, at_s) = drain(|| sub.count() - before_s, sent, BURST_STALL, BURST_MAX).await;
    let (got_k, at_k) = drain(|| totals(&conns).1 - before_k, sent, BURST_STALL, BURST_MAX).await;
    let rs = got_s as f64 / (at_s - t0).as_secs_f64();
    let rk = got_k as f64 / (at_k - t0).as_secs_f64();
    let burst_lat = take_latencies(&conns);
    println!(
        "burst: queued {sent} records to the MQTT clients in {published_s:.1} s; acked {got_k}: ratio {:.4}; mosquitto_sub received {got_s}: transport ratio {:.4}; acked {rk:.0} rec/s, mosquitto_sub {rs:.0} msg/s: rate ratio {:.3}; ack latency {}",
        got_k as f64 / sent.max(1) as f64,
        got_s as f64 / sent.max(1) as f64,
        rk / rs,
        lat3(&burst_lat),
    );
    let acks = collector.metric("muster_acks_published_total").await;
    let commits = collector.metric("muster_store_commits_total").await;
    let decoded = collector.metric("muster_ingest_records_total").await;
    let (rss, hwm) = rss_kib(collector.pid()).unwrap_or((0, 0));
    println!(
        "after burst: RSS {:.1} MiB (peak {:.1} MiB); {commits} commits, {acks} acks; [info: {decoded} records decoded, not stored]",
        mib(rss),
        mib(hwm),
    );
    report_stop(&mut collector);
    drop(sub);
    cost
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if !raw.iter().any(|a| a == "--bench") {
        // `cargo test --bench fleet`: the table checks only.
        let n = acks::self_test() + procfs::self_test() + storm::self_test() + cluster::self_test();
        println!("fleet bench self-test: {n} checks passed");
        return;
    }
    let a = args(&raw);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some((units, records)) = a.storm {
        rt.block_on(storm::run(units, records, a.rounds, &a));
        return;
    }
    for &n in &a.units {
        if a.cluster {
            rt.block_on(cluster::run(n, &a));
            continue;
        }
        let (on, off) = a.baselines;
        let off = off.then(|| rt.block_on(run(n, &a, false)));
        let on = on.then(|| rt.block_on(run(n, &a, true)));
        if let (Some(on), Some(off)) = (on, off) {
            println!(
                "baseline cost: {n} units: collector CPU per stored record {:.1} us with baselines, {:.1} us without: ratio {:.3}",
                on.us_per_record(),
                off.us_per_record(),
                on.us_per_record() / off.us_per_record().max(f64::MIN_POSITIVE)
            );
        }
    }
}

/// SIGTERM and how long the collector took to exit, one line.
fn report_stop(collector: &mut Collector) {
    let took = collector.stop();
    println!(
        "stop: SIGTERM to exit {:.2} s (systemd's stop timeout is 20 s)",
        took.as_secs_f64()
    );
}

/// The collector's flow gauges and its stored-records counter, one line.
async fn flow_line(collector: &Collector) -> String {
    let mut line = String::from("flow:");
    for name in [
        "muster_ingest_stored_records_total",
        "muster_ingest_holding",
        "muster_ingest_queue_depth",
        "muster_ingest_outbound_depth",
        "muster_ingest_overloaded",
        "muster_ingest_overloads_total",
    ] {
        let short = name.trim_start_matches("muster_ingest_");
        line.push_str(&format!(" {short}={}", collector.metric(name).await));
    }
    // Retention rounds finished and their wall time (store::retention_round).
    line.push_str(&format!(
        "; retention rounds={} seconds={:.2} minutes_from_raw={}",
        collector
            .metric("muster_store_retention_seconds_count")
            .await,
        collector.metric("muster_store_retention_seconds_sum").await,
        collector.metric("muster_store_rolled_from_raw_total").await,
    ));
    line
}
