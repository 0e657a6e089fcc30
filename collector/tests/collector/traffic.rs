//! The collector watches its own traffic (`[rules.traffic]`): many units of
//! an agency falling silent at once is one `traffic_drop` incident, in the
//! feed before those units go `lost.stale` one by one; units that said
//! goodbye (`off`) are not silent.
//!
//! Real Mosquitto, the collector in-process on a fed clock, 20 units
//! publishing a host sample every second of that clock. Times printed are
//! the collector's (fed) clock.

use std::time::Duration;

use muster_collector::clock::Clock;
use muster_proto::{BootId, Payload, Presence, PresenceReason, UnitId, fixtures};
use muster_testkit::eventually;

use crate::harness::*;

/// Short buckets and spans, so that the test runs in seconds of fed clock:
/// a unit is silent after 3 s (its interval is 1 s), stale after 15 s
/// (`[rules.offline]` as shipped).
const RULES: &str =
    "[rules.traffic]\nbucket = \"1s\"\nbaseline = \"30s\"\nsilent = \"3s\"\nwithin = \"10s\"\n";
const N: usize = 20;
/// How many fall silent (and, later, say goodbye).
const QUIET: usize = 12;
const BOOT: BootId = BootId(77);

struct Fleet<'a> {
    w: &'a World,
    a: Agent,
    units: Vec<UnitId>,
    seq: Vec<u64>,
    talking: Vec<bool>,
    /// Records published so far (`muster_ingest_records_total` once in).
    sent: u64,
}

impl Fleet<'_> {
    /// One second of fed clock: every talking unit sends a sample; the
    /// step ends once the collector has them all and has ticked at the
    /// new time (ticks every 50 ms in tests).
    async fn second(&mut self) {
        let now = self.w.clock.now_ms() + 1_000;
        self.w.clock.set(now);
        let mut h = fixtures::host_sample();
        h.interval_ms = 1_000;
        for i in 0..N {
            if self.talking[i] {
                self.send(i, Payload::Host(h.clone())).await;
            }
        }
        self.settle().await;
    }

    async fn send(&mut self, i: usize, payload: Payload) {
        self.seq[i] += 1;
        let now = self.w.clock.now_ms();
        self.a
            .record(&self.units[i], rec(BOOT, self.seq[i], now, payload))
            .await;
        self.sent += 1;
    }

    async fn settle(&self) {
        let sent = self.sent as f64;
        self.w
            .c()
            .wait_metric("muster_ingest_records_total ", |v| v >= sent)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    async fn open_drops(&self) -> Vec<serde_json::Value> {
        let l = self.w.c().json("/api/v1/incidents?state=open", FIRE).await;
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "traffic_drop")
            .cloned()
            .collect()
    }

    /// When `u` went lost (collector ms), from its transitions.
    async fn lost_at(&self, u: &UnitId) -> Option<u64> {
        let ev = self
            .w
            .c()
            .json(
                &format!("/api/v1/events?unit={}/{}", u.agency, u.unit),
                ADMIN,
            )
            .await;
        ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "transition" && e["to"] == "lost")
            .filter_map(|e| e["at_ms"].as_u64())
            .min()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_units_falling_silent_raise_a_traffic_drop_before_they_go_stale() {
    let w = World::start(RULES).await;
    let c = w.c();
    let mut f = Fleet {
        w: &w,
        a: w.agent("fleet").await,
        units: (0..N)
            .map(|i| unit("metro-fire", &format!("T{i:02}")))
            .collect(),
        seq: vec![0; N],
        talking: vec![true; N],
        sent: 0,
    };
    // 32 s of steady traffic: 20 messages a second, a baseline learned.
    for _ in 0..32 {
        f.second().await;
    }
    assert!(f.open_drops().await.is_empty());
    assert_eq!(
        c.metric("muster_traffic_baseline_per_second{agency=\"metro-fire\"}")
            .await,
        20.0
    );
    // 12 of the 20 stop at once (no goodbye: a carrier outage).
    let stop = w.clock.now_ms();
    f.talking[..QUIET].fill(false);
    let mut seen_open: Option<u64> = None;
    let mut stale_when_seen = usize::MAX;
    for _ in 0..20 {
        f.second().await;
        if seen_open.is_none() && !f.open_drops().await.is_empty() {
            seen_open = Some(w.clock.now_ms());
            // How many of the silent units were already flagged stale.
            let mut n = 0;
            for u in &f.units[..QUIET] {
                if c.unit(u).await.unwrap()["status"] == "lost" {
                    n += 1;
                }
            }
            stale_when_seen = n;
        }
    }
    let seen_open = seen_open.expect("a traffic_drop incident in the feed");
    assert_eq!(stale_when_seen, 0, "no silent unit was stale yet");
    let inc = f.open_drops().await.remove(0);
    let since = inc["since_ms"].as_u64().unwrap();
    let mut first_stale = u64::MAX;
    for u in &f.units[..QUIET] {
        let at = f.lost_at(u).await.expect("each silent unit went stale too");
        first_stale = first_stale.min(at);
    }
    println!(
        "12 of 20 stopped at +0 s (fed clock): traffic_drop opened at +{:.1} s, seen in the \
         feed at +{:.1} s; the first of them lost.stale at +{:.1} s",
        (since - stop) as f64 / 1e3,
        (seen_open - stop) as f64 / 1e3,
        (first_stale - stop) as f64 / 1e3,
    );
    assert!(since < first_stale, "incident {since}, stale {first_stale}");
    assert_eq!(inc["agency"], "metro-fire");
    assert_eq!(inc["probe"], "traffic");
    assert_eq!(inc["target"], "messages");
    assert_eq!(inc["of_units"], 20);
    let want: Vec<String> = f.units[..QUIET].iter().map(|u| u.unit.clone()).collect();
    assert_eq!(inc["affected"], serde_json::json!(want));
    let summary = inc["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("12 of 20 units fell silent at ")
            && summary.ends_with("(messages 8.0/s, usual 20.0/s)"),
        "{summary}"
    );
    // The silent units point at it.
    let id = inc["id"].as_str().unwrap();
    let v = c.unit(&f.units[0]).await.unwrap();
    assert!(
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule"] == "agency-traffic-drop"
                && r["incident"] == id
                && r["runbook"] == "/runbooks/agency-traffic-drop"),
        "{v:#}"
    );
    assert_eq!(
        c.metric("muster_traffic_incidents_total{agency=\"metro-fire\"}")
            .await,
        1.0
    );
    assert_eq!(
        c.metric("muster_traffic_silent_units{agency=\"metro-fire\"}")
            .await,
        12.0
    );

    // They come back: it ends.
    f.talking.fill(true);
    f.second().await;
    eventually("the incident ended", Duration::from_secs(10), || async {
        f.open_drops().await.is_empty()
    })
    .await;
    for _ in 0..10 {
        f.second().await;
    }

    // A shift change: 12 units say goodbye (the announcement record and
    // the retained state, as an agent does), then send nothing.
    for i in 0..QUIET {
        let bye = Presence {
            online: false,
            boot: BOOT,
            connection: 1,
            at_ms: w.clock.now_ms(),
            reason: PresenceReason::Shutdown,
        };
        f.send(i, Payload::Presence(bye)).await;
        f.a.presence(&f.units[i], bye).await;
    }
    f.settle().await;
    f.talking[..QUIET].fill(false);
    for _ in 0..20 {
        f.second().await;
        assert!(
            f.open_drops().await.is_empty(),
            "a goodbye is not a silence"
        );
    }
    for u in &f.units[..QUIET] {
        assert_eq!(c.unit(u).await.unwrap()["status"], "off");
    }
    // The rate did fall as far as before: only the goodbyes kept it quiet.
    assert_eq!(
        c.metric("muster_traffic_rate_per_second{agency=\"metro-fire\"}")
            .await,
        8.0
    );
    assert_eq!(
        c.metric("muster_traffic_active_units{agency=\"metro-fire\"}")
            .await,
        8.0
    );
    let all = c.json("/api/v1/incidents", ADMIN).await;
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        1,
        "one incident in all: {all:#}"
    );
}
