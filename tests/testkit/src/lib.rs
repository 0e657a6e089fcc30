//! Shared test helpers. Real parts only: [`Mosquitto`] starts Debian's
//! `mosquitto` on a free loopback port; a missing binary is a test failure,
//! never a skip.
//!
//! Modules: [`eventually`] (waiting on a condition), [`http`] (the one HTTP
//! and SSE client), [`collector_config`] (the test collector's TOML),
//! [`webdriver`] (chromedriver and headless Chromium), `logind` (a fake
//! logind on a private bus), `systemd` (a fake systemd manager whose units
//! are real processes), [`nats`] (a NATS JetStream cluster with MQTT),
//! `postgres` (a PostgreSQL cluster in a temp dir).

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use tempfile::TempDir;

pub mod cad_api;
pub mod cluster_example;
pub mod collector_config;
pub mod eventually;
pub mod http;
#[cfg(target_os = "linux")]
pub mod logind;
pub mod nats;
#[cfg(unix)]
pub mod postgres;
pub mod rng;
#[cfg(target_os = "linux")]
pub mod systemd;
pub mod webdriver;

pub use collector_config::CollectorToml;
pub use eventually::{eventually, eventually_blocking, eventually_every};
pub use nats::NatsCluster;
#[cfg(unix)]
pub use postgres::Postgres;

/// A free TCP port on 127.0.0.1, for a server a test starts with a config
/// file (one that cannot take `127.0.0.1:0`).
///
/// It is below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), so no outgoing connection
/// can take it before the server binds it: with a port from `bind(:0)`, a
/// NATS node dialling its not-yet-started peers' routes once got a local
/// port another node was about to listen on, and that node exited. Ports
/// are handed out once per process, from a start that differs by process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ceiling = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|lo| *lo > FLOOR + 1_000)
        .unwrap_or(32_768);
    let span = ceiling - FLOOR;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FLOOR + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {FLOOR} and {ceiling}");
}

/// Waits for `cond` to hold ([`eventually_blocking`] with a `bool` probe).
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    eventually_blocking(what, timeout, cond)
}

/// The absolute path of a program of the test machine (`printf`, `sleep`,
/// `mkfifo`), found on `PATH` by [`webdriver::find_binary`]: agent configs
/// take only absolute paths. A missing one fails the test.
pub fn program(name: &str) -> String {
    webdriver::find_binary(&[name])
        .unwrap_or_else(|| panic!("{name} is not on PATH: the tests need coreutils"))
        .display()
        .to_string()
}

/// Starts `bin -c conf` (a broker), stdin and stdout closed, stderr piped;
/// a missing binary panics naming the Debian `package` to install.
pub fn spawn_with_config(bin: &Path, conf: &Path, package: &str) -> Child {
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}. {package} is a required test dependency: \
                 apt-get install -y {package} (the README's test command does this)",
                bin.display()
            )
        })
}

/// Fails the test at once if a server it waits for has exited (instead of
/// waiting out the timeout).
pub fn panic_if_exited(child: Option<&mut Child>, what: &str) {
    if let Some(c) = child
        && let Ok(Some(status)) = c.try_wait()
    {
        panic!("{what} exited with {status}");
    }
}

/// Drains the child's stderr (so it never blocks on a full pipe) onto the
/// test's, each line that `keep` takes prefixed with `[label]`.
pub fn forward_stderr(child: &mut Child, label: String, keep: fn(&str) -> bool) {
    if let Some(e) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                if keep(&line) {
                    eprintln!("[{label}] {line}");
                }
            }
        });
    }
}

/// Options for a test broker.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Keep messages and sessions on disk across a restart.
    pub persistence: bool,
    /// Extra lines appended to the generated mosquitto.conf.
    pub extra: Vec<String>,
    /// A whole configuration instead of the generated one: `{port}` and
    /// `{dir}` (the broker's temp dir) are substituted. It must listen on
    /// 127.0.0.1:{port}.
    pub config: Option<String>,
}

/// A real Mosquitto broker on a loopback port, killed on drop.
pub struct Mosquitto {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    opts: MosquittoOptions,
}

/// Where the broker binary is: `MOSQUITTO` in the environment, else Debian's path.
pub fn mosquitto_binary() -> PathBuf {
    std::env::var_os("MOSQUITTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(MosquittoOptions::default())
    }

    pub fn start_with(opts: MosquittoOptions) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            opts,
        };
        m.spawn();
        m
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> String {
        let data = self.dir.path();
        // Started as root, mosquitto drops to the `mosquitto` user, which
        // cannot read the test's 0700 temp dirs: keep root for tests.
        let user = if running_as_root() { "user root\n" } else { "" };
        if let Some(c) = &self.opts.config {
            return c
                .replace("{port}", &self.port.to_string())
                .replace("{dir}", &data.display().to_string())
                + user;
        }
        let mut c = vec![
            format!("listener {} 127.0.0.1", self.port),
            "allow_anonymous true".into(),
            // The shipped production config raises these too: Mosquitto's
            // default of 1000 queued QoS 1 messages drops silently.
            "max_queued_messages 1000000".into(),
            "max_inflight_messages 0".into(),
            format!("persistence {}", self.opts.persistence),
            format!("persistence_location {}/", data.display()),
            "log_dest stderr".into(),
            "log_type error".into(),
            "log_type warning".into(),
        ];
        c.extend(self.opts.extra.iter().cloned());
        c.join("\n") + "\n" + user
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, self.config()).expect("write mosquitto.conf");
        let mut child = spawn_with_config(&mosquitto_binary(), &conf, "mosquitto");
        let addr = self.addr();
        eventually_blocking(
            &format!("mosquitto listening on {addr}"),
            Duration::from_secs(10),
            || {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("mosquitto exited with {status} before listening on {addr}: {err}");
                }
                false
            },
        );
        forward_stderr(&mut child, "mosquitto".into(), |_| true);
        self.child = Some(child);
    }

    /// Kills the broker (SIGKILL: no clean shutdown, no persistence flush
    /// beyond what it already wrote) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the broker cleanly (SIGTERM), which saves persistence if on.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts a stopped or killed broker again on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker is still running");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) to a pid with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A child process that is SIGKILLed and reaped when dropped, so a failing
/// test leaves no process behind (holding a port, a lock or cargo's pipe).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The address `muster-collector run` prints on its stdout ("muster-collector
/// listening on http://ADDR"), read line by line; the rest of its stdout is
/// then drained on a thread (so the collector never blocks on a full pipe).
/// `None`: its stdout closed first (it exited).
pub fn collector_listen_addr(stdout: std::process::ChildStdout) -> Option<SocketAddr> {
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if let Some(a) = line
            .trim()
            .strip_prefix("muster-collector listening on http://")
            .and_then(|a| a.parse().ok())
        {
            std::thread::spawn(move || for _ in out.lines() {});
            return Some(a);
        }
    }
}

/// Reads a process's resident set size and peak (VmRSS, VmHWM) in KiB from /proc.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What a [`TcpProxy`] does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Pass bytes both ways.
    Forward,
    /// Accept and keep, but pass nothing either way: a partition without a
    /// clean close (no FIN, no RST), as a cellular link that drops out.
    /// Connections that see this mode stay dead for good, even after the
    /// proxy forwards again (their peers must notice by keepalive).
    BlackHole,
    /// Accept new connections and close them at once (a link that refuses);
    /// connections already forwarding go on.
    Refuse,
}

/// A loopback TCP proxy to `127.0.0.1:upstream` that a test can black-hole
/// and heal. Plain threads, no runtime: usable from any test. Stopped (its
/// connections closed) on drop.
pub struct TcpProxy {
    port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

struct ProxyShared {
    /// 0 = forward, 1 = black hole, 2 = refuse.
    mode: std::sync::atomic::AtomicU8,
    stop: std::sync::atomic::AtomicBool,
    accepted: std::sync::atomic::AtomicU64,
}

impl TcpProxy {
    pub fn start(upstream: u16) -> TcpProxy {
        use std::sync::atomic::Ordering::SeqCst;
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = l.local_addr().expect("proxy addr").port();
        l.set_nonblocking(true).expect("nonblocking listener");
        let shared = std::sync::Arc::new(ProxyShared {
            mode: std::sync::atomic::AtomicU8::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
            accepted: std::sync::atomic::AtomicU64::new(0),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            while !sh.stop.load(SeqCst) {
                let s = match l.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                sh.accepted.fetch_add(1, SeqCst);
                if sh.mode.load(SeqCst) == 2 {
                    drop(s);
                    continue;
                }
                let _ = s.set_nonblocking(false);
                let up = if sh.mode.load(SeqCst) == 0 {
                    TcpStream::connect(("127.0.0.1", upstream)).ok()
                } else {
                    None
                };
                let Some(up) = up else {
                    // Black-holed (or no upstream): hold it open, say nothing.
                    let sh2 = sh.clone();
                    std::thread::spawn(move || {
                        let _s = s;
                        while !sh2.stop.load(SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    });
                    continue;
                };
                let dead = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                for (r, w) in [
                    (s.try_clone(), up.try_clone()),
                    (up.try_clone(), s.try_clone()),
                ] {
                    let (Ok(r), Ok(w)) = (r, w) else { continue };
                    let (sh2, dead) = (sh.clone(), dead.clone());
                    std::thread::spawn(move || proxy_pump(r, w, &sh2, &dead));
                }
            }
        });
        TcpProxy { port, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: ProxyMode) {
        let v = match mode {
            ProxyMode::Forward => 0,
            ProxyMode::BlackHole => 1,
            ProxyMode::Refuse => 2,
        };
        self.shared
            .mode
            .store(v, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `r` to `w` while the proxy forwards; once it sees the black hole
/// it stops reading and writing for good and holds both sockets open.
fn proxy_pump(
    mut r: TcpStream,
    mut w: TcpStream,
    sh: &ProxyShared,
    dead: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write;
    use std::sync::atomic::Ordering::SeqCst;
    let _ = r.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if sh.stop.load(SeqCst) {
            return;
        }
        if sh.mode.load(SeqCst) == 1 {
            dead.store(true, SeqCst);
        }
        if dead.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match r.read(&mut buf) {
            Ok(0) => {
                let _ = w.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if sh.mode.load(SeqCst) == 1 {
                    dead.store(true, SeqCst);
                    continue;
                }
                if w.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = w.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
}

// ------------------------------------------------------ collector signing key

/// The test suite's collector signing key: one fixed seed, so an agent test
/// can play the collector (signing its acks) and an e2e collector can be
/// given the key its agents trust.
pub const TEST_COLLECTOR_SEED: [u8; 32] = [0x7e; 32];

/// The suite's collector key, to sign acks and hellos with.
pub fn test_collector_key() -> muster_proto::SigningKey {
    muster_proto::SigningKey::from_seed(&TEST_COLLECTOR_SEED)
}

/// Its public key, `ed25519:<hex>`.
pub fn test_collector_public_key() -> String {
    test_collector_key().public_key().to_string()
}

/// An agent config's `[trust]` section trusting the suite's collector key.
pub fn agent_trust_toml() -> String {
    format!(
        "[trust]\ncollector_keys = [\"{}\"]\n",
        test_collector_public_key()
    )
}

/// Writes the suite's collector key file (mode 0600) into `dir`; returns its
/// path, for a collector config's `[signing] key_file`.
pub fn write_test_collector_key(dir: &Path) -> PathBuf {
    let path = dir.join("test-signing.key");
    std::fs::create_dir_all(dir).expect("key dir");
    std::fs::write(&path, TEST_COLLECTOR_SEED).expect("write the test key file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the test key file");
    }
    path
}

/// A collector config's `[signing]` section using the suite's key, written
/// into `dir`.
pub fn collector_signing_toml(dir: &Path) -> String {
    format!(
        "[signing]\nkey_file = \"{}\"\n",
        write_test_collector_key(dir).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_starts_listens_and_restarts_on_the_same_port() {
        let mut m = Mosquitto::start();
        assert!(TcpStream::connect(m.addr()).is_ok());
        let port = m.port();
        m.kill();
        assert!(
            TcpStream::connect(m.addr()).is_err(),
            "killed broker still listens"
        );
        m.start_again();
        assert_eq!(m.port(), port);
        assert!(TcpStream::connect(m.addr()).is_ok());
    }
}

/// A private `dbus-daemon` (Debian's `dbus`) on a unix socket in a temp
/// dir: tests export logind's or ModemManager's objects on it and point the
/// agent at it with `DBUS_SYSTEM_BUS_ADDRESS` ([`DbusDaemon::address`]).
/// Never the machine's system bus. Any connection may own any name and
/// send anything (the policy of a session bus). A missing binary is a test
/// failure, never a skip.
pub struct DbusDaemon {
    address: String,
    _dir: TempDir,
    _child: KillOnDrop,
}

impl DbusDaemon {
    pub fn start() -> DbusDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write dbus config");
        let bin = std::env::var_os("DBUS_DAEMON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/dbus-daemon"));
        let mut child = Command::new(&bin)
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install Debian's dbus (.ci/run does)",
                    bin.display()
                )
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("dbus-daemon prints its address");
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon did not start: {line:?}"
        );
        DbusDaemon {
            address,
            _dir: dir,
            _child: KillOnDrop(child),
        }
    }

    /// The bus address (`unix:path=…,guid=…`), for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

#[cfg(test)]
mod dbus_tests {
    use super::*;

    #[test]
    fn a_private_dbus_daemon_starts_and_listens() {
        let bus = DbusDaemon::start();
        let path = bus
            .address()
            .strip_prefix("unix:path=")
            .and_then(|a| a.split(',').next())
            .expect("a unix path address");
        std::os::unix::net::UnixStream::connect(path).expect("the bus accepts connections");
    }
}
