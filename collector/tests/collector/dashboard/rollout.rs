//! The staged rollout the browser test follows in the Rollouts panel:
//! started through the API with the admin token, applied by its first
//! unit (a config status record, as the agent sends it), judged, aborted,
//! and rolled back.

use std::time::Duration;

use muster_proto::{BootId, ConfigState, ConfigStatus, DocRef, DocScopeKind, Payload};
use muster_testkit::{eventually, http};
use serde_json::{Value, json};

use crate::harness::*;

/// Markup in a name from the API: the page must show it as text.
pub(super) const NAME: &str = "<b>probe</b> change";

/// Starts a rollout of a sampling change over two metro-fire units
/// (listed: the rest of the agency has announced departures a record
/// would undo), judged on `cad-api` after a 10 s soak; answers its id.
pub(super) async fn start(c: &Collector) -> String {
    let body = json!({
        "name": NAME,
        "change": "[sampling]\ninterval = \"10s\"\n",
        "target": {"agency": "metro-fire", "units": ["E1", "L3"]},
        "probe": "cad-api",
        "soak_ms": 10_000,
    });
    let r = http::post(
        c.addr,
        "/api/v1/rollouts",
        Some(ADMIN),
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["name"], NAME, "{v:#}");
    v["id"].as_str().unwrap().to_owned()
}

/// `POST /api/v1/rollouts/{id}/{action}` with the admin token.
pub(super) async fn act(c: &Collector, id: &str, action: &str) -> Value {
    let r = http::post(
        c.addr,
        &format!("/api/v1/rollouts/{id}/{action}"),
        Some(ADMIN),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{action}: {}", r.text());
    r.json()
}

/// Polls the rollout's detail until `cond` holds of it.
pub(super) async fn wait(
    c: &Collector,
    id: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    eventually(
        &format!("rollout {id}: {what}"),
        Duration::from_secs(20),
        || async {
            let v = c.json(&format!("/api/v1/rollouts/{id}"), ADMIN).await;
            if cond(&v) { Ok(v) } else { Err(v) }
        },
    )
    .await
}

/// The only unit issued a document so far, and the version issued (or,
/// reverting, re-issued: `revert_version`).
pub(super) fn issued(v: &Value) -> (String, u64) {
    let units = v["units"].as_array().unwrap();
    assert_eq!(units.len(), 1, "{v:#}");
    let u = &units[0];
    (
        u["unit"].as_str().unwrap().to_owned(),
        u["revert_version"]
            .as_u64()
            .or(u["version"].as_u64())
            .unwrap(),
    )
}

/// The unit reports its own document `version` applied and running.
pub(super) async fn report_applied(a: &Agent, unit_name: &str, seq: u64, at_ms: u64, version: u64) {
    let doc = DocRef {
        version,
        hash: [7; 32],
    };
    let status = ConfigStatus {
        doc: Some((DocScopeKind::Unit, doc)),
        state: ConfigState::Applied,
        running: [9; 32],
        running_agency: None,
        running_unit: Some(doc),
    };
    a.record(
        &unit("metro-fire", unit_name),
        rec(BootId(0x5eed), seq, at_ms, Payload::Config(status)),
    )
    .await;
}
