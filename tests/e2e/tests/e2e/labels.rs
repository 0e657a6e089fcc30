//! Labels and facts end to end (issue 16): real agents with labels in
//! their local config and a CAD client version source (a version file, a
//! version command, none) report their facts through a real collector
//! (embedded broker, enrolment). The unit detail shows the labels, the
//! agent's version, the OS and the CAD version; `?label=` lists only the
//! matching units; a gate whose cohort has a label selector counts only the
//! matching units; an upgraded CAD client is reported once; and the facts
//! outlive a collector restart with no agent left to say them again.

use std::time::Duration;

use muster_testkit::{TempDir, eventually_blocking, http::blocking, program};
use serde_json::{Value, json};

use crate::procs::{AGENCY, AgentProc, AgentSpec, CollectorProc, FIRE};

fn call(c: &CollectorProc, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let b = body.map(|v| serde_json::to_vec(&v).unwrap());
    let r = blocking::call(c.addr, method, path, Some(FIRE), b.as_deref()).unwrap();
    let v = serde_json::from_str(&r.text()).unwrap_or(Value::Null);
    (r.status, v)
}

/// The units `GET /api/v1/units?{query}` lists.
fn listed(c: &CollectorProc, query: &str) -> Vec<String> {
    let (s, v) = call(c, "GET", &format!("/api/v1/units?{query}"), None);
    assert_eq!(s, 200, "{query}: {v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn units_report_labels_and_facts_and_label_selectors_pick_them() {
    let dir = TempDir::new().unwrap();
    let (col, port) = CollectorProc::spawn_embedded_enrolling(dir.path());
    // Every unit probes the collector's own feed port over TCP: results for
    // the gate, with nothing else to run.
    let probe = format!(
        "[[probe]]\nname = \"cad-api\"\nkind = \"tcp\"\ntarget = \"{}\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n",
        col.addr
    );
    let version_file = dir.path().join("L1-VERSION");
    std::fs::write(&version_file, "7.4.1\n").unwrap();
    let printf = program("printf");
    // (unit, labels, [cad])
    let units = [
        (
            "L1",
            "station = \"7\"\nrole = \"patrol\"",
            format!(
                "version_file = {:?}\nversion_refresh = \"1s\"",
                version_file.display().to_string()
            ),
        ),
        (
            "L2",
            "station = \"7\"\nrole = \"engine\"",
            format!("version_command = [{printf:?}, \"8.0.2\\\\n\"]"),
        ),
        ("L3", "station = \"9\"\nrole = \"patrol\"", String::new()),
    ];
    let mut agents = Vec::new();
    for (u, labels, cad) in &units {
        let mut spec = AgentSpec::enrolling(u, port, col.addr, &dir.path().join(u));
        spec.extra
            .push_str(&format!("[labels]\n{labels}\n[cad]\n{cad}\n{probe}"));
        agents.push(AgentProc::spawn(&spec, false));
    }

    // The detail: labels, agent version, OS and CAD version.
    let os = muster_agent::facts::os();
    let l1 = col.wait_unit("L1", "facts", Duration::from_secs(90), |v| {
        v["facts"]["cad_version"] == "7.4.1"
    });
    assert_eq!(
        l1["labels"],
        json!({"station": "7", "role": "patrol"}),
        "{l1:#}"
    );
    assert_eq!(l1["facts"]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(l1["facts"]["os"], os.as_str(), "{l1:#}");
    assert!(!os.is_empty());
    let l2 = col.wait_unit("L2", "facts", Duration::from_secs(90), |v| {
        v["facts"].is_object()
    });
    assert_eq!(l2["facts"]["cad_version"], "8.0.2", "{l2:#}");
    assert_eq!(l2["labels"]["role"], "engine");
    let l3 = col.wait_unit("L3", "facts", Duration::from_secs(90), |v| {
        v["facts"].is_object()
    });
    assert_eq!(l3["facts"]["cad_version"], Value::Null, "{l3:#}");
    assert_eq!(l3["labels"], json!({"station": "9", "role": "patrol"}));

    // Label selectors in the unit list: every term must match.
    assert_eq!(listed(&col, "label=station=7"), ["L1", "L2"]);
    assert_eq!(listed(&col, "label=station=7&label=role=patrol"), ["L1"]);
    assert_eq!(listed(&col, "label=role=patrol"), ["L1", "L3"]);
    assert!(listed(&col, "label=station=8").is_empty());
    let (s, v) = call(&col, "GET", "/api/v1/units?label=Station=7", None);
    assert_eq!(s, 400, "{v}");

    // A gate whose cohort is station 7, against station 9.
    let (s, v) = call(
        &col,
        "POST",
        "/api/v1/gates",
        Some(json!({
            "name": "station 7 vs 9",
            "cohort": {"agency": AGENCY, "probe": "cad-api", "labels": {"station": "7"}},
            "baseline": {"cohort": {"agency": AGENCY, "probe": "cad-api", "labels": {"station": "9"}}},
            "window_ms": 60_000,
        })),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["cohort"]["labels"], json!({"station": "7"}), "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let judged = eventually_blocking(
        "results from every unit of both cohorts",
        Duration::from_secs(60),
        || {
            let (s, v) = call(&col, "GET", &format!("/api/v1/gates/{id}/verdict"), None);
            let with_data = (
                v["canary"]["units_with_data"].as_u64(),
                v["baseline"]["units_with_data"].as_u64(),
            );
            (s == 200 && with_data == (Some(2), Some(1)))
                .then_some(v.clone())
                .ok_or(v.to_string())
        },
    );
    assert_eq!(
        (&judged["canary"]["units"], &judged["baseline"]["units"]),
        (&json!(2), &json!(1)),
        "{judged:#}"
    );
    // A selector no unit matches counts none.
    let (s, v) = call(
        &col,
        "POST",
        "/api/v1/gates",
        Some(json!({
            "name": "station 8",
            "cohort": {"agency": AGENCY, "probe": "cad-api", "labels": {"station": "8"}},
            "baseline": {"before_ms": 1},
        })),
    );
    assert_eq!(s, 201, "{v}");
    let (_, none) = call(
        &col,
        "GET",
        &format!("/api/v1/gates/{}/verdict", v["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(none["canary"]["units"], 0, "{none:#}");
    assert_eq!(none["verdict"], "no_data", "{none:#}");
    // A label no unit could carry is refused, naming it.
    let (s, v) = call(
        &col,
        "POST",
        "/api/v1/gates",
        Some(json!({
            "name": "bad",
            "cohort": {"agency": AGENCY, "probe": "cad-api", "labels": {"Station": "7"}},
            "baseline": {"before_ms": 1},
        })),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("cohort.labels:"),
        "{v}"
    );

    // The CAD client on L1 is upgraded: reported once, within a refresh.
    std::fs::write(&version_file, "7.5.0\n").unwrap();
    let upgraded = col.wait_unit("L1", "the new CAD version", Duration::from_secs(30), |v| {
        v["facts"]["cad_version"] == "7.5.0"
    });
    let facts_records = |c: &CollectorProc| {
        c.samples("L1")
            .iter()
            .filter(|(_, _, _, kind)| kind == "facts")
            .count()
    };
    // Five more records (five more 1 s samples: five more refreshes of
    // the version file), and still only the two facts records.
    let seen = upgraded["seq"]["received"].as_u64().unwrap();
    col.wait_unit("L1", "five more records", Duration::from_secs(30), |v| {
        v["seq"]["received"].as_u64() >= Some(seen + 5)
    });
    assert_eq!(facts_records(&col), 2, "one at start, one for the upgrade");

    // No agent left to say them again; a restarted collector still knows
    // every unit's labels and facts, and selects by them.
    drop(agents);
    let mut col = col;
    col.kill9();
    col.start_again();
    let l1 = col.unit("L1").expect("L1 after the restart");
    assert_eq!(l1["facts"]["cad_version"], "7.5.0", "{l1:#}");
    assert_eq!(l1["labels"], json!({"station": "7", "role": "patrol"}));
    assert_eq!(col.unit("L2").unwrap()["facts"]["cad_version"], "8.0.2");
    assert_eq!(listed(&col, "label=station=7"), ["L1", "L2"]);
}
