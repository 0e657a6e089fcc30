//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`; missing ones fail the test), following the seeded
//! fleet live. Screenshots go to `target/ci-artifacts/`.

use std::path::PathBuf;
use std::sync::Arc;

use muster_collector::clock::ManualClock;
use muster_proto::BootId;
use muster_testkit::webdriver::ChromeDriver;
use muster_testkit::{Mosquitto, TempDir};
use serde_json::json;

use super::fleet::*;
use crate::harness::*;

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
    b.wait(
        "E2's labels, OS and CAD client",
        "document.getElementById('detail-labels').textContent.includes('role=engine, station=7') \
         && document.getElementById('detail-os').textContent.includes('Windows 10 Pro (build 19045)') \
         && document.getElementById('detail-cad').textContent.includes('7.4.1.2')",
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

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let d = target.join("ci-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}
