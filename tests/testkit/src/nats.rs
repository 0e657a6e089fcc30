//! A real NATS cluster for tests: Debian's `nats-server` (2.9), N nodes on
//! free loopback ports, each with JetStream (its own store dir) and the
//! MQTT listener (3.1.1, QoS ≤ 1; NATS keeps MQTT sessions, retained
//! messages and QoS 1 queues in JetStream, so they outlive a node). Nodes
//! are killed on drop; [`NatsCluster::kill`] is a kill -9.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::{TempDir, eventually_blocking, forward_stderr, free_port};

/// Where the server binary is: `NATS_SERVER` in the environment, else
/// Debian's path.
pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

struct Node {
    name: String,
    client: u16,
    cluster: u16,
    mqtt: u16,
    http: u16,
    child: Option<Child>,
}

/// A JetStream cluster with MQTT on every node.
pub struct NatsCluster {
    dir: TempDir,
    nodes: Vec<Node>,
    /// Appended to every node's config.
    extra: String,
}

impl NatsCluster {
    /// Starts `n` nodes (3 for a quorum that survives one loss) and waits
    /// until every node answers `/healthz` (JetStream meta leader elected)
    /// and its MQTT port accepts.
    pub fn start(n: usize) -> NatsCluster {
        Self::start_with(n, "")
    }

    /// As [`NatsCluster::start`], with `extra` appended to every node's
    /// config (e.g. cluster mode's subject mapping).
    pub fn start_with(n: usize, extra: &str) -> NatsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                client: free_port(),
                cluster: free_port(),
                mqtt: free_port(),
                http: free_port(),
                child: None,
            })
            .collect();
        let mut c = NatsCluster {
            dir,
            nodes,
            extra: extra.to_owned(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i);
        }
        c
    }

    /// `mqtt://127.0.0.1:PORT` of node `i`'s MQTT listener.
    pub fn mqtt_url(&self, i: usize) -> String {
        format!("mqtt://127.0.0.1:{}", self.nodes[i].mqtt)
    }

    pub fn mqtt_port(&self, i: usize) -> u16 {
        self.nodes[i].mqtt
    }

    /// How many nodes the cluster has (killed ones included).
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// `nats://127.0.0.1:PORT` of node `i`'s client listener.
    pub fn nats_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client)
    }

    fn config(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, o)| format!("nats-route://127.0.0.1:{}", o.cluster))
            .collect();
        let store = self.dir.path().join(&node.name);
        format!(
            r#"server_name: {name}
listen: 127.0.0.1:{client}
http: 127.0.0.1:{http}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  # As packaging/cluster/nats-server.conf: a reservation, not disk used.
  # The collectors' stream reserves 1 GiB (cluster.stream_max_mib) and
  # MQTT's own streams need room beside it.
  max_file_store: 8GB
}}
cluster {{
  name: muster-test
  listen: 127.0.0.1:{cluster}
  routes: [{routes}]
}}
mqtt {{
  listen: 127.0.0.1:{mqtt}
  # Sessions, retained messages and QoS 1 queues on every node (NATS
  # otherwise sizes them by the nodes it has met when the first client
  # connects: a stream on 2 of 3 loses its quorum with one node).
  stream_replicas: {replicas}
}}
{extra}"#,
            name = node.name,
            client = node.client,
            http = node.http,
            store = store.display(),
            cluster = node.cluster,
            routes = routes.join(", "),
            mqtt = node.mqtt,
            replicas = self.nodes.len().min(3),
            extra = self.extra,
        )
    }

    fn spawn(&mut self, i: usize) {
        let conf = self.dir.path().join(format!("{}.conf", self.nodes[i].name));
        std::fs::write(&conf, self.config(i)).expect("write nats.conf");
        let mut child = crate::spawn_with_config(&nats_server_binary(), &conf, "nats-server");
        // Only what a failing test needs: errors and warnings.
        forward_stderr(&mut child, format!("nats {}", self.nodes[i].name), |l| {
            l.contains("[ERR]") || l.contains("[WRN]") || l.contains("[FTL]")
        });
        self.nodes[i].child = Some(child);
    }

    fn wait_healthy(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let http = SocketAddr::from(([127, 0, 0, 1], node.http));
        let mqtt = SocketAddr::from(([127, 0, 0, 1], node.mqtt));
        let name = node.name.clone();
        eventually_blocking(
            &format!("nats {name} healthy with JetStream and MQTT"),
            Duration::from_secs(30),
            || {
                crate::panic_if_exited(node.child.as_mut(), &format!("nats {name}"));
                healthz(http)
                    && TcpStream::connect_timeout(&mqtt, Duration::from_millis(200)).is_ok()
            },
        );
    }

    /// kill -9 node `i` and wait for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed node again (same ports, same store) and waits until
    /// it is healthy.
    pub fn start_again(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node is still running");
        self.spawn(i);
        self.wait_healthy(i);
    }
}

/// `GET /healthz` answers 200 (JetStream current on this node).
fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = crate::http::request_bytes("GET", "/healthz", &[], None);
    if s.write_all(&req).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200")
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
