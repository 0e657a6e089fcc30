//! Cluster mode end to end (issue 15), with real processes only: three
//! `nats-server` nodes (JetStream, MQTT, the partition mapping), a
//! PostgreSQL 15 in a temp dir, two `muster-collector run` in cluster mode
//! and real `muster-agent run` processes that fail over between the
//! nodes' MQTT listeners.
//!
//! The collectors run the shipped example, `packaging/cluster/collector.toml`,
//! with only its addresses, secrets and paths replaced ([`collector_toml`]);
//! the NATS nodes get the mapping block of `packaging/cluster/nats-server.conf`.
//!
//! Who owns a partition is read from the lease table (`psql`), and which
//! partition a unit is in from `cluster::partition::of`, the function
//! checked against nats-server's own mapping.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use muster_collector::cluster::partition;
use muster_proto::UnitId;
use muster_testkit::{NatsCluster, Postgres, ProxyMode, TcpProxy, TempDir, eventually_blocking};
use serde_json::Value;

use crate::procs::{
    ADMIN, AGENCY, AgentProc, AgentSpec, CollectorProc, FIRE, all_complete, brief, drained,
    http_get,
};

/// The shipped cluster example, re-addressed for this test
/// (`muster_testkit::cluster_example`), with the suite's agency, a webhook
/// and `[ingest]` keys when asked.
fn collector_toml(
    id: &str,
    nats: &NatsCluster,
    postgres: &str,
    dir: &Path,
    extra_ingest: &[(&str, &str)],
    webhook: Option<&str>,
) -> String {
    let mut t = muster_testkit::cluster_example::collector_toml(id, ADMIN, nats, postgres, dir);
    let agency = &mut t["agency"].as_array_mut().unwrap()[0];
    let agency = agency.as_table_mut().unwrap();
    agency.insert("name".into(), AGENCY.into());
    agency.insert("token".into(), FIRE.into());
    if let Some(url) = webhook {
        let mut w = toml::Table::new();
        w.insert("url".into(), url.into());
        w.insert("secret".into(), "cluster-hook-secret-0123456789".into());
        w.insert("batch_window".into(), "200ms".into());
        agency.insert("webhook".into(), w.into());
    }
    let ingest = t["ingest"].as_table_mut().unwrap();
    for (k, v) in extra_ingest {
        let v = match v.parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => (*v).into(),
        };
        ingest.insert((*k).into(), v);
    }
    toml::to_string(&t).unwrap()
}

struct Rig {
    dir: TempDir,
    nats: NatsCluster,
    pg: Postgres,
    collectors: Vec<CollectorProc>,
    agents: Vec<(AgentSpec, Option<AgentProc>)>,
    partitions: u32,
    /// Between the collectors and PostgreSQL, when the test cuts them off.
    pg_proxy: Option<TcpProxy>,
    /// The agency's webhook receiver, when configured.
    hooks: Option<Hooks>,
    /// One rig at a time (last field: dropped after the processes).
    _one: std::sync::MutexGuard<'static, ()>,
}

/// A rig is 3 NATS nodes, PostgreSQL, 2 collectors and up to 20 agents:
/// on a 2-core machine two at once starve each other past their timeouts.
static ONE_RIG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A transition as notified: (unit, from, to, at_ms).
type Noted = (String, String, String, u64);

/// A webhook receiver on 127.0.0.1:0 (plain std threads): every request's
/// `X-Muster-Delivery` and JSON body, answered 200.
#[derive(Clone, Default)]
struct Hooks {
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl Hooks {
    fn start() -> (Hooks, String) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let hooks = Hooks::default();
        let got = hooks.got.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let got = got.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s);
                    loop {
                        let (mut len, mut delivery) = (0usize, String::new());
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = l.split_once(':') {
                                match k.to_ascii_lowercase().as_str() {
                                    "content-length" => len = v.trim().parse().unwrap_or(0),
                                    "x-muster-delivery" => delivery = v.trim().to_owned(),
                                    _ => {}
                                }
                            }
                        }
                        let mut body = vec![0u8; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        got.lock().unwrap().push((delivery, v));
                        let _ = r
                            .get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    }
                });
            }
        });
        (hooks, url)
    }

    /// Every transition delivered, as (unit, from, to, at_ms), and the
    /// delivery ids.
    fn transitions(&self) -> (Vec<Noted>, Vec<String>) {
        let got = self.got.lock().unwrap();
        let mut out = Vec::new();
        for (_, v) in got.iter() {
            let mut all: Vec<&Value> = v["transitions"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            for g in v["incidents"].as_array().into_iter().flatten() {
                all.extend(g["transitions"].as_array().into_iter().flatten());
            }
            for t in all {
                out.push((
                    t["unit"].as_str().unwrap_or_default().to_owned(),
                    t["from"].as_str().unwrap_or_default().to_owned(),
                    t["to"].as_str().unwrap_or_default().to_owned(),
                    t["at_ms"].as_u64().unwrap_or(0),
                ));
            }
        }
        (out, got.iter().map(|(d, _)| d.clone()).collect())
    }
}

const IDS: [&str; 2] = ["collector-1", "collector-2"];

impl Rig {
    /// `ingest[i]`: keys set in collector i's `[ingest]`.
    fn start(agents: usize, ingest: [&[(&str, &str)]; 2]) -> Rig {
        Rig::start_with(agents, ingest, false)
    }

    /// With `pg_proxy`, the collectors reach PostgreSQL through a
    /// [`TcpProxy`] the test can black-hole.
    fn start_with(agents: usize, ingest: [&[(&str, &str)]; 2], pg_proxy: bool) -> Rig {
        Rig::start_full(agents, ingest, pg_proxy, false, "")
    }

    /// With `webhook`, the agency's notifications go to a [`Hooks`];
    /// `agent_extra` is appended to every agent's config.
    fn start_full(
        agents: usize,
        ingest: [&[(&str, &str)]; 2],
        pg_proxy: bool,
        webhook: bool,
        agent_extra: &str,
    ) -> Rig {
        let one = ONE_RIG.lock().unwrap_or_else(|e| e.into_inner());
        let (hooks, hook_url) = match webhook {
            true => {
                let (h, u) = Hooks::start();
                (Some(h), Some(u))
            }
            false => (None, None),
        };
        let dir = TempDir::new().unwrap();
        let nats = NatsCluster::start_with(3, &muster_testkit::cluster_example::nats_mappings());
        let pg = Postgres::start();
        let pg_proxy = pg_proxy.then(|| TcpProxy::start(pg.port()));
        let pg_url = match &pg_proxy {
            Some(p) => pg
                .url()
                .replace(&format!(":{}/", pg.port()), &format!(":{}/", p.port())),
            None => pg.url(),
        };
        let mut collectors = Vec::new();
        for (id, extra_ingest) in IDS.into_iter().zip(ingest) {
            let d = dir.path().join(id);
            std::fs::create_dir_all(&d).unwrap();
            let cfg = d.join("collector.toml");
            std::fs::write(
                &cfg,
                collector_toml(id, &nats, &pg_url, &d, extra_ingest, hook_url.as_deref()),
            )
            .unwrap();
            collectors.push(CollectorProc::spawn(&cfg, false));
        }
        let partitions = muster_testkit::cluster_example::partitions();
        let mut rig = Rig {
            dir,
            nats,
            pg,
            collectors,
            agents: Vec::new(),
            partitions,
            pg_proxy,
            hooks,
            _one: one,
        };
        rig.wait_split(&IDS);
        let mqtt: Vec<String> = (0..3).map(|i| rig.nats.mqtt_url(i)).collect();
        for i in 0..agents {
            let unit = format!("E{i}");
            let mut spec = AgentSpec::new(&unit, &mqtt[0], &rig.dir.path().join(&unit));
            // Each agent starts on another node.
            spec.urls = (0..3).map(|k| mqtt[(i + k) % 3].clone()).collect();
            spec.extra.push_str(agent_extra);
            let a = AgentProc::spawn(&spec, false);
            rig.agents.push((spec, Some(a)));
        }
        rig
    }

    /// partition -> owner, from the lease table (live leases only).
    fn owners(&self) -> BTreeMap<u32, String> {
        let out = self
            .pg
            .psql("SELECT partition, owner FROM partition_leases WHERE owner IS NOT NULL AND expires_at > now()")
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let (p, o) = l.split_once('|')?;
                Some((p.trim().parse().ok()?, o.trim().to_owned()))
            })
            .collect()
    }

    /// Waits until `ids` hold every partition between them, evenly.
    fn wait_split(&self, ids: &[&str]) -> Duration {
        let t0 = Instant::now();
        let each = self.partitions as usize / ids.len();
        eventually_blocking(
            "the partitions split evenly",
            Duration::from_secs(60),
            || {
                let o = self.owners();
                let counts: Vec<usize> = ids
                    .iter()
                    .map(|id| o.values().filter(|v| v.as_str() == *id).count())
                    .collect();
                if o.len() == self.partitions as usize && counts.iter().all(|c| *c >= each) {
                    Ok(())
                } else {
                    Err(format!("{} held: {counts:?}", o.len()))
                }
            },
        );
        t0.elapsed()
    }

    /// Waits until `id` holds every partition and acts on them; how long.
    fn wait_owned_by(&self, id: &str) -> Duration {
        let c = IDS.iter().position(|x| *x == id).unwrap();
        let t0 = Instant::now();
        eventually_blocking(
            &format!("{id} holds every partition"),
            Duration::from_secs(30),
            || {
                let o = self.owners();
                let mine = o.values().filter(|v| v.as_str() == id).count();
                let acting = self
                    .metric(c, "muster_cluster_partitions_owned")
                    .unwrap_or(0.0) as u32;
                if mine == self.partitions as usize && acting == self.partitions {
                    Ok(())
                } else {
                    Err(format!("leases {mine}, acting on {acting}"))
                }
            },
        );
        t0.elapsed()
    }

    fn owner_of(&self, unit: &str) -> Option<String> {
        let p = partition::of(&UnitId::new(AGENCY, unit).unwrap(), self.partitions).unwrap();
        self.owners().get(&p).cloned()
    }

    /// An agent whose unit the collector `id` owns now.
    fn agent_owned_by(&self, id: &str) -> usize {
        (0..self.agents.len())
            .find(|i| {
                self.agents[*i].1.is_some()
                    && self.owner_of(&self.agents[*i].0.unit).as_deref() == Some(id)
            })
            .unwrap_or_else(|| panic!("no running agent is owned by {id}"))
    }

    /// Every agent's unit is known to collector `c` (whoever owns it) with
    /// at least `samples` records.
    fn wait_all_seen(&self, c: usize, samples: u64) {
        for (spec, _) in &self.agents {
            self.collectors[c].wait_unit(
                &spec.unit,
                "records stored",
                Duration::from_secs(60),
                |v| {
                    v["boots"].as_array().is_some_and(|b| {
                        b.iter()
                            .map(|x| x["received"].as_u64().unwrap_or(0))
                            .sum::<u64>()
                            >= samples
                    })
                },
            );
        }
    }

    /// Restarts killed agents (their buffers hold what was not acked), waits
    /// until every unit on collector `c` has every record of every boot,
    /// once, and its agent's buffer is drained.
    fn wait_nothing_missing(&mut self, c: usize) {
        for (spec, a) in &mut self.agents {
            if a.is_none() {
                *a = Some(AgentProc::spawn(spec, false));
            }
        }
        for (spec, _) in &self.agents {
            self.collectors[c].wait_unit(
                &spec.unit,
                "every record stored once, buffer drained",
                Duration::from_secs(120),
                |v| all_complete(v) && drained(v),
            );
        }
    }

    fn metric(&self, c: usize, name: &str) -> Option<f64> {
        let (s, body) = http_get(self.collectors[c].addr, "/metrics", Some(ADMIN))?;
        if s != 200 {
            return None;
        }
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Rig {
    /// A failing test (or any, with MUSTER_E2E_KEEP set) keeps its
    /// processes' logs and configs.
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("MUSTER_E2E_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, TempDir::new().unwrap());
            eprintln!("cluster rig kept for inspection: {}", dir.keep().display());
        }
    }
}

/// A unit's status on a collector's feed.
fn status(v: &Value) -> String {
    v["status"].as_str().unwrap_or_default().to_owned()
}

/// Must-show 1 and 5: kill -9 a collector; the other takes its partitions
/// within 10 s (printed), its units keep being flagged, nothing is missing;
/// and an SSE client on one collector sees a transition the other decided.
#[test]
fn a_killed_collectors_partitions_are_taken_over_and_nothing_is_missing() {
    let mut rig = Rig::start_full(20, [&[], &[]], false, true, "");
    rig.wait_all_seen(0, 3);
    rig.wait_all_seen(1, 3);

    // Must-show 5: collector-2 decides, collector-1's stream shows it.
    let victim = rig.agent_owned_by(IDS[1]);
    let unit = rig.agents[victim].0.unit.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut sse = rt.block_on(muster_testkit::http::Sse::connect(
        rig.collectors[0].addr,
        "/api/v1/stream",
        Some(ADMIN),
    ));
    assert_eq!(sse.status, 200);
    rig.agents[victim].1.take().unwrap().kill9_now();
    let (seen, skipped) = rt.block_on(sse.wait_for(Duration::from_secs(30), |ev| {
        let v = ev.json();
        v["unit"] == unit.as_str() && v["to"] == "lost"
    }));
    let seen = seen.unwrap_or_else(|| {
        panic!(
            "collector-1's stream never showed {unit} lost (decided by its owner collector-2); saw {:?}",
            skipped.iter().map(|e| e.data.clone()).collect::<Vec<_>>()
        )
    });
    println!(
        "SSE on collector-1 saw collector-2's transition: {}",
        seen.data
    );

    // Webhooks while both collectors run: the transition is notified, and
    // in the two seconds after (an observation window: two senders would
    // each send within a batch window, 200 ms, of reading it) not again.
    let hooks = rig.hooks.clone().unwrap();
    let notified = |hooks: &Hooks| {
        hooks
            .transitions()
            .0
            .iter()
            .filter(|t| t.0 == unit && t.2 == "lost")
            .count()
    };
    eventually_blocking(
        "the transition notified",
        Duration::from_secs(30),
        || match notified(&hooks) {
            0 => Err("not yet"),
            _ => Ok(()),
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        notified(&hooks),
        1,
        "{unit}'s transition notified more than once"
    );

    // Must-show 1: kill -9 collector-2.
    rig.collectors[1].kill9();
    let took = rig.wait_owned_by(IDS[0]);
    println!(
        "takeover after kill -9: {:.2} s for {} partitions",
        took.as_secs_f64(),
        rig.partitions / 2
    );
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");

    // Its units keep being flagged: another of collector-2's agents dies.
    let p_of = |u: &str| partition::of(&UnitId::new(AGENCY, u).unwrap(), rig.partitions).unwrap();
    let victim2 = (0..rig.agents.len())
        .find(|i| {
            rig.agents[*i].1.is_some() && {
                // Epoch 1: collector-1 from the start; 2: collector-2 took
                // it from collector-1's surplus; 3: collector-1 took it back
                // from the dead collector-2.
                let p = p_of(&rig.agents[*i].0.unit);
                rig.pg
                    .psql(&format!(
                        "SELECT epoch FROM partition_leases WHERE partition = {p}"
                    ))
                    .unwrap_or_default()
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
                    >= 3
            }
        })
        .expect("an agent of a partition collector-1 took over");
    let unit2 = rig.agents[victim2].0.unit.clone();
    rig.agents[victim2].1.take().unwrap().kill9_now();
    let v = rig.collectors[0].wait_unit(
        &unit2,
        "flagged lost by its new owner",
        Duration::from_secs(30),
        |v| status(v) == "lost",
    );
    println!(
        "{unit2} flagged by collector-1 after the takeover: {}",
        brief(&v)
    );

    rig.wait_nothing_missing(0);

    // Webhooks: every transition in the feed's event log was notified,
    // once, whichever collector decided it and whatever died meanwhile.
    let events = rig.collectors[0].get("/api/v1/events?limit=1000");
    let want: Vec<Noted> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "transition")
        .map(|e| {
            (
                e["unit"].as_str().unwrap().to_owned(),
                e["from"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
                e["at_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(want.len() >= 4, "transitions in the event log: {events}");
    let hooks = rig.hooks.clone().unwrap();
    let (got, deliveries) =
        eventually_blocking("every transition notified", Duration::from_secs(30), || {
            let (got, d) = hooks.transitions();
            if want.iter().all(|w| got.contains(w)) {
                Ok((got, d))
            } else {
                Err(format!(
                    "{} of {} notified",
                    want.iter().filter(|w| got.contains(w)).count(),
                    want.len()
                ))
            }
        });
    let mut seen = std::collections::BTreeSet::new();
    for t in &got {
        assert!(
            seen.insert(t.clone()),
            "notified twice: {t:?} (deliveries {deliveries:?})"
        );
    }
    let ids: std::collections::BTreeSet<&String> = deliveries.iter().collect();
    assert_eq!(
        ids.len(),
        deliveries.len(),
        "a delivery id came twice: {deliveries:?}"
    );
    println!(
        "webhooks: {} transitions in {} notifications, each once",
        got.len(),
        deliveries.len()
    );
}

/// Must-show 2: kill -9 a NATS node. Agents on it fail over to the others,
/// the collectors' NATS connections too, and nothing is missing.
#[test]
fn a_killed_nats_node_loses_nothing() {
    let mut rig = Rig::start(9, [&[], &[]]);
    rig.wait_all_seen(0, 3);
    let before: Vec<u64> = rig
        .agents
        .iter()
        .map(|(spec, _)| received(&rig.collectors[0].unit(&spec.unit).unwrap()))
        .collect();
    rig.nats.kill(0);
    println!("nats node n1 killed");
    for ((spec, _), b) in rig.agents.iter().zip(&before) {
        rig.collectors[0].wait_unit(
            &spec.unit,
            "records after the node died",
            Duration::from_secs(60),
            |v| received(v) >= b + 5,
        );
    }
    rig.wait_nothing_missing(0);
}

/// Issue 15: unit status topics are retained in cluster mode. The
/// collectors publish their units' status over MQTT to the NATS nodes'
/// listeners (`[cluster] mqtt`, as shipped), so a subscriber that connects
/// later, to another node, gets the unit's last status; after its owner is
/// killed -9, the new owner's status replaces it.
#[test]
fn status_topics_are_retained_and_the_new_owner_replaces_them() {
    let mut rig = Rig::start(4, [&[], &[]]);
    rig.wait_all_seen(1, 2);
    let i = rig.agent_owned_by(IDS[1]);
    let unit = rig.agents[i].0.unit.clone();
    let topic = format!("muster/v1/{AGENCY}/{unit}/status");

    // A clean stop: `off`, decided by collector-2, the owner.
    let t0 = Instant::now();
    rig.agents[i].1.take().unwrap().stop();
    let off = rig.collectors[1].wait_unit(&unit, "off", Duration::from_secs(30), |v| {
        status(v) == "off"
    });
    let off_since = off["since_ms"].as_u64().unwrap();
    let got = eventually_blocking(
        "the retained off status on node 2",
        Duration::from_secs(30),
        || match retained_status(rig.nats.mqtt_port(1), &topic) {
            Some((true, v)) if status(&v) == "off" => Ok(v),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(got["since_ms"].as_u64(), Some(off_since), "{got}");
    assert_eq!(got["unit"], unit.as_str(), "{got}");
    println!(
        "{unit}: retained off from collector-2 read on node 2, {:.2} s after the stop: {got}",
        t0.elapsed().as_secs_f64()
    );

    // kill -9 the owner; collector-1 takes the partition and decides the
    // unit's next transition (its agent back: no longer off).
    rig.collectors[1].kill9();
    let took = rig.wait_owned_by(IDS[0]);
    assert_eq!(rig.owner_of(&unit).as_deref(), Some(IDS[0]));
    println!(
        "collector-2 killed; collector-1 holds every partition after {:.2} s",
        took.as_secs_f64()
    );
    let spec = rig.agents[i].0.clone();
    rig.agents[i].1 = Some(AgentProc::spawn(&spec, false));
    let t1 = Instant::now();
    let (got, feed) = eventually_blocking(
        "the new owner's retained status on node 3, as its feed says",
        Duration::from_secs(60),
        || {
            let feed = rig.collectors[0].unit(&unit).ok_or("unknown")?;
            if status(&feed) == "off" || feed["since_ms"].as_u64() <= Some(off_since) {
                return Err(format!("feed: {}", brief(&feed)));
            }
            match retained_status(rig.nats.mqtt_port(2), &topic) {
                Some((true, v))
                    if status(&v) == status(&feed) && v["since_ms"] == feed["since_ms"] =>
                {
                    Ok((v, feed))
                }
                other => Err(format!("retained {other:?}; feed {}", brief(&feed))),
            }
        },
    );
    println!(
        "{unit}: retained {} from collector-1 (the new owner) read on node 3, {:.2} s after the agent restarted: {got}",
        status(&feed),
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(rig.metric(0, "muster_mqtt_publisher_connected"), Some(1.0));
}

/// The message a new MQTT subscriber to `topic` on `port` (a NATS node's
/// listener) gets within 3 s of its subscription: (retain flag, JSON).
fn retained_status(port: u16, topic: &str) -> Option<(bool, Value)> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new(
        format!("e2e-status-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 16);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut subscribed: Option<Instant> = None;
    let mut got = None;
    while Instant::now() < deadline
        && subscribed.is_none_or(|t| t.elapsed() < Duration::from_secs(3))
    {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client.try_subscribe(topic, QoS::AtLeastOnce).unwrap();
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed = Some(Instant::now()),
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == topic => {
                got = serde_json::from_slice(&p.payload)
                    .ok()
                    .map(|v| (p.retain, v));
                break;
            }
            Ok(Err(_)) => std::thread::sleep(Duration::from_millis(200)),
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    got
}

/// Records received over every boot of a unit view.
fn received(v: &Value) -> u64 {
    v["boots"]
        .as_array()
        .map(|b| b.iter().map(|x| x["received"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

/// Must-show 3: a rolling restart, one collector at a time (SIGTERM,
/// start again). The feed of the collector not restarting answers every
/// poll with the whole fleet; a unit that dies while its owner is down is
/// flagged by the other, once; nothing is missing.
#[test]
fn a_rolling_restart_keeps_the_feed_answering_and_loses_nothing() {
    let mut rig = Rig::start(10, [&[], &[]]);
    rig.wait_all_seen(0, 3);
    rig.wait_all_seen(1, 3);
    let n = rig.agents.len();
    let mut died = Vec::new();
    for (i, id) in IDS.into_iter().enumerate() {
        let other = 1 - i;
        let addr = rig.collectors[other].addr;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut bad) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match http_get(addr, "/api/v1/units?limit=1000", Some(ADMIN)) {
                        Some((200, body)) => {
                            let v: Value = serde_json::from_str(&body).unwrap();
                            let units = v["items"].as_array().map_or(0, Vec::len);
                            if units == n {
                                ok += 1;
                            } else {
                                bad.push(format!("{units} units"));
                            }
                        }
                        other => bad.push(format!("{other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                (ok, bad)
            })
        };
        let victim = rig.agent_owned_by(id);
        let t0 = Instant::now();
        muster_testkit::signal(rig.collectors[i].child.id(), "TERM");
        let st = eventually_blocking(
            &format!("{} exits after SIGTERM", id),
            Duration::from_secs(30),
            || rig.collectors[i].child.try_wait().unwrap().ok_or("running"),
        );
        assert!(st.success(), "{} exit: {st}", id);
        rig.wait_owned_by(IDS[other]);
        println!(
            "{} stopped; {} held every partition {:.2} s after SIGTERM",
            id,
            IDS[other],
            t0.elapsed().as_secs_f64()
        );
        // A unit dies while its owner is down: the other one flags it.
        let unit = rig.agents[victim].0.unit.clone();
        rig.agents[victim].1.take().unwrap().kill9_now();
        rig.collectors[other].wait_unit(
            &unit,
            "flagged lost during the restart",
            Duration::from_secs(30),
            |v| status(v) == "lost",
        );
        died.push(unit);
        rig.collectors[i].start_again();
        rig.wait_split(&IDS);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (ok, bad) = poller.join().unwrap();
        println!(
            "{} restarted; {}'s feed answered {ok} polls, {} failed",
            id,
            IDS[other],
            bad.len()
        );
        assert!(
            bad.is_empty(),
            "polls of {} failed while {} restarted: {bad:?}",
            IDS[other],
            id
        );
        assert!(ok > 0);
    }
    // No transition lost (nor doubled): each death is one `lost` event.
    for unit in &died {
        let ev = rig.collectors[0].get(&format!("/api/v1/events?unit={AGENCY}/{unit}&limit=1000"));
        let lost = ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["to"] == "lost")
            .count();
        assert_eq!(lost, 1, "{unit}: {ev}");
    }
    rig.wait_nothing_missing(0);
}

/// Must-show 4: a collector that stops (SIGSTOP: a long GC or VM pause,
/// the textbook case for fencing) keeps believing it owns its partitions.
/// While it is stopped the other takes them; when it resumes, its first
/// commit is refused by the database (`muster_store_fenced_total`) and
/// nothing of it is written; then it rejoins and nothing is missing.
///
/// While collector-2 is stopped, NATS keeps delivering its partitions'
/// telemetry to its open pull requests (the kernel buffers it). With
/// `commit_max_records = 1` it commits the first of those the moment it
/// resumes: microseconds, where learning from the lease table that its
/// leases are gone takes several round trips to PostgreSQL. So the stale
/// write is attempted, every time, and the database refuses it.
#[test]
fn a_paused_collector_cannot_write_once_its_lease_is_gone() {
    let mut rig = Rig::start(10, [&[], &[("commit_max_records", "1")]]);
    rig.wait_all_seen(1, 3);
    let pid = rig.collectors[1].child.id();
    let fenced0 = rig.metric(1, "muster_store_fenced_total").unwrap();
    muster_testkit::signal(pid, "STOP");
    let took = rig.wait_owned_by(IDS[0]);
    println!(
        "collector-2 paused; collector-1 took every partition in {:.2} s",
        took.as_secs_f64()
    );
    muster_testkit::signal(pid, "CONT");
    let fenced = eventually_blocking(
        "collector-2's stale commit refused",
        Duration::from_secs(30),
        || match rig.metric(1, "muster_store_fenced_total") {
            Some(f) if f > fenced0 => Ok(f),
            f => Err(format!("{f:?}")),
        },
    );
    println!(
        "collector-2 resumed: {} commit(s) refused by the fence",
        fenced - fenced0
    );
    rig.wait_split(&IDS);
    rig.wait_nothing_missing(0);
}

/// PostgreSQL unreachable (black-holed between both collectors and it):
/// once their leases run out on their own clocks they stop pulling and
/// acking (no ack is published for a while; JetStream holds the data) and
/// report not ready; when it is reachable again they resume by themselves
/// and nothing is missing.
#[test]
fn postgres_unreachable_stops_acking_and_pulling_and_resumes_by_itself() {
    let mut rig = Rig::start_with(10, [&[], &[]], true);
    rig.wait_all_seen(0, 3);
    rig.pg_proxy.as_ref().unwrap().set(ProxyMode::BlackHole);
    let t0 = Instant::now();
    for (c, id) in IDS.iter().enumerate() {
        let addr = rig.collectors[c].addr;
        eventually_blocking(
            &format!("{id} not ready"),
            Duration::from_secs(30),
            || match http_get(addr, "/readyz", None) {
                Some((503, body)) if body.contains("\"leases\":false") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    println!(
        "both collectors not ready {:.2} s after PostgreSQL went dark",
        t0.elapsed().as_secs_f64()
    );
    let acks = |rig: &Rig| -> Vec<f64> {
        (0..2)
            .map(|c| rig.metric(c, "muster_acks_published_total").unwrap_or(-1.0))
            .collect()
    };
    let a0 = acks(&rig);
    let owned: Vec<f64> = (0..2)
        .map(|c| {
            rig.metric(c, "muster_cluster_partitions_owned")
                .unwrap_or(-1.0)
        })
        .collect();
    assert_eq!(
        owned,
        [0.0, 0.0],
        "partitions still acted on without PostgreSQL"
    );
    // An observation window, not a synchronisation: agents publish every
    // second, so three seconds of no acks is what "stops acking" means.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        acks(&rig),
        a0,
        "acks published while PostgreSQL was unreachable"
    );
    rig.pg_proxy.as_ref().unwrap().set(ProxyMode::Forward);
    let t1 = Instant::now();
    for (c, id) in IDS.iter().enumerate() {
        let addr = rig.collectors[c].addr;
        eventually_blocking(
            &format!("{id} ready again"),
            Duration::from_secs(60),
            || match http_get(addr, "/readyz", None) {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    println!(
        "both ready again {:.2} s after PostgreSQL came back",
        t1.elapsed().as_secs_f64()
    );
    rig.wait_split(&IDS);
    rig.wait_nothing_missing(0);
}

/// The agency's incidents as a collector's feed shows them:
/// (id, ended?, affected).
fn incidents_on(c: &CollectorProc) -> Vec<(String, bool, Vec<String>)> {
    c.get("/api/v1/incidents?state=all")["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                !i["ended_ms"].is_null(),
                i["affected"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// Agency-wide incidents in cluster mode: 8 agents on both collectors'
/// partitions fail the same probe; the coordinator opens one incident
/// naming units of both, every collector's feed shows it, each owner flags
/// its units with it; the coordinator is killed -9 while it is open and
/// the next one carries it on (the same id, never opened twice) and ends
/// it when the target heals.
#[test]
fn an_agency_wide_incident_spans_collectors_and_survives_its_coordinator() {
    // A port nothing listens on yet: the probe fails until the test listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probe = format!(
        "[[probe]]\nname = \"cad-api\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:{port}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
    );
    let mut rig = Rig::start_full(8, [&[], &[]], false, false, &probe);
    let units: Vec<String> = rig.agents.iter().map(|(s, _)| s.unit.clone()).collect();
    let owners: BTreeMap<String, String> = units
        .iter()
        .map(|u| (u.clone(), rig.owner_of(u).unwrap()))
        .collect();
    assert!(
        IDS.iter().all(|id| owners.values().any(|o| o == id)),
        "the units span both collectors: {owners:?}"
    );
    let coordinator = |rig: &Rig| rig.owners().get(&0).cloned().unwrap();
    let t0 = Instant::now();
    let open = eventually_blocking(
        "one incident naming all 8 units, on both collectors",
        Duration::from_secs(60),
        || {
            let got: Vec<_> = rig.collectors.iter().map(incidents_on).collect();
            match &got[0][..] {
                [(id, false, affected)] if affected.len() == units.len() && got[1] == got[0] => {
                    Ok(id.clone())
                }
                _ => Err(format!("{got:?}")),
            }
        },
    );
    println!(
        "incident {open} open on both collectors {:.1} s after start",
        t0.elapsed().as_secs_f64()
    );
    // Every owner flags its own units with it, whichever collector is asked.
    for u in &units {
        rig.collectors[1].wait_unit(
            u,
            "flagged with the incident",
            Duration::from_secs(20),
            |v| {
                v["reasons"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|r| r["rule"] == "incident" && r["incident"] == open.as_str())
                })
            },
        );
    }
    // kill -9 the coordinator while the incident is open.
    let first = coordinator(&rig);
    let c = IDS.iter().position(|x| *x == first).unwrap();
    let other = 1 - c;
    rig.collectors[c].kill9();
    rig.wait_owned_by(IDS[other]);
    println!(
        "coordinator {first} killed; {} now holds partition 0",
        IDS[other]
    );
    // The target heals: the next coordinator ends the same incident.
    // (Accepting: a backlog left full would refuse connections again.)
    let listening = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || for _ in listening.incoming() {});
    eventually_blocking("the incident ended", Duration::from_secs(60), || {
        let got = incidents_on(&rig.collectors[other]);
        match &got[..] {
            [(id, true, _)] if *id == open => Ok(()),
            _ => Err(format!("{got:?}")),
        }
    });
    // Opened once and ended once: the event log holds exactly two
    // versions of it, whoever decided.
    let versions = rig
        .pg
        .psql(&format!(
            "SELECT count(*), count(*) FILTER (WHERE change->>'ended_ms' IS NOT NULL) FROM events WHERE change->>'type' = 'incident' AND change->>'id' = '{open}'"
        ))
        .unwrap();
    println!("incident events (all, ended): {versions}");
    let (all, ended) = versions.trim().split_once('|').unwrap();
    assert_eq!(ended.trim(), "1", "ended once");
    assert!(all.trim().parse::<u32>().unwrap() >= 2);
    let opened = rig
        .pg
        .psql("SELECT count(DISTINCT change->>'id') FROM events WHERE change->>'type' = 'incident'")
        .unwrap();
    assert_eq!(opened.trim(), "1", "one incident, never opened twice");
    for u in &units {
        rig.collectors[other].wait_unit(u, "no incident flag", Duration::from_secs(20), |v| {
            v["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["rule"] != "incident"))
        });
    }
}
