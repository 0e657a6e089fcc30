//! `--storm UNITSxRECORDS --rounds R`: a replay storm. UNITS units, each
//! with RECORDS records of backlog, reconnect at once and replay it the way
//! the agent does.
//!
//! Contract:
//! * Replay as the agent's defaults ([`Replay::agent`], read from
//!   `muster_agent`'s `UplinkSettings::default()` when the collector is
//!   built with `demo-agent`, its default): batches oldest first of at most
//!   `batch_max_bytes` (counted as the agent's disk buffer stores a record:
//!   its header plus the encoded record) and `MAX_BATCH_RECORDS`, spliced
//!   by `message_from_encoded` as the agent does; at most `max_inflight`
//!   batches per unit awaiting the collector's ack; a batch not acked
//!   within `ack_timeout` of its last send is resent (counted in `resent`).
//! * A batch is done when one or more acks cover all its seqs
//!   ([`crate::acks::Conn::covers`]). Its ack wait runs from its first
//!   publish to that moment, seen by the driver's 10 ms tick; a wait longer
//!   than `ack_timeout` is one the agent would have resent for.
//! * The backlog's records are stamped as if taken every 5 s up to the
//!   round's start, so a resend re-encodes the same bytes.
//! * Each round starts new boots (new `BootId`) with fresh backlogs. Peak
//!   RSS is the highest VmRSS sampled every 100 ms during the round; then
//!   the bench idles 20 s and reads RSS again.
//! * A round gives up after [`ROUND_TIMEOUT`] and prints what was acked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_proto::{
    BootId, MAX_BATCH_RECORDS, MAX_MESSAGE_BYTES, TopicKind, UnitId, encode_record,
    message_from_encoded, topic,
};
use muster_testkit::{Mosquitto, TempDir};
use rumqttc::{AsyncClient, QoS};

use crate::acks::{Conn, ms};
use crate::harness::{self, Collector, totals};
use crate::procfs::percentile;
use crate::{Args, layout, now_ms, sample, unit_id};

/// A round that has not drained by then is reported as it stands.
const ROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// Idle time after a round before RSS is read again.
const IDLE: Duration = Duration::from_secs(20);
/// The backlog's sampling interval (the agent's default host interval).
const BACKLOG_INTERVAL_MS: u64 = 5_000;

/// The agent's replay settings.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    pub max_inflight: usize,
    pub batch_max_bytes: usize,
    pub ack_timeout: Duration,
    /// Bytes the agent's disk buffer adds to each encoded record.
    pub header: usize,
}

impl Replay {
    #[cfg(feature = "demo-agent")]
    pub fn agent() -> Replay {
        let d = muster_agent::uplink::settings::UplinkSettings::default();
        Replay {
            max_inflight: usize::from(d.max_inflight),
            // As the uplink: never past the largest message.
            batch_max_bytes: (d.batch_max_bytes as usize).min(MAX_MESSAGE_BYTES - 4096),
            ack_timeout: d.ack_timeout,
            header: muster_agent::buffer::record::HEADER_LEN,
        }
    }

    /// Without the agent linked: its documented defaults.
    #[cfg(not(feature = "demo-agent"))]
    pub fn agent() -> Replay {
        Replay {
            max_inflight: 16,
            batch_max_bytes: (64 * 1024).min(MAX_MESSAGE_BYTES - 4096),
            ack_timeout: Duration::from_secs(30),
            header: 30,
        }
    }
}

/// Records `first..=upto` of a unit's backlog of `records` that fit one
/// batch: the last seq and the payload.
fn batch(
    unit: &UnitId,
    boot: BootId,
    (first, upto): (u64, u64),
    records: u64,
    base_ms: u64,
    r: &Replay,
) -> (u64, Vec<u8>) {
    let mut enc: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    let mut seq = first;
    while seq <= upto.min(records) && enc.len() < MAX_BATCH_RECORDS {
        let at = base_ms - (records - seq) * BACKLOG_INTERVAL_MS;
        let e = encode_record(&sample(boot, seq, 20, at)).unwrap();
        if !enc.is_empty() && bytes + r.header + e.len() > r.batch_max_bytes {
            break;
        }
        bytes += r.header + e.len();
        enc.push(e);
        seq += 1;
    }
    let slices: Vec<&[u8]> = enc.iter().map(Vec::as_slice).collect();
    (seq - 1, message_from_encoded(unit, &slices, false).unwrap())
}

/// A batch awaiting its ack.
struct InFlight {
    first: u64,
    last: u64,
    first_sent: Instant,
    last_sent: Instant,
}

/// One unit's replay in this round.
struct UnitReplay {
    id: UnitId,
    topic: String,
    boot: BootId,
    next: u64,
    inflight: Vec<InFlight>,
}

#[derive(Default)]
struct RoundStats {
    batches: u64,
    resent_records: u64,
    resent_batches: u64,
    waits_ms: Vec<f64>,
    over_timeout: u64,
}

/// Drives one connection's units through a round; returns when all their
/// batches are acked or at `deadline`.
#[allow(clippy::too_many_arguments)]
async fn drive(
    client: AsyncClient,
    conn: Arc<Mutex<Conn>>,
    mut units: Vec<UnitReplay>,
    records: u64,
    base_ms: u64,
    r: Replay,
    deadline: Instant,
) -> RoundStats {
    let mut st = RoundStats::default();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let now = Instant::now();
        // Acked batches leave the window.
        {
            let c = conn.lock().unwrap();
            for (j, u) in units.iter_mut().enumerate() {
                u.inflight.retain(|b| {
                    if !c.covers(j, b.first, b.last) {
                        return true;
                    }
                    let w = now.saturating_duration_since(b.first_sent);
                    st.waits_ms.push(ms(w));
                    if w > r.ack_timeout {
                        st.over_timeout += 1;
                    }
                    false
                });
            }
        }
        let mut busy = false;
        for (j, u) in units.iter_mut().enumerate() {
            // Resend what is not acked within the ack timeout.
            for b in u.inflight.iter_mut() {
                if now.saturating_duration_since(b.last_sent) >= r.ack_timeout {
                    let (last, p) = batch(&u.id, u.boot, (b.first, b.last), records, base_ms, &r);
                    debug_assert_eq!(last, b.last);
                    b.last_sent = now;
                    st.resent_records += b.last - b.first + 1;
                    st.resent_batches += 1;
                    let _ = client.publish(&u.topic, QoS::AtLeastOnce, false, p).await;
                }
            }
            // Fill the window, oldest first.
            while u.inflight.len() < r.max_inflight && u.next <= records {
                let (last, p) = batch(&u.id, u.boot, (u.next, records), records, base_ms, &r);
                conn.lock().unwrap().replayed(j, last);
                let t = Instant::now();
                u.inflight.push(InFlight {
                    first: u.next,
                    last,
                    first_sent: t,
                    last_sent: t,
                });
                u.next = last + 1;
                st.batches += 1;
                let _ = client.publish(&u.topic, QoS::AtLeastOnce, false, p).await;
            }
            busy |= !u.inflight.is_empty() || u.next <= records;
        }
        if !busy || Instant::now() > deadline {
            return st;
        }
    }
}

pub async fn run(n: usize, records: u64, rounds: u32, a: &Args) {
    let r = Replay::agent();
    println!(
        "== storm {n} units x {records} records, {rounds} rounds: batches <= {} B, <= {} in flight per unit, ack timeout {:.1} s, {} connections ==",
        r.batch_max_bytes,
        r.max_inflight,
        r.ack_timeout.as_secs_f64(),
        a.connections.min(n)
    );
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let collector = Collector::start(&broker, &dir, true).await;
    let layout = layout(n, a.connections);
    let boot = |round: u32, i: usize| BootId((u64::from(round) << 32) | 0x5700_0000 | i as u64);
    let (conns, clients) =
        harness::connections(&layout, "bench-storm", |_| broker.port(), |i| boot(1, i)).await;
    // Peak RSS: sampled every 100 ms, reset per round.
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), collector.pid());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let rss = muster_testkit::rss_kib(pid).map_or(0, |x| x.0);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    println!("storm: collector RSS before {} KiB", collector.rss_kib());
    for round in 1..=rounds {
        if round > 1 {
            for (c, units) in layout.iter().enumerate() {
                let mut conn = conns[c].lock().unwrap();
                for (j, &i) in units.iter().enumerate() {
                    conn.new_boot(j, boot(round, i));
                }
            }
        }
        let (p0, k0, _) = totals(&conns);
        peak.store(collector.rss_kib(), Ordering::Relaxed);
        let base_ms = now_ms();
        let start = Instant::now();
        let deadline = start + ROUND_TIMEOUT;
        let mut tasks = Vec::new();
        for (c, units) in layout.iter().enumerate() {
            let replays = units
                .iter()
                .map(|&i| {
                    let id = unit_id(c, i);
                    UnitReplay {
                        topic: topic::unit_topic(&id, TopicKind::Telemetry),
                        id,
                        boot: boot(round, i),
                        next: 1,
                        inflight: Vec::new(),
                    }
                })
                .collect();
            tasks.push(tokio::spawn(drive(
                clients[c].clone(),
                conns[c].clone(),
                replays,
                records,
                base_ms,
                r,
                deadline,
            )));
        }
        let mut st = RoundStats::default();
        for t in tasks {
            let s = t.await.unwrap();
            st.batches += s.batches;
            st.resent_records += s.resent_records;
            st.resent_batches += s.resent_batches;
            st.waits_ms.extend(s.waits_ms);
            st.over_timeout += s.over_timeout;
        }
        let drained = start.elapsed();
        let peak_kib = peak.load(Ordering::Relaxed);
        let (p1, k1, foreign) = totals(&conns);
        let (published, acked) = (p1 - p0, k1 - k0);
        let done = acked == published && published == n as u64 * records;
        st.waits_ms.sort_by(f64::total_cmp);
        tokio::time::sleep(IDLE).await;
        println!(
            "storm round {round}: published {published} records in {} batches; acked {acked}: ratio {:.4}; resent {} records ({} batches); {} in {:.1} s; ack wait n={} p50={:.0} ms p99={:.0} ms max={:.0} ms; {} waits > ack timeout {:.1} s; collector RSS peak {} KiB, after {} s idle {} KiB; foreign acks {foreign}",
            st.batches,
            acked as f64 / published.max(1) as f64,
            st.resent_records,
            st.resent_batches,
            if done { "drained" } else { "NOT drained" },
            drained.as_secs_f64(),
            st.waits_ms.len(),
            percentile(&st.waits_ms, 0.5),
            percentile(&st.waits_ms, 0.99),
            st.waits_ms.last().copied().unwrap_or(f64::NAN),
            st.over_timeout,
            r.ack_timeout.as_secs_f64(),
            peak_kib,
            IDLE.as_secs(),
            collector.rss_kib(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    println!(
        "storm end: collector store {} KiB on disk",
        collector.store_bytes() / 1024
    );
}

/// Table checks of this module (run by the bench binary without `--bench`).
pub fn self_test() -> usize {
    use muster_proto::{Body, decode};
    let r = Replay {
        max_inflight: 16,
        batch_max_bytes: 4096,
        ack_timeout: Duration::from_secs(30),
        header: 30,
    };
    let u = UnitId::new("a", "U1").unwrap();
    let base = 1_800_000_000_000;
    let (last, p) = batch(&u, BootId(3), (1, 600), 600, base, &r);
    let Body::Batch(recs) = decode(&p).unwrap().message.body else {
        panic!("not a batch")
    };
    let bytes: usize = recs
        .iter()
        .map(|x| r.header + encode_record(x).unwrap().len())
        .sum();
    assert!(bytes <= r.batch_max_bytes && last > 1 && last < 600);
    assert_eq!(recs.len() as u64, last);
    assert_eq!((recs[0].seq, recs[0].boot), (1, BootId(3)));
    // The next record would not have fitted; a resend is the same bytes.
    let next = r.header
        + encode_record(&sample(BootId(3), last + 1, 20, base))
            .unwrap()
            .len();
    assert!(bytes + next > r.batch_max_bytes);
    let again = batch(&u, BootId(3), (1, last), 600, base, &r);
    assert!(again == (last, p), "a resend must be the same bytes");
    // The tail of the backlog is a short batch ending at `records`, at base.
    let (end, p) = batch(&u, BootId(3), (599, 600), 600, base, &r);
    let Body::Batch(tail) = decode(&p).unwrap().message.body else {
        panic!("not a batch")
    };
    assert_eq!((end, tail.len(), tail[1].at_ms), (600, 2, base));
    6
}
