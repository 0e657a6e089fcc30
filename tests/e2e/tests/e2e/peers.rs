//! Compared with its peers end to end (issue 18, part 3 must-show): real
//! agents probe a real CAD API (`muster_testkit::cad_api`) each on its own
//! path (`/api/ping/<unit>`) through a real Mosquitto and a real
//! collector with short `[rules.peers]` windows.
//!
//! * One unit's path made ~10× slower: that unit is flagged
//!   `slower-than-peers` in the feed, the others are not; it clears when
//!   the path is fast again.
//! * Every unit's path made slower: one agency incident of kind
//!   `latency_shift` in `/api/v1/incidents`, the cohort's median before and
//!   after in its summary; no unit is flagged `slower-than-peers`; it ends
//!   when the server is fast again.

use std::time::{Duration, Instant};

use muster_testkit::cad_api::CadApi;
use muster_testkit::{Mosquitto, TempDir, eventually_blocking};
use serde_json::Value;

use crate::procs::{AGENCY, AgentProc, AgentSpec, CollectorProc, collector_config};

const UNITS: [&str; 5] = ["P1", "P2", "P3", "P4", "P5"];
const FAST_MS: u64 = 20;
const SLOW_MS: u64 = 250;

/// Short windows: a unit's latency is the median of its last 10 s, a flag
/// needs 5 s, the cohort's usual median is learned over 1 minute.
const PEERS: &str = "[rules.peers]\nwindow = \"10s\"\nfor = \"5s\"\nfactor = 3\nmin_delta_ms = 100\nmin_peers = 3\nshift_factor = 3\nshift_min_delta_ms = 100\nshift_for = \"5s\"\nbaseline = \"1m\"\nshift_min_units = 3\n";

fn reasons(v: &Value, rule: &str) -> Vec<Value> {
    v["reasons"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["rule"] == rule).cloned().collect())
        .unwrap_or_default()
}

/// The units flagged `slower-than-peers` now.
fn slower(col: &CollectorProc) -> Vec<String> {
    UNITS
        .iter()
        .filter(|u| {
            col.unit(u)
                .is_some_and(|v| !reasons(&v, "slower-than-peers").is_empty())
        })
        .map(|u| u.to_string())
        .collect()
}

fn shift_incidents(col: &CollectorProc, state: &str) -> Vec<Value> {
    col.get(&format!("/api/v1/incidents?agency={AGENCY}&state={state}"))["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "latency_shift")
        .cloned()
        .collect()
}

/// `… median 21 ms before, 262 ms since 14:02:10Z` → (21, 262).
fn medians(summary: &str) -> (f64, f64) {
    let num = |after: &str, until: &str| -> f64 {
        let s =
            &summary[summary.find(after).unwrap_or_else(|| panic!("{summary}")) + after.len()..];
        s[..s.find(until).unwrap()].trim().parse().unwrap()
    };
    (num("median ", " ms before"), num("before, ", " ms since"))
}

#[test]
fn one_slow_path_flags_its_unit_slower_than_peers_and_all_slow_opens_a_latency_shift() {
    // The binaries first (a `cargo build` on first use): not the test's time.
    crate::procs::bins(false);
    let started = Instant::now();
    let dir = TempDir::new().unwrap();
    let m = Mosquitto::start();
    let cad = CadApi::start(&[("u", "p")]);
    cad.set_delay("/api/ping/", FAST_MS);
    let cfg = dir.path().join("collector.toml");
    let mut c = collector_config(&m.url(), &dir.path().join("store"));
    c.extra(PEERS);
    std::fs::write(&cfg, c.render()).unwrap();
    let col = CollectorProc::spawn(&cfg, false);
    println!(
        "collector ready at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut agents = Vec::new();
    for u in UNITS {
        let mut spec = AgentSpec::new(u, &m.url(), &dir.path().join(u));
        spec.extra.push_str(&format!(
            "[[probe]]\nname = \"cad-ping\"\nkind = \"http\"\ntarget = \"{}\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n",
            cad.url(&format!("/api/ping/{u}"))
        ));
        agents.push(AgentProc::spawn(&spec, false));
    }
    // Settled: every unit has a window's worth of results.
    eventually_blocking("10 probe results a unit", Duration::from_secs(60), || {
        let n: Vec<usize> = UNITS
            .iter()
            .map(|u| {
                if col.unit(u).is_none() {
                    return 0;
                }
                col.samples(u)
                    .iter()
                    .filter(|(_, _, _, kind)| kind == "probe")
                    .count()
            })
            .collect();
        n.iter()
            .all(|n| *n >= 10)
            .then_some(())
            .ok_or(format!("{n:?}"))
    });
    let settled = Instant::now();
    println!("settled at {:.1} s", started.elapsed().as_secs_f64());
    assert!(slower(&col).is_empty(), "nobody is slow yet");

    // 1. One unit's path ~12x slower.
    let t1 = Instant::now();
    cad.set_delay("/api/ping/P3", SLOW_MS);
    let flagged = eventually_blocking(
        "P3 slower-than-peers, and only P3",
        Duration::from_secs(40),
        || {
            let s = slower(&col);
            assert!(
                s.iter().all(|u| u == "P3"),
                "a unit other than P3 flagged: {s:?}"
            );
            let v = col.unit("P3").unwrap();
            let r = reasons(&v, "slower-than-peers");
            r.first().cloned().ok_or(format!("{}", v["reasons"]))
        },
    );
    let flag_s = t1.elapsed().as_secs_f64();
    let msg = flagged["message"].as_str().unwrap();
    println!("P3 flagged {flag_s:.1} s after its path slowed: {msg:?}");
    assert!(msg.starts_with("cad-ping (http://127.0.0.1:"), "{msg}");
    assert!(msg.contains(" ms, 4 peers' median "), "{msg}");
    assert_eq!(flagged["field"], "probe[\"cad-ping\"].total_ms");
    assert_eq!(flagged["runbook"], "/runbooks/slower-than-peers");
    assert!(flagged["observed"].as_f64().unwrap() >= SLOW_MS as f64);
    assert_eq!(slower(&col), vec!["P3".to_owned()]);
    for u in ["P1", "P2", "P4", "P5"] {
        assert_eq!(col.unit(u).unwrap()["status"], "ok", "{u}");
    }
    // Fast again: it clears.
    let t = Instant::now();
    cad.set_delay("/api/ping/P3", 0);
    eventually_blocking("P3's flag clears", Duration::from_secs(30), || {
        let s = slower(&col);
        s.is_empty().then_some(()).ok_or(format!("{s:?}"))
    });
    println!(
        "P3 cleared {:.1} s after its path was fast again",
        t.elapsed().as_secs_f64()
    );

    // 2. Every path slower. The cohort needs a usual median first: 10 of
    // its 2 s slots before the current 10 s window (30 s of data).
    if let Some(wait) = Duration::from_secs(32).checked_sub(settled.elapsed()) {
        std::thread::sleep(wait);
    }
    assert!(shift_incidents(&col, "all").is_empty());
    let t2 = Instant::now();
    cad.set_delay("/api/ping/", SLOW_MS);
    let inc = eventually_blocking(
        "a latency_shift incident, no unit slower-than-peers",
        Duration::from_secs(40),
        || {
            let s = slower(&col);
            assert!(s.is_empty(), "flagged while all are slower: {s:?}");
            let open = shift_incidents(&col, "open");
            open.first().cloned().ok_or("none yet".to_owned())
        },
    );
    let shift_s = t2.elapsed().as_secs_f64();
    let summary = inc["summary"].as_str().unwrap().to_owned();
    println!("latency_shift opened {shift_s:.1} s after every path slowed: {summary:?}");
    assert_eq!(inc["probe"], "cad-ping");
    assert_eq!(inc["target"], cad.url(""));
    assert_eq!(inc["of_units"], 5);
    assert!(
        inc["id"]
            .as_str()
            .unwrap()
            .starts_with("metro-fire:cad-ping:shift:")
    );
    assert!(
        summary.contains("slower for 5 of 5 units: median "),
        "{summary}"
    );
    let (before, after) = medians(&summary);
    assert!(
        before >= FAST_MS as f64 && before < 100.0,
        "before {before}: {summary}"
    );
    assert!(
        after >= SLOW_MS as f64 && after >= 3.0 * before,
        "after {after}: {summary}"
    );
    // Each slowed unit says so, naming the incident; none is slower than its
    // peers. The incident and the units' reasons are separate reads of the
    // feed (one run saw P1 without its reason on the first read), so each
    // unit is given a few seconds to show it.
    for u in UNITS {
        let v = eventually_blocking(
            &format!("{u} shows the latency-shift reason"),
            Duration::from_secs(10),
            || {
                let v = col.unit(u).unwrap();
                (!reasons(&v, "latency-shift").is_empty()).then_some(v)
            },
        );
        let r = reasons(&v, "latency-shift");
        assert_eq!(r.len(), 1, "{u}: {}", v["reasons"]);
        assert_eq!(r[0]["incident"], inc["id"], "{u}");
        assert_eq!(r[0]["runbook"], "/runbooks/latency-shift");
        assert!(reasons(&v, "slower-than-peers").is_empty(), "{u}");
    }
    // Fast again: it ends.
    let t = Instant::now();
    cad.set_delay("/api/ping/", FAST_MS);
    let ended = eventually_blocking("the latency shift ends", Duration::from_secs(30), || {
        assert!(slower(&col).is_empty());
        shift_incidents(&col, "ended")
            .into_iter()
            .find(|i| i["id"] == inc["id"])
            .ok_or("still open".to_owned())
    });
    println!(
        "ended {:.1} s after the server was fast again: {:?}",
        t.elapsed().as_secs_f64(),
        ended["summary"]
    );
    assert_eq!(shift_incidents(&col, "all").len(), 1, "one incident, once");
    println!("the whole test: {:.1} s", started.elapsed().as_secs_f64());
    drop(agents);
}
