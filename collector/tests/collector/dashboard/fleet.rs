//! The demo fleet the browser test seeds: two agencies, eleven units, two
//! hours of history with problems to rank, an incident, a lost unit, a
//! backlog and announced departures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_collector::clock::ManualClock;
use muster_proto::{AgentStatus, BootId, Payload, Phases, PresenceReason, fixtures};

use muster_testkit::eventually;

use crate::harness::*;

pub(super) const CAD_SLOW_RULE: &str = r#"
[[rules.threshold]]
name = "cad-api-slow"
field = 'probe["cad-api"].total_ms'
op = ">"
threshold = 2000
severity = "degraded"
runbook = "https://runbooks.example.org/muster/cad-api-slow"
"#;

pub(super) fn slow_probe(total_ms: u32) -> Payload {
    let mut p = fixtures::http_probe();
    let total_us = total_ms * 1000;
    p.phases = Phases {
        dns_us: Some(total_us / 40),
        connect_us: Some(total_us / 6),
        tls_us: Some(total_us / 4),
        ttfb_us: Some(total_us / 2),
        total_us,
    };
    Payload::Probe(p)
}

pub(super) fn probe_of(name: &str, target: &str, total_ms: u32, ok: bool) -> Payload {
    let Payload::Probe(mut p) = slow_probe(total_ms) else {
        unreachable!()
    };
    p.name = name.into();
    p.target = target.into();
    if !ok {
        p.outcome = muster_proto::Outcome::Fail(muster_proto::ErrorClass::Timeout);
    }
    Payload::Probe(p)
}

pub(super) fn host_at(cpu: f64, mem_pct: f64, disk_pct: f64) -> Payload {
    let Payload::Host(mut h) = host(cpu) else {
        unreachable!()
    };
    h.interval_ms = 60_000;
    if let Some(m) = h.memory.as_mut() {
        m.used_kib = (m.total_kib as f64 * mem_pct / 100.0) as u64;
    }
    if let Some(d) = h.disks.first_mut() {
        d.used_kib = (d.total_kib as f64 * disk_pct / 100.0) as u64;
    }
    Payload::Host(h)
}

pub(super) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The units of the demo fleet: (agency, unit, base cpu).
pub(super) const FLEET: &[(&str, &str, f64)] = &[
    ("metro-fire", "E1", 22.0),
    ("metro-fire", "E2", 18.0),
    ("metro-fire", "E4", 35.0),
    ("metro-fire", "L3", 40.0),
    ("metro-fire", "M7", 28.0),
    ("metro-fire", "BC1", 12.0),
    ("county-police", "P11", 30.0),
    ("county-police", "P12", 26.0),
    ("county-police", "P14", 33.0),
    ("county-police", "K9-2", 21.0),
    ("county-police", "SGT3", 15.0),
];

pub(super) const STEPS: u64 = 60;
pub(super) const STEP_MS: u64 = 120_000;

/// Two hours of history, 2 minutes apart, with the fed clock following the
/// event time: L3 runs hot for a while (cpu-high), P14's CAD API is slow
/// for a while (cad-api-slow), three police units lose their RMS API at the
/// end (an incident), K9-2 drops off (its MQTT will) and M7 has a backlog.
/// Returns each unit's next seq.
pub(super) async fn seed(clock: &ManualClock, c: &Collector, a: &Agent, start: u64) -> Vec<u64> {
    let boot = BootId(0x5eed);
    let mut seqs = vec![1u64; FLEET.len()];
    for (ag, u, _) in FLEET {
        a.presence(&unit(ag, u), online(boot, 1, start, true)).await;
    }
    for step in 0..STEPS {
        let t = start + step * STEP_MS;
        clock.set(t);
        for (i, (ag, u, base)) in FLEET.iter().enumerate() {
            let id = unit(ag, u);
            let wobble = ((step as f64 / 5.0) + i as f64).sin() * 8.0;
            let cpu = if *u == "L3" && (20..26).contains(&step) {
                96.0
            } else {
                (base + wobble).max(2.0)
            };
            let mem = 48.0 + i as f64 * 3.0 + wobble / 2.0;
            let disk = 40.0 + i as f64 * 4.0 + step as f64 * 0.05;
            a.record(&id, rec(boot, seqs[i], t, host_at(cpu, mem, disk)))
                .await;
            seqs[i] += 1;
            let cad_ms = if *u == "P14" && (38..46).contains(&step) {
                2_600
            } else {
                140 + (wobble.abs() * 12.0) as u32
            };
            a.record(
                &id,
                rec(
                    boot,
                    seqs[i],
                    t + 1,
                    probe_of("cad-api", "https://cad.example.org/health", cad_ms, true),
                ),
            )
            .await;
            seqs[i] += 1;
            if *ag == "county-police" {
                let failing = ["P11", "P12", "SGT3"].contains(u) && step >= STEPS - 3;
                a.record(
                    &id,
                    rec(
                        boot,
                        seqs[i],
                        t + 2,
                        probe_of(
                            "rms-api",
                            "https://rms.county.example.org/api/ping",
                            if failing { 5_000 } else { 90 },
                            !failing,
                        ),
                    ),
                )
                .await;
                seqs[i] += 1;
            }
        }
        wait_received(c, &seqs).await;
    }
    let t = start + STEPS * STEP_MS;
    clock.set(t);
    let m7 = FLEET.iter().position(|f| f.1 == "M7").unwrap();
    let mut st: AgentStatus = fixtures::status();
    st.interval_ms = 60_000;
    st.backlog_records = 1_840;
    st.backlog_bytes = 612_000;
    st.clock_offset_ms = Some(0);
    a.record(
        &unit("metro-fire", "M7"),
        rec(boot, seqs[m7], t, Payload::Status(st)),
    )
    .await;
    seqs[m7] += 1;
    for (i, (ag, u, _)) in FLEET.iter().enumerate() {
        if i == m7 {
            continue;
        }
        let mut st: AgentStatus = fixtures::status();
        st.interval_ms = 60_000;
        st.backlog_records = 0;
        st.backlog_bytes = 0;
        st.clock_offset_ms = Some(0);
        a.record(&unit(ag, u), rec(boot, seqs[i], t, Payload::Status(st)))
            .await;
        seqs[i] += 1;
    }
    // The RMS API is still failing for the three police units.
    for (i, (ag, u, _)) in FLEET.iter().enumerate() {
        if ["P11", "P12", "SGT3"].contains(u) {
            let failing = probe_of(
                "rms-api",
                "https://rms.county.example.org/api/ping",
                5_000,
                false,
            );
            a.record(&unit(ag, u), rec(boot, seqs[i], t, failing)).await;
            seqs[i] += 1;
        }
    }
    // E2's labels and what it reports about itself (issue 16).
    let e2 = FLEET.iter().position(|f| f.1 == "E2").unwrap();
    let facts = muster_proto::UnitFacts {
        labels: vec![
            muster_proto::Label {
                key: "role".into(),
                value: "engine".into(),
            },
            muster_proto::Label {
                key: "station".into(),
                value: "7".into(),
            },
        ],
        agent_version: "0.1.0".into(),
        os: "Windows 10 Pro (build 19045)".into(),
        cad_version: Some("7.4.1.2".into()),
    };
    a.record(
        &unit("metro-fire", "E2"),
        rec(boot, seqs[e2], t, Payload::Facts(facts)),
    )
    .await;
    seqs[e2] += 1;
    wait_received(c, &seqs).await;
    a.presence(&unit("county-police", "K9-2"), online(boot, 1, t, false))
        .await;
    c.wait_unit(&unit("county-police", "K9-2"), "lost", |v| {
        v["status"] == "lost"
    })
    .await;
    // Announced departures (schema v2): BC1's OS shuts down (off), E4's
    // service stops for a restart that should be back within a second
    // (overdue once that passed), P14's lid closes (asleep). Each is an
    // announcement record and the retained state, as the agent sends them.
    for (ag, u, reason) in [
        ("metro-fire", "BC1", PresenceReason::Shutdown),
        (
            "metro-fire",
            "E4",
            PresenceReason::Stop {
                back_within_ms: Some(1_000),
            },
        ),
        ("county-police", "P14", PresenceReason::Sleep),
    ] {
        let i = FLEET.iter().position(|f| f.1 == u).unwrap();
        let id = unit(ag, u);
        let mut p = announcement(boot, t);
        p.reason = reason;
        a.record(&id, rec(boot, seqs[i], t, Payload::Presence(p)))
            .await;
        seqs[i] += 1;
        a.presence(&id, p).await;
        c.wait_unit(&id, "announced", |v| {
            v["presence"]["reason"] == reason.as_str()
        })
        .await;
    }
    // A second passes: the strips end in the departures, not at them.
    clock.set(t + 1_000);
    seqs
}

/// Units of the fleet by status, as the API says (`agency/unit`, sorted).
pub(super) async fn by_status(c: &Collector, status: &str) -> Vec<String> {
    let v = c.json("/api/v1/units?limit=1000", ADMIN).await;
    let mut out: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["status"] == status)
        .map(|u| {
            format!(
                "{}/{}",
                u["agency"].as_str().unwrap(),
                u["unit"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until every fleet unit has received `seqs[i] - 1` records.
pub(super) async fn wait_received(c: &Collector, seqs: &[u64]) {
    eventually(
        "the collector to receive the seeded records",
        Duration::from_secs(30),
        || async {
            let v = c.json("/api/v1/units?limit=1000", ADMIN).await;
            let done = FLEET.iter().enumerate().all(|(i, (ag, u, _))| {
                v["items"].as_array().unwrap().iter().any(|x| {
                    x["agency"] == *ag && x["unit"] == *u && x["seq"]["received"] == seqs[i] - 1
                })
            });
            if done { Ok(()) } else { Err(v) }
        },
    )
    .await;
}
