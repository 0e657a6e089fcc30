//! A runbook's suggested action in the dashboard (issue 17 part 3): who the
//! page is signed in as (`GET /api/v1/me`, a table of tokens), and in a
//! real Chromium an operator running the shipped `cad-client-down`
//! runbook's `restart-cad-client` on a flagged unit: the button under the
//! flag's runbook, its in-page confirmation, the signed request on the
//! unit's action topic, the unit's steps shown live from the stream, a
//! refusal (429) shown as text; a viewer gets no button, the admin does.
//! Screenshots: `dashboard-desktop-action.png` (the flag, its runbook and
//! the button) and `dashboard-desktop-action-done.png` (the outcome), in
//! `target/ci-artifacts/`.

use std::sync::Arc;
use std::time::Duration;

use muster_collector::clock::ManualClock;
use muster_proto::sign::{TrustedKeys, hex_of, verify_action};
use muster_proto::{
    ActionAudit, ActionRef, ActionRequest, ActionStep, BootId, HostSample, Payload, fixtures,
};
use muster_testkit::http;
use muster_testkit::webdriver::{Browser, ChromeDriver};
use muster_testkit::{CollectorToml, Mosquitto, TempDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::browser::artifacts_dir;
use super::fleet::wall_ms;
use crate::harness::*;
use crate::openapi::Validator;

const FIRE_OP: &str = "fire-operator-0123456789";
const POLICE_OP: &str = "police-operator-0123456789";
const BOOT: BootId = BootId(0xe7);
const ACTION: &str = "restart-cad-client";

/// Both agencies with an operator token, the suite's signing key (actions
/// are signed), and `extra`.
fn config(broker: &Mosquitto, dir: &std::path::Path, extra: &str) -> String {
    CollectorToml::new(ADMIN, &broker.url(), &dir.join("store"))
        .set_str("mqtt", "client_id", "collector-dashboard-action")
        .set_str("http", "sse_keep_alive", "1s")
        .agency_with(
            "metro-fire",
            FIRE,
            &format!("operator_token = \"{FIRE_OP}\"\n"),
        )
        .agency_with(
            "county-police",
            POLICE,
            &format!("operator_token = \"{POLICE_OP}\"\n"),
        )
        .signing_key_in(dir)
        .extra(extra)
        .render()
}

// ------------------------------------------------------------ /api/v1/me

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_v1_me_names_each_tokens_role_and_agency_and_refuses_no_or_a_bad_token() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let c = Collector::start(&config(&broker, dir.path(), ""), ManualClock::new(T0)).await;
    let doc = c.json("/api/v1/openapi.json", ADMIN).await;
    let mut v = Validator::new(&doc);
    let cases: &[(&str, Option<&str>, u16, Value)] = &[
        (
            "/api/v1/me",
            Some(ADMIN),
            200,
            json!({"role": "admin", "agency": null}),
        ),
        (
            "/api/v1/me",
            Some(FIRE),
            200,
            json!({"role": "viewer", "agency": "metro-fire"}),
        ),
        (
            "/api/v1/me",
            Some(FIRE_OP),
            200,
            json!({"role": "operator", "agency": "metro-fire"}),
        ),
        (
            "/api/v1/me",
            Some(POLICE),
            200,
            json!({"role": "viewer", "agency": "county-police"}),
        ),
        (
            "/api/v1/me",
            Some(POLICE_OP),
            200,
            json!({"role": "operator", "agency": "county-police"}),
        ),
        ("/api/v1/me", None, 401, json!("unauthorized")),
        (
            "/api/v1/me",
            Some("not-a-token"),
            401,
            json!("unauthorized"),
        ),
        // One character short of the operator's: no prefix match.
        (
            "/api/v1/me",
            Some("fire-operator-012345678"),
            401,
            json!("unauthorized"),
        ),
        // The token is checked before anything else; then unknown
        // parameters are refused, as on every endpoint.
        ("/api/v1/me?role=admin", None, 401, json!("unauthorized")),
        (
            "/api/v1/me?role=admin",
            Some(FIRE),
            400,
            json!("bad_request"),
        ),
    ];
    for (path, token, status, want) in cases {
        let r = http::get(c.addr, path, *token).await;
        let what = format!("GET {path} with {token:?}");
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        let body = r.json();
        if *status == 200 {
            assert_eq!(&body, want, "{what}");
            v.schema("Me", &body)
                .unwrap_or_else(|e| panic!("{what}: not the document's Me: {e}"));
        } else {
            assert_eq!(&body["error"]["code"], want, "{what}: {body}");
            v.schema("Error", &body)
                .unwrap_or_else(|e| panic!("{what}: not the document's Error: {e}"));
        }
    }
    // A bearer header of another scheme is no token.
    let raw = http::request_bytes(
        "GET",
        "/api/v1/me",
        &[("Authorization", &format!("Basic {FIRE_OP}"))],
        None,
    );
    let r = http::send(c.addr, &raw, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    // The document describes it: a 200 and a 401 for any token.
    let op = &doc["paths"]["/api/v1/me"]["get"];
    for status in ["200", "401"] {
        assert!(op["responses"][status].is_object(), "{op:#}");
    }
    c.stop().await;
}

// ------------------------------------------------------------ the button

/// A raw MQTT subscriber to one filter, collecting what it receives.
struct Listener {
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
    /// Kept: the event loop runs while a client handle lives.
    _client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Subscribed (SUBACK awaited) to `filter`.
    async fn on(port: u16, filter: &str) -> Listener {
        let mut o = MqttOptions::new("dashboard-action-listener", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut ev) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
            .await
            .expect("SUBACK")
            .unwrap();
        Listener {
            rx,
            _client: client,
            task,
        }
    }

    /// Whether nothing arrived that was not taken yet.
    fn nothing_yet(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }

    async fn next(&mut self) -> (String, Vec<u8>, bool) {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("a message on the action topic within 20 s")
            .expect("listener running")
    }
}

/// The host fixture with the CAD client's process not running.
fn cad_down() -> Payload {
    let mut h: HostSample = fixtures::host_sample();
    for p in &mut h.processes {
        if p.name == "cadclient" {
            p.running = false;
            p.pid = None;
        }
    }
    assert!(h.processes.iter().any(|p| p.name == "cadclient"));
    Payload::Host(h)
}

/// Opens a unit's view from its row once the stream is live. Clicked by
/// the page: the list re-renders when the stream's `ready` refreshes it, so
/// a row WebDriver found may be gone before its click lands.
async fn open_unit(b: &Browser, row: &str) {
    b.wait(
        "the live stream",
        "document.getElementById('live').dataset.state === 'live'",
    )
    .await;
    b.js(&format!(
        "document.querySelector(\"{row}\").click(); return true"
    ))
    .await;
    b.wait("the unit view", "!document.getElementById('detail').hidden")
        .await;
}

fn audit(r: &ActionRequest, step: ActionStep) -> Payload {
    Payload::Action(ActionAudit {
        request: Some(ActionRef {
            nonce: r.nonce,
            action: r.action.clone(),
            requested_by: r.requested_by.clone(),
            issued_ms: r.issued_ms,
        }),
        step,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_runbooks_action_from_the_dashboard_and_sees_it_live_a_viewer_gets_no_button()
 {
    // Boxed: the scenario's future is too big for a test thread's stack.
    Box::pin(action_scenario()).await;
}

async fn action_scenario() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let now = wall_ms();
    let clock = ManualClock::new(now - 60_000);
    // One request per agency per minute: a second one is refused (429).
    let text = config(&broker, dir.path(), "[actions]\nper_agency_per_min = 1\n");
    let c = Collector::start(&text, Arc::clone(&clock)).await;
    let a = Agent::connect(&broker, "dashboard-action-agent", None).await;
    let (e7, e2) = (unit("metro-fire", "E7"), unit("metro-fire", "E2"));
    // E7's CAD client is down for 35 s: the shipped `cad-client-down`
    // (critical, for 30 s), whose runbook suggests `restart-cad-client`.
    for u in [&e7, &e2] {
        a.presence(u, online(BOOT, 1, now - 60_000, true)).await;
    }
    a.record(&e7, rec(BOOT, 1, now - 60_000, cad_down())).await;
    a.record(&e2, rec(BOOT, 1, now - 60_000, host(12.0))).await;
    clock.set(now - 25_000);
    a.record(&e7, rec(BOOT, 2, now - 25_000, cad_down())).await;
    clock.set(now);
    let v = c
        .wait_unit(&e7, "cad-client-down raised", |v| {
            v["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["rule"] == "cad-client-down"))
        })
        .await;
    assert_eq!(v["status"], "critical", "{v:#}");
    let book = c.json("/api/v1/runbooks/cad-client-down", FIRE_OP).await;
    assert_eq!(book["action"], ACTION, "{book}");
    let mut topic = Listener::on(broker.port(), "muster/v1/metro-fire/E7/action").await;

    let driver = ChromeDriver::start().await;
    let b = driver.session(1440, 900).await;
    b.go(&format!("http://{}/", c.addr)).await;
    b.wait(
        "the sign-in form",
        "!document.getElementById('login').hidden",
    )
    .await;
    b.type_into("#token", FIRE_OP).await;
    b.click("#login-form button[type=submit]").await;
    let row = "tr[data-unit='metro-fire/E7']";
    b.wait(
        "E7 critical, signed in as an operator",
        &format!(
            "document.querySelector(\"{row}\").dataset.status === 'critical' \
             && document.getElementById('scope').textContent.includes('signed in as operator') \
             && document.getElementById('live').dataset.state === 'live'"
        ),
    )
    .await;
    // The page never asks through the browser's own dialogs.
    b.js(
        "window.__native = 0; window.confirm = () => { window.__native++; return true; }; \
          window.alert = () => { window.__native++; }; return true",
    )
    .await;
    open_unit(&b, row).await;
    let flag = "#detail-reasons li[data-rule='cad-client-down']";
    b.wait(
        "E7's flag",
        &format!("document.querySelector(\"{flag} details.runbook-inline summary\")"),
    )
    .await;
    b.click(&format!("{flag} details.runbook-inline summary"))
        .await;
    let slot = format!("document.querySelector(\"{flag} .runbook-action\")");
    let body = format!("document.querySelector(\"{flag} .runbook-body\")");
    b.wait(
        "the runbook with the operator's button",
        &format!(
            "{body}.dataset.state === 'loaded' \
             && {body}.querySelector('article.runbook h1').textContent.includes('cad-client-down') \
             && !{slot}.hidden && {slot}.dataset.state === 'idle' \
             && {slot}.querySelector('button.action-run').textContent === 'Run {ACTION} on E7' \
             && !{slot}.querySelector('button.action-run').disabled"
        ),
    )
    .await;
    // The unit view from its top: the unit, its flag, the runbook, the button.
    b.js("document.getElementById('detail').scrollTop = 0; return true")
        .await;
    let shots = artifacts_dir();
    b.screenshot(&shots.join("dashboard-desktop-action.png"))
        .await;

    // Asked, then cancelled: nothing is sent.
    b.click(&format!("{flag} button.action-run")).await;
    b.wait(
        "the confirmation",
        &format!(
            "{slot}.dataset.state === 'confirm' \
             && {slot}.querySelector('[role=alertdialog]').textContent.includes('Run {ACTION} on metro-fire/E7?') \
             && {slot}.querySelector('button.action-run').disabled"
        ),
    )
    .await;
    b.click(&format!("{flag} button.action-no")).await;
    b.wait(
        "cancelled",
        &format!("{slot}.dataset.state === 'idle' && !{slot}.querySelector('[role=alertdialog]')"),
    )
    .await;
    // Asked again, and confirmed.
    b.click(&format!("{flag} button.action-run")).await;
    b.wait(
        "the confirmation again",
        &format!("{slot}.querySelector('button.action-yes')"),
    )
    .await;
    b.click(&format!("{flag} button.action-yes")).await;

    // The first request on E7's action topic is the confirmed one: signed,
    // by the operator, never retained.
    let (t, payload, retain) = topic.next().await;
    assert_eq!(t, "muster/v1/metro-fire/E7/action");
    assert!(!retain);
    let req = muster_proto::decode_action(&payload).expect("an action request");
    let mut trusted = TrustedKeys::new();
    trusted
        .insert(muster_testkit::test_collector_key().public_key())
        .unwrap();
    verify_action(&trusted, &req).expect("signed by the collector");
    assert_eq!(
        (req.action.as_str(), req.requested_by.as_str(), &req.unit),
        (ACTION, "operator:metro-fire", &e7)
    );
    let nonce = hex_of(&req.nonce);
    b.wait(
        "the request, matched by its nonce",
        &format!(
            "{slot}.dataset.request === '{nonce}' && {slot}.dataset.state === 'requested' \
             && {slot}.querySelector('li[data-step=requested]').textContent.includes('requested by operator:metro-fire') \
             && {slot}.querySelector('li.pending') \
             && {slot}.querySelector('button.action-run').disabled"
        ),
    )
    .await;
    let audit_list = c.json("/api/v1/actions?unit=metro-fire/E7", FIRE_OP).await;
    let steps: Vec<(&str, &str)> = audit_list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["step"].as_str().unwrap(), i["request"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("requested", nonce.as_str())], "one request only");

    // The unit's agent reports its steps as records (its buffer): each
    // shows up on the page as it arrives, from the stream.
    clock.set(now + 300);
    a.record(
        &e7,
        rec(BOOT, 3, now + 300, audit(&req, ActionStep::Started)),
    )
    .await;
    b.wait(
        "started, live",
        &format!(
            "{slot}.dataset.state === 'started' \
             && {slot}.querySelector('li[data-step=started]') \
             && {slot}.querySelector('li.pending').textContent.includes('waiting for the unit')"
        ),
    )
    .await;
    clock.set(now + 1_600);
    let finished = ActionStep::Finished {
        exit_code: Some(0),
        timed_out: false,
        duration_ms: 1_234,
        stdout: "CadClient restarted (pid 4242)\n".into(),
        stderr: String::new(),
    };
    a.record(&e7, rec(BOOT, 4, now + 1_600, audit(&req, finished)))
        .await;
    b.wait(
        "finished, exit 0, 1.2 s",
        &format!(
            "{slot}.dataset.state === 'finished' \
             && [...{slot}.querySelectorAll('.action-steps li')].map(l => l.dataset.step).join() === 'requested,started,finished' \
             && {slot}.querySelector('li[data-step=finished] .step').textContent === 'finished, exit 0, 1.2 s' \
             && {slot}.querySelector('li[data-step=finished]').classList.contains('good') \
             && {slot}.querySelector('.action-output pre[data-stream=stdout]').textContent === 'CadClient restarted (pid 4242)\\n' \
             && !{slot}.querySelector('button.action-run').disabled"
        ),
    )
    .await;
    assert_eq!(
        b.js("return document.getElementById('live').dataset.state")
            .await,
        "live",
        "the steps came while the stream was open"
    );
    b.js(&format!(
        "document.getElementById('detail').scrollTop = 0; \
         {slot}.querySelector('.action-output').open = true; return true"
    ))
    .await;
    b.screenshot(&shots.join("dashboard-desktop-action-done.png"))
        .await;

    // The unit view re-renders on every transition: the outcome stays.
    b.js(&format!(
        "document.querySelector(\"{flag}\").dataset.old = '1'; \
         openDetail('metro-fire/E7', true); return true"
    ))
    .await;
    b.wait(
        "the outcome after a re-render",
        &format!(
            "{slot} && !document.querySelector(\"{flag}\").dataset.old \
             && {slot}.dataset.state === 'finished' \
             && {slot}.querySelector('li[data-step=finished]')"
        ),
    )
    .await;

    // Again within the minute: the agency's rate refuses it, shown as text
    // with when to try again; nothing is sent.
    b.click(&format!("{flag} button.action-run")).await;
    b.wait(
        "the confirmation, a second time",
        &format!("{slot}.querySelector('button.action-yes')"),
    )
    .await;
    b.click(&format!("{flag} button.action-yes")).await;
    b.wait(
        "the 429 as text",
        &format!(
            "{slot}.dataset.state === 'error' \
             && {slot}.querySelector('.action-error').textContent.startsWith('Too many requests (HTTP 429): ') \
             && {slot}.querySelector('.action-error').textContent.includes('per_agency_per_min') \
             && /(retry|try again) in [0-9]+ ?s/i.test({slot}.querySelector('.action-error').textContent) \
             && !{slot}.querySelector('button.action-run').disabled"
        ),
    )
    .await;
    assert!(
        !b.js("return document.getElementById('login').hidden === false")
            .await
            .as_bool()
            .unwrap(),
        "a refusal does not sign the operator out"
    );
    assert_eq!(b.js("return window.__native").await, 0, "no native dialog");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(topic.nothing_yet(), "the refused request was not sent");

    // The restart worked: E7's next sample clears the flag, and the unit
    // view keeps what was run and how it ended.
    clock.set(now + 2_000);
    a.record(&e7, rec(BOOT, 5, now + 2_000, host(12.0))).await;
    let past = format!("#detail-actions li.past-action[data-request='{nonce}']");
    b.wait(
        "the flag cleared, the outcome kept",
        &format!(
            "!document.querySelector(\"{flag}\") \
             && document.querySelector(\"{past} li[data-step=finished] .step\").textContent === 'finished, exit 0, 1.2 s' \
             && document.querySelector(\"{past}\").textContent.includes('for cad-client-down (flag cleared)')"
        ),
    )
    .await;

    // The CAD client stops again: flagged again (for the other tokens).
    for (i, t) in [now + 3_000, now + 34_000].into_iter().enumerate() {
        clock.set(t);
        a.record(&e7, rec(BOOT, 6 + i as u64, t, cad_down())).await;
    }
    c.wait_unit(&e7, "cad-client-down raised again", |v| {
        v["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["rule"] == "cad-client-down"))
    })
    .await;

    // The agency's viewer: the same flag and runbook, no button.
    b.click("#detail-close").await;
    b.click("#signout").await;
    b.type_into("#token", FIRE).await;
    b.click("#login-form button[type=submit]").await;
    b.wait(
        "signed in as the viewer",
        &format!(
            "document.getElementById('scope').textContent.includes('signed in as viewer') \
             && document.querySelector(\"{row}\")"
        ),
    )
    .await;
    open_unit(&b, row).await;
    b.wait(
        "the viewer's runbook",
        &format!("{body} && {body}.dataset.state === 'loaded'"),
    )
    .await;
    // Once the runbook's action is known to the page, it still offers none.
    b.js("window.__known = false; runbookAction('cad-client-down').then(() => { window.__known = true; }); return true")
        .await;
    b.wait("the runbook's action known", "window.__known === true")
        .await;
    let seen = b
        .js(&format!(
            "return {{ hidden: {slot}.hidden, buttons: document.querySelectorAll('#detail button.action-run').length }}"
        ))
        .await;
    assert_eq!(
        seen,
        json!({"hidden": true, "buttons": 0}),
        "a viewer sees no button"
    );

    // The admin gets it too, a minute later (past the agency's rate).
    let later = now + 100_000;
    clock.set(later);
    a.record(&e7, rec(BOOT, 8, later, cad_down())).await;
    c.wait_unit(&e7, "the sample a minute later", |v| {
        v["seq"]["received"] == 8
    })
    .await;
    b.click("#detail-close").await;
    b.click("#signout").await;
    b.type_into("#token", ADMIN).await;
    b.click("#login-form button[type=submit]").await;
    b.wait(
        "signed in as the admin",
        "document.getElementById('scope').textContent.includes('signed in as admin')",
    )
    .await;
    open_unit(&b, row).await;
    b.wait(
        "the admin's button",
        &format!(
            "{slot} && !{slot}.hidden \
             && {slot}.querySelector('button.action-run').textContent === 'Run {ACTION} on E7'"
        ),
    )
    .await;
    // Without the stream the page follows the request through the audit.
    b.js("stopStream(); setLive('down', 'disconnected'); return true")
        .await;
    b.click(&format!("{flag} button.action-run")).await;
    b.wait(
        "the admin's confirmation",
        &format!("{slot}.querySelector('button.action-yes')"),
    )
    .await;
    b.click(&format!("{flag} button.action-yes")).await;
    let (_, payload, _) = topic.next().await;
    let req = muster_proto::decode_action(&payload).expect("an action request");
    assert_eq!(req.requested_by, "admin");
    let nonce = hex_of(&req.nonce);
    a.record(
        &e7,
        rec(
            BOOT,
            9,
            later + 200,
            audit(
                &req,
                ActionStep::Failed {
                    reason: "no service named CadClient".into(),
                    duration_ms: 4,
                },
            ),
        ),
    )
    .await;
    b.wait(
        "failed, from the audit (no stream)",
        &format!(
            "!state.stream && {slot}.dataset.request === '{nonce}' && {slot}.dataset.state === 'failed' \
             && [...{slot}.querySelectorAll('.action-steps li')].map(l => l.dataset.step).join() === 'requested,failed' \
             && {slot}.querySelector('li[data-step=failed] .step').textContent === 'failed: no service named CadClient' \
             && {slot}.querySelector('li[data-step=failed]').classList.contains('bad')"
        ),
    )
    .await;

    b.close(&driver).await;
    drop(driver);
    drop(topic);
    c.stop().await;
}
