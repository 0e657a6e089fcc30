//! The demo fleet and its scenes: who is in the fleet, and what each unit
//! does at a given moment of the scene loop. Pure: no clock, no I/O; the
//! fleet simulator (`fleet.rs`) asks [`plan`] every tick and acts on it.
//!
//! Times are *scene* seconds since the start of the current loop
//! ([`PERIOD_S`] long). At `--sim-speed N` the simulator runs the scene
//! clock N times faster than the wall clock (and the demo config scales
//! the rules' durations by the same factor, see `demo::rules_toml`).
//!
//! The loop: every status shows within two minutes of the start, and at
//! about two minutes all of them show at once, with an open incident.
//!
//! | unit | agency | scene | what the feed shows |
//! |---|---|---|---|
//! | `P-21` | metro-pd | shuts down at 10 s (end of shift), back at 180 s | `off`, "shut down" |
//! | `E-6` | county-fire | shuts down at 5 s, back at 190 s; county-fire's `[rules.off] max` is 90 s | `off`, then `overdue` from 95 s |
//! | `P-17` | metro-pd | sleeps at 15 s, resumes at 150 s | `off` (asleep), then `ok` with "resumed" |
//! | `P-14` | metro-pd | dead zone 60–135 s: drops without a word, keeps sampling | `lost` (the will), then the backlog replays and the gap fills |
//! | every metro-pd unit | metro-pd | `cad-api` slow (2.6 s) 40–100 s, timing out 100–140 s | `degraded` (`probe-slow`), an agency-wide incident |
//! | `CAD-WS-02` | metro-pd | `cadclient` crash-looping 20–150 s (not running, restarts climbing) | `critical` (`cad-client-down`) |
//! | `E-4` | county-fire | `/` fills to 99.6 % from 0 s, cleaned at 150 s | `critical` (`disk-critical`) |
//! | `M-7` | county-fire | `/` fills to 96.5 %, cleaned at 150 s | `degraded` (`disk-full`) |
//! | the rest | both | nothing happens | `ok` |

use muster_proto::PresenceReason;

/// One loop of the scenes, scene seconds.
pub const PERIOD_S: u64 = 210;
/// Scene seconds between two samples of a unit.
pub const TICK_S: u64 = 5;

/// The agency whose `[rules.off] max` is short, so an off unit turns overdue.
pub const OVERDUE_AGENCY: &str = "county-fire";
/// That agency's `[rules.off] max`, scene seconds.
pub const OFF_MAX_S: u64 = 90;

/// The probe the CAD slowdown hits (the shipped `cad-api-failing` and
/// `probe-slow` rules watch it).
pub const CAD_PROBE: &str = "cad-api";
/// The process the crash loop hits (the shipped `cad-client-down` rule).
pub const CAD_PROCESS: &str = "cadclient";

/// What kind of terminal a unit is: an MCT in a vehicle (cellular) or a
/// CAD workstation (ethernet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Mct,
    Workstation,
}

/// A unit's part in the scenes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Steady,
    /// End of shift: shut down, back later (a new boot).
    Shutdown,
    /// Shut down past its agency's `[rules.off] max`.
    Overdue,
    /// Goes to sleep, resumes.
    Sleeper,
    /// Drives through a dead zone.
    DeadZone,
    /// Its CAD client crash-loops.
    CrashLoop,
    /// Its disk fills up to this many tenths of a percent.
    DiskFill {
        to_permille: u32,
    },
}

/// One simulated unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUnit {
    pub agency: &'static str,
    pub unit: String,
    pub terminal: Terminal,
    pub role: Role,
    /// Its agency's CAD API slows down in the slowdown scene.
    pub in_slowdown: bool,
}

/// The simulated fleet: two agencies, 41 units (the demo agency keeps the
/// in-process agent of this machine).
pub fn fleet() -> Vec<SimUnit> {
    let mut v = Vec::new();
    let mut add = |agency: &'static str, unit: String, terminal, role, in_slowdown| {
        v.push(SimUnit {
            agency,
            unit,
            terminal,
            role,
            in_slowdown,
        })
    };
    use Role::*;
    use Terminal::*;
    for n in 11..=28 {
        let role = match n {
            14 => DeadZone,
            17 => Sleeper,
            21 => Shutdown,
            _ => Steady,
        };
        add("metro-pd", format!("P-{n}"), Mct, role, true);
    }
    for n in 1..=4 {
        let role = if n == 2 { CrashLoop } else { Steady };
        add(
            "metro-pd",
            format!("CAD-WS-{n:02}"),
            Workstation,
            role,
            true,
        );
    }
    for n in 1..=6 {
        let role = match n {
            4 => DiskFill { to_permille: 996 },
            6 => Overdue,
            _ => Steady,
        };
        add("county-fire", format!("E-{n}"), Mct, role, false);
    }
    for n in 1..=7 {
        let role = if n == 7 {
            DiskFill { to_permille: 965 }
        } else {
            Steady
        };
        add("county-fire", format!("M-{n}"), Mct, role, false);
    }
    for n in 1..=2 {
        add("county-fire", format!("BC-{n}"), Mct, Steady, false);
    }
    for n in 3..=6 {
        add(
            "county-fire",
            format!("CAD-WS-{n:02}"),
            Workstation,
            Steady,
            false,
        );
    }
    v
}

/// The unit's link to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Connected,
    /// Gone with an announcement (`Shutdown`, `Sleep`).
    Departed(PresenceReason),
    /// Out of coverage: no connection, no announcement, still sampling.
    DeadZone,
}

/// The CAD API probe's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cad {
    Ok { total_ms: u32 },
    Slow { total_ms: u32 },
    Timeout { after_ms: u32 },
}

/// What a unit does at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub link: Link,
    /// `/` used, tenths of a percent.
    pub disk_permille: u32,
    pub cad: Cad,
    /// `cadclient` running, and its restarts since the agent started.
    pub cadclient_running: bool,
    pub cadclient_restarts: u32,
}

fn within(t: u64, from: u64, to: u64) -> bool {
    (from..to).contains(&t)
}

/// What `u` does at `elapsed_s` scene seconds since the demo started.
pub fn plan(u: &SimUnit, elapsed_s: u64) -> Plan {
    let t = elapsed_s % PERIOD_S;
    let loops = elapsed_s / PERIOD_S;
    let link = match u.role {
        Role::Shutdown if within(t, 10, 180) => Link::Departed(PresenceReason::Shutdown),
        Role::Overdue if within(t, 5, 190) => Link::Departed(PresenceReason::Shutdown),
        Role::Sleeper if within(t, 15, 150) => Link::Departed(PresenceReason::Sleep),
        Role::DeadZone if within(t, 60, 135) => Link::DeadZone,
        _ => Link::Connected,
    };
    let disk_permille = match u.role {
        Role::DiskFill { to_permille } if t < 150 => (700 + 6 * t as u32).min(to_permille),
        Role::DiskFill { .. } => 620,
        _ => 410 + (u.unit.len() as u32 * 37) % 200,
    };
    let cad = if u.in_slowdown && within(t, 100, 140) {
        Cad::Timeout { after_ms: 3_000 }
    } else if u.in_slowdown && within(t, 40, 100) {
        Cad::Slow { total_ms: 2_600 }
    } else {
        Cad::Ok {
            total_ms: 120 + (u.unit.len() as u32 * 13) % 60,
        }
    };
    let (cadclient_running, cadclient_restarts) = match u.role {
        Role::CrashLoop => {
            // One restart every 10 s while crash-looping.
            let this_loop = t.clamp(20, 150).saturating_sub(20) / 10;
            (!within(t, 20, 150), (loops * 13 + this_loop) as u32)
        }
        _ => (true, 0),
    };
    Plan {
        link,
        disk_permille,
        cad,
        cadclient_running,
        cadclient_restarts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str) -> SimUnit {
        fleet().into_iter().find(|u| u.unit == name).unwrap()
    }

    #[test]
    fn the_fleet() {
        let f = fleet();
        assert!((35..=45).contains(&f.len()), "{}", f.len());
        let mut names: Vec<_> = f.iter().map(|u| (u.agency, u.unit.as_str())).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), f.len(), "unique units");
        for u in &f {
            muster_proto::UnitId::new(u.agency, u.unit.clone()).unwrap();
        }
        for role in [
            Role::Shutdown,
            Role::Overdue,
            Role::Sleeper,
            Role::DeadZone,
            Role::CrashLoop,
        ] {
            assert_eq!(f.iter().filter(|u| u.role == role).count(), 1, "{role:?}");
        }
        assert_eq!(unit("E-6").agency, OVERDUE_AGENCY);
        // Off-but-not-overdue and asleep units are in the other agency.
        assert_ne!(unit("P-21").agency, OVERDUE_AGENCY);
        assert_ne!(unit("P-17").agency, OVERDUE_AGENCY);
    }

    #[test]
    fn links_table() {
        use Link::*;
        use PresenceReason::{Shutdown, Sleep};
        for (name, t, want) in [
            ("P-21", 0, Connected),
            ("P-21", 10, Departed(Shutdown)),
            ("P-21", 179, Departed(Shutdown)),
            ("P-21", 180, Connected),
            ("P-21", PERIOD_S + 10, Departed(Shutdown)),
            ("E-6", 4, Connected),
            ("E-6", 5, Departed(Shutdown)),
            ("E-6", 189, Departed(Shutdown)),
            ("E-6", 190, Connected),
            ("P-17", 14, Connected),
            ("P-17", 15, Departed(Sleep)),
            ("P-17", 149, Departed(Sleep)),
            ("P-17", 150, Connected),
            ("P-14", 59, Connected),
            ("P-14", 60, DeadZone),
            ("P-14", 134, DeadZone),
            ("P-14", 135, Connected),
            ("P-11", 50, Connected),
        ] {
            assert_eq!(plan(&unit(name), t).link, want, "{name} at {t}");
        }
    }

    #[test]
    fn overdue_within_two_minutes_and_not_for_the_others() {
        // Off longer than OFF_MAX_S before it comes back, and before 2 min.
        let e6 = unit("E-6");
        const { assert!(5 + OFF_MAX_S < 120) };
        for t in [5 + OFF_MAX_S + 5, 120, 189] {
            assert!(matches!(plan(&e6, t).link, Link::Departed(_)), "{t}");
        }
    }

    #[test]
    fn at_two_minutes_everything_shows_at_once() {
        use PresenceReason::{Shutdown, Sleep};
        let at = |name: &str| plan(&unit(name), 120);
        assert_eq!(at("P-21").link, Link::Departed(Shutdown));
        assert_eq!(at("E-6").link, Link::Departed(Shutdown));
        assert_eq!(at("P-17").link, Link::Departed(Sleep));
        assert_eq!(at("P-14").link, Link::DeadZone);
        assert!(matches!(at("P-11").cad, Cad::Timeout { .. }));
        assert!(!at("CAD-WS-02").cadclient_running);
        assert!(at("E-4").disk_permille > 990);
        assert!((951..990).contains(&at("M-7").disk_permille));
    }

    #[test]
    fn cad_api_table() {
        for (name, t, want) in [
            ("P-11", 39, Cad::Ok { total_ms: 172 }),
            ("P-11", 40, Cad::Slow { total_ms: 2_600 }),
            ("CAD-WS-01", 99, Cad::Slow { total_ms: 2_600 }),
            ("P-11", 100, Cad::Timeout { after_ms: 3_000 }),
            ("P-11", 139, Cad::Timeout { after_ms: 3_000 }),
            ("P-11", 140, Cad::Ok { total_ms: 172 }),
            ("E-1", 80, Cad::Ok { total_ms: 159 }),
        ] {
            assert_eq!(plan(&unit(name), t).cad, want, "{name} at {t}");
        }
    }

    #[test]
    fn timeouts_stay_a_minority_of_the_failure_window() {
        // cad-api-failing (failure_ratio > 0.5 over 5 min) must not fire:
        // even in the first loop, timeouts are under half of the results.
        let p = unit("P-11");
        let (mut ok, mut failed) = (0, 0);
        for t in (0..140).step_by(TICK_S as usize) {
            match plan(&p, t).cad {
                Cad::Timeout { .. } => failed += 1,
                _ => ok += 1,
            }
        }
        assert!(failed * 2 < ok + failed, "{failed} of {}", ok + failed);
        // ...while the slow stretch (incl. timeouts) lasts past probe-slow's 1 min.
        let slow = (0..PERIOD_S)
            .filter(|&t| !matches!(plan(&p, t).cad, Cad::Ok { .. }))
            .count() as u64;
        assert!(slow > 60 + TICK_S, "{slow}");
    }

    #[test]
    fn crash_loop_table() {
        let u = unit("CAD-WS-02");
        for (t, running, restarts) in [
            (0, true, 0),
            (20, false, 0),
            (35, false, 1),
            (149, false, 12),
            (150, true, 13),
            (PERIOD_S + 5, true, 13),
            (PERIOD_S + 45, false, 15),
        ] {
            let p = plan(&u, t);
            assert_eq!(
                (p.cadclient_running, p.cadclient_restarts),
                (running, restarts),
                "at {t}"
            );
        }
        let other = plan(&unit("CAD-WS-01"), 50);
        assert_eq!(
            (other.cadclient_running, other.cadclient_restarts),
            (true, 0)
        );
    }

    #[test]
    fn disk_table() {
        for (name, t, want) in [
            ("E-4", 0, 700),
            ("E-4", 40, 940),
            ("E-4", 50, 996),
            ("E-4", 149, 996),
            ("E-4", 150, 620),
            ("M-7", 60, 965),
            ("M-7", 150, 620),
        ] {
            assert_eq!(plan(&unit(name), t).disk_permille, want, "{name} at {t}");
        }
        // Over 99 % (disk-critical) long enough for its 30 s, by 2 min;
        // M-7 over 95 % (disk-full) for its 1 min but never over 99 %.
        let first = |name: &str, over: u32| {
            (0..PERIOD_S).find(|&t| plan(&unit(name), t).disk_permille > over)
        };
        assert!(first("E-4", 990).unwrap() + 30 < 100);
        assert!(first("M-7", 950).unwrap() + 60 < 120);
        assert_eq!(first("M-7", 990), None);
        // Steady units stay well under the threshold.
        for u in fleet().iter().filter(|u| u.role == Role::Steady) {
            assert!(plan(u, 60).disk_permille < 900, "{}", u.unit);
        }
    }
}
