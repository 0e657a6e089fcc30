//! Presence reasons in words for people: `shut down 18:02 (OS shutdown)`,
//! `lost contact 14:32 on cellular (wwan0), signal -118 dBm (very weak),
//! VPN up`. Pure; times are the collector's clock, shown as UTC `HH:MM`.
//!
//! # Signal bands
//!
//! The signal of the link carrying the default route
//! ([`NetContext::route_signal_dbm`]) in words:
//!
//! | link | good | fair | weak | very weak |
//! |---|---|---|---|---|
//! | cellular (RSRP, or RSSI on older technologies) | > -90 dBm | -90 ..= -105 | < -105 ..= -115 | < -115 |
//! | Wi-Fi | > -67 dBm | -67 ..= -75 | < -75 ..= -85 | < -85 |
//!
//! Other links (Ethernet, VPN) report no signal.

use std::time::Duration;

use muster_proto::{LinkKind, NetContext, Presence, PresenceReason};

/// What a unit last said about its network (from its newest host sample
/// that carried a network context): the evidence of a `lost` reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSummary {
    /// The default route's kind and interface; `None`: no default route.
    pub route: Option<(LinkKind, String)>,
    pub signal_dbm: Option<i16>,
    /// `None` when the unit's config names no VPN.
    pub vpn_up: Option<bool>,
}

impl NetSummary {
    pub fn of(n: &NetContext) -> NetSummary {
        let mut s = NetSummary {
            route: None,
            signal_dbm: None,
            vpn_up: None,
        };
        s.update(n);
        s
    }

    /// Takes `n` in place of what was known: the interface name's buffer is
    /// reused, so a unit whose route did not change costs no allocation
    /// per host sample.
    pub fn update(&mut self, n: &NetContext) {
        match (&mut self.route, &n.route) {
            (Some((kind, iface)), Some(r)) => {
                *kind = r.kind;
                iface.clone_from(&r.interface);
            }
            (route, r) => *route = r.as_ref().map(|r| (r.kind, r.interface.clone())),
        }
        self.signal_dbm = n.route_signal_dbm();
        self.vpn_up = n.vpn_up();
    }

    /// `on cellular (wwan0), signal -118 dBm (very weak), VPN up`.
    pub fn describe(&self) -> String {
        let mut s = match &self.route {
            None => "with no default route".to_string(),
            Some((kind, iface)) if iface.is_empty() => format!("on {}", kind.as_str()),
            Some((kind, iface)) => format!("on {} ({iface})", kind.as_str()),
        };
        if let (Some(dbm), Some((kind, _))) = (self.signal_dbm, &self.route) {
            s.push_str(&format!(", signal {dbm} dBm"));
            if let Some(w) = signal_word(*kind, dbm) {
                s.push_str(&format!(" ({w})"));
            }
        }
        match self.vpn_up {
            Some(true) => s.push_str(", VPN up"),
            Some(false) => s.push_str(", VPN down"),
            None => {}
        }
        s
    }
}

/// The band of a signal (see the module documentation); `None` for links
/// without one.
pub fn signal_word(kind: LinkKind, dbm: i16) -> Option<&'static str> {
    let (good, fair, weak) = match kind {
        LinkKind::Cellular => (-90, -105, -115),
        LinkKind::Wifi => (-67, -75, -85),
        _ => return None,
    };
    Some(if dbm > good {
        "good"
    } else if dbm >= fair {
        "fair"
    } else if dbm >= weak {
        "weak"
    } else {
        "very weak"
    })
}

/// UTC `HH:MM` of a unix time in ms.
pub fn hhmm(ms: u64) -> String {
    let min = (ms / 60_000) % (24 * 60);
    format!("{:02}:{:02}", min / 60, min % 60)
}

/// A duration for people: `2m`, `1h 12m`.
pub fn span(ms: u64) -> String {
    let secs = if ms >= 3_600_000 {
        ms / 60_000 * 60
    } else {
        ms / 1000
    };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// An announced departure in words, `at_ms` its receive time:
/// `shut down 18:02 (OS shutdown)`, `stopped 18:02 by an operator`,
/// `restarting since 18:02 (back within 2m)`, `asleep since 14:10`.
pub fn departure(p: &Presence, at_ms: u64) -> String {
    let t = hhmm(at_ms);
    match p.reason {
        PresenceReason::Shutdown => format!("shut down {t} (OS shutdown)"),
        PresenceReason::Stop {
            back_within_ms: None,
        } => format!("stopped {t} by an operator"),
        PresenceReason::Stop {
            back_within_ms: Some(b),
        } => format!("restarting since {t} (back within {})", span(b)),
        PresenceReason::Sleep => format!("asleep since {t}"),
        PresenceReason::Unknown { code } => format!("gone {t} (unknown reason code {code})"),
        PresenceReason::Lost => format!("lost contact {t}"),
        PresenceReason::Connected | PresenceReason::Resumed { .. } => format!("connected {t}"),
    }
}

/// `lost contact 14:32 on cellular (wwan0), signal -118 dBm (very weak),
/// VPN up`, with `how` (the will, an unknown reason) in brackets.
pub fn lost(at_ms: u64, how: Option<&str>, net: Option<&NetSummary>) -> String {
    let mut s = format!("lost contact {}", hhmm(at_ms));
    if let Some(how) = how {
        s.push_str(&format!(" ({how})"));
    }
    if let Some(n) = net {
        s.push(' ');
        s.push_str(&n.describe());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::{BootId, Cellular, DefaultRoute, Vpn, Wifi};

    #[test]
    fn bands() {
        use LinkKind::{Cellular as C, Ethernet as E, Wifi as W};
        let cases = [
            (C, -80, Some("good")),
            (C, -90, Some("fair")),
            (C, -105, Some("fair")),
            (C, -106, Some("weak")),
            (C, -115, Some("weak")),
            (C, -116, Some("very weak")),
            (W, -60, Some("good")),
            (W, -67, Some("fair")),
            (W, -75, Some("fair")),
            (W, -80, Some("weak")),
            (W, -86, Some("very weak")),
            (E, -50, None),
        ];
        for (k, dbm, want) in cases {
            assert_eq!(signal_word(k, dbm), want, "{k:?} {dbm}");
        }
    }

    #[test]
    fn words() {
        let at = (18 * 60 + 2) * 60_000 + 86_400_000 * 400;
        let p = |reason| Presence {
            online: false,
            boot: BootId(1),
            connection: 1,
            at_ms: 0,
            reason,
        };
        assert_eq!(
            departure(&p(PresenceReason::Shutdown), at),
            "shut down 18:02 (OS shutdown)"
        );
        assert_eq!(
            departure(
                &p(PresenceReason::Stop {
                    back_within_ms: None
                }),
                at
            ),
            "stopped 18:02 by an operator"
        );
        assert_eq!(
            departure(
                &p(PresenceReason::Stop {
                    back_within_ms: Some(120_000)
                }),
                at
            ),
            "restarting since 18:02 (back within 2m)"
        );
        assert_eq!(
            departure(&p(PresenceReason::Sleep), at),
            "asleep since 18:02"
        );
        assert_eq!(span(4_320_000 + 5_000), "1h 12m");
        let net = NetContext {
            route: Some(DefaultRoute {
                interface: "wwan0".into(),
                kind: LinkKind::Cellular,
            }),
            cellular: Some(Cellular {
                rsrp_dbm: Some(-118),
                ..Default::default()
            }),
            vpns: vec![Vpn {
                name: "tun0".into(),
                up: true,
            }],
            ..Default::default()
        };
        assert_eq!(
            lost(at, None, Some(&NetSummary::of(&net))),
            "lost contact 18:02 on cellular (wwan0), signal -118 dBm (very weak), VPN up"
        );
        let wifi = NetContext {
            route: Some(DefaultRoute {
                interface: "wlan0".into(),
                kind: LinkKind::Wifi,
            }),
            wifi: Some(Wifi {
                interface: "wlan0".into(),
                ssid: "depot".into(),
                signal_dbm: Some(-70),
            }),
            ..Default::default()
        };
        assert_eq!(
            lost(at, Some("MQTT will"), Some(&NetSummary::of(&wifi))),
            "lost contact 18:02 (MQTT will) on wifi (wlan0), signal -70 dBm (fair)"
        );
        assert_eq!(
            lost(at, None, Some(&NetSummary::of(&NetContext::default()))),
            "lost contact 18:02 with no default route"
        );
    }
}
