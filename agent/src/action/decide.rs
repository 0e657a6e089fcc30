//! The pure check of an action request: bytes in, a decision out — run
//! (with the argv the parameters make) or refuse (typed, with a sentence),
//! and which nonce to remember. No I/O, no clock: `now_ms` is given. The
//! order of the checks is the contract's (`super`).

use muster_proto::action::{ActionRef, ActionRefusal, ActionRequest, MAX_ACTION_TTL_MS};
use muster_proto::{TrustedKeys, UnitId, VerifyError, decode_action, sign};

use super::store::State;
use crate::config::{ActionKind, ActionSpec, ArgPart, ParamType};

/// How far ahead of the agent's (corrected) clock a request may say it was
/// issued: clocks drift, but not by more.
pub const MAX_FUTURE_MS: u64 = 5 * 60_000;

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `None`: it did not decode far enough to name it.
    pub request: Option<ActionRef>,
    pub reason: ActionRefusal,
    pub detail: String,
    /// The nonce to remember and until when (its expiry): the request was
    /// authentic, for this unit and unexpired.
    pub remember: Option<([u8; 16], u64)>,
}

/// A request to run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub request: ActionRequest,
    /// Its index in the configured actions.
    pub action: usize,
    /// A `command`'s argv with the parameters in place; empty for the
    /// other kinds.
    pub argv: Vec<String>,
}

impl Accepted {
    /// The nonce to remember and until when.
    pub fn remember(&self) -> ([u8; 16], u64) {
        (self.request.nonce, self.request.expires_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run(Box<Accepted>),
    Refuse(Refusal),
}

/// What a decision is made against.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub me: &'a UnitId,
    pub trusted: &'a TrustedKeys,
    pub actions: &'a [ActionSpec],
    /// The nonces remembered and the recent starts (pruned to `now_ms`).
    pub state: &'a State,
    /// The actions running now, by name.
    pub running: &'a [String],
    /// The most actions running at once.
    pub max_concurrent: usize,
    /// Unix ms: the agent's clock, corrected by its offset to the
    /// collector when known.
    pub now_ms: u64,
}

/// Checks one request (see the contract for the order).
pub fn decide(bytes: &[u8], i: &Inputs<'_>) -> Decision {
    let r = match decode_action(bytes) {
        Ok(r) => r,
        Err(e) => {
            return Decision::Refuse(Refusal {
                request: None,
                reason: ActionRefusal::Malformed,
                detail: e.to_string(),
                remember: None,
            });
        }
    };
    let refuse = |reason, detail: String, remember: bool| {
        Decision::Refuse(Refusal {
            request: Some(r.reference()),
            reason,
            detail,
            remember: remember.then_some((r.nonce, r.expires_ms)),
        })
    };
    if let Err(e) = sign::verify_action(i.trusted, &r) {
        let reason = match e {
            VerifyError::Unsigned => ActionRefusal::Unsigned,
            VerifyError::UnknownKey(_) => ActionRefusal::UntrustedKey,
            VerifyError::BadSignature(_) => ActionRefusal::BadSignature,
        };
        return refuse(reason, e.to_string(), false);
    }
    if r.unit != *i.me {
        return refuse(
            ActionRefusal::WrongUnit,
            format!("signed for {}, this is {}", r.unit, i.me),
            false,
        );
    }
    if let Err(why) = check_time(&r, i.now_ms) {
        return refuse(ActionRefusal::Expired, why, false);
    }
    // Authentic, ours and in time: from here on the nonce is remembered.
    if i.state.seen(&r.nonce) {
        return refuse(
            ActionRefusal::Replayed,
            format!("nonce {} was seen before", sign::hex_of(&r.nonce)),
            false,
        );
    }
    if i.state.nonces_full() {
        return refuse(
            ActionRefusal::RateLimited,
            format!(
                "the agent already remembers {} requests until they expire; try again later",
                super::store::MAX_NONCES
            ),
            false,
        );
    }
    let Some((index, spec)) = i
        .actions
        .iter()
        .enumerate()
        .find(|(_, a)| a.name == r.action)
    else {
        let known: Vec<&str> = i.actions.iter().map(|a| a.name.as_str()).collect();
        return refuse(
            ActionRefusal::UnknownAction,
            format!(
                "no action {:?} in this agent's config (it has: {})",
                r.action,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
            true,
        );
    };
    let argv = match check_params(spec, &r) {
        Ok(argv) => argv,
        Err(why) => return refuse(ActionRefusal::BadParams, why, true),
    };
    if !i.state.allows(&spec.name, spec.rate, i.now_ms) {
        let recent = i.state.starts_within(&spec.name, i.now_ms, spec.rate.per);
        return refuse(
            ActionRefusal::RateLimited,
            format!(
                "{recent} starts of {:?} within the last {}; the limit is {}",
                spec.name,
                humantime::format_duration(spec.rate.per),
                spec.rate
            ),
            true,
        );
    }
    if i.running.contains(&spec.name) {
        return refuse(
            ActionRefusal::Busy,
            format!("{:?} is still running", spec.name),
            true,
        );
    }
    if i.running.len() >= i.max_concurrent {
        return refuse(
            ActionRefusal::Busy,
            format!(
                "{} actions are running ({}), the most at once",
                i.running.len(),
                i.running.join(", ")
            ),
            true,
        );
    }
    Decision::Run(Box::new(Accepted {
        request: r,
        action: index,
        argv,
    }))
}

/// In time: not past its expiry, not valid for longer than the wire
/// allows, not issued too far ahead of `now_ms`.
fn check_time(r: &ActionRequest, now_ms: u64) -> Result<(), String> {
    if r.expires_ms < r.issued_ms {
        return Err(format!(
            "expires ({}) before it was issued ({})",
            r.expires_ms, r.issued_ms
        ));
    }
    let ttl = r.expires_ms - r.issued_ms;
    if ttl > MAX_ACTION_TTL_MS {
        return Err(format!(
            "valid for {} ms; the most is {MAX_ACTION_TTL_MS} ms",
            ttl
        ));
    }
    if now_ms > r.expires_ms {
        return Err(format!(
            "expired {} ms ago (expires_ms {}, now {now_ms})",
            now_ms - r.expires_ms,
            r.expires_ms
        ));
    }
    if r.issued_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(format!(
            "issued {} ms in the future (the most is {MAX_FUTURE_MS} ms)",
            r.issued_ms - now_ms
        ));
    }
    Ok(())
}

/// The request's parameters against the action's: exactly the declared
/// ones, each valid. A `command`'s argv with the values in place.
fn check_params(spec: &ActionSpec, r: &ActionRequest) -> Result<Vec<String>, String> {
    // Control characters first, whatever the action and the type.
    for p in &r.params {
        if let Some(c) = p.value.chars().find(|c| c.is_control()) {
            return Err(format!(
                "parameter {:?} contains a control character (U+{:04X}): {:?}",
                p.name, c as u32, p.value
            ));
        }
    }
    let ActionKind::Command { argv, params } = &spec.kind else {
        return match r.params.first() {
            None => Ok(Vec::new()),
            Some(p) => Err(format!(
                "{:?} ({}) takes no parameters; got {:?}",
                spec.name,
                spec.kind.as_str(),
                p.name
            )),
        };
    };
    let mut values = std::collections::BTreeMap::new();
    for p in &r.params {
        let Some(ty) = params.get(&p.name) else {
            return Err(format!(
                "unknown parameter {:?} (the action takes: {})",
                p.name,
                params.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        let v = check_value(ty, &p.value)
            .map_err(|why| format!("parameter {:?}: {:?} {why}", p.name, p.value))?;
        if values.insert(p.name.as_str(), v).is_some() {
            return Err(format!("parameter {:?} is given twice", p.name));
        }
    }
    if let Some(missing) = params.keys().find(|k| !values.contains_key(k.as_str())) {
        return Err(format!("parameter {missing:?} is missing"));
    }
    Ok(argv
        .iter()
        .map(|a| match a {
            ArgPart::Literal(s) => s.clone(),
            ArgPart::Param(p) => values.get(p.as_str()).cloned().unwrap_or_default(),
        })
        .collect())
}

/// One value against its type: the argument it becomes, or why not.
/// Control characters are refused by the caller before this.
pub fn check_value(ty: &ParamType, v: &str) -> Result<String, String> {
    if v.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    match ty {
        ParamType::Hostname => {
            if is_hostname(v) {
                Ok(v.to_owned())
            } else {
                Err("is not a host name".into())
            }
        }
        ParamType::Ip => v
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .map_err(|_| "is not an IP address".into()),
        ParamType::Integer { min, max } => {
            let n: i64 = v.parse().map_err(|_| "is not an integer".to_owned())?;
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return Err(format!(
                    "is not within {}..={}",
                    min.map_or("".into(), |m| m.to_string()),
                    max.map_or("".into(), |m| m.to_string())
                ));
            }
            Ok(n.to_string())
        }
        ParamType::String { pattern, regex } => {
            if regex.is_match(v) {
                Ok(v.to_owned())
            } else {
                Err(format!("does not match the pattern {pattern:?} (whole)"))
            }
        }
    }
}

/// A DNS name: labels of `A-Z a-z 0-9 -`, not starting or ending with
/// `-` (so never an option), 1..=63 bytes each, ≤ 253 in all.
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use muster_proto::action::ActionParam;
    use muster_proto::{Signature, SigningKey, encode_action, sign::KeyId};

    const NOW: u64 = 1_700_000_000_000;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[5; 32])
    }

    fn me() -> UnitId {
        UnitId::new("metro-pd", "car-12").unwrap()
    }

    fn trusted() -> TrustedKeys {
        let mut t = TrustedKeys::new();
        t.insert(key().public_key()).unwrap();
        t
    }

    fn actions() -> Vec<ActionSpec> {
        let text = r#"
agency = "metro-pd"
unit_id = "car-12"
data_dir = "/tmp/muster-action-decide"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[trust]
collector_keys = ["ed25519:0000000000000000000000000000000000000000000000000000000000000000"]
[[action]]
name = "ping"
kind = "command"
argv = ["/usr/bin/ping", "-c", "{count}", "{host}"]
rate = "2 per 1h"
[action.params.host]
type = "hostname"
[action.params.count]
type = "integer"
min = 1
max = 5
[[action]]
name = "ticket"
kind = "command"
argv = ["/opt/cad/ticket", "{id}", "{from}"]
[action.params.id]
type = "string"
pattern = "[A-Z]{2}-[0-9]{1,6}"
[action.params.from]
type = "ip"
[[action]]
name = "flush-dns"
kind = "flush_dns"
"#
        .replace(
            "ed25519:0000000000000000000000000000000000000000000000000000000000000000",
            &key().public_key().to_string(),
        );
        Config::parse(&text).unwrap().actions
    }

    fn request(action: &str, params: &[(&str, &str)]) -> ActionRequest {
        ActionRequest {
            unit: me(),
            action: action.into(),
            params: params
                .iter()
                .map(|(n, v)| ActionParam {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            nonce: [1; 16],
            issued_ms: NOW - 1_000,
            expires_ms: NOW + 60_000,
            requested_by: "operator:metro-pd".into(),
            key_id: KeyId::NONE,
            sig: Signature::NONE,
        }
    }

    fn signed(r: ActionRequest) -> Vec<u8> {
        encode_action(&sign::sign_action(&key(), r)).unwrap()
    }

    fn ping() -> ActionRequest {
        request("ping", &[("host", "cad.example.org"), ("count", "3")])
    }

    struct World {
        actions: Vec<ActionSpec>,
        state: State,
        running: Vec<String>,
        now: u64,
    }

    impl World {
        fn new() -> World {
            World {
                actions: actions(),
                state: State::default(),
                running: Vec::new(),
                now: NOW,
            }
        }
        fn decide(&self, bytes: &[u8]) -> Decision {
            decide(
                bytes,
                &Inputs {
                    me: &me(),
                    trusted: &trusted(),
                    actions: &self.actions,
                    state: &self.state,
                    running: &self.running,
                    max_concurrent: 2,
                    now_ms: self.now,
                },
            )
        }
    }

    /// (reason, remembered?) of a refusal; panics on a run.
    fn refused(d: &Decision) -> (ActionRefusal, bool, String) {
        match d {
            Decision::Refuse(r) => (r.reason, r.remember.is_some(), r.detail.clone()),
            Decision::Run(a) => panic!("ran {a:?}"),
        }
    }

    #[test]
    fn a_valid_request_runs_with_its_values_as_whole_arguments() {
        let w = World::new();
        let Decision::Run(a) = w.decide(&signed(ping())) else {
            panic!("refused")
        };
        assert_eq!(
            a.argv,
            ["/usr/bin/ping", "-c", "3", "cad.example.org"].map(String::from)
        );
        assert_eq!((a.action, a.remember()), (0, ([1; 16], NOW + 60_000)));
        // Canonical forms: an address, an integer with a sign.
        let r = request("ticket", &[("id", "AB-123"), ("from", "::ffff:10.0.0.1")]);
        let Decision::Run(a) = w.decide(&signed(r)) else {
            panic!("refused")
        };
        assert_eq!(a.argv[1..], ["AB-123", "::ffff:10.0.0.1"].map(String::from));
        let r = request("ping", &[("host", "a-b.c"), ("count", "+2")]);
        let Decision::Run(a) = w.decide(&signed(r)) else {
            panic!("refused")
        };
        assert_eq!(a.argv[2], "2");
        // A kind without parameters.
        assert!(matches!(
            w.decide(&signed(request("flush-dns", &[]))),
            Decision::Run(_)
        ));
    }

    /// Every refusal, in the contract's order, and whether the nonce is
    /// remembered.
    #[test]
    fn every_refusal_is_typed_and_remembers_the_nonce_only_past_expiry() {
        let other_key = SigningKey::from_seed(&[6; 32]);
        let forged = {
            let mut r = sign::sign_action(&key(), ping());
            r.params[0].value = "evil.example.org".into();
            encode_action(&r).unwrap()
        };
        let bytes = |r: ActionRequest| signed(r);
        let with = |f: &dyn Fn(&mut ActionRequest)| {
            let mut r = ping();
            f(&mut r);
            signed(r)
        };
        let p = |params: &[(&str, &str)]| signed(request("ping", params));
        let cases: Vec<(&str, Vec<u8>, ActionRefusal, bool)> = vec![
            (
                "garbage",
                b"\x02garbage".to_vec(),
                ActionRefusal::Malformed,
                false,
            ),
            ("empty", Vec::new(), ActionRefusal::Malformed, false),
            (
                "unsigned",
                encode_action(&ping()).unwrap(),
                ActionRefusal::Unsigned,
                false,
            ),
            (
                "untrusted key",
                encode_action(&sign::sign_action(&other_key, ping())).unwrap(),
                ActionRefusal::UntrustedKey,
                false,
            ),
            ("tampered", forged, ActionRefusal::BadSignature, false),
            (
                "another unit",
                with(&|r| r.unit = UnitId::new("metro-pd", "car-13").unwrap()),
                ActionRefusal::WrongUnit,
                false,
            ),
            (
                "another agency",
                with(&|r| r.unit = UnitId::new("county-fire", "car-12").unwrap()),
                ActionRefusal::WrongUnit,
                false,
            ),
            (
                "expired",
                with(&|r| {
                    r.issued_ms = NOW - 120_000;
                    r.expires_ms = NOW - 1;
                }),
                ActionRefusal::Expired,
                false,
            ),
            (
                "valid too long",
                with(&|r| r.expires_ms = r.issued_ms + MAX_ACTION_TTL_MS + 1),
                ActionRefusal::Expired,
                false,
            ),
            (
                "expires before issued",
                with(&|r| r.expires_ms = r.issued_ms - 1),
                ActionRefusal::Expired,
                false,
            ),
            (
                "issued in the future",
                with(&|r| {
                    r.issued_ms = NOW + MAX_FUTURE_MS + 1;
                    r.expires_ms = r.issued_ms + 1_000;
                }),
                ActionRefusal::Expired,
                false,
            ),
            (
                "unknown action",
                bytes(request("reboot", &[])),
                ActionRefusal::UnknownAction,
                true,
            ),
            (
                "missing",
                p(&[("host", "a.b")]),
                ActionRefusal::BadParams,
                true,
            ),
            (
                "unknown param",
                p(&[("host", "a.b"), ("count", "1"), ("x", "1")]),
                ActionRefusal::BadParams,
                true,
            ),
            (
                "twice",
                p(&[("host", "a.b"), ("count", "1"), ("host", "c.d")]),
                ActionRefusal::BadParams,
                true,
            ),
            (
                "newline",
                p(&[("host", "a.b\nc.d"), ("count", "1")]),
                ActionRefusal::BadParams,
                true,
            ),
            (
                "NUL",
                p(&[("host", "a.b"), ("count", "1\0")]),
                ActionRefusal::BadParams,
                true,
            ),
            (
                "semicolon",
                p(&[("host", "a.b;touch /tmp/x"), ("count", "1")]),
                ActionRefusal::BadParams,
                true,
            ),
            (
                "option",
                p(&[("host", "-f"), ("count", "1")]),
                ActionRefusal::BadParams,
                true,
            ),
            (
                "out of range",
                p(&[("host", "a.b"), ("count", "6")]),
                ActionRefusal::BadParams,
                true,
            ),
            (
                "params on a kind without",
                bytes(request("flush-dns", &[("x", "1")])),
                ActionRefusal::BadParams,
                true,
            ),
        ];
        let w = World::new();
        for (what, b, reason, remembered) in cases {
            let (got, rem, detail) = refused(&w.decide(&b));
            assert_eq!((got, rem), (reason, remembered), "{what}: {detail}");
            assert!(detail.chars().count() <= 512, "{what}: {detail}");
        }
        // The audit names every request it could read, and no other.
        assert_eq!(
            w.decide(b"junk"),
            Decision::Refuse(Refusal {
                request: None,
                reason: ActionRefusal::Malformed,
                detail: match w.decide(b"junk") {
                    Decision::Refuse(r) => r.detail,
                    _ => unreachable!(),
                },
                remember: None,
            })
        );
        let Decision::Refuse(r) = w.decide(&bytes(request("reboot", &[]))) else {
            unreachable!()
        };
        assert_eq!(r.request, Some(request("reboot", &[]).reference()));
    }

    /// String parameters match whole, never across lines, and shell
    /// metacharacters are only ever data that fails the pattern.
    #[test]
    fn string_patterns_are_anchored_and_never_multi_line() {
        let w = World::new();
        let ticket = |id: &str| {
            refused_or_run(&w.decide(&signed(request(
                "ticket",
                &[("id", id), ("from", "10.0.0.1")],
            ))))
        };
        assert_eq!(ticket("AB-1"), None);
        for bad in [
            "AB-1\n",
            "AB-1\nAB-2",
            "\nAB-1",
            "xAB-1",
            "AB-1x",
            "AB-1;reboot",
            "AB-1|sh",
            "AB-1$(id)",
            "AB-1`id`",
            "AB-1 && id",
            "",
        ] {
            assert_eq!(ticket(bad), Some(ActionRefusal::BadParams), "{bad:?}");
        }
        for host in ["a.b;c", "a|b", "$(id)", "`id`", "a b", "a..b", "-x", "a-"] {
            let r = request("ping", &[("host", host), ("count", "1")]);
            assert_eq!(
                refused_or_run(&w.decide(&signed(r))),
                Some(ActionRefusal::BadParams),
                "{host:?}"
            );
        }
    }

    fn refused_or_run(d: &Decision) -> Option<ActionRefusal> {
        match d {
            Decision::Refuse(r) => Some(r.reason),
            Decision::Run(_) => None,
        }
    }

    #[test]
    fn replayed_rate_limited_and_busy_come_after_the_checks_before_them() {
        let mut w = World::new();
        let b = signed(ping());
        assert!(matches!(w.decide(&b), Decision::Run(_)));
        // Seen: replayed (and nothing to remember again).
        w.state.remember([1; 16], NOW + 60_000);
        assert_eq!(refused(&w.decide(&b)).0, ActionRefusal::Replayed);
        // An expired replay is expired first.
        w.now = NOW + 60_001;
        assert_eq!(refused(&w.decide(&b)).0, ActionRefusal::Expired);
        w.now = NOW;
        // Rate: two starts within the hour; a third, new nonce, is refused.
        let rate = w.actions[0].rate;
        w.state.started("ping", rate, NOW - 3_000_000);
        w.state.started("ping", rate, NOW - 10_000);
        let fresh = |n: u8| {
            let mut r = ping();
            r.nonce = [n; 16];
            signed(r)
        };
        let (reason, remembered, detail) = refused(&w.decide(&fresh(2)));
        assert_eq!(
            (reason, remembered),
            (ActionRefusal::RateLimited, true),
            "{detail}"
        );
        // The older start leaves the window: runs again.
        w.now = NOW - 3_000_000 + 3_600_001;
        let mut r = ping();
        r.nonce = [3; 16];
        r.issued_ms = w.now - 1_000;
        r.expires_ms = w.now + 60_000;
        assert!(matches!(w.decide(&signed(r.clone())), Decision::Run(_)));
        // Busy: the same action running; or two others.
        w.running = vec!["ping".into()];
        assert_eq!(
            refused(&w.decide(&signed(r.clone()))).0,
            ActionRefusal::Busy
        );
        w.running = vec!["ticket".into(), "flush-dns".into()];
        assert_eq!(refused(&w.decide(&signed(r))).0, ActionRefusal::Busy);
    }

    #[test]
    fn a_full_nonce_memory_refuses_what_it_cannot_remember() {
        let mut w = World::new();
        for i in 0..super::super::store::MAX_NONCES {
            let mut n = [0xff; 16];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            w.state.remember(n, NOW + 60_000);
        }
        let (reason, remembered, detail) = refused(&w.decide(&signed(ping())));
        assert_eq!((reason, remembered), (ActionRefusal::RateLimited, false));
        assert!(detail.contains("remembers"), "{detail}");
    }
}
