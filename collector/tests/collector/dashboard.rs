//! The dashboard at `/`: its assets and headers, the stream's
//! `?access_token=` for EventSource, and the page itself in a real headless
//! Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`; missing ones fail the test). Screenshots at a
//! desktop and a tablet width go to `target/ci-artifacts/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_collector::clock::ManualClock;
use muster_proto::{AgentStatus, BootId, Payload, Phases, PresenceReason, fixtures};
use muster_testkit::{Mosquitto, TempDir, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::http::{self, Sse};

// ------------------------------------------------------------ API level

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_without_a_token_with_types_and_caching() {
    let w = World::start("").await;
    let c = w.c();
    let page = http::get(c.addr, "/", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = page.text();
    for (name, ctype) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        // The page names each asset with its content hash.
        let at = html
            .find(&format!("/assets/{name}?v="))
            .unwrap_or_else(|| panic!("{name} not in the page"));
        let url: String = html[at..].chars().take_while(|c| *c != '"').collect();
        let v = url.rsplit('=').next().unwrap().to_owned();
        assert_eq!(v.len(), 16, "{url}");
        let r = http::get(c.addr, &url, None).await;
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(r.header("content-type"), Some(ctype), "{url}");
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{url}"
        );
        assert_eq!(r.header("etag"), Some(format!("\"{v}\"").as_str()));
        assert!(!r.body.is_empty());
        // Without (or with a stale) hash: revalidate every time.
        let r = http::get(c.addr, &format!("/assets/{name}?v=0"), None).await;
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{name}");
    }
    let js = http::get(c.addr, "/assets/app.js", None).await.text();
    assert!(js.contains("/api/v1/stream?access_token="));
    let missing = http::get(c.addr, "/assets/nope.js", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    // The API still wants a token.
    let r = http::get(c.addr, "/api/v1/units", None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_takes_a_query_token_with_the_same_scoping() {
    let extra = CAD_SLOW_RULE;
    let w = World::start(extra).await;
    let c = w.c();
    // Refused: unknown token, and another agency's units.
    let r = http::get(c.addr, "/api/v1/stream?access_token=nope", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = http::get(
        c.addr,
        &format!("/api/v1/stream?access_token={FIRE}&agency=county-police"),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "forbidden");
    // The query token is for the stream only.
    let r = http::get(c.addr, &format!("/api/v1/units?access_token={FIRE}"), None).await;
    assert_eq!(r.status, 401, "{}", r.text());

    let mut fire = Sse::connect(c.addr, &format!("/api/v1/stream?access_token={FIRE}"), None).await;
    assert_eq!(fire.status, 200);
    let ready = fire.next(Duration::from_secs(10)).await.expect("ready");
    assert_eq!(ready.event, "ready");
    let a = w.agent("agent").await;
    let boot = BootId(7);
    let police = unit("county-police", "P1");
    let engine = unit("metro-fire", "E1");
    w.clock.set(T0 + 1_000);
    a.record(&police, rec(boot, 1, T0 + 1_000, slow_probe(3_000)))
        .await;
    c.wait_unit(&police, "degraded", |v| v["status"] == "degraded")
        .await;
    a.record(&engine, rec(boot, 1, T0 + 1_000, slow_probe(3_000)))
        .await;
    let (got, skipped) = fire
        .wait_for(Duration::from_secs(20), |e| e.event == "transition")
        .await;
    let got = got.expect("the fire token's stream gets its unit's transition");
    assert_eq!(got.json()["unit"], "E1");
    assert_eq!(got.json()["agency"], "metro-fire");
    assert!(
        skipped.iter().all(|e| !e.data.contains("county-police")),
        "{skipped:?}"
    );
}

// ------------------------------------------------------------ the fleet

const CAD_SLOW_RULE: &str = r#"
[[rules.threshold]]
name = "cad-api-slow"
field = 'probe["cad-api"].total_ms'
op = ">"
threshold = 2000
severity = "degraded"
runbook = "https://runbooks.example.org/muster/cad-api-slow"
"#;

fn slow_probe(total_ms: u32) -> Payload {
    let mut p = fixtures::http_probe();
    let total_us = total_ms * 1000;
    p.phases = Phases {
        dns_us: Some(total_us / 40),
        connect_us: Some(total_us / 6),
        tls_us: Some(total_us / 4),
        ttfb_us: Some(total_us / 2),
        total_us,
    };
    Payload::Probe(p)
}

fn probe_of(name: &str, target: &str, total_ms: u32, ok: bool) -> Payload {
    let Payload::Probe(mut p) = slow_probe(total_ms) else {
        unreachable!()
    };
    p.name = name.into();
    p.target = target.into();
    if !ok {
        p.outcome = muster_proto::Outcome::Fail(muster_proto::ErrorClass::Timeout);
    }
    Payload::Probe(p)
}

fn host_at(cpu: f64, mem_pct: f64, disk_pct: f64) -> Payload {
    let Payload::Host(mut h) = host(cpu) else {
        unreachable!()
    };
    h.interval_ms = 60_000;
    if let Some(m) = h.memory.as_mut() {
        m.used_kib = (m.total_kib as f64 * mem_pct / 100.0) as u64;
    }
    if let Some(d) = h.disks.first_mut() {
        d.used_kib = (d.total_kib as f64 * disk_pct / 100.0) as u64;
    }
    Payload::Host(h)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The units of the demo fleet: (agency, unit, base cpu).
const FLEET: &[(&str, &str, f64)] = &[
    ("metro-fire", "E1", 22.0),
    ("metro-fire", "E2", 18.0),
    ("metro-fire", "E4", 35.0),
    ("metro-fire", "L3", 40.0),
    ("metro-fire", "M7", 28.0),
    ("metro-fire", "BC1", 12.0),
    ("county-police", "P11", 30.0),
    ("county-police", "P12", 26.0),
    ("county-police", "P14", 33.0),
    ("county-police", "K9-2", 21.0),
    ("county-police", "SGT3", 15.0),
];

const STEPS: u64 = 60;
const STEP_MS: u64 = 120_000;

/// Two hours of history, 2 minutes apart, with the fed clock following the
/// event time: L3 runs hot for a while (cpu-high), P14's CAD API is slow
/// for a while (cad-api-slow), three police units lose their RMS API at the
/// end (an incident), K9-2 drops off (its MQTT will) and M7 has a backlog.
/// Returns each unit's next seq.
async fn seed(clock: &ManualClock, c: &Collector, a: &Agent, start: u64) -> Vec<u64> {
    let boot = BootId(0x5eed);
    let mut seqs = vec![1u64; FLEET.len()];
    for (ag, u, _) in FLEET {
        a.presence(&unit(ag, u), online(boot, 1, start, true)).await;
    }
    for step in 0..STEPS {
        let t = start + step * STEP_MS;
        clock.set(t);
        for (i, (ag, u, base)) in FLEET.iter().enumerate() {
            let id = unit(ag, u);
            let wobble = ((step as f64 / 5.0) + i as f64).sin() * 8.0;
            let cpu = if *u == "L3" && (20..26).contains(&step) {
                96.0
            } else {
                (base + wobble).max(2.0)
            };
            let mem = 48.0 + i as f64 * 3.0 + wobble / 2.0;
            let disk = 40.0 + i as f64 * 4.0 + step as f64 * 0.05;
            a.record(&id, rec(boot, seqs[i], t, host_at(cpu, mem, disk)))
                .await;
            seqs[i] += 1;
            let cad_ms = if *u == "P14" && (38..46).contains(&step) {
                2_600
            } else {
                140 + (wobble.abs() * 12.0) as u32
            };
            a.record(
                &id,
                rec(
                    boot,
                    seqs[i],
                    t + 1,
                    probe_of("cad-api", "https://cad.example.org/health", cad_ms, true),
                ),
            )
            .await;
            seqs[i] += 1;
            if *ag == "county-police" {
                let failing = ["P11", "P12", "SGT3"].contains(u) && step >= STEPS - 3;
                a.record(
                    &id,
                    rec(
                        boot,
                        seqs[i],
                        t + 2,
                        probe_of(
                            "rms-api",
                            "https://rms.county.example.org/api/ping",
                            if failing { 5_000 } else { 90 },
                            !failing,
                        ),
                    ),
                )
                .await;
                seqs[i] += 1;
            }
        }
        wait_received(c, &seqs).await;
    }
    let t = start + STEPS * STEP_MS;
    clock.set(t);
    let m7 = FLEET.iter().position(|f| f.1 == "M7").unwrap();
    let mut st: AgentStatus = fixtures::status();
    st.interval_ms = 60_000;
    st.backlog_records = 1_840;
    st.backlog_bytes = 612_000;
    st.clock_offset_ms = Some(0);
    a.record(
        &unit("metro-fire", "M7"),
        rec(boot, seqs[m7], t, Payload::Status(st)),
    )
    .await;
    seqs[m7] += 1;
    for (i, (ag, u, _)) in FLEET.iter().enumerate() {
        if i == m7 {
            continue;
        }
        let mut st: AgentStatus = fixtures::status();
        st.interval_ms = 60_000;
        st.backlog_records = 0;
        st.backlog_bytes = 0;
        st.clock_offset_ms = Some(0);
        a.record(&unit(ag, u), rec(boot, seqs[i], t, Payload::Status(st)))
            .await;
        seqs[i] += 1;
    }
    // The RMS API is still failing for the three police units.
    for (i, (ag, u, _)) in FLEET.iter().enumerate() {
        if ["P11", "P12", "SGT3"].contains(u) {
            let failing = probe_of(
                "rms-api",
                "https://rms.county.example.org/api/ping",
                5_000,
                false,
            );
            a.record(&unit(ag, u), rec(boot, seqs[i], t, failing)).await;
            seqs[i] += 1;
        }
    }
    wait_received(c, &seqs).await;
    a.presence(&unit("county-police", "K9-2"), online(boot, 1, t, false))
        .await;
    c.wait_unit(&unit("county-police", "K9-2"), "lost", |v| {
        v["status"] == "lost"
    })
    .await;
    // Announced departures (schema v2): BC1's OS shuts down (off), E4's
    // service stops for a restart that should be back within a second
    // (overdue once that passed), P14's lid closes (asleep). Each is an
    // announcement record and the retained state, as the agent sends them.
    for (ag, u, reason) in [
        ("metro-fire", "BC1", PresenceReason::Shutdown),
        (
            "metro-fire",
            "E4",
            PresenceReason::Stop {
                back_within_ms: Some(1_000),
            },
        ),
        ("county-police", "P14", PresenceReason::Sleep),
    ] {
        let i = FLEET.iter().position(|f| f.1 == u).unwrap();
        let id = unit(ag, u);
        let mut p = announcement(boot, t);
        p.reason = reason;
        a.record(&id, rec(boot, seqs[i], t, Payload::Presence(p)))
            .await;
        seqs[i] += 1;
        a.presence(&id, p).await;
        c.wait_unit(&id, "announced", |v| {
            v["presence"]["reason"] == reason.as_str()
        })
        .await;
    }
    // A second passes: the strips end in the departures, not at them.
    clock.set(t + 1_000);
    seqs
}

/// Units of the fleet by status, as the API says (`agency/unit`, sorted).
async fn by_status(c: &Collector, status: &str) -> Vec<String> {
    let v = c.json("/api/v1/units?limit=1000", ADMIN).await;
    let mut out: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["status"] == status)
        .map(|u| {
            format!(
                "{}/{}",
                u["agency"].as_str().unwrap(),
                u["unit"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until every fleet unit has received `seqs[i] - 1` records.
async fn wait_received(c: &Collector, seqs: &[u64]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.json("/api/v1/units?limit=1000", ADMIN).await;
        let done = FLEET.iter().enumerate().all(|(i, (ag, u, _))| {
            v["items"].as_array().unwrap().iter().any(|x| {
                x["agency"] == *ag && x["unit"] == *u && x["seq"]["received"] == seqs[i] - 1
            })
        });
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector never received the seeded records: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_fleet_live_in_a_real_browser() {
    // Boxed: the whole scenario's future is too big for a test thread's stack.
    Box::pin(dashboard_scenario()).await;
}

async fn dashboard_scenario() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let now = wall_ms();
    let start = now - STEPS * STEP_MS;
    let clock = ManualClock::new(start);
    let text = config_text(
        &broker,
        &dir.path().join("store"),
        "collector-dashboard",
        CAD_SLOW_RULE,
    );
    let c = Collector::start(&text, Arc::clone(&clock)).await;
    let a = Agent::connect(&broker, "fleet", None).await;
    let seqs = Box::pin(seed(&clock, &c, &a, start)).await;
    // The seeded history made problems to rank and an incident.
    let problems = c.json("/api/v1/problems?hours=24", ADMIN).await;
    let rules: Vec<&str> = problems["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"cpu-high"), "{problems:#}");
    assert!(rules.contains(&"cad-api-slow"), "{problems:#}");
    let incidents = c.json("/api/v1/incidents?state=open", ADMIN).await;
    assert_eq!(
        incidents["items"].as_array().unwrap().len(),
        1,
        "{incidents:#}"
    );

    let driver = ChromeDriver::start().await;
    let b = driver.session(1440, 900).await;
    let base = format!("http://{}", c.addr);
    b.go(&format!("{base}/")).await;

    // Asks for a token; a wrong one is refused on the page.
    b.wait(
        "the sign-in form",
        "!document.getElementById('login').hidden",
    )
    .await;
    b.type_into("#token", "not-a-token").await;
    b.click("#login-form button[type=submit]").await;
    b.wait(
        "the refusal",
        "document.getElementById('login-error').textContent.includes('unknown token')",
    )
    .await;
    b.type_into("#token", ADMIN).await;
    b.click("#login-form button[type=submit]").await;
    b.wait(
        "the whole fleet",
        &format!(
            "document.querySelectorAll('tr.unit').length === {}",
            FLEET.len()
        ),
    )
    .await;
    b.wait(
        "the incident at the top",
        "document.querySelectorAll('#incident-list .incident').length === 1 \
         && document.querySelector('#incident-list').textContent.includes('rms-api')",
    )
    .await;
    // A tile per status, each with the API's count; off is grey, not red.
    let mut lost = Vec::new();
    for st in ["ok", "off", "degraded", "overdue", "critical", "lost"] {
        let units = by_status(&c, st).await;
        b.wait(
            &format!("the {st} count"),
            &format!(
                "document.querySelector('#count-{st} .n').textContent === '{}'",
                units.len()
            ),
        )
        .await;
        if st == "lost" {
            lost = units;
        }
    }
    assert!(lost.contains(&"county-police/K9-2".to_string()), "{lost:?}");
    // P14 announced sleep: off, and its strip ends asleep.
    assert!(
        by_status(&c, "off")
            .await
            .contains(&"county-police/P14".to_string())
    );
    let p14 = c
        .json("/api/v1/units/county-police/P14/timeline?hours=24", ADMIN)
        .await;
    let last = p14["segments"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["state"], "asleep", "{p14:#}");
    let grey = b
        .js("const s = getComputedStyle(document.getElementById('count-off')); return [s.backgroundColor, s.color]")
        .await;
    assert_eq!(grey, json!(["rgb(228, 231, 235)", "rgb(74, 83, 97)"]));
    b.wait(
        "top problems",
        "document.querySelectorAll('#problem-list tr.problem').length >= 2",
    )
    .await;
    b.wait(
        "the live stream",
        "document.getElementById('live').dataset.state === 'live'",
    )
    .await;
    // The lost unit is listed before the ok ones of its agency.
    let order: Vec<String> = b
        .js("return [...document.querySelectorAll('section[data-agency=\"county-police\"] tr.unit')].map(r => r.dataset.unit)")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order[0], "county-police/K9-2", "{order:?}");
    let e2 = "tr[data-unit='metro-fire/E2']";
    assert_eq!(
        b.js(&format!(
            "return document.querySelector(\"{e2}\").dataset.status"
        ))
        .await,
        "ok"
    );
    // Filters: text matches units and reasons; status narrows.
    b.type_into("#f-text", "rms-api").await;
    b.wait(
        "the text filter",
        "[...document.querySelectorAll('tr.unit')].map(r => r.dataset.unit).join() \
         === 'county-police/P11,county-police/P12,county-police/SGT3'",
    )
    .await;
    b.type_into("#f-text", "").await;
    for st in ["lost", "off", "overdue"] {
        b.js(&format!(
            "const s = document.getElementById('f-status'); s.value = '{st}'; \
              s.dispatchEvent(new Event('change')); return true"
        ))
        .await;
        let want = by_status(&c, st).await.join(",");
        b.wait(
            &format!("the status filter {st}"),
            &format!(
                "[...document.querySelectorAll('tr.unit')].map(r => r.dataset.unit).sort().join() === '{want}'"
            ),
        )
        .await;
    }
    b.js(
        "const s = document.getElementById('f-status'); s.value = ''; \
          s.dispatchEvent(new Event('change')); return true",
    )
    .await;
    // An announced unit's row says why it went (its reason, or its presence).
    let bc1 = "tr[data-unit='metro-fire/BC1']";
    let bc1_api = c.unit(&unit("metro-fire", "BC1")).await.unwrap();
    let why = bc1_api["reasons"][0]["message"]
        .as_str()
        .unwrap_or("shut down")
        .to_owned();
    b.wait(
        "BC1's evidence in the list",
        &format!(
            "document.querySelector(\"{bc1}\").textContent.includes({})",
            json!(why)
        ),
    )
    .await;
    b.js(
        "const s = document.getElementById('f-status'); s.value = ''; \
          s.dispatchEvent(new Event('change')); \
          const o = document.getElementById('f-sort'); o.value = 'unit'; \
          o.dispatchEvent(new Event('change')); return true",
    )
    .await;
    b.wait(
        "sorted by unit name",
        "[...document.querySelectorAll('section[data-agency=\"metro-fire\"] tr.unit')].map(r => r.dataset.unit).join() \
         === 'metro-fire/BC1,metro-fire/E1,metro-fire/E2,metro-fire/E4,metro-fire/L3,metro-fire/M7'",
    )
    .await;
    b.js(
        "const o = document.getElementById('f-sort'); o.value = 'severity'; \
          o.dispatchEvent(new Event('change')); return true",
    )
    .await;
    b.wait(
        "all units again",
        &format!(
            "document.querySelectorAll('tr.unit').length === {}",
            FLEET.len()
        ),
    )
    .await;
    // Marks this page load: a reload would lose it.
    b.js("window.__musterLoad = 'first'; return true").await;

    // A violating sample through Mosquitto: E2's CAD API gets slow.
    let i = FLEET.iter().position(|f| f.1 == "E2").unwrap();
    let t = start + STEPS * STEP_MS + 5_000;
    clock.set(t);
    a.record(
        &unit("metro-fire", "E2"),
        rec(BootId(0x5eed), seqs[i], t, slow_probe(3_400)),
    )
    .await;
    b.wait(
        "E2 degraded on the live stream",
        &format!(
            "document.querySelector(\"{e2}\").dataset.status === 'degraded' \
             && document.querySelector(\"{e2}\").textContent.includes('cad-api-slow')"
        ),
    )
    .await;
    assert_eq!(
        b.js("return window.__musterLoad").await,
        "first",
        "the page was reloaded"
    );
    b.wait(
        "the degraded count",
        "document.querySelector('#count-degraded .n').textContent !== '0'",
    )
    .await;
    b.wait(
        "the incident still open",
        "document.querySelectorAll('#incident-list .incident').length === 1",
    )
    .await;
    let shots = artifacts_dir();
    b.screenshot(&shots.join("dashboard-desktop.png")).await;
    b.full_screenshot(&shots.join("dashboard-desktop-full.png"))
        .await;

    // The unit view: its reason with the runbook link, charts, transitions.
    b.click(e2).await;
    b.wait(
        "E2's detail with its runbook",
        "(() => { const a = document.querySelector('#detail-reasons li[data-rule=\"cad-api-slow\"] a.runbook'); \
           return !document.getElementById('detail').hidden && a \
             && a.href === 'https://runbooks.example.org/muster/cad-api-slow'; })()",
    )
    .await;
    b.wait(
        "charts and transitions",
        "document.querySelectorAll('#detail-body .chart svg').length >= 4 \
         && document.querySelectorAll('#detail-transitions tbody tr').length >= 1 \
         && document.querySelector('#detail-body .chart[data-probe=\"cad-api\"] path.area')",
    )
    .await;
    b.screenshot(&shots.join("dashboard-desktop-unit.png"))
        .await;

    // An announced unit: its presence reason, network and 24 h strip.
    b.click("#detail-close").await;
    b.click(bc1).await;
    b.wait(
        "BC1's presence reason",
        "document.querySelector('#detail-presence[data-reason=\"shutdown\"]') \
         && document.getElementById('detail-presence').textContent.includes('shut down')",
    )
    .await;
    b.wait(
        "BC1's network",
        "document.querySelector('#detail-network[data-kind=\"cellular\"]') \
         && document.getElementById('detail-network').textContent.includes('FirstNet') \
         && document.getElementById('detail-network').textContent.includes('tun0 up')",
    )
    .await;
    b.click("#detail-close").await;
    // The lost unit's strip: on (over cellular) for two hours, then lost.
    b.click("tr[data-unit='county-police/K9-2']").await;
    b.wait(
        "K9-2's strip",
        "(() => { const s = [...document.querySelectorAll('#detail-strip .strip-bar .seg')]; \
           return s.length >= 2 && s.some(x => x.dataset.state === 'on' && x.dataset.net === 'cellular') \
             && s[s.length - 1].dataset.state === 'lost' \
             && document.querySelectorAll('#detail-strip .strip-legend span').length >= 7; })()",
    )
    .await;
    let strip = c
        .json("/api/v1/units/county-police/K9-2/timeline?hours=24", ADMIN)
        .await;
    let segs = strip["segments"].as_array().unwrap();
    assert_eq!(segs.last().unwrap()["state"], "lost", "{strip:#}");
    assert_eq!(
        b.js("return document.querySelectorAll('#detail-strip .strip-bar .seg').length")
            .await,
        json!(segs.len())
    );
    b.screenshot(&shots.join("dashboard-desktop-strip.png"))
        .await;

    // Tablet width.
    b.click("#detail-close").await;
    b.set_size(820, 1180).await;
    b.wait(
        "the detail closed",
        "document.getElementById('detail').hidden",
    )
    .await;
    b.screenshot(&shots.join("dashboard-tablet.png")).await;
    b.click(e2).await;
    b.wait(
        "E2's detail at tablet width",
        "document.querySelectorAll('#detail-body .chart svg').length >= 4",
    )
    .await;
    b.screenshot(&shots.join("dashboard-tablet-unit.png")).await;
    b.click("#detail-close").await;

    // An agency's token shows only its agency.
    b.set_size(1440, 900).await;
    b.click("#signout").await;
    b.wait(
        "the sign-in form again",
        "!document.getElementById('login').hidden",
    )
    .await;
    b.type_into("#token", FIRE).await;
    b.click("#login-form button[type=submit]").await;
    let fire = FLEET.iter().filter(|f| f.0 == "metro-fire").count();
    b.wait(
        "metro-fire's units only",
        &format!(
            "document.getElementById('login').hidden && document.querySelectorAll('tr.unit').length === {fire}"
        ),
    )
    .await;
    let shown = b
        .js("return [...document.querySelectorAll('tr.unit')].map(r => r.dataset.unit).join(',')")
        .await;
    let shown = shown.as_str().unwrap();
    assert!(
        shown.split(',').all(|u| u.starts_with("metro-fire/")),
        "{shown}"
    );
    let text = b
        .js("return document.getElementById('main').textContent")
        .await;
    assert!(!text.as_str().unwrap().contains("county-police"));
    assert!(!text.as_str().unwrap().contains("K9-2"));

    // A token that stops working (here: a stale one in the tab's storage)
    // sends the page back to the sign-in form with the reason.
    b.js("sessionStorage.setItem('muster.token', 'revoked-token'); location.reload(); return true")
        .await;
    b.wait(
        "the sign-in form for a refused token",
        "!document.getElementById('login').hidden \
         && document.getElementById('login-error').textContent.includes('unknown token') \
         && document.getElementById('main').hidden",
    )
    .await;

    b.close(&driver).await;
    drop(driver);
    c.stop().await;
}

// ------------------------------------------------------------ WebDriver

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let d = target.join("ci-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// `chromedriver` on a free loopback port. On drop (a failed test too) it
/// ends its browser sessions, so no Chromium outlives the test, then stops.
struct ChromeDriver {
    child: Child,
    port: u16,
    chromium: PathBuf,
    sessions: std::sync::Mutex<Vec<String>>,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let sessions =
            std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        for id in sessions {
            // Blocking on purpose: Drop cannot await. Errors only mean it is gone.
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.write_all(
                    format!(
                        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
                let mut head = [0u8; 12];
                let _ = s.read(&mut head);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        let driver = find_binary(&["chromedriver"]).unwrap_or_else(|| {
            panic!(
                "chromedriver not found: install Debian's `chromium` and `chromium-driver` \
                 (apt-get install -y chromium chromium-driver)"
            )
        });
        let chromium = find_binary(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!(
                "chromium not found: install Debian's `chromium` and `chromium-driver` \
                 (apt-get install -y chromium chromium-driver)"
            )
        });
        let port = free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let d = ChromeDriver {
            child,
            port,
            chromium,
            sessions: std::sync::Mutex::new(Vec::new()),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = wd_try(port, "GET", "/status", None).await
                && v["value"]["ready"] == true
            {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not become ready on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn session(&self, width: u32, height: u32) -> Browser {
        let profile = TempDir::new().unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--force-device-scale-factor=1".into(),
            "--lang=en-US".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": self.chromium.display().to_string(), "args": args}
            }}
        });
        let v = wd(self.port, "POST", "/session", Some(caps)).await;
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.clone());
        let b = Browser {
            port: self.port,
            id,
            _profile: profile,
        };
        b.set_size(width, height).await;
        b
    }
}

struct Browser {
    port: u16,
    id: String,
    _profile: TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
        .await["value"]
            .take()
    }

    async fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn set_size(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
        // Headless windows may size the outer window: make the viewport the size asked for.
        let inner = self
            .js("return [window.innerWidth, window.innerHeight]")
            .await;
        let (iw, ih) = (inner[0].as_u64().unwrap(), inner[1].as_u64().unwrap());
        if (iw, ih) != (u64::from(width), u64::from(height)) {
            let w = u64::from(width) * 2 - iw;
            let h = u64::from(height) * 2 - ih;
            self.cmd(
                "POST",
                "/window/rect",
                Some(json!({"width": w, "height": h})),
            )
            .await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls the page until `expr` is truthy, with a deadline.
    async fn wait(&self, what: &str, expr: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let script = format!("try {{ return !!({expr}); }} catch (e) {{ return false; }}");
        loop {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self
                    .js("return document.body ? document.body.innerText.slice(0, 3000) : ''")
                    .await;
                panic!("timed out waiting for {what} ({expr}); the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn screenshot(&self, path: &std::path::Path) {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("screenshot is base64"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// The whole page, not just the viewport (Chrome DevTools through chromedriver).
    async fn full_screenshot(&self, path: &std::path::Path) {
        let size = self
            .js("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            .await;
        let v = self
            .cmd(
                "POST",
                "/goog/cdp/execute",
                Some(json!({"cmd": "Page.captureScreenshot", "params": {
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
                }})),
            )
            .await;
        let png = base64_decode(v["data"].as_str().expect("screenshot is base64"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Ends the session (the driver's drop ends any left open).
    async fn close(&self, driver: &ChromeDriver) {
        wd(self.port, "DELETE", &format!("/session/{}", self.id), None).await;
        driver
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| *s != self.id);
    }
}

/// A WebDriver command; panics with the driver's error.
async fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    // Boxed, like every WebDriver call: the scenario awaits many of them.
    let v = Box::pin(wd_try(port, method, path, body))
        .await
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
    if let Some(err) = v["value"]["error"].as_str() {
        panic!(
            "WebDriver {method} {path}: {err}: {}",
            v["value"]["message"]
        );
    }
    v
}

/// One WebDriver request over a plain HTTP/1.1 connection.
async fn wd_try(port: u16, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // chromedriver keeps connections open: read the head, then exactly
        // the body it announces.
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let payload = loop {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            raw.extend_from_slice(&buf[..n]);
            let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                if n == 0 {
                    return Err("connection closed before the HTTP head".into());
                }
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
            let body = &raw[split + 4..];
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            match len {
                Some(len) if body.len() >= len => break body[..len].to_vec(),
                None if head.contains("transfer-encoding: chunked")
                    && body.windows(5).any(|w| w == b"0\r\n\r\n") =>
                {
                    break dechunk(body);
                }
                _ if n == 0 => break body.to_vec(),
                _ => {}
            }
        };
        serde_json::from_slice(&payload).map_err(|e| {
            format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&payload[..payload.len().min(500)])
            )
        })
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim().split(';').next()?, 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YQ=="), b"a");
}
