//! Terminals as they really live (issue 12), end to end: the real agent and
//! collector binaries and a real Mosquitto; a private dbus-daemon with a
//! fake logind where the OS speaks (`muster_testkit::logind`).
//!
//! * SIGTERM (what `systemctl stop` and an OS without logind send) reads
//!   `off` within 2 s, with its reason in words: an announcement, not a loss.
//! * SIGKILL and a black-holed link read `lost` (the MQTT will) after the
//!   keepalive, with the network the unit was last on.
//! * logind's `PrepareForSleep(true)` reads asleep; `(false)` reads ok
//!   again, and the presence says how long the unit slept.
//! * Off past `[rules.off] max` reads `overdue`.
//! * An announced restart (`muster-agent announce-restart`) that never comes
//!   back reads `overdue` once `back_within` has passed, then `lost` when the
//!   unit has been silent past its stale allowance too.
//!
//! Timings are printed (`--nocapture`) for the closing note.

use std::time::{Duration, Instant};

use muster_testkit::logind::Logind;
use muster_testkit::{DbusDaemon, Mosquitto, ProxyMode, TcpProxy, TempDir, eventually_blocking};
use serde_json::Value;

use crate::procs::*;

/// The first reason's rule.
fn rule0(v: &Value) -> &str {
    v["reasons"][0]["rule"].as_str().unwrap_or("")
}

fn message0(v: &Value) -> &str {
    v["reasons"][0]["message"].as_str().unwrap_or("")
}

/// A collector on `broker`, rules tightened by `rules` (TOML tables).
fn collector(broker: &Mosquitto, dir: &std::path::Path, rules: &str) -> CollectorProc {
    let cfg = dir.join("collector.toml");
    std::fs::write(
        &cfg,
        collector_text(&broker.url(), &dir.join("store"), rules),
    )
    .unwrap();
    CollectorProc::spawn(&cfg, false)
}

/// Starts an agent and waits until the collector shows it ok and online.
fn agent_up(c: &CollectorProc, spec: &AgentSpec) -> AgentProc {
    let mut a = AgentProc::spawn(spec, false);
    let what = format!("{} up, ok and online", spec.unit);
    eventually_blocking(&what, Duration::from_secs(30), || {
        let up = c.unit(&spec.unit).is_some_and(|v| {
            v["status"] == "ok" && v["online"] == true && v["agent"]["version"].is_string()
        });
        assert!(a.alive(), "{} died:\n{}", spec.unit, a.log_tail());
        if up { Ok(()) } else { Err(a.log_tail()) }
    });
    a
}

#[test]
fn sigterm_reads_off_within_two_seconds_with_its_reason() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let c = collector(&broker, dir.path(), "");
    let spec = AgentSpec::new("E1", &broker.url(), &dir.path().join("e1"));
    let mut a = agent_up(&c, &spec);

    let t0 = Instant::now();
    a.term();
    let v = c.wait_unit("E1", "off", Duration::from_secs(10), |v| {
        v["status"] == "off"
    });
    let took = t0.elapsed();
    a.wait_clean_exit(Duration::from_secs(10));
    println!("SIGTERM -> off in {took:?}: {}", message0(&v));
    assert!(took < Duration::from_secs(2), "off after {took:?}");
    assert_eq!(rule0(&v), "off", "{}", brief(&v));
    assert_eq!(v["reasons"][0]["field"], "presence.stop", "{}", brief(&v));
    assert_eq!(v["reasons"][0]["severity"], "info", "{}", brief(&v));
    assert!(
        message0(&v).starts_with("stopped ") && message0(&v).contains("by an operator"),
        "{}",
        brief(&v)
    );
    assert_eq!(v["presence"]["reason"], "stop", "{}", brief(&v));
    assert_eq!(v["online"], false);
    // The announcement is a stored, acked record too, and nothing came after it.
    let kinds: Vec<String> = c.samples("E1").into_iter().map(|s| s.3).collect();
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("presence"),
        "the announcement is the boot's last record: {kinds:?}"
    );
    // Still off a while later: no will, no staleness turns it into a loss
    // (a window for what must not happen, not a synchronisation).
    std::thread::sleep(Duration::from_secs(3));
    let v = c.unit("E1").unwrap();
    assert_eq!(v["status"], "off", "{}", brief(&v));
}

/// The same through the embedded broker's gate (`muster-collector demo`'s
/// broker, where the issue was first seen): the agent's clean DISCONNECT
/// reaches rumqttd, so no will follows the announcement.
#[test]
fn sigterm_through_the_embedded_broker_reads_off_and_no_will_follows() {
    let dir = TempDir::new().unwrap();
    let (c, port) = CollectorProc::spawn_embedded_enrolling(dir.path());
    let spec = AgentSpec::enrolling("G1", port, c.addr, &dir.path().join("g1"));
    let mut a = agent_up(&c, &spec);
    let t0 = Instant::now();
    a.term();
    let v = c.wait_unit("G1", "off", Duration::from_secs(10), |v| {
        v["status"] == "off"
    });
    let took = t0.elapsed();
    a.wait_clean_exit(Duration::from_secs(10));
    println!(
        "embedded broker: SIGTERM -> off in {took:?}: {}",
        message0(&v)
    );
    assert!(took < Duration::from_secs(2), "off after {took:?}");
    assert_eq!(v["reasons"][0]["field"], "presence.stop", "{}", brief(&v));
    // A window for a will that must not follow.
    std::thread::sleep(Duration::from_secs(3));
    let v = c.unit("G1").unwrap();
    assert_eq!(v["status"], "off", "a will followed: {}", brief(&v));
    assert_eq!(v["presence"]["reason"], "stop", "{}", brief(&v));
}

#[test]
fn sigkill_and_a_black_holed_link_read_lost_after_the_keepalive() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let c = collector(&broker, dir.path(), "");
    let mut killed = AgentSpec::new("K1", &broker.url(), &dir.path().join("k1"));
    killed.keepalive = "5s".into();
    let proxy = TcpProxy::start(broker.port());
    let mut holed = AgentSpec::new("H1", &proxy.url(), &dir.path().join("h1"));
    holed.keepalive = "5s".into();
    let mut k = agent_up(&c, &killed);
    let _h = agent_up(&c, &holed);
    for unit in ["K1", "H1"] {
        // The network it is on, from a host sample, before it goes.
        c.wait_unit(
            unit,
            "a host sample with its route",
            Duration::from_secs(15),
            |v| v["latest"]["host"]["data"]["network"]["route"]["kind"].is_string(),
        );
    }

    let t0 = Instant::now();
    k.kill9();
    proxy.set(ProxyMode::BlackHole);
    let v = c.wait_unit("K1", "lost by its will", Duration::from_secs(20), |v| {
        v["status"] == "lost"
    });
    println!("SIGKILL -> lost in {:?}: {}", t0.elapsed(), message0(&v));
    assert_eq!(rule0(&v), "lost.will", "{}", brief(&v));
    assert_eq!(v["reasons"][0]["severity"], "critical");
    assert!(message0(&v).starts_with("lost contact "), "{}", brief(&v));
    let v = c.wait_unit(
        "H1",
        "lost behind a black hole",
        Duration::from_secs(30),
        |v| v["status"] == "lost",
    );
    let took = t0.elapsed();
    println!("black hole -> lost in {took:?}: {}", message0(&v));
    assert!(rule0(&v).starts_with("lost."), "{}", brief(&v));
    // The broker waits 1.5 keepalives (5 s, the least the agent allows)
    // before it publishes the will.
    assert!(took >= Duration::from_secs(5), "lost after only {took:?}");
    // The evidence names the network the unit was last on.
    let route = &v["latest"]["host"]["data"]["network"]["route"];
    let on = format!(
        " on {} ({})",
        route["kind"].as_str().unwrap(),
        route["interface"].as_str().unwrap()
    );
    assert!(message0(&v).contains(&on), "{on:?} in {}", brief(&v));
}

#[test]
fn sleep_reads_asleep_and_resume_reads_ok_with_how_long() {
    // The fake logind serves from the runtime's worker while the test
    // thread waits on the collector.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bus = DbusDaemon::start();
    let logind = rt.block_on(Logind::start(&bus));
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let c = collector(&broker, dir.path(), "");
    let mut spec = AgentSpec::new("S1", &broker.url(), &dir.path().join("s1"));
    spec.system_bus = bus.address().to_string();
    let a = agent_up(&c, &spec);
    muster_testkit::wait_until("the agent's delay lock", Duration::from_secs(10), || {
        !logind.locks().calls.is_empty()
    });

    let t0 = Instant::now();
    rt.block_on(logind.sleep(true));
    let v = c.wait_unit("S1", "asleep", Duration::from_secs(10), |v| {
        v["status"] == "off"
    });
    println!(
        "PrepareForSleep(true) -> off in {:?}: {}",
        t0.elapsed(),
        message0(&v)
    );
    assert_eq!(v["reasons"][0]["field"], "presence.sleep", "{}", brief(&v));
    assert!(message0(&v).starts_with("asleep since "), "{}", brief(&v));
    assert_eq!(v["presence"]["reason"], "sleep");
    // The lock is released once the announcement is out.
    muster_testkit::wait_until("the lock released", Duration::from_secs(10), || {
        logind.locks().released.first().copied().flatten().is_some()
    });

    std::thread::sleep(Duration::from_secs(2));
    let t1 = Instant::now();
    rt.block_on(logind.sleep(false));
    let v = c.wait_unit("S1", "resumed", Duration::from_secs(15), |v| {
        v["status"] == "ok" && v["presence"]["reason"] == "resumed"
    });
    println!(
        "PrepareForSleep(false) -> ok in {:?}, slept_ms = {}",
        t1.elapsed(),
        v["presence"]["slept_ms"]
    );
    let slept = v["presence"]["slept_ms"].as_u64().expect("slept_ms");
    assert!(
        (1_500..10_000).contains(&slept),
        "slept {slept} ms for a 2 s sleep: {}",
        brief(&v)
    );
    assert_eq!(v["online"], true);
    // The strip shows the nap once the resumed birth is committed (the
    // unit's status is live before the store's group commit).
    muster_testkit::eventually_blocking(
        "the strip to show on, asleep, on",
        Duration::from_secs(5),
        || {
            let strip = c.get("/api/v1/units/metro-fire/S1/timeline?hours=1");
            let states: Vec<String> = strip["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["state"].as_str().unwrap().to_owned())
                .collect();
            if states.windows(3).any(|w| w == ["on", "asleep", "on"]) {
                Ok(())
            } else {
                Err(states)
            }
        },
    );
    drop(a);
}

#[test]
fn off_past_max_reads_overdue() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let c = collector(&broker, dir.path(), "[rules.off]\nmax = \"3s\"\n");
    let spec = AgentSpec::new("P1", &broker.url(), &dir.path().join("p1"));
    let mut a = agent_up(&c, &spec);
    let t0 = Instant::now();
    a.term();
    c.wait_unit("P1", "off", Duration::from_secs(10), |v| {
        v["status"] == "off"
    });
    a.wait_clean_exit(Duration::from_secs(10));
    let v = c.wait_unit("P1", "overdue", Duration::from_secs(15), |v| {
        v["status"] == "overdue"
    });
    let took = t0.elapsed();
    println!("off -> overdue after {took:?} (max 3s): {}", message0(&v));
    assert!(took >= Duration::from_secs(3), "overdue after {took:?}");
    assert_eq!(rule0(&v), "overdue", "{}", brief(&v));
    assert_eq!(v["reasons"][0]["severity"], "degraded");
}

#[test]
fn an_announced_restart_that_never_comes_back_reads_overdue_then_lost() {
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let c = collector(&broker, dir.path(), "[rules.offline]\nmin_stale = \"1s\"\n");
    let spec = AgentSpec::new("R1", &broker.url(), &dir.path().join("r1"));
    let mut a = agent_up(&c, &spec);
    let out = std::process::Command::new(&bins(false).agent)
        .args(["announce-restart", "--within", "2s", "--config"])
        .arg(spec.data_dir.join("agent.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t0 = Instant::now();
    a.term();
    let v = c.wait_unit("R1", "off, restarting", Duration::from_secs(10), |v| {
        v["status"] == "off"
    });
    println!("announced restart -> off: {}", message0(&v));
    assert!(
        message0(&v).starts_with("restarting since "),
        "{}",
        brief(&v)
    );
    assert_eq!(v["presence"]["back_within_ms"], 2000, "{}", brief(&v));
    a.wait_clean_exit(Duration::from_secs(10));
    // Never started again.
    let v = c.wait_unit("R1", "overdue", Duration::from_secs(15), |v| {
        v["status"] == "overdue"
    });
    let overdue = t0.elapsed();
    println!("-> overdue after {overdue:?}: {}", message0(&v));
    assert!(overdue >= Duration::from_secs(2), "{overdue:?}");
    let v = c.wait_unit("R1", "lost", Duration::from_secs(30), |v| {
        v["status"] == "lost"
    });
    let lost = t0.elapsed();
    println!("-> lost after {lost:?}: {}", message0(&v));
    assert!(lost > overdue, "{lost:?}");
    assert_eq!(rule0(&v), "lost.stale", "{}", brief(&v));
}
