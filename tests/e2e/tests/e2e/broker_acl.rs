//! Who may connect, publish and subscribe, on both brokers a site can run:
//! the shipped production Mosquitto config (`packaging/mosquitto/`, with
//! certificates made here) and the embedded broker (the real
//! `muster-collector run --embedded-broker` binary, whose gate checks user
//! names and passwords). Every attack runs against both, and passes only
//! when the attack fails: a unit publishes under its own topics only, an
//! agency reads only its own units' status, nobody connects anonymously or
//! as someone else, and nobody can knock the collector off.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use muster_testkit::{Mosquitto, MosquittoOptions, TempDir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1, and client certificates whose
/// CN is the MQTT user name.
fn make_pki(dir: &Path, clients: &[(&str, &str)]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=muster-test-ca",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    issue(dir, "server", "localhost", Some("server.ext"));
    // X.509 v3 (an extension makes it so): rustls refuses a v1 certificate
    // as its own client certificate.
    std::fs::write(dir.join("client.ext"), "basicConstraints=CA:FALSE\n").unwrap();
    for (file, cn) in clients {
        issue(dir, file, cn, Some("client.ext"));
    }
}

fn issue(dir: &Path, file: &str, cn: &str, ext: Option<&str>) {
    let (key, csr, crt) = (
        format!("{file}.key"),
        format!("{file}.csr"),
        format!("{file}.crt"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={}", cn.replace('/', "\\/")),
        ],
    );
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &crt,
        "-days",
        "2",
    ];
    if let Some(ext) = ext {
        args.extend(["-extfile", ext]);
    }
    openssl(dir, &args);
}

/// The shipped config, pointed at the test's files and port.
fn test_config(pki: &Path) -> String {
    let shipped =
        std::fs::read_to_string(repo().join("packaging/mosquitto/mosquitto.conf")).unwrap();
    let mut out = String::new();
    for line in shipped.lines() {
        let line = line
            .replace("/etc/mosquitto/muster/", &format!("{}/", pki.display()))
            .replace("/var/lib/mosquitto/", "{dir}/");
        let line = match line.split_whitespace().next() {
            Some("listener") => "listener {port} 127.0.0.1".to_string(),
            Some("log_dest") => "log_dest stderr".to_string(),
            _ => line,
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert!(out.contains("require_certificate true") && out.contains("acl_file"));
    out
}

fn tls_args(pki: &Path, who: &str, port: u16) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        pki.join("ca.crt").display().to_string(),
        "--cert".into(),
        pki.join(format!("{who}.crt")).display().to_string(),
        "--key".into(),
        pki.join(format!("{who}.key")).display().to_string(),
        "-V".into(),
        "mqttv5".into(),
        "-q".into(),
        "1".into(),
    ]
}

/// A mosquitto_sub that has its SUBACK; lines it prints arrive on `rx`.
struct Sub {
    _child: muster_testkit::KillOnDrop,
    rx: mpsc::Receiver<String>,
}

impl Sub {
    fn start(pki: &Path, who: &str, port: u16, filter: &str) -> Sub {
        // stdbuf: mosquitto_sub block-buffers a pipe, which would hold back SUBACK.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "-eL", "mosquitto_sub"])
            .args(tls_args(pki, who, port))
            .args([
                "-t",
                filter,
                "-v",
                "-d",
                "-i",
                &format!("sub-{}", who.replace('/', "-")),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        let sub = Sub {
            _child: muster_testkit::KillOnDrop(child),
            rx,
        };
        let suback = sub.next_matching("SUBACK", Duration::from_secs(10));
        assert!(suback.is_some(), "{who}: no SUBACK for {filter}");
        sub
    }

    /// The next printed line containing `needle`, within `timeout`.
    fn next_matching(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Sub {
    /// Lines containing `needle` up to and including the one ending in
    /// `marker`; fails if the marker does not come within 10 s.
    fn until(&self, needle: &str, marker: &str) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(l) = self.next_matching(needle, Duration::from_secs(10)) {
            let done = l.ends_with(marker);
            seen.push(l);
            if done {
                return seen;
            }
        }
        panic!("{marker} not received: {seen:?}");
    }
}

/// Publishes `msg` as `who`; returns (exit success, everything printed).
fn publish(pki: &Path, who: &str, port: u16, topic: &str, msg: &str) -> (bool, String) {
    publish_with(pki, who, port, topic, msg, &[])
}

fn publish_retained(pki: &Path, who: &str, port: u16, topic: &str, msg: &str) -> (bool, String) {
    publish_with(pki, who, port, topic, msg, &["-r"])
}

fn publish_with(
    pki: &Path,
    who: &str,
    port: u16,
    topic: &str,
    msg: &str,
    extra: &[&str],
) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(tls_args(pki, who, port))
        .args(extra)
        .args([
            "-t",
            topic,
            "-m",
            msg,
            "-d",
            "-i",
            &format!("pub-{}", who.replace('/', "-")),
        ])
        .output()
        .expect("mosquitto_pub");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn shipped_acl_keeps_units_and_agencies_in_their_lanes() {
    let pki = TempDir::new().unwrap();
    let p = pki.path();
    make_pki(
        p,
        &[
            ("e12", "metro-fire/E12"),
            ("e13", "metro-fire/E13"),
            ("collector", "muster-collector"),
            ("agency", "metro-fire"),
            ("other", "county-ems"),
        ],
    );
    std::fs::copy(repo().join("packaging/mosquitto/acl"), p.join("acl")).unwrap();
    let broker = Mosquitto::start_with(MosquittoOptions {
        config: Some(test_config(p)),
        ..MosquittoOptions::default()
    });
    let port = broker.port();

    let collector = Sub::start(p, "collector", port, "muster/v1/+/+/telemetry");

    // A unit publishes under its own topic: the collector gets it.
    let (ok, out) = publish(p, "e12", port, "muster/v1/metro-fire/E12/telemetry", "own");
    assert!(ok, "own telemetry refused: {out}");
    let got = collector.next_matching(
        "muster/v1/metro-fire/E12/telemetry own",
        Duration::from_secs(10),
    );
    assert!(
        got.is_some(),
        "collector did not receive E12's own telemetry"
    );

    // E12 publishing as E13: refused (MQTT v5 PUBACK "not authorized"), never delivered.
    let (_, out) = publish(
        p,
        "e12",
        port,
        "muster/v1/metro-fire/E13/telemetry",
        "spoof",
    );
    assert!(
        out.contains("ot authorized"),
        "spoofed publish was not refused: {out}"
    );
    // A marker published after the spoof by E13 itself arrives; the spoof never did.
    let (ok, out) = publish(
        p,
        "e13",
        port,
        "muster/v1/metro-fire/E13/telemetry",
        "marker",
    );
    assert!(ok, "{out}");
    let seen = collector.until("telemetry", "marker");
    assert!(
        !seen.iter().any(|l| l.contains("spoof")),
        "spoofed message delivered: {seen:?}"
    );

    // A unit cannot publish an ack or a status (collector-only topics).
    let (_, out) = publish(p, "e12", port, "muster/v1/metro-fire/E12/status", "{}");
    assert!(
        out.contains("ot authorized"),
        "unit published a status: {out}"
    );

    // The collector publishes statuses; an agency reads only its own units'.
    let own = Sub::start(p, "agency", port, "muster/v1/metro-fire/+/status");
    let (ok, out) = publish(
        p,
        "collector",
        port,
        "muster/v1/metro-fire/E12/status",
        "ok-e12",
    );
    assert!(ok, "{out}");
    assert!(
        own.next_matching("ok-e12", Duration::from_secs(10))
            .is_some(),
        "agency missed its status"
    );

    // Another agency subscribing to every status gets only its own: the
    // broker filters each message against the ACL on delivery. Retained
    // status first, then a live one, then a marker of its own agency.
    let (ok, out) = publish_retained(
        p,
        "collector",
        port,
        "muster/v1/metro-fire/E12/status",
        "retained-e12",
    );
    assert!(ok, "{out}");
    let nosy = Sub::start(p, "other", port, "muster/v1/+/+/status");
    let (ok, out) = publish(
        p,
        "collector",
        port,
        "muster/v1/metro-fire/E12/status",
        "live-e12",
    );
    assert!(ok, "{out}");
    let (ok, out) = publish(
        p,
        "collector",
        port,
        "muster/v1/county-ems/M7/status",
        "county-m7",
    );
    assert!(ok, "{out}");
    let seen = nosy.until("status", "county-m7");
    assert!(
        !seen.iter().any(|l| l.contains("e12")),
        "another agency read metro-fire's status: {seen:?}"
    );
}

// ------------------------------------------------------------------------
// The same attacks against the embedded broker and the shipped Mosquitto,
// with the real collector behind each.

use crate::procs::{self, CollectorProc, http_get, sha256_hex};
use muster_proto::{Body, BootId, Message, Payload, Record, UnitId, encode, fixtures};

const E12_PW: &str = "e12-password-0123456789";
const E13_PW: &str = "e13-password-0123456789";
const COUNTY: &str = "county-ems";
const COUNTY_TOKEN: &str = "e2e-county-token-0123456789";
/// `broker.max_packet_bytes` and Mosquitto's `max_packet_size` as shipped.
const LIMIT: usize = 266_240;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embedded,
    Mosquitto,
}

/// A broker with the real collector behind it.
struct Site {
    kind: Kind,
    port: u16,
    dir: TempDir,
    collector: CollectorProc,
    _mosquitto: Option<Mosquitto>,
}

impl Site {
    fn start(kind: Kind) -> Site {
        let dir = TempDir::new().unwrap();
        let p = dir.path();
        let agencies = format!("[[agency]]\nname = \"{COUNTY}\"\ntoken = \"{COUNTY_TOKEN}\"\n");
        match kind {
            Kind::Embedded => {
                let extra = format!(
                    "{agencies}[broker]\nmax_packet_bytes = {LIMIT}\n\
                     [[broker.unit]]\nname = \"metro-fire/E12\"\npassword_sha256 = \"{}\"\n\
                     [[broker.unit]]\nname = \"metro-fire/E13\"\npassword_sha256 = \"{}\"\n",
                    sha256_hex(E12_PW.as_bytes()),
                    sha256_hex(E13_PW.as_bytes())
                );
                let (collector, port) = CollectorProc::spawn_embedded(p, &extra);
                Site {
                    kind,
                    port,
                    dir,
                    collector,
                    _mosquitto: None,
                }
            }
            Kind::Mosquitto => {
                make_pki(
                    p,
                    &[
                        ("e12", "metro-fire/E12"),
                        ("e13", "metro-fire/E13"),
                        ("collector", "muster-collector"),
                        ("collector-publisher", "muster-collector-publisher"),
                        ("agency", "metro-fire"),
                        ("other", COUNTY),
                    ],
                );
                make_rogue(p, "rogue", "metro-fire/E12");
                std::fs::copy(repo().join("packaging/mosquitto/acl"), p.join("acl")).unwrap();
                let m = Mosquitto::start_with(MosquittoOptions {
                    config: Some(test_config(p)),
                    ..MosquittoOptions::default()
                });
                let port = m.port();
                let file = |f: &str| p.join(f).display().to_string();
                let text =
                    procs::collector_config(&format!("mqtts://127.0.0.1:{port}"), &p.join("store"))
                        .set_str("mqtt", "ca_file", &file("ca.crt"))
                        .set_str("mqtt", "cert_file", &file("collector.crt"))
                        .set_str("mqtt", "key_file", &file("collector.key"))
                        // Acks and status on their own connection and CN,
                        // as packaging/mosquitto/acl's publisher lines
                        // expect.
                        .extra(&format!(
                            "[mqtt.publisher]\nclient_id = \"muster-collector-publisher\"\n\
                             cert_file = \"{}\"\nkey_file = \"{}\"\n",
                            file("collector-publisher.crt"),
                            file("collector-publisher.key")
                        ))
                        .extra(&agencies)
                        .render();
                let cfg = p.join("collector.toml");
                std::fs::write(&cfg, text).unwrap();
                let collector = CollectorProc::spawn(&cfg, false);
                Site {
                    kind,
                    port,
                    dir,
                    collector,
                    _mosquitto: Some(m),
                }
            }
        }
    }

    /// Connection arguments for mosquitto_pub/sub as `who`: `e12`, `e13`,
    /// `agency`, `other` (county-ems); `anon` (no credentials at all),
    /// `wrong` (E12's name with a wrong password, or a certificate from
    /// another CA), `e12-as-e13` (E12's secret claiming E13's name).
    fn args(&self, who: &str) -> Vec<String> {
        let mut a: Vec<String> = ["-h", "127.0.0.1", "-p", &self.port.to_string()]
            .map(String::from)
            .into();
        a.extend(["-V", "mqttv311"].map(String::from));
        match self.kind {
            Kind::Embedded => {
                let login = match who {
                    "e12" => Some(("metro-fire/E12", E12_PW)),
                    "e13" => Some(("metro-fire/E13", E13_PW)),
                    "agency" => Some((procs::AGENCY, procs::FIRE)),
                    "other" => Some((COUNTY, COUNTY_TOKEN)),
                    "anon" => None,
                    "wrong" => Some(("metro-fire/E12", "not-the-password-0123")),
                    "e12-as-e13" => Some(("metro-fire/E13", E12_PW)),
                    _ => panic!("who is {who}?"),
                };
                if let Some((u, pw)) = login {
                    a.extend(["-u".into(), u.into(), "-P".into(), pw.into()]);
                }
            }
            Kind::Mosquitto => {
                let p = self.dir.path();
                a.extend(["--cafile".into(), p.join("ca.crt").display().to_string()]);
                let (cert, user) = match who {
                    "anon" => (None, None),
                    "wrong" => (Some("rogue"), None),
                    "e12-as-e13" => (Some("e12"), Some("metro-fire/E13")),
                    w => (Some(w), None),
                };
                if let Some(c) = cert {
                    a.extend([
                        "--cert".into(),
                        p.join(format!("{c}.crt")).display().to_string(),
                        "--key".into(),
                        p.join(format!("{c}.key")).display().to_string(),
                    ]);
                }
                if let Some(u) = user {
                    a.extend(["-u".into(), u.into(), "-P".into(), E12_PW.into()]);
                }
            }
        }
        a
    }

    /// mosquitto_pub of `payload` (QoS 1); (exit success, output).
    fn publish(&self, who: &str, topic: &str, payload: &[u8], extra: &[&str]) -> (bool, String) {
        let n = PUBLISHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = self.dir.path().join(format!("payload-{n}"));
        std::fs::write(&file, payload).unwrap();
        let out = Command::new("mosquitto_pub")
            .args(self.args(who))
            .args(["-q", "1", "-d", "-t", topic, "-f"])
            .arg(&file)
            .args(extra)
            .output()
            .expect("mosquitto_pub");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// A mosquitto_sub as `who` on `filters` with extra arguments; its
    /// lines arrive on `rx`. Does not wait for anything.
    fn sub(&self, who: &str, filters: &[&str], extra: &[&str]) -> Sub {
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "-eL", "mosquitto_sub"])
            .args(self.args(who))
            .args(["-q", "1", "-v", "-d"])
            .args(extra);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        let (tx, rx) = mpsc::channel();
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Sub {
            _child: muster_testkit::KillOnDrop(child),
            rx,
        }
    }

    /// Everything a mosquitto_sub as `who` prints within `secs` seconds.
    fn sub_output(&self, who: &str, filter: &str, secs: u64) -> String {
        let s = self.sub(who, &[filter], &["-W", &secs.to_string()]);
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs + 5);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match s.rx.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => break,
            }
        }
        out.join("\n")
    }

    fn metric(&self, line_prefix: &str) -> u64 {
        let (st, body) =
            http_get(self.collector.addr, "/metrics", Some(procs::ADMIN)).expect("GET /metrics");
        assert_eq!(st, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {line_prefix} in /metrics")) as u64
    }

    fn gate_refused(&self, reason: &str) -> u64 {
        match self.kind {
            Kind::Embedded => self.metric(&format!(
                "muster_broker_refused_total{{reason=\"{reason}\"}}"
            )),
            Kind::Mosquitto => 0,
        }
    }

    fn ingest_oversized(&self) -> u64 {
        self.metric("muster_ingest_refused_total{reason=\"oversized\"}")
    }

    /// Connections made, the subscriber's and the publisher's.
    fn connects(&self) -> (u64, u64) {
        (
            self.metric("muster_mqtt_connects_total"),
            self.metric("muster_mqtt_publisher_connects_total"),
        )
    }

    fn ready(&self) -> bool {
        http_get(self.collector.addr, "/readyz", None).is_some_and(|(s, _)| s == 200)
    }

    /// A record of `unit` published by `who` on `unit`'s telemetry topic.
    fn record(&self, who: &str, unit: &str, boot: u64, seq: u64) -> (bool, String) {
        let msg = Message {
            unit: UnitId::new(procs::AGENCY, unit).unwrap(),
            body: Body::Record(Record {
                boot: BootId(boot),
                seq,
                at_ms: procs::now_ms(),
                payload: Payload::Host(fixtures::host_sample()),
            }),
        };
        let topic = format!("muster/v1/{}/{unit}/telemetry", procs::AGENCY);
        self.publish(who, &topic, &encode(&msg).unwrap(), &[])
    }

    /// Waits until the collector has stored seq `seq` of `boot` for `unit`.
    fn wait_stored(&self, unit: &str, boot: u64, seq: u64) {
        let b = BootId(boot).to_string();
        self.collector
            .wait_unit(unit, "record stored", Duration::from_secs(15), |v| {
                procs::boots(v)
                    .iter()
                    .any(|(id, _, _, _, max)| *id == b && *max >= seq)
            });
    }

    fn boots_of(&self, unit: &str) -> Vec<String> {
        self.collector
            .unit(unit)
            .map(|v| procs::boots(&v).into_iter().map(|b| b.0).collect())
            .unwrap_or_default()
    }
}

static PUBLISHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A client certificate for `cn` signed by a CA the broker does not trust.
fn make_rogue(dir: &Path, file: &str, cn: &str) {
    let rogue = dir.join("rogue-ca");
    std::fs::create_dir_all(&rogue).unwrap();
    make_pki(&rogue, &[(file, cn)]);
    for ext in ["crt", "key"] {
        std::fs::copy(
            rogue.join(format!("{file}.{ext}")),
            dir.join(format!("{file}.{ext}")),
        )
        .unwrap();
    }
}

const LEGIT_BOOT: u64 = 0x600d;
const FORGED_BOOT: u64 = 0xbad;

/// Every attack of issue 11 against one site; panics on the first that works.
fn attacks(site: &Site) {
    let kind = site.kind;
    // Legit traffic first: E13 is a live unit with a record stored. Its ack
    // and status go out on the collector's publisher connection, which the
    // broker lets write them: the agency reads the status, and no publish
    // was refused (a PUBACK with a failure reason is counted).
    let (ok, out) = site.record("e13", "E13", LEGIT_BOOT, 1);
    assert!(ok, "{kind:?}: E13's own record refused: {out}");
    site.wait_stored("E13", LEGIT_BOOT, 1);
    assert_eq!(site.metric("muster_mqtt_publisher_connected"), 1);
    let status = site.sub("agency", &["muster/v1/metro-fire/E13/status"], &[]);
    assert!(
        status
            .next_matching("muster/v1/metro-fire/E13/status ", Duration::from_secs(10))
            .is_some(),
        "{kind:?}: E13's status did not reach its agency"
    );
    drop(status);
    assert!(site.metric("muster_acks_published_total") >= 1);
    assert_eq!(
        site.metric("muster_mqtt_publishes_refused_total"),
        0,
        "{kind:?}: the broker refused the collector's acks or status"
    );
    let connects = site.connects();

    // 1-3. Nobody connects anonymously, with a wrong secret, or as another unit.
    let bad_before = site.gate_refused("bad_credentials");
    for who in ["anon", "wrong", "e12-as-e13"] {
        let out = site.sub_output(who, "muster/v1/metro-fire/E13/ack", 2);
        if kind == Kind::Mosquitto && who == "e12-as-e13" {
            // The certificate's CN is the user name: the claimed name is
            // ignored, so this connects as E12; its publish is tried below.
            continue;
        }
        assert!(
            !out.contains("SUBACK"),
            "{kind:?}: {who} connected and subscribed: {out}"
        );
    }
    if kind == Kind::Embedded {
        assert_eq!(site.gate_refused("bad_credentials"), bad_before + 3);
    }

    // 6. A record for E13 published by E12 (on E13's topic, and on its own
    // topic), and by E12 claiming to be E13: none is stored.
    let _ = site.record("e12", "E13", FORGED_BOOT, 1_000_000);
    let _ = site.record("e12-as-e13", "E13", FORGED_BOOT, 1_000_001);
    {
        let msg = Message {
            unit: UnitId::new(procs::AGENCY, "E13").unwrap(),
            body: Body::Record(Record {
                boot: BootId(FORGED_BOOT),
                seq: 1_000_002,
                at_ms: procs::now_ms(),
                payload: Payload::Host(fixtures::host_sample()),
            }),
        };
        let _ = site.publish(
            "e12",
            "muster/v1/metro-fire/E12/telemetry",
            &encode(&msg).unwrap(),
            &[],
        );
    }
    let (ok, out) = site.record("e13", "E13", LEGIT_BOOT, 2);
    assert!(ok, "{out}");
    site.wait_stored("E13", LEGIT_BOOT, 2);
    let forged = BootId(FORGED_BOOT).to_string();
    assert!(
        !site.boots_of("E13").contains(&forged),
        "{kind:?}: a forged record for E13 was stored: {:?}",
        site.boots_of("E13")
    );

    // 4. A unit subscribing to everything reads nothing of another unit's.
    let nosy = site.sub(
        "e12",
        &["#", "muster/v1/+/+/telemetry", "muster/v1/+/+/status"],
        &[],
    );
    // Subscribed (what the broker granted) before E13 publishes.
    let _ = nosy.next_matching("SUBACK", Duration::from_secs(3));
    let (ok, out) = site.record("e13", "E13", LEGIT_BOOT, 3);
    assert!(ok, "{out}");
    site.wait_stored("E13", LEGIT_BOOT, 3);
    // A window for what must not come: the collector has stored it, so the
    // broker has routed it; E12's copy, if any, would be here by now.
    std::thread::sleep(Duration::from_millis(500));
    let seen: Vec<String> = nosy.rx.try_iter().collect();
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("muster/v1/") && l.contains("E13")),
        "{kind:?}: E12 read E13's topics: {seen:?}"
    );

    // 5. An agency reads its own units' status, never another agency's.
    let own = site.sub("agency", &["muster/v1/metro-fire/+/status"], &[]);
    assert!(
        own.next_matching("muster/v1/metro-fire/E13/status", Duration::from_secs(15))
            .is_some(),
        "{kind:?}: metro-fire did not get its own unit's status"
    );
    let county = site.sub(
        "other",
        &[
            "muster/v1/metro-fire/+/status",
            "muster/v1/+/+/status",
            "muster/v1/metro-fire/incidents",
            "#",
        ],
        &[],
    );
    // Subscribed before E13 publishes (else the check below proves nothing).
    let _ = county.next_matching("SUBACK", Duration::from_secs(3));
    let (ok, out) = site.record("e13", "E13", LEGIT_BOOT, 4);
    assert!(ok, "{out}");
    site.wait_stored("E13", LEGIT_BOOT, 4);
    // A window for what must not come (as above).
    std::thread::sleep(Duration::from_secs(1));
    let seen: Vec<String> = county.rx.try_iter().collect();
    assert!(
        !seen.iter().any(|l| l.starts_with("muster/v1/metro-fire")),
        "{kind:?}: county-ems read metro-fire's topics: {seen:?}"
    );

    // 7. A retained will on another unit's state topic never lands: E13's
    // own retained state is still there afterwards. (A unit has one client
    // id, so E13 reads it on a connection of its own after publishing.)
    let (ok, out) = site.publish(
        "e13",
        "muster/v1/metro-fire/E13/state",
        b"legit-state",
        &["-r"],
    );
    assert!(ok, "{out}");
    let will = site.sub(
        "e12",
        &["muster/v1/metro-fire/E12/ack"],
        &[
            "--will-topic",
            "muster/v1/metro-fire/E13/state",
            "--will-payload",
            "forged-will",
            "--will-retain",
            "--will-qos",
            "1",
        ],
    );
    let _ = will.next_matching("SUBACK", Duration::from_secs(3));
    drop(will); // SIGKILL: no DISCONNECT, so a broker that took the will fires it.
    // A window for a will that must not land.
    std::thread::sleep(Duration::from_millis(500));
    let state = site.sub("e13", &["muster/v1/metro-fire/E13/state"], &[]);
    let retained = state.next_matching("muster/v1/metro-fire/E13/state ", Duration::from_secs(10));
    assert_eq!(
        retained.as_deref(),
        Some("muster/v1/metro-fire/E13/state legit-state"),
        "{kind:?}: E12's will replaced E13's retained state"
    );
    drop(state);

    // 8. Nobody takes the collector's client ids (subscriber or publisher).
    for id in [
        "e2e-collector",
        "c:e2e-collector",
        "muster-collector",
        "c:e2e-collector%2Fpublisher",
        "muster-collector-publisher",
    ] {
        let thief = site.sub("e12", &["muster/v1/metro-fire/E12/ack"], &["-i", id]);
        let _ = thief.next_matching("SUBACK", Duration::from_secs(3));
        // A window for a takeover that must not happen.
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        site.ready(),
        "{kind:?}: collector not ready after the id theft"
    );
    assert_eq!(
        site.connects(),
        connects,
        "{kind:?}: the collector was kicked off and reconnected"
    );
    let (ok, out) = site.record("e13", "E13", LEGIT_BOOT, 5);
    assert!(ok, "{out}");
    site.wait_stored("E13", LEGIT_BOOT, 5);
    assert_eq!(site.metric("muster_mqtt_publishes_refused_total"), 0);
}

#[test]
fn embedded_broker_refuses_every_attack() {
    attacks(&Site::start(Kind::Embedded));
}

#[test]
fn shipped_mosquitto_refuses_every_attack() {
    attacks(&Site::start(Kind::Mosquitto));
}

/// QoS 1 publishes with remaining length LIMIT-1, LIMIT, LIMIT+1 (and
/// 1 MiB, issue 11's size): each is
/// refused at the broker or counted by the collector as `oversized`, and
/// ingest goes on (a record after them is stored, the collector never
/// reconnected).
fn packet_limit_boundary(site: &Site) {
    let kind = site.kind;
    let topic = "muster/v1/metro-fire/E12/telemetry";
    let (ok, out) = site.record("e12", "E12", LEGIT_BOOT, 1);
    assert!(ok, "{out}");
    site.wait_stored("E12", LEGIT_BOOT, 1);
    let connects = site.connects();
    let gate_before = site.gate_refused("oversized");
    let ingest_before = site.ingest_oversized();
    let mut broker_refused = 0;
    // Remaining length = topic length (2 + topic) + packet id (2) + payload.
    let payload_for = |rl: usize| rl - 2 - topic.len() - 2;
    // Issue 11: exactly 1 MiB reached the collector one byte over its
    // client's limit and made it reconnect forever.
    let mut sizes = vec![LIMIT - 1, LIMIT, LIMIT + 1, 1_048_576];
    if kind == Kind::Embedded {
        // The gate's limit is on the whole packet: this one is exactly it
        // (1 byte of type, 3 of remaining length) and passes, to reach the
        // collector as `oversized` (its payload is over 256 KiB).
        sizes.push(LIMIT - 4);
    }
    for rl in &sizes {
        let mut payload = vec![0u8; payload_for(*rl)];
        payload[0] = 1; // schema version
        let ingest = site.ingest_oversized();
        let (ok, out) = site.publish("e12", topic, &payload, &[]);
        if ok {
            muster_testkit::wait_until(
                "collector counts it oversized",
                Duration::from_secs(15),
                || site.ingest_oversized() > ingest,
            );
        } else {
            broker_refused += 1;
            eprintln!(
                "{kind:?}: remaining length {rl}: refused by the broker: {}",
                out.lines().last().unwrap_or("")
            );
        }
    }
    // Ingest goes on.
    let (ok, out) = site.record("e12", "E12", LEGIT_BOOT, 2);
    assert!(ok, "{out}");
    site.wait_stored("E12", LEGIT_BOOT, 2);
    assert!(site.ready(), "{kind:?}: /readyz after the boundary");
    assert_eq!(
        site.connects(),
        connects,
        "{kind:?}: the collector reconnected"
    );
    let gate = site.gate_refused("oversized") - gate_before;
    let ingest = site.ingest_oversized() - ingest_before;
    eprintln!(
        "{kind:?}: gate oversized {gate}, collector oversized {ingest}, publishes failed {broker_refused}"
    );
    assert_eq!(ingest + broker_refused, sizes.len() as u64, "{kind:?}");
    match kind {
        Kind::Embedded => {
            assert_eq!(
                gate, 4,
                "the gate refuses LIMIT-1, LIMIT, LIMIT+1 and 1 MiB"
            );
            assert_eq!(ingest, 1, "the packet of exactly LIMIT bytes passes");
        }
        Kind::Mosquitto => {
            // Mosquitto refuses remaining length + 1 > max_packet_size.
            assert_eq!(ingest, 1, "LIMIT-1 passes Mosquitto");
        }
    }
}

#[test]
fn embedded_broker_packet_limit_boundary() {
    packet_limit_boundary(&Site::start(Kind::Embedded));
}

#[test]
fn shipped_mosquitto_packet_limit_boundary() {
    packet_limit_boundary(&Site::start(Kind::Mosquitto));
}

/// The gate's limits on the running binary: the connection cap is taken
/// before a byte is read, a client that sends no CONNECT is closed after
/// `broker.connect_timeout`, and anything but MQTT 3.1.1 gets CONNACK 1.
#[test]
fn embedded_broker_limits() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let dir = TempDir::new().unwrap();
    let p = dir.path();
    let extra = format!(
        "[broker]\nmax_connections = 2\nconnect_timeout = \"2s\"\n\
         [[broker.unit]]\nname = \"metro-fire/E12\"\npassword_sha256 = \"{}\"\n",
        sha256_hex(E12_PW.as_bytes())
    );
    let (collector, port) = CollectorProc::spawn_embedded(p, &extra);
    let site = Site {
        kind: Kind::Embedded,
        port,
        dir,
        collector,
        _mosquitto: None,
    };
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // Closed by the gate: read returns 0 (or a reset) before the timeout.
    let closed_within = |s: &mut TcpStream, d: Duration| {
        let t = std::time::Instant::now();
        let mut b = [0u8; 16];
        let r = s.read(&mut b);
        matches!(r, Ok(0) | Err(_)) && t.elapsed() < d
    };

    // Two idle connections take the cap; a third is closed at once.
    let mut idle1 = connect();
    let mut idle2 = connect();
    muster_testkit::wait_until("2 connections open", Duration::from_secs(5), || {
        site.metric("muster_broker_connections") == 2
    });
    let mut third = connect();
    assert!(
        closed_within(&mut third, Duration::from_secs(2)),
        "third connection not closed"
    );
    assert_eq!(site.gate_refused("connection_cap"), 1);

    // Both idle ones are closed after connect_timeout (2 s), not before 1 s.
    let t = std::time::Instant::now();
    assert!(closed_within(&mut idle1, Duration::from_secs(5)));
    assert!(closed_within(&mut idle2, Duration::from_secs(5)));
    assert!(t.elapsed() >= Duration::from_secs(1), "closed too early");
    assert_eq!(site.gate_refused("connect_timeout"), 2);

    // An MQTT 5 CONNECT: CONNACK "unacceptable protocol version".
    let mut v5 = connect();
    v5.write_all(b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00")
        .unwrap();
    let mut ack = [0u8; 4];
    v5.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x01]);
    assert_eq!(site.gate_refused("protocol"), 1);

    // And a real unit still gets in.
    let (ok, out) = site.record("e12", "E12", LEGIT_BOOT, 1);
    assert!(ok, "{out}");
    site.wait_stored("E12", LEGIT_BOOT, 1);
}
