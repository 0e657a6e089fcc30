//! Webhook notifications against a local receiver (axum on 127.0.0.1:0):
//! signature, per-agency scoping, one message per incident, retries with
//! backoff, dead letters in /metrics, and a dead receiver never holding up
//! ingest.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use muster_collector::clock::ManualClock;
use muster_collector::notify::sign;
use muster_proto::{BootId, UnitId};
use muster_testkit::{Mosquitto, TempDir, eventually};

use crate::harness::*;

const FIRE_SECRET: &str = "fire-hook-secret-0123456789";
const POLICE_SECRET: &str = "police-hook-secret-0123456789";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    delivery: String,
    timestamp: u64,
    signature: String,
    content_type: String,
    body: Bytes,
    /// What the receiver answered.
    answered: u16,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    fn verify(&self, secret: &str) -> Result<(), sign::VerifyError> {
        sign::verify(
            secret.as_bytes(),
            &self.signature,
            self.timestamp,
            &self.body,
            self.timestamp,
            sign::DEFAULT_TOLERANCE_S,
        )
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    /// 500 for the first n requests, then 200.
    FailFirst(usize),
    /// 503 every time.
    AlwaysFail,
}

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    behaviour: Behaviour,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut got = r.got.lock().unwrap();
    let status = match r.behaviour {
        Behaviour::Ok => StatusCode::OK,
        Behaviour::FailFirst(n) if got.len() < n => StatusCode::INTERNAL_SERVER_ERROR,
        Behaviour::FailFirst(_) => StatusCode::NO_CONTENT,
        Behaviour::AlwaysFail => StatusCode::SERVICE_UNAVAILABLE,
    };
    got.push(Got {
        delivery: h("x-muster-delivery"),
        timestamp: h("x-muster-timestamp").parse().unwrap_or(0),
        signature: h("x-muster-signature"),
        content_type: h("content-type"),
        body,
        answered: status.as_u16(),
    });
    status
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> (Receiver, SocketAddr) {
        let r = Receiver {
            got: Arc::default(),
            behaviour,
        };
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(r.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (r, addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    async fn wait(&self, what: &str, mut cond: impl FnMut(&[Got]) -> bool) -> Vec<Got> {
        let what = format!("the receiver: {what}");
        eventually(&what, Duration::from_secs(20), async || {
            let g = self.got();
            if cond(&g) {
                Ok(g)
            } else {
                Err(g.iter().map(Got::json).collect::<Vec<_>>())
            }
        })
        .await
    }
}

/// A receiver that accepts connections and never answers.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, t)
}

fn webhook(addr: SocketAddr, secret: &str, extra: &str) -> String {
    format!(
        "[agency.webhook]\nurl = \"http://{addr}/hook\"\nsecret = \"{secret}\"\nbatch_window = \"300ms\"\n{extra}\n"
    )
}

/// The collector's config with a webhook section per agency (or none).
fn config(
    broker: &Mosquitto,
    dir: &TempDir,
    fire: Option<String>,
    police: Option<String>,
) -> String {
    format!(
        r#"
admin_token = "{ADMIN}"
[mqtt]
url = "{url}"
client_id = "collector-webhook"
[http]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[ingest]
commit_interval = "20ms"
tick_interval = "50ms"
[[agency]]
name = "metro-fire"
token = "{FIRE}"
{fire}
[[agency]]
name = "county-police"
token = "{POLICE}"
{police}
"#,
        url = broker.url(),
        store = dir.path().join("store").display(),
        fire = fire.unwrap_or_default(),
        police = police.unwrap_or_default(),
    )
}

/// Brings a unit up (presence + a host sample), then says it went offline:
/// one transition `ok -> offline`.
async fn up_then_offline(c: &Collector, a: &Agent, u: &UnitId, boot: BootId) {
    a.presence(u, online(boot, 1, T0, true)).await;
    a.record(u, rec(boot, 1, T0, host(10.0))).await;
    c.wait_unit(u, "online", |v| v["seq"]["received"] == 1)
        .await;
    a.presence(u, online(boot, 1, T0 + 1_000, false)).await;
    c.wait_unit(u, "offline", |v| v["status"] == "lost").await;
}

/// Polls a metric until it has the value wanted.
async fn wait_metric(c: &Collector, line: &str, want: f64) {
    c.wait_metric(line, |got| got == want).await;
}

fn units_in(n: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |t: &serde_json::Value| {
        out.push(format!(
            "{}/{}",
            t["agency"].as_str().unwrap(),
            t["unit"].as_str().unwrap()
        ))
    };
    for t in n["transitions"].as_array().unwrap() {
        push(t);
    }
    for g in n["incidents"].as_array().unwrap() {
        for t in g["transitions"].as_array().unwrap() {
            push(t);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_per_agency_and_never_another_agencys_units() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let (fire, fire_addr) = Receiver::start(Behaviour::Ok).await;
    let (police, police_addr) = Receiver::start(Behaviour::Ok).await;
    let text = config(
        &broker,
        &dir,
        Some(webhook(fire_addr, FIRE_SECRET, "")),
        Some(webhook(police_addr, POLICE_SECRET, "")),
    );
    let clock = ManualClock::new(T0);
    let c = Collector::start(&text, clock.clone()).await;
    let a = Agent::connect(&broker, "agent", None).await;
    let f1 = unit("metro-fire", "F1");
    let p1 = unit("county-police", "P1");
    up_then_offline(&c, &a, &f1, BootId(1)).await;
    up_then_offline(&c, &a, &p1, BootId(2)).await;

    let got = fire
        .wait("F1 offline", |g| {
            g.iter()
                .any(|x| units_in(&x.json()).contains(&"metro-fire/F1".into()))
        })
        .await;
    police
        .wait("P1 offline", |g| {
            g.iter()
                .any(|x| units_in(&x.json()).contains(&"county-police/P1".into()))
        })
        .await;
    let x = got
        .iter()
        .find(|x| units_in(&x.json()).contains(&"metro-fire/F1".into()))
        .unwrap();
    assert_eq!(x.content_type, "application/json");
    assert_eq!(
        x.timestamp,
        T0 / 1000,
        "the timestamp is the collector's clock"
    );
    assert!(x.signature.starts_with("sha256="), "{}", x.signature);
    assert_eq!(
        x.verify(FIRE_SECRET),
        Ok(()),
        "signature with the agency's secret"
    );
    assert_eq!(
        x.verify(POLICE_SECRET),
        Err(sign::VerifyError::Mismatch),
        "another secret must not verify"
    );
    // The signature covers the body and the timestamp.
    let mut tampered = x.clone();
    tampered.timestamp += 1;
    assert_eq!(
        tampered.verify(FIRE_SECRET),
        Err(sign::VerifyError::Mismatch)
    );
    let n = x.json();
    assert_eq!(n["agency"], "metro-fire");
    assert_eq!(
        n["id"], x.delivery,
        "X-Muster-Delivery is the notification id"
    );
    let t = &n["transitions"][0];
    assert_eq!(
        (t["from"].as_str(), t["to"].as_str()),
        (Some("ok"), Some("lost"))
    );
    assert_eq!(t["reasons"][0]["rule"], "lost.will");
    assert!(
        n["summary"]
            .as_str()
            .unwrap()
            .contains("metro-fire/F1 ok -> lost"),
        "{n:#}"
    );

    c.stop().await;
    // Everything each receiver ever got is its own agency's, verifies, and
    // matches the `Notification` schema of the OpenAPI document.
    let doc: serde_json::Value =
        serde_json::from_str(muster_collector::feed::openapi::DOCUMENT).unwrap();
    let mut schema = crate::openapi::Validator::new(&doc);
    for (r, agency, secret) in [
        (&fire, "metro-fire", FIRE_SECRET),
        (&police, "county-police", POLICE_SECRET),
    ] {
        let all = r.got();
        assert!(!all.is_empty());
        for x in &all {
            assert_eq!(x.verify(secret), Ok(()));
            let n = x.json();
            if let Err(e) = schema.schema("Notification", &n) {
                panic!("webhook body does not match the document: {e}\n{n:#}");
            }
            assert_eq!(n["agency"], agency);
            for u in units_in(&n) {
                assert!(u.starts_with(&format!("{agency}/")), "{agency} got {u}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_over_many_units_is_one_message() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let (fire, addr) = Receiver::start(Behaviour::Ok).await;
    let text = config(&broker, &dir, Some(webhook(addr, FIRE_SECRET, "")), None);
    let clock = ManualClock::new(T0);
    let c = Collector::start(&text, clock.clone()).await;
    let a = Agent::connect(&broker, "agent", None).await;
    let target = "https://cad.metro.example/api/health";
    let units: Vec<UnitId> = (1..=8)
        .map(|i| unit("metro-fire", &format!("E{i}")))
        .collect();
    for u in &units {
        a.record(u, rec(BootId(1), 1, T0, probe("cad-api", target, true)))
            .await;
    }
    for u in &units {
        c.wait_unit(u, "first probe", |v| v["seq"]["received"] == 1)
            .await;
    }
    // Seven of the eight start failing the same target.
    for seq in 2..=4 {
        let at = T0 + seq * 5_000;
        clock.set(at);
        for (i, u) in units.iter().enumerate() {
            a.record(u, rec(BootId(1), seq, at, probe("cad-api", target, i == 7)))
                .await;
        }
        for u in &units {
            c.wait_unit(u, "probe in", |v| v["seq"]["received"] == seq)
                .await;
        }
    }
    let got = fire
        .wait("the incident", |g| {
            g.iter()
                .any(|x| !x.json()["incidents"].as_array().unwrap().is_empty())
        })
        .await;
    c.stop().await;
    let all = fire.got();
    assert!(all.len() >= got.len());
    let with_incident: Vec<serde_json::Value> = all
        .iter()
        .map(Got::json)
        .filter(|n| !n["incidents"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(
        with_incident.len(),
        1,
        "one message for the incident: {with_incident:#?}"
    );
    let n = &with_incident[0];
    let g = &n["incidents"][0];
    let id = g["incident"]["id"].as_str().unwrap();
    assert_eq!(g["incident"]["target"], target);
    assert_eq!(g["incident"]["affected"].as_array().unwrap().len(), 7);
    // The seven units' transitions are folded under it...
    let mut folded: Vec<&str> = g["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["unit"].as_str().unwrap())
        .collect();
    folded.sort();
    assert_eq!(folded, ["E1", "E2", "E3", "E4", "E5", "E6", "E7"], "{n:#}");
    for t in g["transitions"].as_array().unwrap() {
        assert!(
            t["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["incident"] == id),
            "{t:#}"
        );
    }
    assert!(
        n["summary"].as_str().unwrap().starts_with("incident: "),
        "{n:#}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(muster_collector::feed::openapi::DOCUMENT).unwrap();
    crate::openapi::Validator::new(&doc)
        .schema("Notification", n)
        .unwrap_or_else(|e| panic!("webhook body does not match the document: {e}"));
    // ...and no message carries them loose.
    for x in &all {
        for t in x.json()["transitions"].as_array().unwrap() {
            let tagged = t["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["incident"] == id);
            assert!(!tagged, "an incident transition went out on its own: {t:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_twice_gets_the_message_on_the_third_attempt() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let (fire, addr) = Receiver::start(Behaviour::FailFirst(2)).await;
    let hook = webhook(
        addr,
        FIRE_SECRET,
        "backoff_base = \"50ms\"\nbackoff_max = \"200ms\"\nmax_attempts = 5",
    );
    let text = config(&broker, &dir, Some(hook), None);
    let c = Collector::start(&text, ManualClock::new(T0)).await;
    let a = Agent::connect(&broker, "agent", None).await;
    up_then_offline(&c, &a, &unit("metro-fire", "F1"), BootId(1)).await;
    let got = fire
        .wait("a 2xx", |g| g.iter().any(|x| x.answered == 204))
        .await;
    assert_eq!(
        got.iter().map(|x| x.answered).collect::<Vec<_>>(),
        [500, 500, 204]
    );
    // The same notification each time: same id, same body, each signed.
    assert!(got.iter().all(|x| x.delivery == got[0].delivery));
    assert!(got.iter().all(|x| x.body == got[0].body));
    assert!(got.iter().all(|x| x.verify(FIRE_SECRET).is_ok()));
    let m = |name: &str| format!("{name}{{agency=\"metro-fire\"}}");
    wait_metric(&c, &m("muster_webhook_sent_total"), 1.0).await;
    assert_eq!(c.metric(&m("muster_webhook_failed_total")).await, 2.0);
    assert_eq!(c.metric(&m("muster_webhook_retries_total")).await, 2.0);
    assert_eq!(c.metric(&m("muster_webhook_dead_letters_total")).await, 0.0);
    assert_eq!(c.metric(&m("muster_webhook_queue_depth")).await, 0.0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_always_fails_gives_a_dead_letter_in_metrics() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let (fire, addr) = Receiver::start(Behaviour::AlwaysFail).await;
    let hook = webhook(
        addr,
        FIRE_SECRET,
        "backoff_base = \"20ms\"\nbackoff_max = \"50ms\"\nmax_attempts = 3",
    );
    let text = config(&broker, &dir, Some(hook), None);
    let c = Collector::start(&text, ManualClock::new(T0)).await;
    let a = Agent::connect(&broker, "agent", None).await;
    up_then_offline(&c, &a, &unit("metro-fire", "F1"), BootId(1)).await;
    let dead = "muster_webhook_dead_letters_total{agency=\"metro-fire\"}";
    c.wait_metric(dead, |n| n >= 1.0).await;
    assert_eq!(c.metric(dead).await, 1.0);
    let got = fire.got();
    assert_eq!(got.len(), 3, "max_attempts attempts, then given up");
    assert!(got.iter().all(|x| x.answered == 503));
    let m = |name: &str| format!("{name}{{agency=\"metro-fire\"}}");
    assert_eq!(c.metric(&m("muster_webhook_failed_total")).await, 3.0);
    assert_eq!(c.metric(&m("muster_webhook_retries_total")).await, 2.0);
    assert_eq!(c.metric(&m("muster_webhook_sent_total")).await, 0.0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_hold_up_ingest_or_shutdown() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let (addr, _hole) = black_hole().await;
    // Long timeout and many attempts: the notification is still queued
    // when the collector stops, and is counted as a dead letter then.
    let hook = webhook(addr, FIRE_SECRET, "timeout = \"60s\"\nmax_attempts = 50");
    let text = config(&broker, &dir, Some(hook), None);
    let c = Collector::start(&text, ManualClock::new(T0)).await;
    let a = Agent::connect(&broker, "agent", None).await;
    // Units keep changing status and the feed keeps up while the webhook
    // is stuck on its first attempt.
    for i in 1..=5 {
        up_then_offline(&c, &a, &unit("metro-fire", &format!("F{i}")), BootId(i)).await;
    }
    // All five went to the webhook, which is stuck on its first attempt.
    let changes = "muster_webhook_changes_total{agency=\"metro-fire\"}";
    wait_metric(&c, changes, 5.0).await;
    let depth = "muster_webhook_queue_depth{agency=\"metro-fire\"}";
    c.wait_metric(depth, |n| n >= 1.0).await;
    assert_eq!(
        c.metric("muster_webhook_sent_total{agency=\"metro-fire\"}")
            .await,
        0.0
    );
    let ev = c.json("/api/v1/events?agency=metro-fire", FIRE).await;
    assert_eq!(ev["items"].as_array().unwrap().len(), 5, "{ev:#}");
    let started = std::time::Instant::now();
    let addr = c.addr;
    c.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown waited {:?} for a dead receiver",
        started.elapsed()
    );
    // Stopped within the drain deadline: the feed is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

// ------------------------------------------------------------ https

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &std::path::Path) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=muster-hook-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
        dir,
    );
}

/// A TLS listener for `axum::serve`: handshakes that fail are skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((s, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(s).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn tls_receiver(dir: &std::path::Path) -> (Receiver, SocketAddr) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let r = Receiver {
        got: Arc::default(),
        behaviour: Behaviour::Ok,
    };
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let l = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
    };
    tokio::spawn(async move { axum::serve(l, app).await });
    (r, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_receivers_are_verified_against_the_configured_ca() {
    let certs = TempDir::new().unwrap();
    make_certs(certs.path());
    let (trusted, trusted_addr) = tls_receiver(certs.path()).await;
    let (untrusted, untrusted_addr) = tls_receiver(certs.path()).await;
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let https = |addr: SocketAddr, secret: &str, extra: &str| {
        format!(
            "[agency.webhook]\nurl = \"https://{addr}/hook\"\nsecret = \"{secret}\"\nbatch_window = \"100ms\"\nbackoff_base = \"20ms\"\nbackoff_max = \"50ms\"\nmax_attempts = 2\n{extra}\n"
        )
    };
    let ca = format!("ca_file = \"{}\"", certs.path().join("ca.pem").display());
    // Fire trusts the test CA; police has only the system's CAs, which do
    // not know it: its deliveries fail the certificate check.
    let text = config(
        &broker,
        &dir,
        Some(https(trusted_addr, FIRE_SECRET, &ca)),
        Some(https(untrusted_addr, POLICE_SECRET, "")),
    );
    let c = Collector::start(&text, ManualClock::new(T0)).await;
    let a = Agent::connect(&broker, "agent", None).await;
    up_then_offline(&c, &a, &unit("metro-fire", "F1"), BootId(1)).await;
    up_then_offline(&c, &a, &unit("county-police", "P1"), BootId(2)).await;
    let got = trusted
        .wait("a delivery over https", |g| !g.is_empty())
        .await;
    assert_eq!(got[0].verify(FIRE_SECRET), Ok(()));
    let dead = "muster_webhook_dead_letters_total{agency=\"county-police\"}";
    // A dead letter for the untrusted receiver.
    c.wait_metric(dead, |n| n >= 1.0).await;
    assert!(
        untrusted.got().is_empty(),
        "a receiver with an unknown CA got a body"
    );
    wait_metric(&c, "muster_webhook_sent_total{agency=\"metro-fire\"}", 1.0).await;
    c.stop().await;
}
