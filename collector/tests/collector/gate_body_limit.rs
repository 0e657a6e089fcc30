//! The deploy gate's body limit, one byte either side, against the running
//! collector's HTTP server: `POST /api/v1/gates` takes a body of exactly
//! 1 MiB past the size check (JSON whitespace only, so the handler, reached
//! only past that check, refuses it as no gate definition: 400), and
//! refuses one byte more with 413 before the handler runs.

use muster_testkit::http;
use serde_json::Value;

use crate::harness::*;

/// The documented limit ("≤ 1 MiB", and the OpenAPI document's 413), written
/// out: the test pins the number, not `feed::gates::MAX_BODY_BYTES`.
const LIMIT: usize = 1024 * 1024;

/// POSTs `len` bytes of JSON whitespace as a gate definition; the status
/// and the error's code and message.
async fn post_gate(c: &Collector, len: usize) -> (u16, String, String) {
    let r = http::post(c.addr, "/api/v1/gates", Some(ADMIN), &vec![b' '; len]).await;
    let v: Value = r.json();
    let field = |k: &str| v["error"][k].as_str().unwrap_or_default().to_owned();
    (r.status, field("code"), field("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_body_of_exactly_1_mib_passes_the_size_check_and_one_byte_more_is_413() {
    let w = World::start("").await;

    // Exactly the limit: past the size check, refused by the handler's parse.
    let (status, code, message) = post_gate(w.c(), LIMIT).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"), "{message}");
    assert!(
        message.starts_with("the body is not a gate definition"),
        "the handler's own refusal, not a size check's: {message}"
    );

    // One byte over: the size check refuses it.
    let (status, code, message) = post_gate(w.c(), LIMIT + 1).await;
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
