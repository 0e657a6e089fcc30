//! A gate's definition (`POST /api/v1/gates`): what is compared with what,
//! over which window, on which metrics. Pure: parsed raw from JSON, then
//! validated into a [`GateSpec`] with messages naming the bad field; the
//! windows are computed from `now` ([`GateSpec::windows`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::GateConfig;
use crate::selector::{LabelSelector, MAX_TERMS, SelectorError};

/// Units listed in a cohort at most.
pub const MAX_COHORT_UNITS: usize = 10_000;
/// The window, at least and at most.
pub const MIN_WINDOW_MS: u64 = 60_000;
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3_600_000;
/// Times at most (JSON's exact integers).
pub const MAX_TIME_MS: u64 = (1 << 53) - 1;
/// Minimum sample sizes at most.
pub const MAX_COUNT: u64 = 1_000_000_000;
/// The default window.
pub const DEFAULT_WINDOW_MS: u64 = 15 * 60_000;

/// A definition refused: the field, and why (gates and rollouts).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

/// A [`SpecError`] (shared with `crate::rollout::spec`).
pub(crate) fn bad(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// JSON integers as JSON Schema counts them: `348609.0` is the integer
/// 348609 (a client that writes numbers as floats is not refused), up to
/// 2^53 - 1; anything else is an error.
pub mod whole {
    use serde::de::{self, Deserializer, Visitor};

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number from 0 to 2^53 - 1")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("must not be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            if v.fract() == 0.0 && (0.0..=9_007_199_254_740_991.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!(
                    "{v} is not a whole number from 0 to 2^53 - 1"
                )))
            }
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole)
    }

    pub fn usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let v = d.deserialize_any(Whole)?;
        usize::try_from(v).map_err(|_| de::Error::custom("too large"))
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(Whole).map(Some)
    }
}

/// Units of one agency running one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    pub agency: String,
    /// The probe's name, as the agents' configs name it.
    pub probe: String,
    /// Only results against this target (`None`: any target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Only these units (`None`: every unit of the agency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<String>>,
    /// Only units carrying all these labels (issue 16), as they last
    /// reported them (`crate::selector`); 1 to 16, `None`: any labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

impl Cohort {
    /// The cohort's label selector (the empty one without `labels`).
    /// Checked at validation, so a stored gate's always parses.
    pub fn selector(&self) -> Result<LabelSelector, SelectorError> {
        match &self.labels {
            None => Ok(LabelSelector::default()),
            Some(l) => LabelSelector::from_pairs(l.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        }
    }
}

/// What the cohort is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Baseline {
    /// The same cohort before a change made at this time (unix ms): the
    /// window before it against the window after it.
    BeforeMs(#[serde(deserialize_with = "whole::u64")] u64),
    /// Another cohort, over the same window ending now.
    Cohort(Cohort),
}

/// A figure compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    /// Total probe latency of successful results (ms).
    Latency,
    #[serde(rename = "latency.dns")]
    LatencyDns,
    #[serde(rename = "latency.connect")]
    LatencyConnect,
    #[serde(rename = "latency.tls")]
    LatencyTls,
    #[serde(rename = "latency.ttfb")]
    LatencyTtfb,
    /// Failed results / results.
    FailureRatio,
}

impl MetricName {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::Latency => "latency",
            MetricName::LatencyDns => "latency.dns",
            MetricName::LatencyConnect => "latency.connect",
            MetricName::LatencyTls => "latency.tls",
            MetricName::LatencyTtfb => "latency.ttfb",
            MetricName::FailureRatio => "failure_ratio",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricOpts {
    /// A key metric that fails fails the gate; one that cannot be judged
    /// makes it inconclusive.
    #[serde(default)]
    pub key: bool,
}

/// The metrics judged, each named once (a map: a name cannot repeat).
pub type Metrics = std::collections::BTreeMap<MetricName, MetricOpts>;

/// The request body, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub name: String,
    pub cohort: Cohort,
    pub baseline: Baseline,
    /// The span judged on each side (default 15 minutes).
    #[serde(default, deserialize_with = "whole::opt_u64")]
    pub window_ms: Option<u64>,
    pub metrics: Option<Metrics>,
    pub config: Option<GateConfig>,
}

/// A validated gate definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSpec {
    pub name: String,
    pub cohort: Cohort,
    pub baseline: Baseline,
    pub window_ms: u64,
    pub metrics: Metrics,
    pub config: GateConfig,
}

/// A time span, `[since_ms, until_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub since_ms: u64,
    pub until_ms: u64,
}

/// Characters (as JSON Schema's `maxLength` counts them).
pub(crate) fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The thresholds a definition names (the defaults for what it does not),
/// checked: gates' and rollouts' `config`.
pub(crate) fn check_config(config: Option<GateConfig>) -> Result<GateConfig, SpecError> {
    let config = config.unwrap_or_default();
    if config.min_latency_samples > MAX_COUNT as usize || config.min_failure_total > MAX_COUNT {
        return Err(bad(
            "config",
            "minimum sample sizes must be at most 1000000000",
        ));
    }
    config
        .validate()
        .map_err(|e| bad("config", e.to_string()))?;
    Ok(config)
}

/// A cohort is a filter: an agency or unit name that cannot exist matches
/// nothing (the gate says `no_data`), so names are only bounded here.
fn check_cohort(c: &Cohort, field: &str) -> Result<(), SpecError> {
    if c.agency.is_empty() || chars(&c.agency) > 64 {
        return Err(bad(format!("{field}.agency"), "must be 1 to 64 characters"));
    }
    if c.probe.is_empty() || chars(&c.probe) > 200 {
        return Err(bad(format!("{field}.probe"), "must be 1 to 200 characters"));
    }
    if let Some(t) = &c.target
        && (t.is_empty() || chars(t) > 2_048)
    {
        return Err(bad(
            format!("{field}.target"),
            "must be 1 to 2048 characters",
        ));
    }
    if let Some(units) = &c.units {
        if units.is_empty() || units.len() > MAX_COHORT_UNITS {
            return Err(bad(
                format!("{field}.units"),
                format!("must list 1 to {MAX_COHORT_UNITS} units"),
            ));
        }
        if let Some(u) = units.iter().find(|u| u.is_empty() || chars(u) > 256) {
            return Err(bad(
                format!("{field}.units"),
                format!("{u:?}: a unit must be 1 to 256 characters"),
            ));
        }
    }
    if let Some(labels) = &c.labels {
        if labels.is_empty() || labels.len() > MAX_TERMS {
            return Err(bad(
                format!("{field}.labels"),
                format!("must name 1 to {MAX_TERMS} labels"),
            ));
        }
        // A label no unit could carry is refused (the wire's own rules).
        for (k, v) in labels {
            LabelSelector::from_pairs([(k.as_str(), v.as_str())]).map_err(|e| {
                let at = match e {
                    SelectorError::Label(muster_proto::LabelError::Value { .. }) => {
                        format!("{field}.labels.{k}")
                    }
                    _ => format!("{field}.labels"),
                };
                bad(at, e.to_string())
            })?;
        }
    }
    Ok(())
}

impl RawGate {
    pub fn validate(self) -> Result<GateSpec, SpecError> {
        if self.name.is_empty() || chars(&self.name) > 200 {
            return Err(bad("name", "must be 1 to 200 characters"));
        }
        check_cohort(&self.cohort, "cohort")?;
        match &self.baseline {
            // A time still ahead (a deploy tool's clock, a change
            // scheduled) judges an empty canary side until then: never a pass.
            Baseline::BeforeMs(t) => {
                if *t > MAX_TIME_MS {
                    return Err(bad("baseline.before_ms", "must be at most 2^53 - 1"));
                }
            }
            Baseline::Cohort(c) => check_cohort(c, "baseline.cohort")?,
        }
        let window_ms = self.window_ms.unwrap_or(DEFAULT_WINDOW_MS);
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
            return Err(bad(
                "window_ms",
                "must be 60000 (1 minute) to 604800000 (7 days)",
            ));
        }
        let metrics = self.metrics.unwrap_or_else(|| {
            [MetricName::Latency, MetricName::FailureRatio]
                .into_iter()
                .map(|m| (m, MetricOpts { key: true }))
                .collect()
        });
        if metrics.is_empty() {
            return Err(bad("metrics", "must name at least one metric"));
        }
        let config = check_config(self.config)?;
        Ok(GateSpec {
            name: self.name,
            cohort: self.cohort,
            baseline: self.baseline,
            window_ms,
            metrics,
            config,
        })
    }
}

impl GateSpec {
    /// The agencies whose data the gate reads (a token must see all).
    pub fn agencies(&self) -> Vec<&str> {
        let mut v = vec![self.cohort.agency.as_str()];
        if let Baseline::Cohort(c) = &self.baseline
            && c.agency != self.cohort.agency
        {
            v.push(&c.agency);
        }
        v
    }

    /// (baseline cohort, baseline span, canary span) judged at `now_ms`.
    /// Before a change at `t`: the window before `t` against the window
    /// after it (up to now); against another cohort: both over the window
    /// ending now.
    pub fn windows(&self, now_ms: u64) -> (&Cohort, Span, Span) {
        match &self.baseline {
            Baseline::BeforeMs(t) => (
                &self.cohort,
                Span {
                    since_ms: t.saturating_sub(self.window_ms),
                    until_ms: *t,
                },
                Span {
                    since_ms: *t,
                    until_ms: now_ms.min(t.saturating_add(self.window_ms)).max(*t),
                },
            ),
            Baseline::Cohort(c) => {
                let s = Span {
                    since_ms: now_ms.saturating_sub(self.window_ms),
                    until_ms: now_ms,
                };
                (c, s, s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawGate {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn definitions_are_validated_with_the_field_named() {
        let ok = r#"{"name":"cad 7.4","cohort":{"agency":"metro-fire","probe":"cad-api"},"baseline":{"before_ms":1000}}"#;
        let g = raw(ok).validate().unwrap();
        // Whole numbers written as floats are integers (JSON Schema says so).
        let f = raw(&ok.replace("1000}", "1000.0},\"window_ms\":60000.0"))
            .validate()
            .unwrap();
        assert_eq!(
            (f.baseline, f.window_ms),
            (Baseline::BeforeMs(1000), 60_000)
        );
        assert!(serde_json::from_str::<RawGate>(&ok.replace("1000}", "1000.5}")).is_err());
        assert!(serde_json::from_str::<RawGate>(&ok.replace("1000}", "-1}")).is_err());
        assert_eq!(g.window_ms, DEFAULT_WINDOW_MS);
        assert_eq!(g.metrics.len(), 2);
        // A time ahead of this clock is accepted (it judges no canary yet).
        assert!(raw(&ok.replace("1000", "99999999999")).validate().is_ok());
        // 200 characters of 3 bytes each: the limit counts characters.
        let long = ok.replace("cad 7.4", &"€".repeat(200));
        assert!(raw(&long).validate().is_ok());
        // (body, the field the error names)
        let c = r#""cohort":{"agency":"a","probe":"p"}"#;
        let cases = [
            (format!(r#"{{"name":"",{c},"baseline":{{"before_ms":1}}}}"#), "name"),
            (format!(r#"{{"name":"{}",{c},"baseline":{{"before_ms":1}}}}"#, "x".repeat(201)), "name"),
            (format!(r#"{{"name":"n","cohort":{{"agency":"{}","probe":"p"}},"baseline":{{"before_ms":1}}}}"#, "a".repeat(65)), "cohort.agency"),
            (r#"{"name":"n","cohort":{"agency":"a","probe":""},"baseline":{"before_ms":1}}"#.into(), "cohort.probe"),
            (r#"{"name":"n","cohort":{"agency":"a","probe":"p","units":[]},"baseline":{"before_ms":1}}"#.into(), "cohort.units"),
            (r#"{"name":"n","cohort":{"agency":"a","probe":"p","units":[""]},"baseline":{"before_ms":1}}"#.into(), "cohort.units"),
            (format!(r#"{{"name":"n",{c},"baseline":{{"before_ms":9007199254740992}}}}"#), "baseline.before_ms"),
            (format!(r#"{{"name":"n",{c},"baseline":{{"cohort":{{"agency":"","probe":"p"}}}}}}"#), "baseline.cohort.agency"),
            (format!(r#"{{"name":"n",{c},"baseline":{{"before_ms":1}},"window_ms":59999}}"#), "window_ms"),
            (format!(r#"{{"name":"n",{c},"baseline":{{"before_ms":1}},"window_ms":604800001}}"#), "window_ms"),
            (format!(r#"{{"name":"n",{c},"baseline":{{"before_ms":1}},"metrics":{{}}}}"#), "metrics"),
            (format!(r#"{{"name":"n",{c},"baseline":{{"before_ms":1}},"config":{{"alpha":2}}}}"#), "config"),
            (format!(r#"{{"name":"n",{c},"baseline":{{"before_ms":1}},"config":{{"min_failure_total":1000000001}}}}"#), "config"),
            (r#"{"name":"n","cohort":{"agency":"a","probe":"p","labels":{}},"baseline":{"before_ms":1}}"#.into(), "cohort.labels"),
            (format!(r#"{{"name":"n","cohort":{{"agency":"a","probe":"p","labels":{{{}}}}},"baseline":{{"before_ms":1}}}}"#,
                (0..17).map(|i| format!(r#""k{i}":"v""#)).collect::<Vec<_>>().join(",")), "cohort.labels"),
            (r#"{"name":"n","cohort":{"agency":"a","probe":"p","labels":{"Station":"7"}},"baseline":{"before_ms":1}}"#.into(), "cohort.labels"),
            (r#"{"name":"n","cohort":{"agency":"a","probe":"p","labels":{"":"7"}},"baseline":{"before_ms":1}}"#.into(), "cohort.labels"),
            (format!(r#"{{"name":"n","cohort":{{"agency":"a","probe":"p","labels":{{"station":"{}"}}}},"baseline":{{"before_ms":1}}}}"#, "7".repeat(65)), "cohort.labels.station"),
            (r#"{"name":"n","cohort":{"agency":"a","probe":"p","labels":{"station":"7\u0007"}},"baseline":{"before_ms":1}}"#.into(), "cohort.labels.station"),
            (format!(r#"{{"name":"n",{c},"baseline":{{"cohort":{{"agency":"a","probe":"p","labels":{{"a b":"7"}}}}}}}}"#), "baseline.cohort.labels"),
        ];
        for (body, field) in cases {
            let e = raw(&body).validate().unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
        }
        // A label selector: 16 labels of 64 characters each (any script).
        let sixteen = (0..16)
            .map(|i| format!(r#""k{i}":"{}""#, "é".repeat(64)))
            .collect::<Vec<_>>()
            .join(",");
        let l = raw(&format!(
            r#"{{"name":"n","cohort":{{"agency":"a","probe":"p","labels":{{{sixteen}}}}},"baseline":{{"before_ms":1}}}}"#
        ))
        .validate()
        .unwrap();
        assert_eq!(l.cohort.labels.as_ref().unwrap().len(), 16);
        assert!(!l.cohort.selector().unwrap().is_empty());
        // It is stored and read back (`gates.json`); without labels the
        // stored form is as before.
        let back: GateSpec = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
        assert!(!serde_json::to_string(&g).unwrap().contains("labels"));
        assert!(g.cohort.selector().unwrap().is_empty());
        // Unknown fields and metrics are refused by the parser.
        assert!(serde_json::from_str::<RawGate>(&ok.replace("\"name\"", "\"nmae\"")).is_err());
        assert!(
            serde_json::from_str::<RawGate>(&format!(
                r#"{{"name":"n",{c},"baseline":{{"before_ms":1}},"metrics":{{"cpu":{{}}}}}}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn windows_before_a_change_and_against_another_cohort() {
        let mut g = raw(r#"{"name":"n","cohort":{"agency":"a","probe":"p"},"baseline":{"before_ms":1000000},"window_ms":600000}"#)
            .validate()
            .unwrap();
        // (now, baseline span, canary span)
        let w = 600_000;
        for (now, b, c) in [
            (1_000_000, (400_000, 1_000_000), (1_000_000, 1_000_000)),
            (1_300_000, (400_000, 1_000_000), (1_000_000, 1_300_000)),
            (9_000_000, (400_000, 1_000_000), (1_000_000, 1_000_000 + w)),
        ] {
            let (_, bs, cs) = g.windows(now);
            assert_eq!((bs.since_ms, bs.until_ms), b, "baseline at {now}");
            assert_eq!((cs.since_ms, cs.until_ms), c, "canary at {now}");
        }
        g.baseline = Baseline::Cohort(Cohort {
            agency: "b".into(),
            probe: "p".into(),
            target: None,
            units: None,
            labels: None,
        });
        let (c, bs, cs) = g.windows(5_000_000);
        assert_eq!(c.agency, "b");
        assert_eq!(bs, cs);
        assert_eq!((bs.since_ms, bs.until_ms), (5_000_000 - w, 5_000_000));
        assert_eq!(g.agencies(), vec!["a", "b"]);
    }
}
