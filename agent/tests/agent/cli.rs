//! The built binary: `once` against local servers, `check-config`.

use std::process::Command;

use serde_json::Value;

use crate::servers::{self, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_muster-agent");

fn write_config(dir: &std::path::Path, probes: &str) -> std::path::PathBuf {
    servers::agent_config(dir, "processes = [\"no-such-cad-client\"]", probes)
}

#[tokio::test]
async fn once_prints_every_phase_and_they_add_up() {
    let dir = servers::scratch("once");
    let ok = servers::http(Reply::ok("status: healthy")).await;
    let down = servers::http(Reply {
        status: 503,
        body: "down",
        delay: std::time::Duration::ZERO,
    })
    .await;
    let closed = servers::closed_port();
    let cfg = write_config(
        &dir,
        &format!(
            r#"
[[probe]]
name = "cad-api"
kind = "http"
target = "http://localhost:{}/health"
body_contains = "healthy"
timeout = "3s"
[[probe]]
name = "cad-down"
kind = "http"
target = "http://127.0.0.1:{}/"
timeout = "3s"
[[probe]]
name = "cad-db"
kind = "tcp"
target = "127.0.0.1:{closed}"
timeout = "3s"
[[probe]]
name = "cad-dns"
kind = "dns"
target = "localhost"
"#,
            ok.port(),
            down.port()
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["once", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(v["unit"]["agency"], "metro-fire");
    assert_eq!(v["unit"]["unit"], "E12");
    assert!(v["at_ms"].as_u64().unwrap() > 1_600_000_000_000);

    let host = &v["host"];
    assert_eq!(host["interval_ms"], 1000);
    assert!(host["memory"]["total_kib"].as_u64().unwrap() > 0);
    assert!(!host["cpu"]["per_core_pct"].as_array().unwrap().is_empty());
    assert!(host["uptime_s"].as_u64().unwrap() > 0);
    assert_eq!(host["processes"][0]["name"], "no-such-cad-client");
    assert_eq!(host["processes"][0]["running"], false);
    assert_eq!(host["failures"].as_array().unwrap().len(), 0, "{host}");

    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 4);
    let api = &probes[0];
    assert_eq!(api["name"], "cad-api");
    assert_eq!(api["kind"], "Http");
    assert_eq!(api["outcome"], "Ok", "{api}");
    assert_eq!(api["status"], 200);
    let ph = &api["phases"];
    let phase = |k: &str| {
        ph[k]
            .as_u64()
            .unwrap_or_else(|| panic!("phase {k} missing in {ph}"))
    };
    let (dns, connect, ttfb, total) = (
        phase("dns_us"),
        phase("connect_us"),
        phase("ttfb_us"),
        phase("total_us"),
    );
    assert!(ph["tls_us"].is_null(), "plain http has no TLS phase");
    assert!(dns + connect + ttfb <= total, "{ph}");
    assert!(total > 0);

    assert_eq!(probes[1]["outcome"]["Fail"], "BadStatus", "{}", probes[1]);
    assert_eq!(probes[1]["status"], 503);
    assert_eq!(probes[2]["outcome"]["Fail"], "Refused", "{}", probes[2]);
    assert_eq!(probes[3]["outcome"], "Ok", "{}", probes[3]);
    assert!(!probes[3]["addrs"].as_array().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = servers::scratch("check");
    let cfg = write_config(
        &dir,
        "[[probe]]\nname = \"a\"\nkind = \"dns\"\ntarget = \"a\"\n[[probe]]\nname = \"b\"\nkind = \"dns\"\ntarget = \"b\"\n[[probe]]\nname = \"c\"\nkind = \"http\"\ntarget = \"http://c/\"\ntimeout = \"3x\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("probe[2].timeout: \"3x\" is not a duration"),
        "{err}"
    );

    let good = write_config(&dir, "");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second agent on the same data directory is refused with one clear
/// line, and the first keeps running.
#[test]
fn a_second_agent_on_the_same_buffer_is_refused_clearly() {
    let dir = servers::scratch("locked");
    // The broker address is a closed port: the first agent buffers.
    let cfg = write_config(&dir, "");
    let mut first = muster_testkit::KillOnDrop(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lock = dir.join("buffer").join("LOCK");
    muster_testkit::wait_until(
        "the first agent opened its buffer",
        std::time::Duration::from_secs(20),
        || lock.exists(),
    );
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("muster-agent: "), "{err}");
    assert_eq!(
        last.matches("is in use by another process").count(),
        1,
        "the cause is said once: {last}"
    );
    // Refused before it said it was running (and before READY to systemd).
    assert!(!err.contains("Agent running."), "{err}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first agent still runs"
    );
    muster_testkit::signal(first.id(), "TERM");
    let status = first.wait().unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_config_passes_check_config() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Does `net.ipv4.ping_group_range` let `gid` open an ICMP datagram socket?
fn ping_group_allows(gid: u32) -> bool {
    let r = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap();
    let v: Vec<u32> = r.split_whitespace().map(|x| x.parse().unwrap()).collect();
    v[0] <= gid && gid <= v[1]
}

/// The icmp probe as an unprivileged user without CAP_NET_RAW: a datagram
/// socket where `ping_group_range` allows one, else a clear Permission failure.
#[test]
fn icmp_without_privileges() {
    let dir = servers::scratch("icmp-perm");
    let cfg = write_config(
        &dir,
        "[[probe]]\nname = \"gw\"\nkind = \"icmp\"\ntarget = \"127.0.0.1\"\ntimeout = \"2s\"\n",
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            BIN,
            "once",
            "--compact",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .expect("setpriv (util-linux) runs the agent unprivileged");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["probes"][0];
    if ping_group_allows(65534) {
        assert_eq!(p["outcome"], "Ok", "{p}");
        assert_eq!(p["icmp"]["lost"], 0, "{p}");
    } else {
        assert_eq!(p["outcome"]["Fail"], "Permission", "{p}");
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains("ping_group_range") && detail.contains("CAP_NET_RAW"),
            "{detail}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// No part of an error line says the same thing twice (an error that both
/// prints its source and chains it would: "disk buffer: x: x").
fn assert_said_once(line: &str) {
    let parts: Vec<&str> = line.split(": ").filter(|p| p.len() > 3).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p),
            "{p:?} is said twice in {line:?}"
        );
    }
}

#[test]
fn errors_are_one_readable_line_that_says_each_thing_once() {
    let dir = servers::scratch("said-once");
    // check-config on a missing file: the file is named once.
    let missing = dir.join("missing.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("missing.toml").count(), 1, "{err}");
    assert!(err.starts_with("muster-agent: cannot read "), "{err}");
    assert_said_once(err.trim());

    // run, with a corrupt trusted-keys file: the error passes through the
    // trust and the run layers.
    let cfg = write_config(&dir, "");
    std::fs::write(dir.join("trusted_keys"), b"ed25519:not-hex\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("muster-agent: "))
        .unwrap_or_else(|| panic!("no error line in {err}"));
    assert!(line.contains("trusted collector keys"), "{line}");
    assert_eq!(line.matches("trusted_keys").count(), 1, "{line}");
    assert_said_once(line);
    let _ = std::fs::remove_dir_all(&dir);
}
