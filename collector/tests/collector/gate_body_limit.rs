//! The deploy gate's and the rollouts' body limits, one byte either side,
//! against the running collector's HTTP server: `POST /api/v1/gates` takes
//! a body of exactly 1 MiB past the size check (JSON whitespace only, so
//! the handler, reached only past that check, refuses it as no gate
//! definition: 400), and refuses one byte more with 413 before the handler
//! runs; `POST /api/v1/rollouts` the same at 1 MiB + 128 KiB.

use muster_testkit::http;
use serde_json::Value;

use crate::harness::*;

/// The documented limit ("≤ 1 MiB", and the OpenAPI document's 413), written
/// out: the test pins the number, not `feed::gates::MAX_BODY_BYTES`.
const LIMIT: usize = 1024 * 1024;

/// POSTs `len` bytes of JSON whitespace to `path`; the status and the
/// error's code and message.
async fn post_blank(c: &Collector, path: &str, len: usize) -> (u16, String, String) {
    let r = http::post(c.addr, path, Some(ADMIN), &vec![b' '; len]).await;
    let v: Value = r.json();
    let field = |k: &str| v["error"][k].as_str().unwrap_or_default().to_owned();
    (r.status, field("code"), field("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_body_of_exactly_1_mib_passes_the_size_check_and_one_byte_more_is_413() {
    let w = World::start("").await;

    // Exactly the limit: past the size check, refused by the handler's parse.
    let (status, code, message) = post_blank(w.c(), "/api/v1/gates", LIMIT).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"), "{message}");
    assert!(
        message.starts_with("the body is not a gate definition"),
        "the handler's own refusal, not a size check's: {message}"
    );

    // One byte over: the size check refuses it.
    let (status, code, message) = post_blank(w.c(), "/api/v1/gates", LIMIT + 1).await;
    assert_eq!(
        (status, code.as_str()),
        (413, "payload_too_large"),
        "{message}"
    );

    // The collector still answers, and defined no gate.
    let r = w.c().get("/api/v1/gates", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"], serde_json::json!([]));
}

/// A rollout's change (64 KiB of TOML, JSON-escaped: twice that) and a
/// target of 10,000 listed units (1 MiB), written out.
const ROLLOUT_LIMIT: usize = 2 * 64 * 1024 + 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_body_of_exactly_its_limit_passes_the_size_check_and_one_byte_more_is_413() {
    let w = World::start("").await;
    let (status, code, message) = post_blank(w.c(), "/api/v1/rollouts", ROLLOUT_LIMIT).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"), "{message}");
    assert!(
        message.starts_with("the body is not a rollout definition"),
        "{message}"
    );
    let (status, code, message) = post_blank(w.c(), "/api/v1/rollouts", ROLLOUT_LIMIT + 1).await;
    assert_eq!(
        (status, code.as_str()),
        (413, "payload_too_large"),
        "{message}"
    );
    let r = w.c().get("/api/v1/rollouts", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"], serde_json::json!([]));
}
