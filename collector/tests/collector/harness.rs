//! Test harness: a real Mosquitto, the collector running in-process on
//! `127.0.0.1:0` with a fed clock, and test agents publishing with rumqttc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_collector::app;
use muster_collector::clock::ManualClock;
use muster_collector::config::Config;
use muster_proto::{
    Ack, Body, BootId, HostSample, Message, Payload, Presence, ProbeResult, Record, TopicKind,
    UnitId, encode, fixtures, topic,
};
use muster_testkit::{CollectorToml, Mosquitto, TempDir, eventually};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use muster_testkit::http::{self, Response, Sse};

pub const ADMIN: &str = "admin-token-0123456789";
pub const FIRE: &str = "fire-token-0123456789";
pub const POLICE: &str = "police-token-0123456789";
/// 2026-11-21T00:00:00Z-ish: where every test's fed clock starts.
pub const T0: u64 = 1_795_000_000_000;

pub fn unit(agency: &str, u: &str) -> UnitId {
    UnitId::new(agency, u).unwrap()
}

/// The collector's config for a test: the suite's admin token, `broker`,
/// the store at `store`, stream keep-alives every second, and the two
/// agencies (metro-fire, county-police). Tests add keys to it.
pub fn collector_config(broker: &Mosquitto, store: &Path, client_id: &str) -> CollectorToml {
    let mut c = CollectorToml::new(ADMIN, &broker.url(), store);
    c.set_str("mqtt", "client_id", client_id)
        .set_str("http", "sse_keep_alive", "1s")
        .agency("metro-fire", FIRE)
        .agency("county-police", POLICE);
    c
}

/// [`collector_config`] rendered, with `extra` TOML appended (e.g. `[rules]`).
pub fn config_text(broker: &Mosquitto, store: &Path, client_id: &str, extra: &str) -> String {
    collector_config(broker, store, client_id)
        .extra(extra)
        .render()
}

/// The collector, running in this test's runtime.
pub struct Collector {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), app::AppError>>>,
    /// The enrolment registry: the `UnitCredentials` a broker gate checks.
    pub registry: Option<Arc<muster_collector::enroll::Registry>>,
}

impl Collector {
    pub async fn start(text: &str, clock: Arc<ManualClock>) -> Collector {
        Self::start_with(text, clock, app::Wiring::default()).await
    }

    /// As [`Collector::start`], with the app's optional wiring; the
    /// enrolment registry is kept in `registry`.
    pub async fn start_with(text: &str, clock: Arc<ManualClock>, wiring: app::Wiring) -> Collector {
        let cfg = Config::parse(text).expect("test config is valid");
        Self::start_cfg(cfg, clock, wiring, None).await
    }

    /// As [`Collector::start_with`], from a parsed config (tests that edit
    /// it, e.g. for the embedded broker), with action request nonces from
    /// `nonces` (default: the OS RNG).
    pub async fn start_cfg(
        cfg: Config,
        clock: Arc<ManualClock>,
        mut wiring: app::Wiring,
        nonces: Option<Arc<dyn muster_collector::actions::Nonces>>,
    ) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let (reg_tx, reg_rx) = oneshot::channel();
        wiring.registry = Some(reg_tx);
        let nonces = nonces.unwrap_or_else(|| Arc::new(muster_collector::actions::OsNonces));
        let task = tokio::spawn(app::run_injected(
            cfg,
            listener,
            clock,
            async move {
                let _ = rx.await;
            },
            wiring,
            nonces,
        ));
        let registry = tokio::time::timeout(Duration::from_secs(20), reg_rx)
            .await
            .expect("the registry opens")
            .ok();
        let c = Collector {
            addr,
            stop: Some(tx),
            task: Some(task),
            registry,
        };
        c.wait_ready().await;
        c
    }

    pub async fn wait_ready(&self) {
        eventually("collector ready", Duration::from_secs(20), || async {
            let r = http::get(self.addr, "/readyz", None).await;
            if r.status == 200 {
                Ok(())
            } else {
                Err(r.text())
            }
        })
        .await;
    }

    /// Stops cleanly and waits for it.
    pub async fn stop(mut self) {
        // The registry holds the store: let it close.
        self.registry = None;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("collector stops within 30 s")
                .expect("collector task")
                .expect("collector ran without error");
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        http::get(self.addr, path, Some(token)).await
    }

    pub async fn json(&self, path: &str, token: &str) -> serde_json::Value {
        let r = self.get(path, token).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    pub async fn unit(&self, u: &UnitId) -> Option<serde_json::Value> {
        let r = self
            .get(&format!("/api/v1/units/{}/{}", u.agency, u.unit), ADMIN)
            .await;
        (r.status == 200).then(|| r.json())
    }

    pub async fn stream(&self, token: &str) -> Sse {
        let mut s = Sse::connect(self.addr, "/api/v1/stream", Some(token)).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.content_type, "text/event-stream");
        let ready = s.next(Duration::from_secs(10)).await.expect("ready event");
        assert_eq!(ready.event, "ready");
        s
    }

    /// Polls a unit until `cond` holds on its detail JSON.
    pub async fn wait_unit(
        &self,
        u: &UnitId,
        what: &str,
        mut cond: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(
            &format!("{u}: {what}"),
            Duration::from_secs(20),
            async || match self.unit(u).await {
                Some(v) if cond(&v) => Ok(v),
                got => Err(got),
            },
        )
        .await
    }

    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let m = self.get("/metrics", ADMIN).await;
        assert_eq!(m.status, 200);
        m.text()
            .lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_prefix} in\n{}", m.text()))
    }

    /// Polls a metric (20 s) until `cond` holds of its value; returns it.
    pub async fn wait_metric(&self, line_prefix: &str, cond: impl Fn(f64) -> bool) -> f64 {
        eventually(line_prefix, Duration::from_secs(20), || async {
            let v = self.metric(line_prefix).await;
            if cond(v) { Ok(v) } else { Err(v) }
        })
        .await
    }
}

/// Everything one test needs: a broker, a store dir, a collector.
pub struct World {
    pub broker: Mosquitto,
    pub dir: TempDir,
    pub collector: Option<Collector>,
    pub extra: String,
    /// Extra `[http]` keys.
    pub http_extra: String,
    pub clock: Arc<ManualClock>,
}

impl World {
    pub async fn start(extra: &str) -> World {
        World::start_http("", extra).await
    }

    /// As [`World::start`], with extra `[http]` keys.
    pub async fn start_http(http_extra: &str, extra: &str) -> World {
        let broker = Mosquitto::start();
        let dir = TempDir::new().unwrap();
        let clock = ManualClock::new(T0);
        let mut w = World {
            broker,
            dir,
            collector: None,
            extra: extra.to_owned(),
            http_extra: http_extra.to_owned(),
            clock,
        };
        w.start_collector().await;
        w
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub async fn start_collector(&mut self) {
        let text = collector_config(&self.broker, &self.store(), "collector-test")
            .raw("http", &self.http_extra)
            .extra(&self.extra)
            .render();
        self.collector = Some(Collector::start(&text, self.clock.clone()).await);
    }

    pub fn c(&self) -> &Collector {
        self.collector.as_ref().expect("collector running")
    }

    pub async fn stop_collector(&mut self) {
        if let Some(c) = self.collector.take() {
            c.stop().await;
        }
    }

    pub async fn agent(&self, id: &str) -> Agent {
        Agent::connect(&self.broker, id, None).await
    }
}

/// What a test agent received from the collector.
#[derive(Default)]
pub struct Inbox {
    pub acks: Vec<(UnitId, Ack)>,
    pub status: Vec<(String, serde_json::Value)>,
}

/// A test agent: one MQTT connection (MQTT 3.1.1, like a terminal) that
/// publishes for any number of units and collects acks.
pub struct Agent {
    pub client: AsyncClient,
    pub inbox: Arc<Mutex<Inbox>>,
    task: JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(mut ev: EventLoop, inbox: Arc<Mutex<Inbox>>, subscribed: oneshot::Sender<()>) {
    let mut subscribed = Some(subscribed);
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic.clone();
                if topic.ends_with("/ack") {
                    if let Ok(d) = muster_proto::decode(&p.payload)
                        && let Body::Ack(a) = d.message.body
                    {
                        inbox.lock().unwrap().acks.push((d.message.unit, a));
                    }
                } else if let Ok(v) = serde_json::from_slice(&p.payload) {
                    inbox.lock().unwrap().status.push((topic, v));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(s) = subscribed.take() {
                    let _ = s.send(());
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Agent {
    pub async fn connect(broker: &Mosquitto, id: &str, will: Option<(&UnitId, Presence)>) -> Agent {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.port());
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        if let Some((u, p)) = will {
            let msg = Message {
                unit: u.clone(),
                body: Body::Presence(p),
            };
            o.set_last_will(LastWill::new(
                topic::unit_topic(u, TopicKind::State),
                encode(&msg).unwrap(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        let (client, ev) = AsyncClient::new(o, 10_000);
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(drive(ev, inbox.clone(), tx));
        client
            .subscribe("muster/v1/+/+/ack", QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("test agent subscribed")
            .unwrap();
        Agent {
            client,
            inbox,
            task,
        }
    }

    /// Drops the connection without DISCONNECT: the broker fires the will.
    pub fn cut(self) {
        self.task.abort();
    }

    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    pub async fn send(&self, u: &UnitId, body: Body) {
        let retain = matches!(body, Body::Presence(_));
        let kind = if retain {
            TopicKind::State
        } else {
            TopicKind::Telemetry
        };
        let msg = Message {
            unit: u.clone(),
            body,
        };
        self.publish_raw(&topic::unit_topic(u, kind), encode(&msg).unwrap(), retain)
            .await;
    }

    pub async fn record(&self, u: &UnitId, r: Record) {
        self.send(u, Body::Record(r)).await;
    }

    pub async fn presence(&self, u: &UnitId, p: Presence) {
        self.send(u, Body::Presence(p)).await;
    }

    /// Whether every (boot, seq) was covered by an ack for `u`.
    pub fn acked(&self, u: &UnitId, boot: BootId, seqs: impl IntoIterator<Item = u64>) -> bool {
        let inbox = self.inbox.lock().unwrap();
        seqs.into_iter().all(|s| {
            inbox
                .acks
                .iter()
                .any(|(unit, a)| unit == u && a.covers(boot, s))
        })
    }

    pub async fn wait_acked(
        &self,
        u: &UnitId,
        boot: BootId,
        seqs: impl IntoIterator<Item = u64> + Clone,
    ) {
        let what = format!("acks for {u} covering every seq");
        eventually(&what, Duration::from_secs(20), || async {
            self.acked(u, boot, seqs.clone())
        })
        .await;
    }
}

pub fn host(cpu_pct: f64) -> Payload {
    let mut h: HostSample = fixtures::host_sample();
    if let Some(c) = h.cpu.as_mut() {
        c.total_bp = (cpu_pct * 100.0) as u16;
    }
    Payload::Host(h)
}

pub fn probe(name: &str, target: &str, ok: bool) -> Payload {
    let mut p: ProbeResult = fixtures::http_probe();
    p.name = name.to_owned();
    p.target = target.to_owned();
    p.outcome = if ok {
        muster_proto::Outcome::Ok
    } else {
        muster_proto::Outcome::Fail(muster_proto::ErrorClass::Timeout)
    };
    Payload::Probe(p)
}

pub fn rec(boot: BootId, seq: u64, at_ms: u64, payload: Payload) -> Record {
    Record {
        boot,
        seq,
        at_ms,
        payload,
    }
}

pub fn online(boot: BootId, connection: u32, at_ms: u64, up: bool) -> Presence {
    Presence {
        online: up,
        boot,
        connection,
        at_ms,
        reason: if up {
            muster_proto::PresenceReason::Connected
        } else {
            muster_proto::PresenceReason::Lost
        },
    }
}

/// Status and reason rules of a unit's detail JSON.
pub fn status_of(v: &serde_json::Value) -> (String, Vec<String>) {
    let s = v["status"].as_str().unwrap_or_default().to_owned();
    let r = v["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["rule"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    (s, r)
}

/// An announced shutdown of `boot` (schema v2): what an agent sends, as a
/// record and on its state topic, before the OS goes down.
pub fn announcement(boot: BootId, at_ms: u64) -> Presence {
    Presence {
        online: false,
        boot,
        connection: 1,
        at_ms,
        reason: muster_proto::PresenceReason::Shutdown,
    }
}

/// The string `field` of each item of a listing (`{"items": [...]}`).
pub fn items<'a>(listing: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    listing["items"]
        .as_array()
        .expect("a listing")
        .iter()
        .map(|i| i[field].as_str().expect("a string field"))
        .collect()
}
