//! Realistic example messages: the golden vectors, the benchmarks, the
//! fleet simulator and tests build on them. Deterministic: no clock, no RNG.

use std::net::{IpAddr, Ipv4Addr};

use crate::ids::{BootId, UnitId};
use crate::message::*;
use crate::sign::{KeyId, Signature, SigningKey, sign_ack, sign_hello};

pub fn unit() -> UnitId {
    UnitId::new("metro-fire", "E12").expect("valid fixture identity")
}

pub const BOOT: BootId = BootId(0x5eed_0000_c0ff_ee01);
pub const AT_MS: u64 = 1_795_000_000_000;

/// A typical MCT: 8 logical cores, two disks, three interfaces (ethernet,
/// Wi-Fi, cellular modem), the CAD client and its updater.
pub fn host_sample() -> HostSample {
    HostSample {
        interval_ms: 5_000,
        cpu: Some(Cpu {
            total_bp: 2_315,
            per_core_pct: vec![31, 12, 40, 8, 22, 19, 35, 18],
        }),
        load_x100: Some([84, 71, 65]),
        memory: Some(Memory {
            total_kib: 16_384_000,
            used_kib: 9_120_512,
            swap_total_kib: 2_097_148,
            swap_used_kib: 10_240,
        }),
        disks: vec![
            Disk {
                mount: "/".into(),
                total_kib: 250_000_000,
                used_kib: 101_234_567,
                read_bps: 12_288,
                write_bps: 40_960,
            },
            Disk {
                mount: "/var".into(),
                total_kib: 50_000_000,
                used_kib: 21_000_000,
                read_bps: 0,
                write_bps: 8_192,
            },
        ],
        nets: vec![
            NetIf {
                name: "eth0".into(),
                up: false,
                ..NetIf::default()
            },
            NetIf {
                name: "wlan0".into(),
                up: true,
                rx_bps: 1_532,
                tx_bps: 804,
                rx_errors: 0,
                tx_errors: 0,
            },
            NetIf {
                name: "wwan0".into(),
                up: true,
                rx_bps: 20_480,
                tx_bps: 6_144,
                rx_errors: 2,
                tx_errors: 0,
            },
        ],
        uptime_s: 184_320,
        processes: vec![
            Process {
                name: "cadclient".into(),
                running: true,
                pid: Some(4_312),
                cpu_bp: 850,
                rss_kib: 412_000,
                restarts: 0,
            },
            Process {
                name: "cadupdater".into(),
                running: false,
                pid: None,
                cpu_bp: 0,
                rss_kib: 0,
                restarts: 1,
            },
        ],
        failures: vec![],
        network: Some(Box::new(net_context())),
    }
}

/// On the in-car cellular router's modem, station Wi-Fi in range, the
/// agency VPN up, one roam since the previous sample.
pub fn net_context() -> NetContext {
    NetContext {
        route: Some(DefaultRoute {
            interface: "wwan0".into(),
            kind: LinkKind::Cellular,
        }),
        wifi: Some(Wifi {
            interface: "wlan0".into(),
            ssid: "STATION-12".into(),
            signal_dbm: Some(-71),
        }),
        cellular: Some(Cellular {
            interface: "wwan0".into(),
            technology: "lte".into(),
            operator: "FirstNet".into(),
            rssi_dbm: Some(-83),
            rsrp_dbm: Some(-109),
            rsrq_db_x10: Some(-125),
            sinr_db_x10: Some(32),
        }),
        vpns: vec![Vpn {
            name: "tun0".into(),
            up: true,
        }],
        route_changes: 1,
    }
}

pub fn http_probe() -> ProbeResult {
    ProbeResult {
        name: "cad-api".into(),
        kind: ProbeKind::Http,
        target: "https://cad.example.org/health".into(),
        outcome: Outcome::Ok,
        phases: Phases {
            dns_us: Some(1_200),
            connect_us: Some(38_000),
            tls_us: Some(61_000),
            ttfb_us: Some(45_500),
            total_us: 146_900,
        },
        status: Some(200),
        cert_days_left: Some(212),
        addrs: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))],
        icmp: None,
        detail: String::new(),
    }
}

pub fn icmp_probe_failed() -> ProbeResult {
    ProbeResult {
        name: "cad-gw".into(),
        kind: ProbeKind::Icmp,
        target: "192.0.2.1".into(),
        outcome: Outcome::Fail(ErrorClass::Unreachable),
        phases: Phases {
            total_us: 3_000_000,
            ..Phases::default()
        },
        status: None,
        cert_days_left: None,
        addrs: vec![],
        icmp: Some(IcmpStats {
            sent: 4,
            lost: 4,
            min_us: None,
            avg_us: None,
            max_us: None,
        }),
        detail: "all 4 echo requests lost".into(),
    }
}

pub fn status() -> AgentStatus {
    AgentStatus {
        version: "0.1.0".into(),
        interval_ms: 5_000,
        backlog_records: 1_440,
        backlog_bytes: 360_000,
        oldest_unsent_ms: Some(7_200_000),
        dropped: DropCounts {
            full: 12,
            expired: 0,
            thinned: 0,
            corrupt: 1,
            resets: 0,
        },
        reconnects: 3,
        clock_offset_ms: Some(-420),
        acks_refused: 5,
        observations_dropped: 2,
    }
}

pub fn record(seq: u64, payload: Payload) -> Record {
    Record {
        boot: BOOT,
        seq,
        at_ms: AT_MS + seq * 5_000,
        payload,
    }
}

pub fn host_message() -> Message {
    Message {
        unit: unit(),
        body: Body::Record(record(1, Payload::Host(host_sample()))),
    }
}

/// A replay batch of `n` host samples, seqs 1..=n.
pub fn batch_message(n: u64) -> Message {
    Message {
        unit: unit(),
        body: Body::Batch(
            (1..=n)
                .map(|seq| record(seq, Payload::Host(host_sample())))
                .collect(),
        ),
    }
}

/// The fixtures' collector key (a fixed seed: signatures are deterministic).
pub fn signing_key() -> SigningKey {
    SigningKey::from_seed(&[0x4d; 32])
}

/// The key the fixtures' collector announces next.
pub fn next_signing_key() -> SigningKey {
    SigningKey::from_seed(&[0x4e; 32])
}

/// An ack signed by [`signing_key`] for [`unit`].
pub fn ack_message() -> Message {
    let ack = Ack {
        boot: BOOT,
        upto: 1_000,
        ranges: vec![SeqRange {
            first: 1_440,
            last: 1_441,
        }],
        collector_ms: AT_MS + 250,
        key_id: KeyId::NONE,
        sig: Signature::NONE,
    };
    Message {
        unit: unit(),
        body: Body::Ack(sign_ack(&signing_key(), &unit(), ack)),
    }
}

/// A hello signed by [`signing_key`], announcing [`next_signing_key`].
pub fn hello() -> Hello {
    sign_hello(
        &signing_key(),
        AT_MS - 60_000,
        3,
        vec![next_signing_key().public_key()],
    )
}

/// A birth (`Connected`) or a will (`Lost`).
pub fn presence_message(online: bool) -> Message {
    presence_with(
        online,
        if online {
            PresenceReason::Connected
        } else {
            PresenceReason::Lost
        },
    )
}

/// A presence of connection 2 of [`BOOT`] with `reason`.
pub fn presence(online: bool, reason: PresenceReason) -> Presence {
    Presence {
        online,
        boot: BOOT,
        connection: 2,
        at_ms: AT_MS,
        reason,
    }
}

pub fn presence_with(online: bool, reason: PresenceReason) -> Message {
    Message {
        unit: unit(),
        body: Body::Presence(presence(online, reason)),
    }
}

/// One of each message kind, named: the golden vectors.
pub fn all_named() -> Vec<(&'static str, Message)> {
    let rec = |seq, p| Message {
        unit: unit(),
        body: Body::Record(record(seq, p)),
    };
    vec![
        ("host", host_message()),
        ("probe_http", rec(2, Payload::Probe(http_probe()))),
        (
            "probe_icmp_failed",
            rec(3, Payload::Probe(icmp_probe_failed())),
        ),
        ("status", rec(4, Payload::Status(status()))),
        ("batch3", batch_message(3)),
        ("ack", ack_message()),
        ("presence_online", presence_message(true)),
        ("presence_offline", presence_message(false)),
    ]
}

/// Messages schema v1 cannot say (new in v2), named: more golden vectors
/// of the current version.
pub fn v2_named() -> Vec<(&'static str, Message)> {
    let announce = |seq, reason| Message {
        unit: unit(),
        body: Body::Record(record(seq, Payload::Presence(presence(false, reason)))),
    };
    vec![
        ("announce_shutdown", announce(5, PresenceReason::Shutdown)),
        (
            "announce_restart",
            announce(
                5,
                PresenceReason::Stop {
                    back_within_ms: Some(120_000),
                },
            ),
        ),
        (
            "presence_sleep",
            presence_with(false, PresenceReason::Sleep),
        ),
        (
            "presence_resumed",
            presence_with(
                true,
                PresenceReason::Resumed {
                    slept_ms: 3_600_000,
                },
            ),
        ),
    ]
}
