//! Actions (issue 17 parts 2 and 3) against the running collector: who may
//! issue a request (admin, the agency's operator; not a viewer, not another
//! agency's operator), the signed request on the unit's action topic, the
//! embedded broker's ACL for that topic, every step audited exactly once
//! (unit events, `/api/v1/actions`, the stream, the export) however often a
//! unit sends it, and the bounds: `max_pending`, the agency rate, the body
//! limit and the audit file's rotation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use muster_collector::actions::{Nonces, SeededNonces};
use muster_collector::clock::ManualClock;
use muster_collector::config::Config;
use muster_proto::sign::{TrustedKeys, hex_of, verify_action};
use muster_proto::{
    ActionAudit, ActionRef, ActionRefusal, ActionRequest, ActionStep, Body, BootId, Payload, UnitId,
};
use muster_testkit::http::{self, Response};
use muster_testkit::{CollectorToml, Mosquitto, TempDir, eventually};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::*;

const FIRE_OP: &str = "fire-operator-0123456789";
const POLICE_OP: &str = "police-operator-0123456789";
/// The seed of the collector's nonces in these tests.
const SEED: u64 = 17;
const BOOT: BootId = BootId(0xac71);

/// One test's collector: a broker, a store, the suite's signing key,
/// operator tokens for both agencies, nonces from [`SEED`].
struct Site {
    broker: Mosquitto,
    dir: TempDir,
    clock: Arc<ManualClock>,
    c: Option<Collector>,
    extra: String,
}

fn config_text(broker_url: &str, dir: &std::path::Path, extra: &str) -> String {
    CollectorToml::new(ADMIN, broker_url, &dir.join("store"))
        .set_str("mqtt", "client_id", "collector-actions")
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

fn seeded() -> Option<Arc<dyn Nonces>> {
    Some(Arc::new(SeededNonces::new(SEED)))
}

impl Site {
    async fn start(extra: &str) -> Site {
        let broker = Mosquitto::start();
        let dir = TempDir::new().unwrap();
        let mut s = Site {
            broker,
            dir,
            clock: ManualClock::new(T0),
            c: None,
            extra: extra.to_owned(),
        };
        s.start_collector().await;
        s
    }

    async fn start_collector(&mut self) {
        let text = config_text(&self.broker.url(), self.dir.path(), &self.extra);
        let cfg = Config::parse(&text).expect("test config is valid");
        self.c =
            Some(Collector::start_cfg(cfg, self.clock.clone(), Default::default(), seeded()).await);
    }

    fn c(&self) -> &Collector {
        self.c.as_ref().expect("collector running")
    }

    /// A test agent that made `units` known to the collector (a record each).
    async fn agent_with(&self, units: &[&UnitId]) -> Agent {
        let a = Agent::connect(&self.broker, "actions-agent", None).await;
        for u in units {
            a.record(u, rec(BOOT, 1, T0, host(10.0))).await;
        }
        for u in units {
            a.wait_acked(u, BOOT, [1]).await;
        }
        a
    }
}

fn e(agency: &str, u: &str) -> UnitId {
    unit(agency, u)
}

fn path(u: &UnitId) -> String {
    format!("/api/v1/units/{}/{}/actions", u.agency, u.unit)
}

async fn ask(c: &Collector, token: &str, u: &UnitId, body: &Value) -> Response {
    http::post(c.addr, &path(u), Some(token), body.to_string().as_bytes()).await
}

/// What a raw MQTT subscriber received: topic, payload, retain, QoS.
type Got = (String, Vec<u8>, bool, QoS);

/// A raw MQTT 3.1.1 client subscribed to `filter` (SUBACK awaited; its
/// return code is the second value).
struct Listener {
    rx: mpsc::UnboundedReceiver<Got>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    async fn connect(
        port: u16,
        id: &str,
        login: Option<(&str, &str)>,
    ) -> (Listener, mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>) {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        let (client, mut ev) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain, p.qos));
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = sub_tx.send(s.return_codes.clone());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        (Listener { rx, client, task }, sub_rx)
    }

    /// Subscribed to `filter` on an open broker.
    async fn on(port: u16, filter: &str) -> Listener {
        let (l, mut subs) = Listener::connect(port, "actions-listener", None).await;
        l.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let codes = tokio::time::timeout(Duration::from_secs(10), subs.recv())
            .await
            .expect("SUBACK")
            .unwrap();
        assert!(
            matches!(codes[0], SubscribeReasonCode::Success(_)),
            "{codes:?}"
        );
        l
    }

    async fn next(&mut self) -> Got {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("a message on the action topic within 20 s")
            .expect("listener running")
    }
}

/// The suite's collector key, trusted.
fn trusted() -> TrustedKeys {
    let mut t = TrustedKeys::new();
    t.insert(muster_testkit::test_collector_key().public_key())
        .unwrap();
    t
}

/// A request as the unit receives it, checked: decoded within bounds,
/// signed by the suite's collector key, never retained, QoS 1.
fn signed(got: &Got, u: &UnitId) -> ActionRequest {
    let (topic, payload, retain, qos) = got;
    assert_eq!(topic, &format!("muster/v1/{}/{}/action", u.agency, u.unit));
    assert!(!retain, "an action request is never retained");
    assert_eq!(*qos, QoS::AtLeastOnce);
    let r = muster_proto::decode_action(payload).expect("an action request");
    assert_eq!(&r.unit, u, "bound to its unit");
    verify_action(&trusted(), &r).expect("signed by the collector's key");
    r
}

/// `/api/v1/actions` items as (step, request) for a unit, newest first.
async fn steps(c: &Collector, u: &UnitId) -> Vec<(String, Option<String>)> {
    let v = c
        .json(
            &format!("/api/v1/actions?unit={}/{}&limit=1000", u.agency, u.unit),
            ADMIN,
        )
        .await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["step"].as_str().unwrap().to_owned(),
                i["request"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Waits until `/api/v1/actions` for `u` holds `want` steps (newest first).
async fn wait_steps(c: &Collector, u: &UnitId, want: &[&str]) -> Vec<(String, Option<String>)> {
    eventually(
        &format!("{u}: steps {want:?}"),
        Duration::from_secs(20),
        async || {
            let got = steps(c, u).await;
            let names: Vec<&str> = got.iter().map(|(s, _)| s.as_str()).collect();
            if names == want { Ok(got) } else { Err(got) }
        },
    )
    .await
}

/// The export's lines, parsed.
async fn export(c: &Collector) -> Vec<Value> {
    let r = c.get("/api/v1/actions/export", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    r.text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn audit(nonce: [u8; 16], action: &str, by: &str, issued_ms: u64, step: ActionStep) -> Payload {
    Payload::Action(ActionAudit {
        request: Some(ActionRef {
            nonce,
            action: action.into(),
            requested_by: by.into(),
            issued_ms,
        }),
        step,
    })
}

fn nonce_of(hex: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (i, b) in n.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    n
}

// ------------------------------------------------------------ who may ask

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_token_is_refused_403_counted_and_audited_and_nothing_is_sent() {
    let s = Site::start("").await;
    let c = s.c();
    let e1 = e("metro-fire", "E1");
    let _a = s.agent_with(&[&e1]).await;
    let mut topic = Listener::on(s.broker.port(), "muster/v1/+/+/action").await;

    let r = ask(c, FIRE, &e1, &json!({"action": "restart-cad-client"})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "forbidden");
    assert_eq!(
        c.metric("muster_actions_api_refused_total{reason=\"viewer\"}")
            .await,
        1.0
    );
    // Audited: a `denied` step naming who and what, in the unit's events.
    wait_steps(c, &e1, &["denied"]).await;
    let v = c.json("/api/v1/actions?unit=metro-fire/E1", FIRE).await;
    let d = &v["items"][0];
    assert_eq!(
        (&d["requested_by"], &d["action"], &d["reason"]),
        (
            &json!("viewer:metro-fire"),
            &json!("restart-cad-client"),
            &json!("viewer")
        ),
        "{d}"
    );
    assert!(d.get("request").is_none(), "nothing was issued: {d}");
    let ev = c.json("/api/v1/events?unit=metro-fire/E1", FIRE).await;
    assert!(
        ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["type"] == "action" && i["step"] == "denied"),
        "{ev}"
    );
    // Nothing went out: the first request on any action topic is the
    // admin's, issued after the refusal (the witness).
    let r = ask(c, ADMIN, &e1, &json!({"action": "restart-cad-client"})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let req = signed(&topic.next().await, &e1);
    assert_eq!(req.requested_by, "admin");
    assert_eq!(
        c.metric("muster_actions_requested_total{requested_by_kind=\"admin\"}")
            .await,
        1.0
    );
    s.c.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agencys_operator_is_refused_403_counted_and_audited_and_nothing_is_sent() {
    let s = Site::start("").await;
    let c = s.c();
    let (e1, p1) = (e("metro-fire", "E1"), e("county-police", "P1"));
    let _a = s.agent_with(&[&e1, &p1]).await;
    let mut topic = Listener::on(s.broker.port(), "muster/v1/+/+/action").await;

    // The police operator, on a fire unit: 403, as every endpoint answers a
    // token asking about another agency's units.
    let r = ask(c, POLICE_OP, &e1, &json!({"action": "flush-dns"})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "forbidden");
    assert_eq!(
        c.metric("muster_actions_api_refused_total{reason=\"other_agency\"}")
            .await,
        1.0
    );
    wait_steps(c, &e1, &["denied"]).await;
    let v = c.json("/api/v1/actions?unit=metro-fire/E1", ADMIN).await;
    assert_eq!(v["items"][0]["requested_by"], "operator:county-police");
    assert_eq!(v["items"][0]["reason"], "other_agency");
    // The police tokens do not read fire's audit either.
    let r = c.get("/api/v1/actions?agency=metro-fire", POLICE_OP).await;
    assert_eq!(r.status, 403);
    let v = c.json("/api/v1/actions", POLICE).await;
    assert_eq!(v["items"], json!([]), "an agency's listing is its own");
    // The same token on its own unit: 202, and that is the first request on
    // any action topic (the witness that the refused one never went out).
    let r = ask(c, POLICE_OP, &p1, &json!({"action": "flush-dns"})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let req = signed(&topic.next().await, &p1);
    assert_eq!(req.requested_by, "operator:county-police");
    s.c.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_own_operator_get_202_and_a_signed_request_on_the_units_action_topic() {
    let s = Site::start("").await;
    let c = s.c();
    let e1 = e("metro-fire", "E1");
    let _a = s.agent_with(&[&e1]).await;
    let mut topic = Listener::on(s.broker.port(), "muster/v1/metro-fire/E1/action").await;
    // The nonces the collector draws: its injected, seeded source.
    let expected = SeededNonces::new(SEED);

    let mut seen = BTreeSet::new();
    let asks = [
        (
            FIRE_OP,
            json!({"action": "restart-cad-client", "params": {"mode": "soft"}, "ttl_ms": 30_000}),
            "operator:metro-fire",
            30_000,
        ),
        (ADMIN, json!({"action": "flush-dns"}), "admin", 60_000),
        (
            FIRE_OP,
            json!({"action": "restart-cad-client", "params": {"mode": "soft"}, "ttl_ms": 30_000}),
            "operator:metro-fire",
            30_000,
        ),
    ];
    for (i, (token, body, by, ttl)) in asks.iter().enumerate() {
        let now = T0 + 1_000 * i as u64;
        s.clock.set(now);
        let r = ask(c, token, &e1, body).await;
        assert_eq!(r.status, 202, "{}", r.text());
        let answer = r.json();
        let req = signed(&topic.next().await, &e1);
        assert_eq!(req.action, body["action"].as_str().unwrap());
        assert_eq!(req.requested_by, *by);
        let params: BTreeMap<&str, &str> = req
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect();
        let want: BTreeMap<&str, &str> = body["params"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(params, want);
        // Issued by the collector's clock, valid `ttl`, named by its nonce.
        assert_eq!((req.issued_ms, req.expires_ms), (now, now + ttl));
        assert_eq!(answer["expires_ms"], req.expires_ms);
        assert_eq!(answer["request"], hex_of(&req.nonce));
        assert_eq!(Some(req.nonce), expected.nonce(), "the injected source's");
        assert!(seen.insert(req.nonce), "a fresh nonce each time");
    }
    // An identical request (same action, params, ttl, by) is a new one:
    // not coalesced, not deduplicated.
    assert_eq!(seen.len(), 3);
    // Each is a `requested` step of the unit.
    let got = wait_steps(c, &e1, &["requested", "requested", "requested"]).await;
    let logged: BTreeSet<[u8; 16]> = got
        .iter()
        .map(|(_, r)| nonce_of(r.as_deref().unwrap()))
        .collect();
    assert_eq!(logged, seen);
    for (kind, n) in [("operator", 2.0), ("admin", 1.0), ("auto", 0.0)] {
        let m = format!("muster_actions_requested_total{{requested_by_kind=\"{kind}\"}}");
        assert_eq!(c.metric(&m).await, n, "{m}");
    }
    assert_eq!(c.metric("muster_actions_pending ").await, 3.0);
    // A signature does not move: another key, or another unit, fails.
    let mut other = TrustedKeys::new();
    other
        .insert(muster_proto::SigningKey::from_seed(&[9; 32]).public_key())
        .unwrap();
    let mut req = muster_proto::decode_action(&{
        let r = ask(c, ADMIN, &e1, &json!({"action": "flush-dns"})).await;
        assert_eq!(r.status, 202);
        topic.next().await.1
    })
    .unwrap();
    assert!(verify_action(&other, &req).is_err());
    req.unit = e("metro-fire", "E2");
    assert!(verify_action(&trusted(), &req).is_err());
    s.c.unwrap().stop().await;
}

// ------------------------------------------------------------ the broker

/// The collector on the embedded broker (as `run --embedded-broker`), with
/// units E1 and E2 of metro-fire listed with their passwords.
async fn embedded(
    dir: &std::path::Path,
    clock: Arc<ManualClock>,
) -> (Collector, muster_collector::broker::EmbeddedBroker) {
    use muster_collector::broker::EmbeddedBroker;
    use muster_collector::broker::auth::{
        Authenticator, FleetCredentials, StaticUnitCredentials, UnitCredentials,
    };
    let sha = |p: &str| hex_of(ring::digest::digest(&ring::digest::SHA256, p.as_bytes()).as_ref());
    let extra = format!(
        "[[broker.unit]]\nname = \"metro-fire/E1\"\npassword_sha256 = \"{}\"\n\
         [[broker.unit]]\nname = \"metro-fire/E2\"\npassword_sha256 = \"{}\"\n",
        sha("e1-secret-0123456789"),
        sha("e2-secret-0123456789")
    );
    let mut cfg = Config::parse(&config_text("mqtt://127.0.0.1:1", dir, &extra)).unwrap();
    let units = Arc::new(FleetCredentials::new(StaticUnitCredentials::from_config(
        &cfg.broker.units,
    )));
    let auth = Authenticator::new(
        Arc::clone(&units) as Arc<dyn UnitCredentials>,
        cfg.agencies.clone(),
    );
    let b = EmbeddedBroker::start(
        "127.0.0.1:0".parse().unwrap(),
        &cfg.broker,
        auth,
        Duration::from_secs(10),
    )
    .await
    .expect("the embedded broker starts");
    b.configure_collector(&mut cfg.mqtt);
    let wiring = muster_collector::app::Wiring {
        broker: Some((units, Arc::clone(&b.metrics))),
        ..Default::default()
    };
    (Collector::start_cfg(cfg, clock, wiring, seeded()).await, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_lets_a_unit_read_only_its_own_action_topic_and_never_write_it() {
    let dir = TempDir::new().unwrap();
    let (c, b) = embedded(dir.path(), ManualClock::new(T0)).await;
    let port = b.addr.port();
    let e1 = e("metro-fire", "E1");
    let (mut unit1, mut subacks) =
        Listener::connect(port, "e1", Some(("metro-fire/E1", "e1-secret-0123456789"))).await;
    // Known to the collector: a record on its own telemetry topic.
    let msg = muster_proto::Message {
        unit: e1.clone(),
        body: Body::Record(rec(BOOT, 1, T0, host(10.0))),
    };
    unit1
        .client
        .publish(
            "muster/v1/metro-fire/E1/telemetry",
            QoS::AtLeastOnce,
            false,
            muster_proto::encode(&msg).unwrap(),
        )
        .await
        .unwrap();
    c.wait_unit(&e1, "known", |v| v["seq"]["received"] == 1)
        .await;

    // Another unit's action topic, or a wildcard over them: refused (0x80).
    for filter in [
        "muster/v1/metro-fire/E2/action",
        "muster/v1/metro-fire/+/action",
        "muster/v1/+/+/action",
    ] {
        unit1
            .client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let codes = tokio::time::timeout(Duration::from_secs(10), subacks.recv())
            .await
            .expect("SUBACK")
            .unwrap();
        assert_eq!(codes, [SubscribeReasonCode::Failure], "{filter}");
    }
    // Its own: allowed.
    unit1
        .client
        .subscribe("muster/v1/metro-fire/E1/action", QoS::AtLeastOnce)
        .await
        .unwrap();
    let codes = subacks.recv().await.unwrap();
    assert!(
        matches!(codes[0], SubscribeReasonCode::Success(_)),
        "{codes:?}"
    );
    let denied = "muster_broker_refused_total{reason=\"publish_denied\"}";
    let before = c.metric(denied).await;
    // It may not write its own action topic (not even with a request it
    // made up): refused and counted by the gate.
    unit1
        .client
        .publish(
            "muster/v1/metro-fire/E1/action",
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .unwrap();
    c.wait_metric(denied, |v| v == before + 1.0).await;
    // The first message on its own action topic is the collector's signed
    // request, issued after the forgery (so the forgery never arrived).
    let r = ask(&c, FIRE_OP, &e1, &json!({"action": "restart-cad-client"})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let got = unit1.next().await;
    let req = signed(&got, &e1);
    assert_eq!(req.requested_by, "operator:metro-fire");
    // E2 does not get E1's requests (its own topic stays empty; the
    // witness is its own request, which is the first it gets).
    let (mut unit2, mut subacks2) =
        Listener::connect(port, "e2", Some(("metro-fire/E2", "e2-secret-0123456789"))).await;
    unit2
        .client
        .subscribe("muster/v1/metro-fire/E2/action", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(matches!(
        subacks2.recv().await.unwrap()[0],
        SubscribeReasonCode::Success(_)
    ));
    let e2 = e("metro-fire", "E2");
    let msg = muster_proto::Message {
        unit: e2.clone(),
        body: Body::Record(rec(BOOT, 1, T0, host(10.0))),
    };
    unit2
        .client
        .publish(
            "muster/v1/metro-fire/E2/telemetry",
            QoS::AtLeastOnce,
            false,
            muster_proto::encode(&msg).unwrap(),
        )
        .await
        .unwrap();
    c.wait_unit(&e2, "known", |v| v["seq"]["received"] == 1)
        .await;
    let r = ask(&c, FIRE_OP, &e1, &json!({"action": "flush-dns"})).await;
    assert_eq!(r.status, 202);
    assert_eq!(signed(&unit1.next().await, &e1).action, "flush-dns");
    let r = ask(&c, ADMIN, &e2, &json!({"action": "flush-dns"})).await;
    assert_eq!(r.status, 202);
    assert_eq!(signed(&unit2.next().await, &e2).requested_by, "admin");
    c.stop().await;
    b.stop().await;
}

// ------------------------------------------------------------ the audit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_units_audit_records_are_logged_once_in_its_events_the_list_the_stream_and_the_export() {
    let s = Site::start("").await;
    let c = s.c();
    let (e1, e2) = (e("metro-fire", "E1"), e("metro-fire", "E2"));
    let a = s.agent_with(&[&e1, &e2]).await;
    let mut stream = c.stream(FIRE).await;
    let r = ask(c, FIRE_OP, &e1, &json!({"action": "restart-cad-client"})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let hex = r.json()["request"].as_str().unwrap().to_owned();
    let nonce = nonce_of(&hex);
    let by = "operator:metro-fire";
    let step = |s: ActionStep| audit(nonce, "restart-cad-client", by, T0, s);
    wait_steps(c, &e1, &["requested"]).await;
    assert_eq!(c.metric("muster_actions_pending ").await, 1.0);

    // Another unit naming E1's nonce answers nothing (logged as its own).
    let forged = step(ActionStep::Refused {
        reason: ActionRefusal::Replayed,
        detail: String::new(),
    });
    a.record(&e2, rec(BOOT, 2, T0 + 50, forged)).await;
    a.wait_acked(&e2, BOOT, [2]).await;
    wait_steps(c, &e2, &["refused"]).await;
    assert_eq!(
        c.metric("muster_actions_pending ").await,
        1.0,
        "still pending"
    );

    // E1's agent: started, then finished; the finished record twice, then
    // the whole backlog again as a replay batch.
    let started = rec(BOOT, 2, T0 + 100, step(ActionStep::Started));
    let finished = rec(
        BOOT,
        3,
        T0 + 1_300,
        step(ActionStep::Finished {
            exit_code: Some(0),
            timed_out: false,
            duration_ms: 1_200,
            stdout: "cadclient restarted\n".into(),
            stderr: String::new(),
        }),
    );
    a.record(&e1, started.clone()).await;
    a.record(&e1, finished.clone()).await;
    a.record(&e1, finished.clone()).await;
    a.send(&e1, Body::Batch(vec![started, finished])).await;
    a.wait_acked(&e1, BOOT, [2, 3]).await;
    // A record after all of those: once it is in, they all were handled.
    a.record(&e1, rec(BOOT, 4, T0 + 1_400, host(11.0))).await;
    c.wait_unit(&e1, "all in", |v| v["seq"]["received"] == 4)
        .await;

    // Once each, newest first, in the list...
    let got = wait_steps(c, &e1, &["finished", "started", "requested"]).await;
    assert!(
        got.iter().all(|(_, r)| r.as_deref() == Some(hex.as_str())),
        "{got:?}"
    );
    let v = c.json("/api/v1/actions?unit=metro-fire/E1", FIRE_OP).await;
    let fin = &v["items"][0];
    assert_eq!(fin["exit_code"], 0, "{fin}");
    assert_eq!(fin["stdout"], "cadclient restarted\n");
    assert_eq!(fin["record"]["seq"], 3);
    assert_eq!(
        fin["summary"],
        "restart-cad-client finished: exit 0 in 1.2s"
    );
    // ...in the unit's events...
    let ev = c.json("/api/v1/events?unit=metro-fire/E1", FIRE).await;
    let actions: Vec<&str> = ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "action")
        .map(|i| i["step"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["finished", "started", "requested"], "{ev}");
    // ...and as the unit's samples.
    let sm = c
        .json("/api/v1/units/metro-fire/E1/samples?kind=action", FIRE)
        .await;
    assert_eq!(sm["items"].as_array().unwrap().len(), 2, "{sm}");
    // Counted once each; no longer pending.
    for (st, n) in [
        ("started", 1.0),
        ("finished", 1.0),
        ("refused", 1.0),
        ("failed", 0.0),
    ] {
        let m = format!("muster_action_steps_total{{step=\"{st}\"}}");
        assert_eq!(c.metric(&m).await, n, "{m}");
    }
    assert_eq!(
        c.metric("muster_action_refusals_total{reason=\"replayed\"}")
            .await,
        1.0
    );
    assert_eq!(c.metric("muster_actions_pending ").await, 0.0);
    // On the stream, once each, with the event ids of the list.
    let mut streamed = Vec::new();
    while streamed.len() < 4 {
        let (ev, _) = stream
            .wait_for(Duration::from_secs(20), |e| e.event == "action")
            .await;
        let ev = ev.expect("action events on the stream");
        let j = ev.json();
        assert_eq!(ev.id.as_deref(), Some(j["id"].to_string().as_str()));
        streamed.push((
            j["unit"].as_str().unwrap().to_owned(),
            j["step"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        streamed,
        [
            ("E1".into(), "requested".into()),
            ("E2".into(), "refused".into()),
            ("E1".into(), "started".into()),
            ("E1".into(), "finished".into()),
        ]
    );
    // In the export, each id once, the three steps of the request once.
    let lines = eventually(
        "the export has the finish",
        Duration::from_secs(20),
        async || {
            let l = export(c).await;
            if l.iter().any(|x| x["step"] == "finished") {
                Ok(l)
            } else {
                Err(l)
            }
        },
    )
    .await;
    let ids: Vec<u64> = lines.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, once each: {ids:?}"
    );
    let of_request: Vec<&str> = lines
        .iter()
        .filter(|l| l["request"] == hex.as_str() && l["unit"] == "E1")
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    assert_eq!(of_request, ["requested", "started", "finished"]);
    // Only the admin exports.
    for token in [FIRE, FIRE_OP] {
        assert_eq!(c.get("/api/v1/actions/export", token).await.status, 403);
    }
    s.c.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_no_answer_expires_unanswered_once_also_across_a_restart() {
    let mut s = Site::start("").await;
    let e1 = e("metro-fire", "E1");
    let _a = s.agent_with(&[&e1]).await;
    let ask_ttl = async |c: &Collector, ttl: u64| {
        let r = ask(
            c,
            ADMIN,
            &e1,
            &json!({"action": "flush-dns", "ttl_ms": ttl}),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["request"].as_str().unwrap().to_owned()
    };
    let first = ask_ttl(s.c(), 1_000).await;
    wait_steps(s.c(), &e1, &["requested"]).await;
    s.clock.set(T0 + 1_000);
    let got = wait_steps(s.c(), &e1, &["expired_unanswered", "requested"]).await;
    assert_eq!(got[0].1.as_deref(), Some(first.as_str()));
    assert_eq!(s.c().metric("muster_actions_unanswered_total").await, 1.0);
    // A witness: a second one expires after it; by then the first would
    // have been logged again if it were going to be.
    let second = ask_ttl(s.c(), 1_000).await;
    s.clock.set(T0 + 2_000);
    let got = wait_steps(
        s.c(),
        &e1,
        &[
            "expired_unanswered",
            "requested",
            "expired_unanswered",
            "requested",
        ],
    )
    .await;
    assert_eq!(got[0].1.as_deref(), Some(second.as_str()));
    // Pending at a restart: it expires after it, once.
    let third = ask_ttl(s.c(), 60_000).await;
    wait_steps(
        s.c(),
        &e1,
        &[
            "requested",
            "expired_unanswered",
            "requested",
            "expired_unanswered",
            "requested",
        ],
    )
    .await;
    s.c.take().unwrap().stop().await;
    s.start_collector().await;
    assert_eq!(
        s.c().metric("muster_actions_pending ").await,
        1.0,
        "restored"
    );
    s.clock.set(T0 + 62_000);
    let got = wait_steps(
        s.c(),
        &e1,
        &[
            "expired_unanswered",
            "requested",
            "expired_unanswered",
            "requested",
            "expired_unanswered",
            "requested",
        ],
    )
    .await;
    assert_eq!(got[0].1.as_deref(), Some(third.as_str()));
    assert_eq!(s.c().metric("muster_actions_unanswered_total").await, 1.0);
    // The export after the restart: every id once.
    let lines = eventually(
        "the export caught up",
        Duration::from_secs(20),
        async || {
            let l = export(s.c()).await;
            if l.len() == 6 { Ok(l) } else { Err(l.len()) }
        },
    )
    .await;
    let ids: BTreeSet<u64> = lines.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 6);
    s.c.take().unwrap().stop().await;
}

// ------------------------------------------------------------ the bounds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_pending_is_429_with_retry_after_until_a_unit_answers() {
    let s = Site::start("[actions]\nmax_pending = 2\n").await;
    let c = s.c();
    let e1 = e("metro-fire", "E1");
    let a = s.agent_with(&[&e1]).await;
    let body = json!({"action": "restart-cad-client"});
    let mut issued = Vec::new();
    for _ in 0..2 {
        let r = ask(c, FIRE_OP, &e1, &body).await;
        assert_eq!(r.status, 202, "{}", r.text());
        issued.push(r.json()["request"].as_str().unwrap().to_owned());
    }
    for token in [FIRE_OP, ADMIN] {
        let r = ask(c, token, &e1, &body).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "too_many_requests");
        assert!(r.text().contains("actions.max_pending"), "{}", r.text());
        // Until the first pending one expires: its 60 s.
        assert_eq!(r.header("retry-after"), Some("60"));
    }
    assert_eq!(
        c.metric("muster_actions_api_refused_total{reason=\"max_pending\"}")
            .await,
        2.0
    );
    assert_eq!(c.metric("muster_actions_pending ").await, 2.0);
    // The unit refuses the first: room for one more.
    let n = nonce_of(&issued[0]);
    let refused = audit(
        n,
        "restart-cad-client",
        "operator:metro-fire",
        T0,
        ActionStep::Refused {
            reason: ActionRefusal::UnknownAction,
            detail: "no such [[action]]".into(),
        },
    );
    a.record(&e1, rec(BOOT, 2, T0 + 10, refused)).await;
    c.wait_metric("muster_actions_pending ", |v| v == 1.0).await;
    let r = ask(c, FIRE_OP, &e1, &body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(ask(c, FIRE_OP, &e1, &body).await.status, 429);
    s.c.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_past_its_rate_per_minute_is_429_and_others_are_not() {
    let s = Site::start("[actions]\nper_agency_per_min = 2\n").await;
    let c = s.c();
    let (e1, p1) = (e("metro-fire", "E1"), e("county-police", "P1"));
    let _a = s.agent_with(&[&e1, &p1]).await;
    let body = json!({"action": "flush-dns"});
    for _ in 0..2 {
        assert_eq!(ask(c, FIRE_OP, &e1, &body).await.status, 202);
    }
    s.clock.set(T0 + 20_000);
    let r = ask(c, ADMIN, &e1, &body).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.text().contains("actions.per_agency_per_min"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), Some("40"));
    assert_eq!(
        ask(c, POLICE_OP, &p1, &body).await.status,
        202,
        "its own rate"
    );
    assert_eq!(
        c.metric("muster_actions_api_refused_total{reason=\"rate_limited\"}")
            .await,
        1.0
    );
    s.clock.set(T0 + 60_000);
    assert_eq!(ask(c, FIRE_OP, &e1, &body).await.status, 202);
    s.c.unwrap().stop().await;
}

/// The limit, written out (`feed::actions::MAX_BODY_BYTES`).
const LIMIT: usize = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_exactly_the_limit_is_taken_and_one_byte_more_is_413() {
    let s = Site::start("").await;
    let c = s.c();
    let e1 = e("metro-fire", "E1");
    let _a = s.agent_with(&[&e1]).await;
    // Sixteen parameters of 256 bytes: the largest a request carries.
    let params: serde_json::Map<String, Value> = (0..16)
        .map(|i| (format!("p{i:02}"), json!("v".repeat(256))))
        .collect();
    let padded = |len: usize| {
        let mut b = json!({"action": "restart-cad-client", "params": params})
            .to_string()
            .into_bytes();
        assert!(b.len() < len, "{}", b.len());
        b.resize(len, b' ');
        b
    };
    let post = async |b: Vec<u8>| {
        let auth = format!("Bearer {FIRE_OP}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ];
        let raw = http::request_bytes("POST", &path(&e1), &headers, Some(&b));
        http::send(c.addr, &raw, Duration::from_secs(20))
            .await
            .unwrap()
    };
    let r = post(padded(LIMIT)).await;
    assert_eq!(r.status, 202, "exactly the limit: {}", r.text());
    let r = post(padded(LIMIT + 1)).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    assert_eq!(
        c.metric("muster_actions_api_refused_total{reason=\"too_large\"}")
            .await,
        1.0
    );
    // Bad bodies and names: 400 saying what.
    for (body, says) in [
        (json!({"action": "Restart CAD"}), "action name"),
        (
            json!({"action": "x", "params": {"a": 1}}),
            "the body is not",
        ),
        (json!({"action": "x", "ttl_ms": 900_001}), "ttl_ms 900001"),
        (
            json!({"action": "x", "params": {"v": "x".repeat(257)}}),
            "the limit is 256",
        ),
    ] {
        let r = ask(c, FIRE_OP, &e1, &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(says),
            "{}",
            r.text()
        );
    }
    // An unknown unit: 404.
    let r = ask(
        c,
        FIRE_OP,
        &e("metro-fire", "NOPE"),
        &json!({"action": "x"}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    s.c.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_rotates_at_its_bound_keeps_one_previous_file_and_counts_what_it_drops() {
    let s = Site::start("[actions]\naudit_max_bytes = \"4KiB\"\n").await;
    let c = s.c();
    let e1 = e("metro-fire", "E1");
    let a = s.agent_with(&[&e1]).await;
    let dir = s.dir.path().join("store").join("actions");
    // Ten requests, each finished with 1.5 KiB of output: about two steps a
    // file.
    let mut seq = 1;
    for i in 0..10u64 {
        let r = ask(c, ADMIN, &e1, &json!({"action": "flush-dns"})).await;
        assert_eq!(r.status, 202, "{}", r.text());
        let n = nonce_of(r.json()["request"].as_str().unwrap());
        seq += 1;
        let done = audit(
            n,
            "flush-dns",
            "admin",
            T0,
            ActionStep::Finished {
                exit_code: Some(0),
                timed_out: false,
                duration_ms: i,
                stdout: "x".repeat(1_500),
                stderr: String::new(),
            },
        );
        a.record(&e1, rec(BOOT, seq, T0 + i, done)).await;
    }
    // All twenty steps are in the store's listing...
    let all = eventually("twenty steps", Duration::from_secs(20), async || {
        let v = c.json("/api/v1/actions?limit=1000", ADMIN).await;
        let items = v["items"].as_array().unwrap().clone();
        if items.len() == 20 {
            Ok(items)
        } else {
            Err(items.len())
        }
    })
    .await;
    let last = all[0]["id"].as_u64().unwrap();
    // ...and the file has followed to the newest.
    let lines = eventually(
        "the export has the newest",
        Duration::from_secs(20),
        async || {
            let l = export(c).await;
            if l.last().and_then(|x| x["id"].as_u64()) == Some(last) {
                Ok(l)
            } else {
                Err(l.len())
            }
        },
    )
    .await;
    for f in ["audit.jsonl", "audit.jsonl.1"] {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= 4096, "{f}: {len} bytes over the 4 KiB bound");
    }
    assert!(!dir.join("audit.jsonl.2").exists(), "one previous file");
    // The drop is counted once the append that rotated returns, which may
    // be just after the export shows its entries.
    let kept = lines.len() as f64;
    let dropped = eventually("the drops counted", Duration::from_secs(20), async || {
        let d = c.metric("muster_actions_audit_dropped_total").await;
        if kept + d >= 20.0 { Ok(d) } else { Err(d) }
    })
    .await;
    assert!(dropped > 0.0, "rotation dropped nothing?");
    // What is kept plus what was dropped is every step, the newest kept, in
    // order.
    assert_eq!(lines.len() as f64 + dropped, 20.0, "{} kept", lines.len());
    let ids: Vec<u64> = lines.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let newest: Vec<u64> = all
        .iter()
        .take(ids.len())
        .map(|i| i["id"].as_u64().unwrap())
        .rev()
        .collect();
    assert_eq!(ids, newest, "the newest steps are the ones kept");
    let bytes = c.metric("muster_actions_audit_bytes").await;
    assert!(bytes > 0.0 && bytes <= 8192.0, "{bytes}");
    s.c.unwrap().stop().await;
}

/// A unit's MQTT connection with its user name (the shipped ACL's `%u`),
/// its record in, so the collector knows it.
async fn unit_on(
    port: u16,
    u: &UnitId,
    c: &Collector,
) -> (Listener, mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>) {
    let user = format!("{}/{}", u.agency, u.unit);
    let (l, subs) = Listener::connect(
        port,
        &user.replace('/', "-"),
        Some((&user, "unused-password-0123")),
    )
    .await;
    let msg = muster_proto::Message {
        unit: u.clone(),
        body: Body::Record(rec(BOOT, 1, T0, host(10.0))),
    };
    let topic = format!("muster/v1/{user}/telemetry");
    l.client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            muster_proto::encode(&msg).unwrap(),
        )
        .await
        .unwrap();
    c.wait_unit(u, "known", |v| v["seq"]["received"] == 1).await;
    (l, subs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_mosquitto_acl_lets_a_unit_read_only_its_own_requests_and_only_the_collector_write_them()
 {
    let acl = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/mosquitto/acl");
    // The shipped ACL, by user name; no password file, so any password
    // (the e2e suite runs it with certificates).
    let broker = Mosquitto::start_with(muster_testkit::MosquittoOptions {
        extra: vec![format!("acl_file {acl}")],
        ..Default::default()
    });
    let dir = TempDir::new().unwrap();
    let mut text = config_text(&broker.url(), dir.path(), "");
    text = text.replacen(
        "[mqtt]\n",
        "[mqtt]\nusername = \"muster-collector\"\npassword = \"unused-password-0123\"\n",
        1,
    );
    let cfg = Config::parse(&text).unwrap();
    let c = Collector::start_cfg(cfg, ManualClock::new(T0), Default::default(), seeded()).await;
    let (e1, e2) = (e("metro-fire", "E1"), e("metro-fire", "E2"));
    let (mut unit1, mut subs) = unit_on(broker.port(), &e1, &c).await;
    let (_unit2, _) = unit_on(broker.port(), &e2, &c).await;
    // E1 asks for its own requests and for E2's; Mosquitto grants both
    // (3.1.1) and delivers only what the ACL lets it read.
    for f in [
        "muster/v1/metro-fire/E1/action",
        "muster/v1/metro-fire/E2/action",
    ] {
        unit1.client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        subs.recv().await.unwrap();
    }
    // E1 forges a request on its own topic: the broker drops it.
    unit1
        .client
        .publish(
            "muster/v1/metro-fire/E1/action",
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .unwrap();
    // Then the collector asks E2, then E1: the first message E1 gets is
    // its own request, signed (not the forgery, not E2's).
    for u in [&e2, &e1] {
        let r = ask(&c, FIRE_OP, u, &json!({"action": "restart-cad-client"})).await;
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let got = unit1.next().await;
    assert_eq!(signed(&got, &e1).requested_by, "operator:metro-fire");
    // The collector's user may write action topics.
    assert_eq!(c.metric("muster_mqtt_publishes_refused_total").await, 0.0);
    c.stop().await;
}

async fn put_switch(c: &Collector, token: &str, agency: &str, body: &[u8]) -> Response {
    let auth = format!("Bearer {token}");
    let raw = http::request_bytes(
        "PUT",
        &format!("/api/v1/agencies/{agency}/automation"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        Some(body),
    );
    http::send(c.addr, &raw, Duration::from_secs(20))
        .await
        .unwrap()
}

/// The automation kill switch (issue 17 part 4): the admin or the
/// agency's operator turns it; a viewer, another agency's operator, an
/// unknown agency, a bad body or one byte over the limit are refused; it
/// is persisted before it is answered, so a restart keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_takes_the_admin_or_the_agencys_operator_and_survives_a_restart() {
    let mut s = Site::start("").await;
    let path = "/api/v1/agencies/metro-fire/automation";
    let r = http::get(s.c().addr, path, Some(FIRE)).await;
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(true)));
    let off = br#"{"enabled": false}"#;
    // Refused, each with its status; the switch stays on.
    for (token, agency, body, want) in [
        (FIRE, "metro-fire", &off[..], 403),
        (POLICE_OP, "metro-fire", &off[..], 403),
        (POLICE, "metro-fire", &off[..], 403),
        (ADMIN, "no-such-agency", &off[..], 404),
        (FIRE_OP, "metro-fire", &br#"{"enabled": "no"}"#[..], 400),
        (
            FIRE_OP,
            "metro-fire",
            &br#"{"enabled": false, "x": 1}"#[..],
            400,
        ),
        ("not-a-token-0123456789", "metro-fire", &off[..], 401),
    ] {
        let r = put_switch(s.c(), token, agency, body).await;
        assert_eq!(r.status, want, "{token} {agency} {}", r.text());
    }
    // At the limit the body is read; one byte over is 413.
    let pad = |n: usize| {
        let mut b = br#"{"enabled": true}"#.to_vec();
        b.splice(1..1, std::iter::repeat_n(b' ', n - b.len()));
        b
    };
    let limit = muster_collector::feed::automation::MAX_BODY_BYTES;
    assert_eq!(
        put_switch(s.c(), FIRE_OP, "metro-fire", &pad(limit))
            .await
            .status,
        200
    );
    assert_eq!(
        put_switch(s.c(), FIRE_OP, "metro-fire", &pad(limit + 1))
            .await
            .status,
        413
    );
    let r = http::get(s.c().addr, path, Some(ADMIN)).await;
    assert_eq!(r.json()["enabled"], true);
    // The agency's operator turns it off; the admin sees it; the other
    // agency's is untouched.
    let r = put_switch(s.c(), FIRE_OP, "metro-fire", off).await;
    assert_eq!(
        (r.status, r.json()["enabled"].clone()),
        (200, json!(false)),
        "{}",
        r.text()
    );
    let other = http::get(
        s.c().addr,
        "/api/v1/agencies/county-police/automation",
        Some(POLICE),
    )
    .await;
    assert_eq!(other.json()["enabled"], true);
    // Restarted: still off.
    s.c.take().unwrap().stop().await;
    s.start_collector().await;
    let r = http::get(s.c().addr, path, Some(FIRE)).await;
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(false)));
    s.c.unwrap().stop().await;
}
