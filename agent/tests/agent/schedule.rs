//! The probe scheduler, on paused tokio time: per-probe interval, never
//! overlapping itself, bounded by its timeout, never held up by another probe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use muster_agent::clock::{Clock, TokioClock};
use muster_agent::observation::Observation;
use muster_agent::probe::schedule::{ScheduleStats, run_probe, spawn_all};
use muster_agent::probe::{Runnable, reported};
use muster_agent::sample::DropCounter;
use muster_proto::{ErrorClass, Outcome, Payload, ProbeResult};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A probe that takes `takes` to run and records how many runs overlap.
struct Slow {
    name: &'static str,
    interval: Duration,
    timeout: Duration,
    takes: Duration,
    active: AtomicUsize,
    max_active: AtomicUsize,
    started: AtomicUsize,
}

impl Slow {
    fn new(name: &'static str, interval: u64, timeout: u64, takes: u64) -> Arc<Self> {
        Arc::new(Slow {
            name,
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(timeout),
            takes: Duration::from_secs(takes),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
        })
    }
}

struct ActiveGuard<'a>(&'a AtomicUsize);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runnable for Slow {
    fn name(&self) -> &str {
        self.name
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn run(&self) -> Pin<Box<dyn Future<Output = Vec<ProbeResult>> + Send + '_>> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_active.fetch_max(now, Ordering::SeqCst);
            let _g = ActiveGuard(&self.active);
            tokio::time::sleep(self.takes).await;
            vec![reported(
                self.name,
                true,
                self.takes.as_micros() as u32,
                None,
            )]
        })
    }
    fn timed_out(&self) -> ProbeResult {
        let mut r = reported(self.name, false, self.timeout.as_micros() as u32, None);
        r.outcome = Outcome::Fail(ErrorClass::Timeout);
        r
    }
}

fn probe_of(o: &Observation) -> &ProbeResult {
    match &o.payload {
        Payload::Probe(p) => p,
        other => panic!("not a probe result: {other:?}"),
    }
}

const EPOCH: u64 = 1_800_000_000_000;

#[tokio::test(start_paused = true)]
async fn runs_at_its_interval_and_times_out_without_overlap() {
    let (tx, mut rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(EPOCH));
    let slow = Slow::new("slow", 10, 3, 60); // takes far longer than its timeout
    let stats = Arc::new(ScheduleStats::default());
    let task = tokio::spawn(run_probe(
        slow.clone(),
        Instant::now(),
        tx,
        clock,
        Arc::new(DropCounter::default()),
        stats.clone(),
        stop_rx,
    ));
    let mut at = Vec::new();
    for _ in 0..5 {
        let o = rx.recv().await.unwrap();
        let p = probe_of(&o);
        assert_eq!(p.outcome, Outcome::Fail(ErrorClass::Timeout));
        assert_eq!(p.phases.total_us, 3_000_000);
        at.push(o.at_ms - EPOCH);
    }
    // Started every 10 s on the dot; each result is stamped with its start.
    assert_eq!(at, vec![0, 10_000, 20_000, 30_000, 40_000]);
    assert_eq!(slow.max_active.load(Ordering::SeqCst), 1);
    assert_eq!(stats.timeouts.load(Ordering::SeqCst), 5);
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the probe task stops promptly")
        .unwrap();
    // The cut-off run was dropped, not left running.
    assert_eq!(slow.active.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_near_its_interval_never_overlaps_the_next() {
    let (tx, mut rx) = mpsc::channel(64);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(EPOCH));
    let p = Slow::new("near", 10, 10, 9);
    tokio::spawn(run_probe(
        p.clone(),
        Instant::now(),
        tx,
        clock,
        Arc::new(DropCounter::default()),
        Arc::new(ScheduleStats::default()),
        stop_rx,
    ));
    for i in 0..6u64 {
        let o = rx.recv().await.unwrap();
        assert_eq!(probe_of(&o).outcome, Outcome::Ok);
        assert_eq!(o.at_ms - EPOCH, i * 10_000);
    }
    assert_eq!(p.max_active.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_does_not_delay_another() {
    let (tx, mut rx) = mpsc::channel(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(EPOCH));
    let slow = Slow::new("slow", 30, 30, 29);
    let fast = Slow::new("fast", 1, 1, 0);
    let mut set = spawn_all(
        vec![slow.clone() as Arc<dyn Runnable>, fast.clone()],
        tx,
        clock,
        Arc::new(DropCounter::default()),
        Arc::new(ScheduleStats::default()),
        stop_rx,
    );
    let mut fast_at = Vec::new();
    while fast_at.len() < 40 {
        let o = rx.recv().await.unwrap();
        let p = probe_of(&o);
        if p.name == "fast" {
            fast_at.push(o.at_ms - EPOCH);
        }
    }
    // The fast probe kept its 1 s cadence (first run offset by the start spread).
    for w in fast_at.windows(2) {
        assert_eq!(w[1] - w[0], 1_000, "{fast_at:?}");
    }
    assert_eq!(slow.max_active.load(Ordering::SeqCst), 1);
    let _ = stop_tx.send(true);
    while set.join_next().await.is_some() {}
}

#[tokio::test(start_paused = true)]
async fn a_full_channel_is_a_counted_drop_not_a_stall() {
    let (tx, mut rx) = mpsc::channel(1);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(EPOCH));
    let drops = Arc::new(DropCounter::default());
    let p = Slow::new("p", 1, 1, 0);
    tokio::spawn(run_probe(
        p.clone(),
        Instant::now(),
        tx,
        clock,
        drops.clone(),
        Arc::new(ScheduleStats::default()),
        stop_rx,
    ));
    // Nobody reads for 10 s: one result fits, the other runs are dropped and counted.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert_eq!(
        p.started.load(Ordering::SeqCst),
        11,
        "the probe kept running"
    );
    assert_eq!(drops.get(), 10);
    assert!(rx.recv().await.is_some());
}
