//! Agency-wide incidents: many units of one agency failing the same probe
//! (name and target) at the same time.
//!
//! Incremental: each current probe result updates its unit's membership in
//! the (agency, probe, target) group in O(1); `tick` expires members whose
//! latest result is older than the window (collector time: units' clocks
//! differ, the collector's is the one clock they share) and opens, updates or
//! ends incidents. A unit is *failing* a probe when its latest result of it
//! failed.

use std::collections::{BTreeMap, HashMap};

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
    /// Shared mode (cluster): when every non-empty group was last handed
    /// out by [`Incidents::shares`]; `None` on a single node.
    shared: Option<u64>,
}

/// A group's members as one collector sees them (cluster mode): sorted
/// `(unit, failing)`, for the owner to split by partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupShare {
    pub agency: String,
    pub probe: String,
    pub target: String,
    pub members: Vec<(String, bool)>,
}

/// One partition's part of a group, as stored (cluster mode): how many of
/// the partition's units run the probe and which of them fail it, as of
/// when its owner last said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentShare {
    pub partition: u32,
    pub agency: String,
    pub probe: String,
    pub target: String,
    pub of_units: usize,
    /// Sorted unit ids.
    pub failing: Vec<String>,
    pub as_of_ms: u64,
}

impl Incidents {
    pub fn new(cfg: Option<IncidentConfig>) -> Self {
        Incidents {
            cfg,
            ..Default::default()
        }
    }

    /// Shared mode (cluster): members are kept and expired as on a single
    /// node, but no incident is decided here; [`Incidents::shares`] hands
    /// the groups out and the coordinator's [`Board`] decides.
    pub fn new_shared(cfg: Option<IncidentConfig>) -> Self {
        Incidents {
            cfg,
            shared: Some(0),
            ..Default::default()
        }
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
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
    /// Shared mode decides nothing here (see [`Incidents::shares`]).
    pub fn tick(
        &mut self,
        now_ms: u64,
        changed: &mut Vec<Incident>,
        members: &mut Vec<Membership>,
    ) {
        let Some(cfg) = &self.cfg else { return };
        if self.shared.is_some() {
            return;
        }
        for (gi, g) in self.groups.iter_mut().enumerate() {
            g.expire(cfg.window_ms, now_ms);
            if !g.dirty {
                continue;
            }
            g.dirty = false;
            let key = (g.agency.as_str(), g.probe.as_str(), g.target.as_str());
            if let Some(inc) = decide(
                cfg,
                key,
                g.members.len(),
                affected(&g.members),
                &mut g.open,
                now_ms,
            ) {
                changed.push(inc);
            }
            // Units tagged: the failing ones while an incident is open.
            let want: Vec<usize> = match &g.open {
                None => Vec::new(),
                Some(_) => {
                    let mut v: Vec<usize> = g
                        .members
                        .iter()
                        .filter(|(_, m)| m.failing)
                        .map(|(u, _)| *u)
                        .collect();
                    v.sort_unstable();
                    v
                }
            };
            if want != g.tagged {
                let id = g.open.as_ref().map(|i| i.id.clone());
                for &u in &want {
                    if g.tagged.binary_search(&u).is_err() {
                        members.push((u, gi, id.clone()));
                    }
                }
                for &u in &g.tagged {
                    if want.binary_search(&u).is_err() {
                        members.push((u, gi, None));
                    }
                }
                g.tagged = want;
            }
        }
    }

    /// Shared mode (cluster): expire old members and hand out each changed
    /// group's members (and every non-empty group's, once per quarter
    /// window: the shares' `as_of_ms` must stay within the window for the
    /// coordinator to count them).
    pub fn shares(&mut self, now_ms: u64, out: &mut Vec<GroupShare>) {
        let (Some(cfg), Some(last)) = (&self.cfg, self.shared.as_mut()) else {
            return;
        };
        let refresh = now_ms.saturating_sub(*last) >= (cfg.window_ms / 4).max(1);
        if refresh {
            *last = now_ms;
        }
        for g in &mut self.groups {
            g.expire(cfg.window_ms, now_ms);
            if !(g.dirty || refresh && !g.members.is_empty()) {
                continue;
            }
            g.dirty = false;
            let mut members: Vec<(String, bool)> = g
                .members
                .values()
                .map(|m| (m.name.clone(), m.failing))
                .collect();
            members.sort_unstable();
            out.push(GroupShare {
                agency: g.agency.clone(),
                probe: g.probe.clone(),
                target: g.target.clone(),
                members,
            });
        }
    }

    /// The engine forgot unit `unit` and moved unit `moved` into its index
    /// (`swap_remove`): it leaves every group, and `moved` is re-keyed.
    pub fn forget(&mut self, unit: usize, moved: Option<usize>) {
        for g in &mut self.groups {
            if let Some(m) = g.members.remove(&unit) {
                g.failing -= usize::from(m.failing);
                g.dirty = true;
            }
            if let Ok(i) = g.tagged.binary_search(&unit) {
                g.tagged.remove(i);
            }
            if let Some(from) = moved {
                if let Some(m) = g.members.remove(&from) {
                    g.members.insert(unit, m);
                }
                if let Ok(i) = g.tagged.binary_search(&from) {
                    g.tagged.remove(i);
                    let at = g.tagged.binary_search(&unit).unwrap_or_else(|e| e);
                    g.tagged.insert(at, unit);
                }
            }
        }
    }
}

impl Group {
    /// Drops members whose latest result is older than the window.
    fn expire(&mut self, window_ms: u64, now_ms: u64) {
        let horizon = now_ms.saturating_sub(window_ms);
        let before = self.members.len();
        let mut expired_failing = 0;
        self.members.retain(|_, m| {
            let keep = m.rx_ms >= horizon;
            if !keep && m.failing {
                expired_failing += 1;
            }
            keep
        });
        self.failing -= expired_failing;
        if self.members.len() != before {
            self.dirty = true;
        }
    }
}

/// Opens, updates or ends `open` for a group of `of` units of which
/// `affected` (sorted) fail; returns the incident as changed, if it did.
/// One home for the decision: a single node's [`Incidents::tick`] and a
/// cluster's coordinator ([`Board`]) both call it.
pub fn decide(
    cfg: &IncidentConfig,
    (agency, probe, target): (&str, &str, &str),
    of: usize,
    affected: Vec<String>,
    open: &mut Option<Incident>,
    now_ms: u64,
) -> Option<Incident> {
    let failing = affected.len();
    let ratio = if of == 0 {
        0.0
    } else {
        failing as f64 / of as f64
    };
    match open {
        None => {
            if failing >= cfg.min_units && ratio >= cfg.min_ratio {
                let inc = Incident {
                    summary: summary(probe, target, failing, of),
                    id: format!("{agency}:{probe}:{now_ms}"),
                    kind: crate::model::IncidentKind::ProbeFailing,
                    agency: agency.to_string(),
                    probe: probe.to_string(),
                    target: target.to_string(),
                    affected,
                    of_units: of,
                    since_ms: now_ms,
                    ended_ms: None,
                };
                *open = Some(inc.clone());
                return Some(inc);
            }
            None
        }
        Some(inc) => {
            if ratio < cfg.clear_ratio || failing == 0 {
                let mut ended = open.take().expect("open");
                ended.ended_ms = Some(now_ms);
                ended.summary = format!("{}; ended", summary(probe, target, failing, of));
                ended.affected = affected;
                ended.of_units = of;
                return Some(ended);
            }
            if affected != inc.affected || of != inc.of_units {
                inc.summary = summary(probe, target, failing, of);
                inc.affected = affected;
                inc.of_units = of;
                return Some(inc.clone());
            }
            None
        }
    }
}

/// Cluster mode's coordinator: every partition's stored share, summed per
/// group, decides incidents with [`decide`].
///
/// Contract: a share counts while its `as_of_ms` is within the window
/// (owners hand out non-empty groups every quarter window, so one that
/// stops, e.g. a dead owner's whose partition has no data yet at its new
/// owner, ages out). A group's units are the sum of its shares'
/// `of_units`, its failing units the union of their `failing`. Open
/// incidents restored into a new coordinator are updated or ended from the
/// shares as they stand, never opened twice. Groups with neither shares nor
/// an open incident are dropped: memory is bounded by the live groups.
#[derive(Debug)]
pub struct Board {
    cfg: IncidentConfig,
    groups: BTreeMap<(String, String, String), BoardGroup>,
}

#[derive(Debug, Default)]
struct BoardGroup {
    shares: BTreeMap<u32, IncidentShare>,
    open: Option<Incident>,
    dirty: bool,
}

impl Board {
    pub fn new(cfg: IncidentConfig) -> Board {
        Board {
            cfg,
            groups: BTreeMap::new(),
        }
    }

    /// An incident open when this coordinator took over.
    pub fn restore(&mut self, inc: Incident) {
        if inc.ended_ms.is_some() {
            return;
        }
        let key = (inc.agency.clone(), inc.probe.clone(), inc.target.clone());
        let g = self.groups.entry(key).or_default();
        g.open = Some(inc);
        g.dirty = true;
    }

    /// A partition's share of a group, replacing the one before.
    pub fn share(&mut self, s: IncidentShare) {
        let key = (s.agency.clone(), s.probe.clone(), s.target.clone());
        let g = self.groups.entry(key).or_default();
        g.dirty = true;
        if s.of_units == 0 {
            g.shares.remove(&s.partition);
        } else {
            g.shares.insert(s.partition, s);
        }
    }

    /// Open incidents.
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.groups.values().filter_map(|g| g.open.as_ref())
    }

    /// Ages shares out and opens, updates or ends incidents; pushes the
    /// incidents that changed.
    pub fn tick(&mut self, now_ms: u64, changed: &mut Vec<Incident>) {
        let horizon = now_ms.saturating_sub(self.cfg.window_ms);
        for ((agency, probe, target), g) in &mut self.groups {
            let before = g.shares.len();
            g.shares.retain(|_, s| s.as_of_ms >= horizon);
            if !(g.dirty || g.shares.len() != before) {
                continue;
            }
            g.dirty = false;
            let of = g.shares.values().map(|s| s.of_units).sum();
            let mut failing: Vec<String> = g
                .shares
                .values()
                .flat_map(|s| s.failing.iter().cloned())
                .collect();
            failing.sort_unstable();
            failing.dedup();
            let key = (agency.as_str(), probe.as_str(), target.as_str());
            if let Some(inc) = decide(&self.cfg, key, of, failing, &mut g.open, now_ms) {
                changed.push(inc);
            }
        }
        self.groups
            .retain(|_, g| !g.shares.is_empty() || g.open.is_some());
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

    fn share(p: u32, of: usize, failing: &[&str], as_of_ms: u64) -> IncidentShare {
        IncidentShare {
            partition: p,
            agency: "metro-fire".into(),
            probe: "cad-api".into(),
            target: "t".into(),
            of_units: of,
            failing: failing.iter().map(|s| s.to_string()).collect(),
            as_of_ms,
        }
    }

    #[test]
    fn the_board_sums_partitions_ages_shares_out_and_never_opens_twice() {
        // (shares given at 1_000 (partition, of, failing), tick at, incidents open after)
        type Case = (&'static [(u32, usize, &'static [&'static str])], u64, usize);
        let cases: &[Case] = &[
            // 2 + 2 failing of 3 + 3: 4 of 6 opens (each alone would not: 2 < min_units 3).
            (&[(0, 3, &["A", "B"]), (1, 3, &["C", "D"])], 1_500, 1),
            (&[(0, 3, &["A", "B"])], 1_500, 0),
            // A unit in two shares (a partition moving) counts once as failing.
            (&[(0, 2, &["A", "B"]), (1, 2, &["A", "B"])], 1_500, 0),
            // Shares older than the window (120 s) do not count.
            (&[(0, 3, &["A", "B"]), (1, 3, &["C", "D"])], 122_000, 0),
            // A tombstone (of 0) removes its partition's share.
            (
                &[(0, 3, &["A", "B"]), (1, 3, &["C", "D"]), (1, 0, &[])],
                1_500,
                0,
            ),
        ];
        for (i, (shares, at, open)) in cases.iter().enumerate() {
            let mut b = Board::new(cfg());
            for (p, of, failing) in *shares {
                b.share(share(*p, *of, failing, 1_000));
            }
            let mut changed = Vec::new();
            b.tick(*at, &mut changed);
            assert_eq!(b.open().count(), *open, "case {i}");
        }
        // Restored open incident (a new coordinator): kept with its id,
        // updated from the shares, ended when they age out.
        let mut b = Board::new(cfg());
        let mut first = Board::new(cfg());
        first.share(share(0, 3, &["A", "B"], 1_000));
        first.share(share(1, 3, &["C", "D"], 1_000));
        let mut changed = Vec::new();
        first.tick(1_500, &mut changed);
        let open = changed.pop().unwrap();
        b.restore(open.clone());
        b.share(share(0, 3, &["A", "B"], 2_000));
        b.share(share(1, 3, &["C", "D", "E"], 2_000));
        b.tick(2_500, &mut changed);
        assert_eq!(changed.len(), 1, "updated, not opened again");
        assert_eq!(changed[0].id, open.id);
        assert_eq!(changed[0].affected, vec!["A", "B", "C", "D", "E"]);
        changed.clear();
        b.tick(200_000, &mut changed);
        assert_eq!(changed[0].ended_ms, Some(200_000));
        assert_eq!(b.open().count(), 0);
        assert!(b.groups.is_empty(), "nothing left is kept");
    }

    #[test]
    fn shared_mode_hands_out_changed_groups_and_refreshes_the_rest() {
        let mut inc = Incidents::new_shared(Some(cfg()));
        let g = inc.group("metro-fire", "cad-api", "t");
        for u in 0..3 {
            inc.result(g, u, &format!("E{u}"), u == 0, 1_000);
        }
        let (mut changed, mut members) = (Vec::new(), Vec::new());
        inc.tick(1_500, &mut changed, &mut members);
        assert!(changed.is_empty() && members.is_empty(), "decides nothing");
        let mut out = Vec::new();
        inc.shares(1_500, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].members,
            vec![
                ("E0".into(), true),
                ("E1".into(), false),
                ("E2".into(), false)
            ]
        );
        // Unchanged: nothing until a quarter window (30 s) has passed.
        out.clear();
        inc.result(g, 1, "E1", false, 2_000);
        inc.shares(2_500, &mut out);
        assert!(out.is_empty());
        inc.result(g, 1, "E1", false, 31_000);
        inc.result(g, 0, "E0", true, 31_000);
        inc.result(g, 2, "E2", false, 31_000);
        inc.shares(31_600, &mut out);
        assert_eq!(out.len(), 1, "refreshed");
        // A forgotten unit leaves; the unit moved into its index keeps its membership.
        out.clear();
        inc.forget(0, Some(2));
        inc.shares(31_700, &mut out);
        assert_eq!(
            out[0].members,
            vec![("E1".into(), false), ("E2".into(), false)]
        );
        inc.result(g, 0, "E2", true, 31_800);
        out.clear();
        inc.shares(31_900, &mut out);
        assert_eq!(
            out[0].members,
            vec![("E1".into(), false), ("E2".into(), true)],
            "E2 is now index 0, not a new member"
        );
    }
}
