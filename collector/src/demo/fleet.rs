//! The demo's fleet simulator: every unit of [`scenes::fleet`] is a real
//! MQTT client of the embedded broker, logged in with its own generated
//! credential, speaking the agents' wire format and topics:
//!
//! * on connect: the will (`Presence { Lost }`, retained, state topic),
//!   then the birth (`Connected`, or `Resumed { slept_ms }` after a sleep)
//!   retained on the state topic, a subscription to its ack topic, and the
//!   replay of every record not yet acked; a verified collector hello
//!   (`muster/v1/collector`, the collector (re)subscribed) resends them too;
//! * every tick ([`scenes::TICK_S`] scene seconds): a host sample and a
//!   `cad-api` probe result as records (boot, seq from 1 per boot), and an
//!   agent status every sixth tick. Records are kept until a collector ack
//!   *whose signature verifies* against the demo collector's key covers
//!   them (`muster_proto::sign::verify_ack`); a refused ack frees nothing.
//!   The backlog is bounded ([`MAX_BACKLOG`], oldest dropped);
//! * an announced departure (`Shutdown`, `Sleep`): the presence record on
//!   the telemetry topic and retained on the state topic, a bounded wait
//!   for its ack, then MQTT DISCONNECT (the broker drops the will). A unit
//!   back from a shutdown starts a new boot;
//! * a dead zone: the socket is closed without DISCONNECT (the broker
//!   publishes the will), sampling goes on into the backlog, and the
//!   reconnect replays it: the collector fills the gap.
//!
//! What happens when is decided by the pure [`scenes::plan`]; this module
//! only acts on it. Every task ends when the demo's shutdown token fires.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use muster_proto::sign::{verify_ack, verify_hello};
use muster_proto::{
    Ack, AgentStatus, Body, BootId, COLLECTOR_TOPIC, DropCounts, ErrorClass, LinkKind, Message,
    Outcome, Payload, Presence, PresenceReason, ProbeResult, PublicKey, Record, TopicKind,
    TrustedKeys, UnitId, decode, decode_hello, encode, fixtures, topic::unit_topic,
};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scenes::{self, Cad, Link, Plan, SimUnit, Terminal};

/// Records a simulated unit keeps unacked at most (oldest dropped).
pub const MAX_BACKLOG: usize = 2_000;
/// How long an announcement waits for its ack before DISCONNECT.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// What the simulator needs from the demo.
#[derive(Clone)]
pub struct FleetSettings {
    pub broker: SocketAddr,
    /// Scene seconds per wall-clock second (≥ 1).
    pub speed: u32,
    /// The collector's public key: acks must verify against it.
    pub collector_key: PublicKey,
    pub shutdown: CancellationToken,
}

/// Runs every unit (with its MQTT password) until shutdown.
pub async fn run(units: Vec<(SimUnit, String)>, s: FleetSettings) {
    let start = Instant::now();
    let speed = u64::from(s.speed.max(1));
    let tick = Duration::from_millis(scenes::TICK_S * 1000 / speed);
    let n = units.len().max(1) as u32;
    let mut trusted = TrustedKeys::new();
    let _ = trusted.insert(s.collector_key);
    let tasks: Vec<JoinHandle<()>> = units
        .into_iter()
        .enumerate()
        .map(|(i, (spec, password))| {
            let first = start + tick * i as u32 / n;
            let sim = Sim::new(spec, password, s.broker, trusted.clone(), tick);
            tokio::spawn(sim.run(start, first, speed, s.shutdown.clone()))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn now_ms() -> u64 {
    muster_base::clock::unix_ms_now()
}

fn random_boot() -> BootId {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    BootId(u64::from_le_bytes(b))
}

/// What a connection's poll task tells its unit.
enum Incoming {
    Ack(Box<Ack>),
    /// The collector's verified hello: it (re)subscribed, and what it
    /// missed before is resent.
    Hello,
    /// The connection failed (the unit reconnects on its next tick).
    Dropped,
}

struct Conn {
    client: AsyncClient,
    poll: JoinHandle<()>,
}

struct Sim {
    spec: SimUnit,
    id: UnitId,
    password: String,
    broker: SocketAddr,
    trusted: TrustedKeys,
    tick: Duration,
    boot: BootId,
    seq: u64,
    connection: u32,
    reconnects: u32,
    acks_refused: u64,
    ticks: u64,
    started_ms: u64,
    /// (boot, seq) → the encoded message, until an ack covers it.
    unacked: BTreeMap<(u64, u64), Vec<u8>>,
    conn: Option<Conn>,
    /// The announced departure in effect, and when it was made.
    departed: Option<(PresenceReason, u64)>,
    tx: mpsc::UnboundedSender<Incoming>,
    rx: mpsc::UnboundedReceiver<Incoming>,
}

impl Sim {
    fn new(
        spec: SimUnit,
        password: String,
        broker: SocketAddr,
        trusted: TrustedKeys,
        tick: Duration,
    ) -> Sim {
        let id =
            UnitId::new(spec.agency, spec.unit.clone()).expect("the demo fleet's ids are valid");
        let (tx, rx) = mpsc::unbounded_channel();
        Sim {
            spec,
            id,
            password,
            broker,
            trusted,
            tick,
            boot: random_boot(),
            seq: 0,
            connection: 0,
            reconnects: 0,
            acks_refused: 0,
            ticks: 0,
            started_ms: now_ms(),
            unacked: BTreeMap::new(),
            conn: None,
            departed: None,
            tx,
            rx,
        }
    }

    async fn run(mut self, start: Instant, first: Instant, speed: u64, stop: CancellationToken) {
        let mut every = tokio::time::interval_at(first, self.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {
                    let scene_s = start.elapsed().as_millis() as u64 * speed / 1000;
                    let plan = scenes::plan(&self.spec, scene_s);
                    self.step(plan).await;
                }
                Some(m) = self.rx.recv() => self.incoming(m),
            }
        }
        // The demo is stopping: leave as an agent being stopped would not
        // matter; just close (the broker goes away with the process).
        if let Some(c) = self.conn.take() {
            let _ = c.client.try_disconnect();
            c.poll.abort();
        }
    }

    fn incoming(&mut self, m: Incoming) {
        match m {
            Incoming::Ack(ack) => {
                if verify_ack(&self.trusted, &self.id, &ack).is_err() {
                    self.acks_refused += 1;
                    tracing::warn!(unit = %self.id, "Demo fleet: an ack did not verify; nothing freed.");
                    return;
                }
                self.unacked
                    .retain(|&(boot, seq), _| !ack.covers(BootId(boot), seq));
            }
            Incoming::Dropped => {
                if let Some(c) = self.conn.take() {
                    c.poll.abort();
                }
            }
            Incoming::Hello => {
                if let Some(c) = &self.conn {
                    let telemetry = unit_topic(&self.id, TopicKind::Telemetry);
                    for bytes in self.unacked.values() {
                        let _ = c.client.try_publish(
                            &telemetry,
                            QoS::AtLeastOnce,
                            false,
                            bytes.clone(),
                        );
                    }
                }
            }
        }
    }

    async fn step(&mut self, plan: Plan) {
        self.ticks += 1;
        match plan.link {
            Link::Connected => {
                if self.conn.is_none() {
                    self.connect();
                }
            }
            Link::Departed(reason) => {
                if self.departed.is_none() {
                    if self.conn.is_none() {
                        // Never seen yet: connect first, announce next tick.
                        self.connect();
                    } else {
                        self.announce(reason).await;
                    }
                }
            }
            Link::DeadZone => {
                if let Some(c) = self.conn.take() {
                    // The socket closes without DISCONNECT: the will.
                    c.poll.abort();
                    drop(c.client);
                }
            }
        }
        if matches!(plan.link, Link::Connected | Link::DeadZone) && self.departed.is_none() {
            self.sample(&plan);
        }
    }

    fn connect(&mut self) {
        let now = now_ms();
        let birth = match self.departed.take() {
            Some((PresenceReason::Sleep, at)) => PresenceReason::Resumed {
                slept_ms: now.saturating_sub(at),
            },
            Some(_) => {
                // Back from a shutdown: a new boot.
                self.boot = random_boot();
                self.seq = 0;
                self.connection = 0;
                self.started_ms = now;
                PresenceReason::Connected
            }
            None => PresenceReason::Connected,
        };
        if self.connection > 0 {
            self.reconnects += 1;
        }
        self.connection += 1;
        let state = unit_topic(&self.id, TopicKind::State);
        let mut o = MqttOptions::new(
            self.id.to_string(),
            self.broker.ip().to_string(),
            self.broker.port(),
        );
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_credentials(self.id.to_string(), self.password.clone())
            .set_inflight(100)
            .set_last_will(LastWill::new(
                &state,
                self.presence(PresenceReason::Lost, now),
                QoS::AtLeastOnce,
                true,
            ));
        let (client, mut events) = AsyncClient::new(o, MAX_BACKLOG + 64);
        // Queued now, sent once connected, in this order.
        let _ = client.try_subscribe(unit_topic(&self.id, TopicKind::Ack), QoS::AtLeastOnce);
        let _ = client.try_subscribe(COLLECTOR_TOPIC, QoS::AtLeastOnce);
        let _ = client.try_publish(&state, QoS::AtLeastOnce, true, self.presence(birth, now));
        let telemetry = unit_topic(&self.id, TopicKind::Telemetry);
        for bytes in self.unacked.values() {
            let _ = client.try_publish(&telemetry, QoS::AtLeastOnce, false, bytes.clone());
        }
        let tx = self.tx.clone();
        let trusted = self.trusted.clone();
        let poll = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == COLLECTOR_TOPIC => {
                        if let Ok(h) = decode_hello(&p.payload)
                            && verify_hello(&trusted, &h).is_ok()
                        {
                            let _ = tx.send(Incoming::Hello);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(d) = decode(&p.payload)
                            && let Body::Ack(a) = d.message.body
                        {
                            let _ = tx.send(Incoming::Ack(Box::new(a)));
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "Demo fleet: connection dropped.");
                        let _ = tx.send(Incoming::Dropped);
                        return;
                    }
                }
            }
        });
        self.conn = Some(Conn { client, poll });
    }

    fn presence(&self, reason: PresenceReason, at_ms: u64) -> Vec<u8> {
        encode(&Message {
            unit: self.id.clone(),
            body: Body::Presence(Presence {
                online: reason.is_online(),
                boot: self.boot,
                connection: self.connection,
                at_ms,
                reason,
            }),
        })
        .expect("a presence always encodes")
    }

    /// The departure: announced as a record and on the state topic, a
    /// bounded wait for its ack, then DISCONNECT.
    async fn announce(&mut self, reason: PresenceReason) {
        let now = now_ms();
        let p = Presence {
            online: false,
            boot: self.boot,
            connection: self.connection,
            at_ms: now,
            reason,
        };
        let key = self.record(Payload::Presence(p));
        if let Some(c) = &self.conn {
            let _ = c.client.try_publish(
                unit_topic(&self.id, TopicKind::State),
                QoS::AtLeastOnce,
                true,
                self.presence(reason, now),
            );
        }
        let deadline = Instant::now() + ANNOUNCE_WAIT;
        while self.unacked.contains_key(&key) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => self.incoming(m),
                _ => break,
            }
        }
        if let Some(c) = self.conn.take() {
            let _ = c.client.disconnect().await;
            let mut poll = c.poll;
            if tokio::time::timeout(Duration::from_secs(2), &mut poll)
                .await
                .is_err()
            {
                poll.abort();
            }
        }
        self.departed = Some((reason, now));
    }

    /// Appends a record to the backlog and publishes it if connected.
    fn record(&mut self, payload: Payload) -> (u64, u64) {
        self.seq += 1;
        let msg = Message {
            unit: self.id.clone(),
            body: Body::Record(Record {
                boot: self.boot,
                seq: self.seq,
                at_ms: now_ms(),
                payload,
            }),
        };
        let bytes = encode(&msg).expect("a simulated record always encodes");
        let key = (self.boot.0, self.seq);
        if let Some(c) = &self.conn {
            let _ = c.client.try_publish(
                unit_topic(&self.id, TopicKind::Telemetry),
                QoS::AtLeastOnce,
                false,
                bytes.clone(),
            );
        }
        self.unacked.insert(key, bytes);
        while self.unacked.len() > MAX_BACKLOG {
            self.unacked.pop_first();
        }
        key
    }

    fn sample(&mut self, plan: &Plan) {
        let host = host_sample(&self.spec, plan, self.tick, self.ticks, self.started_ms);
        self.record(Payload::Host(host));
        self.record(Payload::Probe(cad_probe(&self.spec, plan)));
        if self.ticks % 6 == 1 {
            let status = AgentStatus {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                interval_ms: self.tick.as_millis() as u32,
                backlog_records: self.unacked.len() as u64,
                backlog_bytes: self.unacked.values().map(|b| b.len() as u64).sum(),
                oldest_unsent_ms: None,
                dropped: DropCounts::default(),
                reconnects: self.reconnects,
                clock_offset_ms: Some(0),
                acks_refused: self.acks_refused,
                observations_dropped: 0,
            };
            self.record(Payload::Status(status));
        }
    }
}

/// A host sample of this unit for `plan`: the fixture MCT (cellular) or a
/// wired workstation, with the scene's disk and CAD client.
fn host_sample(
    u: &SimUnit,
    plan: &Plan,
    tick: Duration,
    ticks: u64,
    started_ms: u64,
) -> muster_proto::HostSample {
    let mut h = fixtures::host_sample();
    h.interval_ms = tick.as_millis() as u32;
    h.uptime_s = 3_600 + now_ms().saturating_sub(started_ms) / 1000;
    if let Some(c) = h.cpu.as_mut() {
        c.total_bp = 1_200 + ((ticks * 7 + u.unit.len() as u64 * 131) % 1_800) as u16;
    }
    if let Some(d) = h.disks.first_mut() {
        d.used_kib = d.total_kib / 1000 * u64::from(plan.disk_permille);
    }
    if let Some(p) = h.processes.first_mut() {
        p.running = plan.cadclient_running;
        p.pid = plan
            .cadclient_running
            .then_some(4_312 + plan.cadclient_restarts);
        p.restarts = plan.cadclient_restarts;
    }
    if u.terminal == Terminal::Workstation {
        h.nets = vec![muster_proto::NetIf {
            name: "eth0".into(),
            up: true,
            rx_bps: 12_000,
            tx_bps: 3_000,
            rx_errors: 0,
            tx_errors: 0,
        }];
        h.network = Some(Box::new(muster_proto::NetContext {
            route: Some(muster_proto::DefaultRoute {
                interface: "eth0".into(),
                kind: LinkKind::Ethernet,
            }),
            wifi: None,
            cellular: None,
            vpns: vec![],
            route_changes: 0,
        }));
    } else if let Some(n) = h.network.as_mut() {
        n.route_changes = 0;
    }
    h
}

fn cad_probe(u: &SimUnit, plan: &Plan) -> ProbeResult {
    let mut p = fixtures::http_probe();
    p.name = scenes::CAD_PROBE.into();
    p.target = format!("https://cad.{}.example.org/api/health", u.agency);
    match plan.cad {
        Cad::Ok { total_ms } | Cad::Slow { total_ms } => {
            p.phases.ttfb_us = Some(total_ms * 1000 - 100_000);
            p.phases.total_us = total_ms * 1000;
        }
        Cad::Timeout { after_ms } => {
            p.outcome = Outcome::Fail(ErrorClass::Timeout);
            p.status = None;
            p.phases.ttfb_us = None;
            p.phases.total_us = after_ms * 1000;
            p.detail = "no response within the probe's timeout".into();
        }
    }
    p
}
