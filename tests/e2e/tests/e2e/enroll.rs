//! Enrolment by claim end to end: the real `muster-agent` binary against the
//! real collector (in this process, so the test can ask its registry what
//! the broker gate would) and a real Mosquitto.
//!
//! A new terminal enrols (auto mode), keeps its secret in a 0600 file,
//! trusts the collector's keys from the answer, connects to MQTT as
//! `{agency}/{unit}` and ships; a second start reuses the credential and
//! does not claim again.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use muster_collector::app;
use muster_collector::config::Config;
use muster_collector::enroll::{Registry, UnitCredentials};
use muster_proto::UnitId;
use muster_testkit::{Mosquitto, TempDir, wait_until};
use serde_json::Value;

use crate::procs::*;

struct InProcessCollector {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    registry: Arc<Registry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), app::AppError>>>,
}

impl InProcessCollector {
    fn start(broker: &Mosquitto, store: &Path, mode: &str) -> Self {
        let text = format!(
            r#"
admin_token = "{ADMIN}"
[mqtt]
url = "{url}"
client_id = "e2e-enroll-collector"
[http]
listen = "127.0.0.1:0"
[store]
path = {store:?}
[ingest]
commit_interval = "20ms"
[[agency]]
name = "{AGENCY}"
token = "{FIRE}"
enroll_token = "{ENROL}"
enroll = "{mode}"
{signing}
"#,
            url = broker.url(),
            store = store.display().to_string(),
            signing = muster_testkit::collector_signing_toml(store.parent().unwrap()),
        );
        let cfg = Config::parse(&text).expect("collector config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (reg_tx, reg_rx) = tokio::sync::oneshot::channel();
        let wiring = app::Wiring {
            registry: Some(reg_tx),
            broker: None,
            store_layer: None,
        };
        let task = rt.spawn(app::run_with(
            cfg,
            listener,
            muster_collector::clock::TokioClock::shared(),
            async move {
                let _ = stopped.await;
            },
            wiring,
        ));
        let registry = rt
            .block_on(reg_rx)
            .expect("the collector opens its registry");
        wait_until("collector /readyz", Duration::from_secs(30), || {
            http_get(addr, "/readyz", None).is_some_and(|(s, _)| s == 200)
        });
        InProcessCollector {
            rt,
            addr,
            registry,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn get(&self, path: &str) -> Value {
        let (s, body) = http_get(self.addr, path, Some(ADMIN)).expect("GET");
        assert_eq!(s, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn post(&self, path: &str) -> (u16, String) {
        admin_post(self.addr, path)
    }

    fn metric(&self, line_prefix: &str) -> Option<f64> {
        metric(self.addr, line_prefix)
    }
}

/// POST with the admin token and no body: (status, raw answer).
fn admin_post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, raw)
}

/// One sample of `/metrics`, by the start of its line.
fn metric(addr: std::net::SocketAddr, line_prefix: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics", Some(ADMIN)).expect("metrics");
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Drop for InProcessCollector {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await });
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_new_agent_enrols_trusts_the_collector_and_reuses_its_credential() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let keys = vec![muster_testkit::test_collector_public_key()];
    let col = InProcessCollector::start(&broker, &dir.path().join("store"), "auto");
    let data = dir.path().join("agent");
    let mut spec = AgentSpec::new("E21", &broker.url(), &data);
    // No key in the config: the collector's comes with the enrolment.
    spec.trust = String::new();
    spec.extra = format!(
        "[enroll]\nurl = \"http://{}\"\ntoken = \"{ENROL}\"\n",
        col.addr
    );
    let unit = UnitId::new(AGENCY, "E21").unwrap();

    // First start: enrols, and ships over MQTT as metro-fire/E21.
    let agent = AgentProc::spawn(&spec, false);
    wait_until(
        "the agent records its enrolment",
        Duration::from_secs(30),
        || data.join("enrolled").exists(),
    );
    let cred_path = data.join("credential");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cred_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the credential is the service's only");
    }
    let password = std::fs::read_to_string(&cred_path)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(password.len(), 64);
    let trusted = std::fs::read_to_string(data.join("trusted_keys")).unwrap();
    assert_eq!(
        trusted.lines().collect::<Vec<_>>(),
        keys,
        "trust on first enrolment"
    );
    // The collector holds only the hash, and its registry (the broker
    // gate's check) accepts the agent's password.
    assert!(col.registry.verify(&unit, password.as_bytes()));
    let list = col.get("/api/v1/enrollments?state=active");
    let item = &list["items"][0];
    assert_eq!(item["unit"], "E21");
    let hash = sha256_hex(&unhex(&password));
    assert_eq!(item["fingerprint"].as_str().unwrap(), &hash[..16]);
    assert!(
        !list.to_string().contains(&password),
        "the secret never reaches the collector"
    );
    wait_until("the unit's data arrives", Duration::from_secs(30), || {
        http_get(
            col.addr,
            &format!("/api/v1/units/{AGENCY}/E21"),
            Some(ADMIN),
        )
        .is_some_and(|(s, _)| s == 200)
    });
    // The uplink started before the keys arrived: it trusts them once
    // written, and the collector's signed acks free records.
    wait_until(
        "the uplink trusts the enrolled key",
        Duration::from_secs(30),
        || {
            agent
                .log_tail()
                .contains("Trusting collector keys written to trusted_keys since start.")
        },
    );
    // "Uplink status." lines carry `acked=<n>` (with colour codes around `=`).
    let acked = |log: &str| {
        let mut plain = String::with_capacity(log.len());
        let mut esc = false;
        for c in log.chars() {
            match c {
                '\u{1b}' => esc = true,
                'm' if esc => esc = false,
                _ if esc => {}
                c => plain.push(c),
            }
        }
        plain.split(" acked=").skip(1).any(|rest| {
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            n.parse::<u64>().is_ok_and(|n| n > 0)
        })
    };
    wait_until(
        "a signed ack frees records",
        Duration::from_secs(30),
        || acked(&agent.log_tail()),
    );
    assert!(
        !agent.log_tail().contains(&password),
        "the secret is never logged"
    );
    agent.stop();

    let active = format!("muster_enrollments_total{{agency=\"{AGENCY}\",result=\"active\"}}");
    let repeat = format!("muster_enrollments_total{{agency=\"{AGENCY}\",result=\"repeat\"}}");
    assert_eq!(col.metric(&active), Some(1.0));

    // Second start: the same credential, and no claim at all.
    let before = std::fs::read(data.join("trusted_keys")).unwrap();
    let agent = AgentProc::spawn(&spec, false);
    let boots = |v: &Value| v["boots"].as_array().map_or(0, |b| b.len());
    wait_until("the second boot ships", Duration::from_secs(30), || {
        http_get(
            col.addr,
            &format!("/api/v1/units/{AGENCY}/E21"),
            Some(ADMIN),
        )
        .and_then(|(s, b)| (s == 200).then(|| serde_json::from_str::<Value>(&b).ok()))
        .flatten()
        .is_some_and(|v| boots(&v) >= 2)
    });
    agent.stop();
    assert_eq!(
        std::fs::read_to_string(&cred_path).unwrap().trim(),
        password,
        "the credential is reused"
    );
    assert_eq!(std::fs::read(data.join("trusted_keys")).unwrap(), before);
    assert_eq!(col.metric(&active), Some(1.0), "no second enrolment");
    assert_eq!(col.metric(&repeat), None, "not even a repeated claim");
}

#[test]
fn a_pending_agent_keeps_claiming_until_approved() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let col = InProcessCollector::start(&broker, &dir.path().join("store"), "approve");
    let data = dir.path().join("agent");
    let mut spec = AgentSpec::new("E22", &broker.url(), &data);
    spec.trust = String::new();
    spec.extra = format!(
        "[enroll]\nurl = \"http://{}\"\ntoken = \"{ENROL}\"\n",
        col.addr
    );
    let unit = UnitId::new(AGENCY, "E22").unwrap();
    let agent = AgentProc::spawn(&spec, false);

    let repeat = format!("muster_enrollments_total{{agency=\"{AGENCY}\",result=\"repeat\"}}");
    wait_until(
        "the claim is pending and polled again",
        Duration::from_secs(30),
        || col.metric(&repeat).is_some_and(|n| n >= 2.0),
    );
    let pending = col.get("/api/v1/enrollments?state=pending");
    assert_eq!(pending["items"][0]["unit"], "E22");
    assert!(!data.join("enrolled").exists());
    assert!(
        !data.join("trusted_keys").exists(),
        "no keys before approval"
    );
    let password = std::fs::read_to_string(data.join("credential"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(!col.registry.verify(&unit, password.as_bytes()));

    let (s, body) = col.post(&format!("/api/v1/enrollments/{AGENCY}/E22/approve"));
    assert_eq!(s, 200, "{body}");
    assert!(col.registry.verify(&unit, password.as_bytes()));
    wait_until(
        "the agent learns it is active",
        Duration::from_secs(30),
        || data.join("enrolled").exists(),
    );
    assert_eq!(
        std::fs::read_to_string(data.join("trusted_keys")).unwrap(),
        format!("{}\n", muster_testkit::test_collector_public_key())
    );
    agent.stop();
}

/// The whole path on the zero-install default: the real collector binary
/// with its embedded broker, whose gate admits only enrolled units. A new
/// agent with nothing but the agency's enrol token claims its credential,
/// is let in by the gate with it, learns the collector's key from the
/// answer and has its records acked. Revoked, it loses its open session
/// and its credential no longer gets in.
#[test]
fn an_enrolled_agent_gets_through_the_embedded_brokers_gate_and_a_revoked_one_does_not() {
    let dir = TempDir::new().unwrap();
    let (col, port) = CollectorProc::spawn_embedded_enrolling(dir.path());
    let data = dir.path().join("agent");
    let spec = AgentSpec::enrolling("E31", port, col.addr, &data);
    let mut agent = AgentProc::spawn(&spec, false);
    let v = col.wait_unit(
        "E31",
        "records through the gate",
        Duration::from_secs(30),
        |v| v["seq"]["received"].as_u64().is_some_and(|n| n >= 3),
    );
    assert_eq!(v["seq"]["missing"], 0, "{v:#}");
    assert_eq!(
        std::fs::read_to_string(data.join("trusted_keys")).unwrap(),
        format!("{}\n", muster_testkit::test_collector_public_key()),
        "the collector's key, from the enrolment answer"
    );
    wait_until(
        "the agent's backlog is acked",
        Duration::from_secs(30),
        || {
            col.unit("E31").is_some_and(|v| {
                v["agent"]["backlog_records"]
                    .as_u64()
                    .is_some_and(|n| n <= 2)
                    && v["agent"]["acks_refused"] == 0
            })
        },
    );

    // Revoked while connected: the gate closes the session within its
    // recheck interval, and the agent's reconnects are refused.
    let bad = "muster_broker_refused_total{reason=\"bad_credentials\"}";
    let before = metric(col.addr, bad).unwrap_or(0.0);
    let (s, body) = admin_post(
        col.addr,
        &format!("/api/v1/enrollments/{AGENCY}/E31/revoke"),
    );
    assert_eq!(s, 200, "{body}");
    wait_until(
        "the gate closes the revoked session and refuses its reconnects",
        Duration::from_secs(30),
        || metric(col.addr, bad).unwrap_or(0.0) >= before + 2.0,
    );
    // Records the broker took before the gate closed the session may
    // still be on their way through ingest: let them land (the count holds
    // still for 2 s; the agent samples every second, so an open gate never
    // lets it), then watch a further window for records that must not come.
    let received = || col.unit("E31").unwrap()["seq"]["received"].clone();
    let mut last = received();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = received();
        if now == last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "records kept arriving after revocation: {last} then {now}"
        );
        last = now;
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(received(), last, "nothing more from a revoked unit");
    assert!(agent.alive(), "the agent keeps buffering, it is not killed");
    agent.stop();
}
