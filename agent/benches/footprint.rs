//! Footprint benchmark: muster-agent against collectd 5.12 doing the
//! comparable job, in the same run, on the same machine, into the same
//! Mosquitto.
//!
//! * muster-agent: 1 s sampling interval, every host collector on, two
//!   watched processes, 4 probes against local targets (http, tcp, dns, icmp;
//!   every `FOOTPRINT_PROBE_INTERVAL`, default 5 s), and one 3-step
//!   synthetic transaction (log in, fetch the unit's assignments, open an
//!   incident; issue 18) against the testkit's CAD API server every
//!   `FOOTPRINT_TXN_INTERVAL` (default 30 s), shipping over MQTT.
//! * The same agent without the network context families (route, wifi,
//!   cellular, vpn), in the same run: the baseline that prices network
//!   sampling (CPU and bytes, printed as a percentage).
//! * collectd: `Interval 1`, plugins cpu, memory, df, disk, interface, load,
//!   processes (the same two watched processes), publishing through its mqtt
//!   plugin (QoS 1).
//!
//! The real `muster-collector` (release build; `MUSTER_COLLECTOR` or
//! `target/release/muster-collector`) subscribes and acks, so the agent's
//! uplink runs as in production (records freed by acks, not resent).
//!
//! Each client reaches Mosquitto through its own counting TCP relay, so
//! "bytes sent" is exactly what each put on the wire towards the broker.
//! Both run for `FOOTPRINT_SECS` (default 330: 30 s warm-up + 5 min measured).
//! Printed per process: steady RSS (median of 1 Hz samples after warm-up),
//! peak RSS (VmHWM), CPU seconds per hour and bytes sent per hour over the
//! measured window, and the agent's figures as ratios to collectd's. RSS is
//! also split into anonymous (the process's own heap and stacks) and file
//! pages (mapped code of the binary and shared libraries, clean and shared),
//! and PSS (shared pages divided among the processes mapping them) is
//! printed beside it, since a dynamically linked process shares libc.
//!
//! The agent measured is the shipped build: `MUSTER_AGENT` (footprint.sh
//! builds the static musl `agent` profile, as packaging does), else the
//! bench profile's own binary.
//!
//! Run: `agent/benches/footprint.sh` (or `cargo bench -p muster-agent --bench footprint`).

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster_testkit::cad_api::CadApi;
use muster_testkit::{Mosquitto, TempDir};

fn agent_bin() -> String {
    std::env::var("MUSTER_AGENT").unwrap_or_else(|_| env!("CARGO_BIN_EXE_muster-agent").into())
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A TCP relay to `upstream` that counts client-to-upstream bytes.
fn counting_relay(upstream: u16) -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = counter.clone();
            std::thread::spawn(move || pump(client, server, Some(up)));
            std::thread::spawn(move || pump(s2, c2, None));
        }
    });
    (port, sent)
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(c) = &count {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A tiny HTTP target for the agent's http probe.
fn http_target() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nhealthy",
                );
            });
        }
    });
    port
}

/// A TCP target that accepts and closes.
fn tcp_target() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in l.incoming() {});
    port
}

#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    pss_kib: u64,
    hwm_kib: u64,
    cpu_ticks: u64,
}

/// The number after `name` in a `/proc` "Name:   1234 kB" listing.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| kib_field(&status, name);
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")? + field("RssShmem:").unwrap_or(0),
        pss_kib: kib_field(&rollup, "Pss:")?,
        hwm_kib: field("VmHWM:")?,
        cpu_ticks: utime + stime,
    })
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Figures {
    steady_rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    pss_kib: u64,
    peak_rss_kib: u64,
    cpu_s_per_hour: f64,
    bytes_per_hour: f64,
}

struct Tracked {
    name: &'static str,
    child: Child,
    sent: Arc<AtomicU64>,
    /// Samples in the measured window.
    window: Vec<ProcSample>,
    start: Option<(Instant, ProcSample, u64)>,
    last: ProcSample,
}

impl Tracked {
    fn figures(&self, tck: f64) -> Figures {
        let (t0, s0, b0) = self.start.expect("measured window started");
        let hours = t0.elapsed().as_secs_f64() / 3600.0;
        let mut window = self.window.clone();
        window.sort_unstable_by_key(|s| (s.rss_kib, s.anon_kib, s.file_kib, s.pss_kib));
        let median = window.get(window.len() / 2).copied().unwrap_or_default();
        Figures {
            steady_rss_kib: median.rss_kib,
            anon_kib: median.anon_kib,
            file_kib: median.file_kib,
            pss_kib: median.pss_kib,
            peak_rss_kib: self.last.hwm_kib,
            cpu_s_per_hour: (self.last.cpu_ticks - s0.cpu_ticks) as f64 / tck / hours,
            bytes_per_hour: (self.sent.load(Ordering::Relaxed) - b0) as f64 / hours,
        }
    }
}

/// The host collectors without the network context families (route, wifi,
/// cellular, vpn): the baseline agent that prices network sampling.
const NO_NETWORK: &str =
    r#"collectors = ["cpu", "load", "memory", "disks", "networks", "processes", "uptime"]"#;

/// The 3-step transaction: its credentials file (mode 0600) in `dir`.
fn transaction(dir: &Path, cad: &CadApi, interval: u64) -> String {
    let creds = dir.join("cad-probe.toml");
    std::fs::write(&creds, "user = \"bench\"\npassword = \"bench-secret\"\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    format!(
        r#"
[[probe]]
name = "cad-dispatch"
kind = "transaction"
interval = "{interval}s"
timeout = "5s"
credentials = "{creds}"
[[probe.step]]
name = "login"
method = "POST"
url = "{login}"
headers = {{ "Content-Type" = "application/json" }}
body = '{{"user":"{{{{cred.user}}}}","password":"{{{{cred.password}}}}"}}'
expect_status = 200
body_contains = "token"
extract = {{ token = {{ json = "/token" }} }}
[[probe.step]]
name = "assignments"
url = "{units}/{{{{unit}}}}/assignments"
headers = {{ Authorization = "Bearer {{{{token}}}}" }}
expect_status = 200
body_contains = "assignments"
[[probe.step]]
name = "incident"
method = "POST"
url = "{incidents}"
headers = {{ Authorization = "Bearer {{{{token}}}}", "Content-Type" = "application/json" }}
body = '{{"unit":"{{{{unit}}}}","kind":"probe"}}'
expect_status = 201
"#,
        creds = creds.display(),
        login = cad.url("/api/login"),
        units = cad.url("/api/units"),
        incidents = cad.url("/api/incidents"),
    )
}

#[allow(clippy::too_many_arguments)]
fn agent_config(
    dir: &Path,
    unit: &str,
    sampling_extra: &str,
    mqtt_port: u16,
    report_port: u16,
    probe_interval: u64,
    cad: &CadApi,
    txn_interval: u64,
) -> String {
    let http = http_target();
    let tcp = tcp_target();
    let txn = transaction(dir, cad, txn_interval);
    format!(
        r#"
agency = "bench"
unit_id = "{unit}"
data_dir = {dir:?}
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
[sampling]
interval = "1s"
processes = ["mosquitto", "collectd"]
{sampling_extra}
[report]
listen = "127.0.0.1:{report_port}"
[log]
level = "warn"
to = "file"
[[probe]]
name = "cad-api"
kind = "http"
target = "http://127.0.0.1:{http}/health"
body_contains = "healthy"
interval = "{probe_interval}s"
timeout = "1s"
[[probe]]
name = "cad-db"
kind = "tcp"
target = "127.0.0.1:{tcp}"
interval = "{probe_interval}s"
timeout = "1s"
[[probe]]
name = "cad-dns"
kind = "dns"
target = "localhost"
interval = "{probe_interval}s"
timeout = "1s"
[[probe]]
name = "gateway"
kind = "icmp"
target = "127.0.0.1"
interval = "{probe_interval}s"
timeout = "1s"
{txn}
{trust}"#,
        dir = dir.display().to_string(),
        trust = muster_testkit::agent_trust_toml(),
    )
}

fn collectd_config(dir: &Path, mqtt_port: u16) -> String {
    format!(
        r#"
Hostname "footprint"
FQDNLookup false
Interval 1
BaseDir "{dir}"
PIDFile "{dir}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin df
LoadPlugin disk
LoadPlugin interface
LoadPlugin load
LoadPlugin processes
LoadPlugin mqtt
<Plugin processes>
  Process "mosquitto"
  Process "muster-agent"
</Plugin>
<Plugin mqtt>
  <Publish "muster">
    Host "127.0.0.1"
    Port "{mqtt_port}"
    ClientId "collectd-footprint"
    QoS 1
    Prefix "collectd"
  </Publish>
</Plugin>
"#,
        dir = dir.display()
    )
}

fn collector_config(dir: &Path, mqtt_port: u16) -> String {
    format!(
        r#"
admin_token = "admin-token-0123456789"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
[http]
listen = "127.0.0.1:0"
[store]
path = "{}/store"
[[agency]]
name = "bench"
token = "bench-token-0123456789"
{}"#,
        dir.display(),
        muster_testkit::collector_signing_toml(dir),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let total = env_secs("FOOTPRINT_SECS", 330);
    let warmup = env_secs("FOOTPRINT_WARMUP_SECS", 30).min(total / 2);
    let probe_interval = env_secs("FOOTPRINT_PROBE_INTERVAL", 5);
    let txn_interval = env_secs("FOOTPRINT_TXN_INTERVAL", 30);
    let agent_bin = agent_bin();
    println!("footprint: agent binary {agent_bin}");
    let collectd_bin = std::env::var("COLLECTD").unwrap_or_else(|_| "/usr/sbin/collectd".into());
    let collector_bin = std::env::var("MUSTER_COLLECTOR").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/release/muster-collector")
            .display()
            .to_string()
    });
    assert!(
        Path::new(&collector_bin).exists(),
        "muster-collector not found at {collector_bin} (cargo build --release -p muster-collector)"
    );
    assert!(
        Path::new(&collectd_bin).exists(),
        "collectd not found at {collectd_bin} (apt-get install collectd-core)"
    );

    let broker = Mosquitto::start();
    let cad = CadApi::start(&[("bench", "bench-secret")]);
    let dir = TempDir::new().unwrap();
    let (agent_port, agent_sent) = counting_relay(broker.port());
    let (collectd_port, collectd_sent) = counting_relay(broker.port());
    let (nonet_port, nonet_sent) = counting_relay(broker.port());

    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let report_port = muster_testkit::free_port();
    let agent_cfg = agent_dir.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        agent_config(
            &agent_dir,
            "footprint",
            "",
            agent_port,
            report_port,
            probe_interval,
            &cad,
            txn_interval,
        ),
    )
    .unwrap();
    let nonet_dir = dir.path().join("agent-nonet");
    std::fs::create_dir_all(&nonet_dir).unwrap();
    let nonet_cfg = nonet_dir.join("agent.toml");
    std::fs::write(
        &nonet_cfg,
        agent_config(
            &nonet_dir,
            "footprint-nonet",
            NO_NETWORK,
            nonet_port,
            muster_testkit::free_port(),
            probe_interval,
            &cad,
            txn_interval,
        ),
    )
    .unwrap();
    let collectd_dir = dir.path().join("collectd");
    std::fs::create_dir_all(&collectd_dir).unwrap();
    let collectd_cfg = collectd_dir.join("collectd.conf");
    std::fs::write(&collectd_cfg, collectd_config(&collectd_dir, collectd_port)).unwrap();

    let check = Command::new(&agent_bin)
        .args(["check-config", "--config"])
        .arg(&agent_cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let collector_dir = dir.path().join("collector");
    std::fs::create_dir_all(&collector_dir).unwrap();
    let collector_cfg = collector_dir.join("collector.toml");
    std::fs::write(
        &collector_cfg,
        collector_config(&collector_dir, broker.port()),
    )
    .unwrap();
    let mut collector = Command::new(&collector_bin)
        .args(["run", "--config"])
        .arg(&collector_cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let agent = Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(&agent_cfg)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let nonet = Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(&nonet_cfg)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let collectd = Command::new(&collectd_bin)
        .args(["-f", "-C"])
        .arg(&collectd_cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tracked = [
        Tracked {
            name: "muster-agent",
            child: agent,
            sent: agent_sent,
            window: Vec::new(),
            start: None,
            last: ProcSample::default(),
        },
        Tracked {
            name: "collectd",
            child: collectd,
            sent: collectd_sent,
            window: Vec::new(),
            start: None,
            last: ProcSample::default(),
        },
        Tracked {
            name: "agent (no net)",
            child: nonet,
            sent: nonet_sent,
            window: Vec::new(),
            start: None,
            last: ProcSample::default(),
        },
    ];

    eprintln!(
        "footprint: running muster-agent and collectd for {total}s ({warmup}s warm-up), 1 s interval, agent probes every {probe_interval}s, a 3-step transaction every {txn_interval}s"
    );
    let t0 = Instant::now();
    let mut next = t0;
    while t0.elapsed() < Duration::from_secs(total) {
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let in_window = t0.elapsed() >= Duration::from_secs(warmup);
        for t in tracked.iter_mut() {
            if let Ok(Some(status)) = t.child.try_wait() {
                let mut err = String::new();
                if let Some(e) = t.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{} exited early ({status}): {err}", t.name);
            }
            let Some(s) = proc_sample(t.child.id()) else {
                continue;
            };
            t.last = s;
            if in_window {
                if t.start.is_none() {
                    t.start = Some((Instant::now(), s, t.sent.load(Ordering::Relaxed)));
                }
                t.window.push(s);
            }
        }
    }

    assert!(
        collector.try_wait().unwrap().is_none(),
        "muster-collector exited early"
    );
    let tck = clk_tck();
    let figs: Vec<Figures> = tracked.iter().map(|t| t.figures(tck)).collect();
    for t in tracked.iter_mut() {
        muster_testkit::signal(t.child.id(), "TERM");
    }
    for t in tracked.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = t.child.kill();
        let _ = t.child.wait();
    }

    println!(
        "\nfootprint over {:.0} s measured (after {warmup} s warm-up), 1 s interval",
        (total - warmup) as f64
    );
    println!(
        "{:<14} {:>15} {:>10} {:>10} {:>10} {:>13} {:>11} {:>16}",
        "process",
        "steady RSS KiB",
        "anon KiB",
        "file KiB",
        "PSS KiB",
        "peak RSS KiB",
        "CPU s/hour",
        "bytes sent/hour"
    );
    for (t, f) in tracked.iter().zip(&figs) {
        println!(
            "{:<14} {:>15} {:>10} {:>10} {:>10} {:>13} {:>11.1} {:>16.0}",
            t.name,
            f.steady_rss_kib,
            f.anon_kib,
            f.file_kib,
            f.pss_kib,
            f.peak_rss_kib,
            f.cpu_s_per_hour,
            f.bytes_per_hour
        );
    }
    let (a, c) = (&figs[0], &figs[1]);
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    println!(
        "{:<14} {:>15.2} {:>10.2} {:>10.2} {:>10.2} {:>13.2} {:>11.2} {:>16.2}",
        "agent/collectd",
        ratio(a.steady_rss_kib as f64, c.steady_rss_kib as f64),
        ratio(a.anon_kib as f64, c.anon_kib as f64),
        ratio(a.file_kib as f64, c.file_kib as f64),
        ratio(a.pss_kib as f64, c.pss_kib as f64),
        ratio(a.peak_rss_kib as f64, c.peak_rss_kib as f64),
        ratio(a.cpu_s_per_hour, c.cpu_s_per_hour),
        ratio(a.bytes_per_hour, c.bytes_per_hour),
    );
    let n = &figs[2];
    println!(
        "network sampling (route, wifi, cellular, vpn families): agent CPU {:.1} s/h vs {:.1} s/h without them ({:+.1} %), bytes sent {:.0}/h vs {:.0}/h ({:+.1} %)",
        a.cpu_s_per_hour,
        n.cpu_s_per_hour,
        (ratio(a.cpu_s_per_hour, n.cpu_s_per_hour) - 1.0) * 100.0,
        a.bytes_per_hour,
        n.bytes_per_hour,
        (ratio(a.bytes_per_hour, n.bytes_per_hour) - 1.0) * 100.0,
    );
    // Both agents ran the transaction; each run is a login.
    let logins = cad.hits("/api/login");
    println!(
        "transaction: {logins} runs by the two agents (login {}, assignments {}, incident {} requests); every {txn_interval}s",
        logins,
        cad.hits("/api/units/"),
        cad.hits("/api/incidents"),
    );
    // At most one run per agent may be cut short by the stop.
    assert!(
        logins > 0 && logins - cad.hits("/api/incidents") <= 2,
        "every transaction run should reach its last step"
    );
    if a.bytes_per_hour == 0.0 {
        println!("note: the agent sent nothing to the broker (is the uplink implemented?)");
    }
    let _ = collector.kill();
    let _ = collector.wait();
    drop(broker);
}
