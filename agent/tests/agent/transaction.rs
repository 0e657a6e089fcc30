//! Synthetic transactions (issue 18) against the testkit's real CAD API
//! server: a real login flow whose tokens expire, steps that slow down or
//! answer the wrong body, a 50 MB body, secrets that must stay secret, and
//! the config refusals (also through `muster-agent check-config`). The last
//! test runs the built agent publishing to a real Mosquitto.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use muster_agent::config::{Config, ConfigError};
use muster_agent::probe::{Probe, ProbeStats};
use muster_proto::{Body, ErrorClass, Outcome, Payload, ProbeKind, ProbeResult};
use muster_testkit::cad_api::CadApi;

use crate::servers;

const BIN: &str = env!("CARGO_BIN_EXE_muster-agent");
const PASSWORD: &str = "Tr0ub4dor&3-secret";
const HEAD: &str =
    "agency = \"metro-fire\"\nunit_id = \"E12\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";

/// A credentials file (mode 0600) in `dir`: `user` and `password`.
fn credentials(dir: &Path) -> PathBuf {
    let path = dir.join("cad-probe.toml");
    std::fs::write(
        &path,
        format!("user = \"disp1\"\npassword = \"{PASSWORD}\"\nunused = \"x\"\n"),
    )
    .unwrap();
    chmod(&path, 0o600);
    path
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The dispatcher's flow: log in, fetch the unit's assignments, open an
/// incident. `probe` is extra probe-level TOML, `login` extra TOML for the
/// login step.
fn flow(api: &CadApi, creds: &Path, probe: &str, login: &str) -> String {
    format!(
        r#"
[[probe]]
name = "cad-dispatch"
kind = "transaction"
interval = "10s"
timeout = "2s"
credentials = "{creds}"
{probe}
[[probe.step]]
name = "login"
method = "POST"
url = "{login_url}"
headers = {{ "Content-Type" = "application/json" }}
body = '{{"user":"{{{{cred.user}}}}","password":"{{{{cred.password}}}}"}}'
expect_status = 200
extract = {{ token = {{ json = "/token" }} }}
{login}
[[probe.step]]
name = "assignments"
url = "{units}/{{{{unit}}}}/assignments?agency={{{{agency}}}}"
headers = {{ Authorization = "Bearer {{{{token}}}}" }}
expect_status = 200
body_contains = "assignments"
[[probe.step]]
name = "incidents"
method = "POST"
url = "{incidents}"
headers = {{ Authorization = "Bearer {{{{token}}}}", "Content-Type" = "application/json" }}
body = '{{"unit":"{{{{unit}}}}","kind":"probe"}}'
expect_status = 201
extract = {{ incident = {{ json = "/id" }} }}
"#,
        creds = creds.display(),
        login_url = api.url("/api/login"),
        units = api.url("/api/units"),
        incidents = api.url("/api/incidents"),
    )
}

fn parse(toml: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{HEAD}{toml}"))
}

fn probe(toml: &str, stats: &Arc<ProbeStats>) -> Probe {
    let cfg = parse(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    Probe::with_stats(cfg.probes[0].clone(), stats.clone()).unwrap()
}

fn names(rs: &[ProbeResult]) -> Vec<&str> {
    rs.iter().map(|r| r.name.as_str()).collect()
}

/// Sequential phases never add up to more than the total.
fn assert_consistent(r: &ProbeResult) {
    let p = &r.phases;
    let sum: u64 = [p.dns_us, p.connect_us, p.tls_us, p.ttfb_us]
        .iter()
        .map(|x| x.unwrap_or(0) as u64)
        .sum();
    assert!(
        sum <= p.total_us as u64,
        "{}: phases {p:?} exceed the total",
        r.name
    );
}

/// Neither the password nor any token the server issued is in `text`.
fn assert_no_secret(api: &CadApi, text: &str, what: &str) {
    assert!(!text.contains(PASSWORD), "the password is in {what}");
    let tokens = api.tokens();
    assert!(!tokens.is_empty(), "the server issued no token");
    for t in tokens {
        assert!(!text.contains(&t), "a token is in {what}");
    }
}

#[tokio::test]
async fn three_steps_run_in_order_with_their_own_phases() {
    let dir = servers::scratch("txn-ok");
    let api = CadApi::start(&[("disp1", PASSWORD)]);
    let stats = Arc::new(ProbeStats::default());
    let p = probe(&flow(&api, &credentials(&dir), "", ""), &stats);
    let rs = p.run_all().await;
    assert_eq!(
        names(&rs),
        [
            "cad-dispatch",
            "cad-dispatch.login",
            "cad-dispatch.assignments",
            "cad-dispatch.incidents"
        ]
    );
    for r in &rs {
        assert_eq!(r.kind, ProbeKind::Transaction);
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
        assert!(r.detail.is_empty(), "{r:?}");
    }
    // Each step has its own connection and phases.
    for r in &rs[1..] {
        assert!(r.phases.dns_us.is_some(), "{r:?}");
        assert!(r.phases.connect_us.is_some(), "{r:?}");
        assert!(r.phases.ttfb_us.is_some(), "{r:?}");
        assert_consistent(r);
    }
    assert_eq!(
        rs[1..].iter().map(|r| r.status).collect::<Vec<_>>(),
        [Some(200), Some(200), Some(201)]
    );
    // The whole run covers every step.
    let steps: u64 = rs[1..].iter().map(|r| r.phases.total_us as u64).sum();
    assert!(rs[0].phases.total_us as u64 >= steps, "{rs:?}");
    assert_eq!(rs[0].status, Some(201), "the last step's status");
    // Targets are the URL templates as configured.
    assert_eq!(rs[0].target, api.url("/api/login"));
    assert_eq!(
        rs[2].target,
        format!(
            "{}/{{{{unit}}}}/assignments?agency={{{{agency}}}}",
            api.url("/api/units")
        )
    );
    // {{unit}} went into the path, the token was accepted, each step ran once.
    assert_eq!(api.hits("/api/units/E12/assignments"), 1);
    assert_eq!(api.hits("/api/login"), 1);
    assert_eq!(api.hits("/api/incidents"), 1);
    assert_eq!(stats.body_cuts.load(Ordering::Relaxed), 0);
    assert_no_secret(&api, &format!("{rs:?}"), "the results");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_expired_token_fails_the_assignments_step_with_its_401() {
    let dir = servers::scratch("txn-expired");
    let api = CadApi::start(&[("disp1", PASSWORD)]);
    let p = probe(&flow(&api, &credentials(&dir), "", ""), &Arc::default());
    // Issued for 300 ms; the assignments request is answered after 600 ms.
    api.set_token_ttl(Duration::from_millis(300));
    api.set_delay("/api/units/", 600);
    let rs = p.run_all().await;
    assert_eq!(
        names(&rs),
        [
            "cad-dispatch",
            "cad-dispatch.login",
            "cad-dispatch.assignments"
        ],
        "the step after the failure does not run"
    );
    assert_eq!(rs[0].outcome, Outcome::Fail(ErrorClass::BadStatus));
    assert_eq!(
        rs[0].detail,
        "step \"assignments\": status 401, expected 200"
    );
    assert_eq!(rs[0].status, Some(401));
    assert_eq!(rs[1].outcome, Outcome::Ok);
    assert_eq!(rs[2].outcome, Outcome::Fail(ErrorClass::BadStatus));
    assert_eq!(rs[2].status, Some(401));
    assert_eq!(rs[2].detail, "status 401, expected 200");
    assert_eq!(api.hits("/api/incidents"), 0);

    // A fresh token works again on the next run.
    api.set_delay("/api/units/", 0);
    api.set_token_ttl(Duration::from_secs(600));
    let rs = p.run_all().await;
    assert_eq!(rs[0].outcome, Outcome::Ok, "{rs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_step_that_slows_down_shows_in_its_ttfb_then_times_out_by_name() {
    let dir = servers::scratch("txn-slow");
    let api = CadApi::start(&[("disp1", PASSWORD)]);
    let p = probe(&flow(&api, &credentials(&dir), "", ""), &Arc::default());
    let fast = p.run_all().await;
    assert_eq!(fast[0].outcome, Outcome::Ok, "{fast:?}");
    assert!(fast[2].phases.ttfb_us.unwrap() < 300_000, "{:?}", fast[2]);

    api.set_delay("/api/units/", 400);
    let slow = p.run_all().await;
    assert_eq!(slow[0].outcome, Outcome::Ok, "{slow:?}");
    let (ttfb, total) = (slow[2].phases.ttfb_us.unwrap(), slow[2].phases.total_us);
    assert!(ttfb >= 400_000 && total >= 400_000, "{:?}", slow[2].phases);
    // Only that step slowed down.
    assert!(slow[1].phases.ttfb_us.unwrap() < 300_000, "{:?}", slow[1]);
    assert!(slow[3].phases.ttfb_us.unwrap() < 300_000, "{:?}", slow[3]);
    assert!(slow[0].phases.total_us >= 400_000);

    // Past the transaction's 2 s timeout: a Timeout naming the step.
    api.set_delay("/api/units/", 5_000);
    let t = Instant::now();
    let out = p.run_all().await;
    assert!(
        t.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        names(&out),
        [
            "cad-dispatch",
            "cad-dispatch.login",
            "cad-dispatch.assignments"
        ]
    );
    assert_eq!(out[0].outcome, Outcome::Fail(ErrorClass::Timeout));
    assert!(
        out[0]
            .detail
            .starts_with("step \"assignments\": no answer within 2s"),
        "{}",
        out[0].detail
    );
    assert!(out[0].phases.total_us >= 1_900_000, "{:?}", out[0].phases);
    assert_eq!(out[2].outcome, Outcome::Fail(ErrorClass::Timeout));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wrong_body_is_a_mismatch_or_an_extract_failure_naming_the_step() {
    let dir = servers::scratch("txn-wrong");
    let api = CadApi::start(&[("disp1", PASSWORD)]);
    let creds = credentials(&dir);
    let p = probe(&flow(&api, &creds, "", ""), &Arc::default());
    api.set_wrong_body("/api/units/", true);
    let rs = p.run_all().await;
    assert_eq!(rs[0].outcome, Outcome::Fail(ErrorClass::BodyMismatch));
    assert!(
        rs[0].detail.starts_with("step \"assignments\": the body (")
            && rs[0].detail.ends_with("does not contain \"assignments\""),
        "{}",
        rs[0].detail
    );
    assert_eq!(rs.len(), 3);
    api.set_wrong_body("/api/units/", false);

    // A login that answers without the token: nothing to extract.
    api.set_wrong_body("/api/login", true);
    let rs = p.run_all().await;
    assert_eq!(rs[0].outcome, Outcome::Fail(ErrorClass::Extract), "{rs:?}");
    assert_eq!(
        rs[0].detail,
        "step \"login\": no value at \"/token\" in the JSON body for {{token}}"
    );
    assert_eq!(names(&rs), ["cad-dispatch", "cad-dispatch.login"]);
    assert_eq!(api.hits("/api/units/"), 1, "no step ran after the login");

    // The same with body_contains on the login: a BodyMismatch first.
    let p = probe(
        &flow(&api, &creds, "", "body_contains = \"token\""),
        &Arc::default(),
    );
    let rs = p.run_all().await;
    assert_eq!(rs[0].outcome, Outcome::Fail(ErrorClass::BodyMismatch));
    assert!(
        rs[0].detail.starts_with("step \"login\": "),
        "{}",
        rs[0].detail
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_50_mb_body_is_cut_at_the_limit_counted_and_never_held() {
    let api = CadApi::start(&[]);
    let stats = Arc::new(ProbeStats::default());
    let big = api.url("/api/big?bytes=50000000");
    let p = probe(
        &format!(
            r#"
[[probe]]
name = "big"
kind = "transaction"
timeout = "10s"
body_max_bytes = "1MiB"
[[probe.step]]
name = "fetch"
url = "{big}"
body_contains = "xxxx"
[[probe.step]]
name = "parse"
url = "{big}"
extract = {{ v = {{ json = "/v" }} }}
"#
        ),
        &stats,
    );
    let rs = p.run_all().await;
    // The prefix was judged: it holds the text, so the first step passed.
    assert_eq!(rs[1].outcome, Outcome::Ok, "{rs:?}");
    // The second cannot parse a cut body as JSON.
    assert_eq!(rs[0].outcome, Outcome::Fail(ErrorClass::Extract), "{rs:?}");
    assert_eq!(
        rs[0].detail,
        "step \"parse\": the body was cut at body_max_bytes (1048576 bytes) and is not whole JSON, so {{v}} cannot be extracted"
    );
    assert_eq!(
        stats.body_cuts.load(Ordering::Relaxed),
        2,
        "both cuts counted"
    );
    // The agent stopped reading and closed: the server could not write
    // much past the limit (socket buffers), far from 50 MB each.
    let sent = api.bytes_sent("/api/big");
    eprintln!("the server wrote {sent} bytes of two 50 MB bodies");
    assert!(sent < 2 * 16_000_000, "the server wrote {sent} bytes");
}

#[tokio::test]
async fn secrets_stay_out_of_results_even_when_steps_fail() {
    let dir = servers::scratch("txn-secret");
    let api = CadApi::start(&[("disp1", PASSWORD)]);
    let p = probe(&flow(&api, &credentials(&dir), "", ""), &Arc::default());
    let mut all = Vec::new();
    all.extend(p.run_all().await);
    api.set_token_ttl(Duration::from_millis(1));
    api.set_delay("/api/units/", 50);
    all.extend(p.run_all().await);
    api.set_delay("/api/units/", 0);
    api.set_token_ttl(Duration::from_secs(600));
    api.set_wrong_body("/api/incidents", true);
    all.extend(p.run_all().await);
    assert!(all.iter().any(|r| r.outcome != Outcome::Ok));
    let json = serde_json::to_string(&all).unwrap();
    assert_no_secret(&api, &json, "the results");
    let debug = format!(
        "{:?}",
        Config::parse(&format!("{HEAD}{}", flow(&api, &credentials(&dir), "", ""))).unwrap()
    );
    assert!(
        !debug.contains(PASSWORD),
        "the password is in the config's Debug"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each bad transaction names its key.
#[test]
fn bad_transactions_are_refused_naming_the_key() {
    let dir = servers::scratch("txn-config");
    let creds = credentials(&dir);
    let open = dir.join("open.toml");
    std::fs::write(&open, "password = \"x\"\n").unwrap();
    chmod(&open, 0o640);
    let notoml = dir.join("bad.toml");
    std::fs::write(&notoml, format!("password = {PASSWORD}\n")).unwrap();
    chmod(&notoml, 0o600);
    let missing = dir.join("missing.toml");
    let step = |name: &str, extra: &str| {
        format!("[[probe.step]]\nname = \"{name}\"\nurl = \"http://cad/api/{name}\"\n{extra}\n")
    };
    let txn = |probe: &str, steps: &str| {
        format!(
            "[[probe]]\nname = \"t\"\nkind = \"transaction\"\ncredentials = \"{}\"\n{probe}\n{steps}",
            creds.display()
        )
    };
    let many = (0..17)
        .map(|i| step(&format!("s{i}"), ""))
        .collect::<String>();
    let extracts = (0..17)
        .map(|i| format!("v{i} = {{ header = \"x-{i}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            txn("", &format!("{}{}", step("login", ""), step("a", "headers = { Authorization = \"Bearer {{token}}\" }"))),
            "probe[0].step[1].headers.Authorization",
            "{{token}} is not defined by an earlier step",
        ),
        (
            txn("", &format!(
                "{}{}",
                step("a", "headers = { Authorization = \"Bearer {{token}}\" }"),
                step("b", "extract = { token = { json = \"/token\" } }")
            )),
            "probe[0].step[0].headers.Authorization",
            "{{token}} is extracted by a later step (step[1])",
        ),
        (
            txn("", &step("a", "url = \"x\"").replace("url = \"http://cad/api/a\"\n", "")),
            "probe[0].step[0].url",
            "must start with http://",
        ),
        (
            txn("", &step("a", "method = \"POST\"\nbody = '{\"t\":\"{{token}}\"}'\nextract = { token = { json = \"/token\" } }")),
            "probe[0].step[0].body",
            "{{token}} is extracted by this same step",
        ),
        (
            txn("", &step("a", "extract = { token = { json = \"token\" } }")),
            "probe[0].step[0].extract.token.json",
            "is not a JSON pointer",
        ),
        (
            txn("", &step("a", "extract = { token = { json = \"/a~2\" } }")),
            "probe[0].step[0].extract.token.json",
            "a ~ must be followed by 0 or 1",
        ),
        (
            txn("", &step("a", "extract = { token = { json = \"/t\", header = \"x\" } }")),
            "probe[0].step[0].extract.token",
            "exactly one of json",
        ),
        (
            format!(
                "[[probe]]\nname = \"t\"\nkind = \"transaction\"\ncredentials = \"{}\"\n{}",
                missing.display(),
                step("a", "")
            ),
            "probe[0].credentials",
            "No such file",
        ),
        (
            format!(
                "[[probe]]\nname = \"t\"\nkind = \"transaction\"\ncredentials = \"{}\"\n{}",
                open.display(),
                step("a", "")
            ),
            "probe[0].credentials",
            "readable or writable by group or others (mode 0640)",
        ),
        (
            format!(
                "[[probe]]\nname = \"t\"\nkind = \"transaction\"\ncredentials = \"{}\"\n{}",
                notoml.display(),
                step("a", "")
            ),
            "probe[0].credentials",
            "is not TOML of name = \"secret\" strings (line 1)",
        ),
        (
            txn("", &step("a", "method = \"POST\"\nbody = '{{cred.pin}}'")),
            "probe[0].step[0].body",
            "{{cred.pin}}: no credential \"pin\" in",
        ),
        (
            format!(
                "[[probe]]\nname = \"t\"\nkind = \"transaction\"\n{}",
                step("a", "headers = { X-User = \"{{cred.user}}\" }")
            ),
            "probe[0].step[0].headers.X-User",
            "needs a credentials file",
        ),
        (
            txn("", &format!("{}{}", step("a", ""), step("a", ""))),
            "probe[0].step[1].name",
            "\"a\" is used by step[0]",
        ),
        (
            txn("", &step("Login", "")),
            "probe[0].step[0].name",
            "a-z 0-9 _ -",
        ),
        (
            txn("", &step(&"s".repeat(63), "")),
            "probe[0].step[0].name",
            "longer than 64",
        ),
        (txn("", &many), "probe[0].step", "17 steps; at most 16"),
        (
            txn("", &step("a", &format!("extract = {{ {extracts} }}"))),
            "probe[0].step",
            "17 extractions; at most 16",
        ),
        (txn("", ""), "probe[0].step", "at least one [[probe.step]]"),
        (
            txn("", &step("a", "").replace("http://cad/api/a", "http://{{host}}/api/a")),
            "probe[0].step[0].url",
            "variable in its host or port",
        ),
        (
            txn("", &step("a", "").replace("http://cad/api/a", "http://cad:{{port}}/api/a")),
            "probe[0].step[0].url",
            "variable in its host or port",
        ),
        (
            txn("", &step("a", "body = 'x'")),
            "probe[0].step[0].body",
            "a GET or HEAD request has no body",
        ),
        (
            txn("", &step("a", "headers = { Host = \"evil\" }")),
            "probe[0].step[0].headers.Host",
            "written by the agent",
        ),
        (
            txn("", &step("a", "method = \"TRACE\"")),
            "probe[0].step[0].method",
            "not one of GET, HEAD, POST, PUT, PATCH, DELETE",
        ),
        (
            txn("", &step("a", "headers = { X = \"{{ token }}\" }")),
            "probe[0].step[0].headers.X",
            "is not a variable",
        ),
        (
            txn("", &step("a", "headers = { X = \"{{token\" }")),
            "probe[0].step[0].headers.X",
            "has no closing",
        ),
        (
            txn("", &format!("{}{}", step("a", "extract = { t = { header = \"x-t\" } }"), step("b", "extract = { t = { header = \"x-t\" } }"))),
            "probe[0].step[1].extract.t",
            "already extracted by step[0]",
        ),
        (
            txn("", &step("a", "extract = { unit = { header = \"x-u\" } }")),
            "probe[0].step[0].extract.unit",
            "not unit, agency or cred",
        ),
        (
            txn("target = \"http://cad/\"", &step("a", "")),
            "probe[0].target",
            "each [[probe.step]] has its url",
        ),
        (
            txn("body_contains = \"ok\"", &step("a", "")),
            "probe[0].body_contains",
            "on each [[probe.step]]",
        ),
        (
            txn("body_max_bytes = \"17MiB\"", &step("a", "")),
            "probe[0].body_max_bytes",
            "between 1 byte and 16MiB",
        ),
        (
            "[[probe]]\nname = \"h\"\nkind = \"http\"\ntarget = \"http://cad/\"\ncredentials = \"/x\"\n".into(),
            "probe[0].credentials",
            "only applies to transaction probes",
        ),
        (
            format!(
                "[[probe]]\nname = \"t.a\"\nkind = \"http\"\ntarget = \"http://cad/\"\n{}",
                txn("", &step("a", ""))
            ),
            "probe[1].step[0].name",
            "\"t.a\", the name of another probe",
        ),
    ];
    for (toml, key, frag) in cases {
        let e = parse(&toml)
            .map(|c| panic!("accepted:\n{toml}\n{:?}", c.probes))
            .unwrap_err();
        assert_eq!(e.key(), Some(key), "{toml}\n{e}");
        let msg = e.to_string();
        assert!(msg.contains(frag), "{msg}\nlacks {frag:?}\n{toml}");
        assert!(!msg.contains(PASSWORD), "{msg} shows a secret");
    }
    // And the good one parses, typed.
    let c = parse(&txn(
        "body_max_bytes = \"1MiB\"",
        &format!(
            "{}{}",
            step("login", "method = \"post\"\nbody = '{{cred.user}}'\nextract = { token = { json = \"\" }, s = { header = \"X-Session\" } }"),
            step("a", "headers = { Authorization = \"Bearer {{token}} {{s}} {{unit}} {{agency}}\" }")
        ),
    ))
    .unwrap();
    let muster_agent::config::ProbeTarget::Transaction(t) = &c.probes[0].target else {
        panic!("{:?}", c.probes[0]);
    };
    assert_eq!(t.steps.len(), 2);
    assert_eq!(t.body_max_bytes, 1 << 20);
    assert_eq!((t.unit.as_str(), t.agency.as_str()), ("E12", "metro-fire"));
    assert_eq!(t.steps[0].extract.len(), 2);
    assert_eq!(c.probes[0].kind(), ProbeKind::Transaction);
    assert_eq!(c.probes[0].timeout, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Remote config may set `[[probe]]`: it must not point a transaction at
/// another local secret file and send its contents away.
#[test]
fn a_remote_document_may_use_only_credentials_files_the_local_config_names() {
    let dir = servers::scratch("txn-remote");
    let api = CadApi::start(&[]);
    let creds = credentials(&dir);
    let other = dir.join("other-secret.toml");
    std::fs::write(&other, "user = \"root\"\npassword = \"elsewhere\"\n").unwrap();
    chmod(&other, 0o600);
    let local = format!("{HEAD}{}", flow(&api, &creds, "", ""));
    let elsewhere = local.replace(&creds.display().to_string(), &other.display().to_string());
    let e = Config::parse_merged(&elsewhere, local.clone().into()).unwrap_err();
    assert_eq!(e.key(), Some("probe[0].credentials"), "{e}");
    assert!(
        e.to_string()
            .contains("is not a credentials file the local configuration names"),
        "{e}"
    );
    // The local file, with the document's own steps and timing: accepted.
    let retimed = local.replace("timeout = \"2s\"", "timeout = \"3s\"");
    let c = Config::parse_merged(&retimed, local.clone().into()).unwrap();
    assert_eq!(c.probes[0].timeout, Duration::from_secs(3));
    // Locally, the other file is fine.
    assert!(Config::parse(&elsewhere).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_refuses_an_open_credentials_file_and_an_undefined_variable() {
    let dir = servers::scratch("txn-check");
    let api = CadApi::start(&[]);
    let creds = credentials(&dir);
    let cfg = servers::agent_config(&dir, "", &flow(&api, &creds, "", ""));
    let run = |cfg: &Path| {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(cfg)
            .output()
            .unwrap()
    };
    let out = run(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    chmod(&creds, 0o644);
    let out = run(&cfg);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("probe[0].credentials: ")
            && err.contains("readable or writable by group or others (mode 0644)"),
        "{err}"
    );
    chmod(&creds, 0o600);

    let bad = servers::agent_config(
        &dir,
        "",
        &flow(&api, &creds, "", "").replace("Bearer {{token}}\" }", "Bearer {{tokn}}\" }"),
    );
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "probe[0].step[1].headers.Authorization: {{tokn}} is not defined by an earlier step"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The text without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The built agent runs the flow every second and a 50 MB step beside it,
/// publishing to a real broker: the overall and step results arrive, the
/// published bytes, the log (at debug) and status.json hold no secret, the
/// cut is counted in status.json, and the agent's peak RSS (VmHWM) grows
/// by far less than 50 MB while it reads 50 MB bodies.
#[test]
fn the_agent_publishes_transactions_and_never_a_secret() {
    let broker = muster_testkit::Mosquitto::start();
    let api = CadApi::start(&[("disp1", PASSWORD)]);
    let dir = servers::scratch("txn-run");
    let creds = credentials(&dir);
    let probes = format!(
        "{}\n[[probe]]\nname = \"big\"\nkind = \"transaction\"\ninterval = \"1s\"\ntimeout = \"1s\"\nbody_max_bytes = \"1MiB\"\n[[probe.step]]\nname = \"fetch\"\nurl = \"{}\"\n",
        flow(&api, &creds, "", "")
            .replace("interval = \"10s\"", "interval = \"1s\"")
            .replace("timeout = \"2s\"", "timeout = \"1s\""),
        api.url("/api/big?bytes=50000000"),
    );
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "agency = \"metro-fire\"\nunit_id = \"E12\"\ndata_dir = {:?}\n[mqtt]\nurl = \"{}\"\n[sampling]\ninterval = \"1s\"\n[log]\nlevel = \"debug\"\n{}{probes}",
            dir.display().to_string(),
            broker.url(),
            muster_testkit::agent_trust_toml(),
        ),
    )
    .unwrap();

    let mut sub = muster_testkit::KillOnDrop(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args([
                "-t",
                "muster/v1/metro-fire/E12/telemetry",
                "-F",
                "%x",
                "-q",
                "1",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (Debian's mosquitto-clients) is a test dependency"),
    );
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let out = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if line_tx.send(l).is_err() {
                break;
            }
        }
    });
    muster_testkit::wait_until("mosquitto_sub subscribed", Duration::from_secs(10), || {
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args(["-t", "muster/v1/metro-fire/E12/telemetry", "-n"])
            .status();
        line_rx.recv_timeout(Duration::from_millis(200)).is_ok()
    });

    // The big step gets a small body until the agent is warmed up.
    api.set_wrong_body("/api/big", true);
    let mut agent = muster_testkit::KillOnDrop(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let err = agent.stderr.take().unwrap();
    let log2 = log.clone();
    let log_thread = std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let mut g = log2.lock().unwrap();
            g.push_str(&l);
            g.push('\n');
        }
    });

    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut published = Vec::<u8>::new();
    let mut peak_kib = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = |seen: &std::collections::BTreeMap<String, usize>| {
        [
            "cad-dispatch",
            "cad-dispatch.login",
            "cad-dispatch.assignments",
            "cad-dispatch.incidents",
            "big",
            "big.fetch",
        ]
        .iter()
        .all(|n| seen.contains_key(*n))
    };
    while !done(&seen) && Instant::now() < deadline {
        if let Some((_, hwm)) = muster_testkit::rss_kib(agent.id()) {
            peak_kib = peak_kib.max(hwm);
        }
        let Ok(line) = line_rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if line.is_empty() {
            continue;
        }
        let raw = hex(&line);
        published.extend_from_slice(&raw);
        let msg = muster_proto::decode(&raw)
            .expect("valid wire messages")
            .message;
        let records = match msg.body {
            Body::Record(r) => vec![r],
            Body::Batch(b) => b,
            _ => continue,
        };
        for r in records {
            if let Payload::Probe(p) = r.payload
                && p.kind == ProbeKind::Transaction
            {
                if p.name.starts_with("cad-dispatch") {
                    assert_eq!(p.outcome, Outcome::Ok, "{p:?}");
                } else {
                    assert_eq!(p.outcome, Outcome::Ok, "the prefix passes: {p:?}");
                }
                *seen.entry(p.name).or_default() += 1;
            }
        }
    }
    assert!(done(&seen), "{seen:?}");
    // Warmed up: every probe ran and published. Now the 50 MB bodies.
    let (_, before_kib) = muster_testkit::rss_kib(agent.id()).expect("the agent runs");
    api.set_wrong_body("/api/big", false);
    // status.json counts the cuts; the 50 MB step keeps running meanwhile
    // (the broker holds no collector to ack, so few records are published).
    muster_testkit::wait_until(
        "status.json counts 5 body cuts",
        Duration::from_secs(30),
        || {
            if let Some((_, hwm)) = muster_testkit::rss_kib(agent.id()) {
                peak_kib = peak_kib.max(hwm);
            }
            muster_agent::status::read(&dir).is_ok_and(|s| s.probes.body_cuts >= 5)
        },
    );
    let status = std::fs::read_to_string(dir.join("status.json")).unwrap();
    let text = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("response bodies cut at body_max_bytes"),
        "{text}"
    );

    muster_testkit::signal(agent.id(), "TERM");
    let _ =
        muster_testkit::eventually_blocking("the agent's exit", Duration::from_secs(20), || {
            agent.try_wait().unwrap()
        });
    let _ = log_thread.join();
    let log = strip_ansi(&log.lock().unwrap());
    assert!(
        log.contains("body_cuts=1"),
        "the first cut is logged with its fields:\n{log}"
    );

    let published = String::from_utf8_lossy(&published).into_owned();
    assert!(published.contains("cad-dispatch.assignments"));
    assert_no_secret(&api, &published, "the published bytes");
    assert_no_secret(&api, &log, "the agent's log");
    assert_no_secret(&api, &status, "status.json");
    // Holding a 50 MB body would raise the peak by 50 MB; reading 1 MiB of
    // each may raise it by little more than that.
    eprintln!(
        "agent peak RSS (VmHWM) {before_kib} KiB before the 50 MB bodies, {peak_kib} KiB after 5"
    );
    assert!(
        peak_kib < before_kib + 8 * 1024,
        "the agent's peak RSS rose from {before_kib} to {peak_kib} KiB while reading 50 MB bodies"
    );
    assert!(
        api.bytes_sent("/api/big") < 5 * 16_000_000,
        "the server wrote {} bytes for 5 runs",
        api.bytes_sent("/api/big")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
