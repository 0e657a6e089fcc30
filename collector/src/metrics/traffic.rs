//! The agencies' message rates (`[rules.traffic]`, `crate::rules::traffic`):
//! what the collector receives from each agency now and usually, how many
//! of its units are counted and silent, and the traffic-drop incidents it
//! opened. The rules engine publishes a copy once per tick (it is handed
//! the `Arc` at wiring, [`crate::rules::Engine::set_traffic_metrics`]);
//! a scrape reads that copy. Nothing is exported with `[rules.traffic]`
//! off or in cluster mode.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `muster_traffic_rate_per_second{agency}` | gauge | messages received per second over the last completed buckets (the current rate) |
//! | `muster_traffic_baseline_per_second{agency}` | gauge | the usual rate: the median bucket over `baseline`; absent until half of it has been seen |
//! | `muster_traffic_active_units{agency}` | gauge | units counted: heard within `baseline`, not departed (`of_units`) |
//! | `muster_traffic_silent_units{agency}` | gauge | units that fell silent at once (within `within`), or the open incident's silent units |
//! | `muster_traffic_incident_open{agency}` | gauge | 1 while a traffic-drop incident is open |
//! | `muster_traffic_incidents_total{agency}` | counter | traffic-drop incidents opened since start |
//! | `muster_traffic_unwatched_total` | counter | messages of agencies beyond `max_agencies`, not watched |

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::expo::Exposition;
use crate::rules::traffic::AgencyView;

/// One agency's figures, as of the engine's last tick.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    agency: String,
    rate: Option<f64>,
    usual: Option<f64>,
    active: usize,
    silent: usize,
    open: bool,
    opened: u64,
}

#[derive(Debug, Default)]
pub struct TrafficMetrics {
    /// Agencies in the engine's order (it only appends).
    rows: Mutex<Vec<Row>>,
    unwatched: AtomicU64,
}

impl TrafficMetrics {
    /// The engine's figures after a tick (every watched agency, in its
    /// order) and its count of unwatched messages.
    pub fn publish<'a>(&self, views: impl Iterator<Item = AgencyView<'a>>, unwatched: u64) {
        self.unwatched.store(unwatched, Ordering::Relaxed);
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for (i, v) in views.enumerate() {
            n = i + 1;
            if rows.get(i).is_none_or(|r| r.agency != v.agency) {
                rows.truncate(i);
                rows.push(Row {
                    agency: v.agency.to_owned(),
                    rate: None,
                    usual: None,
                    active: 0,
                    silent: 0,
                    open: false,
                    opened: 0,
                });
            }
            let r = &mut rows[i];
            r.rate = v.rate;
            r.usual = v.usual;
            r.active = v.active;
            r.silent = v.silent;
            r.open = v.open;
            r.opened = v.opened;
        }
        rows.truncate(n);
    }

    pub fn render(&self, e: &mut Exposition) {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        type Get = fn(&Row) -> Option<String>;
        let families: [(&str, &str, &str, Get); 6] = [
            (
                "muster_traffic_rate_per_second",
                "gauge",
                "Messages received from the agency's units per second, over the last completed buckets.",
                |r| r.rate.map(num),
            ),
            (
                "muster_traffic_baseline_per_second",
                "gauge",
                "The agency's usual message rate: the median bucket over rules.traffic.baseline.",
                |r| r.usual.map(num),
            ),
            (
                "muster_traffic_active_units",
                "gauge",
                "The agency's units heard within rules.traffic.baseline that have not announced a departure.",
                |r| Some(r.active.to_string()),
            ),
            (
                "muster_traffic_silent_units",
                "gauge",
                "The agency's units that fell silent at once (or the open traffic-drop incident's).",
                |r| Some(r.silent.to_string()),
            ),
            (
                "muster_traffic_incident_open",
                "gauge",
                "1 while a traffic-drop incident of the agency is open.",
                |r| Some(u8::from(r.open).to_string()),
            ),
            (
                "muster_traffic_incidents_total",
                "counter",
                "Traffic-drop incidents opened for the agency since start.",
                |r| Some(r.opened.to_string()),
            ),
        ];
        for (name, kind, help, get) in families {
            e.family(name, kind, help);
            for r in &rows {
                if let Some(v) = get(r) {
                    e.sample(name, &[("agency", &r.agency)], v);
                }
            }
        }
        e.family(
            "muster_traffic_unwatched_total",
            "counter",
            "Messages of agencies beyond rules.traffic.max_agencies: not watched.",
        );
        e.sample(
            "muster_traffic_unwatched_total",
            &[],
            self.unwatched.load(Ordering::Relaxed),
        );
    }
}

/// A rate as Prometheus reads it: `12.5`, `0`.
fn num(v: f64) -> String {
    let r = (v * 1000.0).round() / 1000.0;
    format!("{r}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(agency: &str, rate: Option<f64>, opened: u64) -> AgencyView<'_> {
        AgencyView {
            agency,
            rate,
            usual: Some(40.25),
            active: 40,
            silent: 3,
            open: opened > 0,
            opened,
        }
    }

    #[test]
    fn renders_each_agency_and_leaves_out_what_is_not_known() {
        let m = TrafficMetrics::default();
        m.publish(
            [
                view("metro-fire", Some(3.1), 1),
                view("county-ems", None, 0),
            ]
            .into_iter(),
            7,
        );
        let mut e = Exposition::default();
        m.render(&mut e);
        let text = e.finish();
        for line in [
            "muster_traffic_rate_per_second{agency=\"metro-fire\"} 3.1",
            "muster_traffic_baseline_per_second{agency=\"metro-fire\"} 40.25",
            "muster_traffic_baseline_per_second{agency=\"county-ems\"} 40.25",
            "muster_traffic_active_units{agency=\"metro-fire\"} 40",
            "muster_traffic_silent_units{agency=\"metro-fire\"} 3",
            "muster_traffic_incident_open{agency=\"metro-fire\"} 1",
            "muster_traffic_incident_open{agency=\"county-ems\"} 0",
            "muster_traffic_incidents_total{agency=\"metro-fire\"} 1",
            "muster_traffic_unwatched_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("muster_traffic_rate_per_second{agency=\"county-ems\"}"),
            "no rate yet: no sample\n{text}"
        );
        // Published again: updated in place, not appended.
        m.publish([view("metro-fire", Some(40.0), 1)].into_iter(), 7);
        let mut e = Exposition::default();
        m.render(&mut e);
        let text = e.finish();
        assert_eq!(
            text.matches("muster_traffic_rate_per_second{").count(),
            1,
            "{text}"
        );
        assert!(text.contains("muster_traffic_rate_per_second{agency=\"metro-fire\"} 40\n"));
    }
}
