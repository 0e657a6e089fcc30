//! The shipped production Mosquitto config (`packaging/mosquitto/`): with
//! certificates made here, a unit can publish under its own topics only, and
//! an agency reads only its own units' status.

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
    for (file, cn) in clients {
        issue(dir, file, cn, None);
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
