//! Enrolment by claim against the running collector: every answer of
//! `POST /api/v1/enroll` (validated against the served document), the
//! refusal to take over a unit, pending -> approve -> verify, revoke ->
//! verify false at once, the `enroll.max_pending` cap, the body limit, the
//! admin endpoints' tokens, and enrolments surviving a restart.

use muster_collector::enroll::UnitCredentials;
use serde_json::{Value, json};

use crate::harness::*;
use crate::openapi::Validator;
use muster_testkit::http::{self, Response};

const POLICE_ENROL: &str = "police-enrol-0123456789";
const PATROL: &str = "patrol-token-0123456789";
const PATROL_ENROL: &str = "patrol-enrol-0123456789";

/// county-police enrols automatically; state-patrol (a third agency) needs
/// approval (the default); at most 2 claims pending.
const EXTRA: &str = r#"
enroll_token = "police-enrol-0123456789"
enroll = "auto"
[[agency]]
name = "state-patrol"
token = "patrol-token-0123456789"
enroll_token = "patrol-enrol-0123456789"
[enroll]
max_pending = 2
"#;

/// A secret, its password (hex) and the hash the agent sends.
fn credential(seed: u8) -> (String, String) {
    let secret = [seed; 32];
    let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let hash = ring_sha256(&secret);
    (password, hash)
}

fn ring_sha256(b: &[u8]) -> String {
    // The collector's dev-dependencies include ring through rustls.
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Api<'a> {
    c: &'a Collector,
    doc: Value,
}

impl Api<'_> {
    async fn new(c: &Collector) -> Api<'_> {
        let doc = http::get(c.addr, "/api/v1/openapi.json", None).await.json();
        Api { c, doc }
    }

    /// Checks a response of `POST|GET template` against the document:
    /// the status is listed and the JSON body validates.
    fn check(&self, method: &str, template: &str, r: &Response) -> Value {
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "no {method} {template} in the document");
        let spec = &op["responses"][r.status.to_string()];
        assert!(
            spec.is_object(),
            "{method} {template} answered {}, which the document does not list: {}",
            r.status,
            r.text()
        );
        let spec = match spec.get("$ref").and_then(Value::as_str) {
            Some(p) => self.doc.pointer(p.strip_prefix('#').unwrap()).unwrap(),
            None => spec,
        };
        let schema = &spec["content"]["application/json"]["schema"];
        let body = r.json();
        let mut v = Validator::new(&self.doc);
        let name = schema["$ref"]
            .as_str()
            .and_then(|s| s.strip_prefix("#/components/schemas/"))
            .unwrap_or_else(|| panic!("{method} {template} {}: no schema $ref", r.status));
        if let Err(e) = v.schema(name, &body) {
            panic!("{method} {template} {}: {e}\n{body:#}", r.status);
        }
        body
    }

    async fn claim_raw(&self, token: Option<&str>, body: &[u8]) -> (u16, Value) {
        let r = http::post(self.c.addr, "/api/v1/enroll", token, body).await;
        let v = self.check("post", "/api/v1/enroll", &r);
        (r.status, v)
    }

    async fn claim(&self, token: &str, unit: &str, hash: &str) -> (u16, Value) {
        let body = json!({"unit": unit, "credential_sha256": hash}).to_string();
        self.claim_raw(Some(token), body.as_bytes()).await
    }

    async fn admin(&self, action: &str, agency: &str, unit: &str, token: &str) -> (u16, Value) {
        let template = format!("/api/v1/enrollments/{{agency}}/{{unit}}/{action}");
        let path = format!("/api/v1/enrollments/{agency}/{unit}/{action}");
        let r = http::post(self.c.addr, &path, Some(token), b"").await;
        let v = self.check("post", &template, &r);
        (r.status, v)
    }

    async fn list(&self, query: &str, token: &str) -> (u16, Value) {
        let r = http::get(
            self.c.addr,
            &format!("/api/v1/enrollments{query}"),
            Some(token),
        )
        .await;
        let v = self.check("get", "/api/v1/enrollments", &r);
        (r.status, v)
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_enrolment_answers_and_refuses_takeover() {
    let w = World::start(EXTRA).await;
    let c = w.c();
    let api = Api::new(c).await;
    let reg = c.registry.clone().expect("registry");
    let e12 = unit("county-police", "E12");
    let (pw1, h1) = credential(1);
    let (pw2, h2) = credential(2);

    // 201: active at once, with the collector's keys.
    let (s, v) = api.claim(POLICE_ENROL, "E12", &h1).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "active");
    assert!(v["collector_keys"].is_array());
    assert!(
        reg.verify(&e12, pw1.as_bytes()),
        "an active unit's password"
    );
    assert!(!reg.verify(&e12, pw2.as_bytes()), "another password");
    assert!(
        !reg.verify(&e12, h1.as_bytes()),
        "the hash is not the password"
    );
    assert!(
        !reg.verify(&unit("metro-fire", "E12"), pw1.as_bytes()),
        "the same unit name in another agency is another unit"
    );

    // 200: the same credential again changes nothing.
    let (s, v) = api.claim(POLICE_ENROL, "E12", &h1).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("active")), "{v}");

    // 409: a claim cannot take over an enrolled unit.
    let (s, v) = api.claim(POLICE_ENROL, "E12", &h2).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    assert!(reg.verify(&e12, pw1.as_bytes()), "the owner still verifies");
    assert!(!reg.verify(&e12, pw2.as_bytes()), "the claimant does not");

    // 400s: bad unit id, bad hash, bad JSON, unknown field.
    for (body, what) in [
        (
            json!({"unit": "E/12", "credential_sha256": h1}).to_string(),
            "unit with /",
        ),
        (
            json!({"unit": "", "credential_sha256": h1}).to_string(),
            "empty unit",
        ),
        (
            json!({"unit": "x".repeat(65), "credential_sha256": h1}).to_string(),
            "long unit",
        ),
        (
            json!({"unit": "E13", "credential_sha256": h1.to_uppercase()}).to_string(),
            "uppercase hash",
        ),
        (
            json!({"unit": "E13", "credential_sha256": &h1[1..]}).to_string(),
            "short hash",
        ),
        (json!({"unit": "E13"}).to_string(), "no hash"),
        (
            json!({"unit": "E13", "credential_sha256": h1, "admin": true}).to_string(),
            "unknown field",
        ),
        ("not json".to_owned(), "not json"),
    ] {
        let (s, v) = api.claim_raw(Some(POLICE_ENROL), body.as_bytes()).await;
        assert_eq!((s, code(&v)), (400, "bad_request"), "{what}: {v}");
    }
    // 413: over the body limit (the limit is 1024 bytes).
    let big = json!({"unit": "E13", "credential_sha256": h1, "pad": "x".repeat(2000)}).to_string();
    let (s, v) = api.claim_raw(Some(POLICE_ENROL), big.as_bytes()).await;
    assert_eq!((s, code(&v)), (413, "payload_too_large"), "{v}");

    // 401 without or with an unknown token, 403 with a feed or admin token.
    let ok = json!({"unit": "E14", "credential_sha256": h1}).to_string();
    for (token, want) in [
        (None, 401),
        (Some("no-such-token-0123456789"), 401),
        (Some(POLICE), 403),
        (Some(ADMIN), 403),
    ] {
        let (s, v) = api.claim_raw(token, ok.as_bytes()).await;
        assert_eq!(s, want, "{token:?}: {v}");
    }
    // An enrol token is not a feed token.
    let r = c.get("/api/v1/units", POLICE_ENROL).await;
    assert_eq!(r.status, 401);
    let (s, _) = api.list("", POLICE_ENROL).await;
    assert_eq!(s, 401);

    // Counted by agency and result.
    let m = |result: &str| {
        format!("muster_enrollments_total{{agency=\"county-police\",result=\"{result}\"}}")
    };
    assert_eq!(c.metric(&m("active")).await, 1.0);
    assert_eq!(c.metric(&m("repeat")).await, 1.0);
    assert_eq!(c.metric(&m("taken")).await, 1.0);
    assert_eq!(c.metric(&m("invalid")).await, 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_revocation_cap_and_restart() {
    let mut w = World::start(EXTRA).await;
    let api_doc = Api::new(w.c()).await.doc;
    let p1 = unit("state-patrol", "P1");
    let (pw1, h1) = credential(11);
    let (pw1b, h1b) = credential(12);
    let (_, h2) = credential(13);
    let (_, h3) = credential(14);

    {
        let c = w.c();
        let api = Api {
            c,
            doc: api_doc.clone(),
        };
        let reg = c.registry.clone().unwrap();
        // 202: pending; the credential is not accepted yet.
        let (s, v) = api.claim(PATROL_ENROL, "P1", &h1).await;
        assert_eq!((s, v["state"].as_str()), (202, Some("pending")), "{v}");
        assert!(v.get("collector_keys").is_none(), "keys only when active");
        assert!(!reg.verify(&p1, pw1.as_bytes()), "pending is not active");
        let (s, v) = api.claim(PATROL_ENROL, "P1", &h1).await;
        assert_eq!((s, v["state"].as_str()), (200, Some("pending")), "{v}");
        // Nor can a pending claim be taken over.
        let (s, _) = api.claim(PATROL_ENROL, "P1", &h1b).await;
        assert_eq!(s, 409);

        // The cap: 2 pending at most, then 429 (counted).
        let (s, _) = api.claim(PATROL_ENROL, "P2", &h2).await;
        assert_eq!(s, 202);
        let (s, v) = api.claim(PATROL_ENROL, "P3", &h3).await;
        assert_eq!((s, code(&v)), (429, "too_many_requests"), "{v}");
        assert_eq!(
            c.metric("muster_enrollments_total{agency=\"state-patrol\",result=\"over_limit\"}")
                .await,
            1.0
        );

        // The admin's queue: an agency token is 403, the admin sees it.
        let (s, _) = api.list("?state=pending", PATROL).await;
        assert_eq!(s, 403);
        let (s, v) = api.admin("approve", "state-patrol", "P1", PATROL).await;
        assert_eq!(s, 403, "{v}");
        let (s, v) = api.list("?state=pending&agency=state-patrol", ADMIN).await;
        assert_eq!(s, 200);
        let units = items(&v, "unit");
        assert_eq!(units, ["P1", "P2"]);
        assert_eq!(v["items"][0]["fingerprint"], &h1[..16]);
        let (s, v) = api.list("?state=pending&limit=1", ADMIN).await;
        assert_eq!(
            (s, v["next_cursor"].as_str()),
            (200, Some("state-patrol/P1"))
        );
        let (s, v) = api
            .list("?state=pending&limit=1&cursor=state-patrol/P1", ADMIN)
            .await;
        assert_eq!((s, v["items"][0]["unit"].as_str()), (200, Some("P2")));
        let (s, _) = api.list("?state=bogus", ADMIN).await;
        assert_eq!(s, 400);

        // Approve: verify is true from now on; the claim now answers active.
        let (s, v) = api.admin("approve", "state-patrol", "P1", ADMIN).await;
        assert_eq!((s, v["state"].as_str()), (200, Some("active")), "{v}");
        assert!(reg.verify(&p1, pw1.as_bytes()));
        let (s, v) = api.claim(PATROL_ENROL, "P1", &h1).await;
        assert_eq!((s, v["state"].as_str()), (200, Some("active")), "{v}");
        assert!(v["collector_keys"].is_array());
        // A slot is free again.
        let (s, _) = api.claim(PATROL_ENROL, "P3", &h3).await;
        assert_eq!(s, 202);

        let (s, v) = api.admin("approve", "state-patrol", "nobody", ADMIN).await;
        assert_eq!((s, code(&v)), (404, "not_found"));
        let (s, _) = api.admin("approve", "state-patrol", "a+b", ADMIN).await;
        assert_eq!(s, 400);
    }

    // Enrolments survive a restart.
    w.stop_collector().await;
    w.start_collector().await;
    let c = w.c();
    let api = Api { c, doc: api_doc };
    let reg = c.registry.clone().unwrap();
    assert!(reg.verify(&p1, pw1.as_bytes()), "active after a restart");

    // Revoke: verify is false at once; the old credential cannot come back;
    // a new one can be claimed (and waits for approval again).
    let (s, v) = api.admin("revoke", "state-patrol", "P1", ADMIN).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("revoked")), "{v}");
    assert!(!reg.verify(&p1, pw1.as_bytes()), "revoked at once");
    let (s, v) = api.admin("approve", "state-patrol", "P1", ADMIN).await;
    assert_eq!(
        (s, code(&v)),
        (409, "conflict"),
        "a revoked unit is not approved"
    );
    let (s, v) = api.claim(PATROL_ENROL, "P1", &h1).await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    let (s, _) = api.admin("revoke", "state-patrol", "P2", ADMIN).await;
    assert_eq!(s, 200, "revoking frees a pending slot");
    let (s, v) = api.claim(PATROL_ENROL, "P1", &h1b).await;
    assert_eq!((s, v["state"].as_str()), (202, Some("pending")), "{v}");
    assert!(!reg.verify(&p1, pw1b.as_bytes()));
    let (s, _) = api.admin("approve", "state-patrol", "P1", ADMIN).await;
    assert_eq!(s, 200);
    assert!(reg.verify(&p1, pw1b.as_bytes()));
    assert!(!reg.verify(&p1, pw1.as_bytes()));

    let m = |r: &str| format!("muster_enrollments_total{{agency=\"state-patrol\",result=\"{r}\"}}");
    assert_eq!(
        c.metric(&m("approved")).await,
        1.0,
        "counted since the restart"
    );
    assert_eq!(c.metric(&m("revoked")).await, 2.0);
    assert_eq!(c.metric(&m("revoked_credential")).await, 1.0);
}

/// Cluster mode (`[cluster]` configured): a claim for a unit id NATS 2.9
/// cannot carry (a `.`, which its MQTT listener refuses in topics) is
/// refused with 400 saying why, and the same agency's plain ids still
/// enrol. (The harness runs the single-node app: only the feed's answer
/// to the claim is under test here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_a_unit_id_nats_cannot_carry_is_refused() {
    let extra = format!(
        "{EXTRA}\n[cluster]\nid = \"c1\"\nnats = [\"nats://127.0.0.1:1\"]\npostgres = \"postgres://x@127.0.0.1:1/x\"\n"
    );
    let w = World::start(&extra).await;
    let api = Api::new(w.c()).await;
    let (_, h) = credential(3);
    let (s, v) = api.claim(POLICE_ENROL, "E.12", &h).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("NATS 2.9"), "{v}");
    let (s, v) = api.claim(POLICE_ENROL, "E12", &h).await;
    assert_eq!(s, 201, "{v}");
}
