//! The deploy gate end to end (issue 16, must-show 5): real agents probe a
//! real HTTP server through a real collector; the server is made 3× slower
//! for one cohort's path at a moment T, and gates defined against "before
//! T" answer `fail` for that cohort, `pass` for an unchanged one and
//! `no_data` for an empty one, through both the verdict endpoint (Argo) and
//! the check endpoint (Flagger: 200 only on pass).

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster_testkit::{TempDir, eventually_blocking, http::blocking};
use serde_json::{Value, json};

use crate::procs::{ADMIN, AGENCY, AgentProc, AgentSpec, CollectorProc, FIRE, now_ms};

/// An HTTP server on 127.0.0.1:0 answering 200 after a delay per path:
/// `/slow` waits `slow_ms`, anything else `fast_ms`.
struct CadServer {
    port: u16,
    slow_ms: Arc<AtomicU64>,
}

impl CadServer {
    fn start(fast_ms: u64, slow_ms: u64) -> CadServer {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let slow = Arc::new(AtomicU64::new(slow_ms));
        let s = Arc::clone(&slow);
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c);
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut h = String::new();
                    while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                        h.clear();
                    }
                    let ms = if line.contains("/slow") {
                        s.load(Ordering::Relaxed)
                    } else {
                        fast_ms
                    };
                    std::thread::sleep(Duration::from_millis(ms));
                    let _ = r.get_mut().write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                });
            }
        });
        CadServer {
            port,
            slow_ms: slow,
        }
    }
}

fn call(
    c: &CollectorProc,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let b = body.map(|v| serde_json::to_vec(&v).unwrap());
    let r = blocking::call(c.addr, method, path, Some(token), b.as_deref()).unwrap();
    let v = serde_json::from_str(&r.text()).unwrap_or(Value::Null);
    (r.status, v)
}

fn gate(c: &CollectorProc, name: &str, units: &[&str], before_ms: u64) -> String {
    let (s, v) = call(
        c,
        "POST",
        "/api/v1/gates",
        FIRE,
        Some(json!({
            "name": name,
            "cohort": {"agency": AGENCY, "probe": "cad-api", "units": units},
            "baseline": {"before_ms": before_ms},
            "window_ms": 120_000,
        })),
    );
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_gate_fails_a_3x_slower_cohort_passes_an_unchanged_one_and_has_no_data_for_an_empty_one() {
    let dir = TempDir::new().unwrap();
    let cad = CadServer::start(20, 20);
    let (col, port) = CollectorProc::spawn_embedded_enrolling(dir.path());
    let units = ["G1", "G2", "G3", "G4"];
    let mut agents = Vec::new();
    for (i, u) in units.iter().enumerate() {
        let path = if i < 2 { "slow" } else { "fast" };
        let mut spec = AgentSpec::enrolling(u, port, col.addr, &dir.path().join(u));
        spec.extra.push_str(&format!(
            "[[probe]]\nname = \"cad-api\"\nkind = \"http\"\ntarget = \"http://127.0.0.1:{}/{path}\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n",
            cad.port
        ));
        agents.push(AgentProc::spawn(&spec, false));
    }
    // Enough results before T on both paths (2 units a path, 1 a second).
    let results = |u: &str| {
        if col.unit(u).is_none() {
            return 0;
        }
        col.samples(u)
            .iter()
            .filter(|(_, _, _, kind)| kind == "probe")
            .count()
    };
    eventually_blocking(
        "20 probe results a unit stored",
        Duration::from_secs(90),
        || {
            let n: Vec<usize> = units.iter().map(|u| results(u)).collect();
            n.iter()
                .all(|n| *n >= 20)
                .then_some(())
                .ok_or(format!("{n:?}"))
        },
    );
    // T: the slow path becomes 3× slower.
    let t = now_ms();
    cad.slow_ms.store(60, Ordering::Relaxed);
    let slowed = gate(&col, "slowed", &["G1", "G2"], t);
    let unchanged = gate(&col, "unchanged", &["G3", "G4"], t);
    let empty = gate(&col, "empty", &["NOBODY"], t);
    let t0 = Instant::now();
    let judged = |id: &str| {
        let (s, v) = call(
            &col,
            "GET",
            &format!("/api/v1/gates/{id}/verdict"),
            FIRE,
            None,
        );
        assert_eq!(s, 200, "{v}");
        v
    };
    // Right after T the canary side has too little: never a pass.
    let early = judged(&slowed);
    assert_ne!(early["verdict"], "pass", "{early:#}");
    let v = eventually_blocking("the slowed cohort fails", Duration::from_secs(90), || {
        let v = judged(&slowed);
        (v["verdict"] == "fail")
            .then_some(v.clone())
            .ok_or(v.to_string())
    });
    let lat = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "latency")
        .unwrap();
    println!(
        "slowed: fail {:.1} s after T; latency median {:.1} -> {:.1} ms (x{:.2}), p = {:.2e}, n = {} / {}",
        t0.elapsed().as_secs_f64(),
        lat["baseline_median_ms"].as_f64().unwrap(),
        lat["canary_median_ms"].as_f64().unwrap(),
        lat["median_ratio"].as_f64().unwrap(),
        lat["p_value"].as_f64().unwrap(),
        lat["baseline_count"],
        lat["canary_count"],
    );
    assert_eq!(lat["verdict"], "fail");
    assert!(lat["median_ratio"].as_f64().unwrap() > 2.0, "{lat:#}");
    // Both cohorts gain results at the same pace, so when the slowed one
    // has its minimum the unchanged one may be a result short: wait for
    // its canary side to fill ("inconclusive: too few samples"), never
    // for a particular verdict.
    let u = eventually_blocking(
        "the unchanged cohort has enough results",
        Duration::from_secs(30),
        || {
            let u = judged(&unchanged);
            let short = u["verdict"] == "inconclusive"
                && u["reason"].as_str().is_some_and(|r| r.contains("too few"));
            (!short).then_some(u.clone()).ok_or(u.to_string())
        },
    );
    println!(
        "unchanged: {} ({})",
        u["verdict"],
        u["reason"].as_str().unwrap_or_default()
    );
    assert_eq!(u["verdict"], "pass", "{u:#}");
    let e = judged(&empty);
    assert_eq!(e["verdict"], "no_data", "{e:#}");
    assert_eq!(e["canary"]["units"], 0);
    // Flagger's webhook: 200 only on pass.
    for (id, status) in [(&slowed, 412), (&unchanged, 200), (&empty, 412)] {
        let (s, v) = call(
            &col,
            "POST",
            &format!("/api/v1/gates/{id}/check"),
            FIRE,
            None,
        );
        assert_eq!(s, status, "check {id}: {v}");
    }
    // Who may see it: the admin does; a bad token does not. A restart keeps the gates.
    assert_eq!(
        call(&col, "GET", "/api/v1/gates", ADMIN, None).1["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        call(
            &col,
            "GET",
            &format!("/api/v1/gates/{slowed}"),
            "nope",
            None
        )
        .0,
        401
    );
    drop(agents);
    let mut col = col;
    col.kill9();
    col.start_again();
    eventually_blocking("the gates after a restart", Duration::from_secs(30), || {
        let r = blocking::call(col.addr, "GET", "/api/v1/gates", Some(FIRE), None)?;
        let v: Value = serde_json::from_str(&r.text()).map_err(|e| e.to_string())?;
        (r.status == 200 && v["items"].as_array().is_some_and(|a| a.len() == 3))
            .then_some(())
            .ok_or(v.to_string())
    });
}
