//! The default route (issue 12): which interface carries it and what kind of
//! link that is (ethernet, Wi-Fi, cellular, VPN, other), and roaming: how
//! often the default route moved since the previous sample.
//!
//! Contract:
//! * No default route is `Ok(None)` (a dead zone is data, not a failure);
//!   an unreadable routing table is `Err(reason)`.
//! * Linux reads `/proc/net/route` and `/proc/net/ipv6_route` (the calling
//!   thread's network namespace): an IPv4 default route wins over an IPv6
//!   one; within a family the lowest metric wins, ties by interface name.
//!   Routes that are not up, or reject/blackhole routes, do not count.
//!   Known gap: only the main table is visible there, so a default route
//!   installed by policy routing in another table (wg-quick's fwmark table)
//!   is not seen; the VPN family still reports such a tunnel up/down.
//! * The kind comes from sysfs ([`LinkFacts`] → [`kind`], pure).
//! * Windows: `GetBestInterfaceEx` towards a public address, then the
//!   adapter's `IfType` (see `win.rs`).
//! * Roaming ([`Roaming`], pure): a change is another interface, or a
//!   default route that appeared or disappeared, between two samples; a
//!   flap that returns within one interval is not seen.

use muster_proto::{DefaultRoute, LinkKind};

/// A default route candidate from the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub interface: String,
    pub metric: u32,
}

const RTF_UP: u32 = 0x0001;
const RTF_REJECT: u32 = 0x0200;

/// The default routes in `/proc/net/route` text.
pub fn parse_ipv4(text: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).take(10_000) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(flags), Some(mask), Ok(metric)) =
            (hex(f[1]), hex(f[3]), hex(f[7]), f[6].parse::<u32>())
        else {
            continue;
        };
        if dest == 0 && mask == 0 && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 {
            out.push(Candidate {
                interface: f[0].to_owned(),
                metric,
            });
        }
    }
    out
}

/// The default routes in `/proc/net/ipv6_route` text.
pub fn parse_ipv6(text: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for line in text.lines().take(10_000) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(plen), Some(metric), Some(flags)) = (hex(f[1]), hex(f[5]), hex(f[8])) else {
            continue;
        };
        let any = f[0].len() == 32 && f[0].bytes().all(|b| b == b'0');
        if any && plen == 0 && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && f[9] != "lo" {
            out.push(Candidate {
                interface: f[9].to_owned(),
                metric,
            });
        }
    }
    out
}

/// The interface carrying the default route: IPv4 first, lowest metric.
pub fn best(v4: &[Candidate], v6: &[Candidate]) -> Option<String> {
    let pick = |c: &[Candidate]| {
        c.iter()
            .min_by(|a, b| (a.metric, &a.interface).cmp(&(b.metric, &b.interface)))
            .map(|c| c.interface.clone())
    };
    pick(v4).or_else(|| pick(v6))
}

/// What sysfs says about an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    /// `type`: the ARPHRD_* hardware type.
    pub arphrd: Option<u32>,
    /// `uevent`'s `DEVTYPE=` (`wlan`, `wwan`, `wireguard`, `bridge`, ...).
    pub devtype: Option<String>,
    /// `wireless/` or `phy80211` exists.
    pub wireless: bool,
    /// `tun_flags` exists (a tun or tap device).
    pub tun: bool,
}

/// The link kind from sysfs facts.
pub fn kind(f: &LinkFacts) -> LinkKind {
    match f.devtype.as_deref() {
        Some("wlan") => return LinkKind::Wifi,
        Some("wwan") => return LinkKind::Cellular,
        Some("wireguard") => return LinkKind::Vpn,
        _ => {}
    }
    if f.wireless {
        return LinkKind::Wifi;
    }
    if f.tun {
        // tun (layer 3) and tap (layer 2): OpenVPN, NetMotion-like clients.
        return LinkKind::Vpn;
    }
    match f.arphrd {
        Some(1) => LinkKind::Ethernet,
        // ARPHRD_RAWIP: qmi_wwan/mhi modems in raw-IP mode.
        Some(519) => LinkKind::Cellular,
        // NONE (tun without tun_flags, xfrm), TUNNEL, TUNNEL6, SIT, IPGRE, IP6GRE.
        Some(65534 | 768 | 769 | 776 | 778 | 823) => LinkKind::Vpn,
        // PPP is a dial-up modem or a PPTP/L2TP tunnel: sysfs cannot tell;
        // a ModemManager port named like it makes it cellular (see mod.rs).
        _ => LinkKind::Other,
    }
}

/// Windows: the adapter's `IfType` (IANA ifType) → the link kind.
pub fn if_type_kind(if_type: u32) -> LinkKind {
    match if_type {
        6 => LinkKind::Ethernet,
        71 => LinkKind::Wifi,
        // IF_TYPE_WWANPP, IF_TYPE_WWANPP2: mobile broadband.
        243 | 244 => LinkKind::Cellular,
        // IF_TYPE_PROP_VIRTUAL (most VPN clients' adapters), IF_TYPE_TUNNEL.
        53 | 131 => LinkKind::Vpn,
        _ => LinkKind::Other,
    }
}

/// Counts default-route changes between samples.
#[derive(Debug, Default)]
pub struct Roaming {
    /// The previous sample's route interface; `None` before the first read.
    prev: Option<Option<String>>,
}

impl Roaming {
    /// Records this sample's default route interface; returns 1 when it
    /// differs from the previous sample's (0 on the first sample).
    pub fn observe(&mut self, now: Option<&str>) -> u32 {
        let now = now.map(str::to_owned);
        let changed = matches!(&self.prev, Some(p) if *p != now);
        self.prev = Some(now);
        changed as u32
    }
}

/// An interface name that is safe to join onto a sysfs path.
pub fn safe_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

#[cfg(target_os = "linux")]
pub fn read() -> Result<Option<DefaultRoute>, String> {
    let v4 = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| format!("cannot read /proc/net/route: {e}"))?;
    let v4 = parse_ipv4(&v4);
    // An IPv4 default wins (`best`): the IPv6 table (a kernel without IPv6
    // has none: no IPv6 default route) is read only when there is none.
    let v6 = if v4.is_empty() {
        parse_ipv6(&std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default())
    } else {
        Vec::new()
    };
    let Some(interface) = best(&v4, &v6) else {
        return Ok(None);
    };
    let kind = if safe_ifname(&interface) {
        kind(&sysfs_facts(&interface))
    } else {
        LinkKind::Other
    };
    Ok(Some(DefaultRoute { interface, kind }))
}

#[cfg(target_os = "linux")]
pub fn sysfs_facts(ifname: &str) -> LinkFacts {
    let base = std::path::Path::new("/sys/class/net").join(ifname);
    let arphrd = std::fs::read_to_string(base.join("type"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let devtype = std::fs::read_to_string(base.join("uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVTYPE=").map(|v| v.trim().to_owned()))
        });
    LinkFacts {
        arphrd,
        devtype,
        wireless: base.join("wireless").exists() || base.join("phy80211").exists(),
        tun: base.join("tun_flags").exists(),
    }
}

#[cfg(windows)]
pub fn read() -> Result<Option<DefaultRoute>, String> {
    super::win::default_route()
}

#[cfg(not(any(target_os = "linux", windows)))]
pub fn read() -> Result<Option<DefaultRoute>, String> {
    Err("the default route is not read on this OS".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wwan0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0
bad line
";

    #[test]
    fn ipv4_defaults_and_lowest_metric() {
        let c = parse_ipv4(V4);
        let names: Vec<_> = c.iter().map(|c| (c.interface.as_str(), c.metric)).collect();
        assert_eq!(names, vec![("wlan0", 600), ("eth0", 100), ("wwan0", 50)]);
        assert_eq!(best(&c, &[]), Some("wwan0".into()));
        // A down (flags 0) or reject route does not count.
        let down = V4.replace(
            "wwan0\t00000000\t00000000\t0001",
            "wwan0\t00000000\t00000000\t0000",
        );
        assert_eq!(best(&parse_ipv4(&down), &[]), Some("eth0".into()));
        let reject = V4.replace(
            "wwan0\t00000000\t00000000\t0001",
            "wwan0\t00000000\t00000000\t0201",
        );
        assert_eq!(best(&parse_ipv4(&reject), &[]), Some("eth0".into()));
        assert_eq!(best(&parse_ipv4("Iface\n"), &[]), None);
        assert_eq!(best(&parse_ipv4(""), &[]), None);
    }

    #[test]
    fn ipv6_defaults_count_when_there_is_no_ipv4_one() {
        let v6 = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 wlan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000100 00000001 00000000 00000003 tun0
";
        let c = parse_ipv6(v6);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(best(&[], &c), Some("tun0".into()));
        assert_eq!(best(&parse_ipv4(V4), &c), Some("wwan0".into()));
    }

    #[test]
    fn kinds_from_sysfs_facts() {
        let f = |arphrd, devtype: Option<&str>, wireless, tun| LinkFacts {
            arphrd: Some(arphrd),
            devtype: devtype.map(str::to_owned),
            wireless,
            tun,
        };
        assert_eq!(kind(&f(1, None, false, false)), LinkKind::Ethernet);
        assert_eq!(kind(&f(1, Some("vlan"), false, false)), LinkKind::Ethernet);
        assert_eq!(kind(&f(1, Some("wlan"), false, false)), LinkKind::Wifi);
        assert_eq!(kind(&f(1, None, true, false)), LinkKind::Wifi);
        assert_eq!(kind(&f(1, Some("wwan"), false, false)), LinkKind::Cellular);
        assert_eq!(kind(&f(519, None, false, false)), LinkKind::Cellular);
        assert_eq!(kind(&f(65534, None, false, true)), LinkKind::Vpn);
        assert_eq!(kind(&f(1, None, false, true)), LinkKind::Vpn, "tap");
        assert_eq!(
            kind(&f(65534, Some("wireguard"), false, false)),
            LinkKind::Vpn
        );
        assert_eq!(kind(&f(776, None, false, false)), LinkKind::Vpn);
        assert_eq!(kind(&f(512, None, false, false)), LinkKind::Other);
        assert_eq!(kind(&f(772, None, false, false)), LinkKind::Other);
        assert_eq!(kind(&LinkFacts::default()), LinkKind::Other);
    }

    #[test]
    fn windows_if_types() {
        assert_eq!(if_type_kind(6), LinkKind::Ethernet);
        assert_eq!(if_type_kind(71), LinkKind::Wifi);
        assert_eq!(if_type_kind(243), LinkKind::Cellular);
        assert_eq!(if_type_kind(244), LinkKind::Cellular);
        assert_eq!(if_type_kind(53), LinkKind::Vpn);
        assert_eq!(if_type_kind(131), LinkKind::Vpn);
        assert_eq!(if_type_kind(24), LinkKind::Other, "loopback");
        assert_eq!(if_type_kind(23), LinkKind::Other, "ppp");
    }

    #[test]
    fn roaming_counts_interface_changes_and_dead_zones() {
        let mut r = Roaming::default();
        assert_eq!(
            r.observe(Some("eth0")),
            0,
            "the first sample has nothing to compare"
        );
        assert_eq!(r.observe(Some("eth0")), 0);
        assert_eq!(r.observe(Some("wwan0")), 1);
        assert_eq!(r.observe(None), 1, "into a dead zone");
        assert_eq!(r.observe(None), 0);
        assert_eq!(r.observe(Some("wlan0")), 1, "out of it");
        let mut r = Roaming::default();
        assert_eq!(r.observe(None), 0);
        assert_eq!(r.observe(Some("eth0")), 1);
    }

    #[test]
    fn unsafe_names_never_reach_a_path() {
        assert!(safe_ifname("eth0") && safe_ifname("wg-vpn.1"));
        for bad in ["", ".", "..", "a/b", "../x", "a\0"] {
            assert!(!safe_ifname(bad), "{bad:?}");
        }
    }
}
