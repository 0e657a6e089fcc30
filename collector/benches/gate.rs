//! The embedded broker's gate: message rate through the gate against the
//! path without it (clients straight to rumqttd, as before the gate), in
//! the same run, on the same broker.
//!
//! ```text
//! cargo bench -p muster-collector --bench gate -- --connections 20 --messages 5000 --rounds 2
//! ```
//!
//! `--connections` units each publish `--messages` encoded host samples
//! (QoS 1, as agents do) as fast as the broker takes them; a subscriber
//! standing in for the collector (MQTT 5, the internal listener, as the
//! collector's own client) counts them. Rate = messages / time until the
//! last one arrived. Rounds alternate direct and gate; then the same load
//! on a Mosquitto (testkit's, anonymous, no ACL) for scale.

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster_collector::broker::EmbeddedBroker;
use muster_collector::broker::auth::{Authenticator, StaticUnitCredentials};
use muster_collector::config::BrokerConfig;
use muster_proto::{Body, BootId, Message, Payload, Record, UnitId, encode, fixtures};

fn arg(name: &str, default: usize) -> usize {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next().and_then(|v| v.parse().ok()).unwrap_or(default);
        }
    }
    default
}

#[tokio::main]
async fn main() {
    let connections = arg("--connections", 20);
    let messages = arg("--messages", 5000);
    let rounds = arg("--rounds", 2);
    let mut units = StaticUnitCredentials::new();
    for i in 0..connections {
        units.insert(
            UnitId::new("bench", format!("U{i}")).unwrap(),
            format!("pw-{i}").as_bytes(),
        );
    }
    let auth = Authenticator::new(Arc::new(units), BTreeMap::new());
    let broker = EmbeddedBroker::start(
        "127.0.0.1:0".parse().unwrap(),
        &BrokerConfig::default(),
        auth,
        Duration::from_secs(10),
    )
    .await
    .expect("start the embedded broker");
    let mut mc = muster_collector::config::Config::parse("[store]\npath = \"/nonexistent\"\n")
        .unwrap()
        .mqtt;
    mc.client_id = "bench-subscriber".into();
    broker.configure_collector(&mut mc);

    let (u, p) = mc.credentials.clone().unwrap();
    let received = subscriber(&mc.host, mc.port, Some((u, p.0)), &mc.client_id).await;
    // The same load on Mosquitto (anonymous, testkit's config), for scale.
    let mosquitto = muster_testkit::Mosquitto::start();
    let received_m = subscriber("127.0.0.1", mosquitto.port(), None, "bench-subscriber").await;

    println!(
        "gate bench: {connections} connections x {messages} QoS 1 messages of {} bytes",
        payload(&UnitId::new("bench", "U0").unwrap(), 1).len()
    );
    let mut direct = Vec::new();
    let mut gated = Vec::new();
    for round in 0..rounds {
        for through_gate in [false, true] {
            let rate = run(
                &broker,
                Path::Gate(through_gate),
                connections,
                messages,
                &received,
                round,
            )
            .await;
            println!(
                "  round {round}: {:<6} {rate:>9.0} msg/s",
                if through_gate { "gate" } else { "direct" }
            );
            if through_gate {
                gated.push(rate)
            } else {
                direct.push(rate)
            }
        }
    }
    let mut mosq = Vec::new();
    for round in 0..rounds {
        let rate = run(
            &broker,
            Path::Mosquitto(mosquitto.port()),
            connections,
            messages,
            &received_m,
            round,
        )
        .await;
        println!("  round {round}: mosquitto {rate:>6.0} msg/s");
        mosq.push(rate);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "best: direct {:.0} msg/s, gate {:.0} msg/s, gate/direct {:.2}",
        best(&direct),
        best(&gated),
        best(&gated) / best(&direct)
    );
    println!(
        "best: mosquitto {:.0} msg/s, gate/mosquitto {:.2}",
        best(&mosq),
        best(&gated) / best(&mosq)
    );
}

fn payload(unit: &UnitId, seq: u64) -> Vec<u8> {
    encode(&Message {
        unit: unit.clone(),
        body: Body::Record(Record {
            boot: BootId(1),
            seq,
            at_ms: seq,
            payload: Payload::Host(fixtures::host_sample()),
        }),
    })
    .unwrap()
}

/// Where the publishers connect.
#[derive(Clone, Copy)]
enum Path {
    /// The embedded broker: through the gate, or straight to rumqttd.
    Gate(bool),
    /// A Mosquitto on this port.
    Mosquitto(u16),
}

/// A subscriber standing in for the collector (MQTT 5); counts telemetry.
async fn subscriber(
    host: &str,
    port: u16,
    login: Option<(String, String)>,
    id: &str,
) -> Arc<AtomicU64> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(id, host, port);
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    o.set_max_packet_size(Some(1 << 20));
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 65_536);
    client
        .subscribe("muster/v1/+/+/telemetry", QoS::AtLeastOnce)
        .await
        .unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    received
}

async fn run(
    broker: &EmbeddedBroker,
    path: Path,
    connections: usize,
    messages: usize,
    received: &AtomicU64,
    round: usize,
) -> f64 {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let (v4, user, pass) = broker.internal_v4_login();
    let start_count = received.load(Ordering::Relaxed);
    let target = start_count + (connections * messages) as u64;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..connections {
        let unit = UnitId::new("bench", format!("U{i}")).unwrap();
        let mut o = match path {
            Path::Gate(true) => {
                let mut o =
                    MqttOptions::new(format!("g{round}-{i}"), "127.0.0.1", broker.addr.port());
                o.set_credentials(unit.to_string(), format!("pw-{i}"));
                o
            }
            Path::Gate(false) => {
                let mut o =
                    MqttOptions::new(format!("d{round}-{i}"), v4.ip().to_string(), v4.port());
                o.set_credentials(user.clone(), pass.clone());
                o
            }
            Path::Mosquitto(port) => MqttOptions::new(format!("m{round}-{i}"), "127.0.0.1", port),
        };
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(100);
        let (client, mut el) = AsyncClient::new(o, 1024);
        let topic = format!("muster/v1/bench/U{i}/telemetry");
        tasks.push(tokio::spawn(async move {
            let pump = tokio::spawn(async move {
                loop {
                    if el.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
            for seq in 1..=messages as u64 {
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload(&unit, seq))
                    .await
                    .unwrap();
            }
            (client, pump)
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "messages lost: {} of {}",
            received.load(Ordering::Relaxed) - start_count,
            target - start_count
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    for (c, pump) in keep {
        let _ = c.disconnect().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        pump.abort();
    }
    (connections * messages) as f64 / secs
}
