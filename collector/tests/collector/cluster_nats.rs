//! Cluster mode's partitions on a real 3-node NATS cluster (Debian's
//! nats-server 2.9, `muster_testkit::NatsCluster`) with the subject mapping
//! `cluster::partition::nats_config` gives: telemetry an agent publishes
//! over MQTT on one node arrives, on another node, in the partition
//! `cluster::partition::of` computes for its unit; state keeps its topic.
//! The JetStream stream (`cluster::stream`) takes those subjects, and
//! partition p's durable consumer gets exactly partition p's units.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use muster_collector::cluster::partition;
use muster_collector::cluster::stream::{self, StreamError, StreamSpec};
use muster_proto::UnitId;
use muster_testkit::NatsCluster;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

fn client_on(id: &str, port: u16) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    AsyncClient::new(o, 64)
}

/// An agent stand-in on `port` that publishes each unit's name on its
/// telemetry topic (QoS 1); the task drives its connection until aborted.
async fn publish_telemetry(
    id: &str,
    port: u16,
    units: &[UnitId],
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (publ, mut pub_loop) = client_on(id, port);
    let driver = tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    for u in units {
        let topic = muster_proto::topic::unit_topic(u, muster_proto::topic::TopicKind::Telemetry);
        publ.publish(topic, QoS::AtLeastOnce, false, u.to_string())
            .await
            .unwrap();
    }
    (publ, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_puts_telemetry_in_the_partition_the_collector_computes() {
    const PARTITIONS: u32 = 64;
    let nats = mapped_cluster(PARTITIONS).await;
    let units: Vec<UnitId> = (0..40)
        .map(|i| UnitId::new(format!("agency-{}", i % 3), format!("E{i}")).unwrap())
        .collect();

    let (sub, mut sub_loop) = client_on("partition-watch", nats.mqtt_port(2));
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

    let (publ, driver) = publish_telemetry("partition-agent", nats.mqtt_port(0), &units).await;
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

fn spec(name: &str) -> StreamSpec {
    StreamSpec {
        name: name.into(),
        partitions: 16,
        replicas: 3,
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(600),
        max_ack_pending: 256,
        ack_wait: Duration::from_secs(30),
    }
}

/// A 3-node cluster whose nodes map telemetry into `partitions`.
async fn mapped_cluster(partitions: u32) -> NatsCluster {
    let config = partition::nats_config(partitions).unwrap();
    tokio::task::spawn_blocking(move || NatsCluster::start_with(3, &config))
        .await
        .unwrap()
}

/// [`mapped_cluster`] with `spec`'s stream, through a client on node `via`.
async fn cluster_with_stream(
    spec: &StreamSpec,
    via: usize,
) -> (
    NatsCluster,
    async_nats::jetstream::Context,
    async_nats::jetstream::stream::Stream,
) {
    let nats = mapped_cluster(spec.partitions).await;
    let client = async_nats::connect(nats.nats_url(via)).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let s = stream::ensure(&js, spec).await.unwrap();
    (nats, js, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_consumer_gets_its_units_and_acked_telemetry_leaves_the_stream() {
    let spec = spec("MUSTER");
    let (nats, js, s) = cluster_with_stream(&spec, 1).await;
    // Every partition's consumer exists before records arrive (interest
    // retention keeps a message only for consumers that want it).
    let mut consumers = Vec::new();
    for p in 0..spec.partitions {
        consumers.push(stream::partition_consumer(&s, &spec, p).await.unwrap());
    }
    // Created twice (another collector starting): the same consumer.
    stream::partition_consumer(&s, &spec, 0).await.unwrap();

    let units: Vec<UnitId> = (0..48)
        .map(|i| UnitId::new(format!("agency-{}", i % 4), format!("E{i}")).unwrap())
        .collect();
    let (_publ, driver) = publish_telemetry("partition-agent-2", nats.mqtt_port(0), &units).await;

    // Each consumer: what it got, until all units are in (30 s at most).
    let mut got: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.values().map(Vec::len).sum::<usize>() < units.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {got:?} of {} arrived",
            units.len()
        );
        for (p, c) in consumers.iter().enumerate() {
            let mut batch = c
                .fetch()
                .max_messages(64)
                .expires(Duration::from_millis(200))
                .messages()
                .await
                .unwrap();
            while let Some(m) = batch.next().await {
                let m = m.unwrap();
                got.entry(p as u32)
                    .or_default()
                    .push(String::from_utf8(m.payload.to_vec()).unwrap());
                m.ack().await.unwrap();
            }
        }
    }
    driver.abort();
    let mut want: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for u in &units {
        want.entry(partition::of(u, spec.partitions).unwrap())
            .or_default()
            .push(u.to_string());
    }
    for v in got.values_mut().chain(want.values_mut()) {
        v.sort();
    }
    assert_eq!(got, want);
    assert!(want.len() > 8, "48 units in {} partitions", want.len());

    // Acked by their only interested consumer: gone from the stream.
    let mut s = js.get_stream(&spec.name).await.unwrap();
    let mut left = u64::MAX;
    for _ in 0..50 {
        left = s.info().await.unwrap().state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "acked telemetry still in the stream");

    // A stream of that name with other subjects is named, not changed.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "OTHER".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    match stream::ensure(&js, &self::spec("OTHER")).await {
        Err(StreamError::Mismatch { what, found, .. }) => {
            assert_eq!((what, found.as_str()), ("subjects", "other.>"));
        }
        other => panic!("{other:?}"),
    }
}

/// Interest retention keeps a message only for the consumers that exist
/// when it arrives: telemetry of a partition with no consumer yet is not
/// kept (its agents still hold it and send it again), so cluster mode
/// creates every partition's consumer before it takes any lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_of_a_partition_without_a_consumer_is_not_kept() {
    let spec = spec("MUSTER");
    let (nats, js, s) = cluster_with_stream(&spec, 0).await;
    let with_consumer = 0..spec.partitions / 2;
    for p in with_consumer.clone() {
        stream::partition_consumer(&s, &spec, p).await.unwrap();
    }
    let units: Vec<UnitId> = (0..48)
        .map(|i| UnitId::new("agency-0", format!("E{i}")).unwrap())
        .collect();
    let kept = units
        .iter()
        .filter(|u| with_consumer.contains(&partition::of(u, spec.partitions).unwrap()))
        .count() as u64;
    assert!(kept > 0 && kept < 48, "{kept} of 48 in the first half");
    let (_publ, driver) = publish_telemetry("partition-agent-3", nats.mqtt_port(1), &units).await;
    // Every record reached the stream's subjects once the last one is in
    // (one connection, QoS 1, in order): then count what is kept.
    let mut s = js.get_stream(&spec.name).await.unwrap();
    let mut seen = (0, 0);
    for _ in 0..100 {
        let st = s.info().await.unwrap().state.clone();
        seen = (st.messages, st.last_sequence);
        if st.last_sequence >= 48 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver.abort();
    assert_eq!(seen, (kept, 48), "(kept, sequence)");
}
