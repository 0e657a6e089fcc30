//! The VPNs the config names (`[network] vpn = ["tun0", "wg*", "NetMotion*"]`),
//! up or down (issue 12).
//!
//! Contract ([`report`], pure):
//! * Each pattern (globs: `*` any run, `?` one character) yields the
//!   interfaces it matches, sorted by name, each once even when several
//!   patterns match it; a pattern that matches nothing yields
//!   `Vpn { name: pattern, up: false }` (the tunnel is absent: down).
//! * At most [`MAX_VPNS`] entries; the rest are left out.
//! * Linux: every `/sys/class/net` entry; up = `flags` has IFF_UP and
//!   `operstate` is `up` or `unknown` (a tun with no process attached has
//!   no carrier: `down`). Windows: adapters matched by FriendlyName or
//!   Description (case-insensitive), reported by FriendlyName; up =
//!   `OperStatus` up.
//! * No pattern configured: an empty list, no failure.

use muster_proto::Vpn;

/// At most this many VPN entries in one sample.
pub const MAX_VPNS: usize = 32;

/// A link as the OS lists it: its names (Linux: one; Windows: friendly
/// name first, then description) and whether it is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub names: Vec<String>,
    pub up: bool,
}

/// Glob match: `*` matches any run (also empty), `?` one character.
pub fn glob(pattern: &str, name: &str, case_insensitive: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if case_insensitive {
            s.chars().flat_map(char::to_lowercase).collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, n) = (norm(pattern), norm(name));
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The configured VPNs' state from the OS's links.
pub fn report(patterns: &[String], links: &[Link], case_insensitive: bool) -> Vec<Vpn> {
    let mut out: Vec<Vpn> = Vec::new();
    for p in patterns {
        let mut hits: Vec<&Link> = links
            .iter()
            .filter(|l| l.names.iter().any(|n| glob(p, n, case_insensitive)))
            .collect();
        hits.sort_by(|a, b| a.names[0].cmp(&b.names[0]));
        if hits.is_empty() {
            if !out.iter().any(|v| v.name == *p) {
                out.push(Vpn {
                    name: p.clone(),
                    up: false,
                });
            }
            continue;
        }
        for l in hits {
            if !out.iter().any(|v| v.name == l.names[0]) {
                out.push(Vpn {
                    name: l.names[0].clone(),
                    up: l.up,
                });
            }
        }
    }
    out.truncate(MAX_VPNS);
    out
}

/// Linux: `IFF_UP` in `flags` and a carrier (`carrier` is current; the
/// `operstate` is updated asynchronously, so it only stands in when
/// `carrier` cannot be read).
pub fn linux_up(flags: u32, carrier: Option<bool>, operstate: &str) -> bool {
    const IFF_UP: u32 = 0x1;
    flags & IFF_UP != 0 && carrier.unwrap_or(matches!(operstate, "up" | "unknown"))
}

#[cfg(target_os = "linux")]
pub fn read(patterns: &[String]) -> Result<Vec<muster_proto::Vpn>, String> {
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let dir = std::fs::read_dir("/sys/class/net")
        .map_err(|e| format!("cannot list /sys/class/net: {e}"))?;
    let mut links = Vec::new();
    for e in dir.flatten().take(4096) {
        let name = e.file_name().to_string_lossy().into_owned();
        // Only the interfaces a pattern names are read (three sysfs files
        // each, every sample).
        if !patterns.iter().any(|p| glob(p, &name, false)) {
            continue;
        }
        let p = e.path();
        let flags = std::fs::read_to_string(p.join("flags"))
            .ok()
            .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        let oper = std::fs::read_to_string(p.join("operstate")).unwrap_or_default();
        // Reading `carrier` of an interface that is down is EINVAL.
        let carrier = std::fs::read_to_string(p.join("carrier"))
            .ok()
            .map(|c| c.trim() == "1");
        links.push(Link {
            names: vec![name],
            up: linux_up(flags, carrier, oper.trim()),
        });
    }
    Ok(report(patterns, &links, false))
}

#[cfg(windows)]
pub fn read(patterns: &[String]) -> Result<Vec<muster_proto::Vpn>, String> {
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let links: Vec<Link> = super::win::adapters()?
        .into_iter()
        .map(|a| Link {
            names: vec![a.friendly_name, a.description],
            up: a.up,
        })
        .collect();
    Ok(report(patterns, &links, true))
}

#[cfg(not(any(target_os = "linux", windows)))]
pub fn read(patterns: &[String]) -> Result<Vec<muster_proto::Vpn>, String> {
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    Err("VPN interfaces are not read on this OS".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("tun0", "tun0", false));
        assert!(!glob("tun0", "tun01", false));
        assert!(glob("wg*", "wg", false));
        assert!(glob("wg*", "wg-metro", false));
        assert!(!glob("wg*", "awg0", false));
        assert!(glob("*vpn*", "my-vpn-1", false));
        assert!(glob("tun?", "tun7", false));
        assert!(!glob("tun?", "tun", false));
        assert!(glob("a*b*c", "axxbyyc", false));
        assert!(!glob("a*b*c", "axxbyy", false));
        assert!(glob("NetMotion*", "netmotion mobility adapter", true));
        assert!(!glob("NetMotion*", "netmotion mobility adapter", false));
        assert!(glob("*", "", false));
        assert!(!glob("?", "", false));
    }

    fn link(name: &str, up: bool) -> Link {
        Link {
            names: vec![name.into()],
            up,
        }
    }

    #[test]
    fn patterns_to_vpns() {
        let links = [
            link("eth0", true),
            link("wg1", false),
            link("tun0", true),
            link("wg0", true),
        ];
        let pats: Vec<String> = ["tun0", "wg*", "NetMotion*", "tun*"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let v = report(&pats, &links, false);
        let got: Vec<(&str, bool)> = v.iter().map(|v| (v.name.as_str(), v.up)).collect();
        assert_eq!(
            got,
            vec![
                ("tun0", true),
                ("wg0", true),
                ("wg1", false),
                ("NetMotion*", false)
            ]
        );
        assert!(report(&[], &links, false).is_empty());
    }

    #[test]
    fn a_windows_adapter_matches_by_description_and_reports_its_friendly_name() {
        let links = [Link {
            names: vec!["Ethernet 3".into(), "NetMotion Mobility Adapter".into()],
            up: true,
        }];
        let v = report(&["netmotion*".into()], &links, true);
        assert_eq!(
            v,
            vec![Vpn {
                name: "Ethernet 3".into(),
                up: true
            }]
        );
    }

    #[test]
    fn the_list_is_bounded() {
        let links: Vec<Link> = (0..100)
            .map(|i| link(&format!("tun{i:03}"), true))
            .collect();
        assert_eq!(report(&["tun*".into()], &links, false).len(), MAX_VPNS);
    }

    #[test]
    fn up_needs_admin_up_and_a_carrier() {
        assert!(linux_up(0x1003, Some(true), "down"), "carrier is current");
        assert!(!linux_up(0x1003, Some(false), "up"), "operstate lags");
        assert!(!linux_up(0x1002, Some(true), "up"), "admin down");
        assert!(linux_up(0x1003, None, "up"));
        assert!(linux_up(0x1091, None, "unknown"));
        assert!(!linux_up(0x1090, None, "unknown"), "admin down");
        assert!(!linux_up(0x1003, None, "down"), "no carrier");
        assert!(!linux_up(0x1003, None, "lowerlayerdown"));
    }
}
