//! The collector's store on disk (issue 14): bytes per raw record, whether
//! pruning gives space back, commit throughput and RSS growth, for the
//! current store and candidate embedded pure-Rust engines, in one run.
//!
//! ```text
//! cargo bench -p muster-collector --bench store -- --units 2000 --rounds 60
//! ```
//!
//! Each engine runs in its own child process (this binary re-executed with
//! `--engine NAME`) so RSS growth is its own. The workload is what ingest
//! writes: per unit per 5 s of event time one host sample (with network
//! context) and two probe results (`muster_proto::fixtures`, with values
//! varied per record), group commits of ~2,000 records, each durable before
//! the next. `sled` and `fjall` go through the collector's own `Store`
//! implementations (`commit(CommitBatch)`, `prune`); `redb` gets the same
//! keys and values in one write transaction per commit (durable).
//! After the writes: size on disk; then a prune of the older half, and the
//! size right after and once the engine's background work settles (<= 10 s).
//!
//! `--rollups` (fjall, the collector's store): `--units` units write
//! `--hours` hours of event time (default 1,000 x 1), one retention round
//! rolls them into minute and hour rollups, and it prints bytes on disk per
//! raw record and per rollup, both from the same run. `--profile walk`
//! varies the values as a terminal does instead of as noise ([`Profile`]).
//!
//! `--round-cost` (fjall): `--units` units (default 20,000) each write a
//! minute of records, then one retention round rolls it, `--minutes` times
//! (default 5), as the collector's prune task does every minute; it prints
//! each round's time and the time per unit. The bench allocates with
//! mimalloc, as the collector does (`main.rs`).

// Benches measure in real time.
#![allow(clippy::disallowed_methods)]

/// The collector's allocator, so that what is measured here is what it pays.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use muster_collector::store::{CommitBatch, FjallStore, SledStore, Store, UnitRecord};
use muster_proto::{Body, BootId, Message, Payload, Record, UnitId, fixtures};
use redb::ReadableTable;

const INTERVAL_MS: u64 = 5_000;
const ENGINES: [&str; 3] = ["sled", "fjall", "redb"];
const CACHE: u64 = 64 << 20;

fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next().and_then(|v| v.parse().ok());
        }
    }
    None
}

/// A small deterministic generator (no `rand` in benches).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

/// How sample values vary: `Noise` (the default: every value drawn anew,
/// the worst case for compression) or `--profile walk` (each unit's cpu
/// and memory a random walk, its latencies a per-unit base with 10 %
/// jitter: closer to a real terminal, whose load does not jump from 0 to
/// 100 % every 5 s).
enum Profile {
    Noise,
    Walk(Vec<Walk>),
}

#[derive(Clone, Copy)]
struct Walk {
    cpu_bp: i64,
    mem_kib: i64,
    total_us: u32,
}

impl Profile {
    fn from_args(units: usize, rng: &mut Lcg) -> Profile {
        match arg::<String>("--profile").as_deref() {
            None | Some("noise") => Profile::Noise,
            Some("walk") => Profile::Walk(
                (0..units)
                    .map(|_| Walk {
                        cpu_bp: rng.next(5_000) as i64,
                        mem_kib: 6_000_000 + rng.next(3_000_000) as i64,
                        total_us: 20_000 + rng.next(180_000) as u32,
                    })
                    .collect(),
            ),
            Some(other) => panic!("--profile {other}: noise or walk"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Profile::Noise => "noise",
            Profile::Walk(_) => "walk",
        }
    }

    /// (cpu bp, memory used KiB, probe total µs, connect µs) of unit `i`'s
    /// next sample.
    fn next(&mut self, i: usize, rng: &mut Lcg) -> (u16, u64, u32, u32) {
        match self {
            Profile::Noise => (
                rng.next(10_000) as u16,
                8_000_000 + rng.next(2_000_000),
                100_000 + rng.next(100_000) as u32,
                20_000 + rng.next(30_000) as u32,
            ),
            Profile::Walk(w) => {
                let w = &mut w[i];
                let step = |rng: &mut Lcg, span: u64| rng.next(2 * span + 1) as i64 - span as i64;
                w.cpu_bp = (w.cpu_bp + step(rng, 400)).clamp(0, 10_000);
                w.mem_kib = (w.mem_kib + step(rng, 20_000)).clamp(4_000_000, 10_000_000);
                let jitter =
                    |rng: &mut Lcg, base: u32| base + rng.next(u64::from(base / 10)) as u32;
                (
                    w.cpu_bp as u16,
                    w.mem_kib as u64,
                    jitter(rng, w.total_us),
                    jitter(rng, w.total_us / 5),
                )
            }
        }
    }
}

/// The records of one round (5 s of event time) for every unit.
fn round(units: &[UnitId], r: u64, rng: &mut Lcg, profile: &mut Profile) -> Vec<(UnitId, Record)> {
    let at = fixtures::AT_MS + r * INTERVAL_MS;
    let mut out = Vec::with_capacity(units.len() * 3);
    for (i, u) in units.iter().enumerate() {
        let (cpu, mem, total, connect) = profile.next(i, rng);
        let mut h = fixtures::host_sample();
        h.network = Some(Box::new(fixtures::net_context()));
        if let Some(c) = &mut h.cpu {
            c.total_bp = cpu;
            for p in &mut c.per_core_pct {
                *p = rng.next(100) as u8;
            }
        }
        if let Some(m) = &mut h.memory {
            m.used_kib = mem;
        }
        let mut p1 = fixtures::http_probe();
        p1.phases.total_us = total;
        p1.phases.connect_us = Some(connect);
        let p2 = fixtures::icmp_probe_failed();
        for (i, payload) in [Payload::Host(h), Payload::Probe(p1), Payload::Probe(p2)]
            .into_iter()
            .enumerate()
        {
            let mut rec = fixtures::record(r * 3 + i as u64 + 1, payload);
            rec.at_ms = at + i as u64;
            rec.boot = BootId(0xb007);
            out.push((u.clone(), rec));
        }
    }
    out
}

trait Engine {
    fn commit(&self, batch: &CommitBatch);
    fn prune(&self, before_ms: u64) -> u64;
    fn size(&self) -> u64;
}

struct OfStore<S: Store>(S);
impl<S: Store> Engine for OfStore<S> {
    fn commit(&self, batch: &CommitBatch) {
        self.0.commit(batch).unwrap();
    }
    fn prune(&self, before_ms: u64) -> u64 {
        self.0.prune(before_ms, 0).unwrap().samples
    }
    fn size(&self) -> u64 {
        self.0.size_on_disk()
    }
}

const SAMPLES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("samples");
const UNITS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("units");

struct Redb(redb::Database, std::path::PathBuf);
impl Engine for Redb {
    fn commit(&self, batch: &CommitBatch) {
        let tx = self.0.begin_write().unwrap();
        {
            let mut t = tx.open_table(SAMPLES).unwrap();
            for (u, rec) in &batch.samples {
                let k = key(u, rec.at_ms, rec.boot.0, rec.seq);
                let v = muster_proto::encode(&Message {
                    unit: u.clone(),
                    body: Body::Record(rec.clone()),
                })
                .unwrap();
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
            let mut t = tx.open_table(UNITS).unwrap();
            for u in &batch.units {
                let v = serde_json::to_vec(u).unwrap();
                t.insert(unit_prefix(&u.unit).as_slice(), v.as_slice())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn prune(&self, before_ms: u64) -> u64 {
        let tx = self.0.begin_write().unwrap();
        let mut n = 0;
        {
            let units: Vec<Vec<u8>> = {
                let t = tx.open_table(UNITS).unwrap();
                t.iter()
                    .unwrap()
                    .map(|kv| kv.unwrap().0.value().to_vec())
                    .collect()
            };
            let mut t = tx.open_table(SAMPLES).unwrap();
            for mut p in units {
                p.push(0);
                let mut end = p.clone();
                end.extend_from_slice(&before_ms.to_be_bytes());
                n += t
                    .extract_from_if(p.as_slice()..end.as_slice(), |_, _| true)
                    .unwrap()
                    .count() as u64;
            }
        }
        tx.commit().unwrap();
        n
    }
    fn size(&self) -> u64 {
        std::fs::metadata(&self.1).map(|m| m.len()).unwrap_or(0)
    }
}

fn unit_prefix(u: &UnitId) -> Vec<u8> {
    let mut k = u.agency.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(u.unit.as_bytes());
    k
}

fn key(u: &UnitId, at: u64, boot: u64, seq: u64) -> Vec<u8> {
    let mut k = unit_prefix(u);
    k.push(0);
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(&boot.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn rss() -> u64 {
    muster_testkit::rss_kib(std::process::id())
        .map(|(r, _)| r)
        .unwrap_or(0)
}

fn open(engine: &str, dir: &Path) -> Box<dyn Engine> {
    match engine {
        "sled" => Box::new(OfStore(SledStore::open(dir, CACHE).unwrap())),
        "fjall" => Box::new(OfStore(FjallStore::open_at(dir, CACHE).unwrap())),
        "redb" => {
            let f = dir.join("redb");
            Box::new(Redb(redb::Database::create(&f).unwrap(), f))
        }
        other => panic!("unknown engine {other}"),
    }
}

/// One engine, in this process: prints one `RESULT` line.
fn run(engine: &str, units: usize, rounds: u64) {
    let dir = muster_testkit::TempDir::new().unwrap();
    let ids: Vec<UnitId> = (0..units)
        .map(|i| UnitId::new(format!("agency-{}", i % 8), format!("E{i:05}")).unwrap())
        .collect();
    let rss0 = rss();
    let e = open(engine, dir.path());
    let mut rng = Lcg(7);
    let mut profile = Profile::from_args(ids.len(), &mut rng);
    let mut records = 0u64;
    let mut busy = Duration::ZERO;
    let per_commit = 2_000usize;
    for r in 0..rounds {
        let recs = round(&ids, r, &mut rng, &mut profile);
        for chunk in recs.chunks(per_commit) {
            let mut batch = CommitBatch {
                samples: chunk.to_vec(),
                ..CommitBatch::default()
            };
            // As ingest: the units whose records are in the batch.
            let mut last: Option<&UnitId> = None;
            for (u, _) in chunk {
                if last != Some(u) {
                    batch
                        .units
                        .push(UnitRecord::new(u.clone(), fixtures::AT_MS));
                    last = Some(u);
                }
            }
            let t = Instant::now();
            e.commit(&batch);
            busy += t.elapsed();
            records += chunk.len() as u64;
        }
    }
    let size_full = e.size();
    let rss_full = rss();
    let cut = fixtures::AT_MS + rounds / 2 * INTERVAL_MS;
    let t = Instant::now();
    let pruned = e.prune(cut);
    let prune_s = t.elapsed().as_secs_f64();
    let size_pruned = e.size();
    // Let background compaction run (fjall), at most 10 s.
    let mut size_settled = size_pruned;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let s = e.size();
        if s == size_settled && s < size_pruned {
            break;
        }
        size_settled = s;
    }
    // Steady state: as many rounds again, pruning to a window of half the
    // rounds every 6 rounds (as the prune task does with retention).
    let window = rounds / 2;
    for r in rounds..2 * rounds {
        let recs = round(&ids, r, &mut rng, &mut profile);
        for chunk in recs.chunks(per_commit) {
            e.commit(&CommitBatch {
                samples: chunk.to_vec(),
                ..CommitBatch::default()
            });
        }
        if r % 6 == 0 {
            e.prune(fixtures::AT_MS + (r + 1 - window) * INTERVAL_MS);
        }
    }
    e.prune(fixtures::AT_MS + (2 * rounds - window) * INTERVAL_MS);
    let steady = e.size() as f64 / (window * units as u64 * 3) as f64;
    println!(
        "RESULT {engine} {records} {size_full} {pruned} {size_pruned} {size_settled} {:.0} {} {prune_s:.2} {steady:.1}",
        records as f64 / busy.as_secs_f64(),
        rss_full.saturating_sub(rss0),
    );
}

/// A fresh fjall store (the collector's) and `units` unit ids over 8
/// agencies, with the record generator (`--profile`).
fn fjall_fleet(
    units: usize,
) -> (
    muster_testkit::TempDir,
    FjallStore,
    Vec<UnitId>,
    Lcg,
    Profile,
) {
    let dir = muster_testkit::TempDir::new().unwrap();
    let s = FjallStore::open_at(dir.path(), CACHE).unwrap();
    let ids: Vec<UnitId> = (0..units)
        .map(|i| UnitId::new(format!("agency-{}", i % 8), format!("E{i:06}")).unwrap())
        .collect();
    let mut rng = Lcg(7);
    let profile = Profile::from_args(ids.len(), &mut rng);
    (dir, s, ids, rng, profile)
}

/// Commits `rounds` of the fleet's records, 2,000 a commit, as ingest
/// does; how many.
fn write_rounds(
    s: &FjallStore,
    ids: &[UnitId],
    rounds: std::ops::Range<u64>,
    rng: &mut Lcg,
    profile: &mut Profile,
) -> u64 {
    let mut records = 0u64;
    for r in rounds {
        let recs = round(ids, r, rng, profile);
        for chunk in recs.chunks(2_000) {
            s.commit(&CommitBatch {
                samples: chunk.to_vec(),
                ..CommitBatch::default()
            })
            .unwrap();
            records += chunk.len() as u64;
        }
    }
    records
}

/// `--rollups`: bytes per raw record and per minute and hour rollup.
fn rollups(units: usize, hours: u64) {
    use muster_collector::store::rollup::{HOUR_MS, Retention};
    let (_dir, s, ids, mut rng, mut profile) = fjall_fleet(units);
    // Whole hours from an hour's start, and one round past them: the round
    // that rolls that last minute folds every whole hour into its block (a
    // unit's latest hour keeps a key per minute, as `FjallStore`
    // documents), so what is measured is the stored form of all but one
    // minute of each unit, as in a store that has run for days.
    let first = (HOUR_MS - fixtures::AT_MS % HOUR_MS) % HOUR_MS / INTERVAL_MS;
    let rounds = hours * HOUR_MS / INTERVAL_MS + 1;
    let records = write_rounds(&s, &ids, first..first + rounds, &mut rng, &mut profile);
    s.flush_memtables().unwrap();
    let [(raw_b, raw_n), ..] = s.series_footprint();
    // Every minute is dirty: one round rolls them all (nothing expires).
    let day = Duration::from_secs(86_400);
    let retention = Retention {
        raw: day,
        minute: 7 * day,
        hour: 90 * day,
    };
    let now = fixtures::AT_MS + (first + rounds) * INTERVAL_MS + 60_000;
    let t = Instant::now();
    let (st, _) = muster_collector::store::retention_round(&s, now, &retention, 30 * day).unwrap();
    let roll_s = t.elapsed().as_secs_f64();
    s.flush_memtables().unwrap();
    let [_, (min_b, min_n), (hour_b, hour_n)] = s.series_footprint();
    assert_eq!(raw_n as u64, records, "raw records on disk");
    let per = |b: u64, n: usize| b as f64 / n.max(1) as f64;
    // The values alone, before compression (one unit's minutes): each on its
    // own (the hour rollups' form), and as the hour blocks they are stored in.
    use muster_collector::store::rollup::{encode, encode_minutes, floor};
    let (mins, _) = s
        .rollups(
            &ids[0],
            muster_collector::store::rollup::Resolution::Minute,
            0,
            u64::MAX,
            10_000,
        )
        .unwrap();
    let per_minute = |bytes: usize| bytes as f64 / mins.len().max(1) as f64;
    let alone = per_minute(mins.iter().map(|r| encode(r).unwrap().len()).sum());
    let mut by_hour: std::collections::BTreeMap<u64, Vec<_>> = Default::default();
    for r in mins.iter().cloned() {
        by_hour
            .entry(floor(r.start_ms, HOUR_MS))
            .or_default()
            .push(r);
    }
    let block = per_minute(
        by_hour
            .iter()
            .map(|(h, m)| encode_minutes(*h, m).unwrap().len())
            .sum(),
    );
    println!(
        "rollups ({} values): {units} units x {hours} h: {records} raw records, {:.1} B each; {min_n} minute rollups ({} rolled in {roll_s:.1} s), {:.1} B each ({:.3} x a raw record; uncompressed {block:.1} B a minute in hour blocks, {alone:.1} B alone); {hour_n} hour rollups ({} rolled), {:.1} B each",
        profile.name(),
        per(raw_b, raw_n),
        st.minutes_rolled,
        per(min_b, min_n),
        per(min_b, min_n) / per(raw_b, raw_n),
        st.hours_rolled,
        per(hour_b, hour_n),
    );
}

/// `--round-cost`: what one retention round costs per unit when, as in a
/// running collector, each round has a minute of new records from every
/// unit (12 rounds of the fleet's records at 5 s) to roll up.
fn round_cost(units: usize, minutes: u64) {
    use muster_collector::store::rollup::{HOUR_MS, MINUTE_MS, Retention};
    let (_dir, s, ids, mut rng, mut profile) = fjall_fleet(units);
    let day = Duration::from_secs(86_400);
    let retention = Retention {
        raw: 2 * HOUR_MS_DURATION,
        minute: 7 * day,
        hour: 90 * day,
    };
    let first = (HOUR_MS - fixtures::AT_MS % HOUR_MS) % HOUR_MS / INTERVAL_MS;
    let per_minute = MINUTE_MS / INTERVAL_MS;
    let mut took = Vec::new();
    for m in 0..minutes {
        let t = Instant::now();
        let rounds = first + m * per_minute..first + (m + 1) * per_minute;
        write_rounds(&s, &ids, rounds, &mut rng, &mut profile);
        let ingest_s = t.elapsed().as_secs_f64();
        let (disk, marks, kv) = s.dirty_footprint();
        println!(
            "minute {m}: dirty marks {marks} ({:.0} B a mark as key and value; {:.1} MiB in segments)",
            kv as f64 / marks.max(1) as f64,
            disk as f64 / (1 << 20) as f64
        );
        let now = fixtures::AT_MS + (first + (m + 1) * per_minute) * INTERVAL_MS;
        let t = Instant::now();
        let (st, _) =
            muster_collector::store::retention_round(&s, now, &retention, 30 * day).unwrap();
        let round_s = t.elapsed().as_secs_f64();
        println!(
            "minute {m}: ingest {ingest_s:.2} s, round {round_s:.2} s ({:.0} us a unit; {} minutes, {} hours rolled)",
            round_s * 1e6 / units as f64,
            st.minutes_rolled,
            st.hours_rolled
        );
        took.push(round_s);
    }
    took.sort_by(f64::total_cmp);
    println!(
        "RESULT round-cost {units} units: median round {:.2} s, {:.0} us a unit",
        took[took.len() / 2],
        took[took.len() / 2] * 1e6 / units as f64
    );
}

const HOUR_MS_DURATION: Duration = Duration::from_secs(3600);

fn main() {
    if std::env::args().any(|a| a == "--round-cost") {
        round_cost(
            arg("--units").unwrap_or(20_000),
            arg("--minutes").unwrap_or(5),
        );
        return;
    }
    if std::env::args().any(|a| a == "--rollups") {
        rollups(arg("--units").unwrap_or(1_000), arg("--hours").unwrap_or(1));
        return;
    }
    let units: usize = arg("--units").unwrap_or(2_000);
    let rounds: u64 = arg("--rounds").unwrap_or(60);
    if let Some(engine) = arg::<String>("--engine") {
        run(&engine, units, rounds);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    println!(
        "store bench: {units} units x {rounds} rounds x 3 records, commits of 2,000 records, each durable"
    );
    let mut rows = Vec::new();
    for engine in ENGINES {
        let out = Command::new(&exe)
            .args([
                "--engine",
                engine,
                "--units",
                &units.to_string(),
                "--rounds",
                &rounds.to_string(),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
            println!(
                "{engine}: failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            continue;
        };
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(2)
            .map(|x| x.parse().unwrap())
            .collect();
        rows.push((engine, f));
    }
    println!(
        "{:<6} {:>9} {:>10} {:>12} {:>14} {:>14} {:>11} {:>9} {:>8} {:>14}",
        "engine",
        "records",
        "B/record",
        "x sled",
        "B/kept after",
        "settled (x sl)",
        "records/s",
        "RSS MiB",
        "prune s",
        "steady B/kept"
    );
    let base = rows
        .iter()
        .find(|(e, _)| *e == "sled")
        .map(|(_, f)| f.clone());
    for (engine, f) in &rows {
        let (records, full, pruned, after, settled, rate, rss, prune_s, steady) =
            (f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]);
        let kept = (records - pruned).max(1.0);
        let per = full / records;
        let ratio = |i: usize| base.as_ref().map(|b| f[i] / b[i]).unwrap_or(f64::NAN);
        println!(
            "{engine:<6} {records:>9.0} {per:>10.1} {:>12.3} {:>14.1} {:>7.1} ({:.3}) {rate:>11.0} {:>9.1} {prune_s:>8.2} {steady:>7.1} ({:.3})",
            ratio(1),
            after / kept,
            settled / kept,
            ratio(4),
            rss / 1024.0,
            ratio(8),
        );
    }
}
