//! `--cluster`: the steady load against cluster mode (issue 15), with real
//! processes only: three `nats-server` nodes (JetStream, the MQTT
//! listeners, the partition mapping of `packaging/cluster/nats-server.conf`),
//! a PostgreSQL 15 in a temp dir, and two `muster-collector run` in cluster
//! mode on the shipped `packaging/cluster/collector.toml` with only its ids,
//! addresses, secrets and paths replaced (as `tests/e2e/tests/e2e/cluster.rs`
//! runs it), plus the bench's threshold rule.
//!
//! Contract:
//! * The load is the default mode's steady phase: `--units` over
//!   `--connections` MQTT connections (one agency each), spread round-robin
//!   over the three nodes' MQTT listeners, each unit one QoS 1 sample every
//!   `--interval-ms`. A record counts only when a signed ack covers it
//!   ([`crate::acks`]); acks come back as core NATS messages, which NATS
//!   delivers to the connections' MQTT ack subscriptions.
//! * The baseline is a plain core NATS subscriber of the partitioned
//!   telemetry subjects ([`TELEMETRY_SUBJECT`]) in the same run, counting
//!   messages (one record each in the steady load): `acked / baseline` is
//!   the ingest ratio against what the transport delivered.
//! * The lease split is read from `partition_leases` once both collectors
//!   hold every partition between them, evenly, before the load starts.
//! * PostgreSQL bytes per unit per day: `pg_database_size` growth over the
//!   run (schema and lease table already in place before it) / units /
//!   (load seconds / 86,400). A short run also holds each unit's one-time
//!   rows; the `[info]` figure from after the first two intervals leaves
//!   those out. Raw growth, before any retention rolls it up.
//! * Flag latency is read on collector-1's SSE stream, which shows every
//!   collector's transitions (the store's event log).
//!
//! [`parse_split`], [`parse_size`] and [`per_unit_day`] are pure and checked
//! by [`self_test`].

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use muster_proto::BootId;
use muster_testkit::{NatsCluster, Postgres, TempDir, rss_kib};

use crate::harness::{Collector, Flags, RULES, Steady, take_latencies, totals};
use crate::procfs;
use crate::{ADMIN, Args, lat3, layout, mib};

/// What the baseline subscribes to: every partitioned telemetry subject
/// (`muster.v1.<agency>.<unit>.telemetry.<partition>`), what the stream
/// captures.
pub const TELEMETRY_SUBJECT: &str = "muster.v1.*.*.telemetry.*";

/// The collectors' ids in the lease table.
const IDS: [&str; 2] = ["collector-1", "collector-2"];
/// How long a cluster collector may take to answer `/readyz` (it creates
/// the stream and a replicated consumer per partition first).
const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long the two collectors may take to split the partitions.
const SPLIT_WITHIN: Duration = Duration::from_secs(60);

/// The shipped cluster example re-addressed (`muster_testkit::cluster_example`),
/// with the bench's rule; and the partition count.
fn collector_toml(id: &str, nats: &NatsCluster, postgres: &str, dir: &Path) -> (String, u32) {
    let mut t = muster_testkit::cluster_example::collector_toml(id, ADMIN, nats, postgres, dir);
    let rules: toml::Table = toml::from_str(RULES).expect("the bench's rule parses");
    t.insert("rules".into(), rules["rules"].clone());
    (
        toml::to_string(&t).expect("render the config"),
        muster_testkit::cluster_example::partitions(),
    )
}

/// `owner|count` lines (psql, unaligned) -> (owner, partitions), as listed.
pub fn parse_split(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|l| {
            let (o, n) = l.split_once('|')?;
            Some((o.trim().to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

/// `pg_database_size` output -> bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Bytes per unit per day, from `growth` bytes over `seconds` for `units`.
pub fn per_unit_day(growth: i64, units: usize, seconds: f64) -> f64 {
    growth as f64 / units.max(1) as f64 / (seconds / 86_400.0)
}

fn lease_split(pg: &Postgres) -> Vec<(String, u32)> {
    parse_split(
        &pg.psql(
            "SELECT owner, count(*) FROM partition_leases \
             WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner ORDER BY owner",
        )
        .unwrap_or_default(),
    )
}

fn db_size(pg: &Postgres) -> u64 {
    pg.psql("SELECT pg_database_size(current_database())")
        .ok()
        .as_deref()
        .and_then(parse_size)
        .expect("pg_database_size")
}

/// A core NATS subscriber counting the telemetry messages it receives.
struct NatsSub {
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl NatsSub {
    async fn start(url: &str) -> NatsSub {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let mut sub = client
            .subscribe(TELEMETRY_SUBJECT)
            .await
            .expect("subscribe");
        client.flush().await.expect("flush the subscription");
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while sub.next().await.is_some() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        NatsSub { count, task }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for NatsSub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn run(n: usize, a: &Args) {
    println!(
        "== cluster: {n} units, {} ms interval, {} s; 3 NATS nodes, 2 collectors, PostgreSQL ==",
        a.interval_ms, a.seconds
    );
    let dir = TempDir::new().unwrap();
    let t0 = Instant::now();
    let nats = NatsCluster::start_with(3, &muster_testkit::cluster_example::nats_mappings());
    let pg = Postgres::start();
    let mut collectors = Vec::new();
    let mut partitions = 0;
    for id in IDS {
        let d = dir.path().join(id);
        std::fs::create_dir_all(&d).unwrap();
        let (text, p) = collector_toml(id, &nats, &pg.url(), &d);
        partitions = p;
        let cfg = d.join("collector.toml");
        std::fs::write(&cfg, text).unwrap();
        collectors.push(Collector::spawn(&cfg, d.join("store"), READY_WITHIN).await);
    }
    let ready = t0.elapsed();
    // Both collectors hold every partition between them, evenly.
    let each = partitions / IDS.len() as u32;
    let deadline = Instant::now() + SPLIT_WITHIN;
    let split = loop {
        let s = lease_split(&pg);
        let held: u32 = s.iter().map(|x| x.1).sum();
        if held == partitions && s.len() == IDS.len() && s.iter().all(|x| x.1 >= each) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the partitions did not split evenly within {SPLIT_WITHIN:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "leases: {partitions} partitions: {} (both ready {:.1} s after the rig started, split at {:.1} s)",
        split
            .iter()
            .map(|(o, k)| format!("{o} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        ready.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
    );

    let sub = if a.baseline {
        Some(NatsSub::start(&nats.nats_url(0)).await)
    } else {
        None
    };
    // Flag latency: units marked to violate send cpu 99 in their next sample.
    let flags = Flags::watch(collectors[0].addr).await;

    // One agency per connection, connection c on node c % 3's MQTT
    // listener (client ids are unique: NATS refuses a second one).
    let layout = layout(n, a.connections);
    let (conns, clients) = crate::harness::connections(
        &layout,
        "bench-load",
        |c| nats.mqtt_port(c % 3),
        |i| BootId(0xc0_0000 + i as u64),
    )
    .await;
    // Let the baseline's interest reach every node's routes.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let db0 = db_size(&pg);
    let cpu0: Vec<f64> = collectors.iter().map(|c| procfs::cpu_s(c.pid())).collect();
    let run_for = Duration::from_secs(a.seconds);
    let start = Instant::now();
    let load = crate::harness::steady_load(
        &layout,
        &clients,
        &conns,
        (&flags.violate, &flags.sent_at),
        (start, run_for),
        a.interval_ms,
        n,
        a.probes,
    );
    // The database once every unit has sent (and been stored) twice: its
    // one-time rows are in, what follows is the steady growth.
    let warm = Duration::from_millis(2 * a.interval_ms);
    let db_warm = if warm + Duration::from_secs(5) < run_for {
        tokio::time::sleep(warm).await;
        Some((start.elapsed(), db_size(&pg)))
    } else {
        None
    };
    let base = sub.as_ref().map(|sub| || sub.count());
    let steady = Steady::end(load, start, &conns, base, a.grace).await;
    let (elapsed, acked) = (steady.elapsed, steady.acked);
    let baseline = match steady.baseline {
        Some(base) => format!(
            "NATS subscriber ({TELEMETRY_SUBJECT}) received {base}: ratio acked/baseline {:.4} (transport ratio {:.4})",
            acked as f64 / base.max(1) as f64,
            base as f64 / steady.total.max(1) as f64,
        ),
        None => "NATS subscriber off (--no-baseline)".to_string(),
    };
    let db1 = db_size(&pg);
    let after_drain = start.elapsed();
    let cpu: Vec<f64> = collectors
        .iter()
        .zip(&cpu0)
        .map(|(c, c0)| procfs::cpu_s(c.pid()) - c0)
        .collect();
    let flagged = flags.stop().await;
    let ack_lat = take_latencies(&conns);
    let foreign = totals(&conns).2;
    println!(
        "cluster steady: {n} units: {} over {} connections on 3 MQTT listeners; {}; {baseline}; ack latency {}; foreign acks {foreign}",
        steady.published(),
        layout.len(),
        steady.acked(a.grace, "ratio acked/published"),
        lat3(&ack_lat),
    );
    flagged.print(" on collector-1");
    for ((id, c), cpu) in IDS.iter().zip(&collectors).zip(&cpu) {
        let (rss, hwm) = rss_kib(c.pid()).unwrap_or((0, 0));
        let stored = c.metric("muster_ingest_stored_records_total").await;
        println!(
            "{id}: RSS {:.1} MiB (peak {:.1} MiB), CPU {cpu:.2} s over {elapsed:.1} s ({:.0}% of one core); partitions owned {}; [info: stored {stored} records (muster_ingest_stored_records_total), fenced commits {}]",
            mib(rss),
            mib(hwm),
            100.0 * cpu / elapsed,
            c.metric("muster_cluster_partitions_owned").await,
            c.metric("muster_store_fenced_total").await,
        );
    }
    let growth = db1 as i64 - db0 as i64;
    let steady = match db_warm {
        Some((t, size)) => {
            let secs = (after_drain - t).as_secs_f64();
            format!(
                "[info: from t={:.0} s (every unit known) to the end: {} bytes in {secs:.0} s, {:.0} bytes per unit per day]",
                t.as_secs_f64(),
                db1 as i64 - size as i64,
                per_unit_day(db1 as i64 - size as i64, n, secs),
            )
        }
        None => "[info: run too short for the figure without one-time rows]".to_string(),
    };
    println!(
        "postgres: database {:.1} MiB before, {:.1} MiB after: growth {growth} bytes over {elapsed:.1} s; {:.0} bytes per unit per day ({n} units); {:.0} bytes per acked record; {steady}",
        db0 as f64 / 1_048_576.0,
        db1 as f64 / 1_048_576.0,
        per_unit_day(growth, n, elapsed),
        growth as f64 / acked.max(1) as f64,
    );
    let mut stops = Vec::new();
    for (id, mut c) in IDS.iter().zip(collectors) {
        stops.push(format!("{id} {:.2} s", c.stop().as_secs_f64()));
    }
    println!(
        "stop: SIGTERM to exit: {} (systemd's stop timeout is 20 s)",
        stops.join(", ")
    );
    drop(sub);
    drop(nats);
    drop(pg);
}

/// Table checks of this module's pure parts.
pub fn self_test() -> usize {
    let mut n = 0;
    assert_eq!(
        parse_split("collector-1|32\ncollector-2|32\n"),
        vec![
            ("collector-1".to_owned(), 32),
            ("collector-2".to_owned(), 32)
        ]
    );
    assert_eq!(parse_split(""), vec![]);
    assert_eq!(
        parse_split("x|y\ncollector-2 | 7"),
        vec![("collector-2".to_owned(), 7)]
    );
    n += 3;
    assert_eq!(parse_size(" 8110595\n"), Some(8_110_595));
    assert_eq!(parse_size("ERROR"), None);
    n += 2;
    // 1 MiB over 1000 units in 30 s: 1048576 / 1000 * 2880 per day.
    assert!((per_unit_day(1_048_576, 1000, 30.0) - 3_019_898.88).abs() < 1e-3);
    assert_eq!(per_unit_day(0, 10, 60.0), 0.0);
    assert!(per_unit_day(-8192, 1, 86_400.0) == -8192.0);
    n += 3;
    n
}
