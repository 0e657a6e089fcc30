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
use super::rollout;
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
    // The site overrides the built-in `incident` runbook with one whose
    // markup must stay text in the page.
    let site = dir.path().join("runbooks");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("incident.md"), SITE_INCIDENT).unwrap();
    let text = config_text(
        &broker,
        &dir.path().join("store"),
        "collector-dashboard",
        &format!(
            "{CAD_SLOW_RULE}\n[runbooks]\ndir = {:?}\n",
            site.display().to_string()
        ),
    );
    let c = Collector::start(&text, Arc::clone(&clock)).await;
    let a = Agent::connect(&broker, "fleet", None).await;
    let mut seqs = Box::pin(seed(&clock, &c, &a, start)).await;
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
    seqs[i] += 1;
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

    // A staged rollout (issue 16), started through the API: the Rollouts
    // panel shows it, its name as text (not markup), and follows each
    // step on the stream.
    let id = rollout::start(&c).await;
    let row = format!("tr.rollout[data-rollout='{id}']");
    let r = format!("document.querySelector(\"{row}\")");
    b.wait(
        "the rollout in the panel, its name as text",
        &format!(
            "!document.getElementById('rollouts').hidden && {r} \
             && {r}.querySelector('.rollout-name').textContent === {name} \
             && !{r}.querySelector('b') \
             && {r}.querySelector('.rid').textContent === '{id}' \
             && {r}.querySelector('td.ragency').textContent.startsWith('metro-fire')",
            name = json!(rollout::NAME)
        ),
    )
    .await;
    let v = rollout::wait(&c, &id, "its first wave issued", |v| {
        v["counts"]["issued"] == 1
    })
    .await;
    assert_eq!(v["phase"], "applying", "{v:#}");
    assert_eq!(v["wave_count"], 2, "{v:#}");
    let (first, version) = rollout::issued(&v);
    b.wait(
        "applying wave 1 of 2, none applied yet",
        &format!(
            "{r}.dataset.phase === 'applying' \
             && {r}.querySelector('.badge.phase').textContent === 'Applying' \
             && {r}.querySelector('td.wave').textContent === '1 of 2' \
             && {r}.querySelector('td.applied').textContent.startsWith('0 / 1')"
        ),
    )
    .await;
    let phase_bg = |st: &str| {
        format!(
            "getComputedStyle(document.querySelector(\"{row} .badge.ph-{st}\")).backgroundColor"
        )
    };
    let mut colours = vec![b.js(&format!("return {}", phase_bg("applying"))).await];
    // Its first unit applies the change: the wave soaks.
    let fi = FLEET.iter().position(|f| f.1 == first).unwrap();
    rollout::report_applied(&a, &first, seqs[fi], t, version).await;
    seqs[fi] += 1;
    rollout::wait(&c, &id, "soaking", |v| v["phase"] == "soaking").await;
    b.wait(
        "soaking, 1 of 1 applied",
        &format!(
            "{r}.dataset.phase === 'soaking' \
             && {r}.querySelector('td.applied').textContent.startsWith('1 / 1')"
        ),
    )
    .await;
    // The soak ends: the verdict, its reason and each metric's.
    clock.set(t + 11_000);
    let v = rollout::wait(&c, &id, "judged at the end of its soak", |v| {
        v["verdicts"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["final"] == true))
            && v["phase"] != "soaking"
    })
    .await;
    let verdict = v["verdicts"].as_array().unwrap().last().unwrap().clone();
    let metrics: Vec<&str> = verdict["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(!metrics.is_empty(), "{v:#}");
    b.wait(
        "the verdict with its reason, and the phase it led to",
        &format!(
            "{r}.dataset.phase === {phase} \
             && {r}.querySelector('td.verdict').dataset.verdict === {verdict} \
             && {r}.querySelector('td.verdict .vreason').textContent === {reason} \
             && {r}.querySelector('td.verdict .vline').title.includes({first_metric}) \
             && {r}.querySelector('.why').textContent === {why}",
            phase = v["phase"],
            verdict = verdict["verdict"],
            reason = verdict["reason"],
            first_metric = json!(metrics[0]),
            why = v["reason"],
        ),
    )
    .await;
    assert_eq!(
        v["phase"], "paused",
        "no data in the soak never passes: {v:#}"
    );
    colours.push(b.js(&format!("return {}", phase_bg("paused"))).await);
    b.click(&format!("{row} td.verdict details summary")).await;
    b.wait(
        "each metric's verdict, expanded",
        &format!(
            "[...{r}.querySelectorAll('details[open] li[data-metric]')].map(l => l.dataset.metric).join() === '{}'",
            metrics.join(",")
        ),
    )
    .await;
    let shots = artifacts_dir();
    b.screenshot(&shots.join("dashboard-desktop-rollout.png"))
        .await;
    // An operator aborts it: rolling back (the metrics stay expanded),
    // then aborted once its unit runs its previous document again.
    let v = rollout::act(&c, &id, "abort").await;
    assert_eq!(v["phase"], "rolling_back", "{v:#}");
    b.wait(
        "rolling back, on the stream",
        &format!(
            "{r}.dataset.phase === 'rolling_back' \
             && {r}.querySelector('.badge.phase').textContent === 'Rolling back' \
             && {r}.querySelector('.why').textContent === 'aborted by an operator' \
             && {r}.querySelector('td.verdict details[open]')"
        ),
    )
    .await;
    colours.push(b.js(&format!("return {}", phase_bg("rolling_back"))).await);
    let v = rollout::wait(&c, &id, "its unit reverting", |v| {
        v["units"][0]["state"] == "reverting"
    })
    .await;
    let (unit_name, reverted) = rollout::issued(&v);
    assert!(reverted > version, "{v:#}");
    let fi = FLEET.iter().position(|f| f.1 == unit_name).unwrap();
    rollout::report_applied(&a, &unit_name, seqs[fi], t + 11_000, reverted).await;
    seqs[fi] += 1;
    rollout::wait(&c, &id, "aborted", |v| v["phase"] == "aborted").await;
    b.wait(
        "aborted",
        &format!(
            "{r}.dataset.phase === 'aborted' \
             && {r}.querySelector('.badge.phase').textContent === 'Aborted' \
             && {r}.querySelector('td.applied').textContent.includes('1 reverted')"
        ),
    )
    .await;
    colours.push(b.js(&format!("return {}", phase_bg("aborted"))).await);
    // Each of those phases looks different.
    for (i, x) in colours.iter().enumerate() {
        assert!(
            !colours[..i].contains(x),
            "applying, paused, rolling back, aborted: {colours:?}"
        );
    }
    assert_eq!(
        b.js("return window.__musterLoad").await,
        "first",
        "the page was reloaded"
    );
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

    // Its flag's runbook, expanded inline: the built-in lost.will, as
    // rendered by the collector and rebuilt by the page.
    let lost = "#detail-reasons li[data-rule='lost.will']";
    assert_eq!(
        b.js(&format!(
            "return document.querySelector(\"{lost} details.runbook-inline\").open"
        ))
        .await,
        false,
        "closed until asked"
    );
    b.click(&format!("{lost} details.runbook-inline summary"))
        .await;
    let body = format!("document.querySelector(\"{lost} .runbook-body\")");
    b.wait(
        "lost.will's runbook inline",
        &format!(
            "{body}.dataset.state === 'loaded' \
             && {body}.querySelector('article.runbook h1').textContent.includes('lost.will') \
             && [...{body}.querySelectorAll('h2')].map(x => x.textContent).join() \
                === 'What it means,Confirm it,Likely causes, most likely first,Fix,Escalate' \
             && {body}.querySelector('table td code').textContent === 'status' \
             && {body}.querySelector('a.runbook').getAttribute('href') === '/runbooks/lost.will'"
        ),
    )
    .await;
    b.js(&format!(
        "document.querySelector(\"{lost}\").scrollIntoView({{block: 'start'}}); return true"
    ))
    .await;
    b.screenshot(&shots.join("dashboard-desktop-runbook.png"))
        .await;
    // The unit view re-renders on every transition: the runbook stays open.
    b.js("openDetail('county-police/K9-2', true); return true")
        .await;
    b.wait(
        "still open after a re-render",
        &format!(
            "document.querySelector(\"{lost} details.runbook-inline\").open \
             && {body}.dataset.state === 'loaded' && {body}.querySelectorAll('h2').length === 5"
        ),
    )
    .await;

    // A site's runbook: its markup is text, its unsafe link goes nowhere.
    b.click("#detail-close").await;
    b.js("window.__pwned = undefined; return true").await;
    b.click("tr[data-unit='county-police/P11']").await;
    let inc = "#detail-reasons li[data-rule='incident']";
    b.wait(
        "P11's incident flag",
        &format!("document.querySelector(\"{inc} details.runbook-inline summary\")"),
    )
    .await;
    b.click(&format!("{inc} details.runbook-inline summary"))
        .await;
    let body = format!("document.querySelector(\"{inc} .runbook-body\")");
    b.wait(
        "the site's incident runbook",
        &format!(
            "{body}.dataset.state === 'loaded' \
             && {body}.querySelector('article.runbook').dataset.source === 'site' \
             && {body}.textContent.includes('Call the CAD desk')"
        ),
    )
    .await;
    let seen = b
        .js(&format!(
            "const b = {body}; return {{ \
               pwned: window.__pwned === undefined ? null : window.__pwned, \
               elements: b.querySelectorAll('script, img, iframe, style, [onerror], [onclick]').length, \
               text: b.textContent.includes('<script>window.__pwned = 1</script>') \
                 && b.textContent.includes('<img src=x onerror=\"window.__pwned = 2\">'), \
               trap: [...b.querySelectorAll('a')].filter(a => a.textContent === 'a trap').map(a => a.getAttribute('href')), \
               tel: b.querySelector('a[href^=\"tel:\"]').getAttribute('href'), \
               https: b.querySelector('a[href^=\"https:\"]').target }}"
        ))
        .await;
    assert_eq!(
        seen,
        json!({
            "pwned": null,
            "elements": 0,
            "text": true,
            "trap": [null],
            "tel": "tel:+15550100",
            "https": "_blank",
        }),
        "the site's runbook as text"
    );
    // The page's own rebuild, on markup the collector would never send:
    // only its few elements, only safe addresses, nothing runs.
    let rebuilt = b
        .js("const doc = new DOMParser().parseFromString('<article id=\"runbook\"><h2 onclick=\"x()\">Fix</h2>\
               <p>a<img src=x onerror=\"window.__pwned = 4\"><script>window.__pwned = 5</script>\
               <iframe src=\"/\"></iframe><a href=\"javascript:window.__pwned = 6\">j</a>\
               <a href=\"/runbooks/off\">off</a><a href=\"//evil.example/\">e</a></p></article>', 'text/html'); \
             const out = h('div', {}, runbookNodes(doc.getElementById('runbook'))); \
             document.body.append(out); \
             const r = { html: out.innerHTML, pwned: window.__pwned === undefined ? null : window.__pwned }; \
             out.remove(); return r")
        .await;
    assert_eq!(
        rebuilt,
        json!({
            "html": "<h2>Fix</h2><p>awindow.__pwned = 5<a>j</a>\
                     <a href=\"/runbooks/off\" target=\"_blank\" rel=\"noopener noreferrer\">off</a><a>e</a></p>",
            "pwned": null,
        }),
        "the page's rebuild of a runbook"
    );
    b.click("#detail-close").await;
    b.click("tr[data-unit='county-police/K9-2']").await;
    b.wait(
        "K9-2's runbook open again",
        &format!(
            "document.querySelector(\"{lost} details.runbook-inline\").open \
             && document.querySelector(\"{lost} .runbook-body\").dataset.state === 'loaded'"
        ),
    )
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
    // And the rollouts of its agency.
    b.wait(
        "metro-fire's rollout",
        &format!(
            "document.querySelectorAll('tr.rollout').length === 1 \
             && document.querySelector(\"{row}\").dataset.phase === 'aborted'"
        ),
    )
    .await;
    let text = b
        .js("return document.getElementById('main').textContent")
        .await;
    assert!(!text.as_str().unwrap().contains("county-police"));
    assert!(!text.as_str().unwrap().contains("K9-2"));

    // A collector in cluster mode runs no rollouts (501, not_implemented):
    // the panel hides itself, quietly. Simulated in the page: its fetch
    // answers for the rollouts as such a collector does (the reload below
    // puts the real one back).
    b.js(
        "const real = window.fetch; window.__errors = []; \
         const err = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); err(...a); }; \
         window.fetch = (url, opts) => String(url).startsWith('/api/v1/rollouts') \
           ? Promise.resolve(new Response(JSON.stringify({ error: { code: 'not_implemented', \
               message: 'rollouts are run by a single-node collector in this version' } }), \
               { status: 501, headers: { 'content-type': 'application/json' } })) \
           : real(url, opts); \
         loadRollouts(); return true",
    )
    .await;
    b.wait(
        "the Rollouts panel hidden, no error",
        &format!(
            "document.getElementById('rollouts').hidden && window.__errors.length === 0 \
             && !document.getElementById('main').hidden \
             && document.getElementById('login').hidden \
             && document.querySelectorAll('tr.unit').length === {fire}"
        ),
    )
    .await;

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

/// The site's `incident.md` in this scenario: a runbook of its own, with
/// markup and a link that must not become live in the page.
const SITE_INCIDENT: &str = "# incident at County dispatch\n\n\
Call the CAD desk on [555 0100](tel:+15550100); the [status page](https://status.example.org/cad) says what is known.\n\n\
<script>window.__pwned = 1</script>\n\n\
Inline <img src=x onerror=\"window.__pwned = 2\"> and [a trap](javascript:window.__pwned=3).\n";

pub(super) fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let d = target.join("ci-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}
