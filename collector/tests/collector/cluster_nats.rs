//! Cluster mode's partitions on a real 3-node NATS cluster (Debian's
//! nats-server 2.9, `muster_testkit::NatsCluster`) with the subject mapping
//! `cluster::partition::nats_config` gives: telemetry an agent publishes
//! over MQTT on one node arrives, on another node, in the partition
//! `cluster::partition::of` computes for its unit; state keeps its topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use muster_collector::cluster::partition;
use muster_proto::UnitId;
use muster_testkit::NatsCluster;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

fn client(id: &str, port: u16) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    AsyncClient::new(o, 64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_puts_telemetry_in_the_partition_the_collector_computes() {
    const PARTITIONS: u32 = 64;
    let config = partition::nats_config(PARTITIONS).unwrap();
    let nats = tokio::task::spawn_blocking(move || NatsCluster::start_with(3, &config))
        .await
        .unwrap();
    let units: Vec<UnitId> = (0..40)
        .map(|i| UnitId::new(format!("agency-{}", i % 3), format!("E{i}")).unwrap())
        .collect();

    let (sub, mut sub_loop) = client("partition-watch", nats.mqtt_port(2));
    sub.subscribe("muster/v1/+/+/telemetry/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    sub.subscribe("muster/v1/+/+/state", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut subscribed = 0;
    while subscribed < 2 {
        if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.unwrap() {
            subscribed += 1;
        }
    }

    let (publ, mut pub_loop) = client("partition-agent", nats.mqtt_port(0));
    let driver = tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    for u in &units {
        let topic = muster_proto::topic::unit_topic(u, muster_proto::topic::TopicKind::Telemetry);
        publ.publish(topic, QoS::AtLeastOnce, false, u.to_string())
            .await
            .unwrap();
    }
    let state = muster_proto::topic::unit_topic(&units[0], muster_proto::topic::TopicKind::State);
    publ.publish(state.clone(), QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();

    // topic -> payload, until every unit's telemetry and the state are in.
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < units.len() + 1 {
        let Ok(ev) = tokio::time::timeout_at(deadline, sub_loop.poll()).await else {
            panic!("only {} of {} arrived: {got:?}", got.len(), units.len() + 1);
        };
        if let Event::Incoming(Packet::Publish(p)) = ev.unwrap() {
            got.insert(
                p.topic.clone(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
            );
        }
    }
    driver.abort();

    assert_eq!(got.get(&state).map(String::as_str), Some("online"));
    let mut used = BTreeSet::new();
    for u in &units {
        let p = partition::of(u, PARTITIONS).unwrap();
        used.insert(p);
        let topic = format!("muster/v1/{}/{}/telemetry/{p}", u.agency, u.unit);
        assert_eq!(
            got.get(&topic).map(String::as_str),
            Some(u.to_string().as_str()),
            "{u}: expected on {topic}; got {:?}",
            got.keys()
                .filter(|k| k.contains(&format!("/{}/", u.unit)))
                .collect::<Vec<_>>()
        );
    }
    assert!(used.len() > 20, "40 units in {} partitions", used.len());
}
