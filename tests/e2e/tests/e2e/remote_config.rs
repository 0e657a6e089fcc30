//! Remote config end to end (issue 16, part 1; must-shows 3 and 4): a real
//! collector signs documents and publishes them, retained, through a real
//! Mosquitto; a real agent applies a good one without a restart (its new
//! probe reports, its pid unchanged), refuses forged, tampered, replayed,
//! wrong-unit and disallowed-section documents each with its counted
//! reason (reported to the collector and shown by `muster-agent status`),
//! rolls a document whose probe target refuses back by itself after its
//! health window, and after a kill -9 comes back on the documents it ran.
//!
//! The attacker here has the broker (this Mosquitto has no ACL): it can
//! publish anything on the agent's config topic. The signatures and the
//! agent's checks are what stop it.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::Duration;

use muster_proto::{
    ConfigDoc, DecodeError, DocScope, MAX_CONFIG_BODY, SigningKey, UnitId, decode_config,
    encode_config, sign,
};
use muster_testkit::{Mosquitto, TempDir, eventually_blocking, http::blocking};
use serde_json::{Value, json};

use crate::procs::{ADMIN, AGENCY, AgentProc, AgentSpec, CollectorProc, bins};

/// An HTTP server on 127.0.0.1:0 that answers 200 to everything.
pub(crate) fn ok_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(c);
                let mut h = String::new();
                while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

/// A loopback port nothing listens on: connections are refused.
pub(crate) fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub(crate) fn probe(name: &str, port: u16) -> String {
    format!(
        "[[probe]]\nname = \"{name}\"\nkind = \"http\"\ntarget = \"http://127.0.0.1:{port}/\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n"
    )
}

fn put(c: &CollectorProc, unit: &str, body: &str) -> Value {
    let b = serde_json::to_vec(&json!({ "body": body })).unwrap();
    let path = format!("/api/v1/config/{AGENCY}/{unit}");
    let r = blocking::call(c.addr, "PUT", &path, Some(ADMIN), Some(&b)).unwrap();
    assert_eq!(r.status, 200, "PUT {path}: {}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

/// The retained document on `topic`, as the broker holds it.
fn retained(m: &Mosquitto, topic: &str) -> Vec<u8> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &m.port().to_string(), "-t", topic])
        .args(["-C", "1", "-N", "-W", "10"])
        .output()
        .expect("mosquitto_sub (mosquitto-clients) runs");
    assert!(out.status.success(), "mosquitto_sub {topic}: {out:?}");
    out.stdout
}

/// Publishes `payload` retained on `topic`, as the attacker.
fn inject(m: &Mosquitto, topic: &str, payload: &[u8], dir: &std::path::Path) {
    let f = dir.join("payload.bin");
    std::fs::write(&f, payload).unwrap();
    let st = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &m.port().to_string(), "-t", topic])
        .args(["-q", "1", "-r", "-f"])
        .arg(&f)
        .status()
        .expect("mosquitto_pub runs");
    assert!(st.success());
}

/// The unit's config steps as the collector stored them, oldest first.
pub(crate) fn steps(c: &CollectorProc, unit: &str) -> Vec<Value> {
    if c.unit(unit).is_none() {
        return Vec::new();
    }
    let v = c.get(&format!(
        "/api/v1/units/{AGENCY}/{unit}/samples?kind=config&limit=1000"
    ));
    let mut items: Vec<Value> = v["items"].as_array().unwrap().clone();
    items.sort_by_key(|x| (x["at_ms"].as_u64(), x["seq"].as_u64()));
    items.into_iter().map(|x| x["data"].clone()).collect()
}

pub(crate) fn wait_step(
    c: &CollectorProc,
    unit: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let mut found = Value::Null;
    eventually_blocking(what, Duration::from_secs(60), || {
        let s = steps(c, unit);
        match s.iter().rev().find(|x| f(x)) {
            Some(x) => {
                found = x.clone();
                Ok(())
            }
            None => Err(format!(
                "{:?}",
                s.iter()
                    .map(|x| (
                        x["state"].clone(),
                        x["doc_version"].clone(),
                        x["refusal"].clone()
                    ))
                    .collect::<Vec<_>>()
            )),
        }
    });
    found
}

fn probe_names(c: &CollectorProc, unit: &str, since_ms: u64) -> Vec<String> {
    let v = c.get(&format!(
        "/api/v1/units/{AGENCY}/{unit}/samples?kind=probe&resolution=raw&limit=1000&since={since_ms}"
    ));
    let mut names: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["at_ms"].as_u64() >= Some(since_ms))
        .map(|x| x["data"]["name"].as_str().unwrap_or("").to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn status(spec_path: &std::path::Path) -> (String, Value) {
    let run = |json: bool| {
        let mut c = Command::new(&bins(false).agent);
        c.args(["status", "--config"]).arg(spec_path);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    (
        run(false),
        serde_json::from_str(&run(true)).unwrap_or(Value::Null),
    )
}

#[test]
fn remote_config_applies_without_restart_refuses_bad_documents_and_rolls_back_by_itself() {
    let dir = TempDir::new().unwrap();
    let up = ok_server();
    let m = Mosquitto::start();
    let col = CollectorProc::spawn_on(&m.url(), &dir.path().join("collector"));
    let data = dir.path().join("R1");
    let mut spec = AgentSpec::new("R1", &m.url(), &data);
    spec.extra = format!(
        "[remote]\nallow = [\"probe\", \"sampling\"]\nhealth_window = \"10s\"\n{}",
        probe("cad-api", up)
    );
    let mut agent = AgentProc::spawn(&spec, false);
    let pid = agent.child.id();
    let cfg_path = data.join("agent.toml");
    let start = wait_step(&col, "R1", "the local config reported", |x| {
        x["state"] == "applied" && x["doc_scope"].is_null()
    });
    assert!(start["running_unit_version"].is_null(), "{start}");

    // A good document: a second probe, applied without a restart.
    let v1 = put(
        &col,
        "R1",
        &(probe("cad-api", up) + &probe("remote-probe", up)),
    );
    assert_eq!(v1["version"], 1, "{v1}");
    let applied = wait_step(&col, "R1", "v1 applied", |x| {
        x["state"] == "applied" && x["doc_version"] == 1
    });
    assert_eq!(
        applied["doc_hash"], v1["hash"],
        "the agent reports the signed hash"
    );
    assert_eq!(applied["running_unit_version"], 1);
    let t1 = crate::procs::now_ms();
    eventually_blocking("the new probe reports", Duration::from_secs(30), || {
        let n = probe_names(&col, "R1", t1);
        n.contains(&"remote-probe".to_owned())
            .then_some(())
            .ok_or(format!("{n:?}"))
    });
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent restarted"
    );
    assert_eq!(agent.child.id(), pid);
    let v1_bytes = retained(&m, &format!("muster/v1/{AGENCY}/R1/config"));
    assert_eq!(decode_config(&v1_bytes).unwrap().version, 1);

    // v2, then wait for its health window to pass: it is the last known good.
    let v2 = put(
        &col,
        "R1",
        &(probe("cad-api", up) + &probe("remote-probe", up) + "[sampling]\ninterval = \"2s\"\n"),
    );
    let v2_applied = wait_step(&col, "R1", "v2 applied", |x| {
        x["state"] == "applied" && x["doc_version"] == 2
    });
    assert_eq!(v2_applied["doc_hash"], v2["hash"]);

    // The attacks, each refused with its reason.
    let topic = format!("muster/v1/{AGENCY}/R1/config");
    let v2_bytes = retained(&m, &topic);
    let v2_doc: ConfigDoc = decode_config(&v2_bytes).unwrap();
    // Replayed: the genuine v1, published again.
    inject(&m, &topic, &v1_bytes, dir.path());
    wait_step(&col, "R1", "replay refused", |x| {
        x["refusal"] == "old_version"
    });
    // Forged: a newer version signed by a key nobody trusts.
    let stranger = SigningKey::from_seed(&[0x5a; 32]);
    let forged = sign::sign_config(
        &stranger,
        DocScope::Unit {
            unit: UnitId::new(AGENCY, "R1").unwrap(),
        },
        99,
        0,
        "[sampling]\ninterval = \"1s\"\n".into(),
    );
    inject(&m, &topic, &encode_config(&forged).unwrap(), dir.path());
    wait_step(&col, "R1", "forgery refused", |x| {
        x["refusal"] == "untrusted_key"
    });
    // Tampered: the genuine v2 with its body changed and its version raised.
    let mut tampered = v2_doc.clone();
    tampered.version = 98;
    tampered.body = probe("evil", up);
    inject(&m, &topic, &encode_config(&tampered).unwrap(), dir.path());
    wait_step(&col, "R1", "tampering refused", |x| {
        x["refusal"] == "bad_signature"
    });
    // Wrong unit: a genuine document for R2, moved to R1's topic.
    put(&col, "R2", "[sampling]\ninterval = \"3s\"\n");
    let r2 = retained(&m, &format!("muster/v1/{AGENCY}/R2/config"));
    inject(&m, &topic, &r2, dir.path());
    wait_step(&col, "R1", "wrong unit refused", |x| {
        x["refusal"] == "wrong_unit"
    });
    // A section R1 does not allow, genuinely signed (the collector allows
    // every remotable section; the agent's local allow list decides).
    let v3 = put(&col, "R1", "[report]\nlisten = \"127.0.0.1:9999\"\n");
    assert_eq!(v3["version"], 3);
    wait_step(&col, "R1", "disallowed section refused", |x| {
        x["refusal"] == "section_not_allowed" && x["doc_version"] == 3
    });
    // Nothing of them ran: still v2.
    // `muster-agent status` (its file is rewritten every 5 s) shows each
    // refusal counted by reason, and v2 still running.
    let reasons = [
        "old_version",
        "untrusted_key",
        "bad_signature",
        "wrong_unit",
        "section_not_allowed",
    ];
    let mut text = String::new();
    eventually_blocking("status shows the refusals", Duration::from_secs(20), || {
        let (t, js) = status(&cfg_path);
        text = t.clone();
        let counted = reasons
            .iter()
            .all(|r| js["config"]["refused"][*r].as_u64() == Some(1));
        (js["config"]["origin"] == "unit v2" && counted && js["connected"] == true)
            .then_some(())
            .ok_or(t)
    });
    println!("muster-agent status after the attacks:\n{text}");

    // v2's window passes (10 s after it applied): last known good.
    eventually_blocking("v2's health window passed", Duration::from_secs(40), || {
        let (t, js) = status(&cfg_path);
        (js["config"]["watching_until_ms"].is_null() && js["config"]["origin"] == "unit v2")
            .then_some(())
            .ok_or(t)
    });
    let good_hash =
        wait_step(&col, "R1", "v2 running", |x| x["running_unit_version"] == 2)["running_hash"]
            .clone();

    // A document whose only probe's target refuses: applied, then rolled
    // back by the agent itself when its health window ends.
    let v4 = put(&col, "R1", &probe("cad-api", closed_port()));
    assert_eq!(v4["version"], 4);
    wait_step(&col, "R1", "v4 applied", |x| {
        x["state"] == "applied" && x["doc_version"] == 4
    });
    let back = wait_step(&col, "R1", "v4 rolled back", |x| {
        x["state"] == "rolled_back" && x["doc_version"] == 4
    });
    assert!(
        back["reason"]
            .as_str()
            .unwrap_or("")
            .contains("every probe failed"),
        "{back}"
    );
    assert_eq!(
        back["running_unit_version"], 2,
        "back on the last known good: {back}"
    );
    assert_eq!(back["running_hash"], good_hash, "{back}");
    // v4 is never applied again, even though it stays retained.
    assert!(agent.child.try_wait().unwrap().is_none());

    // kill -9, restart: it comes back on v2 (the documents it ran), not
    // the local config, and does not apply the retained v4.
    agent.kill9();
    let before = steps(&col, "R1").len();
    let _agent = AgentProc::spawn(&spec, false);
    let again = wait_step(&col, "R1", "restart reported", |x| {
        x["state"] == "applied" && x["doc_scope"].is_null()
    });
    eventually_blocking("the restart's report", Duration::from_secs(30), || {
        let s = steps(&col, "R1");
        (s.len() > before)
            .then_some(())
            .ok_or(format!("{}", s.len()))
    });
    let newest = steps(&col, "R1").pop().unwrap();
    assert_eq!(newest["running_unit_version"], 2, "{newest} / {again}");
    assert_eq!(newest["running_hash"], good_hash);
}

/// `d` (its body [`MAX_CONFIG_BODY`] + 1 bytes, ASCII) as `encode_config`
/// would write it were the limit not there: `encode_config` refuses it, so
/// the bytes are those of the document one byte shorter with the body's
/// length prefix raised and the last byte put back. bincode writes a
/// length from 2^16 to 2^32 - 1 as 252 and four bytes little endian, so
/// the prefix keeps its size.
fn encode_past_the_limit(d: &ConfigDoc) -> Vec<u8> {
    assert_eq!(d.body.len(), MAX_CONFIG_BODY + 1);
    let (at_limit, last) = d.body.split_at(MAX_CONFIG_BODY);
    let shorter = ConfigDoc {
        body: at_limit.to_owned(),
        ..d.clone()
    };
    let mut bytes = encode_config(&shorter).unwrap();
    let prefix = |len: usize| {
        let mut p = vec![252u8];
        p.extend_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
        p
    };
    let mut needle = prefix(MAX_CONFIG_BODY);
    needle.extend_from_slice(&at_limit.as_bytes()[..64]);
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the body's length prefix");
    bytes.splice(at..at + 5, prefix(MAX_CONFIG_BODY + 1));
    let end = at + 5 + MAX_CONFIG_BODY;
    assert_eq!(&bytes[at + 5..end], at_limit.as_bytes());
    bytes.splice(end..end, last.bytes());
    // Well formed in every other way: the decoder reads all of it and
    // refuses it for its body's size alone.
    match decode_config(&bytes) {
        Err(DecodeError::Malformed(m)) => assert_eq!(
            m,
            format!(
                "config body is {} bytes; the limit is {MAX_CONFIG_BODY}",
                MAX_CONFIG_BODY + 1
            )
        ),
        other => panic!("{other:?}"),
    }
    bytes
}

/// `head`, then a comment of `x` to exactly `len` bytes.
fn padded_toml(head: &str, len: usize) -> String {
    let toml = format!("{head}#{}\n", "x".repeat(len - head.len() - 2));
    assert_eq!(toml.len(), len);
    toml
}

#[test]
fn a_document_one_byte_over_the_body_limit_is_refused_and_one_at_the_limit_applies() {
    let dir = TempDir::new().unwrap();
    let m = Mosquitto::start();
    let col = CollectorProc::spawn_on(&m.url(), &dir.path().join("collector"));
    let data = dir.path().join("B1");
    let mut spec = AgentSpec::new("B1", &m.url(), &data);
    spec.extra = "[remote]\nallow = [\"sampling\"]\nhealth_window = \"10s\"\n".into();
    let mut agent = AgentProc::spawn(&spec, false);
    let pid = agent.child.id();
    wait_step(&col, "B1", "the local config reported", |x| {
        x["state"] == "applied" && x["doc_scope"].is_null()
    });

    // One byte over, signed by the key the agent trusts (the collector's
    // API would not take it): published on the unit's topic, as the
    // collector would, and refused as malformed.
    let topic = format!("muster/v1/{AGENCY}/B1/config");
    let over = sign::sign_config(
        &muster_testkit::test_collector_key(),
        DocScope::Unit {
            unit: UnitId::new(AGENCY, "B1").unwrap(),
        },
        1,
        crate::procs::now_ms(),
        padded_toml("[sampling]\ninterval = \"2s\"\n", MAX_CONFIG_BODY + 1),
    );
    inject(&m, &topic, &encode_past_the_limit(&over), dir.path());
    let refused = wait_step(&col, "B1", "the oversized document refused", |x| {
        x["state"] == "refused"
    });
    assert_eq!(refused["refusal"], "malformed", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("the limit is {MAX_CONFIG_BODY}")),
        "{refused}"
    );
    assert!(refused["running_unit_version"].is_null(), "{refused}");

    // Exactly the limit, through the collector: applied, by the same
    // agent process.
    let at = padded_toml("[sampling]\ninterval = \"1s\"\n", MAX_CONFIG_BODY);
    let v1 = put(&col, "B1", &at);
    assert_eq!(v1["version"], 1, "{v1}");
    let applied = wait_step(&col, "B1", "the document at the limit applied", |x| {
        x["state"] == "applied" && x["doc_version"] == 1
    });
    assert_eq!(applied["doc_hash"], v1["hash"], "{applied}");
    assert_eq!(applied["running_unit_version"], 1, "{applied}");
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited"
    );
    assert_eq!(agent.child.id(), pid);

    // `muster-agent status` counts the refusal by its reason.
    eventually_blocking("status counts the refusal", Duration::from_secs(20), || {
        let (t, js) = status(&data.join("agent.toml"));
        let refused = &js["config"]["refused"];
        (refused["malformed"].as_u64() == Some(1)
            && js["config"]["origin"] == "unit v1"
            && js["connected"] == true)
            .then_some(())
            .ok_or(t)
    });
}

/// The health window survives a restart: a document applied with a 60 s
/// window, then one kill -9 and restart within it (a power cut, normal for
/// a vehicle terminal): the document still runs. A second kill -9 (three
/// starts within the window, the one that applied it the first): the
/// agent starts on what ran before the document, reports it rolled back
/// with the reason, and never applies it again though it stays retained.
#[test]
fn restarting_in_a_loop_within_the_health_window_rolls_the_document_back() {
    let dir = TempDir::new().unwrap();
    let m = Mosquitto::start();
    let col = CollectorProc::spawn_on(&m.url(), &dir.path().join("collector"));
    let data = dir.path().join("C1");
    let mut spec = AgentSpec::new("C1", &m.url(), &data);
    spec.extra = "[remote]\nallow = [\"sampling\"]\nhealth_window = \"60s\"\n".into();
    let mut agent = AgentProc::spawn(&spec, false);
    let local = wait_step(&col, "C1", "the local config reported", |x| {
        x["state"] == "applied" && x["doc_scope"].is_null()
    });
    let before_hash = local["running_hash"].clone();

    let v1 = put(&col, "C1", "[sampling]\ninterval = \"2s\"\n");
    assert_eq!(v1["version"], 1, "{v1}");
    let applied = wait_step(&col, "C1", "v1 applied", |x| {
        x["state"] == "applied" && x["doc_version"] == 1
    });
    let t_applied = std::time::Instant::now();
    let v1_hash = applied["running_hash"].clone();
    assert_ne!(v1_hash, before_hash, "{applied}");

    // Start 2: after one kill -9 within the window, v1 still runs.
    let restart = |agent: &mut AgentProc| {
        agent.kill9();
        let n = steps(&col, "C1").len();
        let next = AgentProc::spawn(&spec, false);
        let first = eventually_blocking("the restart's report", Duration::from_secs(30), || {
            let s = steps(&col, "C1");
            s.get(n).cloned().ok_or(format!("{} steps", s.len()))
        });
        (next, first)
    };
    let (mut agent, first) = restart(&mut agent);
    assert_eq!(
        (&first["state"], &first["doc_scope"]),
        (&json!("applied"), &Value::Null),
        "{first}"
    );
    assert_eq!(first["running_unit_version"], 1, "{first}");
    assert_eq!(first["running_hash"], v1_hash, "{first}");

    // Start 3: a second kill -9 within the window: rolled back at start.
    let (mut agent, back) = restart(&mut agent);
    assert!(
        t_applied.elapsed() < Duration::from_secs(60),
        "three starts within the window"
    );
    assert_eq!(
        (&back["state"], &back["doc_version"], &back["doc_hash"]),
        (&json!("rolled_back"), &json!(1), &v1["hash"]),
        "{back}"
    );
    assert_eq!(
        back["reason"], "the agent restarted 2 times within the health window of unit v1",
        "{back}"
    );
    assert_eq!(back["running_hash"], before_hash, "{back}");
    assert!(back["running_unit_version"].is_null(), "{back}");

    // v1 stays retained and is not applied again: the next document is
    // the next step, and `muster-agent status` says why v1 went.
    let v2 = put(&col, "C1", "[sampling]\ninterval = \"3s\"\n");
    assert_eq!(v2["version"], 2, "{v2}");
    wait_step(&col, "C1", "v2 applied", |x| {
        x["state"] == "applied" && x["doc_version"] == 2
    });
    let s = steps(&col, "C1");
    let at = s.iter().rposition(|x| x["state"] == "rolled_back").unwrap();
    let after: Vec<_> = s[at + 1..]
        .iter()
        .map(|x| (x["state"].clone(), x["doc_version"].clone()))
        .collect();
    assert_eq!(
        after,
        [(json!("applying"), json!(2)), (json!("applied"), json!(2))]
    );
    assert!(agent.alive(), "{}", agent.log_tail());
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(
        log.contains("restarting in a loop within a health window"),
        "{log}"
    );
}
