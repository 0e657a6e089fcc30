//! Building a request: the HTTP body, who asks, and the unsigned
//! [`ActionRequest`] within the wire's bounds. Pure.

use std::collections::BTreeMap;
use std::fmt;

use muster_proto::action::MAX_ACTION_TTL_MS;
use muster_proto::{ActionParam, ActionRequest, KeyId, Signature, UnitId};
use serde::Deserialize;

/// Shortest validity a request may be given.
pub const MIN_TTL_MS: u64 = 1_000;

/// Who asked, as the request and the audit name them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestedBy {
    /// The admin token.
    Admin,
    /// An agency's operator token.
    Operator(String),
    /// A rule's automation (`auto_action`).
    Auto(String),
}

impl RequestedBy {
    /// Every kind, for the metric's label.
    pub const KINDS: [&'static str; 3] = ["admin", "operator", "auto"];

    /// `admin`, `operator` or `auto` (`muster_actions_requested_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            RequestedBy::Admin => "admin",
            RequestedBy::Operator(_) => "operator",
            RequestedBy::Auto(_) => "auto",
        }
    }
}

impl fmt::Display for RequestedBy {
    /// `admin`, `operator:<agency>`, `auto:<rule>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestedBy::Admin => f.write_str("admin"),
            RequestedBy::Operator(a) => write!(f, "operator:{a}"),
            RequestedBy::Auto(r) => write!(f, "auto:{r}"),
        }
    }
}

/// `POST /api/v1/units/{agency}/{unit}/actions`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    pub action: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub ttl_ms: Option<u64>,
}

/// The body, or why not (for a 400).
pub fn parse_body(bytes: &[u8]) -> Result<Body, String> {
    serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "the body is not {{\"action\": \"<name>\", \"params\": {{\"<name>\": \"<value>\"}}, \"ttl_ms\": <ms>}}: {e}"
        )
    })
}

/// The unsigned request: `unit` to run `action` with `params`, issued at
/// `now_ms`, valid `ttl_ms`, with `nonce`. Refused (the message says what
/// and the limit) when it breaks the wire's bounds
/// (`ActionRequest::validate`) or the validity is not 1 s to
/// [`MAX_ACTION_TTL_MS`].
pub fn build(
    unit: &UnitId,
    action: &str,
    params: &BTreeMap<String, String>,
    requested_by: &RequestedBy,
    ttl_ms: u64,
    now_ms: u64,
    nonce: [u8; 16],
) -> Result<ActionRequest, String> {
    if !(MIN_TTL_MS..=MAX_ACTION_TTL_MS).contains(&ttl_ms) {
        return Err(format!(
            "ttl_ms {ttl_ms} must be {MIN_TTL_MS} to {MAX_ACTION_TTL_MS} (the longest an agent accepts)"
        ));
    }
    let r = ActionRequest {
        unit: unit.clone(),
        action: action.to_owned(),
        params: params
            .iter()
            .map(|(name, value)| ActionParam {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        nonce,
        issued_ms: now_ms,
        expires_ms: now_ms.saturating_add(ttl_ms),
        requested_by: requested_by.to_string(),
        key_id: KeyId::NONE,
        sig: Signature::NONE,
    };
    r.validate()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit() -> UnitId {
        UnitId::new("metro-fire", "E12").unwrap()
    }

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn who_asked_is_named_for_the_audit() {
        let table = [
            (RequestedBy::Admin, "admin", "admin"),
            (
                RequestedBy::Operator("metro-fire".into()),
                "operator:metro-fire",
                "operator",
            ),
            (
                RequestedBy::Auto("cad-client-down".into()),
                "auto:cad-client-down",
                "auto",
            ),
        ];
        for (who, text, kind) in table {
            assert_eq!((who.to_string().as_str(), who.kind()), (text, kind));
            assert!(RequestedBy::KINDS.contains(&kind));
        }
    }

    #[test]
    fn a_request_is_built_within_the_wires_bounds_or_refused_saying_why() {
        let ok = build(
            &unit(),
            "restart-cad-client",
            &params(&[("mode", "soft"), ("after", "5s")]),
            &RequestedBy::Operator("metro-fire".into()),
            60_000,
            1_000,
            [7; 16],
        )
        .unwrap();
        assert_eq!((ok.issued_ms, ok.expires_ms), (1_000, 61_000));
        assert_eq!(ok.requested_by, "operator:metro-fire");
        // Sorted by name (the map's order), so equal inputs sign equally.
        let names: Vec<&str> = ok.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["after", "mode"]);

        let many: BTreeMap<String, String> =
            (0..17).map(|i| (format!("p{i}"), "v".to_owned())).collect();
        let long = "x".repeat(257);
        let cases: Vec<(&str, BTreeMap<String, String>, u64, &str)> = vec![
            (
                "Restart",
                params(&[]),
                60_000,
                "action name \"Restart\" must be",
            ),
            ("", params(&[]), 60_000, "action name \"\" must be"),
            ("a;b", params(&[]), 60_000, "action name \"a;b\" must be"),
            (
                "restart",
                params(&[("Bad Name", "v")]),
                60_000,
                "parameter name \"Bad Name\"",
            ),
            (
                "restart",
                params(&[("v", &long)]),
                60_000,
                "is 257 bytes; the limit is 256",
            ),
            ("restart", many, 60_000, "17 parameters; the limit is 16"),
            (
                "restart",
                params(&[]),
                999,
                "ttl_ms 999 must be 1000 to 900000",
            ),
            ("restart", params(&[]), 900_001, "ttl_ms 900001 must be"),
        ];
        for (action, p, ttl, want) in cases {
            let err = build(&unit(), action, &p, &RequestedBy::Admin, ttl, 0, [0; 16]).unwrap_err();
            assert!(err.contains(want), "{action:?}: {err}");
        }
        // The wire carries any value within its length: what a value may
        // contain is the agent's check (it refuses and audits it).
        assert!(
            build(
                &unit(),
                "restart",
                &params(&[("v", "a\nb")]),
                &RequestedBy::Admin,
                1_000,
                0,
                [0; 16]
            )
            .is_ok()
        );
    }

    #[test]
    fn bodies_parse_or_say_what_is_expected() {
        let b =
            parse_body(br#"{"action": "flush-dns", "params": {"iface": "wwan0"}, "ttl_ms": 5000}"#)
                .unwrap();
        assert_eq!(b.action, "flush-dns");
        assert_eq!(b.params["iface"], "wwan0");
        assert_eq!(b.ttl_ms, Some(5_000));
        let b = parse_body(br#"{"action": "flush-dns"}"#).unwrap();
        assert!(b.params.is_empty() && b.ttl_ms.is_none());
        for bad in [
            &b""[..],
            b"[]",
            br#"{"params": {}}"#,
            br#"{"action": 5}"#,
            br#"{"action": "x", "params": {"a": 1}}"#,
            br#"{"action": "x", "ttl_ms": -1}"#,
            br#"{"action": "x", "extra": true}"#,
        ] {
            let e = parse_body(bad).unwrap_err();
            assert!(e.starts_with("the body is not {\"action\""), "{e}");
        }
    }
}
