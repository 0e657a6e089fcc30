//! Staged rollouts end to end (issue 16, part 2; must-shows 1 to 3): a real
//! collector takes a config change to real agents, through a real
//! Mosquitto, wave by wave, and judges each wave on the probe results the
//! agents report.
//!
//! * A change that breaks a probe (its target refuses connections) is
//!   judged `fail` in wave 1 and rolled back by the collector within the
//!   soak; the unit reports the hash it ran before the rollout again.
//! * A good change reaches every unit, wave by wave, with one agent
//!   killed (-9) while its wave soaks and one killed before its wave is
//!   issued: each comes back on the right config.
//! * Every step is an event in the feed.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_testkit::{Mosquitto, TempDir, eventually_blocking, http::blocking};
use serde_json::{Value, json};

use crate::procs::{ADMIN, AGENCY, AgentProc, AgentSpec, CollectorProc};
use crate::remote_config::{closed_port, ok_server, probe, steps, wait_step};

struct Rig {
    _dir: TempDir,
    _m: Mosquitto,
    col: CollectorProc,
    specs: BTreeMap<String, AgentSpec>,
    agents: BTreeMap<String, AgentProc>,
}

/// `n` agents (U1…) running probe `cad` against a server that answers,
/// remote config allowed for probes.
fn rig(n: usize, up: u16) -> Rig {
    let dir = TempDir::new().unwrap();
    let m = Mosquitto::start();
    let col = CollectorProc::spawn_on(&m.url(), &dir.path().join("collector"));
    let mut specs = BTreeMap::new();
    let mut agents = BTreeMap::new();
    for i in 1..=n {
        let unit = format!("U{i}");
        let mut spec = AgentSpec::new(&unit, &m.url(), &dir.path().join(&unit));
        spec.extra = format!("[remote]\nallow = [\"probe\"]\n{}", probe("cad", up));
        agents.insert(unit.clone(), AgentProc::spawn(&spec, false));
        specs.insert(unit, spec);
    }
    for u in specs.keys() {
        wait_step(&col, u, "the local config reported", |x| {
            x["state"] == "applied" && x["doc_scope"].is_null()
        });
    }
    Rig {
        _dir: dir,
        _m: m,
        col,
        specs,
        agents,
    }
}

fn post(c: &CollectorProc, path: &str, body: &Value) -> (u16, Value) {
    let b = serde_json::to_vec(body).unwrap();
    let r = blocking::call(c.addr, "POST", path, Some(ADMIN), Some(&b)).unwrap();
    (
        r.status,
        serde_json::from_str(&r.text()).unwrap_or(Value::Null),
    )
}

fn rollout(c: &CollectorProc, id: &str) -> Value {
    c.get(&format!("/api/v1/rollouts/{id}"))
}

/// Polls the rollout until `f` holds (`what` names it), at most `secs`.
fn wait_rollout(
    c: &CollectorProc,
    id: &str,
    what: &str,
    secs: u64,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    eventually_blocking(what, Duration::from_secs(secs), || {
        last = rollout(c, id);
        if f(&last) {
            Ok(())
        } else {
            Err(format!(
                "phase {} wave {} counts {} verdicts {}",
                last["phase"], last["wave"], last["counts"], last["verdicts"]
            ))
        }
    });
    last
}

/// The rollout's steps in the feed's events, oldest first, once the
/// last one is `last` (events are stored with the next commit).
fn events(c: &CollectorProc, id: &str, last: &str) -> Vec<Value> {
    let mut out = Vec::new();
    eventually_blocking("the rollout's events", Duration::from_secs(20), || {
        let v = c.get(&format!("/api/v1/events?agency={AGENCY}&limit=1000"));
        out = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "rollout" && e["rollout"] == id)
            .cloned()
            .collect();
        out.reverse();
        (out.last().is_some_and(|e| e["step"] == last))
            .then_some(())
            .ok_or(format!("{:?}", step_names(&out)))
    });
    out
}

fn step_names(ev: &[Value]) -> Vec<String> {
    ev.iter()
        .map(|e| e["step"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The unit's newest running hash as it reported it.
fn running_hash(c: &CollectorProc, unit: &str) -> Value {
    steps(c, unit).last().unwrap()["running_hash"].clone()
}

/// Lenient statistics for a handful of units and seconds of soak.
fn small() -> Value {
    json!({"min_failure_total": 5, "min_latency_samples": 5})
}

#[test]
fn a_change_that_breaks_a_probe_is_rolled_back_by_itself_within_the_soak() {
    let up = ok_server();
    let r = rig(3, up);
    let before: BTreeMap<String, Value> = r
        .specs
        .keys()
        .map(|u| (u.clone(), running_hash(&r.col, u)))
        .collect();
    let soak_ms = 30_000u64;
    let (st, v) = post(
        &r.col,
        "/api/v1/rollouts",
        &json!({
            "name": "cad probe to the new server",
            "change": probe("cad", closed_port()),
            "target": {"agency": AGENCY},
            "probe": "cad",
            "waves": [{"units": 1}, {"percent": 100}],
            "soak_ms": soak_ms,
            "apply_timeout_ms": 60_000,
            "config": small(),
        }),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (v["target_units"].as_u64(), v["wave_count"].as_u64()),
        (Some(3), Some(2))
    );

    let done = wait_rollout(&r.col, &id, "rolled back", 120, |x| {
        x["phase"] == "rolled_back"
    });
    println!("rolled back: {}", done["reason"]);
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("wave 1 failed its gate"),
        "{done}"
    );
    // Wave 1 only: one unit changed, and reverted.
    let units = done["units"].as_array().unwrap();
    assert_eq!(units.len(), 1, "{done}");
    let w1 = units[0]["unit"].as_str().unwrap().to_owned();
    assert_eq!(units[0]["state"], "reverted", "{done}");
    let verdict = done["verdicts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(verdict["verdict"], "fail", "{verdict}");
    let fr = verdict["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "failure_ratio")
        .unwrap();
    assert_eq!(fr["verdict"], "fail", "{verdict}");

    // Within the soak: judged and rolled back before the soak would end.
    let ev = events(&r.col, &id, "rolled_back");
    let names = step_names(&ev);
    println!("steps: {names:?}");
    for s in [
        "started",
        "wave_issued",
        "wave_applied",
        "wave_judged",
        "rolling_back",
        "rolled_back",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} in {names:?}");
    }
    let at = |s: &str| {
        ev.iter().find(|e| e["step"] == s).unwrap()["at_ms"]
            .as_u64()
            .unwrap()
    };
    let (applied, rolling) = (at("wave_applied"), at("rolling_back"));
    println!(
        "rolled back {} ms into a {soak_ms} ms soak; confirmed {} ms later",
        rolling - applied,
        at("rolled_back") - rolling
    );
    assert!(rolling - applied < soak_ms, "within the soak");

    // The unit runs what it ran before the rollout: the same hash.
    eventually_blocking("the unit's hash is back", Duration::from_secs(30), || {
        let h = running_hash(&r.col, &w1);
        (h == before[&w1]).then_some(()).ok_or(format!(
            "{h} != {} ({:?})",
            before[&w1],
            steps(&r.col, &w1).last()
        ))
    });
    let failed_at = wait_step(&r.col, &w1, "the change applied", |x| {
        x["state"] == "applied" && x["doc_version"] == 1
    });
    assert_ne!(failed_at["running_hash"], before[&w1], "the change ran");
    // The other units were never touched.
    for (u, h) in &before {
        if *u != w1 {
            assert_eq!(running_hash(&r.col, u), *h, "{u}");
            let path = format!("/api/v1/config/{AGENCY}/{u}");
            let resp = blocking::call(r.col.addr, "GET", &path, Some(ADMIN), None).unwrap();
            assert_eq!(resp.status, 404, "{u} has no document of its own");
        }
    }
    // A second rollout over the same units is allowed now it is over;
    // and one over units of a running rollout is refused.
    let body = json!({
        "name": "again",
        "change": probe("cad", up) + &probe("extra", up),
        "target": {"agency": AGENCY},
        "probe": "cad",
        "waves": [{"units": 1}, {"percent": 100}],
        "soak_ms": 600_000,
        "config": small(),
    });
    let (st, v) = post(&r.col, "/api/v1/rollouts", &body);
    assert_eq!(st, 201, "{v}");
    let (st, v2) = post(&r.col, "/api/v1/rollouts", &body);
    assert_eq!(st, 409, "{v2}");
    let (st, _) = post(
        &r.col,
        &format!("/api/v1/rollouts/{}/abort", v["id"].as_str().unwrap()),
        &json!({}),
    );
    assert_eq!(st, 200);
    wait_rollout(&r.col, v["id"].as_str().unwrap(), "aborted", 60, |x| {
        x["phase"] == "aborted"
    });
}

#[test]
fn a_good_change_reaches_every_unit_and_killed_agents_come_back_on_the_right_config() {
    let up = ok_server();
    let mut r = rig(4, up);
    let change = probe("cad", up) + &probe("cad-extra", up);
    let (st, v) = post(
        &r.col,
        "/api/v1/rollouts",
        &json!({
            "name": "add a second CAD probe",
            "change": change,
            "target": {"agency": AGENCY},
            "probe": "cad",
            "waves": [{"units": 1}, {"percent": 50}, {"percent": 100}],
            "soak_ms": 20_000,
            "apply_timeout_ms": 90_000,
            "config": small(),
        }),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["wave_ends"], json!([1, 2, 4]));

    // Wave 1 soaks: kill -9 its unit and start it again at once. It
    // comes back on the document it ran (not the local config).
    let x = wait_rollout(&r.col, &id, "wave 1 soaking", 60, |x| {
        x["phase"] == "soaking" && x["wave"] == 1
    });
    let w1 = x["units"][0]["unit"].as_str().unwrap().to_owned();
    let v1 = x["units"][0]["version"].as_u64().unwrap();
    let n = steps(&r.col, &w1).len();
    r.agents.get_mut(&w1).unwrap().kill9();
    r.agents
        .insert(w1.clone(), AgentProc::spawn(&r.specs[&w1], false));
    eventually_blocking(
        "the restarted unit reports its start",
        Duration::from_secs(30),
        || {
            let s = steps(&r.col, &w1);
            s[n.min(s.len())..]
                .iter()
                .find(|x| x["doc_scope"].is_null() && x["state"] == "applied")
                .map(|x| {
                    assert_eq!(x["running_unit_version"], v1, "back on the change: {x}");
                })
                .ok_or(format!("{:?}", s.last()))
        },
    );

    // Wave 2 soaks: kill -9 a unit of the last wave, before it is issued.
    let x = wait_rollout(&r.col, &id, "wave 2 soaking", 90, |x| {
        x["phase"] == "soaking" && x["wave"] == 2
    });
    let issued: Vec<String> = x["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap().to_owned())
        .collect();
    let late = r
        .specs
        .keys()
        .find(|u| !issued.contains(u))
        .unwrap()
        .clone();
    r.agents.remove(&late).unwrap().kill9_now();
    // Wave 3 is issued while it is down; it applies when it comes back.
    wait_rollout(&r.col, &id, "wave 3 issued", 90, |x| {
        x["wave"] == 3 && x["counts"]["issued"] == 4
    });
    r.agents
        .insert(late.clone(), AgentProc::spawn(&r.specs[&late], false));

    let done = wait_rollout(&r.col, &id, "completed", 150, |x| {
        x["phase"] == "completed" || x["phase"] == "rolled_back" || x["phase"] == "paused"
    });
    assert_eq!(done["phase"], "completed", "{done}");
    let verdicts: Vec<(u64, String)> = done["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["wave"].as_u64().unwrap(),
                v["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    println!("verdicts: {verdicts:?}");
    assert_eq!(
        verdicts,
        [(1, "pass".into()), (2, "pass".into()), (3, "pass".into())]
    );
    // Every unit runs the change, the killed ones included.
    for u in done["units"].as_array().unwrap() {
        let (name, version) = (u["unit"].as_str().unwrap(), u["version"].as_u64().unwrap());
        assert_eq!(u["state"], "applied", "{u}");
        let s = wait_step(&r.col, name, "running the change", |x| {
            x["running_unit_version"] == version
        });
        println!("{name}: v{version}, {}", s["running_hash"]);
    }
    let t = crate::procs::now_ms() - 10_000;
    for u in r.specs.keys() {
        eventually_blocking("the new probe reports", Duration::from_secs(30), || {
            let v = r.col.get(&format!(
                "/api/v1/units/{AGENCY}/{u}/samples?kind=probe&resolution=raw&limit=1000&since={t}"
            ));
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["data"]["name"] == "cad-extra")
                .then_some(())
                .ok_or(u.to_string())
        });
    }
    let names = step_names(&events(&r.col, &id, "completed"));
    println!("steps: {names:?}");
    assert_eq!(names.iter().filter(|n| *n == "wave_issued").count(), 3);
    assert_eq!(names.last().map(String::as_str), Some("completed"));
    assert!(!names.iter().any(|n| n == "rolling_back" || n == "paused"));
}
