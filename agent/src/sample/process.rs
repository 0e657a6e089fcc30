//! Watched processes (the CAD client, its updater): running or not, pid, CPU,
//! RSS and restarts. The restart rule is pure and table-tested:
//! [`RestartTracker`].
//!
//! Cost: a full sysinfo process refresh reads several `/proc` files for every
//! process on the machine (about 6 syscalls each), which made it 85% of the
//! agent's CPU. On Linux the agent instead lists `/proc` (one `getdents`),
//! reads `comm` only for pids it has not seen, and lets sysinfo refresh just
//! the matching pids. Everywhere else sysinfo's full refresh is one system call
//! (Windows: `NtQuerySystemInformation`) and is used as is.

use std::collections::HashMap;

use muster_proto::Process;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

fn kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing().with_memory().with_cpu()
}

/// Finds the pids whose name matches a watched name, cheaply.
#[derive(Debug, Default)]
pub struct Discovery {
    /// pid → (index of the watched name it matches, times its name was read).
    known: HashMap<u32, (Option<u16>, u8)>,
    listing: Vec<u32>,
    /// The matching pids and the index of the name each matched, as of the
    /// last `/proc` scan; `None` when the last refresh was a full one.
    matched: Option<Vec<(Pid, u16)>>,
    to_refresh: Vec<Pid>,
    passes: u32,
}

/// Re-read every pid's name this often (catches a late rename, or a recycled pid).
const FULL_RECHECK_EVERY: u32 = 60;

/// A new pid's name is read at this many consecutive passes before it is
/// trusted: a process caught mid-`exec` still shows its parent's name, and a
/// launcher (`cadclient.sh`) often `exec`s the real program right away.
const YOUNG_READS: u8 = 3;

impl Discovery {
    /// Refreshes `sys` for the watched processes.
    pub fn refresh(&mut self, sys: &mut System, names: &[String]) {
        if !cfg!(target_os = "linux") || self.scan_proc(names).is_err() {
            self.matched = None;
            sys.refresh_processes_specifics(ProcessesToUpdate::All, true, kind());
            return;
        }
        // Refresh the matches, and whatever sysinfo still holds so the dead are removed.
        self.to_refresh.clear();
        if let Some(m) = &self.matched {
            self.to_refresh.extend(m.iter().map(|(p, _)| *p));
        }
        for p in sys.processes().keys() {
            if !self.to_refresh.contains(p) {
                self.to_refresh.push(*p);
            }
        }
        sys.refresh_processes_specifics(ProcessesToUpdate::Some(&self.to_refresh), true, kind());
    }

    /// The pids matching watched name `idx`, when the last refresh was a `/proc` scan.
    fn pids_of(&self, idx: usize) -> Option<impl Iterator<Item = Pid> + '_> {
        self.matched.as_ref().map(move |m| {
            m.iter()
                .filter(move |(_, i)| *i as usize == idx)
                .map(|(p, _)| *p)
        })
    }

    fn scan_proc(&mut self, names: &[String]) -> std::io::Result<()> {
        self.passes = self.passes.wrapping_add(1);
        if self.passes.is_multiple_of(FULL_RECHECK_EVERY) {
            self.known.clear();
        }
        self.listing.clear();
        for e in std::fs::read_dir("/proc")? {
            let Ok(e) = e else { continue };
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                self.listing.push(pid);
            }
        }
        self.listing.sort_unstable();
        let listing = &self.listing;
        self.known.retain(|p, _| listing.binary_search(p).is_ok());
        let matched = self.matched.get_or_insert_with(Vec::new);
        matched.clear();
        for &pid in &self.listing {
            let e = self.known.entry(pid).or_insert((None, 0));
            if e.1 < YOUNG_READS {
                e.1 += 1;
                // A process that exits meanwhile simply does not match.
                e.0 = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .ok()
                    .and_then(|c| names.iter().position(|n| name_matches(n, c.trim_end())))
                    .map(|i| i as u16);
            }
            if let Some(i) = e.0 {
                matched.push((Pid::from_u32(pid), i));
            }
        }
        Ok(())
    }
}

/// A full refresh of every process (tests, and platforms without `/proc`).
pub fn refresh(sys: &mut System) {
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, kind());
}

/// Does the OS's process name `actual` match the configured `watched` name?
/// Case-insensitive, `.exe` optional, and Linux's 15-byte `comm` truncation
/// is allowed for.
pub fn name_matches(watched: &str, actual: &str) -> bool {
    let strip = |s: &str| -> String {
        let l = s.to_ascii_lowercase();
        match l.strip_suffix(".exe") {
            Some(x) => x.to_owned(),
            None => l,
        }
    };
    let (w, a) = (strip(watched), strip(actual));
    w == a || (actual.len() == 15 && w.len() > 15 && w.starts_with(&a))
}

/// One watched name's restart state. A restart is a new primary (oldest) pid
/// while the previous primary pid is gone: a crash loop makes `restarts` climb
/// at every sample. Child processes of the same name coming and going do not count.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    last_primary: Option<u32>,
    pub restarts: u32,
}

impl RestartTracker {
    /// `primary`: the oldest running instance's pid, if any; `running`: all pids.
    pub fn observe(&mut self, primary: Option<u32>, running: &[u32]) -> u32 {
        if let Some(p) = primary {
            if let Some(prev) = self.last_primary
                && prev != p
                && !running.contains(&prev)
            {
                self.restarts = self.restarts.saturating_add(1);
            }
            self.last_primary = Some(p);
        }
        self.restarts
    }
}

/// The watched processes and their restart trackers.
#[derive(Debug)]
pub struct Watched {
    names: Vec<String>,
    trackers: Vec<RestartTracker>,
    pids: Vec<u32>,
}

impl Watched {
    pub fn new(names: &[String]) -> Self {
        Watched {
            names: names.to_vec(),
            trackers: vec![RestartTracker::default(); names.len()],
            pids: Vec::new(),
        }
    }

    /// Reads the watched processes from `sys`. With `disc` (after a `/proc`
    /// scan) the pids it matched are used; otherwise names are matched here.
    pub fn read(&mut self, sys: &System, disc: &Discovery) -> Result<Vec<Process>, String> {
        let procs = sys.processes();
        let mut out = Vec::with_capacity(self.names.len());
        for (idx, (name, tracker)) in self.names.iter().zip(self.trackers.iter_mut()).enumerate() {
            self.pids.clear();
            let mut primary: Option<(u64, u32)> = None;
            let (mut cpu_bp, mut rss) = (0u32, 0u64);
            let found: Box<dyn Iterator<Item = (Pid, &sysinfo::Process)>> = match disc.pids_of(idx)
            {
                Some(pids) => Box::new(pids.filter_map(|p| procs.get(&p).map(|x| (p, x)))),
                None => Box::new(
                    procs
                        .iter()
                        .filter(|(_, p)| name_matches(name, &p.name().to_string_lossy()))
                        .map(|(pid, p)| (*pid, p)),
                ),
            };
            // A zombie (dead, not yet reaped by a parent that never waits,
            // e.g. a launcher) is not a running CAD client.
            let alive = |p: &sysinfo::Process| {
                !matches!(
                    p.status(),
                    sysinfo::ProcessStatus::Zombie | sysinfo::ProcessStatus::Dead
                )
            };
            for (pid, p) in found.filter(|(_, p)| alive(p)) {
                let pid = pid.as_u32();
                self.pids.push(pid);
                let key = (p.start_time(), pid);
                if primary.is_none_or(|k| key < k) {
                    primary = Some(key);
                }
                let c = p.cpu_usage();
                if c.is_finite() && c > 0.0 {
                    cpu_bp = cpu_bp.saturating_add((c * 100.0).round() as u32);
                }
                rss += p.memory() / 1024;
            }
            let primary = primary.map(|(_, pid)| pid);
            let restarts = tracker.observe(primary, &self.pids);
            out.push(Process {
                name: name.clone(),
                running: primary.is_some(),
                pid: primary,
                cpu_bp,
                rss_kib: rss,
                restarts,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_table() {
        // (primary, all running, expected restarts)
        let steps: &[(Option<u32>, &[u32], u32)] = &[
            (Some(100), &[100], 0),      // first sight is not a restart
            (Some(100), &[100, 101], 0), // a child of the same name
            (Some(100), &[100], 0),      // the child exits
            (Some(200), &[200], 1),      // new pid, old one gone: restart
            (None, &[], 1),              // not running
            (Some(300), &[300], 2),      // back with a new pid
            (Some(400), &[400], 3),      // crash loop: climbs every sample
            (Some(500), &[500], 4),
            (Some(500), &[500], 4),
        ];
        let mut t = RestartTracker::default();
        for (i, (p, running, want)) in steps.iter().enumerate() {
            assert_eq!(t.observe(*p, running), *want, "step {i}");
        }
    }

    #[test]
    fn names() {
        assert!(name_matches("cadclient", "cadclient"));
        assert!(name_matches("cadclient", "CadClient.exe"));
        assert!(name_matches("CadClient.exe", "cadclient"));
        assert!(name_matches("cadclient-updater", "cadclient-updat"));
        assert!(!name_matches("cadclient", "cadclient2"));
        assert!(!name_matches("cad", "cadclient"));
    }

    /// A real crash loop: a watched program killed and started again is
    /// seen as restarts, through the cheap `/proc` discovery path.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_killed_and_restarted_program_counts_as_restarts() {
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let name = format!("cad-{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("muster-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join(&name);
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let names = vec![name];
        let mut sys = System::new().unwrap();
        let mut disc = Discovery::default();
        let mut w = Watched::new(&names);
        let mut observe = |sys: &mut System| {
            disc.refresh(sys, &names);
            w.read(sys, &disc).unwrap().remove(0)
        };

        let p = observe(&mut sys);
        assert!(!p.running);
        for round in 0..3u32 {
            let child = Reap(std::process::Command::new(&exe).arg("30").spawn().unwrap());
            let pid = child.0.id();
            // Caught mid-exec, a new process still shows its parent's name: it
            // is recognised at one of the next passes (samples are 1 s or more apart).
            let mut p = observe(&mut sys);
            for _ in 1..YOUNG_READS {
                if p.running {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                p = observe(&mut sys);
            }
            assert!(p.running, "round {round}: {p:?}");
            assert_eq!(p.pid, Some(pid));
            assert!(p.rss_kib > 0);
            assert_eq!(p.restarts, round, "round {round}");
            drop(child);
            let p = observe(&mut sys);
            assert!(!p.running, "round {round}: {p:?}");
            assert_eq!(p.pid, None);
            assert_eq!(p.restarts, round);
        }
        // Killed and never reaped by its parent (a launcher that does not
        // wait): a zombie is dead, not running.
        let mut z = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        let zpid = z.id();
        let mut p = observe(&mut sys);
        for _ in 1..YOUNG_READS {
            if p.running {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            p = observe(&mut sys);
        }
        assert_eq!(p.pid, Some(zpid));
        z.kill().unwrap();
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{zpid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        };
        for _ in 0..100 {
            if zombie() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(zombie(), "pid {zpid} a zombie");
        let p = observe(&mut sys);
        assert!(!p.running, "a zombie: {p:?}");
        z.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sees_this_test_process() {
        let mut sys = System::new().expect("sysinfo");
        refresh(&mut sys);
        let me = sysinfo::get_current_pid().unwrap();
        let my_name = sys
            .process(me)
            .unwrap()
            .name()
            .to_string_lossy()
            .into_owned();
        let mut w = Watched::new(&[my_name.clone(), "no-such-process-xyz".into()]);
        let got = w.read(&sys, &Discovery::default()).unwrap();
        assert!(got[0].running, "{got:?}");
        assert!(got[0].rss_kib > 0);
        assert!(!got[1].running);
        assert_eq!(got[1].pid, None);
    }
}
