//! The real binaries as processes: `muster-agent run --config` and
//! `muster-collector run --config`, with configs generated per test, on free
//! loopback ports, killed (SIGKILL) on drop.
//!
//! **How the binaries get built.** An integration test cannot use
//! `CARGO_BIN_EXE_*` of another package, and cargo never builds the bin
//! targets of dependencies. So the first call to [`bins`] runs
//! `cargo build -p muster-agent -p muster-collector --bins` (with `--release`
//! for the benchmark) once per test binary, with the cargo that runs the
//! tests (`$CARGO`) and the workspace manifest, and then uses
//! `$CARGO_TARGET_DIR` (default `<workspace>/target`)`/{debug,release}/`.
//! A build failure fails the test with cargo's output. `MUSTER_AGENT`, when
//! set, names the agent binary to run instead.
//!
//! Everything is checked through the collector's feed API
//! (`GET /api/v1/units/{agency}/{unit}` and `.../samples`), never by peeking
//! into the agent.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use muster_testkit::{CollectorToml, KillOnDrop, eventually_blocking};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const ADMIN: &str = "e2e-admin-token-0123456789";
pub const AGENCY: &str = "metro-fire";
pub const FIRE: &str = "e2e-fire-token-0123456789";
/// The agency's enrolment token (`[[agency]] enroll_token`).
pub const ENROL: &str = "e2e-fire-enrol-0123456789";

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ------------------------------------------------------------ building

pub struct Bins {
    pub agent: PathBuf,
    pub collector: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace dir")
}

fn build(release: bool) -> Bins {
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO")));
    let ws = workspace();
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "-p",
        "muster-agent",
        "-p",
        "muster-collector",
        "--bins",
    ])
    .arg("--manifest-path")
    .arg(ws.join("Cargo.toml"));
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "`cargo build -p muster-agent -p muster-collector --bins{}` failed:\n{}",
        if release { " --release" } else { "" },
        String::from_utf8_lossy(&out.stderr)
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let dir = target.join(if release { "release" } else { "debug" });
    // `MUSTER_AGENT` points at another agent build, e.g. the shipped static
    // one (packaging/linux.sh), for the drain benchmark.
    let bins = Bins {
        agent: std::env::var_os("MUSTER_AGENT")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("muster-agent")),
        collector: dir.join("muster-collector"),
    };
    for b in [&bins.agent, &bins.collector] {
        assert!(b.exists(), "{} missing after cargo build", b.display());
    }
    bins
}

/// The agent and collector binaries, built once per process.
pub fn bins(release: bool) -> &'static Bins {
    static DEBUG: OnceLock<Bins> = OnceLock::new();
    static RELEASE: OnceLock<Bins> = OnceLock::new();
    if release {
        RELEASE.get_or_init(|| build(true))
    } else {
        DEBUG.get_or_init(|| build(false))
    }
}

// ------------------------------------------------------------ the agent

/// An agent's config; `text()` renders it. Durations as the config writes them.
#[derive(Clone)]
pub struct AgentSpec {
    pub unit: String,
    pub url: String,
    /// Several brokers in failover order (`mqtt.urls`); `url` when empty.
    pub urls: Vec<String>,
    pub data_dir: PathBuf,
    pub interval: String,
    pub keepalive: String,
    pub flush_interval: String,
    pub heartbeat: String,
    pub ack_timeout: String,
    pub max_bytes: Option<String>,
    pub replay_bytes_per_sec: Option<String>,
    pub batch_max_bytes: Option<String>,
    pub max_inflight: Option<u16>,
    /// Extra top-level TOML (e.g. `[[probe]]` tables), appended.
    pub extra: String,
    /// The `[trust]` section: by default the suite's collector key, which
    /// [`collector_text`] gives the collector.
    pub trust: String,
    /// The system D-Bus the agent talks to (logind, ModemManager):
    /// `DBUS_SYSTEM_BUS_ADDRESS`. By default a socket path that does not
    /// exist, so no test ever reaches the machine's own system bus.
    pub system_bus: String,
    /// `sampling.processes`: the processes watched.
    pub processes: Vec<String>,
}

impl AgentSpec {
    pub fn new(unit: &str, url: &str, data_dir: &Path) -> AgentSpec {
        AgentSpec {
            unit: unit.into(),
            url: url.into(),
            urls: Vec::new(),
            data_dir: data_dir.into(),
            interval: "1s".into(),
            keepalive: "5s".into(),
            flush_interval: "200ms".into(),
            heartbeat: "1s".into(),
            ack_timeout: "2s".into(),
            max_bytes: None,
            replay_bytes_per_sec: None,
            batch_max_bytes: None,
            max_inflight: None,
            extra: String::new(),
            trust: muster_testkit::agent_trust_toml(),
            system_bus: format!("unix:path={}", data_dir.join("no-system-bus").display()),
            processes: vec!["mosquitto".into()],
        }
    }

    /// An agent of a collector's embedded broker on `port` that enrols with
    /// [`ENROL`] at `feed` (and trusts the keys the answer carries).
    pub fn enrolling(unit: &str, port: u16, feed: SocketAddr, data_dir: &Path) -> AgentSpec {
        let mut spec = AgentSpec::new(unit, &format!("mqtt://127.0.0.1:{port}"), data_dir);
        spec.trust = String::new();
        spec.extra = format!("[enroll]\nurl = \"http://{feed}\"\ntoken = \"{ENROL}\"\n");
        spec
    }

    pub fn buffer_dir(&self) -> PathBuf {
        self.data_dir.join("buffer")
    }

    pub fn text(&self) -> String {
        let mut buffer = format!("flush_interval = {:?}\n", self.flush_interval);
        if let Some(m) = &self.max_bytes {
            buffer += &format!("max_bytes = {m:?}\n");
        }
        let mut uplink = String::new();
        if let Some(r) = &self.replay_bytes_per_sec {
            uplink += &format!("replay_bytes_per_sec = {r:?}\n");
        }
        if let Some(b) = &self.batch_max_bytes {
            uplink += &format!("batch_max_bytes = {b:?}\n");
        }
        if let Some(n) = self.max_inflight {
            uplink += &format!("max_inflight = {n}\n");
        }
        format!(
            r#"
agency = "{AGENCY}"
unit_id = "{unit}"
data_dir = {data_dir:?}
[mqtt]
{url}
keepalive = "{keepalive}"
connect_timeout = "2s"
[buffer]
{buffer}
[uplink]
reconnect_min = "50ms"
reconnect_max = "500ms"
heartbeat_interval = "{heartbeat}"
ack_timeout = "{ack_timeout}"
{uplink}
[sampling]
interval = "{interval}"
processes = {processes:?}
[log]
level = "info"
to = "stderr"
{trust}
{extra}
"#,
            unit = self.unit,
            data_dir = self.data_dir.display().to_string(),
            url = if self.urls.is_empty() {
                format!("url = {:?}", self.url)
            } else {
                format!("urls = {:?}", self.urls)
            },
            keepalive = self.keepalive,
            heartbeat = self.heartbeat,
            ack_timeout = self.ack_timeout,
            interval = self.interval,
            trust = self.trust,
            extra = self.extra,
            processes = self.processes,
        )
    }
}

/// A running `muster-agent run`. SIGKILLed on drop.
pub struct AgentProc {
    pub child: KillOnDrop,
    pub log: PathBuf,
}

static SPAWNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl AgentProc {
    pub fn spawn(spec: &AgentSpec, release: bool) -> AgentProc {
        std::fs::create_dir_all(&spec.data_dir).unwrap();
        let cfg = spec.data_dir.join("agent.toml");
        std::fs::write(&cfg, spec.text()).unwrap();
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = spec.data_dir.join(format!("agent-{n}.log"));
        let child = Command::new(&bins(release).agent)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &spec.system_bus)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start muster-agent");
        AgentProc {
            child: KillOnDrop(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// [`AgentProc::kill9`], consuming it.
    pub fn kill9_now(mut self) {
        self.kill9();
    }

    /// `kill -9`: a power cut, as far as the process can tell.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; the exit must be clean.
    pub fn stop(mut self) {
        muster_testkit::signal(self.child.id(), "TERM");
        let st = self.child.wait().unwrap();
        assert!(
            st.success(),
            "agent exit on SIGTERM: {st}\n{}",
            self.log_tail()
        );
    }

    /// Still running (a crash fails the caller's assertion with the log).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and return at once (the caller watches what follows).
    pub fn term(&self) {
        muster_testkit::signal(self.child.id(), "TERM");
    }

    /// Waits for the exit (at most `timeout`); it must be clean.
    pub fn wait_clean_exit(&mut self, timeout: Duration) {
        let (child, log) = (&mut self.child, &self.log);
        let st = eventually_blocking("the agent's exit after SIGTERM", timeout, || {
            child.try_wait().unwrap().ok_or_else(|| log_tail(log))
        });
        assert!(st.success(), "agent exit: {st}\n{}", self.log_tail());
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// The last 30 lines of a log file.
fn log_tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ------------------------------------------------------------ the collector

/// The e2e collector's config: [`ADMIN`], `broker_url`, the store at
/// `store`, the suite's signing key (beside the store), one agency
/// ([`AGENCY`], [`FIRE`]), 200 ms ticks. Tests add keys to it.
pub fn collector_config(broker_url: &str, store: &Path) -> CollectorToml {
    let mut c = collector_config_without_agency(broker_url, store);
    c.agency(AGENCY, FIRE);
    c
}

fn collector_config_without_agency(broker_url: &str, store: &Path) -> CollectorToml {
    let key_dir = store.parent().unwrap_or(store).join("keys");
    let mut c = CollectorToml::new(ADMIN, broker_url, store);
    c.set_str("mqtt", "client_id", "e2e-collector")
        .set_str("mqtt", "keep_alive", "5s")
        .set_str("ingest", "tick_interval", "200ms")
        .signing_key_in(&key_dir);
    c
}

/// [`collector_config`] rendered, `extra` inside `[store]` (store keys, or
/// whole tables).
pub fn collector_text(broker_url: &str, store: &Path, extra: &str) -> String {
    collector_config(broker_url, store)
        .raw("store", extra)
        .render()
}

/// A running `muster-collector run`. SIGKILLed on drop.
pub struct CollectorProc {
    pub child: KillOnDrop,
    pub addr: SocketAddr,
    pub config: PathBuf,
    release: bool,
    /// Arguments after `run --config X` (kept for [`CollectorProc::start_again`]).
    extra: Vec<String>,
}

impl CollectorProc {
    /// Starts the collector with the config at `config` and waits for /readyz.
    pub fn spawn(config: &Path, release: bool) -> CollectorProc {
        CollectorProc::spawn_with(config, release, &[])
    }

    /// A collector on `broker_url`, its config ([`collector_text`]) and
    /// store in `dir`.
    pub fn spawn_on(broker_url: &str, dir: &Path) -> CollectorProc {
        let cfg = dir.join("collector.toml");
        std::fs::write(&cfg, collector_text(broker_url, &dir.join("store"), "")).unwrap();
        CollectorProc::spawn(&cfg, false)
    }

    /// A collector running the embedded broker on a free loopback port, its
    /// config ([`collector_text`] plus `extra`) and store in `dir`; the port.
    pub fn spawn_embedded(dir: &Path, extra: &str) -> (CollectorProc, u16) {
        let port = muster_testkit::free_port();
        let cfg = dir.join("collector.toml");
        std::fs::write(
            &cfg,
            collector_text("mqtt://127.0.0.1:1", &dir.join("store"), extra),
        )
        .unwrap();
        let c = CollectorProc::spawn_with(
            &cfg,
            false,
            &["--embedded-broker".into(), format!("127.0.0.1:{port}")],
        );
        (c, port)
    }

    /// A collector running the embedded broker on a free loopback port,
    /// whose agency enrols units automatically with [`ENROL`]: an agent
    /// with [`AgentSpec::enrolling`] gets through the gate with nothing
    /// else. Its config and store in `dir`; the port.
    pub fn spawn_embedded_enrolling(dir: &Path) -> (CollectorProc, u16) {
        let port = muster_testkit::free_port();
        let cfg = dir.join("collector.toml");
        // Its one agency, enrolling.
        let mut c = collector_config_without_agency("mqtt://127.0.0.1:1", &dir.join("store"));
        c.agency_with(
            AGENCY,
            FIRE,
            &format!("enroll_token = \"{ENROL}\"\nenroll = \"auto\"\n"),
        );
        let text = c.render();
        std::fs::write(&cfg, text).unwrap();
        let c = CollectorProc::spawn_with(
            &cfg,
            false,
            &["--embedded-broker".into(), format!("127.0.0.1:{port}")],
        );
        (c, port)
    }

    /// [`CollectorProc::spawn`] with more arguments after `run --config X`
    /// (e.g. `--embedded-broker 127.0.0.1:PORT`).
    pub fn spawn_with(config: &Path, release: bool, extra: &[String]) -> CollectorProc {
        let log = config.with_extension(format!(
            "{}.log",
            SPAWNED.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let mut child = Command::new(&bins(release).collector)
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            // MUSTER_E2E_COLLECTOR_LOG=info to see more of a failing test.
            .env(
                "RUST_LOG",
                std::env::var("MUSTER_E2E_COLLECTOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start muster-collector");
        let Some(addr) = muster_testkit::collector_listen_addr(child.stdout.take().unwrap()) else {
            let _ = child.kill();
            panic!(
                "muster-collector exited before saying where it listens:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let c = CollectorProc {
            child: KillOnDrop(child),
            addr,
            config: config.into(),
            release,
            extra: extra.to_vec(),
        };
        let log_path = log.clone();
        eventually_blocking(
            "collector /readyz",
            Duration::from_secs(60),
            || match http_get(addr, "/readyz", None) {
                Some((200, _)) => Ok(()),
                r => Err(format!("{r:?}\n--- its log ---\n{}", log_tail(&log_path))),
            },
        );
        c
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same config, store and arguments.
    pub fn start_again(&mut self) {
        let c = CollectorProc::spawn_with(&self.config.clone(), self.release, &self.extra.clone());
        *self = c;
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) =
            http_get(self.addr, path, Some(ADMIN)).unwrap_or_else(|| panic!("GET {path} failed"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The unit's detail, or None before the collector knows it.
    pub fn unit(&self, unit: &str) -> Option<Value> {
        let path = format!("/api/v1/units/{AGENCY}/{unit}");
        let (status, body) = http_get(self.addr, &path, Some(ADMIN))?;
        match status {
            200 => Some(serde_json::from_str(&body).expect("unit json")),
            404 => None,
            s => panic!("GET {path}: {s} {body}"),
        }
    }

    /// Polls the unit until `cond` holds; returns that view. On timeout the
    /// panic shows the last view.
    pub fn wait_unit(
        &self,
        unit: &str,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        eventually_blocking(&format!("{unit}: {what}"), timeout, || {
            match self.unit(unit) {
                Some(v) if cond(&v) => Ok(v),
                v => Err(v.map(|v| brief(&v)).unwrap_or_else(|| "none".into())),
            }
        })
    }

    /// Every stored record of the unit: (boot, seq, at_ms, kind).
    pub fn samples(&self, unit: &str) -> Vec<(String, u64, u64, String)> {
        let mut out = Vec::new();
        let base = format!("/api/v1/units/{AGENCY}/{unit}/samples?limit=1000");
        let mut path = base.clone();
        loop {
            let p = self.get(&path);
            for x in p["items"].as_array().unwrap() {
                out.push((
                    x["boot"].as_str().unwrap().to_owned(),
                    x["seq"].as_u64().unwrap(),
                    x["at_ms"].as_u64().unwrap(),
                    x["kind"].as_str().unwrap().to_owned(),
                ));
            }
            match p["next_cursor"].as_str() {
                Some(c) => path = format!("{base}&cursor={c}"),
                None => return out,
            }
        }
    }
}

/// The parts of a unit view a failure message needs.
pub fn brief(v: &Value) -> String {
    format!(
        "status={} reasons={} presence={} online={} last_at_ms={} seq={} agent.backlog={} agent.dropped={} boots={}",
        v["status"],
        v["reasons"],
        v["presence"],
        v["online"],
        v["last_at_ms"],
        v["seq"],
        v["agent"]["backlog_records"],
        v["agent"]["dropped"],
        v["boots"]
    )
}

/// Per boot: (received, duplicates, missing, max_seq).
pub fn boots(v: &Value) -> Vec<(String, u64, u64, u64, u64)> {
    v["boots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    (
                        b["boot"].as_str().unwrap().to_owned(),
                        b["received"].as_u64().unwrap(),
                        b["duplicates"].as_u64().unwrap(),
                        b["missing"].as_u64().unwrap(),
                        b["max_seq"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every boot complete: nothing missing, each seq in the feed once
/// (`received == max_seq`, so duplicates were absorbed, not stored twice).
pub fn all_complete(v: &Value) -> bool {
    let b = boots(v);
    !b.is_empty()
        && b.iter()
            .all(|(_, rx, _, miss, max)| *miss == 0 && rx == max)
}

/// The newest heartbeat says the agent's buffer holds at most the live
/// records of the moment: sample and heartbeat both run every interval, and
/// when their phases line up the sample taken just before each heartbeat is
/// always still awaiting its ack (seen: a steady `backlog_records == 1`).
/// The backlog itself is checked by the seqs that must have arrived.
pub fn drained(v: &Value) -> bool {
    v["agent"]["backlog_records"].as_u64() <= Some(2)
}

// ------------------------------------------------------------ HTTP

/// A blocking GET (the suite's client): (status, body), None if the
/// collector does not answer.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let r = muster_testkit::http::blocking::get(addr, path, token).ok()?;
    Some((r.status, r.text()))
}

// ------------------------------------------------------------ disk

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

// ------------------------------------------------------------ pre-filling

/// How much [`prefill`] writes.
#[derive(Debug, Clone, Copy)]
pub enum Fill {
    /// Exactly this many records.
    Records(u64),
    /// As many records as fit in this many stored bytes.
    Bytes(u64),
}

/// Writes a backlog of host samples of boot `boot` (seq 1..=n, event times
/// `first_at_ms + (seq - 1) * step_ms`) into an agent's buffer directory
/// with the agent's own buffer API, as a previous run of the agent during
/// an outage would have left it. Returns (n, bytes stored). Panics if the
/// buffer dropped anything (the cap must fit the backlog).
pub fn prefill(
    buffer_dir: &Path,
    max_bytes: u64,
    boot: u64,
    fill: Fill,
    first_at_ms: u64,
    step_ms: u64,
) -> (u64, u64) {
    use muster_agent::buffer::{Buffer, BufferSettings, Meta};
    use muster_proto::{BootId, Payload, Record, encode_record, fixtures};
    let mut s = BufferSettings::new(buffer_dir.into());
    s.max_bytes = max_bytes;
    let mut b = Buffer::open(s, now_ms()).expect("open buffer");
    let mut sample = fixtures::host_sample();
    sample.interval_ms = step_ms as u32;
    let mut seq = 0;
    loop {
        let r = Record {
            boot: BootId(boot),
            seq: seq + 1,
            at_ms: first_at_ms + seq * step_ms,
            payload: Payload::Host(sample.clone()),
        };
        let enc = encode_record(&r).expect("encode");
        match fill {
            Fill::Records(n) if seq >= n => break,
            // 30: the buffer's record header.
            Fill::Bytes(t) if b.bytes() + enc.len() as u64 + 30 > t => break,
            _ => {}
        }
        b.append(Meta::of(&r), &enc, now_ms(), &|_| false);
        seq += 1;
    }
    b.flush().expect("flush buffer");
    assert_eq!(b.drops().total(), 0, "pre-fill must fit under the cap");
    assert_eq!(b.records(), seq);
    (seq, b.bytes())
}

/// SHA-256 of `b`, lower-case hex (how `[[broker.unit]]` and enrolment name a secret).
pub fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
