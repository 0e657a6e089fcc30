//! A rollout's definition (`POST /api/v1/rollouts`): the change, its
//! target, its waves, and how each wave is judged. Pure: parsed raw from
//! JSON, then validated into a [`RolloutSpec`] with messages naming the
//! bad field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gate::spec::{MAX_COHORT_UNITS, MetricName, SpecError, bad, chars, check_config, whole};
use crate::gate::stats::GateConfig;
use crate::selector::{LabelSelector, MAX_TERMS, SelectorError};

/// Waves at most.
pub const MAX_WAVES: usize = 20;
/// A soak, at least and at most.
pub const MIN_SOAK_MS: u64 = 10_000;
pub const MAX_SOAK_MS: u64 = 7 * 24 * 3_600_000;
/// How long a wave waits for its units to apply, at least and at most.
pub const MIN_APPLY_MS: u64 = 10_000;
pub const MAX_APPLY_MS: u64 = 24 * 3_600_000;
pub const DEFAULT_SOAK_MS: u64 = 10 * 60_000;
pub const DEFAULT_APPLY_MS: u64 = 10 * 60_000;

/// The units a rollout changes: an agency's, narrowed by a unit list and
/// a label selector (as the units last reported their labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub agency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

impl Target {
    pub fn selector(&self) -> LabelSelector {
        self.labels
            .as_ref()
            .and_then(|l| {
                LabelSelector::from_pairs(l.iter().map(|(k, v)| (k.as_str(), v.as_str()))).ok()
            })
            .unwrap_or_default()
    }
}

/// How far a wave takes the rollout: to this many units in all, or to
/// this percentage of the target (rounded up; at least one more unit than
/// the wave before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Wave {
    Units(#[serde(deserialize_with = "whole::usize")] usize),
    Percent(#[serde(deserialize_with = "whole::u64")] u64),
}

/// A figure a wave is judged on: the updated cohort against the one not
/// yet updated (or, for the last wave, against itself before the change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutMetric {
    /// The probe's failed results / results.
    FailureRatio,
    /// The probe's total latency (successful results, ms), and per phase.
    Latency,
    #[serde(rename = "latency.dns")]
    LatencyDns,
    #[serde(rename = "latency.connect")]
    LatencyConnect,
    #[serde(rename = "latency.tls")]
    LatencyTls,
    #[serde(rename = "latency.ttfb")]
    LatencyTtfb,
    /// Units whose watched processes restarted during the soak / units
    /// that reported processes.
    ProcessRestarts,
    /// Units whose agent dropped records or observations during the soak
    /// / units that reported their agent's status.
    AgentDrops,
    /// Units flagged lost when judged / units.
    Lost,
}

impl RolloutMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutMetric::FailureRatio => "failure_ratio",
            RolloutMetric::Latency => "latency",
            RolloutMetric::LatencyDns => "latency.dns",
            RolloutMetric::LatencyConnect => "latency.connect",
            RolloutMetric::LatencyTls => "latency.tls",
            RolloutMetric::LatencyTtfb => "latency.ttfb",
            RolloutMetric::ProcessRestarts => "process_restarts",
            RolloutMetric::AgentDrops => "agent_drops",
            RolloutMetric::Lost => "lost",
        }
    }

    /// The probe metric it is, if it is one.
    pub fn probe_metric(self) -> Option<MetricName> {
        Some(match self {
            RolloutMetric::FailureRatio => MetricName::FailureRatio,
            RolloutMetric::Latency => MetricName::Latency,
            RolloutMetric::LatencyDns => MetricName::LatencyDns,
            RolloutMetric::LatencyConnect => MetricName::LatencyConnect,
            RolloutMetric::LatencyTls => MetricName::LatencyTls,
            RolloutMetric::LatencyTtfb => MetricName::LatencyTtfb,
            _ => return None,
        })
    }
}

pub type Metrics = BTreeMap<RolloutMetric, crate::gate::spec::MetricOpts>;

/// The request body, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub name: String,
    /// The change: TOML of remotable sections, issued to each unit over
    /// its own document's sections.
    pub change: String,
    pub target: Target,
    /// The probe whose results are compared (its name in the agents'
    /// configs), optionally only against one target.
    pub probe: String,
    #[serde(default)]
    pub probe_target: Option<String>,
    pub waves: Option<Vec<Wave>>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    pub soak_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    pub apply_timeout_ms: Option<u64>,
    pub metrics: Option<Metrics>,
    pub config: Option<GateConfig>,
}

/// A validated rollout definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub name: String,
    pub change: String,
    pub target: Target,
    pub probe: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_target: Option<String>,
    pub waves: Vec<Wave>,
    pub soak_ms: u64,
    pub apply_timeout_ms: u64,
    pub metrics: Metrics,
    pub config: GateConfig,
}

impl RawRollout {
    pub fn validate(self) -> Result<RolloutSpec, SpecError> {
        if self.name.is_empty() || chars(&self.name) > 200 {
            return Err(bad("name", "must be 1 to 200 characters"));
        }
        crate::remote::book::check_body(&self.change).map_err(|e| bad("change", e.to_string()))?;
        muster_proto::ids::validate_part("agency", &self.target.agency)
            .map_err(|e| bad("target.agency", e.to_string()))?;
        if let Some(units) = &self.target.units {
            if units.is_empty() || units.len() > MAX_COHORT_UNITS {
                return Err(bad(
                    "target.units",
                    format!("must list 1 to {MAX_COHORT_UNITS} units"),
                ));
            }
            for u in units {
                muster_proto::ids::validate_part("unit_id", u)
                    .map_err(|e| bad("target.units", e.to_string()))?;
            }
        }
        if let Some(labels) = &self.target.labels {
            if labels.is_empty() || labels.len() > MAX_TERMS {
                return Err(bad(
                    "target.labels",
                    format!("must name 1 to {MAX_TERMS} labels"),
                ));
            }
            LabelSelector::from_pairs(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e: SelectorError| bad("target.labels", e.to_string()))?;
        }
        if self.probe.is_empty() || chars(&self.probe) > 200 {
            return Err(bad("probe", "must be 1 to 200 characters"));
        }
        if let Some(t) = &self.probe_target
            && (t.is_empty() || chars(t) > 2_048)
        {
            return Err(bad("probe_target", "must be 1 to 2048 characters"));
        }
        let waves = self.waves.unwrap_or_else(|| {
            vec![
                Wave::Units(1),
                Wave::Percent(5),
                Wave::Percent(25),
                Wave::Percent(100),
            ]
        });
        if waves.is_empty() || waves.len() > MAX_WAVES {
            return Err(bad("waves", format!("must list 1 to {MAX_WAVES} waves")));
        }
        for (i, w) in waves.iter().enumerate() {
            match *w {
                Wave::Units(n) if n == 0 || n > MAX_COHORT_UNITS => {
                    return Err(bad(
                        format!("waves[{i}].units"),
                        format!("must be 1 to {MAX_COHORT_UNITS}"),
                    ));
                }
                Wave::Percent(p) if p == 0 || p > 100 => {
                    return Err(bad(format!("waves[{i}].percent"), "must be 1 to 100"));
                }
                _ => {}
            }
        }
        let soak_ms = self.soak_ms.unwrap_or(DEFAULT_SOAK_MS);
        if !(MIN_SOAK_MS..=MAX_SOAK_MS).contains(&soak_ms) {
            return Err(bad(
                "soak_ms",
                "must be 10000 (10 seconds) to 604800000 (7 days)",
            ));
        }
        let apply_timeout_ms = self.apply_timeout_ms.unwrap_or(DEFAULT_APPLY_MS);
        if !(MIN_APPLY_MS..=MAX_APPLY_MS).contains(&apply_timeout_ms) {
            return Err(bad(
                "apply_timeout_ms",
                "must be 10000 (10 seconds) to 86400000 (1 day)",
            ));
        }
        let metrics = self.metrics.unwrap_or_else(|| {
            use crate::gate::spec::MetricOpts;
            [
                (RolloutMetric::FailureRatio, true),
                (RolloutMetric::Latency, true),
                (RolloutMetric::ProcessRestarts, false),
                (RolloutMetric::AgentDrops, false),
                (RolloutMetric::Lost, false),
            ]
            .into_iter()
            .map(|(m, key)| (m, MetricOpts { key }))
            .collect()
        });
        if metrics.is_empty() {
            return Err(bad("metrics", "must name at least one metric"));
        }
        let config = check_config(self.config)?;
        Ok(RolloutSpec {
            name: self.name,
            change: self.change,
            target: self.target,
            probe: self.probe,
            probe_target: self.probe_target,
            waves,
            soak_ms,
            apply_timeout_ms,
            metrics,
            config,
        })
    }
}

/// The cumulative unit count at the end of each wave, for a target of
/// `n` units: increasing, each wave at least one more, the last `n`
/// (the last wave takes every remaining unit). Waves that would add none
/// are dropped. Pure.
pub fn wave_ends(waves: &[Wave], n: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for w in waves {
        let prev = out.last().copied().unwrap_or(0);
        if prev >= n {
            break;
        }
        let want = match *w {
            Wave::Units(k) => k,
            Wave::Percent(p) => (n as u64 * p).div_ceil(100) as usize,
        };
        out.push(want.clamp(prev + 1, n));
    }
    match out.last_mut() {
        Some(last) => *last = n,
        None if n > 0 => out.push(n),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: serde_json::Value) -> Result<RolloutSpec, String> {
        serde_json::from_value::<RawRollout>(v)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "name": "probe timeout",
            "change": "[sampling]\ninterval = \"10s\"\n",
            "target": {"agency": "metro"},
            "probe": "cad-api"
        })
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("name", serde_json::json!(""), "name:"),
            (
                "change",
                serde_json::json!("[mqtt]\nurl = \"x\"\n"),
                "change: [mqtt]",
            ),
            (
                "change",
                serde_json::json!(""),
                "change: the body sets no section",
            ),
            (
                "target",
                serde_json::json!({"agency": "a/b"}),
                "target.agency",
            ),
            (
                "target",
                serde_json::json!({"agency": "m", "units": []}),
                "target.units",
            ),
            (
                "target",
                serde_json::json!({"agency": "m", "labels": {"Bad Key": "1"}}),
                "target.labels",
            ),
            ("waves", serde_json::json!([]), "waves: must list"),
            (
                "waves",
                serde_json::json!([{"percent": 101}]),
                "waves[0].percent",
            ),
            ("waves", serde_json::json!([{"units": 0}]), "waves[0].units"),
            ("soak_ms", serde_json::json!(9_999), "soak_ms"),
            (
                "apply_timeout_ms",
                serde_json::json!(86_400_001u64),
                "apply_timeout_ms",
            ),
            ("metrics", serde_json::json!({}), "metrics: must name"),
            ("config", serde_json::json!({"alpha": 1.5}), "config:"),
        ];
        for (field, value, want) in cases {
            let mut v = base();
            v[field] = value.clone();
            let e = raw(v).unwrap_err();
            assert!(e.contains(want), "{field}={value}: {e}");
        }
        let ok = raw(base()).unwrap();
        assert_eq!(ok.waves.len(), 4);
        assert_eq!(
            (ok.soak_ms, ok.apply_timeout_ms),
            (DEFAULT_SOAK_MS, DEFAULT_APPLY_MS)
        );
        assert!(ok.metrics[&RolloutMetric::FailureRatio].key);
        assert!(!ok.metrics[&RolloutMetric::Lost].key);
        let mut v = base();
        v["surprise"] = serde_json::json!(1);
        assert!(raw(v).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn waves_grow_by_at_least_one_and_end_with_every_unit() {
        use Wave::*;
        let cases: &[(&[Wave], usize, &[usize])] = &[
            (
                &[Units(1), Percent(5), Percent(25), Percent(100)],
                100,
                &[1, 5, 25, 100],
            ),
            (
                &[Units(1), Percent(5), Percent(25), Percent(100)],
                10,
                &[1, 2, 3, 10],
            ),
            (
                &[Units(1), Percent(5), Percent(25), Percent(100)],
                2,
                &[1, 2],
            ),
            (&[Units(1), Percent(5)], 1, &[1]),
            // The last wave takes what remains.
            (&[Units(2), Units(5)], 40, &[2, 40]),
            (&[Percent(50)], 3, &[3]),
            (&[Units(50), Units(10), Units(60)], 100, &[50, 51, 100]),
            (&[Units(1)], 0, &[]),
        ];
        for (waves, n, want) in cases {
            assert_eq!(wave_ends(waves, *n), *want, "{waves:?} over {n}");
        }
    }
}
