//! The demo as a newcomer runs it: the real `muster-collector demo` binary
//! (embedded broker, collector, simulated fleet, local agent) on port-0
//! addresses, its scenes played 6 times faster (`--sim-speed 6`: a loop
//! every 35 s, the rules they trip shortened by as much), watched through
//! the feed with the printed admin token until every scene has shown:
//! an off unit with its reason, an overdue, an asleep that resumes, a lost
//! that returns with the gap in its timeline filled by the replayed
//! backlog, degraded and critical units, an agency-wide incident, and the
//! crash-loop and disk problems. Then SIGTERM, and the demo's stderr must
//! hold no WARN or ERROR line.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_testkit::{KillOnDrop, TempDir, signal, wait_until};
use serde_json::Value;

use muster_testkit::http;

/// Every scene shows within the first loop and a half (35 s a loop).
const WITHIN: Duration = Duration::from_secs(120);

/// What must have shown in the feed.
const SCENES: &[&str] = &[
    "off: P-21 shut down",
    "overdue: E-6",
    "asleep: P-17",
    "resumed: P-17",
    "lost: P-14",
    "back: P-14",
    "gap filled: P-14",
    "degraded",
    "critical: E-4 disk-critical",
    "critical: CAD-WS-02 cad-client-down",
    "incident: metro-pd cad-api",
    "problem: cad-client-down",
    "problem: disk",
];

struct Demo {
    child: KillOnDrop,
    addr: SocketAddr,
    admin: String,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

fn start_demo() -> Demo {
    let dir = TempDir::new().unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_muster-collector"))
            .args(["demo", "--broker", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--sim-speed", "6", "--data"])
            .arg(dir.path().join("demo"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start muster-collector demo"),
    );
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let err = BufReader::new(child.stderr.take().unwrap());
    let lines = Arc::clone(&stderr);
    let stderr_reader = std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            lines.lock().unwrap().push(l);
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut addr, mut admin) = (None, None);
    let mut line = String::new();
    while addr.is_none() || admin.is_none() {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the demo exited: {:#?}",
            stderr.lock().unwrap()
        );
        if let Some(u) = line.trim().strip_prefix("feed:") {
            let u = u.trim().trim_start_matches("http://");
            addr = Some(u.split('/').next().unwrap().parse().unwrap());
        }
        if let Some(t) = line.trim().strip_prefix("admin token:") {
            admin = Some(t.trim().to_owned());
        }
    }
    std::thread::spawn(move || for _ in out.lines() {});
    Demo {
        child,
        addr: addr.unwrap(),
        admin: admin.unwrap(),
        stderr,
        stderr_reader: Some(stderr_reader),
        _dir: dir,
    }
}

impl Demo {
    fn get(&self, rt: &tokio::runtime::Runtime, path: &str) -> Value {
        let r = rt.block_on(http::get(self.addr, path, Some(&self.admin)));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    }

    /// Adds what the feed shows now to `seen`.
    fn observe(&self, rt: &tokio::runtime::Runtime, seen: &mut BTreeSet<String>) {
        let units = self.get(rt, "/api/v1/units?limit=500");
        for u in units["items"].as_array().unwrap() {
            let (agency, unit) = (u["agency"].as_str().unwrap(), u["unit"].as_str().unwrap());
            let status = u["status"].as_str().unwrap_or("");
            let presence = u["presence"]["reason"].as_str().unwrap_or("");
            let rules: Vec<&str> = u["reasons"]
                .as_array()
                .map(|r| r.iter().filter_map(|x| x["rule"].as_str()).collect())
                .unwrap_or_default();
            let mut see = |what: &str| {
                seen.insert(what.to_owned());
            };
            match (unit, status) {
                ("P-21", "off") if presence == "shutdown" => see("off: P-21 shut down"),
                ("E-6", "overdue") => see("overdue: E-6"),
                ("P-17", "off") if presence == "sleep" => see("asleep: P-17"),
                ("P-14", "lost") => see("lost: P-14"),
                _ => {}
            }
            if unit == "P-17" && presence == "resumed" && seen.contains("asleep: P-17") {
                seen.insert("resumed: P-17".into());
            }
            if unit == "P-14" && status != "lost" && seen.contains("lost: P-14") {
                seen.insert("back: P-14".into());
            }
            if agency != "demo" && status == "degraded" {
                seen.insert("degraded".into());
            }
            for (u_, rule) in [("E-4", "disk-critical"), ("CAD-WS-02", "cad-client-down")] {
                if unit == u_ && status == "critical" && rules.contains(&rule) {
                    seen.insert(format!("critical: {unit} {rule}"));
                }
            }
        }
        let incidents = self.get(rt, "/api/v1/incidents");
        if incidents["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["agency"] == "metro-pd" && i["probe"] == "cad-api")
        {
            seen.insert("incident: metro-pd cad-api".into());
        }
        let problems = self.get(rt, "/api/v1/problems");
        for p in problems["items"].as_array().unwrap() {
            let agencies = p["agencies"].to_string();
            match p["rule"].as_str().unwrap_or("") {
                "cad-client-down" if agencies.contains("metro-pd") => {
                    seen.insert("problem: cad-client-down".into());
                }
                "disk-critical" | "disk-full" if agencies.contains("county-fire") => {
                    seen.insert("problem: disk".into());
                }
                _ => {}
            }
        }
        if seen.contains("back: P-14") && !seen.contains("gap filled: P-14") && self.gap_filled(rt)
        {
            seen.insert("gap filled: P-14".into());
        }
    }

    /// P-14's timeline has a lost stretch, and the host samples it took
    /// while lost (replayed from its backlog) are stored inside it.
    fn gap_filled(&self, rt: &tokio::runtime::Runtime) -> bool {
        let t = self.get(rt, "/api/v1/units/metro-pd/P-14/timeline?hours=1");
        let lost: Vec<(u64, u64)> = t["segments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "lost")
            .map(|s| (s["from_ms"].as_u64().unwrap(), s["to_ms"].as_u64().unwrap()))
            .collect();
        lost.iter().any(|&(from, to)| {
            // At 6x, 60 scene seconds of dead zone are 10 s: 12 host samples.
            let s = self.get(
                rt,
                &format!(
                    "/api/v1/units/metro-pd/P-14/samples?kind=host&since={}&until={}&limit=500",
                    from + 1000,
                    to.saturating_sub(1000)
                ),
            );
            s["items"].as_array().unwrap().len() >= 5
        })
    }

    /// SIGTERM, wait for the exit: every stderr line, the shutdown's
    /// included (a clean stop logs no WARN either).
    fn stop(mut self) -> Vec<String> {
        signal(self.child.id(), "TERM");
        wait_until(
            "the demo to exit on SIGTERM",
            Duration::from_secs(30),
            || matches!(self.child.try_wait(), Ok(Some(_))),
        );
        if let Some(t) = self.stderr_reader.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.stderr.lock().unwrap())
    }
}

#[test]
fn every_scene_shows_in_the_feed_and_the_log_stays_clean() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let demo = start_demo();
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let mut last_poll: Option<Instant> = None;
    let missing = |seen: &BTreeSet<String>| -> Vec<&str> {
        SCENES
            .iter()
            .copied()
            .filter(|s| !seen.contains(*s))
            .collect()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("every scene to show in the feed", WITHIN, || {
            // The feed is read twice a second, not at wait_until's 10 ms.
            if last_poll.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) {
                return false;
            }
            last_poll = Some(Instant::now());
            let before = seen.len();
            demo.observe(&rt, &mut seen);
            if seen.len() != before {
                eprintln!("{:>5.1} s: {:?}", started.elapsed().as_secs_f64(), seen);
            }
            missing(&seen).is_empty()
        })
    }));
    let log = demo.stop();
    if let Err(e) = result {
        panic!(
            "{:?}; never shown: {:?}\nstderr:\n{}",
            e.downcast_ref::<String>(),
            missing(&seen),
            log.join("\n")
        );
    }
    let bad: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(bad.is_empty(), "the demo logged:\n{bad:#?}");
    eprintln!(
        "every scene shown within {:.1} s; {} stderr lines, no WARN/ERROR",
        started.elapsed().as_secs_f64(),
        log.len()
    );
}
