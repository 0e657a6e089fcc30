//! Signed acks and the collector hello, against the real agent and collector
//! binaries and a real Mosquitto that lets anyone publish anything (no ACL).
//!
//! * Forged acks (garbage signature, a valid signature by an untrusted key,
//!   and a real collector ack for another unit, verbatim and re-addressed)
//!   flood the victim's ack topic every 100 ms while its first records go to
//!   a broker nobody is subscribed to (the collector starts late): had the
//!   agent believed one, those records would be gone. All arrive, and the
//!   heartbeat the collector shows counts the refusals.
//! * A broker without persistence restarts under an agent with records in
//!   flight, at the default `ack_timeout` (30 s): the collector's hello makes
//!   the agent resend at once, so the backlog drains within about twice the
//!   agent's reconnect time, not 30 s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_proto::sign::sign_ack;
use muster_proto::{
    Ack, AgentStatus, Body, BootId, COLLECTOR_TOPIC, KeyId, Message, Payload, Record, Signature,
    SigningKey, TopicKind, UnitId, decode, decode_hello, encode, fixtures, topic::unit_topic,
};
use muster_testkit::{Mosquitto, MosquittoOptions, TempDir, eventually_blocking};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::procs::*;

const MIN: Duration = Duration::from_secs(60);

fn unit(name: &str) -> UnitId {
    UnitId::new(AGENCY, name).unwrap()
}

/// A plain MQTT client on its own thread: records what it is told to watch.
struct Watcher {
    client: Client,
    /// Per unit: the newest boot seen on its telemetry.
    boots: Arc<Mutex<BTreeMap<String, BootId>>>,
    /// Signed acks seen, per unit.
    acks: Arc<Mutex<BTreeMap<String, Vec<Ack>>>>,
    /// When the watcher saw an agent birth with connection ≥ 2, and a hello
    /// with counter ≥ 2 (both after a broker restart).
    births: Arc<Mutex<Vec<(Instant, u32)>>>,
    hellos: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl Watcher {
    fn start(port: u16, filters: &[&str]) -> Watcher {
        let mut o = MqttOptions::new(
            format!("e2e-watcher-{}", rand::random::<u32>()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(o, 256);
        let w = Watcher {
            client: client.clone(),
            boots: Arc::default(),
            acks: Arc::default(),
            births: Arc::default(),
            hellos: Arc::default(),
            stop: Arc::default(),
        };
        let (boots, acks, births, hellos, stop) = (
            w.boots.clone(),
            w.acks.clone(),
            w.births.clone(),
            w.hellos.clone(),
            w.stop.clone(),
        );
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = Instant::now();
                        if p.topic == COLLECTOR_TOPIC {
                            if let Ok(h) = decode_hello(&p.payload) {
                                hellos.lock().unwrap().push((now, h.counter));
                            }
                            continue;
                        }
                        let Ok(d) = decode(&p.payload) else { continue };
                        let name = d.message.unit.unit.clone();
                        match d.message.body {
                            Body::Record(r) => {
                                boots.lock().unwrap().insert(name, r.boot);
                            }
                            Body::Batch(rs) => {
                                if let Some(r) = rs.last() {
                                    boots.lock().unwrap().insert(name, r.boot);
                                }
                            }
                            Body::Ack(a) => acks.lock().unwrap().entry(name).or_default().push(a),
                            Body::Presence(pr) if pr.online => {
                                births.lock().unwrap().push((now, pr.connection));
                            }
                            Body::Presence(_) => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        w
    }

    fn boot(&self, unit: &str) -> Option<BootId> {
        self.boots.lock().unwrap().get(unit).copied()
    }

    fn publish(&self, topic: String, payload: Vec<u8>) {
        let _ = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }
}

fn max_seq_of(v: &Value, boot: &str) -> u64 {
    boots(v)
        .iter()
        .find(|b| b.0 == boot)
        .map(|b| b.4)
        .unwrap_or(0)
}

/// Must show: forged acks free nothing. The agent's first records go to a
/// broker with no subscriber (the collector starts 4 s late) while forged
/// acks rain on its ack topic: only the agent's refusal to believe them
/// keeps those records on its disk until the collector is there.
#[test]
fn forged_acks_free_nothing_and_are_counted() {
    let broker = Mosquitto::start_with(MosquittoOptions::default());
    let dir = TempDir::new().unwrap();
    let victim = "V1";
    let attacker_unit = "X9";
    let spec = AgentSpec::new(victim, &broker.url(), &dir.path().join("agent"));
    let mut agent = AgentProc::spawn(&spec, false);

    let watch = Watcher::start(
        broker.port(),
        &[
            "muster/v1/+/+/telemetry",
            &unit_topic(&unit(attacker_unit), TopicKind::Ack),
        ],
    );
    let stranger = SigningKey::from_seed(&rand::random::<[u8; 32]>());
    let trusted_id = muster_testkit::test_collector_key().key_id();
    let victim_unit = unit(victim);
    let victim_ack_topic = unit_topic(&victim_unit, TopicKind::Ack);
    let mut forged = 0u64;
    let mut attack = |watch: &Watcher, real_other: Option<&Ack>| {
        let Some(boot) = watch.boot(victim) else {
            return;
        };
        let base = Ack {
            boot,
            upto: 1 << 62,
            ranges: vec![],
            collector_ms: now_ms(),
            key_id: KeyId::NONE,
            sig: Signature::NONE,
        };
        let mut acks = vec![
            // Garbage signature under the trusted key's id.
            Ack {
                key_id: trusted_id,
                sig: Signature(rand::random(), rand::random()),
                ..base.clone()
            },
            // Unsigned.
            base.clone(),
            // Validly signed by a key the agent does not trust.
            sign_ack(&stranger, &victim_unit, base.clone()),
        ];
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        if let Some(real) = real_other {
            // The collector's real ack to another unit, re-addressed to the
            // victim (same boot, upto covering the victim's seqs)...
            acks.push(real.clone());
            // ...and verbatim, about the other unit, on the victim's topic.
            payloads.push(
                encode(&Message {
                    unit: unit(attacker_unit),
                    body: Body::Ack(real.clone()),
                })
                .unwrap(),
            );
        }
        for a in acks {
            payloads.push(
                encode(&Message {
                    unit: victim_unit.clone(),
                    body: Body::Ack(a),
                })
                .unwrap(),
            );
        }
        for p in payloads {
            watch.publish(victim_ack_topic.clone(), p);
            forged += 1;
        }
    };

    // 4 s of forged acks while nobody is subscribed to the telemetry.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        attack(&watch, None);
        std::thread::sleep(Duration::from_millis(100));
    }
    let boot = watch
        .boot(victim)
        .unwrap_or_else(|| panic!("the victim published no telemetry:\n{}", agent.log_tail()));
    assert!(agent.alive(), "{}", agent.log_tail());

    // The collector comes up late: everything so far was published to nobody.
    let col = CollectorProc::spawn_on(&broker.url(), dir.path());

    // The attacker poses as unit X9 with the victim's boot: the collector
    // stores seqs 1..=200 and sends X9 a real, signed ack up to 200.
    let batch: Vec<Record> = (1..=200)
        .map(|seq| Record {
            boot,
            seq,
            at_ms: now_ms(),
            payload: Payload::Status(AgentStatus {
                version: "attacker".into(),
                ..fixtures::status()
            }),
        })
        .collect();
    let payload = encode(&Message {
        unit: unit(attacker_unit),
        body: Body::Batch(batch),
    })
    .unwrap();
    // Publishing (and attacking) every 100 ms until then.
    let real_other = eventually_blocking("a real ack for the attacker's unit", MIN, || {
        watch.publish(
            unit_topic(&unit(attacker_unit), TopicKind::Telemetry),
            payload.clone(),
        );
        attack(&watch, None);
        std::thread::sleep(Duration::from_millis(100));
        watch
            .acks
            .lock()
            .unwrap()
            .get(attacker_unit)
            .and_then(|v| v.iter().find(|a| a.upto >= 200).cloned())
    });
    assert_eq!(real_other.boot, boot);
    assert_eq!(real_other.key_id, trusted_id, "the real ack is signed");

    // Keep attacking, with all four kinds, until ≥ 32 records of the boot
    // are in and complete (a sample and a heartbeat a second).
    let boot_hex = format!("{:016x}", boot.0);
    let v = eventually_blocking("the victim complete despite forged acks", MIN, || {
        attack(&watch, Some(&real_other));
        std::thread::sleep(Duration::from_millis(100));
        match col.unit(victim) {
            Some(v)
                if max_seq_of(&v, &boot_hex) >= 40
                    && all_complete(&v)
                    && v["agent"]["acks_refused"].as_u64() > Some(0) =>
            {
                Ok(v)
            }
            v => Err(format!(
                "{}\n{}",
                v.map(|v| brief(&v)).unwrap_or_default(),
                agent.log_tail()
            )),
        }
    });
    let b = boots(&v);
    let (_, received, dups, missing, max) = b.iter().find(|b| b.0 == boot_hex).unwrap().clone();
    let refused = v["agent"]["acks_refused"].as_u64().unwrap();
    println!(
        "forged acks: {forged} published; victim boot {boot_hex}: received {received} of max seq {max}, missing {missing}, duplicates {dups}; acks_refused in the feed {refused}; drops {}",
        v["agent"]["dropped"]
    );
    assert_eq!(missing, 0);
    assert_eq!(received, max, "every seq received once");
    assert!(refused > 0);
    assert_eq!(v["agent"]["dropped"]["full"], 0);
    assert!(agent.alive());
    agent.stop();
}

/// Must show: a broker without persistence restarts under an agent with
/// records in flight, at the default `ack_timeout` (30 s). The agent
/// reconnects and resends at once, but the collector (exponential backoff)
/// resubscribes later, so that resend reaches nobody; the collector's hello
/// makes the agent resend again right away instead of after 30 s.
#[test]
fn broker_restart_drains_on_the_collector_hello_not_the_ack_timeout() {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: false,
        ..Default::default()
    });
    let dir = TempDir::new().unwrap();
    let col = CollectorProc::spawn_on(&broker.url(), dir.path());
    let name = "R30";
    let mut spec = AgentSpec::new(name, &broker.url(), &dir.path().join("agent"));
    spec.ack_timeout = "30s".into(); // the default
    let mut agent = AgentProc::spawn(&spec, false);
    let v = col.wait_unit(name, "the agent shipping", MIN, |v| {
        let boot = v["seq"]["boot"].as_str().unwrap_or_default();
        all_complete(v) && max_seq_of(v, boot) >= 6
    });
    let boot = v["seq"]["boot"].as_str().unwrap().to_owned();
    let before = max_seq_of(&v, &boot);

    // The outage: records pile up in the agent's buffer.
    const OUTAGE: Duration = Duration::from_secs(2);
    broker.stop();
    std::thread::sleep(OUTAGE);
    let watch = Watcher::start(
        broker.port(),
        &[&unit_topic(&unit(name), TopicKind::State), COLLECTOR_TOPIC],
    );
    // Taken before the spawn: start_again returns once it sees the port
    // open, and the agent and the watcher may already be connected by then
    // (CI run 22 saw the birth land before a timestamp taken after it).
    let restarted = Instant::now();
    broker.start_again();
    // Drained: everything produced up to the restart is stored, with no gap.
    let produced_by_restart = before + 3; // 2 s of 1 s samples and 1 s heartbeats: ≥ 3 records
    let drained = eventually_blocking("the backlog drained after the restart", MIN, || {
        match col.unit(name) {
            Some(v) if max_seq_of(&v, &boot) >= produced_by_restart && all_complete(&v) => {
                Ok(restarted.elapsed())
            }
            v => Err(format!(
                "{}\n{}",
                v.map(|v| brief(&v)).unwrap_or_default(),
                agent.log_tail()
            )),
        }
    });
    let after = |v: &Mutex<Vec<(Instant, u64)>>| {
        v.lock()
            .unwrap()
            .iter()
            .find(|(t, n)| *t >= restarted && *n >= 2)
            .map(|(t, _)| t.duration_since(restarted))
    };
    let reconnect = watch
        .births
        .lock()
        .unwrap()
        .iter()
        .find(|(t, c)| *t >= restarted && *c >= 2)
        .map(|(t, _)| t.duration_since(restarted))
        .expect("the agent's birth after the restart");
    let hello = after(&watch.hellos);
    // The stated constant: the collector's own reconnect (100 ms doubling
    // to RECONNECT_MAX = 2 s, equal jitter), so its next attempt comes at
    // most 2 s (here the outage length) after the restart; plus 1 s for its
    // commit, the ack and the feed poll.
    let bound = 2 * reconnect + OUTAGE + Duration::from_secs(1);
    println!(
        "broker restart (no persistence, ack_timeout 30 s, outage {OUTAGE:?}): agent reconnected after {reconnect:?}, collector hello after {hello:?}, backlog drained after {drained:?}; bound 2 × reconnect + {:?} = {bound:?}",
        OUTAGE + Duration::from_secs(1)
    );
    assert!(
        drained <= bound,
        "drained after {drained:?}, more than 2 × the agent's reconnect ({reconnect:?}) + {:?}\n{}",
        OUTAGE + Duration::from_secs(1),
        agent.log_tail()
    );
    assert!(
        drained < Duration::from_secs(10),
        "far under the 30 s ack timeout"
    );
    assert!(agent.alive());
    agent.stop();
}
