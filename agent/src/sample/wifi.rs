//! Wi-Fi association (issue 12): SSID and signal in dBm.
//!
//! Contract:
//! * No associated Wi-Fi interface (no Wi-Fi hardware, or not connected) is
//!   `Ok(None)`, never a failure. Several associated: the one carrying the
//!   default route, else the first by name.
//! * Linux: nl80211 over generic netlink, hand-rolled (no crate fits a
//!   static musl build this small): `CTRL_CMD_GETFAMILY("nl80211")`, then
//!   `NL80211_CMD_GET_INTERFACE` (dump: ifname, iftype, SSID) and
//!   `NL80211_CMD_GET_STATION` (the AP's `STA_INFO_SIGNAL`); the signal
//!   falls back to `/proc/net/wireless`. No nl80211 family (no cfg80211 in
//!   the kernel) is no Wi-Fi. Bounded: one socket per read, 500 ms receive
//!   timeout, at most 64 KiB per datagram and [`MAX_MESSAGES`] messages;
//!   parsing ([`messages`], [`attrs`]) is defensive and unit-tested.
//! * Windows: `WlanOpenHandle`/`WlanEnumInterfaces`/`WlanQueryInterface(
//!   wlan_intf_opcode_current_connection)` (see `win.rs`); the signal is the
//!   RSSI the WLAN service reports.

// Real time: the netlink receive timeout bounds a blocking socket read.
#![allow(clippy::disallowed_methods)]

/// At most this many netlink messages are read per request.
pub const MAX_MESSAGES: usize = 512;

/// One netlink message: type, flags, payload (after the 16-byte header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into netlink messages; a truncated or malformed tail is dropped.
pub fn messages(buf: &[u8]) -> Vec<NlMsg<'_>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= buf.len() && out.len() < MAX_MESSAGES {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        out.push(NlMsg {
            ty: u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap()),
            flags: u16::from_ne_bytes(buf[off + 6..off + 8].try_into().unwrap()),
            seq: u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap()),
            payload: &buf[off + 16..off + len],
        });
        off += (len + 3) & !3;
    }
    out
}

/// Splits attributes (`nlattr`: len u16, type u16, value padded to 4).
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 && out.len() < 1024 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff; // strip NESTED/BYTEORDER flags
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        let next = ((len + 3) & !3).min(buf.len());
        buf = &buf[next..];
    }
    out
}

/// A generic netlink request: header, genl header, attributes.
pub fn request(family: u16, flags: u16, seq: u32, cmd: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b.extend_from_slice(&[cmd, 1, 0, 0]);
    for (ty, v) in attrs {
        b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(v);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
    }
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&family.to_ne_bytes());
    b[6..8].copy_from_slice(&flags.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    b
}

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const GENL_ID_CTRL: u16 = 0x10;
pub const NL80211_ATTR_IFINDEX: u16 = 3;
pub const NL80211_ATTR_IFNAME: u16 = 4;
pub const NL80211_ATTR_IFTYPE: u16 = 5;
pub const NL80211_ATTR_STA_INFO: u16 = 21;
pub const NL80211_ATTR_SSID: u16 = 52;
pub const NL80211_STA_INFO_SIGNAL: u16 = 7;
pub const NL80211_IFTYPE_STATION: u32 = 2;

/// An associated station interface from a GET_INTERFACE reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assoc {
    pub ifindex: u32,
    pub ifname: String,
    pub ssid: String,
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// A GET_INTERFACE reply's payload (after the genl header) → an associated station.
pub fn parse_interface(attrs_buf: &[u8]) -> Option<Assoc> {
    let (mut idx, mut name, mut ty, mut ssid) = (None, None, None, None);
    for (t, v) in attrs(attrs_buf) {
        match t {
            NL80211_ATTR_IFINDEX => idx = u32_of(v),
            NL80211_ATTR_IFNAME => {
                name = Some(String::from_utf8_lossy(v.split(|&b| b == 0).next()?).into_owned())
            }
            NL80211_ATTR_IFTYPE => ty = u32_of(v),
            NL80211_ATTR_SSID => {
                ssid = Some(String::from_utf8_lossy(&v[..v.len().min(32)]).into_owned())
            }
            _ => {}
        }
    }
    if ty != Some(NL80211_IFTYPE_STATION) {
        return None;
    }
    Some(Assoc {
        ifindex: idx?,
        ifname: name?,
        ssid: ssid?,
    })
}

/// A GET_STATION reply's payload → the signal in dBm.
pub fn parse_station_signal(attrs_buf: &[u8]) -> Option<i16> {
    let (_, info) = attrs(attrs_buf)
        .into_iter()
        .find(|(t, _)| *t == NL80211_ATTR_STA_INFO)?;
    let (_, sig) = attrs(info)
        .into_iter()
        .find(|(t, _)| *t == NL80211_STA_INFO_SIGNAL)?;
    Some(*sig.first()? as i8 as i16)
}

/// `/proc/net/wireless` → the level (dBm) of `ifname`.
pub fn proc_wireless_level(text: &str, ifname: &str) -> Option<i16> {
    text.lines().skip(2).find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        let level = rest.split_whitespace().nth(2)?;
        let v: f64 = level.trim_end_matches('.').parse().ok()?;
        // Old drivers report an unsigned byte (256 - |dBm|).
        let v = if v > 0.0 { v - 256.0 } else { v };
        (-200.0..0.0).contains(&v).then_some(v as i16)
    })
}

/// Picks the association to report: the default route's, else the first by name.
pub fn choose(mut v: Vec<Assoc>, route_if: Option<&str>) -> Option<Assoc> {
    v.sort_by(|a, b| a.ifname.cmp(&b.ifname));
    match v.iter().position(|a| Some(a.ifname.as_str()) == route_if) {
        Some(i) => Some(v.swap_remove(i)),
        None => v.into_iter().next(),
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NL80211_CMD_GET_INTERFACE: u8 = 5;
    const NL80211_CMD_GET_STATION: u8 = 17;

    pub struct Genl {
        fd: OwnedFd,
        seq: u32,
        buf: Vec<u8>,
    }

    impl Genl {
        pub fn open() -> Result<Genl, String> {
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_GENERIC,
                )
            };
            if fd < 0 {
                return Err(format!(
                    "cannot open a generic netlink socket: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: fd is a fresh, valid descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 500_000,
            };
            // SAFETY: setsockopt with a correctly sized timeval.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            Ok(Genl {
                fd,
                seq: 1,
                buf: vec![0u8; 64 * 1024],
            })
        }

        /// Sends one request; returns the payloads of its replies (after the
        /// genl header), or the kernel's errno.
        pub fn call(
            &mut self,
            family: u16,
            dump: bool,
            cmd: u8,
            a: &[(u16, &[u8])],
        ) -> Result<Vec<Vec<u8>>, i32> {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
            let req = request(family, flags, seq, cmd, a);
            // SAFETY: sockaddr_nl zeroed = the kernel (pid 0); buffer lengths are exact.
            let sent = unsafe {
                let mut sa: libc::sockaddr_nl = std::mem::zeroed();
                sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
                libc::sendto(
                    self.fd.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&sa as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
            }
            let mut out = Vec::new();
            let mut seen = 0usize;
            loop {
                // SAFETY: recv into our own buffer, bounded by its length.
                let n = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        self.buf.as_mut_ptr().cast(),
                        self.buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
                }
                let msgs = messages(&self.buf[..n as usize]);
                if msgs.is_empty() {
                    return Err(libc::EPROTO);
                }
                for m in msgs {
                    seen += 1;
                    if m.seq != seq {
                        continue;
                    }
                    match m.ty {
                        NLMSG_DONE => return Ok(out),
                        NLMSG_ERROR => {
                            let code = m
                                .payload
                                .get(..4)
                                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                                .unwrap_or(-libc::EPROTO);
                            return if code == 0 { Ok(out) } else { Err(-code) };
                        }
                        _ => {
                            if m.payload.len() >= 4 {
                                out.push(m.payload[4..].to_vec());
                            }
                        }
                    }
                }
                if !dump || seen >= MAX_MESSAGES {
                    return Ok(out);
                }
            }
        }

        /// A generic netlink family's id (`name` NUL-terminated); `None`
        /// when the kernel has no such family (no nl80211: no cfg80211).
        pub fn family(&mut self, name: &[u8]) -> Result<Option<u16>, String> {
            match self.call(
                GENL_ID_CTRL,
                false,
                CTRL_CMD_GETFAMILY,
                &[(CTRL_ATTR_FAMILY_NAME, name)],
            ) {
                Ok(replies) => Ok(replies.iter().find_map(|r| {
                    attrs(r).into_iter().find_map(|(t, v)| {
                        (t == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
                            .then(|| u16::from_ne_bytes([v[0], v[1]]))
                    })
                })),
                Err(e) if e == libc::ENOENT => Ok(None),
                Err(e) => Err(format!(
                    "generic netlink family lookup failed: {}",
                    std::io::Error::from_raw_os_error(e)
                )),
            }
        }
    }

    /// A kernel without nl80211 (no cfg80211 loaded: no Wi-Fi hardware)
    /// is asked again only after this long, not every sample.
    const ABSENT_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

    /// Until when nl80211 is known to be absent.
    static NL80211_ABSENT_UNTIL: std::sync::Mutex<Option<std::time::Instant>> =
        std::sync::Mutex::new(None);

    pub fn read(route_if: Option<&str>) -> Result<Option<muster_proto::Wifi>, String> {
        let now = std::time::Instant::now();
        {
            let until = NL80211_ABSENT_UNTIL
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if until.is_some_and(|u| now < u) {
                return Ok(None);
            }
        }
        let mut g = Genl::open()?;
        let Some(fam) = g.family(b"nl80211\0")? else {
            *NL80211_ABSENT_UNTIL
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(now + ABSENT_RECHECK);
            return Ok(None);
        };
        let ifs = g
            .call(fam, true, NL80211_CMD_GET_INTERFACE, &[])
            .map_err(|e| {
                format!(
                    "nl80211 GET_INTERFACE failed: {}",
                    std::io::Error::from_raw_os_error(e)
                )
            })?;
        let assocs: Vec<Assoc> = ifs.iter().filter_map(|p| parse_interface(p)).collect();
        let Some(a) = choose(assocs, route_if) else {
            return Ok(None);
        };
        let idx = a.ifindex.to_ne_bytes();
        let signal = g
            .call(
                fam,
                true,
                NL80211_CMD_GET_STATION,
                &[(NL80211_ATTR_IFINDEX, &idx)],
            )
            .ok()
            .and_then(|r| r.iter().find_map(|p| parse_station_signal(p)))
            .or_else(|| {
                std::fs::read_to_string("/proc/net/wireless")
                    .ok()
                    .and_then(|t| proc_wireless_level(&t, &a.ifname))
            });
        Ok(Some(muster_proto::Wifi {
            interface: a.ifname,
            ssid: a.ssid,
            signal_dbm: signal,
        }))
    }
}

#[cfg(target_os = "linux")]
pub use linux::{Genl, read};

#[cfg(windows)]
pub fn read(route_if: Option<&str>) -> Result<Option<muster_proto::Wifi>, String> {
    super::win::wifi(route_if)
}

#[cfg(not(any(target_os = "linux", windows)))]
pub fn read(_route_if: Option<&str>) -> Result<Option<muster_proto::Wifi>, String> {
    Err("Wi-Fi is not read on this OS".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(ty: u16, inner: &[u8]) -> Vec<u8> {
        let mut v = ((4 + inner.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&(ty | 0x8000).to_ne_bytes());
        v.extend_from_slice(inner);
        v
    }

    #[test]
    fn an_interface_reply_round_trips() {
        let idx = 7u32.to_ne_bytes();
        let ty = NL80211_IFTYPE_STATION.to_ne_bytes();
        let msg = request(
            30,
            0,
            9,
            7,
            &[
                (NL80211_ATTR_IFINDEX, &idx),
                (NL80211_ATTR_IFNAME, b"wlan0\0"),
                (NL80211_ATTR_IFTYPE, &ty),
                (NL80211_ATTR_SSID, b"Metro-Fire"),
            ],
        );
        let m = messages(&msg);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].ty, m[0].seq), (30, 9));
        let a = parse_interface(&m[0].payload[4..]).unwrap();
        assert_eq!(
            a,
            Assoc {
                ifindex: 7,
                ifname: "wlan0".into(),
                ssid: "Metro-Fire".into()
            }
        );
        // Not associated (no SSID), or an access point: not reported.
        let ap = 3u32.to_ne_bytes();
        let msg = request(
            30,
            0,
            9,
            7,
            &[
                (NL80211_ATTR_IFINDEX, &idx),
                (NL80211_ATTR_IFNAME, b"wlan0\0"),
                (NL80211_ATTR_IFTYPE, &ty),
            ],
        );
        assert_eq!(parse_interface(&messages(&msg)[0].payload[4..]), None);
        let msg = request(
            30,
            0,
            9,
            7,
            &[
                (NL80211_ATTR_IFINDEX, &idx),
                (NL80211_ATTR_IFNAME, b"wlan0\0"),
                (NL80211_ATTR_IFTYPE, &ap),
                (NL80211_ATTR_SSID, b"x"),
            ],
        );
        assert_eq!(parse_interface(&messages(&msg)[0].payload[4..]), None);
    }

    #[test]
    fn the_station_signal_is_a_signed_byte_in_a_nested_attribute() {
        let mut sig = 4u16.to_ne_bytes().to_vec();
        sig.extend_from_slice(&0u16.to_ne_bytes()); // an empty attribute first
        sig.extend_from_slice(&5u16.to_ne_bytes());
        sig.extend_from_slice(&NL80211_STA_INFO_SIGNAL.to_ne_bytes());
        sig.extend_from_slice(&[(-67i8) as u8, 0, 0, 0]);
        let payload = nested(NL80211_ATTR_STA_INFO, &sig);
        assert_eq!(parse_station_signal(&payload), Some(-67));
        assert_eq!(parse_station_signal(&[]), None);
    }

    #[test]
    fn malformed_input_is_dropped_not_trusted() {
        let msg = request(30, 0, 1, 1, &[(NL80211_ATTR_SSID, b"abc")]);
        for cut in 0..msg.len() {
            let m = messages(&msg[..cut]);
            assert!(m.is_empty(), "a truncated message is dropped ({cut})");
        }
        // A length past the end, a length below the header.
        let mut bad = msg.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(messages(&bad).is_empty());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(messages(&bad).is_empty());
        // Attributes: a zero or oversized length stops the walk.
        assert!(attrs(&[0, 0, 1, 0, 9, 9]).is_empty());
        assert!(attrs(&[200, 0, 1, 0, 9, 9]).is_empty());
        for n in 0..64usize {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let _ = messages(&junk);
            let _ = attrs(&junk);
            let _ = parse_interface(&junk);
            let _ = parse_station_signal(&junk);
        }
    }

    #[test]
    fn proc_wireless_levels() {
        let t = "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE
 face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22
 wlan0: 0000   54.  -56.  -256        0      0      0      0    120        0
 wlan1: 0000   54.  190.  0        0      0      0      0    120        0
";
        assert_eq!(proc_wireless_level(t, "wlan0"), Some(-56));
        assert_eq!(proc_wireless_level(t, "wlan1"), Some(-66));
        assert_eq!(proc_wireless_level(t, "wlan2"), None);
    }

    #[test]
    fn the_route_carrying_interface_is_preferred() {
        let a = |n: &str| Assoc {
            ifindex: 1,
            ifname: n.into(),
            ssid: n.into(),
        };
        assert_eq!(
            choose(vec![a("wlan1"), a("wlan0")], Some("wlan1"))
                .unwrap()
                .ifname,
            "wlan1"
        );
        assert_eq!(
            choose(vec![a("wlan1"), a("wlan0")], Some("eth0"))
                .unwrap()
                .ifname,
            "wlan0"
        );
        assert_eq!(choose(vec![], None), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_real_kernel_speaks_this_generic_netlink() {
        // The controller itself is always there: a request, its reply, and
        // the kernel's ENOENT for a family that does not exist.
        let mut g = Genl::open().unwrap();
        assert_eq!(g.family(b"nlctrl\0"), Ok(Some(GENL_ID_CTRL)));
        assert_eq!(g.family(b"no-such-family\0"), Ok(None));
        // A dump (every family) ends with NLMSG_DONE.
        let all = g.call(GENL_ID_CTRL, true, 3, &[]).unwrap();
        assert!(!all.is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_real_kernel_answers() {
        // Whatever the machine has: no Wi-Fi is Ok(None), never an error.
        let r = read(None);
        assert!(r.is_ok(), "{r:?}");
    }
}
