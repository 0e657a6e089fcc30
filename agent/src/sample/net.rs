//! Every network interface: up or down, rx/tx rates and errors, from the
//! delta between two refreshes of the one interface list kept for the run.
//!
//! Linux reads `/proc/net/dev` (counters) and `/sys/class/net/<if>/operstate`
//! itself. sysinfo's `Networks::refresh` also walks `getifaddrs` and reads a
//! whole `sockaddr_storage` (128 bytes) through every address pointer; musl
//! allocates each address at its exact size, so that read runs past the
//! allocation and crashed the static agent now and then (SIGSEGV in
//! `sockaddr_to_network_addr`, seen in `once` under load). The counters are
//! all this family needs, and the parse is pure and table-tested. Other
//! systems (Windows) keep sysinfo's list.

use muster_proto::NetIf;

use super::per_sec;

/// One interface's cumulative counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev`: `name: rx bytes packets errs drop fifo frame
/// compressed multicast tx bytes packets errs drop fifo colls carrier
/// compressed`. Malformed lines are skipped; at most 4096 interfaces.
pub fn parse_proc_net_dev(text: &str) -> Vec<(String, Counters)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name.contains('|') {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            (f.len() >= 16).then(|| {
                (
                    name.to_owned(),
                    Counters {
                        rx_bytes: f[0],
                        rx_errors: f[2],
                        tx_bytes: f[8],
                        tx_errors: f[10],
                    },
                )
            })
        })
        .take(4096)
        .collect()
}

/// The change of a counter since the previous reading; a counter that went
/// back (an interface re-created, a 32-bit wrap) counts from zero.
pub fn delta(now: u64, before: Option<u64>) -> u64 {
    match before {
        Some(b) if now >= b => now - b,
        Some(_) => now,
        None => 0,
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashMap;

    use super::*;

    /// The interface list: the latest counters and their change since the
    /// refresh before.
    #[derive(Debug, Default)]
    pub struct Interfaces {
        last: HashMap<String, Counters>,
        /// (name, delta since the previous refresh), sorted by name.
        deltas: Vec<(String, Counters)>,
    }

    pub fn open() -> Option<Interfaces> {
        let mut i = Interfaces::default();
        refresh(&mut i);
        Some(i)
    }

    pub fn refresh(i: &mut Interfaces) {
        let Ok(text) = std::fs::read_to_string("/proc/net/dev") else {
            i.deltas.clear();
            return;
        };
        let now = parse_proc_net_dev(&text);
        let mut deltas = Vec::with_capacity(now.len());
        let mut last = HashMap::with_capacity(now.len());
        for (name, c) in now {
            let b = i.last.get(&name);
            deltas.push((
                name.clone(),
                Counters {
                    rx_bytes: delta(c.rx_bytes, b.map(|b| b.rx_bytes)),
                    rx_errors: delta(c.rx_errors, b.map(|b| b.rx_errors)),
                    tx_bytes: delta(c.tx_bytes, b.map(|b| b.tx_bytes)),
                    tx_errors: delta(c.tx_errors, b.map(|b| b.tx_errors)),
                },
            ));
            last.insert(name, c);
        }
        deltas.sort_by(|a, b| a.0.cmp(&b.0));
        i.last = last;
        i.deltas = deltas;
    }

    pub fn read(i: &Interfaces, elapsed_ms: u64) -> Result<Vec<NetIf>, String> {
        if i.deltas.is_empty() {
            return Err("/proc/net/dev lists no network interfaces".into());
        }
        Ok(i.deltas
            .iter()
            .map(|(name, d)| NetIf {
                name: name.clone(),
                up: up(name),
                rx_bps: per_sec(d.rx_bytes, elapsed_ms),
                tx_bps: per_sec(d.tx_bytes, elapsed_ms),
                rx_errors: d.rx_errors.min(u64::from(u32::MAX)) as u32,
                tx_errors: d.tx_errors.min(u64::from(u32::MAX)) as u32,
            })
            .collect())
    }

    /// `operstate` up, or unknown (loopback and some virtual links report
    /// unknown: they pass packets).
    fn up(name: &str) -> bool {
        if !super::super::route::safe_ifname(name) {
            return false;
        }
        std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
            .is_ok_and(|s| matches!(s.trim(), "up" | "unknown"))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use sysinfo::{InterfaceOperationalState as State, Networks};

    use super::*;

    pub type Interfaces = Networks;

    pub fn open() -> Option<Interfaces> {
        Networks::new().ok()
    }

    pub fn refresh(nets: &mut Interfaces) {
        nets.refresh(true);
    }

    pub fn read(nets: &Interfaces, elapsed_ms: u64) -> Result<Vec<NetIf>, String> {
        let mut out: Vec<NetIf> = nets
            .iter()
            .map(|(name, d)| NetIf {
                name: name.to_string_lossy().into_owned(),
                // Loopback and some virtual links report "unknown": they pass packets.
                up: matches!(d.operational_state(), State::Up | State::Unknown),
                rx_bps: per_sec(d.received(), elapsed_ms),
                tx_bps: per_sec(d.transmitted(), elapsed_ms),
                rx_errors: d.errors_on_received().min(u32::MAX as u64) as u32,
                tx_errors: d.errors_on_transmitted().min(u32::MAX as u64) as u32,
            })
            .collect();
        if out.is_empty() {
            return Err("the OS reported no network interfaces".into());
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

pub use imp::{Interfaces, open, read, refresh};

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1296      16    0    0    0     0          0         0     1296      16    0    0    0     0       0          0
  eth0: 987654321 1234  7    0    0     0          0         0 123456789 999    3    0    0     0       0          0
 wwan0:12 1 0 0 0 0 0 0 34 1 0 0 0 0 0 0
  bad0: 1 2 3
";

    #[test]
    fn proc_net_dev_is_parsed() {
        let p = parse_proc_net_dev(DEV);
        assert_eq!(
            p,
            vec![
                (
                    "lo".into(),
                    Counters {
                        rx_bytes: 1296,
                        rx_errors: 0,
                        tx_bytes: 1296,
                        tx_errors: 0
                    }
                ),
                (
                    "eth0".into(),
                    Counters {
                        rx_bytes: 987_654_321,
                        rx_errors: 7,
                        tx_bytes: 123_456_789,
                        tx_errors: 3
                    }
                ),
                (
                    "wwan0".into(),
                    Counters {
                        rx_bytes: 12,
                        rx_errors: 0,
                        tx_bytes: 34,
                        tx_errors: 0
                    }
                ),
            ]
        );
    }

    #[test]
    fn deltas_count_from_zero_after_a_reset() {
        assert_eq!(delta(150, Some(100)), 50);
        assert_eq!(delta(20, Some(100)), 20, "re-created or wrapped");
        assert_eq!(delta(100, None), 0, "first sight: no rate yet");
    }
}
