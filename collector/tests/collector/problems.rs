//! `/api/v1/problems`: degraded unit-minutes per rule and probe target,
//! end to end from real transitions, with the feed's auth, scoping,
//! pagination and error shape.

use muster_proto::{BootId, Payload, UnitId};

use crate::harness::*;

const RULES: &str = r#"
[[rules.threshold]]
name = "cad-api-slow"
field = 'probe["cad-api"].total_ms'
op = ">"
threshold = 2000
severity = "degraded"
runbook = "https://runbooks.example.org/muster/cad-api-slow"
"#;

const MIN: u64 = 60_000;

fn cad(total_ms: u32) -> Payload {
    let mut p = muster_proto::fixtures::http_probe();
    p.phases.total_us = total_ms * 1000;
    Payload::Probe(p)
}

/// Sends one probe result at `at` with the clock there, and waits until the
/// unit's status is `want`.
async fn step(w: &World, a: &Agent, u: &UnitId, seq: u64, at: u64, ms: u32, want: &str) {
    w.clock.set(at);
    a.record(u, rec(BootId(1), seq, at, cad(ms))).await;
    w.c()
        .wait_unit(u, want, |v| {
            v["seq"]["received"] == seq && v["status"] == want
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_rank_rules_by_degraded_unit_minutes() {
    let w = World::start(RULES).await;
    let c = w.c();
    let a = w.agent("agent").await;
    let e1 = unit("metro-fire", "E1");
    let e2 = unit("metro-fire", "E2");
    let p1 = unit("county-police", "P1");
    // Results every 10 s (well inside the staleness limit).
    // E1 slow from minute 1 for 2 minutes; P1 slow from minute 1 to 1.5;
    // E2 slow from minute 2, still slow at the end (minute 3).
    let mut seq = [0u64; 3];
    let units = [&e1, &e2, &p1];
    let slow = |i: usize, t: u64| match i {
        0 => (MIN..3 * MIN).contains(&t),
        1 => t >= 2 * MIN,
        _ => (MIN..MIN + 30_000).contains(&t),
    };
    let mut t = 0;
    while t <= 3 * MIN {
        for (i, u) in units.iter().enumerate() {
            seq[i] += 1;
            let s = slow(i, t);
            step(
                &w,
                &a,
                u,
                seq[i],
                T0 + t,
                if s { 2_500 } else { 150 },
                if s { "degraded" } else { "ok" },
            )
            .await;
        }
        t += 10_000;
    }
    // Now is T0 + 3 min (the last results). E1: 2 min; E2: 1 min (active);
    // P1: 0.5 min. All under cad-api-slow / probe cad-api.
    let v = c.json("/api/v1/problems?hours=24", ADMIN).await;
    let items = v["items"].as_array().unwrap();
    // The shipped probe-slow rule (> 2 s for 1 minute) also caught E1; it
    // ranks below.
    let rules: Vec<&str> = items.iter().map(|p| p["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["cad-api-slow", "probe-slow"], "{v:#}");
    let p = &items[0];
    assert_eq!(p["cause"], "probe");
    assert_eq!(p["rule"], "cad-api-slow");
    assert_eq!(p["probe"], "cad-api");
    assert!(p["target"].is_null(), "no incident named a target: {p}");
    assert_eq!(p["units"], 3);
    assert_eq!(
        p["agencies"],
        serde_json::json!(["county-police", "metro-fire"])
    );
    let minutes = p["unit_minutes"].as_f64().unwrap();
    assert!((minutes - 3.5).abs() < 0.01, "{minutes}");
    assert!(v["next_cursor"].is_null());

    // An agency's token sees its agency's minutes only.
    let fire = c.json("/api/v1/problems", FIRE).await;
    let f = &fire["items"][0];
    assert_eq!(f["rule"], "cad-api-slow");
    assert_eq!(f["agencies"], serde_json::json!(["metro-fire"]));
    assert_eq!(f["units"], 2);
    assert!(
        (f["unit_minutes"].as_f64().unwrap() - 3.0).abs() < 0.01,
        "{f}"
    );
    let police = c.json("/api/v1/problems?agency=county-police", ADMIN).await;
    assert!((police["items"][0]["unit_minutes"].as_f64().unwrap() - 0.5).abs() < 0.01);

    // Errors in the one shape.
    for (path, token, status, code) in [
        ("/api/v1/problems", None, 401, "unauthorized"),
        (
            "/api/v1/problems?agency=county-police",
            Some(FIRE),
            403,
            "forbidden",
        ),
        ("/api/v1/problems?hours=0", Some(ADMIN), 400, "bad_request"),
        ("/api/v1/problems?hours=x", Some(ADMIN), 400, "bad_request"),
        ("/api/v1/problems?since=1", Some(ADMIN), 400, "bad_request"),
        (
            "/api/v1/problems?cursor=zz",
            Some(ADMIN),
            400,
            "bad_request",
        ),
    ] {
        let r = muster_testkit::http::get(c.addr, path, token).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], code, "{path}");
        assert!(r.json()["error"]["message"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_paginate_and_name_incident_targets() {
    // Three police units fail the same probe: an incident, which names the
    // target; and a fire unit's slow CAD API.
    let w = World::start(RULES).await;
    let c = w.c();
    let a = w.agent("agent").await;
    let police: Vec<UnitId> = ["P1", "P2", "P3"]
        .iter()
        .map(|u| unit("county-police", u))
        .collect();
    for (i, u) in police.iter().enumerate() {
        w.clock.set(T0 + i as u64);
        a.record(
            u,
            rec(BootId(1), 1, T0, probe("rms", "https://rms/ping", true)),
        )
        .await;
    }
    for u in &police {
        c.wait_unit(u, "in", |v| v["seq"]["received"] == 1).await;
    }
    let e1 = unit("metro-fire", "E1");
    w.clock.set(T0 + 10_000);
    a.record(&e1, rec(BootId(1), 1, T0 + 10_000, cad(2_500)))
        .await;
    c.wait_unit(&e1, "degraded", |v| v["status"] == "degraded")
        .await;
    for u in &police {
        a.record(
            u,
            rec(
                BootId(1),
                2,
                T0 + 10_000,
                probe("rms", "https://rms/ping", false),
            ),
        )
        .await;
    }
    for u in &police {
        c.wait_unit(u, "in the incident", |v| {
            v["incidents"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
    }
    w.clock.set(T0 + 70_000);
    let all = c.json("/api/v1/problems", ADMIN).await;
    let items = all["items"].as_array().unwrap();
    let incident = items
        .iter()
        .find(|p| p["rule"] == "incident")
        .unwrap_or_else(|| panic!("{all:#}"));
    assert_eq!(incident["cause"], "probe");
    assert_eq!(incident["probe"], "rms");
    assert_eq!(incident["target"], "https://rms/ping");
    assert_eq!(incident["units"], 3);
    let slow = items
        .iter()
        .find(|p| p["rule"] == "cad-api-slow")
        .unwrap_or_else(|| panic!("{all:#}"));
    assert_eq!(slow["agencies"], serde_json::json!(["metro-fire"]));
    assert!(
        (slow["unit_minutes"].as_f64().unwrap() - 1.0).abs() < 0.01,
        "{slow}"
    );
    assert_eq!(items.len(), 2, "{all:#}");
    // Ranked: minutes never increase down the list.
    let mins: Vec<f64> = items
        .iter()
        .map(|p| p["unit_minutes"].as_f64().unwrap())
        .collect();
    assert!(mins.windows(2).all(|w| w[0] >= w[1]), "{mins:?}");

    // One at a time, the pages give the same list.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/problems?limit=1&cursor={c}"),
            None => "/api/v1/problems?limit=1".into(),
        };
        let v = c.json(&path, ADMIN).await;
        assert!(v["items"].as_array().unwrap().len() <= 1);
        paged.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
        assert!(paged.len() <= items.len(), "pagination does not end");
    }
    assert_eq!(&paged, items);
}
