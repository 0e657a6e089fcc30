//! Actions (issue 17), end to end: the built `muster-agent run` against a
//! real Mosquitto. The test plays the collector: it signs requests with
//! the suite's collector key (the one `agent_trust_toml` trusts),
//! publishes them on the unit's action topic, and reads the audit records
//! from the unit's telemetry topic. Every refusal is audited and counted
//! (the status file), and nothing runs: the actions would leave files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_agent::status::StatusFile;
use muster_proto::action::{ActionParam, ActionRefusal, ActionRequest, ActionStep};
use muster_proto::{
    Body, BootId, Payload, Signature, TopicKind, UnitId, decode, encode_action, sign, sign::KeyId,
    topic::unit_topic,
};
use muster_testkit::{KillOnDrop, Mosquitto, TempDir, eventually};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_muster-agent");
const WAIT: Duration = Duration::from_secs(30);

fn unit() -> UnitId {
    UnitId::new("metro-fire", "E12").unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Every record of the unit's telemetry, by (boot, seq): resends of a
/// record the test never acks count once.
type Records = Arc<Mutex<BTreeMap<(BootId, u64), Payload>>>;

struct Harness {
    _broker: Mosquitto,
    dir: TempDir,
    cfg: PathBuf,
    agent: Option<KillOnDrop>,
    client: AsyncClient,
    records: Records,
    boots: Vec<BootId>,
}

impl Harness {
    /// A broker, a subscribed test collector, and the agent running with
    /// `actions` (`{dir}` is replaced by the test's directory).
    async fn start(actions: &str) -> Harness {
        let broker = Mosquitto::start();
        let dir = TempDir::new().unwrap();
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "agency = \"metro-fire\"\nunit_id = \"E12\"\ndata_dir = {:?}\n\
                 [mqtt]\nurl = \"{}\"\n[sampling]\ninterval = \"5s\"\ncollectors = [\"cpu\"]\n\
                 {}[log]\nlevel = \"info\"\n{}",
                dir.path().display().to_string(),
                broker.url(),
                muster_testkit::agent_trust_toml(),
                actions.replace("{dir}", &dir.path().display().to_string()),
            ),
        )
        .unwrap();
        let mut o = MqttOptions::new(
            format!("test-collector-{}", rand::random::<u32>()),
            "127.0.0.1",
            broker.port(),
        );
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 100);
        let records: Records = Arc::default();
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        {
            let records = records.clone();
            let client = client.clone();
            let telemetry = unit_topic(&unit(), TopicKind::Telemetry);
            tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            client
                                .subscribe(telemetry.clone(), QoS::AtLeastOnce)
                                .await
                                .unwrap();
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = subscribed_tx.send(true);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let Ok(d) = decode(&p.payload) else { continue };
                            let recs = match d.message.body {
                                Body::Record(r) => vec![r],
                                Body::Batch(b) => b,
                                _ => continue,
                            };
                            let mut m = records.lock().unwrap();
                            for r in recs {
                                m.insert((r.boot, r.seq), r.payload);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        }
        subscribed.wait_for(|s| *s).await.unwrap();
        let mut h = Harness {
            _broker: broker,
            dir,
            cfg,
            agent: None,
            client,
            records,
            boots: Vec::new(),
        };
        h.start_agent().await;
        h
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the agent and waits for its first telemetry: it subscribed
    /// to its action topic before it published anything (one connection,
    /// in order).
    async fn start_agent(&mut self) {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.cfg)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        muster_testkit::forward_stderr(&mut child, "agent".into(), |l| {
            l.contains("WARN") || l.contains("ERROR") || l.contains("Action")
        });
        self.agent = Some(KillOnDrop(child));
        let known = self.boots.clone();
        let boot = eventually("the agent's first telemetry", WAIT, async || {
            self.records
                .lock()
                .unwrap()
                .keys()
                .map(|(b, _)| *b)
                .find(|b| !known.contains(b))
        })
        .await;
        self.boots.push(boot);
    }

    /// SIGTERM, and its exit.
    async fn stop_agent(&mut self) {
        let mut agent = self.agent.take().expect("running");
        muster_testkit::signal(agent.id(), "TERM");
        let status = eventually("the agent's exit", WAIT, async || agent.try_wait().unwrap()).await;
        assert!(status.success(), "{status}");
    }

    /// A request for this unit, valid for a minute (unsigned).
    fn request(&self, action: &str, params: &[(&str, &str)]) -> ActionRequest {
        ActionRequest {
            unit: unit(),
            action: action.into(),
            params: params
                .iter()
                .map(|(n, v)| ActionParam {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            nonce: rand::random(),
            issued_ms: now_ms() - 1_000,
            expires_ms: now_ms() + 60_000,
            requested_by: "operator:metro-fire".into(),
            key_id: KeyId::NONE,
            sig: Signature::NONE,
        }
    }

    async fn publish(&self, bytes: Vec<u8>) {
        self.client
            .publish(
                unit_topic(&unit(), TopicKind::Action),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await
            .unwrap();
    }

    /// Signs and publishes `r`; its bytes.
    async fn send(&self, r: ActionRequest) -> Vec<u8> {
        let bytes = signed(r);
        self.publish(bytes.clone()).await;
        bytes
    }

    /// The audit steps about `nonce` (None: unnamed), in record order.
    fn steps(&self, nonce: Option<[u8; 16]>) -> Vec<ActionStep> {
        self.records
            .lock()
            .unwrap()
            .values()
            .filter_map(|p| match p {
                Payload::Action(a) if a.request.as_ref().map(|r| r.nonce) == nonce => {
                    Some(a.step.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Waits for `n` audit steps about `nonce`.
    async fn wait_steps(&self, nonce: Option<[u8; 16]>, n: usize) -> Vec<ActionStep> {
        eventually(&format!("{n} audit steps"), WAIT, async || {
            let s = self.steps(nonce);
            if s.len() >= n { Ok(s) } else { Err(s) }
        })
        .await
    }

    /// Waits for the one refusal of `r`'s nonce; returns its reason and
    /// detail.
    async fn refusal(&self, nonce: [u8; 16]) -> (ActionRefusal, String) {
        match self.wait_steps(Some(nonce), 1).await.as_slice() {
            [ActionStep::Refused { reason, detail }] => (*reason, detail.clone()),
            other => panic!("not one refusal: {other:?}"),
        }
    }

    fn status(&self) -> Option<StatusFile> {
        muster_agent::status::read(self.path()).ok()
    }

    /// Waits until the status file counts `n` refusals for `reason`.
    async fn counted(&self, reason: ActionRefusal, n: u64) {
        eventually(
            &format!("{n} {} refusals counted", reason.as_str()),
            WAIT,
            async || {
                let got = self.status().map(|s| s.actions.refused);
                match got.as_ref().and_then(|r| r.get(reason.as_str())) {
                    Some(c) if *c == n => Ok(()),
                    _ => Err(got),
                }
            },
        )
        .await
    }

    /// The files in the test's directory whose names start with `prefix`.
    fn files(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }
}

fn signed(r: ActionRequest) -> Vec<u8> {
    encode_action(&sign::sign_action(&muster_testkit::test_collector_key(), r)).unwrap()
}

/// `mark`: touches `{dir}/marked` (no parameters).
fn mark() -> String {
    format!(
        "[[action]]\nname = \"mark\"\nkind = \"command\"\nargv = [\"{}\", \"{{dir}}/marked\"]\ntimeout = \"10s\"\nrate = \"100 per 1h\"\n",
        muster_testkit::program("touch")
    )
}

/// `note`: touches `{dir}/note-<name>` — the value is the file name,
/// relative to the agent's working directory (the test's).
fn note() -> String {
    format!(
        "[[action]]\nname = \"note\"\nkind = \"command\"\nargv = [\"{}\", \"{{name}}\"]\ntimeout = \"10s\"\n\
         [action.params.name]\ntype = \"string\"\npattern = \"note-[a-z0-9.-]{{1,32}}\"\n",
        muster_testkit::program("touch")
    )
}

fn assert_finished(steps: &[ActionStep], code: Option<i32>) -> (String, String) {
    match steps {
        [
            ActionStep::Started,
            ActionStep::Finished {
                exit_code,
                stdout,
                stderr,
                timed_out: false,
                ..
            },
        ] if *exit_code == code => (stdout.clone(), stderr.clone()),
        other => panic!("not started then finished with {code:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_signature_is_refused_counted_and_audited_and_nothing_runs() {
    let h = Harness::start(&mark()).await;
    // Signed, then a parameter of the signed bytes changed: bad signature.
    let mut tampered = sign::sign_action(
        &muster_testkit::test_collector_key(),
        h.request("mark", &[]),
    );
    tampered.requested_by = "admin".into();
    h.publish(encode_action(&tampered).unwrap()).await;
    // Signed by a key the agent does not trust.
    let other = h.request("mark", &[]);
    h.publish(
        encode_action(&sign::sign_action(
            &muster_proto::fixtures::signing_key(),
            other.clone(),
        ))
        .unwrap(),
    )
    .await;
    // Not signed at all; and bytes that are no request.
    let unsigned = h.request("mark", &[]);
    h.publish(encode_action(&unsigned).unwrap()).await;
    h.publish(b"\x02 not a request".to_vec()).await;

    assert_eq!(
        h.refusal(tampered.nonce).await.0,
        ActionRefusal::BadSignature
    );
    assert_eq!(h.refusal(other.nonce).await.0, ActionRefusal::UntrustedKey);
    assert_eq!(h.refusal(unsigned.nonce).await.0, ActionRefusal::Unsigned);
    let unnamed = h.wait_steps(None, 1).await;
    assert!(
        matches!(
            unnamed.as_slice(),
            [ActionStep::Refused {
                reason: ActionRefusal::Malformed,
                ..
            }]
        ),
        "{unnamed:?}"
    );
    h.counted(ActionRefusal::BadSignature, 1).await;
    h.counted(ActionRefusal::UntrustedKey, 1).await;
    h.counted(ActionRefusal::Unsigned, 1).await;
    h.counted(ActionRefusal::Malformed, 1).await;
    assert!(h.files("marked").is_empty(), "a forged request ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_is_refused_counted_and_audited_and_nothing_runs() {
    let h = Harness::start(&mark()).await;
    let mut r = h.request("mark", &[]);
    r.issued_ms = now_ms() - 120_000;
    r.expires_ms = now_ms() - 60_000;
    let nonce = r.nonce;
    h.send(r).await;
    let (reason, detail) = h.refusal(nonce).await;
    assert_eq!(reason, ActionRefusal::Expired, "{detail}");
    assert!(detail.contains("expired"), "{detail}");
    h.counted(ActionRefusal::Expired, 1).await;
    assert!(h.files("marked").is_empty(), "an expired request ran");
}

/// The same signed bytes twice: run once, then refused; and again after
/// the agent restarted (the nonce is persisted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_is_refused_also_across_a_restart() {
    let mut h = Harness::start(&mark()).await;
    let r = h.request("mark", &[]);
    let nonce = r.nonce;
    let bytes = h.send(r).await;
    assert_finished(&h.wait_steps(Some(nonce), 2).await, Some(0));
    assert_eq!(h.files("marked"), ["marked"]);
    std::fs::remove_file(h.path().join("marked")).unwrap();

    h.publish(bytes.clone()).await;
    let steps = h.wait_steps(Some(nonce), 3).await;
    assert!(
        matches!(
            &steps[2],
            ActionStep::Refused {
                reason: ActionRefusal::Replayed,
                ..
            }
        ),
        "{steps:?}"
    );
    h.counted(ActionRefusal::Replayed, 1).await;

    h.stop_agent().await;
    h.start_agent().await;
    h.publish(bytes).await;
    let steps = h.wait_steps(Some(nonce), 4).await;
    assert!(
        matches!(
            &steps[3],
            ActionStep::Refused {
                reason: ActionRefusal::Replayed,
                ..
            }
        ),
        "after a restart: {steps:?}"
    );
    h.counted(ActionRefusal::Replayed, 1).await;
    assert!(h.files("marked").is_empty(), "a replayed request ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_unit_or_agency_is_refused_and_nothing_runs() {
    let h = Harness::start(&mark()).await;
    let mut nonces = Vec::new();
    for other in [
        UnitId::new("metro-fire", "E13").unwrap(),
        UnitId::new("county-ems", "E12").unwrap(),
    ] {
        let mut r = h.request("mark", &[]);
        r.unit = other;
        nonces.push(r.nonce);
        h.send(r).await;
    }
    for n in nonces {
        let (reason, detail) = h.refusal(n).await;
        assert_eq!(reason, ActionRefusal::WrongUnit, "{detail}");
    }
    h.counted(ActionRefusal::WrongUnit, 2).await;
    assert!(
        h.files("marked").is_empty(),
        "a request for another unit ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_action_is_refused_and_counted() {
    let h = Harness::start(&mark()).await;
    let r = h.request("reboot", &[]);
    let nonce = r.nonce;
    h.send(r).await;
    let (reason, detail) = h.refusal(nonce).await;
    assert_eq!(reason, ActionRefusal::UnknownAction);
    assert!(detail.contains("mark"), "names what it has: {detail}");
    h.counted(ActionRefusal::UnknownAction, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_with_an_embedded_newline_is_refused_and_nothing_runs() {
    let h = Harness::start(&note()).await;
    let mut nonces = Vec::new();
    for v in ["note-a\nnote-b", "note-a\n", "note-a\r", "note-a\0"] {
        let r = h.request("note", &[("name", v)]);
        nonces.push(r.nonce);
        h.send(r).await;
    }
    for n in &nonces {
        let (reason, detail) = h.refusal(*n).await;
        assert_eq!(reason, ActionRefusal::BadParams, "{detail}");
        assert!(detail.contains("control character"), "{detail}");
    }
    h.counted(ActionRefusal::BadParams, nonces.len() as u64)
        .await;
    assert!(h.files("note").is_empty(), "ran: {:?}", h.files(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_with_shell_metacharacters_are_refused_and_nothing_runs() {
    let h = Harness::start(&note()).await;
    let mut nonces = Vec::new();
    for v in [
        "note-a;touch pwned",
        "note-a|touch pwned",
        "note-a$(touch pwned)",
        "note-a`touch pwned`",
        "note-a && touch pwned",
        "$(touch pwned)",
    ] {
        let r = h.request("note", &[("name", v)]);
        nonces.push(r.nonce);
        h.send(r).await;
    }
    for n in &nonces {
        let (reason, detail) = h.refusal(*n).await;
        assert_eq!(reason, ActionRefusal::BadParams, "{detail}");
        assert!(detail.contains("does not match the pattern"), "{detail}");
    }
    h.counted(ActionRefusal::BadParams, nonces.len() as u64)
        .await;
    assert!(h.files("note").is_empty(), "ran: {:?}", h.files(""));
    assert!(
        h.files("pwned").is_empty(),
        "a shell ran: {:?}",
        h.files("")
    );
}

/// A valid parameter is one argument, however many spaces it has: no
/// shell splits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_with_the_value_as_one_argument() {
    let actions = format!(
        "{}[[action]]\nname = \"say\"\nkind = \"command\"\nargv = [\"{}\", \"[%s]\\n\", \"{{msg}}\"]\n\
         [action.params.msg]\ntype = \"string\"\npattern = \"[a-z ]{{1,32}}\"\n",
        note(),
        muster_testkit::program("printf")
    );
    let h = Harness::start(&actions).await;
    let r = h.request("say", &[("msg", "hello  wide world")]);
    let nonce = r.nonce;
    h.send(r).await;
    let (stdout, stderr) = assert_finished(&h.wait_steps(Some(nonce), 2).await, Some(0));
    assert_eq!(
        (stdout.as_str(), stderr.as_str()),
        ("[hello  wide world]\n", "")
    );

    let r = h.request("note", &[("name", "note-ok.1")]);
    let nonce = r.nonce;
    h.send(r).await;
    assert_finished(&h.wait_steps(Some(nonce), 2).await, Some(0));
    assert_eq!(h.files("note"), ["note-ok.1"]);
    let s = h.status().unwrap().actions;
    assert!(s.refused.is_empty(), "{s:?}");
    eventually("both runs counted", WAIT, async || {
        let a = h.status().unwrap().actions;
        if (a.started, a.finished) == (2, 2) {
            Ok(())
        } else {
            Err(a)
        }
    })
    .await;
}

/// The pids of every process in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        // state ppid pgrp ...
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// A command that hangs (with a child of its own) is killed at its
/// timeout, its whole process group with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_command_is_killed_at_its_timeout_with_its_process_group() {
    // The configured argv (fixed by the operator, not by a request) runs
    // a shell only to have a grandchild in the group and to say its pgid.
    let actions = format!(
        "[[action]]\nname = \"hang\"\nkind = \"command\"\n\
         argv = [\"{}\", \"-c\", \"echo $$ > {{dir}}/pgid; {} 600 & {} 600\"]\ntimeout = \"2s\"\n",
        muster_testkit::program("sh"),
        muster_testkit::program("sleep"),
        muster_testkit::program("sleep"),
    );
    let h = Harness::start(&actions).await;
    let r = h.request("hang", &[]);
    let nonce = r.nonce;
    h.send(r).await;
    let pgid: u32 = eventually("the action's pgid", WAIT, async || {
        std::fs::read_to_string(h.path().join("pgid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    let steps = h.wait_steps(Some(nonce), 2).await;
    match steps.as_slice() {
        [
            ActionStep::Started,
            ActionStep::Finished {
                exit_code: None,
                timed_out: true,
                duration_ms,
                ..
            },
        ] => assert!((2_000..10_000).contains(duration_ms), "{duration_ms} ms"),
        other => panic!("not killed at its timeout: {other:?}"),
    }
    eventually("the action's process group gone", WAIT, async || {
        let left = group_members(pgid);
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    eventually("counted as timed out", WAIT, async || {
        let a = h.status().unwrap().actions;
        if a.timed_out == 1 { Ok(()) } else { Err(a) }
    })
    .await;
}

fn comm(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let state = stat[close + 1..].split_whitespace().next()?;
    (state != "Z").then(|| stat[open + 1..close].to_owned())
}

/// The pids of running (not zombie) processes named `name`.
fn running_named(name: &str) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| comm(*p).as_deref() == Some(name))
        .collect();
    out.sort();
    out
}

/// Kills the stand-in CAD clients a test left (they outlive the agent by
/// design).
struct Reap(String);

impl Drop for Reap {
    fn drop(&mut self) {
        for p in running_named(&self.0) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(p.to_string())
                .status();
        }
    }
}

/// `restart_process` kills the running stand-in "CAD client" and starts
/// it again, detached: a new pid runs, the old one is gone, the audit says
/// finished with exit 0 and names both; the new one outlives the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_process_restarts_the_watched_cad_client() {
    // "cadclient" and a suffix of its own (15 bytes, Linux's whole comm):
    // the action kills every process of its name, and other tests (the
    // service tests, another checkout's run) have their "cadclient"s.
    let name = format!("cadclient-{:05x}", rand::random::<u32>() & 0xf_ffff);
    let _reap = Reap(name.clone());
    let dir = TempDir::new().unwrap();
    let cad = dir.path().join(&name);
    std::fs::copy(muster_testkit::program("sleep"), &cad).unwrap();
    let mut old = KillOnDrop(
        Command::new(&cad)
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let old_pid = old.id();
    eventually("the stand-in CAD client running", WAIT, async || {
        comm(old_pid).as_deref() == Some(name.as_str())
    })
    .await;
    let actions = format!(
        "[[action]]\nname = \"restart-cad-client\"\nkind = \"restart_process\"\nprocess = \"{name}\"\n\
         start = [\"{}\", \"600\"]\ntimeout = \"20s\"\nrate = \"3 per 1h\"\n",
        cad.display()
    );
    let mut h = Harness::start(&actions).await;
    let r = h.request("restart-cad-client", &[]);
    let nonce = r.nonce;
    h.send(r).await;
    let (stdout, _) = assert_finished(&h.wait_steps(Some(nonce), 2).await, Some(0));
    // The old one was killed (the test, its parent, reaps it).
    let status = eventually("the old CAD client gone", WAIT, async || {
        old.try_wait().unwrap()
    })
    .await;
    assert!(!status.success(), "{status}");
    let new = running_named(&name);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new[0], old_pid);
    assert!(
        stdout.contains(&format!("killed [{old_pid}]")) && stdout.contains(&format!("{}", new[0])),
        "{stdout}"
    );
    // Detached: it outlives the agent.
    h.stop_agent().await;
    assert_eq!(
        running_named(&name),
        new,
        "the restarted client died with the agent"
    );
}

/// A stop kills a running action and audits it before the agent goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_kills_and_audits_what_runs() {
    let actions = format!(
        "[[action]]\nname = \"long\"\nkind = \"command\"\nargv = [\"{}\", \"600\"]\ntimeout = \"10min\"\n",
        muster_testkit::program("sleep"),
    );
    let mut h = Harness::start(&actions).await;
    let r = h.request("long", &[]);
    let nonce = r.nonce;
    h.send(r).await;
    h.wait_steps(Some(nonce), 1).await;
    eventually("the action running", WAIT, async || {
        h.status().is_some_and(|s| s.actions.running == ["long"])
    })
    .await;
    h.stop_agent().await;
    // Its last records went out before the departure; a new run resends
    // whatever was not acked.
    h.start_agent().await;
    let steps = h.wait_steps(Some(nonce), 2).await;
    match steps.as_slice() {
        [
            ActionStep::Started,
            ActionStep::Finished {
                exit_code: None,
                timed_out: false,
                stderr,
                ..
            },
        ] => assert!(stderr.contains("the agent is stopping"), "{stderr}"),
        other => panic!("{other:?}"),
    }
}

/// `collect_diagnostics` ships the status file, `once` and the log tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_diagnostics_ships_status_once_and_the_log() {
    let h = Harness::start(
        "[[action]]\nname = \"diag\"\nkind = \"collect_diagnostics\"\ntimeout = \"60s\"\n",
    )
    .await;
    eventually("the status file", WAIT, async || h.status().is_some()).await;
    let r = h.request("diag", &[]);
    let nonce = r.nonce;
    h.send(r).await;
    let (stdout, _) = assert_finished(&h.wait_steps(Some(nonce), 2).await, Some(0));
    for want in [
        "== status",
        "\"unit\": \"metro-fire/E12\"",
        "== once ==",
        "\"agent_version\"",
        "== log",
    ] {
        assert!(stdout.contains(want), "{want:?} in {stdout}");
    }
    assert!(stdout.len() <= muster_proto::action::MAX_ACTION_OUTPUT);
}
