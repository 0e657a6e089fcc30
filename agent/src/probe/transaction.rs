//! The transaction probe (issue 18): HTTP steps run in order — log in, fetch
//! the unit's assignments, open an incident — each depending on the ones
//! before through `{{var}}` values they extracted.
//!
//! Contract (config in `crate::config::TransactionSpec`):
//! - One `timeout` for the whole run: every step shares the deadline. Each
//!   step is one [`http::Client`] exchange on a fresh connection
//!   (`Connection: close`), with its own phases, so a step's DNS, connect,
//!   TLS, TTFB and total are its own.
//! - Before a step runs, its URL path and query (values percent-encoded),
//!   header values (as is) and body (JSON-string-escaped when the step
//!   sends a JSON `Content-Type`, else as is) are rendered from the built-ins
//!   (`{{unit}}`, `{{agency}}`), the credentials (`{{cred.NAME}}`) and what
//!   earlier steps extracted. The config guarantees each name has a value
//!   by then.
//! - A step passes when its exchange completes, its status is expected, its
//!   body prefix (at most `body_max_bytes`) contains `body_contains`, and
//!   every extraction finds a value: a JSON pointer into the body prefix (a
//!   body that is not JSON, or was cut and is not whole JSON, is an
//!   `Extract` failure) or a response header's first value (visible ASCII).
//!   Values are at most 4096 bytes without control characters.
//! - The first failing step ends the run; later steps do not run and yield
//!   nothing. Results: `<probe>` (the overall one: outcome and detail of
//!   the failing step, `step "NAME": …`; `phases.total_us` the whole run;
//!   `status` the failing or else the last step's; `cert_days_left` the
//!   fewest of the steps'), then `<probe>.<step>` per step that ran.
//! - Nothing secret leaves: targets are URL templates as configured, details
//!   fixed phrases that may name a variable, a header or a pointer but never
//!   hold a value, and nothing here logs a value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use muster_proto::{ErrorClass, Outcome, Phases, ProbeKind, ProbeResult};
use tokio::time::Instant;

use super::classify::Failure;
use super::http::{self, Client, Outgoing, Reading};
use super::template::{Encoding, Values, check_value, extracted_value};
use super::{ProbeError, ProbeStats, Run};
use crate::config::{Extract, StepSpec, TransactionSpec};

/// A configured transaction, its clients built once.
pub struct Transaction {
    name: String,
    spec: TransactionSpec,
    steps: Vec<StepRunner>,
    stats: Arc<ProbeStats>,
}

struct StepRunner {
    client: Client,
    /// `<probe>.<step>`: the step's result name and log label.
    full_name: String,
    /// Whether a JSON extraction needs the body kept.
    keep_body: bool,
}

impl Transaction {
    /// Builds every step's client; one TLS connector serves every https step.
    pub fn new(
        name: &str,
        spec: &TransactionSpec,
        stats: Arc<ProbeStats>,
    ) -> Result<Transaction, ProbeError> {
        let tls = if spec.steps.iter().any(|s| s.url.tls) {
            Some(http::connector(
                spec.ca_file.as_deref(),
                spec.insecure_skip_verify,
            )?)
        } else {
            None
        };
        let steps = spec
            .steps
            .iter()
            .map(|s| StepRunner {
                client: Client::new(
                    s.url.host.clone(),
                    s.url.port,
                    s.url.authority.clone(),
                    if s.url.tls { tls.clone() } else { None },
                ),
                full_name: format!("{name}.{}", s.name),
                keep_body: s.extract.iter().any(|(_, e)| matches!(e, Extract::Json(_))),
            })
            .collect();
        Ok(Transaction {
            name: name.to_owned(),
            spec: spec.clone(),
            steps,
            stats,
        })
    }

    /// Runs every step in order until one fails, within `timeout`.
    pub async fn run(&self, timeout: Duration) -> Vec<ProbeResult> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let mut extracted: BTreeMap<String, String> = BTreeMap::new();
        let mut results = vec![self.overall()];
        let mut failed: Option<(usize, Failure)> = None;
        let mut last_status = None;
        let mut cert_days_left: Option<i32> = None;
        for (i, (step, runner)) in self.spec.steps.iter().zip(&self.steps).enumerate() {
            let run = self
                .step(step, runner, &mut extracted, deadline, timeout)
                .await;
            last_status = run.status;
            cert_days_left = match (cert_days_left, run.cert_days_left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let (outcome, detail) = match &run.outcome {
                Ok(()) => (Outcome::Ok, String::new()),
                Err(f) => (Outcome::Fail(f.class), f.detail.clone()),
            };
            results.push(ProbeResult {
                name: runner.full_name.clone(),
                kind: ProbeKind::Transaction,
                target: step.url.text.clone(),
                outcome,
                phases: run.phases,
                status: run.status,
                cert_days_left: run.cert_days_left,
                addrs: Vec::new(),
                icmp: None,
                detail,
            });
            if let Err(f) = run.outcome {
                failed = Some((i, f));
                break;
            }
        }
        let own = &mut results[0];
        if let Some((i, f)) = failed {
            own.outcome = Outcome::Fail(f.class);
            own.detail = format!("step \"{}\": {}", self.spec.steps[i].name, f.detail);
            tracing::debug!(
                probe = %self.name,
                step = %self.spec.steps[i].name,
                class = ?f.class,
                "Transaction step failed."
            );
        }
        own.status = last_status;
        own.cert_days_left = cert_days_left;
        own.phases.total_us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
        results
    }

    /// The overall result, before the run fills in its outcome, phases and
    /// status.
    fn overall(&self) -> ProbeResult {
        ProbeResult {
            name: self.name.clone(),
            kind: ProbeKind::Transaction,
            target: self.spec.steps[0].url.text.clone(),
            outcome: Outcome::Ok,
            phases: Phases::default(),
            status: None,
            cert_days_left: None,
            addrs: Vec::new(),
            icmp: None,
            detail: String::new(),
        }
    }

    /// Renders, sends and judges one step; on success its extractions are
    /// added to `extracted`.
    async fn step(
        &self,
        step: &StepSpec,
        runner: &StepRunner,
        extracted: &mut BTreeMap<String, String>,
        deadline: Instant,
        timeout: Duration,
    ) -> Run {
        let t0 = Instant::now();
        let rendered = {
            let values = Values {
                unit: &self.spec.unit,
                agency: &self.spec.agency,
                creds: &self.spec.credentials,
                extracted,
            };
            render(step, &values)
        };
        let (path, headers, body) = match rendered {
            Ok(r) => r,
            Err(f) => {
                let mut run = Run {
                    outcome: Err(f),
                    ..Run::default()
                };
                run.phases.total_us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                return run;
            }
        };
        let out = Outgoing {
            method: step.method,
            path_and_query: &path,
            headers: &headers,
            body,
        };
        let reading = Reading {
            body_max_bytes: self.spec.body_max_bytes,
            body_contains: step.body_contains.as_deref(),
            keep_body: runner.keep_body,
            label: &runner.full_name,
        };
        let x = runner
            .client
            .exchange(&out, &reading, deadline, timeout, &self.stats)
            .await;
        let mut run = x.run;
        let Some(status) = run.status.filter(|_| run.outcome.is_ok()) else {
            return run;
        };
        run.outcome = http::judge(
            status,
            &step.expect_status,
            step.body_contains.as_deref(),
            x.found,
            x.read,
            x.cut,
        );
        if run.outcome.is_ok() {
            match extract(step, &x.headers, &x.body, x.cut) {
                Ok(values) => extracted.extend(values),
                Err(f) => run.outcome = Err(f),
            }
        }
        run
    }
}

type Rendered = (String, Vec<(HeaderName, HeaderValue)>, Bytes);

/// A step's path and query, headers and body with every value in place.
fn render(step: &StepSpec, values: &Values<'_>) -> Result<Rendered, Failure> {
    let unset = |e: super::template::Unset| {
        Failure::new(
            ErrorClass::Extract,
            format!("{} has no value when the step runs", e.0),
        )
    };
    let path = step.url.path.render(values, Encoding::Url).map_err(unset)?;
    let mut headers = Vec::with_capacity(step.headers.len());
    for (name, tpl) in &step.headers {
        let v = tpl.render(values, Encoding::Raw).map_err(unset)?;
        let v = HeaderValue::from_str(&v).map_err(|_| {
            Failure::new(
                ErrorClass::Extract,
                format!("header {name}: a substituted value cannot be in a header"),
            )
        })?;
        headers.push((name.clone(), v));
    }
    // A JSON body gets its values escaped, so a quote in a password
    // cannot break (or inject into) the document.
    let json = step.headers.iter().any(|(n, t)| {
        n == hyper::header::CONTENT_TYPE
            && t.literals()
                .any(|l| l.to_ascii_lowercase().contains("json"))
    });
    let enc = if json { Encoding::Json } else { Encoding::Raw };
    let body = match &step.body {
        None => Bytes::new(),
        Some(t) => Bytes::from(t.render(values, enc).map_err(unset)?),
    };
    Ok((path, headers, body))
}

/// A step's extractions from its response, all or none.
fn extract(
    step: &StepSpec,
    headers: &hyper::HeaderMap,
    body: &[u8],
    cut: bool,
) -> Result<Vec<(String, String)>, Failure> {
    let fail = |d: String| Failure::new(ErrorClass::Extract, d);
    let mut doc: Option<serde_json::Value> = None;
    let mut out = Vec::with_capacity(step.extract.len());
    for (var, from) in &step.extract {
        let value = match from {
            Extract::Json(pointer) => {
                if doc.is_none() {
                    doc = Some(serde_json::from_slice(body).map_err(|_| {
                        fail(if cut {
                            format!(
                                "the body was cut at body_max_bytes ({} bytes) and is not whole JSON, so {{{{{var}}}}} cannot be extracted",
                                body.len()
                            )
                        } else {
                            format!("the body is not JSON, so {{{{{var}}}}} cannot be extracted")
                        })
                    })?);
                }
                let v = doc
                    .as_ref()
                    .and_then(|d| d.pointer(pointer))
                    .ok_or_else(|| {
                        fail(format!(
                            "no value at {pointer:?} in the JSON body for {{{{{var}}}}}"
                        ))
                    })?;
                extracted_value(v)
                    .map_err(|e| fail(format!("the value at {pointer:?} for {{{{{var}}}}} {e}")))?
            }
            Extract::Header(name) => {
                let v = headers
                    .get(name)
                    .ok_or_else(|| fail(format!("no {name} header for {{{{{var}}}}}")))?;
                let v = v
                    .to_str()
                    .map_err(|_| {
                        fail(format!(
                            "the {name} header for {{{{{var}}}}} is not visible ASCII"
                        ))
                    })?
                    .trim()
                    .to_owned();
                check_value(&v)
                    .map_err(|e| fail(format!("the {name} header for {{{{{var}}}}} {e}")))?;
                v
            }
        };
        out.push((var.clone(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HttpMethod, UrlTemplate};
    use crate::probe::template::Template;

    fn step(extract: Vec<(&str, Extract)>) -> StepSpec {
        StepSpec {
            name: "login".into(),
            method: HttpMethod::Post,
            url: UrlTemplate {
                text: "http://cad/api/login".into(),
                tls: false,
                host: "cad".into(),
                port: 80,
                authority: "cad".into(),
                path: Template::parse("/api/login").unwrap(),
            },
            headers: Vec::new(),
            body: None,
            expect_status: vec![(200, 200)],
            body_contains: None,
            extract: extract
                .into_iter()
                .map(|(v, e)| (v.to_owned(), e))
                .collect(),
        }
    }

    #[test]
    fn extraction_table() {
        let json = |p: &str| Extract::Json(p.into());
        let hdr = |h: &'static str| Extract::Header(HeaderName::from_static(h));
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-session", HeaderValue::from_static(" s-42 "));
        headers.insert("x-bin", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let body = br#"{"token":"t-1","expires_in":600,"nested":{"a/b":["x"]},"obj":{}}"#;
        let ok = |e: Vec<(&str, Extract)>, cut: bool, body: &[u8]| {
            extract(&step(e), &headers, body, cut).map_err(|f| (f.class, f.detail))
        };
        assert_eq!(
            ok(
                vec![
                    ("token", json("/token")),
                    ("ttl", json("/expires_in")),
                    ("x", json("/nested/a~1b/0")),
                    ("session", hdr("x-session")),
                ],
                false,
                body
            ),
            Ok(vec![
                ("token".into(), "t-1".into()),
                ("ttl".into(), "600".into()),
                ("x".into(), "x".into()),
                ("session".into(), "s-42".into()),
            ])
        );
        // (extractions, cut, body, what the detail says)
        type Case<'a> = (Vec<(&'a str, Extract)>, bool, &'a [u8], &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![("t", json("/nope"))],
                false,
                body,
                "no value at \"/nope\"",
            ),
            (
                vec![("t", json("/obj"))],
                false,
                body,
                "is not a string, number or boolean",
            ),
            (
                vec![("t", json("/token"))],
                false,
                b"<html>",
                "the body is not JSON",
            ),
            (
                vec![("t", json("/token"))],
                true,
                &body[..20],
                "cut at body_max_bytes (20 bytes)",
            ),
            (
                vec![("t", hdr("x-missing"))],
                false,
                body,
                "no x-missing header",
            ),
            (vec![("t", hdr("x-bin"))], false, body, "not visible ASCII"),
        ];
        for (e, cut, b, want) in cases {
            let (class, detail) = ok(e, cut, b).unwrap_err();
            assert_eq!(class, ErrorClass::Extract);
            assert!(detail.contains(want), "{detail} lacks {want}");
            assert!(!detail.contains("t-1"), "{detail} holds a value");
        }
    }
}
