//! Actions and automation end to end (issue 17, parts 2 to 4): a real
//! collector, a real Mosquitto, a real agent watching a stand-in "CAD
//! client" (a real process), and a webhook receiver.
//!
//! * The CAD client crash-loops (it starts and dies five times, then stays
//!   down, as a supervisor that gives up does): the unit is flagged
//!   `cad-client-down`.
//! * The rule names `auto_action = "restart-cad-client"`: the collector
//!   signs a request, the agent runs its own `restart_process` action
//!   (from its local `[[action]]`), the client runs again, the flag clears.
//!   It happens exactly once, and every step is audited: the collector's
//!   request and the agent's `started`/`finished` records, once each.
//! * The result joins the flag's reason ("auto: restart-cad-client at …,
//!   exit 0").
//! * A second crash loop within the hour (`auto_max = "1 per 1h"`) is not
//!   restarted again: the flag escalates (degraded → critical) and the
//!   agency's webhook says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_testkit::{Mosquitto, TempDir, eventually_blocking};
use serde_json::Value;

use crate::procs::{ADMIN, AGENCY, AgentProc, AgentSpec, CollectorProc, FIRE, collector_config};

/// Pids of running processes whose name (`comm`) is `name`.
fn running_named(name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // A zombie (state Z) is dead, only not yet reaped.
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if comm.trim_end() == name && !zombie {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Kills every process of the stand-in's name when the test ends, however
/// it ends (the restarted one is detached: nobody else would).
struct Reap(String);

impl Drop for Reap {
    fn drop(&mut self) {
        for p in running_named(&self.0) {
            muster_testkit::signal(p, "KILL");
        }
    }
}

/// The stand-in CAD client: a copy of `sleep` under the client's name, so
/// its `comm` is that name.
struct CadClient {
    path: PathBuf,
    name: String,
}

impl CadClient {
    fn new(dir: &Path) -> CadClient {
        // A name of its own (15 bytes, Linux's whole comm): the action kills
        // every process of its name, and other tests run theirs.
        let name = format!("cadclient-{:05x}", rand::random::<u32>() & 0xf_ffff);
        let path = dir.join(&name);
        std::fs::copy(muster_testkit::program("sleep"), &path).unwrap();
        CadClient { path, name }
    }

    /// Started as a supervisor would, which reaps it when it dies.
    fn start(&self) {
        let mut c = Command::new(&self.path)
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::spawn(move || c.wait());
    }

    /// Kills it, then a crash loop: started five times, each dying after
    /// 300 ms, then nothing (the supervisor gave up).
    fn crash_loop(&self) {
        for p in running_named(&self.name) {
            muster_testkit::signal(p, "KILL");
        }
        for _ in 0..5 {
            let mut c = Command::new(&self.path)
                .arg("0.3")
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            c.wait().unwrap();
        }
        assert!(running_named(&self.name).is_empty());
    }
}

/// A webhook receiver on 127.0.0.1:0: every body it gets, as JSON.
fn hook_sink() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c);
                let mut len = 0usize;
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    g.lock().unwrap().push(v);
                }
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    (port, got)
}

fn events(c: &CollectorProc) -> Vec<Value> {
    let v = c.get(&format!("/api/v1/events?agency={AGENCY}&limit=1000"));
    let mut out: Vec<Value> = v["items"].as_array().cloned().unwrap_or_default();
    out.reverse();
    out
}

fn automation_steps(c: &CollectorProc) -> Vec<String> {
    events(c)
        .iter()
        .filter(|e| e["type"] == "automation")
        .map(|e| e["step"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn status_of(c: &CollectorProc, unit: &str) -> String {
    c.unit(unit)
        .and_then(|v| v["status"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The audit log's entries for the unit, oldest first.
fn audit(c: &CollectorProc, unit: &str) -> Vec<Value> {
    let v = c.get(&format!("/api/v1/actions?unit={AGENCY}/{unit}&limit=1000"));
    let mut out: Vec<Value> = v["items"].as_array().cloned().unwrap_or_default();
    out.reverse();
    out
}

#[test]
fn a_crash_looping_cad_client_is_restarted_once_audited_and_a_second_loop_escalates() {
    let dir = TempDir::new().unwrap();
    let m = Mosquitto::start();
    let cad = CadClient::new(dir.path());
    let _reap = Reap(cad.name.clone());
    let (hook, hooks) = hook_sink();

    let mut cfg = collector_config(&m.url(), &dir.path().join("collector/store"));
    cfg.extra(
        &format!(
            "[[rules.threshold]]\nname = \"cad-client-down\"\nfield = 'process[\"{}\"].running'\n\
             op = \"==\"\nthreshold = false\nfor = \"2s\"\nseverity = \"degraded\"\n\
             auto_action = \"restart-cad-client\"\nauto_max = \"1 per 1h\"\nauto_window = \"60s\"\n",
            cad.name
        ),
    );
    cfg.extra(&format!(
        "[agency.webhook]\nurl = \"http://127.0.0.1:{hook}/hook\"\nsecret = \"e2e-hook-secret-0123456789\"\nbatch_window = \"200ms\"\n"
    ));
    std::fs::create_dir_all(dir.path().join("collector")).unwrap();
    let path = dir.path().join("collector/collector.toml");
    std::fs::write(&path, cfg.render()).unwrap();
    let col = CollectorProc::spawn(&path, false);

    cad.start();
    let mut spec = AgentSpec::new("E7", &m.url(), &dir.path().join("agent"));
    spec.processes = vec![cad.name.clone()];
    spec.extra = format!(
        "[[action]]\nname = \"restart-cad-client\"\nkind = \"restart_process\"\nprocess = \"{}\"\n\
         start = [\"{}\", \"600\"]\ntimeout = \"20s\"\nrate = \"3 per 1h\"\n",
        cad.name,
        cad.path.display()
    );
    let agent = AgentProc::spawn(&spec, false);
    col.wait_unit(
        "E7",
        "the unit ok with its CAD client",
        Duration::from_secs(30),
        |v| v["status"] == "ok" && v["seq"]["received"].as_u64().is_some_and(|n| n >= 3),
    );

    // 1. The crash loop: flagged, restarted by automation, cleared.
    cad.crash_loop();
    eventually_blocking("the crash loop flagged", Duration::from_secs(30), || {
        let e = events(&col);
        e.iter()
            .any(|e| e["type"] == "transition" && e["to"] == "degraded")
            .then_some(())
            .ok_or_else(|| {
                let v = col.get(&format!("/api/v1/units/{AGENCY}/E7"));
                format!(
                    "{} {}",
                    v["status"], v["latest"]["host"]["data"]["processes"]
                )
            })
    });
    eventually_blocking(
        "the flag cleared after the automatic restart",
        Duration::from_secs(60),
        || {
            let steps = automation_steps(&col);
            (status_of(&col, "E7") == "ok" && steps.iter().any(|s| s == "helped"))
                .then_some(())
                .ok_or_else(|| format!("{} {steps:?}", status_of(&col, "E7")))
        },
    );
    let restarted = running_named(&cad.name);
    assert_eq!(
        restarted.len(),
        1,
        "one CAD client runs again: {restarted:?}"
    );
    assert_eq!(
        automation_steps(&col),
        ["requested", "succeeded", "helped"],
        "exactly once"
    );
    // The result joined the flag's reason (a transition carries it).
    let noted = events(&col).into_iter().any(|e| {
        e["type"] == "transition"
            && e["reasons"].as_array().is_some_and(|rs| {
                rs.iter().any(|r| {
                    r["rule"] == "cad-client-down"
                        && r["message"].as_str().is_some_and(|m| {
                            m.contains("auto: restart-cad-client at") && m.ends_with("exit 0")
                        })
                })
            })
    });
    assert!(noted, "{:#?}", events(&col));
    // Audited once: the collector's request, the agent's two records.
    let mut log = Vec::new();
    eventually_blocking("the audit of the restart", Duration::from_secs(20), || {
        log = audit(&col, "E7");
        let steps: Vec<&str> = log.iter().filter_map(|e| e["step"].as_str()).collect();
        (steps == ["requested", "started", "finished"])
            .then_some(())
            .ok_or(format!("{steps:?}"))
    });
    let fin = &log[2];
    assert_eq!(fin["exit_code"], 0, "{fin:#}");
    assert_eq!(fin["requested_by"], "auto:cad-client-down", "{fin:#}");
    assert_eq!(log[0]["request"], fin["request"], "one request, one nonce");

    // 2. A second crash loop within the hour: escalated, not restarted.
    let escalated_before = hooks.lock().unwrap().len();
    cad.crash_loop();
    eventually_blocking("the second loop escalated", Duration::from_secs(30), || {
        (status_of(&col, "E7") == "critical")
            .then_some(())
            .ok_or_else(|| format!("{} {:?}", status_of(&col, "E7"), automation_steps(&col)))
    });
    let unit = col.unit("E7").unwrap();
    let reason = unit["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "cad-client-down")
        .cloned()
        .unwrap();
    assert_eq!(reason["severity"], "critical", "{reason:#}");
    assert!(
        reason["message"]
            .as_str()
            .unwrap()
            .contains("auto: not repeated, restart-cad-client ran"),
        "{reason:#}"
    );
    eventually_blocking("the escalation's webhook", Duration::from_secs(20), || {
        let got = hooks.lock().unwrap();
        got[escalated_before.min(got.len())..]
            .iter()
            .any(|n| {
                n["automation"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s["step"] == "escalated"))
            })
            .then_some(())
            .ok_or(format!("{} notifications", got.len()))
    });
    // Nothing was run again: still one request, and the client stays down.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        automation_steps(&col),
        ["requested", "succeeded", "helped", "escalated"]
    );
    assert_eq!(
        audit(&col, "E7")
            .iter()
            .filter(|e| e["step"] == "requested")
            .count(),
        1
    );
    assert!(running_named(&cad.name).is_empty());
    let _ = (ADMIN, FIRE);
    agent.stop();
}
