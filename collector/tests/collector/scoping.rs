//! Token scoping: an agency never sees another agency's unit, anywhere.

use std::time::Duration;

use muster_proto::BootId;

use crate::harness::*;
use muster_testkit::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agencies_see_only_their_own_units_everywhere() {
    let w = World::start("").await;
    let c = w.c();
    let mut fire_stream = c.stream(FIRE).await;
    let mut police_stream = c.stream(POLICE).await;
    let mut admin_stream = c.stream(ADMIN).await;
    let f = unit("metro-fire", "E1");
    let p = unit("county-police", "P1");
    let boot = BootId(1);
    let af = Agent::connect(&w.broker, "f", Some((&f, online(boot, 1, T0, false)))).await;
    let ap = Agent::connect(&w.broker, "p", Some((&p, online(boot, 1, T0, false)))).await;
    af.presence(&f, online(boot, 1, T0, true)).await;
    ap.presence(&p, online(boot, 1, T0, true)).await;
    af.record(&f, rec(boot, 1, T0, host(10.0))).await;
    ap.record(&p, rec(boot, 1, T0, host(10.0))).await;
    c.wait_unit(&f, "seen", |v| v["seq"]["received"] == 1).await;
    c.wait_unit(&p, "seen", |v| v["seq"]["received"] == 1).await;
    // Both go offline: a transition in each agency.
    af.cut();
    ap.cut();
    c.wait_unit(&f, "offline", |v| v["status"] == "lost").await;
    c.wait_unit(&p, "offline", |v| v["status"] == "lost").await;

    // Lists.
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                format!(
                    "{}/{}",
                    x["agency"].as_str().unwrap(),
                    x["unit"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        names(&c.json("/api/v1/units", FIRE).await),
        ["metro-fire/E1"]
    );
    assert_eq!(
        names(&c.json("/api/v1/units", POLICE).await),
        ["county-police/P1"]
    );
    assert_eq!(names(&c.json("/api/v1/units", ADMIN).await).len(), 2);
    let ev = c.json("/api/v1/events", FIRE).await;
    assert!(!ev["items"].as_array().unwrap().is_empty());
    for e in ev["items"].as_array().unwrap() {
        assert_eq!(e["agency"], "metro-fire", "{e:#}");
    }
    let ev = c.json("/api/v1/events", ADMIN).await;
    let agencies: std::collections::BTreeSet<&str> = ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["agency"].as_str().unwrap())
        .collect();
    assert_eq!(agencies.len(), 2);

    // 403 for the other agency's unit, whatever the endpoint.
    for path in [
        "/api/v1/units/county-police/P1",
        "/api/v1/units/county-police/P1/samples",
        "/api/v1/units/county-police/NOPE",
        "/api/v1/units?agency=county-police",
        "/api/v1/events?unit=county-police/P1",
        "/api/v1/events?agency=county-police",
        "/api/v1/incidents?agency=county-police",
        "/api/v1/stream?agency=county-police",
    ] {
        let r = c.get(path, FIRE).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        let j = r.json();
        assert_eq!(j["error"]["code"], "forbidden", "{path}");
        assert!(
            !r.text().contains("P1\""),
            "{path} leaked the unit: {}",
            r.text()
        );
    }
    // 401 without a token or with a wrong one, in the one error shape.
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        for path in [
            "/api/v1/units",
            "/api/v1/units/metro-fire/E1",
            "/api/v1/stream",
            "/metrics",
        ] {
            let r = http::get(c.addr, path, token).await;
            assert_eq!(r.status, 401, "{path} {token:?}");
            assert_eq!(r.json()["error"]["code"], "unauthorized");
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer"))
            );
        }
    }
    // /metrics is the admin's.
    assert_eq!(c.get("/metrics", FIRE).await.status, 403);
    // Unknown endpoints and bad parameters: the same error shape.
    let r = c.get("/api/v1/nope", FIRE).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = c.get("/api/v1/units?limit=0", FIRE).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("limit:")
    );
    let r = c.get("/api/v1/units?bogus=1", FIRE).await;
    assert_eq!(r.status, 400);

    // The stream: each agency saw only its own transition; the admin both.
    let agencies_on = |evs: Vec<http::SseEvent>| -> Vec<String> {
        evs.into_iter()
            .filter(|e| e.event == "transition")
            .map(|e| e.json()["agency"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, fire_seen) = fire_stream
        .wait_for(Duration::from_millis(500), |_| false)
        .await;
    let (_, police_seen) = police_stream
        .wait_for(Duration::from_millis(500), |_| false)
        .await;
    let (_, admin_seen) = admin_stream
        .wait_for(Duration::from_millis(500), |_| false)
        .await;
    assert_eq!(agencies_on(fire_seen), ["metro-fire"]);
    assert_eq!(agencies_on(police_seen), ["county-police"]);
    let mut admin = agencies_on(admin_seen);
    admin.sort();
    assert_eq!(admin, ["county-police", "metro-fire"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_exposition() {
    let w = World::start("").await;
    let c = w.c();
    let r = http::get(c.addr, "/healthz", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = http::get(c.addr, "/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ready"], true);
    let m = c.get("/metrics", ADMIN).await;
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = m.text();
    for family in [
        "muster_units",
        "muster_ingest_refused_total",
        "muster_ingest_duplicates_total",
        "muster_ack_latency_seconds",
        "muster_store_commits_total",
        "muster_sse_clients",
        "muster_mqtt_connected",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    assert_eq!(c.metric("muster_mqtt_connected ").await, 1.0);
    // promtool (Debian's `prometheus` package) must accept the exposition.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is a test dependency: apt-get install -y prometheus");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_keeps_alive_and_lists_filter_by_status() {
    let w = World::start("").await;
    let c = w.c();
    let mut s = c.stream(FIRE).await;
    // sse_keep_alive is 1 s in the test config: a comment arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut comment = false;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, s.rx.recv()).await {
        if ev.event == "comment" {
            comment = true;
            break;
        }
    }
    assert!(comment, "no keep-alive within 5 s");
    let a = w.agent("agent").await;
    let boot = BootId(1);
    let up = unit("metro-fire", "UP");
    let down = unit("metro-fire", "DOWN");
    a.record(&up, rec(boot, 1, T0, host(10.0))).await;
    a.presence(&down, online(boot, 1, T0, false)).await;
    c.wait_unit(&down, "offline", |v| v["status"] == "lost")
        .await;
    c.wait_unit(&up, "seen", |v| v["seq"]["received"] == 1)
        .await;
    let l = c.json("/api/v1/units?status=offline", FIRE).await;
    let names = items(&l, "unit");
    assert_eq!(names, ["DOWN"]);
    let r = c.get("/api/v1/units?status=sideways", FIRE).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("status:")
    );
    // Unit list pagination.
    let p1 = c.json("/api/v1/units?limit=1", FIRE).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 1);
    let cur = p1["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let p2 = c
        .json(&format!("/api/v1/units?limit=1&cursor={cur}"), FIRE)
        .await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_ne!(p1["items"][0]["unit"], p2["items"][0]["unit"]);
    assert!(p2["next_cursor"].is_null());
}

/// Rollouts: only the admin starts or changes one; an agency sees its own
/// (list, detail, events, stream) and nothing of another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_the_admins_to_change_and_an_agencys_to_see() {
    let w = World::start("").await;
    let c = w.c();
    let mut fire_stream = c.stream(FIRE).await;
    let mut police_stream = c.stream(POLICE).await;
    let p = unit("county-police", "P1");
    let boot = BootId(1);
    let ap = Agent::connect(&w.broker, "p", Some((&p, online(boot, 1, T0, false)))).await;
    ap.presence(&p, online(boot, 1, T0, true)).await;
    ap.record(&p, rec(boot, 1, T0, host(10.0))).await;
    c.wait_unit(&p, "seen", |v| v["seq"]["received"] == 1).await;

    let def = |target: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "name": "<b>interval</b>",
            "change": "[sampling]\ninterval = \"10s\"\n",
            "target": target,
            "probe": "cad-api",
        }))
        .unwrap()
    };
    let police = def(serde_json::json!({"agency": "county-police"}));
    let post = |path: &'static str, token: &'static str, body: Vec<u8>| {
        let addr = c.addr;
        async move { http::post(addr, path, Some(token), &body).await }
    };
    // An agency token cannot start one, even for its own agency.
    for token in [FIRE, POLICE] {
        let r = post("/api/v1/rollouts", token, police.clone()).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "forbidden");
    }
    // Bad definitions name what is wrong; nothing is started.
    for (body, want) in [
        (
            def(serde_json::json!({"agency": "county-police", "units": ["P1", "P9"]})),
            "target.units: not known to this collector: P9",
        ),
        (
            def(serde_json::json!({"agency": "metro-fire"})),
            "target: no unit of metro-fire",
        ),
        (
            def(serde_json::json!({"agency": "county police"})),
            "target.agency",
        ),
        (b"{}".to_vec(), "the body is not a rollout definition"),
    ] {
        let r = post("/api/v1/rollouts", ADMIN, body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        let m = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(m.contains(want), "{m}");
    }
    let r = post("/api/v1/rollouts", ADMIN, police.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["name"], "<b>interval</b>");
    // The same unit cannot be in two running rollouts.
    let r = post("/api/v1/rollouts", ADMIN, police).await;
    assert_eq!(r.status, 409, "{}", r.text());

    // Fire sees nothing of it; police sees it but cannot change it.
    let detail = format!("/api/v1/rollouts/{id}");
    assert_eq!(
        c.json("/api/v1/rollouts", FIRE).await["items"],
        serde_json::json!([])
    );
    assert_eq!(c.get(&detail, FIRE).await.status, 404);
    let list = c.json("/api/v1/rollouts", POLICE).await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert!(
        list["items"][0].get("units").is_none(),
        "the list has no per-unit detail"
    );
    // Its first round issues the change to P1.
    muster_testkit::eventually("P1 issued", Duration::from_secs(10), async || {
        let v = c.json(&detail, POLICE).await;
        (v["units"][0]["unit"] == "P1").then_some(()).ok_or(v)
    })
    .await;
    for action in ["pause", "resume", "abort"] {
        let path: &'static str = Box::leak(format!("{detail}/{action}").into_boxed_str());
        let r = post(path, POLICE, Vec::new()).await;
        assert_eq!(r.status, 403, "{action}: {}", r.text());
    }
    let abort: &'static str = Box::leak(format!("{detail}/abort").into_boxed_str());
    let r = post(abort, ADMIN, Vec::new()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["phase"], "rolling_back");
    let r = post(abort, ADMIN, Vec::new()).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = post("/api/v1/rollouts/r999/abort", ADMIN, Vec::new()).await;
    assert_eq!(r.status, 404, "{}", r.text());

    // Its steps reach police's stream, not fire's.
    let (found, _) = police_stream
        .wait_for(Duration::from_secs(10), |e| {
            e.event == "rollout" && e.json()["step"] == "aborting"
        })
        .await;
    assert!(found.is_some(), "police saw the rollout's steps");
    let (_, fire_seen) = fire_stream
        .wait_for(Duration::from_millis(500), |_| false)
        .await;
    assert!(
        fire_seen.iter().all(|e| e.event != "rollout"),
        "{fire_seen:?}"
    );
    let ev = c.json("/api/v1/events?agency=county-police", POLICE).await;
    assert!(
        ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "rollout" && e["step"] == "started")
    );
}
