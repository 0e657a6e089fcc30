//! `muster-agent run`, the built binary, end to end: a real Mosquitto, a
//! local HTTP target, the report endpoint, and systemd's notify protocol
//! (READY / WATCHDOG / STOPPING on a datagram socket the test binds, as
//! systemd would). SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use muster_proto::{Body, Outcome, Payload, ProbeKind};
use muster_testkit::Mosquitto;

use crate::servers::{self, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_muster-agent");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Waits for a notify datagram equal to `want`; returns what came before it.
fn wait_notify(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {want} within {timeout:?}; got {seen:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                if s == want {
                    return seen;
                }
                seen.push(s);
            }
            Err(e) => panic!("no {want} within {timeout:?} ({e}); got {seen:?}"),
        }
    }
}

#[test]
fn run_ships_samples_probes_and_reports_and_stops_on_sigterm() {
    let broker = Mosquitto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = rt.block_on(servers::http(Reply::ok("healthy")));
    let dir = servers::scratch("run");
    let report_port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
agency = "metro-fire"
unit_id = "E12"
data_dir = {:?}
[mqtt]
url = "{}"
[sampling]
interval = "1s"
{trust}
[log]
to = "file"
[report]
listen = "127.0.0.1:{report_port}"
[[probe]]
name = "cad-api"
kind = "http"
target = "http://127.0.0.1:{}/health"
body_contains = "healthy"
interval = "1s"
timeout = "1s"
"#,
            dir.display().to_string(),
            broker.url(),
            http.port(),
            trust = muster_testkit::agent_trust_toml(),
        ),
    )
    .unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();

    // Subscribe before the agent starts: every telemetry publish, payload as hex.
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args([
            "-t",
            "muster/v1/metro-fire/E12/telemetry",
            "-F",
            "%x",
            "-q",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients) is a test dependency");
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let out = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if line_tx.send(l).is_err() {
                break;
            }
        }
    });
    // mosquitto_sub has subscribed once a retained probe message comes back.
    muster_testkit::wait_until("mosquitto_sub subscribed", Duration::from_secs(10), || {
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args(["-t", "muster/v1/metro-fire/E12/telemetry", "-n"])
            .status();
        line_rx.recv_timeout(Duration::from_millis(200)).is_ok()
    });

    let mut agent = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    wait_notify(&notify, "READY=1", Duration::from_secs(10));
    wait_notify(&notify, "WATCHDOG=1", Duration::from_secs(5));

    // The CAD client reports a transaction.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"cad.login:734|ms|#ok", ("127.0.0.1", report_port))
        .unwrap();

    let (mut host, mut http_ok, mut reported) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (host < 2 || http_ok < 1 || reported < 1) && Instant::now() < deadline {
        let Ok(line) = line_rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        if line.is_empty() {
            continue;
        }
        let msg = muster_proto::decode(&hex(&line))
            .expect("the agent publishes valid wire messages")
            .message;
        assert_eq!(msg.unit.to_string(), "metro-fire/E12");
        let records = match msg.body {
            Body::Record(r) => vec![r],
            Body::Batch(b) => b,
            other => panic!("unexpected telemetry body {other:?}"),
        };
        for r in records {
            match r.payload {
                Payload::Host(h) => {
                    assert_eq!(h.interval_ms, 1000);
                    assert!(h.memory.is_some());
                    host += 1;
                }
                Payload::Probe(p) if p.kind == ProbeKind::Http => {
                    assert_eq!(p.outcome, Outcome::Ok, "{p:?}");
                    http_ok += 1;
                }
                Payload::Probe(p) if p.kind == ProbeKind::Reported => {
                    assert_eq!(p.name, "cad.login");
                    assert_eq!(p.phases.total_us, 734_000);
                    reported += 1;
                }
                _ => {}
            }
        }
    }
    assert!(
        host >= 2 && http_ok >= 1 && reported >= 1,
        "host {host}, http {http_ok}, reported {reported}"
    );

    muster_testkit::signal(agent.id(), "TERM");
    wait_notify(&notify, "STOPPING=1", Duration::from_secs(5));
    let status = muster_testkit::eventually_blocking(
        "the agent's exit on SIGTERM",
        Duration::from_secs(20),
        || agent.try_wait().unwrap(),
    );
    let mut err = String::new();
    use std::io::Read;
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "exit {status}: {err}");
    // `log.to = "file"`: a rotating file in {data_dir}/log.
    let logs: Vec<_> = std::fs::read_dir(dir.join("log"))
        .expect("the log directory exists")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let name = logs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("muster-agent.") && name.ends_with(".log"),
        "{name}"
    );
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(log.contains("Agent running."), "{log}");
    assert!(log.contains("Agent stopped."), "{log}");
    let _ = sub.kill();
    let _ = sub.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The health window across restarts, with the built binary: a SIGTERM
/// within it is a clean stop and the next start is not counted; after two
/// kill -9s (three counted starts, the one that applied the document the
/// first) the agent starts on the last known good and says why.
#[test]
fn restarts_within_a_health_window_count_unless_stopped_cleanly() {
    use muster_agent::remote::store::{Docs, Store, Window};
    use muster_proto::{DocRef, DocScope, DocScopeKind, UnitId, encode_config, sign};

    let dir = servers::scratch("window");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "agency = \"metro-fire\"\nunit_id = \"E12\"\ndata_dir = {:?}\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{closed}\"\n{}\
             [remote]\nallow = [\"sampling\"]\nhealth_window = \"60s\"\n",
            dir.display().to_string(),
            muster_testkit::agent_trust_toml(),
        ),
    )
    .unwrap();
    // v1 passed its window (the last known good); v2 applied just now.
    let doc = |version: u64, interval: &str| {
        sign::sign_config(
            &muster_testkit::test_collector_key(),
            DocScope::Unit {
                unit: UnitId::new("metro-fire", "E12").unwrap(),
            },
            version,
            1,
            format!("[sampling]\ninterval = \"{interval}\"\n"),
        )
    };
    let (v1, v2) = (doc(1, "3s"), doc(2, "2s"));
    let v2_ref = DocRef {
        version: 2,
        hash: sign::config_hash(&v2),
    };
    let store = Store::new(&dir);
    let unit = |d: &muster_proto::ConfigDoc| Docs {
        agency: None,
        unit: Some(d.clone()),
    };
    store.save(&unit(&v1), true).unwrap();
    store.save(&unit(&v2), false).unwrap();
    store.save_seen(None, Some(v2_ref)).unwrap();
    let applied = Window {
        scope: DocScopeKind::Unit,
        doc: v2_ref,
        opened_ms: muster_agent::clock::unix_ms_now(),
        window_ms: 60_000,
        starts: 1,
        clean_stop: false,
    };
    store.save_window(Some(&applied)).unwrap();

    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let start = || {
        let agent = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_notify(&notify, "READY=1", Duration::from_secs(10));
        agent
    };
    let stop = |mut agent: std::process::Child| {
        muster_testkit::signal(agent.id(), "TERM");
        let st = muster_testkit::eventually_blocking(
            "the agent's exit on SIGTERM",
            Duration::from_secs(20),
            || agent.try_wait().unwrap(),
        );
        assert!(st.success(), "{st}");
    };
    let kill9 = |mut agent: std::process::Child| {
        agent.kill().unwrap();
        agent.wait().unwrap();
    };
    let running = || store.load_raw(false).unwrap();

    // Start 2: counted; then SIGTERM: recorded as a clean stop.
    let agent = start();
    let counted = Window {
        starts: 2,
        ..applied
    };
    assert_eq!(store.window().unwrap(), Some(counted));
    stop(agent);
    let clean = Window {
        clean_stop: true,
        ..counted
    };
    assert_eq!(store.window().unwrap(), Some(clean));

    // The next start is not counted; kill -9 records nothing.
    let agent = start();
    assert_eq!(store.window().unwrap(), Some(counted));
    kill9(agent);
    assert_eq!(store.window().unwrap(), Some(counted));
    assert_eq!(
        running(),
        vec![(DocScopeKind::Unit, encode_config(&v2).unwrap())]
    );

    // The third counted start: the last known good, persisted; the window
    // is gone; the status says why.
    let agent = start();
    assert_eq!(store.window().unwrap(), None);
    assert_eq!(
        running(),
        vec![(DocScopeKind::Unit, encode_config(&v1).unwrap())]
    );
    let status = muster_testkit::eventually_blocking(
        "the status shows the rollback",
        Duration::from_secs(10),
        || {
            muster_agent::status::read(&dir)
                .ok()
                .filter(|s| s.config.last_state == "rolled_back")
        },
    );
    assert_eq!(status.config.origin, "unit v1", "{status:?}");
    assert_eq!(
        status.config.last_reason.as_deref(),
        Some("the agent restarted 2 times within the health window of unit v2")
    );
    assert_eq!(status.config.watching_until_ms, None);
    stop(agent);
    // Stopped cleanly with no window open: nothing recorded.
    assert_eq!(store.window().unwrap(), None);
    let _ = std::fs::remove_dir_all(&dir);
}
