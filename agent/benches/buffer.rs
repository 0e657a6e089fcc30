//! Store-and-forward benchmark. Prints:
//!
//! 1. the disk buffer's append rate with the default flush policy (1 s);
//! 2. the drain rate of a 24-hour backlog at a 1 s interval (86,400 host
//!    samples) through real Mosquitto, the bench acking as the collector,
//!    as a ratio to `mosquitto_pub`'s raw QoS 1 rate in the same run;
//! 3. the agent's RSS while draining, and while draining a full 64 MiB
//!    buffer; and, for comparison, the RSS of draining the same 64 MiB from
//!    one sled database (what segmenting avoids).
//!
//! The agent runs as a child process (this binary, re-executed with
//! `MUSTER_BENCH_ROLE=agent`), so its RSS is its own.
//!
//! `cargo bench -p muster-agent --bench buffer` (needs /usr/sbin/mosquitto
//! and /usr/bin/mosquitto_pub).

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_agent::buffer::{Appended, Buffer, BufferSettings, Meta};
use muster_agent::clock::SystemClock;
use muster_agent::uplink::{self, MqttSettings, UplinkConfig, UplinkSettings};
use muster_proto::{
    Ack, Body, BootId, Message, Payload, Record, SeqRange, TopicKind, UnitId, decode, encode,
    encode_record, fixtures, topic::unit_topic,
};
use muster_testkit::{Mosquitto, TempDir, rss_kib};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const DAY: u64 = 86_400;
const BOOT: BootId = BootId(0xbe4c_0000_0000_0001);

fn unit() -> UnitId {
    UnitId::new("metro-fire", "E12").unwrap()
}

fn host_record(seq: u64) -> (Meta, Vec<u8>) {
    let rec = Record {
        boot: BOOT,
        seq,
        at_ms: 1_700_000_000_000 + seq * 1000,
        payload: Payload::Host(fixtures::host_sample()),
    };
    (Meta::of(&rec), encode_record(&rec).unwrap())
}

fn main() {
    match std::env::var("MUSTER_BENCH_ROLE").as_deref() {
        Ok("agent") => agent_child(),
        Ok("drain-sled") => drain_child(false),
        Ok("drain-buffer") => drain_child(true),
        _ => parent(),
    }
}

// ------------------------------------------------------------ children

/// The agent: `uplink::run` on the given buffer and broker, until stdin closes.
fn agent_child() {
    let dir = PathBuf::from(std::env::var("MUSTER_BENCH_DIR").unwrap());
    let port: u16 = std::env::var("MUSTER_BENCH_PORT").unwrap().parse().unwrap();
    let unit = unit();
    let cfg = UplinkConfig {
        mqtt: MqttSettings {
            brokers: vec![("127.0.0.1".into(), port)],
            tls: false,
            client_id: "muster-bench-agent".into(),
            keepalive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
        },
        uplink: UplinkSettings::default(),
        buffer: BufferSettings::new(dir),
        interval_ms: 1000,
        agent_version: "bench".into(),
        unit,
        trust: {
            let mut t = muster_proto::TrustedKeys::new();
            t.insert(muster_testkit::test_collector_key().public_key())
                .unwrap();
            t
        },
        trusted_keys_file: None,
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("MUSTER_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .finish()
        .with(muster_agent::service::log::parse_filter(&filter).expect("MUSTER_BENCH_LOG"))
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (_tx, rx) = tokio::sync::mpsc::channel(16);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut s = String::new();
            while std::io::stdin()
                .read_line(&mut s)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
            let _ = stop_tx.send(());
        });
        uplink::run(cfg, rx, Arc::new(SystemClock), async move {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
}

/// Reads every record of a full 64 MiB store and deletes it, like a
/// drain, either from one sled database or from the segmented buffer;
/// prints the peak RSS.
fn drain_child(segmented: bool) {
    let dir = PathBuf::from(std::env::var("MUSTER_BENCH_DIR").unwrap());
    let mut n = 0u64;
    if segmented {
        let mut s = BufferSettings::new(dir);
        s.max_bytes = std::env::var("MUSTER_BENCH_MAX").unwrap().parse().unwrap();
        let mut b = Buffer::open(s, 0).unwrap();
        loop {
            let recs = b.read(0, 64 * 1024, 1000);
            if recs.is_empty() {
                break;
            }
            let keys: Vec<u64> = recs.iter().map(|r| r.key).collect();
            n += keys.len() as u64;
            b.remove(&keys);
        }
        b.flush().unwrap();
    } else {
        let db = sled::Config::new()
            .path(&dir)
            .cache_capacity(muster_agent::buffer::SEGMENT_CACHE_BYTES)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None)
            .open()
            .unwrap();
        loop {
            let batch: Vec<sled::IVec> = db.iter().take(200).map(|kv| kv.unwrap().0).collect();
            if batch.is_empty() {
                break;
            }
            for k in batch {
                db.remove(k).unwrap();
                n += 1;
            }
        }
        db.flush().unwrap();
    }
    let (_, hwm) = rss_kib(std::process::id()).unwrap();
    println!("{n} {hwm}");
}

// ------------------------------------------------------------ parent

/// `MUSTER_BENCH_ONLY=append,raw,day,full,compare` runs a subset.
fn phase(name: &str) -> bool {
    std::env::var("MUSTER_BENCH_ONLY").map_or(true, |v| v.split(',').any(|p| p == name))
}

fn parent() {
    println!("muster-agent store-and-forward bench");
    let t = TempDir::new().unwrap();
    if phase("append") {
        append_rate(t.path());
    }

    let broker = Mosquitto::start_with(muster_testkit::MosquittoOptions {
        extra: vec!["log_type notice".into()],
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let collector = rt.block_on(Collector::start(broker.port()));

    // Baseline first, on a quiet broker.
    if phase("raw") || phase("day") {
        let raw = raw_qos1_rate(broker.port(), &collector);
        day_backlog(t.path(), broker.port(), &collector, raw);
    }
    if phase("full") {
        full_buffer(t.path(), broker.port(), &collector);
    }
    if phase("compare") {
        compare(t.path());
    }
    drop(broker);
}

fn day_backlog(dir: &Path, port: u16, collector: &Collector, raw: f64) {
    let day = dir.join("day");
    let stored = fill(&day, DAY, None);
    println!(
        "\n24 h backlog: {DAY} host samples, {:.1} MiB stored, {:.1} MiB on disk",
        mib(stored),
        mib(du(&day))
    );
    let day_drain = drain(&day, port, collector, DAY);
    println!(
        "drain: {DAY} records in {:.2} s = {:.0} records/s ({:.1} MiB/s); agent RSS steady {} KiB, peak {} KiB",
        day_drain.secs,
        DAY as f64 / day_drain.secs,
        mib(stored) / day_drain.secs,
        day_drain.rss_steady_kib,
        day_drain.rss_peak_kib
    );
    println!(
        "drain rate / mosquitto_pub raw QoS 1 rate = {:.0} / {:.0} = {:.2} (goal >= 0.5)",
        DAY as f64 / day_drain.secs,
        raw,
        DAY as f64 / day_drain.secs / raw
    );
}

fn full_buffer(dir: &Path, port: u16, collector: &Collector) {
    let full = dir.join("full");
    let n_full = fill_to_cap(&full, BufferSettings::DEFAULT_MAX_BYTES);
    println!(
        "\nfull buffer: {n_full} records, 64 MiB - 16 KiB stored, {:.1} MiB on disk",
        mib(du(&full))
    );
    collector.reset();
    let d = drain(&full, port, collector, n_full);
    println!(
        "drain of a full 64 MiB buffer: {:.2} s = {:.0} records/s; agent RSS steady {} KiB, peak {} KiB; disk after: {:.1} MiB",
        d.secs,
        n_full as f64 / d.secs,
        d.rss_steady_kib,
        d.rss_peak_kib,
        mib(du(&full))
    );
}

/// Segmented buffer vs one sled database, read-and-delete of a full
/// buffer, at 16, 64 and 256 MiB: how peak RSS grows with the data.
fn compare(dir: &Path) {
    println!();
    let (_, empty) = run_drain_child("drain-buffer", &dir.join("empty"), 0);
    println!("read-and-delete, peak RSS: an empty buffer {empty} KiB");
    for mb in [16u64, 64, 256] {
        let seg = dir.join(format!("seg-{mb}"));
        let n = fill_to_cap(&seg, mb << 20);
        let one = dir.join(format!("one-sled-{mb}"));
        fill_single_sled(&one, n);
        let (disk_seg, disk_one) = (du(&seg), du(&one));
        let (n1, hwm1) = run_drain_child("drain-sled", &one, mb << 20);
        let (n2, hwm2) = run_drain_child("drain-buffer", &seg, mb << 20);
        assert_eq!((n1, n2), (n, n));
        println!(
            "read-and-delete {mb} MiB ({n} records), peak RSS: one sled db {hwm1} KiB, segmented buffer {hwm2} KiB; on disk when full: one sled db {:.0} MiB, segmented {:.0} MiB",
            mib(disk_one),
            mib(disk_seg)
        );
        let _ = std::fs::remove_dir_all(&seg);
        let _ = std::fs::remove_dir_all(&one);
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn du(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}

fn append_rate(dir: &Path) {
    let mut b = Buffer::open(BufferSettings::new(dir.join("append")), 0).unwrap();
    let records: Vec<(Meta, Vec<u8>)> = (1..=1000).map(host_record).collect();
    let start = Instant::now();
    let mut last_flush = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        let (m, e) = &records[(n % 1000) as usize];
        let meta = Meta { seq: n + 1, ..*m };
        match b.append(meta, e, 0, &|_| false) {
            Appended::Stored { .. } => {}
            Appended::Dropped { reason } => panic!("{reason}"),
        }
        n += 1;
        bytes += e.len() as u64;
        if last_flush.elapsed() >= Duration::from_secs(1) {
            b.flush().unwrap();
            last_flush = Instant::now();
        }
    }
    b.flush().unwrap();
    let s = start.elapsed().as_secs_f64();
    println!(
        "append (flush every 1 s, the default): {n} records in {s:.2} s = {:.0} records/s, {:.1} MiB/s",
        n as f64 / s,
        mib(bytes) / s
    );
    // For scale: a flush after every record (what a 0 s policy would cost).
    let start = Instant::now();
    let mut m = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let (meta, e) = &records[(m % 1000) as usize];
        b.append(
            Meta {
                seq: n + m + 1,
                ..*meta
            },
            e,
            0,
            &|_| false,
        );
        b.flush().unwrap();
        m += 1;
    }
    println!(
        "append with a flush after every record (for scale): {:.0} records/s",
        m as f64 / start.elapsed().as_secs_f64()
    );
}

/// A buffer holding `n` host samples (seqs 1..=n); returns stored bytes.
fn fill(dir: &Path, n: u64, max: Option<u64>) -> u64 {
    let mut s = BufferSettings::new(dir.to_path_buf());
    if let Some(m) = max {
        s.max_bytes = m;
    }
    let mut b = Buffer::open(s, 0).unwrap();
    for seq in 1..=n {
        let (m, e) = host_record(seq);
        b.append(m, &e, 0, &|_| false);
    }
    b.flush().unwrap();
    b.bytes()
}

/// Fills a default (64 MiB) buffer to within 16 KiB of its cap (room for
/// the agent's heartbeats, so the drain drops nothing); returns the records held.
fn fill_to_cap(dir: &Path, max_bytes: u64) -> u64 {
    let mut s = BufferSettings::new(dir.to_path_buf());
    s.max_bytes = max_bytes;
    let room = s.max_bytes - 16 * 1024;
    let mut b = Buffer::open(s, 0).unwrap();
    let mut seq = 0;
    loop {
        seq += 1;
        let (m, e) = host_record(seq);
        if b.bytes() + (e.len() + muster_agent::buffer::record::HEADER_LEN) as u64 > room {
            break;
        }
        b.append(m, &e, 0, &|_| false);
    }
    assert_eq!(b.drops().full, 0);
    b.flush().unwrap();
    b.records()
}

fn fill_single_sled(dir: &Path, n: u64) {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(muster_agent::buffer::SEGMENT_CACHE_BYTES)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(None)
        .open()
        .unwrap();
    for seq in 1..=n {
        let (m, e) = host_record(seq);
        let v = muster_agent::buffer::record::encode_value(&m, &e);
        db.insert(seq.to_be_bytes(), v).unwrap();
    }
    db.flush().unwrap();
}

fn run_drain_child(role: &str, dir: &Path, max_bytes: u64) -> (u64, u64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("MUSTER_BENCH_ROLE", role)
        .env("MUSTER_BENCH_DIR", dir)
        .env("MUSTER_BENCH_MAX", max_bytes.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

struct Drain {
    secs: f64,
    rss_steady_kib: u64,
    rss_peak_kib: u64,
}

/// Starts the agent on `dir` and waits until the collector has all `n`
/// records of the backlog's boot.
fn drain(dir: &Path, port: u16, collector: &Collector, n: u64) -> Drain {
    let mut child: Child = Command::new(std::env::current_exe().unwrap())
        .env("MUSTER_BENCH_ROLE", "agent")
        .env("MUSTER_BENCH_DIR", dir)
        .env("MUSTER_BENCH_PORT", port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut peak = 0;
    let mut next_report = Duration::from_secs(10);
    while collector.distinct(BOOT) < n {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "drain took over 10 minutes"
        );
        if start.elapsed() >= next_report {
            next_report += Duration::from_secs(10);
            println!(
                "  ... {} of {n} after {:?}",
                collector.distinct(BOOT),
                start.elapsed()
            );
        }
        if let Some((rss, hwm)) = rss_kib(pid) {
            samples.push(rss);
            peak = peak.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some((rss, hwm)) = rss_kib(pid) {
        samples.push(rss);
        peak = peak.max(hwm);
    }
    drop(child.stdin.take());
    let _ = child.wait();
    samples.sort_unstable();
    Drain {
        secs,
        rss_steady_kib: samples.get(samples.len() / 2).copied().unwrap_or(0),
        rss_peak_kib: peak,
    }
}

/// `mosquitto_pub -q 1 --repeat N` publishing `DAY` messages the size of
/// a stored host sample; the rate at which the subscriber has them all.
/// (`-l` is not used: mosquitto_pub 2.0.11 drops what it has queued when
/// stdin ends — it delivered 20,867 of 86,400 lines here.)
fn raw_qos1_rate(port: u16, collector: &Collector) -> f64 {
    let size = host_record(1).1.len();
    let msg = "x".repeat(size);
    let start = Instant::now();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "bench/raw",
            "-m",
            &msg,
        ])
        .args(["--repeat", &DAY.to_string()])
        .status()
        .expect("run mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(status.success());
    let pub_secs = start.elapsed().as_secs_f64();
    while collector.raw.load(Ordering::SeqCst) < DAY {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "raw messages did not all arrive"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = DAY as f64 / secs;
    println!(
        "\nmosquitto_pub -q 1 --repeat {DAY}: messages of {size} B published in {pub_secs:.2} s, all received in {secs:.2} s = {rate:.0} messages/s"
    );
    rate
}

/// The bench's collector: subscribes to telemetry, counts, acks like the
/// real one (every seq up to the first gap, plus ranges above).
struct Collector {
    got: Arc<Mutex<BTreeSet<(BootId, u64)>>>,
    raw: Arc<AtomicU64>,
}

impl Collector {
    async fn start(port: u16) -> Collector {
        let mut o = MqttOptions::new("bench-collector", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(1000);
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let got: Arc<Mutex<BTreeSet<(BootId, u64)>>> = Arc::default();
        let raw = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        {
            let got = got.clone();
            let raw = raw.clone();
            tokio::spawn(async move {
                let mut subacks = 0;
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            client
                                .subscribe("muster/v1/+/+/telemetry", QoS::AtLeastOnce)
                                .await
                                .unwrap();
                            client
                                .subscribe("bench/raw", QoS::AtLeastOnce)
                                .await
                                .unwrap();
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subacks += 1;
                            if subacks == 2
                                && let Some(tx) = ready_tx.take()
                            {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if p.topic == "bench/raw" {
                                raw.fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                            let d = decode(&p.payload).expect("agent payload decodes");
                            let recs = match d.message.body {
                                Body::Record(r) => vec![r],
                                Body::Batch(rs) => rs,
                                _ => continue,
                            };
                            let boots: BTreeSet<BootId> = recs.iter().map(|r| r.boot).collect();
                            let acks: Vec<Ack> = {
                                let mut g = got.lock().unwrap();
                                for r in &recs {
                                    g.insert((r.boot, r.seq));
                                }
                                boots
                                    .into_iter()
                                    .map(|b| ack_for(&d.message.unit, &g, b))
                                    .collect()
                            };
                            for ack in acks {
                                let msg = Message {
                                    unit: d.message.unit.clone(),
                                    body: Body::Ack(ack),
                                };
                                client
                                    .publish(
                                        unit_topic(&d.message.unit, TopicKind::Ack),
                                        QoS::AtLeastOnce,
                                        false,
                                        encode(&msg).unwrap(),
                                    )
                                    .await
                                    .unwrap();
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        ready_rx.await.unwrap();
        Collector { got, raw }
    }

    fn distinct(&self, boot: BootId) -> u64 {
        self.got
            .lock()
            .unwrap()
            .range((boot, 0)..=(boot, u64::MAX))
            .count() as u64
    }

    fn reset(&self) {
        self.got.lock().unwrap().clear();
    }
}

/// The collector's ack, signed with the suite's test key (as the real one signs).
fn ack_for(unit: &UnitId, got: &BTreeSet<(BootId, u64)>, boot: BootId) -> Ack {
    let mut upto = 0;
    let mut ranges: Vec<SeqRange> = Vec::new();
    for &(_, s) in got.range((boot, 1)..=(boot, u64::MAX)) {
        if ranges.is_empty() && s == upto + 1 {
            upto = s;
            continue;
        }
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
        collector_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        key_id: muster_proto::KeyId::NONE,
        sig: muster_proto::Signature::NONE,
    };
    muster_proto::sign::sign_ack(&muster_testkit::test_collector_key(), unit, ack)
}
