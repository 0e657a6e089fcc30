//! A cohort's probe results over a span, read from the store (blocking:
//! call from a blocking thread). Bounded: at most `max_results` results a
//! side; past it the side is marked `truncated` (the verdict is judged on
//! what was read, and says so).

use muster_proto::{Label, Outcome, Payload, ProbeResult, UnitId};

use super::spec::{Cohort, MetricName, Span};
use super::stats::{MetricInput, MetricKind};
use crate::store::{SampleQuery, Store, StoreError};

/// Results read per store call.
const PAGE: usize = 2_000;

/// One side of a comparison.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Side {
    /// Latencies (ms) of successful results: total, dns, connect, tls, ttfb.
    pub latency: [Vec<f64>; 5],
    pub failed: u64,
    pub results: u64,
    /// Units with at least one result.
    pub units_with_data: usize,
    /// Units the cohort selected.
    pub units: usize,
    /// The result budget ran out before the span did.
    pub truncated: bool,
    /// Units that reported their watched processes in the span, and those
    /// whose processes restarted within it (a restart count that grew).
    pub units_with_processes: usize,
    pub units_restarting: usize,
    /// Units that reported their agent's status in the span, and those
    /// whose agent dropped records or observations within it.
    pub units_with_status: usize,
    pub units_dropping: usize,
}

/// A unit's counters over the span: (first, last) seen.
#[derive(Default)]
struct Growth {
    restarts: std::collections::HashMap<String, (u32, u32)>,
    drops: Option<(u64, u64)>,
}

impl Growth {
    fn host(&mut self, h: &muster_proto::HostSample) {
        for p in &h.processes {
            let e = self
                .restarts
                .entry(p.name.clone())
                .or_insert((p.restarts, p.restarts));
            e.1 = p.restarts;
        }
    }

    fn status(&mut self, s: &muster_proto::AgentStatus) {
        let n = s.dropped.total() + s.observations_dropped;
        let e = self.drops.get_or_insert((n, n));
        e.1 = n;
    }

    fn fold(self, side: &mut Side) {
        if !self.restarts.is_empty() {
            side.units_with_processes += 1;
            // A count that went down is a restarted agent: not a restart.
            if self.restarts.values().any(|(a, b)| b > a) {
                side.units_restarting += 1;
            }
        }
        if let Some((a, b)) = self.drops {
            side.units_with_status += 1;
            if b > a {
                side.units_dropping += 1;
            }
        }
    }
}

/// A metric's input from the two sides: latencies for a latency metric,
/// failed results for the failure ratio. One home for the gate's and the
/// rollouts' comparisons.
pub fn probe_input(m: MetricName, key: bool, baseline: &Side, canary: &Side) -> MetricInput {
    MetricInput {
        name: m.as_str().to_owned(),
        key,
        kind: match m {
            MetricName::FailureRatio => MetricKind::Failures {
                baseline_fail: baseline.failed,
                baseline_total: baseline.results,
                canary_fail: canary.failed,
                canary_total: canary.results,
            },
            lat => MetricKind::Latency {
                baseline: baseline.latencies(lat).to_vec(),
                canary: canary.latencies(lat).to_vec(),
            },
        },
    }
}

impl Side {
    /// The latency samples of a latency metric.
    pub fn latencies(&self, m: MetricName) -> &[f64] {
        let i = match m {
            MetricName::Latency | MetricName::FailureRatio => 0,
            MetricName::LatencyDns => 1,
            MetricName::LatencyConnect => 2,
            MetricName::LatencyTls => 3,
            MetricName::LatencyTtfb => 4,
        };
        &self.latency[i]
    }

    fn add(&mut self, p: &ProbeResult) {
        self.results += 1;
        if p.outcome != Outcome::Ok {
            self.failed += 1;
            return;
        }
        let ms = |us: u32| f64::from(us) / 1_000.0;
        let ph = &p.phases;
        self.latency[0].push(ms(ph.total_us));
        for (i, v) in [ph.dns_us, ph.connect_us, ph.tls_us, ph.ttfb_us]
            .into_iter()
            .enumerate()
        {
            if let Some(v) = v {
                self.latency[i + 1].push(ms(v));
            }
        }
    }
}

/// The cohort's units among `known` (the collector's view: each unit and
/// the labels it last reported): its agency, its listed units if any, and
/// every one of its labels if any (a unit that never reported labels
/// carries none). Pure.
pub fn units_of<'a>(
    cohort: &Cohort,
    known: impl Iterator<Item = (&'a UnitId, &'a [Label])>,
) -> Vec<UnitId> {
    let listed: Option<std::collections::HashSet<&str>> = cohort
        .units
        .as_ref()
        .map(|l| l.iter().map(String::as_str).collect());
    // Validated with the gate; a stored one that no longer parses selects none.
    let selector = cohort.selector().ok();
    known
        .filter(|(u, _)| u.agency == cohort.agency)
        .filter(|(u, _)| listed.as_ref().is_none_or(|l| l.contains(u.unit.as_str())))
        .filter(|(_, labels)| selector.as_ref().is_some_and(|s| s.matches(labels)))
        .map(|(u, _)| u.clone())
        .collect()
}

/// Reads the cohort's results of its probe in `span`.
pub fn collect(
    store: &dyn Store,
    cohort: &Cohort,
    units: &[UnitId],
    span: Span,
    max_results: u64,
) -> Result<Side, StoreError> {
    let mut side = Side {
        units: units.len(),
        ..Side::default()
    };
    if span.until_ms <= span.since_ms {
        return Ok(side);
    }
    'units: for u in units {
        let before = side.results;
        let mut growth = Growth::default();
        let mut after = None;
        loop {
            let q = SampleQuery {
                since_ms: span.since_ms,
                // The store's bound is inclusive; the span's is not.
                until_ms: span.until_ms - 1,
                after,
                limit: PAGE,
            };
            let (page, next) = store.samples(u, q)?;
            for s in &page {
                let p = match &s.payload {
                    Payload::Probe(p) => p,
                    Payload::Host(h) => {
                        growth.host(h);
                        continue;
                    }
                    Payload::Status(a) => {
                        growth.status(a);
                        continue;
                    }
                    _ => continue,
                };
                if p.name != cohort.probe || cohort.target.as_ref().is_some_and(|t| *t != p.target)
                {
                    continue;
                }
                if side.results >= max_results {
                    side.truncated = true;
                    growth.fold(&mut side);
                    break 'units;
                }
                side.add(p);
            }
            match next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        if side.results > before {
            side.units_with_data += 1;
        }
        growth.fold(&mut side);
    }
    Ok(side)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cohort_selects_by_agency_units_and_labels() {
        let label = |k: &str, v: &str| Label {
            key: k.into(),
            value: v.into(),
        };
        let units: Vec<(UnitId, Vec<Label>)> = vec![
            (
                UnitId::new("metro-fire", "E1").unwrap(),
                vec![label("role", "patrol"), label("station", "7")],
            ),
            (
                UnitId::new("metro-fire", "E2").unwrap(),
                vec![label("role", "engine"), label("station", "7")],
            ),
            (
                UnitId::new("metro-fire", "E3").unwrap(),
                vec![label("station", "9")],
            ),
            // Never reported labels.
            (UnitId::new("metro-fire", "E4").unwrap(), vec![]),
            (
                UnitId::new("county-pd", "P1").unwrap(),
                vec![label("station", "7")],
            ),
        ];
        let cohort = |units: Option<&[&str]>, labels: Option<&[(&str, &str)]>| Cohort {
            agency: "metro-fire".into(),
            probe: "cad-api".into(),
            target: None,
            units: units.map(|u| u.iter().map(|s| s.to_string()).collect()),
            labels: labels.map(|l| {
                l.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
        };
        type Case<'a> = (
            Option<&'a [&'a str]>,
            Option<&'a [(&'a str, &'a str)]>,
            &'a [&'a str],
        );
        // (listed units, labels, selected)
        let cases: &[Case] = &[
            (None, None, &["E1", "E2", "E3", "E4"]),
            (None, Some(&[("station", "7")]), &["E1", "E2"]),
            (None, Some(&[("station", "7"), ("role", "patrol")]), &["E1"]),
            (None, Some(&[("station", "8")]), &[]),
            (None, Some(&[("shift", "night")]), &[]),
            (Some(&["E2", "E3"]), Some(&[("station", "7")]), &["E2"]),
            (Some(&["E3", "E4"]), None, &["E3", "E4"]),
            // A selector a stored gate could not carry selects none.
            (None, Some(&[("Bad Key", "7")]), &[]),
        ];
        for (listed, labels, want) in cases {
            let c = cohort(*listed, *labels);
            let got = units_of(&c, units.iter().map(|(u, l)| (u, l.as_slice())));
            let got: Vec<&str> = got.iter().map(|u| u.unit.as_str()).collect();
            assert_eq!(got, *want, "{listed:?} {labels:?}");
        }
    }
}
