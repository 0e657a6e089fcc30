//! Drain benchmark: a 24-hour backlog at a 1 s interval (86,400 host
//! samples) drained by the real `muster-agent` (release) through a real
//! Mosquitto into the real `muster-collector` (release), against
//! `mosquitto_pub`'s raw QoS 1 rate on the same machine in the same run.
//!
//! `cargo bench -p muster-e2e --bench drain` prints:
//! * the buffer's append rate with the default flush policy (a flush every
//!   1 s of appending, as the uplink does), writing the backlog;
//! * the raw rate: `mosquitto_pub -q 1 --repeat N` of one record-sized
//!   message (the size of a single host-sample message);
//! * the drain: records/s from the agent's start until the collector has
//!   stored (and acked) all 86,400, and the ratio to the raw rate;
//! * the agent's RSS (peak over the drain, sampled every 100 ms, and VmHWM).
//!
//! Goal: drain rate at least half of raw. `DRAIN_RECORDS` overrides the
//! backlog size for a quick run; `MUSTER_AGENT` runs another agent build
//! (e.g. the shipped static musl one, `target/x86_64-unknown-linux-musl/agent/`).

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/e2e/procs.rs"]
mod procs;

use std::process::Command;
use std::time::{Duration, Instant};

use muster_agent::buffer::{Buffer, BufferSettings, Meta};
use muster_proto::{
    Body, BootId, Message, Payload, Record, UnitId, encode, encode_record, fixtures,
};
use muster_testkit::{Mosquitto, TempDir};
use procs::*;

fn main() {
    let n: u64 = std::env::var("DRAIN_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(86_400);
    let bins = bins(true);
    eprintln!("binaries: {}", bins.agent.display());
    let dir = TempDir::new().unwrap();
    let agent_dir = dir.path().join("agent");
    let buffer_dir = agent_dir.join("buffer");

    // 1. The backlog, written with the default flush policy.
    let boot = BootId(0x24_0000_0000_0001);
    let sample = {
        let mut h = fixtures::host_sample();
        h.interval_ms = 1000;
        h
    };
    let first_at = now_ms() - n * 1000;
    let settings = BufferSettings::new(buffer_dir.clone());
    let flush_every = settings.flush_interval;
    let mut b = Buffer::open(settings, now_ms()).expect("open buffer");
    let t = Instant::now();
    let mut last_flush = Instant::now();
    for seq in 1..=n {
        let r = Record {
            boot,
            seq,
            at_ms: first_at + (seq - 1) * 1000,
            payload: Payload::Host(sample.clone()),
        };
        let enc = encode_record(&r).unwrap();
        b.append(Meta::of(&r), &enc, now_ms(), &|_| false);
        if last_flush.elapsed() >= flush_every {
            b.flush().unwrap();
            last_flush = Instant::now();
        }
    }
    b.flush().unwrap();
    let append_s = t.elapsed().as_secs_f64();
    assert_eq!(b.drops().total(), 0);
    let backlog_bytes = b.bytes();
    drop(b);
    println!(
        "buffer append (default flush policy, flush every {flush_every:?}): {n} records in {append_s:.2} s = {:.0} records/s ({:.1} MiB stored, {:.1} MiB on disk)",
        n as f64 / append_s,
        backlog_bytes as f64 / 1048576.0,
        dir_bytes(&buffer_dir) as f64 / 1048576.0
    );

    // 2. The raw QoS 1 rate of mosquitto_pub, one record-sized message each.
    let broker = Mosquitto::start();
    let one = encode(&Message {
        unit: UnitId::new(AGENCY, "D24").unwrap(),
        body: Body::Record(Record {
            boot,
            seq: 1,
            at_ms: first_at,
            payload: Payload::Host(sample.clone()),
        }),
    })
    .unwrap();
    let payload = "x".repeat(one.len());
    let raw_n: u64 = 20_000;
    let t = Instant::now();
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-q", "1", "-t", "bench/raw", "-m", &payload])
        .args(["--repeat", &raw_n.to_string()])
        .output()
        .expect("run mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw_s = t.elapsed().as_secs_f64();
    let raw_rate = raw_n as f64 / raw_s;
    println!(
        "mosquitto_pub -q 1 --repeat {raw_n}, {} B payload: {raw_s:.2} s = {raw_rate:.0} messages/s",
        payload.len()
    );

    // 3. The drain into the real collector.
    let cfg = dir.path().join("collector.toml");
    std::fs::write(
        &cfg,
        collector_text(
            &broker.url(),
            &dir.path().join("store"),
            "sample_retention = \"48h\"",
        ),
    )
    .unwrap();
    let col = CollectorProc::spawn(&cfg, true);
    let mut spec = AgentSpec::new("D24", &broker.url(), &agent_dir);
    // Production defaults but for the sampling interval of the backlog.
    spec.keepalive = "30s".into();
    spec.flush_interval = "1s".into();
    spec.heartbeat = "30s".into();
    spec.ack_timeout = "30s".into();
    let t = Instant::now();
    let mut agent = AgentProc::spawn(&spec, true);
    let pid = agent.pid();
    let old = format!("{:016x}", boot.0);
    let mut peak_rss = 0;
    let mut hwm = 0;
    let mut first_seen = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let received = |v: &serde_json::Value| {
        boots(v)
            .iter()
            .find(|b| b.0 == old)
            .map(|b| b.1)
            .unwrap_or(0)
    };
    loop {
        if let Some((rss, h)) = muster_testkit::rss_kib(pid) {
            peak_rss = peak_rss.max(rss);
            hwm = hwm.max(h);
        }
        let got = col.unit("D24").map(|v| received(&v)).unwrap_or(0);
        if got > 0 && first_seen.is_none() {
            first_seen = Some(t.elapsed());
        }
        if got >= n {
            break;
        }
        assert!(agent.alive(), "agent died:\n{}", agent.log_tail());
        assert!(
            Instant::now() < deadline,
            "drain incomplete after 600 s: {got}/{n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_s = t.elapsed().as_secs_f64();
    let v = col.unit("D24").unwrap();
    let b = boots(&v);
    let ob = b.iter().find(|x| x.0 == old).unwrap();
    assert_eq!(
        (ob.1, ob.3),
        (n, 0),
        "every record stored once: {}",
        brief(&v)
    );
    let rate = n as f64 / drain_s;
    let from_first = first_seen.map(|f| n as f64 / (drain_s - f.as_secs_f64()));
    println!(
        "drain: {n} records ({:.1} MiB) from agent start to all stored at the collector: {drain_s:.2} s = {rate:.0} records/s{}",
        backlog_bytes as f64 / 1048576.0,
        from_first
            .map(|r| format!(" ({r:.0} records/s from the first arrival)"))
            .unwrap_or_default()
    );
    println!(
        "drain / raw mosquitto_pub QoS 1 = {:.2} (goal >= 0.5); duplicates {}",
        rate / raw_rate,
        v["seq"]["duplicates"]
    );
    println!(
        "by bytes: drain {:.1} MiB/s of stored records vs raw {:.1} MiB/s of payload = {:.2}",
        backlog_bytes as f64 / drain_s / 1048576.0,
        raw_rate * payload.len() as f64 / 1048576.0,
        (backlog_bytes as f64 / drain_s) / (raw_rate * payload.len() as f64)
    );
    println!(
        "agent RSS while draining: peak {:.1} MiB sampled (VmHWM {:.1} MiB)",
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    agent.stop();
}
