//! Agency-wide incidents: many units of one agency failing the same probe
//! (name and target) at the same time.
//!
//! Incremental: each current probe result updates its unit's membership in
//! the (agency, probe, target) group in O(1); `tick` expires members whose
//! latest result is older than the window (collector time: units' clocks
//! differ, the collector's is the one clock they share) and opens, updates or
//! ends incidents. A unit is *failing* a probe when its latest result of it
//! failed.

use std::collections::HashMap;

use super::config::IncidentConfig;
use crate::model::Incident;

#[derive(Debug)]
struct Member {
    failing: bool,
    rx_ms: u64,
    /// The unit's id (for `Incident::affected`).
    name: String,
}

#[derive(Debug)]
struct Group {
    agency: String,
    probe: String,
    target: String,
    /// By the engine's unit index.
    members: HashMap<usize, Member>,
    failing: usize,
    open: Option<Incident>,
    /// Changed since the last tick.
    dirty: bool,
    /// Units (engine indices, sorted) told they are affected by `open`.
    tagged: Vec<usize>,
}

/// What a tick did to units: `(unit index, group index, incident)` joined
/// (`Some(incident id)`) or left (`None`).
pub type Membership = (usize, usize, Option<String>);

#[derive(Debug, Default)]
pub struct Incidents {
    cfg: Option<IncidentConfig>,
    index: HashMap<(String, String, String), usize>,
    groups: Vec<Group>,
}

impl Incidents {
    pub fn new(cfg: Option<IncidentConfig>) -> Self {
        Incidents {
            cfg,
            ..Default::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.is_some()
    }

    /// The group of (agency, probe, target), created on first use. Callers
    /// cache the index (it never changes).
    pub fn group(&mut self, agency: &str, probe: &str, target: &str) -> usize {
        let key = (agency.to_string(), probe.to_string(), target.to_string());
        if let Some(&g) = self.index.get(&key) {
            return g;
        }
        let g = self.groups.len();
        self.groups.push(Group {
            agency: key.0.clone(),
            probe: key.1.clone(),
            target: key.2.clone(),
            members: HashMap::new(),
            failing: 0,
            open: None,
            dirty: false,
            tagged: Vec::new(),
        });
        self.index.insert(key, g);
        g
    }

    /// A unit's current result of the group's probe.
    pub fn result(
        &mut self,
        group: usize,
        unit: usize,
        unit_name: &str,
        failing: bool,
        now_ms: u64,
    ) {
        let g = &mut self.groups[group];
        match g.members.get_mut(&unit) {
            Some(m) => {
                if m.failing != failing {
                    g.dirty = true;
                    if failing {
                        g.failing += 1;
                    } else {
                        g.failing -= 1;
                    }
                }
                m.failing = failing;
                m.rx_ms = now_ms;
            }
            None => {
                g.members.insert(
                    unit,
                    Member {
                        failing,
                        rx_ms: now_ms,
                        name: unit_name.to_string(),
                    },
                );
                g.failing += usize::from(failing);
                g.dirty = true;
            }
        }
    }

    /// A unit left the group (it went `off`): it is neither counted nor
    /// failing until its next result.
    pub fn leave(&mut self, group: usize, unit: usize) {
        let g = &mut self.groups[group];
        if let Some(m) = g.members.remove(&unit) {
            g.failing -= usize::from(m.failing);
            g.dirty = true;
        }
    }

    pub fn summary_of(&self, group: usize) -> (&str, &str, &str) {
        let g = &self.groups[group];
        (&g.agency, &g.probe, &g.target)
    }

    /// Open incidents.
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.groups.iter().filter_map(|g| g.open.as_ref())
    }

    /// Expire old members, open / update / end incidents. Pushes incident
    /// changes to `changed` and unit membership changes to `members`.
    pub fn tick(
        &mut self,
        now_ms: u64,
        changed: &mut Vec<Incident>,
        members: &mut Vec<Membership>,
    ) {
        let Some(cfg) = &self.cfg else { return };
        let horizon = now_ms.saturating_sub(cfg.window_ms);
        for (gi, g) in self.groups.iter_mut().enumerate() {
            let before = g.members.len();
            let mut expired_failing = 0;
            g.members.retain(|_, m| {
                let keep = m.rx_ms >= horizon;
                if !keep && m.failing {
                    expired_failing += 1;
                }
                keep
            });
            g.failing -= expired_failing;
            if g.members.len() != before {
                g.dirty = true;
            }
            if !g.dirty {
                continue;
            }
            g.dirty = false;
            let of = g.members.len();
            let ratio = if of == 0 {
                0.0
            } else {
                g.failing as f64 / of as f64
            };
            let failing_units: Vec<usize> = {
                let mut v: Vec<usize> = g
                    .members
                    .iter()
                    .filter(|(_, m)| m.failing)
                    .map(|(u, _)| *u)
                    .collect();
                v.sort_unstable();
                v
            };
            match &mut g.open {
                None => {
                    if g.failing >= cfg.min_units && ratio >= cfg.min_ratio {
                        let id = format!("{}:{}:{}", g.agency, g.probe, now_ms);
                        let affected = affected(&g.members);
                        for &u in &failing_units {
                            members.push((u, gi, Some(id.clone())));
                        }
                        let inc = Incident {
                            summary: summary(&g.probe, &g.target, affected.len(), of),
                            id,
                            agency: g.agency.clone(),
                            probe: g.probe.clone(),
                            target: g.target.clone(),
                            affected,
                            of_units: of,
                            since_ms: now_ms,
                            ended_ms: None,
                        };
                        changed.push(inc.clone());
                        g.open = Some(inc);
                        g.tagged = failing_units;
                    }
                }
                Some(inc) => {
                    if ratio < cfg.clear_ratio || g.failing == 0 {
                        for &u in &g.tagged {
                            members.push((u, gi, None));
                        }
                        g.tagged.clear();
                        let mut ended = g.open.take().expect("open");
                        ended.ended_ms = Some(now_ms);
                        ended.affected = affected(&g.members);
                        ended.of_units = of;
                        ended.summary = format!(
                            "{}; ended",
                            summary(&g.probe, &g.target, ended.affected.len(), of)
                        );
                        changed.push(ended);
                        continue;
                    }
                    let now_affected = affected(&g.members);
                    if now_affected != inc.affected || of != inc.of_units {
                        for &u in &failing_units {
                            if g.tagged.binary_search(&u).is_err() {
                                members.push((u, gi, Some(inc.id.clone())));
                            }
                        }
                        for &u in &g.tagged {
                            if failing_units.binary_search(&u).is_err() {
                                members.push((u, gi, None));
                            }
                        }
                        g.tagged = failing_units;
                        inc.affected = now_affected;
                        inc.of_units = of;
                        inc.summary = summary(&g.probe, &g.target, inc.affected.len(), of);
                        changed.push(inc.clone());
                    }
                }
            }
        }
    }
}

fn affected(members: &HashMap<usize, Member>) -> Vec<String> {
    let mut v: Vec<String> = members
        .values()
        .filter(|m| m.failing)
        .map(|m| m.name.clone())
        .collect();
    v.sort();
    v
}

fn summary(probe: &str, target: &str, failing: usize, of: usize) -> String {
    format!("{probe} ({target}) failing from {failing} of {of} units")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Severity;

    fn cfg() -> IncidentConfig {
        IncidentConfig {
            min_units: 3,
            min_ratio: 0.5,
            clear_ratio: 0.25,
            window_ms: 120_000,
            severity: Severity::Degraded,
            runbook: None,
        }
    }

    #[test]
    fn opens_on_both_min_units_and_min_ratio() {
        // (units running the probe, failing, opens?)
        let cases = [
            (4, 3, true),
            (6, 3, true),
            (7, 3, false), // 3 of 7 < 0.5
            (2, 2, false), // 100 % but below min_units
            (3, 2, false),
            (40, 20, true),
            (40, 19, false),
            (40, 37, true),
        ];
        for (of, failing, opens) in cases {
            let mut inc = Incidents::new(Some(cfg()));
            let g = inc.group("metro-fire", "cad-api", "https://cad/health");
            for u in 0..of {
                inc.result(g, u, &format!("E{u}"), u < failing, 1_000);
            }
            let (mut changed, mut members) = (Vec::new(), Vec::new());
            inc.tick(1_500, &mut changed, &mut members);
            assert_eq!(changed.len(), usize::from(opens), "{failing} of {of}");
            assert_eq!(members.len(), if opens { failing } else { 0 });
            if opens {
                assert_eq!(
                    changed[0].summary,
                    format!("cad-api (https://cad/health) failing from {failing} of {of} units")
                );
            }
        }
    }

    #[test]
    fn groups_are_per_agency_probe_and_target() {
        let mut inc = Incidents::new(Some(cfg()));
        let a = inc.group("metro-fire", "cad-api", "https://cad/health");
        assert_eq!(inc.group("metro-fire", "cad-api", "https://cad/health"), a);
        assert_ne!(inc.group("county-ems", "cad-api", "https://cad/health"), a);
        assert_ne!(inc.group("metro-fire", "cad-api", "https://cad2/health"), a);
        assert_ne!(inc.group("metro-fire", "cad-db", "https://cad/health"), a);
    }

    #[test]
    fn a_result_flip_is_counted_once() {
        let mut inc = Incidents::new(Some(cfg()));
        let g = inc.group("metro-fire", "cad-api", "t");
        for u in 0..4 {
            inc.result(g, u, &format!("E{u}"), true, 1_000);
            inc.result(g, u, &format!("E{u}"), true, 1_100);
        }
        inc.result(g, 0, "E0", false, 1_200);
        inc.result(g, 0, "E0", false, 1_300);
        let (mut changed, mut members) = (Vec::new(), Vec::new());
        inc.tick(1_500, &mut changed, &mut members);
        assert_eq!(changed[0].affected, vec!["E1", "E2", "E3"]);
        assert_eq!(changed[0].of_units, 4);
        // Nothing changed: a tick reports nothing.
        changed.clear();
        inc.tick(2_500, &mut changed, &mut members);
        assert!(changed.is_empty());
    }
}
