//! The feed contract: every endpoint's real responses, from a collector fed
//! realistic traffic over a real Mosquitto, validate against the schemas of
//! the OpenAPI document it serves; the document lists exactly the routes
//! the router serves; errors have one shape; lists are paginated.
//!
//! The validator is a small JSON Schema subset (the keywords the document
//! uses); a keyword it does not know fails the test rather than pass
//! unchecked, and a self-check proves a renamed field is caught.

use std::collections::BTreeSet;
use std::time::Duration;

use muster_proto::{BootId, Payload, fixtures};
use serde_json::{Value, json};

use crate::harness::*;
use muster_testkit::eventually;
use muster_testkit::http::{self, Response};

// ------------------------------------------------------------ validator

pub struct Validator<'a> {
    doc: &'a Value,
    /// Schema nodes checked, to prove the walk went somewhere.
    checks: usize,
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        other => panic!("schema uses unknown type {other:?}"),
    }
}

/// The regular expressions the document uses, checked by hand.
fn pattern_ok(p: &str, s: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match p {
        "^[0-9a-f]{16}$" => hex(s, 16),
        "^[0-9]+$" => !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        "^sha256=[0-9a-f]{64}$" => s.strip_prefix("sha256=").is_some_and(|h| hex(h, 64)),
        "^[0-9a-f]{64}$" => hex(s, 64),
        "^[0-9a-f]{32}$" => hex(s, 32),
        "^[a-z][a-z0-9_-]{0,63}$" => {
            muster_proto::action::check_name("action", s, muster_proto::action::MAX_ACTION_NAME)
                .is_ok()
        }
        "^ed25519:[0-9a-f]{64}$" => s.strip_prefix("ed25519:").is_some_and(|h| hex(h, 64)),
        "^[a-z][a-z0-9_.-]{0,31}$" => muster_proto::validate_label_key(s).is_ok(),
        "^[A-Za-z0-9._-]+$" => muster_collector::runbooks::valid_name(s),
        "^[^\\u0000-\\u001f\\u007f-\\u009f]*$" => !s.chars().any(char::is_control),
        "^[^/+#\\s\\u0000-\\u001f\\u007f-\\u009f]+$" => {
            !s.is_empty()
                && !s
                    .chars()
                    .any(|c| matches!(c, '/' | '+' | '#') || c.is_whitespace() || c.is_control())
        }
        other => panic!("schema uses a pattern the test validator does not know: {other}"),
    }
}

impl<'a> Validator<'a> {
    pub fn new(doc: &'a Value) -> Self {
        Validator { doc, checks: 0 }
    }

    fn resolve(&self, r: &str) -> &'a Value {
        let ptr = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        self.doc
            .pointer(ptr)
            .unwrap_or_else(|| panic!("dangling $ref {r}"))
    }

    fn validate(&mut self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        self.checks += 1;
        let s = schema
            .as_object()
            .unwrap_or_else(|| panic!("schema at {at} is not an object: {schema}"));
        for k in s.keys() {
            let known = [
                "$ref",
                "type",
                "enum",
                "const",
                "properties",
                "required",
                "additionalProperties",
                "items",
                "minItems",
                "maxItems",
                "minimum",
                "maximum",
                "exclusiveMinimum",
                "exclusiveMaximum",
                "pattern",
                "minLength",
                "maxLength",
                "minProperties",
                "maxProperties",
                "propertyNames",
                "oneOf",
                "anyOf",
                "allOf",
                "description",
                "format",
                "title",
                "example",
            ];
            assert!(
                known.contains(&k.as_str()),
                "schema keyword {k:?} at {at} is not checked by the test validator"
            );
        }
        if let Some(r) = s.get("$ref") {
            let target = self.resolve(r.as_str().unwrap());
            return self.validate(target, v, at);
        }
        if let Some(t) = s.get("type") {
            let ok = match t {
                Value::String(t) => type_ok(t, v),
                Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)),
                _ => panic!("bad type at {at}"),
            };
            if !ok {
                return Err(format!("{at}: {v} is not of type {t}"));
            }
        }
        if let Some(e) = s.get("enum")
            && !e.as_array().unwrap().contains(v)
        {
            return Err(format!("{at}: {v} is not one of {e}"));
        }
        if let Some(c) = s.get("const")
            && c != v
        {
            return Err(format!("{at}: {v} is not {c}"));
        }
        if let Some(n) = v.as_f64() {
            if let Some(m) = s.get("minimum").and_then(Value::as_f64)
                && n < m
            {
                return Err(format!("{at}: {n} < minimum {m}"));
            }
            if let Some(m) = s.get("maximum").and_then(Value::as_f64)
                && n > m
            {
                return Err(format!("{at}: {n} > maximum {m}"));
            }
            if let Some(m) = s.get("exclusiveMinimum").and_then(Value::as_f64)
                && n <= m
            {
                return Err(format!("{at}: {n} <= exclusiveMinimum {m}"));
            }
            if let Some(m) = s.get("exclusiveMaximum").and_then(Value::as_f64)
                && n >= m
            {
                return Err(format!("{at}: {n} >= exclusiveMaximum {m}"));
            }
        }
        if let Some(st) = v.as_str() {
            // JSON Schema counts characters, not bytes.
            let n = st.chars().count() as u64;
            if let Some(m) = s.get("minLength").and_then(Value::as_u64)
                && n < m
            {
                return Err(format!("{at}: {st:?} is shorter than {m}"));
            }
            if let Some(m) = s.get("maxLength").and_then(Value::as_u64)
                && n > m
            {
                return Err(format!("{at}: {st:?} is longer than {m}"));
            }
        }
        if let (Some(p), Some(st)) = (s.get("pattern"), v.as_str())
            && !pattern_ok(p.as_str().unwrap(), st)
        {
            return Err(format!("{at}: {st:?} does not match {p}"));
        }
        if let Some(o) = v.as_object() {
            let n = o.len() as u64;
            if let Some(m) = s.get("minProperties").and_then(Value::as_u64)
                && n < m
            {
                return Err(format!("{at}: fewer than {m} properties"));
            }
            if let Some(m) = s.get("maxProperties").and_then(Value::as_u64)
                && n > m
            {
                return Err(format!("{at}: more than {m} properties"));
            }
            if let Some(names) = s.get("propertyNames") {
                for k in o.keys() {
                    self.validate(
                        names,
                        &Value::String(k.clone()),
                        &format!("{at} name {k:?}"),
                    )?;
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(req) = s.get("required") {
                for k in req.as_array().unwrap() {
                    let k = k.as_str().unwrap();
                    if !o.contains_key(k) {
                        return Err(format!("{at}: required field {k:?} is missing"));
                    }
                }
            }
            for (k, fv) in o {
                let sub = format!("{at}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.validate(ps, fv, &sub)?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return Err(format!("{at}: field {k:?} is not in the schema"));
                        }
                        Some(ap @ Value::Object(_)) => self.validate(ap, fv, &sub)?,
                        _ => {}
                    },
                }
            }
        }
        if let Some(a) = v.as_array() {
            if let Some(n) = s.get("minItems").and_then(Value::as_u64)
                && (a.len() as u64) < n
            {
                return Err(format!("{at}: fewer than {n} items"));
            }
            if let Some(n) = s.get("maxItems").and_then(Value::as_u64)
                && (a.len() as u64) > n
            {
                return Err(format!("{at}: more than {n} items"));
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    self.validate(items, x, &format!("{at}[{i}]"))?;
                }
            }
        }
        if let Some(all) = s.get("allOf") {
            for (i, sub) in all.as_array().unwrap().iter().enumerate() {
                self.validate(sub, v, &format!("{at}/allOf[{i}]"))?;
            }
        }
        if let Some(any) = s.get("anyOf") {
            let errs: Vec<String> = any
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|sub| self.validate(sub, v, at).err())
                .collect();
            if errs.len() == any.as_array().unwrap().len() {
                return Err(format!("{at}: matches none of anyOf: {errs:?}"));
            }
        }
        if let Some(one) = s.get("oneOf") {
            let subs = one.as_array().unwrap();
            let mut errs = Vec::new();
            let mut matched = 0;
            for sub in subs {
                match self.validate(sub, v, at) {
                    Ok(()) => matched += 1,
                    Err(e) => errs.push(e),
                }
            }
            if matched != 1 {
                return Err(format!("{at}: matches {matched} of oneOf, not 1: {errs:?}"));
            }
        }
        Ok(())
    }

    pub fn schema(&mut self, name: &str, v: &Value) -> Result<(), String> {
        let s = json!({ "$ref": format!("#/components/schemas/{name}") });
        self.validate(&s, v, name)
    }
}

// ------------------------------------------------------------ the spec side

/// The `responses` entry of `{method} {template}` for a status.
fn response_spec<'a>(doc: &'a Value, method: &str, template: &str, status: u16) -> &'a Value {
    let m = method.to_uppercase();
    let op = doc["paths"][template][method]
        .as_object()
        .unwrap_or_else(|| panic!("the document has no {m} {template}"));
    let r = op["responses"]
        .get(status.to_string())
        .or_else(|| op["responses"].get(format!("{}XX", status / 100)))
        .unwrap_or_else(|| {
            panic!("{m} {template} answered {status}, which the document does not list")
        });
    match r.get("$ref").and_then(Value::as_str) {
        Some(p) => doc.pointer(p.strip_prefix('#').unwrap()).unwrap(),
        None => r,
    }
}

/// Checks one real response of a GET against the document: its status and
/// content type are listed, and a JSON body validates. Returns the JSON body.
fn check(v: &mut Validator, template: &str, path: &str, r: &Response) -> Option<Value> {
    check_op(v, "get", template, path, r)
}

/// [`check`] for any method (lowercase, as the document's keys).
fn check_op(
    v: &mut Validator,
    method: &str,
    template: &str,
    path: &str,
    r: &Response,
) -> Option<Value> {
    let m = method.to_uppercase();
    let spec = response_spec(v.doc, method, template, r.status);
    let ctype = r
        .header("content-type")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let Some(content) = spec.get("content") else {
        assert!(
            r.body.is_empty(),
            "{m} {path}: {} has no content in the document",
            r.status
        );
        return None;
    };
    let media = content.get(&ctype).unwrap_or_else(|| {
        panic!(
            "{m} {path}: content type {ctype:?} of a {} is not in the document ({:?})",
            r.status,
            content.as_object().unwrap().keys().collect::<Vec<_>>()
        )
    });
    if ctype != "application/json" {
        return None;
    }
    let body = r.json();
    let schema = &media["schema"];
    if let Err(e) = v.validate(schema, &body, &format!("{m} {path} {}", r.status)) {
        panic!("{m} {path}: the response does not match the document: {e}\n{body:#}");
    }
    Some(body)
}

/// Routes the router serves, read from the router's source: every
/// `.route("...")` in the feed and the dashboard.
fn served_routes() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/feed");
    let mut out = BTreeSet::new();
    for f in ["mod.rs", "dashboard/mod.rs"] {
        let text = std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
        for part in text.split(".route(\"").skip(1) {
            out.insert(part.split('"').next().unwrap().to_owned());
        }
    }
    out
}

// ------------------------------------------------------------ the traffic

const RULE: &str = r#"
[[rules.threshold]]
name = "cpu-hot"
field = "cpu.total"
op = ">"
threshold = 50
clear = 40
severity = "degraded"
runbook = "https://runbooks.example.org/muster/cpu-hot"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_of_every_endpoint_validate_against_the_served_document() {
    let w = World::start(RULE).await;
    let c = w.c();
    let mut stream = c.stream(FIRE).await;

    let r = http::get(c.addr, "/api/v1/openapi.json", None).await;
    assert_eq!(r.status, 200, "the document needs no token");
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut v = Validator::new(&doc);
    check(&mut v, "/api/v1/openapi.json", "/api/v1/openapi.json", &r);

    // Exactly the routes the router serves.
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        documented,
        served_routes(),
        "document paths vs router routes"
    );

    // Traffic: a host that runs hot, its agent's heartbeat, a police unit,
    // and four fire units of which three fail the same probe target (an
    // incident).
    let a = w.agent("agent").await;
    let h1 = unit("metro-fire", "H1");
    let boot = BootId(0xdead_beef);
    a.presence(&h1, online(boot, 1, T0, true)).await;
    a.record(&h1, rec(boot, 1, T0, host(20.0))).await;
    a.record(
        &h1,
        rec(boot, 2, T0 + 1_000, Payload::Status(fixtures::status())),
    )
    .await;
    w.clock.set(T0 + 5_000);
    a.record(&h1, rec(boot, 3, T0 + 5_000, host(97.0))).await;
    a.record(
        &h1,
        rec(
            boot,
            4,
            T0 + 5_500,
            probe("cad-api", "https://cad/health", true),
        ),
    )
    .await;
    c.wait_unit(&h1, "degraded", |v| v["status"] == "degraded")
        .await;
    // A v2 unit that announces its shutdown (an announcement record).
    let s9 = unit("metro-fire", "S9");
    a.record(&s9, rec(BootId(9), 1, T0 + 5_000, host(10.0)))
        .await;
    a.record(
        &s9,
        rec(
            BootId(9),
            2,
            T0 + 5_100,
            Payload::Presence(muster_proto::Presence {
                online: false,
                boot: BootId(9),
                connection: 1,
                at_ms: T0 + 5_100,
                reason: muster_proto::PresenceReason::Shutdown,
            }),
        ),
    )
    .await;
    c.wait_unit(&s9, "announced", |v| v["seq"]["received"] == 2)
        .await;
    let p1 = unit("county-police", "P1");
    a.record(&p1, rec(BootId(2), 1, T0, host(12.0))).await;
    c.wait_unit(&p1, "in", |v| v["seq"]["received"] == 1).await;
    let target = "https://cad.metro.example/api/health";
    let es: Vec<_> = (1..=4)
        .map(|i| unit("metro-fire", &format!("E{i}")))
        .collect();
    for u in &es {
        a.record(
            u,
            rec(BootId(1), 1, T0 + 5_000, probe("cad-api", target, true)),
        )
        .await;
    }
    for seq in 2..=4 {
        let at = T0 + 5_000 + seq * 5_000;
        w.clock.set(at);
        for (i, u) in es.iter().enumerate() {
            a.record(u, rec(BootId(1), seq, at, probe("cad-api", target, i == 3)))
                .await;
        }
        for u in &es {
            c.wait_unit(u, "probe in", |v| v["seq"]["received"] == seq)
                .await;
        }
    }
    // H1 reports again at the clock's time (else it would be stale by now).
    a.record(&h1, rec(boot, 5, T0 + 25_000, host(98.0))).await;
    c.wait_unit(&h1, "fresh and hot", |v| {
        v["seq"]["received"] == 5 && v["status"] == "degraded"
    })
    .await;
    // Labels and facts (issue 16): H1 and E1 at station 7, E2 at 9; E3 and
    // E4 never say.
    a.record(
        &h1,
        rec(
            boot,
            6,
            T0 + 25_000,
            facts(&[("station", "7"), ("role", "patrol")], Some("7.4.1")),
        ),
    )
    .await;
    c.wait_unit(&h1, "facts", |v| v["facts"]["cad_version"] == "7.4.1")
        .await;
    for (u, station) in [(&es[0], "7"), (&es[1], "9")] {
        a.record(
            u,
            rec(
                BootId(1),
                5,
                T0 + 25_000,
                facts(&[("station", station)], None),
            ),
        )
        .await;
        c.wait_unit(u, "labels", |v| v["labels"]["station"] == station)
            .await;
    }
    eventually("an open incident", Duration::from_secs(20), || async {
        let l = c.json("/api/v1/incidents?state=open", ADMIN).await;
        if l["items"].as_array().unwrap().is_empty() {
            Err(l)
        } else {
            Ok(())
        }
    })
    .await;

    // Every endpoint, successful answers.
    let ok: &[(&str, &str, &str)] = &[
        ("/api/v1/units", "/api/v1/units", ADMIN),
        ("/api/v1/units", "/api/v1/units?status=degraded", FIRE),
        (
            "/api/v1/units",
            "/api/v1/units?agency=county-police",
            POLICE,
        ),
        (
            "/api/v1/units/{agency}/{unit}",
            "/api/v1/units/metro-fire/H1",
            FIRE,
        ),
        (
            "/api/v1/units/{agency}/{unit}",
            "/api/v1/units/metro-fire/E1",
            ADMIN,
        ),
        (
            "/api/v1/units/{agency}/{unit}/samples",
            "/api/v1/units/metro-fire/H1/samples",
            FIRE,
        ),
        (
            "/api/v1/units/{agency}/{unit}/samples",
            "/api/v1/units/metro-fire/H1/samples?kind=status",
            FIRE,
        ),
        (
            "/api/v1/units/{agency}/{unit}/samples",
            "/api/v1/units/metro-fire/E2/samples?since=1h",
            ADMIN,
        ),
        (
            "/api/v1/units/{agency}/{unit}/samples",
            "/api/v1/units/metro-fire/S9/samples?kind=presence",
            FIRE,
        ),
        (
            "/api/v1/units/{agency}/{unit}/timeline",
            "/api/v1/units/metro-fire/H1/timeline",
            FIRE,
        ),
        (
            "/api/v1/units/{agency}/{unit}/timeline",
            "/api/v1/units/metro-fire/S9/timeline?hours=168",
            ADMIN,
        ),
        ("/api/v1/units", "/api/v1/units?status=off", FIRE),
        ("/api/v1/units", "/api/v1/units?label=station=7", FIRE),
        (
            "/api/v1/units",
            "/api/v1/units?label=station%3D7&label=role=patrol&agency=metro-fire",
            ADMIN,
        ),
        ("/api/v1/units", "/api/v1/units?status=offline", ADMIN),
        ("/api/v1/events", "/api/v1/events", ADMIN),
        ("/api/v1/events", "/api/v1/events?unit=metro-fire/H1", FIRE),
        ("/api/v1/incidents", "/api/v1/incidents", FIRE),
        ("/api/v1/incidents", "/api/v1/incidents?state=open", ADMIN),
        ("/api/v1/problems", "/api/v1/problems", ADMIN),
        (
            "/api/v1/problems",
            "/api/v1/problems?hours=1&agency=metro-fire",
            FIRE,
        ),
        ("/metrics", "/metrics", ADMIN),
        ("/healthz", "/healthz", ADMIN),
        ("/readyz", "/readyz", ADMIN),
        ("/", "/", ADMIN),
        ("/index.html", "/index.html", ADMIN),
        ("/api/v1/runbooks", "/api/v1/runbooks", FIRE),
        (
            "/api/v1/runbooks/{rule}",
            "/api/v1/runbooks/lost.will",
            POLICE,
        ),
        (
            "/api/v1/runbooks/{rule}",
            "/api/v1/runbooks/cpu-high",
            ADMIN,
        ),
    ];
    let mut bodies = std::collections::BTreeMap::new();
    for (template, path, token) in ok {
        let r = c.get(path, token).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        if let Some(b) = check(&mut v, template, path, &r) {
            bodies.insert(path.to_string(), b);
        }
    }
    // The traffic shows up where the schemas can see it.
    let h = &bodies["/api/v1/units/metro-fire/H1"];
    assert_eq!(h["status"], "degraded");
    assert!(h["agent"].is_object(), "{h:#}");
    assert!(h["latest"]["host"].is_object() && h["latest"]["status"].is_object());
    assert_eq!(h["latest"]["probes"].as_array().unwrap().len(), 1);
    // The new shapes: the presence's reason, the network in words, the strip.
    assert_eq!(h["presence"]["reason"], "connected", "{h:#}");
    let net = &h["latest"]["host"]["data"]["network"];
    assert_eq!(net["route"]["kind"], "cellular", "{net:#}");
    assert_eq!(net["cellular"]["technology"], "lte", "{net:#}");
    let strip = &bodies["/api/v1/units/metro-fire/H1/timeline"];
    let segs = strip["segments"].as_array().unwrap();
    assert!(
        segs.iter()
            .any(|s| s["state"] == "degraded" && s["net_kind"] == "cellular"),
        "{strip:#}"
    );
    assert_eq!(segs.first().unwrap()["from_ms"], strip["from_ms"]);
    assert_eq!(segs.last().unwrap()["to_ms"], strip["to_ms"]);
    let announced = &bodies["/api/v1/units/metro-fire/S9/samples?kind=presence"]["items"];
    assert_eq!(announced[0]["kind"], "presence", "{announced:#}");
    assert_eq!(announced[0]["data"]["reason"], "shutdown", "{announced:#}");
    let kinds: BTreeSet<&str> = bodies["/api/v1/units/metro-fire/H1/samples"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["facts", "host", "probe", "status"]));
    // Labels and facts, and the units a label selector lists.
    assert_eq!(
        h["labels"],
        json!({"role": "patrol", "station": "7"}),
        "{h:#}"
    );
    assert_eq!(h["facts"]["os"], "Linux (Debian GNU/Linux 12)", "{h:#}");
    assert_eq!(
        bodies["/api/v1/units/metro-fire/E1"]["facts"]["cad_version"],
        json!(null)
    );
    let listed = |path: &str| -> Vec<String> {
        bodies[path]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["unit"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(listed("/api/v1/units?label=station=7"), ["E1", "H1"]);
    assert_eq!(
        listed("/api/v1/units?label=station%3D7&label=role=patrol&agency=metro-fire"),
        ["H1"]
    );
    let all = &bodies["/api/v1/units"]["items"];
    let e3 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["unit"] == "E3")
        .unwrap();
    assert_eq!((&e3["labels"], &e3["facts"]), (&json!({}), &json!(null)));
    let types: BTreeSet<&str> = bodies["/api/v1/events"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, BTreeSet::from(["incident", "transition"]));
    assert!(
        !bodies["/api/v1/problems"]["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Runbooks: every built-in one listed; one as Markdown; the pages need
    // no token, and a flag without a URL of its own links to its page.
    let listed: BTreeSet<&str> = bodies["/api/v1/runbooks"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["source"], "builtin", "{r}");
            r["rule"].as_str().unwrap()
        })
        .collect();
    let builtin: BTreeSet<&str> = muster_collector::runbooks::builtin_names().collect();
    assert_eq!(listed, builtin);
    let lw = &bodies["/api/v1/runbooks/lost.will"];
    assert_eq!(
        lw["markdown"],
        include_str!("../../runbooks/lost.will.md"),
        "the built-in runbook as written"
    );
    assert!(lw["title"].as_str().unwrap().contains("lost.will"), "{lw}");
    let s9 = c.unit(&s9).await.unwrap();
    let off = &s9["reasons"][0];
    assert_eq!(
        (&off["rule"], &off["runbook"]),
        (&json!("off"), &json!("/runbooks/off")),
        "{s9:#}"
    );
    for (template, path) in [
        ("/runbooks/{rule}", off["runbook"].as_str().unwrap()),
        ("/runbooks/{rule}", "/runbooks/lost.will"),
        ("/runbooks", "/runbooks"),
    ] {
        let r = http::get(c.addr, path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        check(&mut v, template, path, &r);
        assert!(
            r.header("content-security-policy")
                .is_some_and(|p| p.starts_with("default-src 'none'")),
            "GET {path}: the dashboard's CSP"
        );
    }
    // A rule with a URL of its own links there, not to a runbook page.
    assert_eq!(
        h["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == "cpu-hot")
            .map(|r| r["runbook"].clone()),
        Some(json!("https://runbooks.example.org/muster/cpu-hot"))
    );

    // A dashboard asset, named as the page names it.
    let page = c.get("/", ADMIN).await.text();
    let asset = page
        .split("/assets/")
        .nth(1)
        .and_then(|s| s.split(['"', '?']).next())
        .expect("the page names an asset")
        .to_owned();
    let r = http::get(c.addr, &format!("/assets/{asset}"), None).await;
    assert_eq!(r.status, 200);
    check(&mut v, "/assets/{name}", &format!("/assets/{asset}"), &r);

    // Pagination: every list hands out a cursor that leads to the rest.
    for (template, path, token) in [
        ("/api/v1/units", "/api/v1/units?limit=2", ADMIN),
        (
            "/api/v1/units/{agency}/{unit}/samples",
            "/api/v1/units/metro-fire/H1/samples?limit=1",
            FIRE,
        ),
        ("/api/v1/events", "/api/v1/events?limit=1", ADMIN),
    ] {
        let mut seen = 0;
        let mut path = path.to_owned();
        let mut pages = 0;
        loop {
            let r = c.get(&path, token).await;
            assert_eq!(r.status, 200, "GET {path}: {}", r.text());
            let b = check(&mut v, template, &path, &r).unwrap();
            seen += b["items"].as_array().unwrap().len();
            pages += 1;
            match b["next_cursor"].as_str() {
                Some(cur) => {
                    let base = path.split("&cursor=").next().unwrap().to_owned();
                    path = format!("{base}&cursor={}", encode(cur));
                }
                None => break,
            }
            assert!(pages < 100, "GET {path}: the cursor never ends");
        }
        assert!(
            pages > 1,
            "{template}: one page only; pagination not exercised"
        );
        assert!(seen > 1);
    }

    // Errors: one shape, listed for the endpoint.
    let errors: &[(&str, &str, Option<&str>, u16)] = &[
        ("/api/v1/units", "/api/v1/units", None, 401),
        ("/api/v1/units", "/api/v1/units?limit=0", Some(FIRE), 400),
        ("/api/v1/units", "/api/v1/units?bogus=1", Some(FIRE), 400),
        (
            "/api/v1/units",
            "/api/v1/units?label=Station=7",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/units",
            "/api/v1/units?label=station",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/units",
            "/api/v1/units?agency=county-police",
            Some(FIRE),
            403,
        ),
        (
            "/api/v1/units/{agency}/{unit}",
            "/api/v1/units/county-police/P1",
            Some(FIRE),
            403,
        ),
        (
            "/api/v1/units/{agency}/{unit}",
            "/api/v1/units/metro-fire/NOPE",
            Some(FIRE),
            404,
        ),
        (
            "/api/v1/units/{agency}/{unit}",
            "/api/v1/units/metro-fire/%FF",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/units/{agency}/{unit}/samples",
            "/api/v1/units/metro-fire/H1/samples?kind=x",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/units/{agency}/{unit}/samples",
            "/api/v1/units/metro-fire/NOPE/samples",
            Some(FIRE),
            404,
        ),
        (
            "/api/v1/units/{agency}/{unit}/timeline",
            "/api/v1/units/metro-fire/H1/timeline?hours=0",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/units/{agency}/{unit}/timeline",
            "/api/v1/units/metro-fire/H1/timeline?hours=169",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/units/{agency}/{unit}/timeline",
            "/api/v1/units/metro-fire/H1/timeline?since=1h",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/units/{agency}/{unit}/timeline",
            "/api/v1/units/county-police/P1/timeline",
            Some(FIRE),
            403,
        ),
        (
            "/api/v1/units/{agency}/{unit}/timeline",
            "/api/v1/units/metro-fire/NOPE/timeline",
            Some(FIRE),
            404,
        ),
        (
            "/api/v1/units/{agency}/{unit}/timeline",
            "/api/v1/units/metro-fire/H1/timeline",
            None,
            401,
        ),
        ("/api/v1/events", "/api/v1/events?cursor=x", Some(FIRE), 400),
        (
            "/api/v1/events",
            "/api/v1/events",
            Some("not-a-token-0123456789"),
            401,
        ),
        (
            "/api/v1/incidents",
            "/api/v1/incidents?state=x",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/problems",
            "/api/v1/problems?hours=0",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/problems",
            "/api/v1/problems?agency=county-police",
            Some(FIRE),
            403,
        ),
        (
            "/api/v1/stream",
            "/api/v1/stream?agency=county-police",
            Some(FIRE),
            403,
        ),
        ("/api/v1/stream", "/api/v1/stream", None, 401),
        ("/metrics", "/metrics", Some(FIRE), 403),
        ("/metrics", "/metrics", None, 401),
        ("/assets/{name}", "/assets/nope.js", None, 404),
        ("/api/v1/runbooks", "/api/v1/runbooks", None, 401),
        (
            "/api/v1/runbooks",
            "/api/v1/runbooks?rule=off",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/runbooks/{rule}",
            "/api/v1/runbooks/lost.will",
            None,
            401,
        ),
        (
            "/api/v1/runbooks/{rule}",
            "/api/v1/runbooks/no-such-rule",
            Some(FIRE),
            404,
        ),
        (
            "/api/v1/runbooks/{rule}",
            "/api/v1/runbooks/off?format=html",
            Some(FIRE),
            400,
        ),
        ("/runbooks/{rule}", "/runbooks/no-such-rule", None, 404),
        ("/runbooks/{rule}", "/runbooks/%FF", None, 400),
    ];
    for (template, path, token, want) in errors {
        let r = http::get(c.addr, path, *token).await;
        assert_eq!(r.status, *want, "GET {path}: {}", r.text());
        let b = check(&mut v, template, path, &r).expect("errors are JSON");
        assert!(v.schema("Error", &b).is_ok());
    }
    rollouts(&mut v, c).await;
    actions(&mut v, c, &a, &h1, boot).await;

    // Not in the document, same shape: an unknown path.
    let r = c.get("/api/v1/nope", FIRE).await;
    assert_eq!(r.status, 404);
    v.schema("Error", &r.json()).unwrap();

    // The stream's events validate against the schemas the document names.
    let events = &doc["paths"]["/api/v1/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]
        ["x-sse-events"];
    let mut kinds = BTreeSet::new();
    while kinds.len() < 2 {
        let ev = stream
            .next(Duration::from_secs(10))
            .await
            .expect("transition and incident events on the stream");
        let schema = events
            .get(&ev.event)
            .unwrap_or_else(|| panic!("stream event {:?} is not in the document", ev.event));
        if let Err(e) = v.validate(schema, &ev.json(), &ev.event) {
            panic!("stream event {}: {e}\n{}", ev.event, ev.data);
        }
        kinds.insert(ev.event.clone());
    }
    assert!(
        v.checks > 2_000,
        "only {} schema checks: the walk went nowhere",
        v.checks
    );

    // The validator catches drift: a renamed field, a nested renamed field,
    // a changed type, a wrong enum value.
    let detail = &bodies["/api/v1/units/metro-fire/H1"];
    let mut renamed = detail.clone();
    let x = renamed
        .as_object_mut()
        .unwrap()
        .remove("last_seen_ms")
        .unwrap();
    renamed["last_seen"] = x;
    assert!(
        v.schema("UnitDetail", &renamed).is_err(),
        "a renamed field passed"
    );
    let mut nested = detail.clone();
    let r0 = nested["reasons"][0].as_object_mut().unwrap();
    let x = r0.remove("rule").unwrap();
    r0.insert("rules".into(), x);
    assert!(
        v.schema("UnitDetail", &nested).is_err(),
        "a renamed nested field passed"
    );
    let mut typed = detail.clone();
    typed["latest"]["host"]["data"]["uptime_s"] = json!("long");
    assert!(
        v.schema("UnitDetail", &typed).is_err(),
        "a changed type passed"
    );
    let mut status = detail.clone();
    status["status"] = json!("broken");
    assert!(
        v.schema("UnitDetail", &status).is_err(),
        "a bad enum value passed"
    );
    let mut kind = detail.clone();
    kind["latest"]["host"]["data"]["network"]["route"]["kind"] = json!(3);
    assert!(
        v.schema("UnitDetail", &kind).is_err(),
        "the wire's numeric link kind passed"
    );
    let mut label = detail.clone();
    label["labels"]["station"] = json!(7);
    assert!(
        v.schema("UnitDetail", &label).is_err(),
        "a label that is not a string passed"
    );
    let mut key = detail.clone();
    key["labels"]["Station"] = json!("7");
    assert!(
        v.schema("UnitDetail", &key).is_err(),
        "a bad label key passed"
    );
    let mut facts = detail.clone();
    facts["facts"].as_object_mut().unwrap().remove("os");
    assert!(
        v.schema("UnitDetail", &facts).is_err(),
        "facts without os passed"
    );
    v.schema("UnitDetail", detail).unwrap();
    let book = &bodies["/api/v1/runbooks/lost.will"];
    let mut source = book.clone();
    source["source"] = json!("wiki");
    assert!(
        v.schema("Runbook", &source).is_err(),
        "a runbook source that is not one passed"
    );
    let mut bare = book.clone();
    bare.as_object_mut().unwrap().remove("markdown");
    assert!(
        v.schema("Runbook", &bare).is_err(),
        "a runbook without its markdown passed"
    );
    v.schema("Runbook", book).unwrap();
}

/// Actions' answers (issue 17): a request issued and refused every way the
/// document lists (but 413 and 429, `actions::`), the unit's step as a
/// sample, the listings and events with action steps, the export's lines,
/// and a runbook's suggested action.
async fn actions(
    v: &mut Validator<'_>,
    c: &Collector,
    a: &Agent,
    h1: &muster_proto::UnitId,
    boot: BootId,
) {
    let tpl = "/api/v1/units/{agency}/{unit}/actions";
    let h1_path = "/api/v1/units/metro-fire/H1/actions";
    let post = |path: &str, token: Option<&str>, body: &Value| {
        let body = body.to_string();
        let (addr, path, token) = (c.addr, path.to_owned(), token.map(str::to_owned));
        async move { http::post(addr, &path, token.as_deref(), body.as_bytes()).await }
    };
    let ask = json!({"action": "restart-cad-client", "params": {"mode": "soft"}, "ttl_ms": 30_000});
    let r = post(h1_path, Some(ADMIN), &ask).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let issued = check_op(v, "post", tpl, h1_path, &r).unwrap();
    let nonce = issued["request"].as_str().unwrap().to_owned();
    let refused: &[(&str, Option<&str>, Value, u16)] = &[
        (h1_path, None, ask.clone(), 401),
        (h1_path, Some(FIRE), ask.clone(), 403),
        (
            "/api/v1/units/metro-fire/NOPE/actions",
            Some(ADMIN),
            ask.clone(),
            404,
        ),
        (h1_path, Some(ADMIN), json!({"action": "Restart CAD"}), 400),
        (
            h1_path,
            Some(ADMIN),
            json!({"action": "x", "ttl_ms": 5}),
            400,
        ),
        (h1_path, Some(ADMIN), json!("not a request"), 400),
    ];
    for (path, token, body, want) in refused {
        let r = post(path, *token, body).await;
        assert_eq!(r.status, *want, "POST {path} {body}: {}", r.text());
        let b = check_op(v, "post", tpl, path, &r).expect("errors are JSON");
        v.schema("Error", &b).unwrap();
    }
    // The unit's answer: a step of its own, as a record.
    let mut n = [0u8; 16];
    for (i, b) in n.iter_mut().enumerate() {
        *b = u8::from_str_radix(&nonce[2 * i..2 * i + 2], 16).unwrap();
    }
    let finished = Payload::Action(muster_proto::ActionAudit {
        request: Some(muster_proto::ActionRef {
            nonce: n,
            action: "restart-cad-client".into(),
            requested_by: "admin".into(),
            issued_ms: T0,
        }),
        step: muster_proto::ActionStep::Finished {
            exit_code: Some(0),
            timed_out: false,
            duration_ms: 900,
            stdout: "ok\n".into(),
            stderr: String::new(),
        },
    });
    a.record(h1, rec(boot, 7, T0 + 26_000, finished)).await;
    eventually(
        "the unit's step is listed",
        Duration::from_secs(20),
        || async {
            let l = c.json("/api/v1/actions?unit=metro-fire/H1", FIRE).await;
            if l["items"][0]["step"] == "finished" {
                Ok(())
            } else {
                Err(l)
            }
        },
    )
    .await;
    let ok: &[(&str, &str, &str)] = &[
        ("/api/v1/actions", "/api/v1/actions", ADMIN),
        ("/api/v1/actions", "/api/v1/actions?limit=1", FIRE),
        (
            "/api/v1/actions",
            "/api/v1/actions?unit=metro-fire/H1&since_ms=0",
            FIRE,
        ),
        (
            "/api/v1/actions",
            "/api/v1/actions?agency=county-police",
            POLICE,
        ),
        ("/api/v1/events", "/api/v1/events?unit=metro-fire/H1", FIRE),
        (
            "/api/v1/units/{agency}/{unit}/samples",
            "/api/v1/units/metro-fire/H1/samples?kind=action",
            FIRE,
        ),
        (
            "/api/v1/runbooks/{rule}",
            "/api/v1/runbooks/cad-client-down",
            FIRE,
        ),
    ];
    let mut bodies = std::collections::BTreeMap::new();
    for (template, path, token) in ok {
        let r = c.get(path, token).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        bodies.insert(*path, check(v, template, path, &r).unwrap());
    }
    let steps: Vec<&str> = bodies["/api/v1/actions"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["finished", "denied", "requested"], "{steps:?}");
    assert!(bodies["/api/v1/actions?limit=1"]["next_cursor"].is_string());
    let types: BTreeSet<&str> = bodies["/api/v1/events?unit=metro-fire/H1"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(types.contains("action"), "{types:?}");
    let sample = &bodies["/api/v1/units/metro-fire/H1/samples?kind=action"]["items"][0];
    assert_eq!(
        (&sample["kind"], &sample["data"]["exit_code"]),
        (&json!("action"), &json!(0))
    );
    assert_eq!(
        bodies["/api/v1/runbooks/cad-client-down"]["action"],
        "restart-cad-client"
    );
    let errors: &[(&str, &str, Option<&str>, u16)] = &[
        ("/api/v1/actions", "/api/v1/actions", None, 401),
        (
            "/api/v1/actions",
            "/api/v1/actions?agency=county-police",
            Some(FIRE),
            403,
        ),
        (
            "/api/v1/actions",
            "/api/v1/actions?unit=county-police/P1",
            Some(FIRE),
            403,
        ),
        (
            "/api/v1/actions",
            "/api/v1/actions?cursor=x",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/actions",
            "/api/v1/actions?unit=H1",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/actions",
            "/api/v1/actions?since_ms=soon",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/actions",
            "/api/v1/actions?surprise=1",
            Some(FIRE),
            400,
        ),
        (
            "/api/v1/actions/export",
            "/api/v1/actions/export",
            None,
            401,
        ),
        (
            "/api/v1/actions/export",
            "/api/v1/actions/export",
            Some(FIRE),
            403,
        ),
        (
            "/api/v1/actions/export",
            "/api/v1/actions/export?x=1",
            Some(ADMIN),
            400,
        ),
    ];
    for (template, path, token, want) in errors {
        let r = http::get(c.addr, path, *token).await;
        assert_eq!(r.status, *want, "GET {path}: {}", r.text());
        let b = check(v, template, path, &r).expect("errors are JSON");
        v.schema("Error", &b).unwrap();
    }
    // The export: NDJSON, each line an ActionEvent.
    let lines = eventually(
        "the export has the finish",
        Duration::from_secs(20),
        || async {
            let r = c.get("/api/v1/actions/export", ADMIN).await;
            assert_eq!(r.status, 200);
            if r.text().contains("\"finished\"") {
                Ok(r)
            } else {
                Err(r.text())
            }
        },
    )
    .await;
    assert!(
        check(
            v,
            "/api/v1/actions/export",
            "/api/v1/actions/export",
            &lines
        )
        .is_none()
    );
    let text = lines.text();
    assert_eq!(text.lines().count(), 3, "{text}");
    for l in text.lines() {
        let line: Value = serde_json::from_str(l).unwrap();
        v.schema("ActionEvent", &line).unwrap();
    }
    let mut renamed: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let x = renamed.as_object_mut().unwrap().remove("step").unwrap();
    renamed["state"] = x;
    assert!(
        v.schema("ActionEvent", &renamed).is_err(),
        "a renamed field passed"
    );
}

/// Staged rollouts' answers: none yet, the refusals, then one over two fire
/// units steered through pause, resume and abort; its steps are events.
async fn rollouts(v: &mut Validator<'_>, c: &Collector) {
    let list = "/api/v1/rollouts";
    let one = "/api/v1/rollouts/{id}";
    for token in [ADMIN, FIRE] {
        let r = c.get(list, token).await;
        assert_eq!(r.status, 200, "GET {list}: {}", r.text());
        let b = check(v, list, list, &r).unwrap();
        assert_eq!(b, json!({"items": []}));
    }
    let target = "https://cad.metro.example/api/health";
    let def = |units: &[&str]| {
        json!({
            "name": "probe every 10 s",
            "change": "[sampling]\ninterval = \"10s\"\n",
            "target": {"agency": "metro-fire", "units": units},
            "probe": "cad-api",
            "probe_target": target,
            "waves": [{"units": 1}, {"percent": 100}],
            "soak_ms": 10_000,
            "metrics": {"failure_ratio": {"key": true}, "lost": {}},
            "config": {"alpha": 0.05},
        })
    };
    let post = |path: &str, token: Option<&str>, body: &Value| {
        let body = body.to_string();
        let (addr, path, token) = (c.addr, path.to_owned(), token.map(str::to_owned));
        async move { http::post(addr, &path, token.as_deref(), body.as_bytes()).await }
    };
    // Refusals, each in the one error shape and listed.
    let mut soak = def(&["E3"]);
    soak["soak_ms"] = json!(5);
    let mut extra = def(&["E3"]);
    extra["surprise"] = json!(1);
    let refused: &[(&str, &str, Option<&str>, Value, u16)] = &[
        (list, list, None, def(&["E3"]), 401),
        (list, list, Some(FIRE), def(&["E3"]), 403),
        (list, list, Some(ADMIN), json!("not a definition"), 400),
        (list, list, Some(ADMIN), json!({"name": "x"}), 400),
        (list, list, Some(ADMIN), soak, 400),
        (list, list, Some(ADMIN), extra, 400),
        // A target no known unit matches.
        (list, list, Some(ADMIN), def(&["NOPE"]), 400),
        (
            "/api/v1/rollouts/{id}/pause",
            "/api/v1/rollouts/r404/pause",
            Some(ADMIN),
            json!({}),
            404,
        ),
        (
            "/api/v1/rollouts/{id}/abort",
            "/api/v1/rollouts/r404/abort",
            Some(FIRE),
            json!({}),
            403,
        ),
    ];
    for (template, path, token, body, want) in refused {
        let r = post(path, *token, body).await;
        assert_eq!(r.status, *want, "POST {path} {body}: {}", r.text());
        let b = check_op(v, "post", template, path, &r).expect("errors are JSON");
        v.schema("Error", &b).unwrap();
    }
    for (path, token, want) in [
        ("/api/v1/rollouts/r404", Some(ADMIN), 404),
        ("/api/v1/rollouts", None, 401),
    ] {
        let r = http::get(c.addr, path, token).await;
        assert_eq!(r.status, want, "GET {path}: {}", r.text());
        check(v, if path == list { list } else { one }, path, &r).expect("errors are JSON");
    }

    // One over E3 and E4: started, then a unit of the same target is taken.
    let r = post(list, Some(ADMIN), &def(&["E3", "E4"])).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let made = check_op(v, "post", list, list, &r).unwrap();
    assert_eq!(made["phase"], "applying", "{made:#}");
    assert_eq!(made["target_units"], 2, "{made:#}");
    assert_eq!(made["wave_count"], 2, "{made:#}");
    assert_eq!(made["config"]["alpha"], 0.05, "{made:#}");
    let id = made["id"].as_str().unwrap().to_owned();
    let r = post(list, Some(ADMIN), &def(&["E4"])).await;
    assert_eq!(r.status, 409, "{}", r.text());
    check_op(v, "post", list, list, &r).unwrap();

    let at = format!("/api/v1/rollouts/{id}");
    for (token, n) in [(ADMIN, 1), (FIRE, 1), (POLICE, 0)] {
        let r = c.get(list, token).await;
        assert_eq!(r.status, 200, "GET {list}: {}", r.text());
        let b = check(v, list, list, &r).unwrap();
        assert_eq!(b["items"].as_array().unwrap().len(), n, "{b:#}");
    }
    let r = c.get(&at, POLICE).await;
    assert_eq!(r.status, 404, "another agency's rollout: {}", r.text());
    check(v, one, &at, &r).unwrap();
    // The rollout loop issues the first wave.
    eventually("the first wave issued", Duration::from_secs(20), || async {
        let r = c.get(&at, FIRE).await;
        let b = r.json();
        if r.status == 200 && b["counts"]["issued"] == 1 {
            Ok(())
        } else {
            Err(b)
        }
    })
    .await;
    let r = c.get(&at, FIRE).await;
    let b = check(v, one, &at, &r).unwrap();
    assert_eq!(b["units"][0]["state"], "issued", "{b:#}");

    // Steered: each answer is the rollout after the step; a step its phase
    // does not allow is a conflict.
    for (action, want, phase) in [
        ("pause", 200, Some("paused")),
        ("pause", 409, None),
        ("resume", 200, Some("applying")),
        ("abort", 200, Some("rolling_back")),
        ("abort", 409, None),
        ("resume", 409, None),
    ] {
        let path = format!("{at}/{action}");
        let template = format!("/api/v1/rollouts/{{id}}/{action}");
        let r = post(&path, Some(ADMIN), &json!({})).await;
        assert_eq!(r.status, want, "POST {path}: {}", r.text());
        let b = check_op(v, "post", &template, &path, &r).unwrap();
        if let Some(p) = phase {
            assert_eq!(b["phase"], p, "{b:#}");
        }
    }
    let r = c.get(&at, ADMIN).await;
    let b = check(v, one, &at, &r).unwrap();
    assert_eq!(b["aborted"], true, "{b:#}");
    assert_eq!(b["units"][0]["state"], "reverting", "{b:#}");
    // The schemas catch drift: a phase's field missing, the detail's units
    // missing, a unit state or a wave that is not one.
    let mut phase = b.clone();
    phase.as_object_mut().unwrap().remove("aborted");
    assert!(
        v.schema("RolloutDetail", &phase).is_err(),
        "a phase without its field passed"
    );
    let mut bare = b.clone();
    bare.as_object_mut().unwrap().remove("units");
    assert!(
        v.schema("RolloutDetail", &bare).is_err(),
        "a detail without units passed"
    );
    v.schema("Rollout", &bare).unwrap();
    let mut state = b.clone();
    state["units"][0]["state"] = json!("gone");
    assert!(
        v.schema("RolloutDetail", &state).is_err(),
        "a bad unit state passed"
    );
    let mut revert = b.clone();
    revert["units"][0]
        .as_object_mut()
        .unwrap()
        .remove("revert_version");
    assert!(
        v.schema("RolloutDetail", &revert).is_err(),
        "a reverting unit without its version passed"
    );
    let mut wave = b.clone();
    wave["waves"][0] = json!({"units": 1, "percent": 5});
    assert!(
        v.schema("RolloutDetail", &wave).is_err(),
        "a wave of two kinds passed"
    );

    // Its steps are events of the fire agency.
    let events = "/api/v1/events?agency=metro-fire";
    eventually("rollout events", Duration::from_secs(20), || async {
        let b = c.json(events, FIRE).await;
        let steps: BTreeSet<String> = b["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "rollout")
            .map(|e| e["step"].as_str().unwrap().to_owned())
            .collect();
        if ["started", "wave_issued", "paused", "resumed", "aborting"]
            .iter()
            .all(|s| steps.contains(*s))
        {
            Ok(())
        } else {
            Err(steps)
        }
    })
    .await;
    let r = c.get(events, FIRE).await;
    check(v, "/api/v1/events", events, &r).unwrap();
}

/// A facts record's payload: these labels, a fixed agent version and OS.
fn facts(labels: &[(&str, &str)], cad: Option<&str>) -> Payload {
    let mut labels: Vec<muster_proto::Label> = labels
        .iter()
        .map(|(k, v)| muster_proto::Label {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect();
    labels.sort();
    Payload::Facts(muster_proto::UnitFacts {
        labels,
        agent_version: "0.1.0".into(),
        os: "Linux (Debian GNU/Linux 12)".into(),
        cad_version: cad.map(str::to_owned),
    })
}

/// Percent-encodes a cursor for the query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
