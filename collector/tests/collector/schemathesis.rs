//! Schemathesis against the running collector: property-based requests
//! generated from the served OpenAPI document, once with an agency's token
//! and once with the admin token, every check on: responses conform to the
//! document (status, content type, headers, schema), schema-valid requests
//! are accepted, schema-violating ones refused, authentication is not
//! ignored. Its failures fail this test.
//!
//! The tool (pinned in `tests/schemathesis/requirements.txt`) is installed
//! by `tests/run.sh` into `target/schemathesis-venv`; `SCHEMATHESIS` names
//! another binary. A missing tool fails the test, it never skips.

use std::path::PathBuf;
use std::process::Command;

use muster_proto::{BootId, Payload};

use crate::harness::*;

fn schemathesis() -> PathBuf {
    let bin = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/schemathesis-venv/bin/schemathesis"
            ))
        });
    assert!(
        bin.is_file(),
        "{} is missing: schemathesis is a required test dependency. Run tests/run.sh \
         (it installs tests/schemathesis/requirements.txt into target/schemathesis-venv), \
         or set SCHEMATHESIS to its path",
        bin.display()
    );
    bin
}

/// One bounded run; the output, and whether it passed.
fn run(
    bin: &PathBuf,
    addr: std::net::SocketAddr,
    token: &str,
    report: &std::path::Path,
) -> (bool, String) {
    std::fs::create_dir_all(report).unwrap();
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/schemathesis/schemathesis.toml"
    );
    let out = Command::new(bin)
        .args(["--config-file", config])
        .arg("run")
        .arg(format!("http://{addr}/api/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Every check; none is wrong by design for this API (413 counts as
        // a refusal: see schemathesis.toml).
        .args(["--checks", "all"])
        // The SSE stream never ends: a request to it would only time out.
        // tests/collector/scoping.rs and limits.rs test it.
        .args(["--exclude-path", "/api/v1/stream"])
        .args(["--max-examples", "25"])
        .args(["--request-timeout", "5"])
        .args(["--max-time", "25"])
        .args(["--workers", "2"])
        .args(["--seed", &seed])
        .args(["--warnings", "off"])
        .arg("--report-dir")
        .arg(report)
        // Its cache directory (.schemathesis/) goes there too.
        .current_dir(report)
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_an_agency_token_or_the_admin_token() {
    let bin = schemathesis();
    let w = World::start("").await;
    let c = w.c();
    // A few units of both agencies, with samples of each kind and a
    // transition, so the operations have data to return.
    let a = w.agent("agent").await;
    let boot = BootId(0x5c4e);
    let units = [
        unit("metro-fire", "E1"),
        unit("metro-fire", "L2"),
        unit("county-police", "P7"),
    ];
    for u in &units {
        a.presence(u, online(boot, 1, T0, true)).await;
        a.record(u, rec(boot, 1, T0, host(20.0))).await;
        a.record(
            u,
            rec(boot, 2, T0 + 1_000, probe("cad-api", "https://cad", true)),
        )
        .await;
    }
    for u in &units {
        c.wait_unit(u, "records in", |v| v["seq"]["received"] == 2)
            .await;
    }
    // An announced shutdown (a v2 announcement record), so samples and the
    // strip have the new shapes to return.
    a.record(
        &units[0],
        rec(
            boot,
            3,
            T0 + 1_500,
            Payload::Presence(announcement(boot, T0 + 1_500)),
        ),
    )
    .await;
    c.wait_unit(&units[0], "announced", |v| v["seq"]["received"] == 3)
        .await;
    a.presence(&units[1], online(boot, 1, T0 + 2_000, false))
        .await;
    c.wait_unit(&units[1], "offline", |v| v["status"] == "lost")
        .await;

    let addr = c.addr;
    let report = w.dir.path().join("schemathesis");
    let (fire, admin) = tokio::task::spawn_blocking(move || {
        let fire = run(&bin, addr, FIRE, &report.join("agency"));
        let admin = run(&bin, addr, ADMIN, &report.join("admin"));
        (fire, admin)
    })
    .await
    .unwrap();
    for (who, (ok, out)) in [("agency token", fire), ("admin token", admin)] {
        assert!(ok, "schemathesis with the {who} failed:\n{out}");
        assert!(
            out.contains("passed") && !out.contains("No operations"),
            "schemathesis with the {who} tested nothing:\n{out}"
        );
    }
}
