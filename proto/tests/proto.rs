//! The wire contract's tests: round trips for every message kind, golden
//! vectors, hostile input, and the decode allocation bound.

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::PathBuf;

use muster_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

// ------------------------------------------------------------ strategies

fn ident() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,24}"
}

fn unit_id() -> impl Strategy<Value = UnitId> {
    (ident(), ident()).prop_map(|(agency, unit)| UnitId { agency, unit })
}

fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn host_sample() -> impl Strategy<Value = HostSample> {
    let cpu = (0u16..=10_000, vec(0u8..=100, 0..64)).prop_map(|(total_bp, per_core_pct)| Cpu {
        total_bp,
        per_core_pct,
    });
    let memory = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(total_kib, used_kib, swap_total_kib, swap_used_kib)| Memory {
            total_kib,
            used_kib,
            swap_total_kib,
            swap_used_kib,
        },
    );
    let disk = (
        text(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(mount, total_kib, used_kib, read_bps, write_bps)| Disk {
            mount,
            total_kib,
            used_kib,
            read_bps,
            write_bps,
        });
    let net = (
        text(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(name, up, rx_bps, tx_bps, rx_errors, tx_errors)| NetIf {
            name,
            up,
            rx_bps,
            tx_bps,
            rx_errors,
            tx_errors,
        });
    let process = (
        text(),
        any::<bool>(),
        any::<Option<u32>>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(name, running, pid, cpu_bp, rss_kib, restarts)| Process {
            name,
            running,
            pid,
            cpu_bp,
            rss_kib,
            restarts,
        });
    let collector = prop_oneof![
        Just(SamplerFamily::Cpu),
        Just(SamplerFamily::Load),
        Just(SamplerFamily::Memory),
        Just(SamplerFamily::Disks),
        Just(SamplerFamily::Networks),
        Just(SamplerFamily::Processes),
        Just(SamplerFamily::Uptime),
        Just(SamplerFamily::Route),
        Just(SamplerFamily::Wifi),
        Just(SamplerFamily::Cellular),
        Just(SamplerFamily::Vpn),
    ];
    let failure =
        (collector, text()).prop_map(|(collector, reason)| SamplerFailure { collector, reason });
    (
        any::<u32>(),
        proptest::option::of(cpu),
        any::<Option<[u32; 3]>>(),
        proptest::option::of(memory),
        vec(disk, 0..6),
        vec(net, 0..6),
        any::<u64>(),
        vec(process, 0..6),
        (
            vec(failure, 0..3),
            proptest::option::of(net_context().prop_map(Box::new)),
        ),
    )
        .prop_map(
            |(
                interval_ms,
                cpu,
                load_x100,
                memory,
                disks,
                nets,
                uptime_s,
                processes,
                (failures, network),
            )| {
                HostSample {
                    interval_ms,
                    cpu,
                    load_x100,
                    memory,
                    disks,
                    nets,
                    uptime_s,
                    processes,
                    failures,
                    network,
                }
            },
        )
}

fn net_context() -> impl Strategy<Value = NetContext> {
    let kind = prop_oneof![
        Just(LinkKind::Other),
        Just(LinkKind::Ethernet),
        Just(LinkKind::Wifi),
        Just(LinkKind::Cellular),
        Just(LinkKind::Vpn),
    ];
    let route = (text(), kind).prop_map(|(interface, kind)| DefaultRoute { interface, kind });
    let wifi =
        (text(), text(), any::<Option<i16>>()).prop_map(|(interface, ssid, signal_dbm)| Wifi {
            interface,
            ssid,
            signal_dbm,
        });
    let cellular = (
        (text(), text(), text()),
        any::<(Option<i16>, Option<i16>, Option<i16>, Option<i16>)>(),
    )
        .prop_map(
            |(
                (interface, technology, operator),
                (rssi_dbm, rsrp_dbm, rsrq_db_x10, sinr_db_x10),
            )| {
                Cellular {
                    interface,
                    technology,
                    operator,
                    rssi_dbm,
                    rsrp_dbm,
                    rsrq_db_x10,
                    sinr_db_x10,
                }
            },
        );
    let vpn = (text(), any::<bool>()).prop_map(|(name, up)| Vpn { name, up });
    (
        proptest::option::of(route),
        proptest::option::of(wifi),
        proptest::option::of(cellular),
        vec(vpn, 0..4),
        any::<u32>(),
    )
        .prop_map(|(route, wifi, cellular, vpns, route_changes)| NetContext {
            route,
            wifi,
            cellular,
            vpns,
            route_changes,
        })
}

fn error_class() -> impl Strategy<Value = ErrorClass> {
    prop_oneof![
        Just(ErrorClass::Timeout),
        Just(ErrorClass::Refused),
        Just(ErrorClass::Dns),
        Just(ErrorClass::Tls),
        Just(ErrorClass::BadStatus),
        Just(ErrorClass::BodyMismatch),
        Just(ErrorClass::Unreachable),
        Just(ErrorClass::Reset),
        Just(ErrorClass::Permission),
        Just(ErrorClass::Protocol),
        Just(ErrorClass::Reported),
        Just(ErrorClass::Extract),
    ]
}

fn probe_result() -> impl Strategy<Value = ProbeResult> {
    let kind = prop_oneof![
        Just(ProbeKind::Http),
        Just(ProbeKind::Tcp),
        Just(ProbeKind::Dns),
        Just(ProbeKind::Icmp),
        Just(ProbeKind::Reported),
        Just(ProbeKind::Transaction),
    ];
    let outcome = prop_oneof![Just(Outcome::Ok), error_class().prop_map(Outcome::Fail)];
    let phases = (
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        any::<u32>(),
    )
        .prop_map(|(dns_us, connect_us, tls_us, ttfb_us, total_us)| Phases {
            dns_us,
            connect_us,
            tls_us,
            ttfb_us,
            total_us,
        });
    let icmp = (
        any::<u16>(),
        any::<u16>(),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
    )
        .prop_map(|(sent, lost, min_us, avg_us, max_us)| IcmpStats {
            sent,
            lost,
            min_us,
            avg_us,
            max_us,
        });
    (
        (text(), kind, text(), outcome, phases),
        (
            any::<Option<u16>>(),
            any::<Option<i32>>(),
            vec(any::<IpAddr>(), 0..4),
            proptest::option::of(icmp),
            text(),
        ),
    )
        .prop_map(
            |(
                (name, kind, target, outcome, phases),
                (status, cert_days_left, addrs, icmp, detail),
            )| {
                ProbeResult {
                    name,
                    kind,
                    target,
                    outcome,
                    phases,
                    status,
                    cert_days_left,
                    addrs,
                    icmp,
                    detail,
                }
            },
        )
}

fn agent_status() -> impl Strategy<Value = AgentStatus> {
    let dropped = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(full, expired, thinned, corrupt, resets)| DropCounts {
            full,
            expired,
            thinned,
            corrupt,
            resets,
        });
    (
        text(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<Option<u64>>(),
        dropped,
        any::<u32>(),
        any::<Option<i64>>(),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                version,
                interval_ms,
                backlog_records,
                backlog_bytes,
                oldest_unsent_ms,
                dropped,
                reconnects,
                clock_offset_ms,
                (acks_refused, observations_dropped),
            )| AgentStatus {
                version,
                interval_ms,
                backlog_records,
                backlog_bytes,
                oldest_unsent_ms,
                dropped,
                reconnects,
                clock_offset_ms,
                acks_refused,
                observations_dropped,
            },
        )
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        host_sample().prop_map(Payload::Host),
        probe_result().prop_map(Payload::Probe),
        agent_status().prop_map(Payload::Status),
        announcement().prop_map(Payload::Presence),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (any::<u64>(), any::<u64>(), any::<u64>(), payload()).prop_map(|(boot, seq, at_ms, payload)| {
        let payload = match payload {
            // An announcement is of the record's own boot.
            Payload::Presence(p) => Payload::Presence(Presence {
                boot: BootId(boot),
                ..p
            }),
            other => other,
        };
        Record {
            boot: BootId(boot),
            seq,
            at_ms,
            payload,
        }
    })
}

/// Every reason, including codes this build does not know.
fn reason() -> impl Strategy<Value = PresenceReason> {
    prop_oneof![
        Just(PresenceReason::Connected),
        any::<u64>().prop_map(|slept_ms| PresenceReason::Resumed { slept_ms }),
        Just(PresenceReason::Lost),
        Just(PresenceReason::Shutdown),
        any::<Option<u64>>().prop_map(|back_within_ms| PresenceReason::Stop { back_within_ms }),
        Just(PresenceReason::Sleep),
        (6u32..).prop_map(|code| PresenceReason::Unknown { code }),
    ]
}

/// An announcement record's presence: offline, announced or unknown.
fn announcement() -> impl Strategy<Value = Presence> {
    presence().prop_filter("an announcement is offline", |p| {
        !p.online && !matches!(p.reason, PresenceReason::Lost)
    })
}

fn ack() -> impl Strategy<Value = Ack> {
    let range = (any::<u64>(), any::<u64>()).prop_map(|(first, last)| SeqRange { first, last });
    (
        any::<u64>(),
        any::<u64>(),
        vec(range, 0..8),
        any::<u64>(),
        any::<[u8; 8]>(),
        any::<([u8; 32], [u8; 32])>(),
    )
        .prop_map(|(boot, upto, ranges, collector_ms, key_id, (lo, hi))| Ack {
            boot: BootId(boot),
            upto,
            ranges,
            collector_ms,
            key_id: KeyId(key_id),
            sig: Signature(lo, hi),
        })
}

/// A consistent presence: the online flag fits the reason.
fn presence() -> impl Strategy<Value = Presence> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        reason(),
        any::<bool>(),
    )
        .prop_map(
            |(boot, connection, at_ms, reason, unknown_online)| Presence {
                online: match reason {
                    PresenceReason::Unknown { .. } => unknown_online,
                    r => r.is_online(),
                },
                boot: BootId(boot),
                connection,
                at_ms,
                reason,
            },
        )
}

fn message(body: impl Strategy<Value = Body>) -> impl Strategy<Value = Message> {
    (unit_id(), body).prop_map(|(unit, body)| Message { unit, body })
}

fn round_trip(msg: &Message) {
    let bytes = encode(msg).expect("encode");
    assert_eq!(bytes[0], SCHEMA_VERSION);
    assert_eq!(encoded_len(msg).unwrap(), bytes.len());
    let back = decode(&bytes).expect("decode");
    assert_eq!(back.version, SCHEMA_VERSION);
    assert_eq!(&back.message, msg);
}

proptest! {
    #[test]
    fn host_sample_round_trips(m in message(host_sample().prop_map(|h| Body::Record(Record { boot: BootId(7), seq: 1, at_ms: 2, payload: Payload::Host(h) })))) {
        round_trip(&m);
    }

    #[test]
    fn probe_result_round_trips(m in message(probe_result().prop_map(|p| Body::Record(Record { boot: BootId(7), seq: 1, at_ms: 2, payload: Payload::Probe(p) })))) {
        round_trip(&m);
    }

    #[test]
    fn agent_status_round_trips(m in message(agent_status().prop_map(|s| Body::Record(Record { boot: BootId(7), seq: 1, at_ms: 2, payload: Payload::Status(s) })))) {
        round_trip(&m);
    }

    #[test]
    fn record_round_trips(m in message(record().prop_map(Body::Record))) {
        round_trip(&m);
    }

    #[test]
    fn batch_round_trips(m in message(vec(record(), 0..20).prop_map(Body::Batch))) {
        round_trip(&m);
    }

    #[test]
    fn ack_round_trips(m in message(ack().prop_map(Body::Ack))) {
        round_trip(&m);
    }

    #[test]
    fn presence_round_trips(m in message(presence().prop_map(Body::Presence))) {
        round_trip(&m);
    }

    /// Arbitrary bytes never panic, and whatever decodes re-encodes to bytes
    /// that decode the same (varints may be non-minimal on input).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(d) = decode(&bytes) {
            let again = encode_version(&d.message, d.version).unwrap();
            prop_assert!(again.len() <= bytes.len());
            prop_assert_eq!(decode(&again).unwrap(), d);
        }
    }

    /// Every strict prefix of a valid payload is refused, never mis-decoded.
    #[test]
    fn truncation_is_an_error(m in message(record().prop_map(Body::Record)), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&m).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..cut]).is_err());
    }
}

// --------------------------------------------------------- golden vectors

fn golden_dir(version: u8) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("v{version}"))
}

/// The wire format of every message kind is pinned: a change to a field, its
/// order or its type fails here. `proto/tests/golden/README.md` says how to
/// change it on purpose. The collector hello is pinned as `hello.bin`.
#[test]
fn golden_vectors_match() {
    let dir = golden_dir(SCHEMA_VERSION);
    let bless = std::env::var_os("MUSTER_BLESS_GOLDEN").is_some();
    if bless {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let current = || {
        fixtures::all_named()
            .into_iter()
            .chain(fixtures::v2_named())
    };
    let mut vectors: Vec<(&str, Vec<u8>)> = current()
        .collect::<Vec<_>>()
        .iter()
        .map(|(name, msg)| (*name, encode(msg).unwrap()))
        .collect();
    vectors.push((HELLO_VECTOR, encode_hello(&fixtures::hello()).unwrap()));
    for (name, bytes) in vectors {
        let path = dir.join(format!("{name}.bin"));
        if bless {
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let want = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; see tests/golden/README.md", path.display()));
        assert_eq!(
            bytes, want,
            "the encoding of {name} changed: see tests/golden/README.md"
        );
    }
    for (name, msg) in current() {
        let want = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        assert_eq!(
            decode(&want).unwrap().message,
            msg,
            "{name} decodes differently"
        );
    }
    let want = std::fs::read(dir.join(format!("{HELLO_VECTOR}.bin"))).unwrap();
    assert_eq!(decode_hello(&want).unwrap(), fixtures::hello());
}

/// The collector hello's vector: not a `Message`, decoded by `decode_hello`.
const HELLO_VECTOR: &str = "hello";

/// Every accepted version's vectors still decode (N and N-1 during an upgrade).
#[test]
fn every_accepted_version_decodes_its_vectors() {
    for version in ACCEPTED_VERSIONS {
        let dir = golden_dir(version);
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            if path.file_stem().is_some_and(|s| s == HELLO_VECTOR) {
                decode_hello(&bytes).unwrap();
                continue;
            }
            let d = decode(&bytes).unwrap();
            assert_eq!(d.version, version);
            seen += 1;
        }
        assert!(
            seen >= fixtures::all_named().len(),
            "v{version}: only {seen} vectors"
        );
    }
}

/// The fixtures as a v1 peer sees them: no signature, no `acks_refused`
/// or `observations_dropped`, no network context, presence reasons only
/// `Connected` and `Lost`.
fn as_v1(mut msg: Message) -> Message {
    let unsign = |r: &mut Record| match &mut r.payload {
        Payload::Status(s) => {
            s.acks_refused = 0;
            s.observations_dropped = 0;
        }
        Payload::Host(h) => h.network = None,
        _ => {}
    };
    match &mut msg.body {
        Body::Ack(a) => {
            a.key_id = KeyId::NONE;
            a.sig = Signature::NONE;
        }
        Body::Record(r) => unsign(r),
        Body::Batch(rs) => rs.iter_mut().for_each(unsign),
        Body::Presence(p) => {
            p.reason = if p.online {
                PresenceReason::Connected
            } else {
                PresenceReason::Lost
            }
        }
    }
    msg
}

/// v1 stays exact both ways: the v1 vectors decode to the fixtures less the
/// v2 fields, and `encode_version(.., 1)` (how a collector answers a v1
/// unit) writes the v1 vectors' very bytes. A v1 record from an upgraded
/// agent's buffer decodes, and replays spliced into a v2 message.
#[test]
fn v1_is_read_and_written_exactly() {
    let dir = golden_dir(1);
    for (name, msg) in fixtures::all_named() {
        let want = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let d = decode(&want).unwrap();
        assert_eq!(d.version, 1, "{name}");
        assert_eq!(d.message, as_v1(msg.clone()), "{name}");
        assert_eq!(
            encode_version(&msg, 1).unwrap(),
            want,
            "{name}: v1 encoding changed"
        );
    }
    // A v1 ack is unsigned: it never verifies.
    let Body::Ack(a) = decode(&std::fs::read(dir.join("ack.bin")).unwrap())
        .unwrap()
        .message
        .body
    else {
        panic!("ack.bin is an ack");
    };
    let mut trusted = TrustedKeys::new();
    trusted
        .insert(fixtures::signing_key().public_key())
        .unwrap();
    assert_eq!(
        sign::verify_ack(&trusted, &fixtures::unit(), &a),
        Err(VerifyError::Unsigned)
    );
    // A v1 status record in the buffer: decode_record and splicing read it.
    let status = fixtures::record(4, Payload::Status(fixtures::status()));
    let v1_msg = encode_version(
        &Message {
            unit: fixtures::unit(),
            body: Body::Record(status.clone()),
        },
        1,
    )
    .unwrap();
    // [version][unit][variant 0][record]: the stored record is what follows.
    let unit_len = encoded_len(&Message {
        unit: fixtures::unit(),
        body: Body::Batch(vec![]),
    })
    .unwrap()
        - 1 // version
        - 2; // variant index and zero count
    let mut stored = vec![1u8];
    stored.extend_from_slice(&v1_msg[1 + unit_len + 1..]);
    let back = decode_record(&stored).unwrap();
    let mut want = status.clone();
    if let Payload::Status(s) = &mut want.payload {
        s.acks_refused = 0;
        s.observations_dropped = 0;
    }
    assert_eq!(back, want);
    let spliced = message_from_encoded(&fixtures::unit(), &[&stored], true).unwrap();
    let d = decode(&spliced).unwrap();
    assert_eq!(d.version, SCHEMA_VERSION);
    assert_eq!(d.message.body, Body::Record(want));
}

#[test]
fn hello_round_trips_and_is_bounded() {
    let h = fixtures::hello();
    let bytes = encode_hello(&h).unwrap();
    assert_eq!(bytes[0], SCHEMA_VERSION);
    assert_eq!(decode_hello(&bytes).unwrap(), h);
    // Too many announced keys: refused both ways.
    let mut big = h.clone();
    big.next_keys = vec![fixtures::next_signing_key().public_key(); MAX_HELLO_KEYS + 1];
    assert!(matches!(
        encode_hello(&big),
        Err(EncodeError::TooManyKeys(_))
    ));
    // Hand-build the oversized list: same bytes with a longer key list.
    let full = Hello {
        next_keys: vec![fixtures::next_signing_key().public_key(); MAX_HELLO_KEYS],
        ..h.clone()
    };
    let mut b = encode_hello(&full).unwrap();
    let key_bytes = fixtures::next_signing_key().public_key().0;
    // The list length is the varint after started_ms and counter; patch it
    // to one more and append one more key, then the id and signature.
    let prefix_len = 1 + varint_len(h.started_ms) + varint_len(h.counter);
    assert_eq!(b[prefix_len] as usize, MAX_HELLO_KEYS);
    b[prefix_len] += 1;
    let at = prefix_len + 1 + MAX_HELLO_KEYS * 32;
    b.splice(at..at, key_bytes);
    assert_eq!(
        decode_hello(&b),
        Err(DecodeError::TooManyKeys(MAX_HELLO_KEYS + 1))
    );
    // Truncations, trailing bytes, a v1 hello and a message on the hello
    // topic are refused, never mis-decoded.
    for cut in 0..bytes.len() {
        assert!(decode_hello(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(decode_hello(&trailing), Err(DecodeError::TrailingBytes(1)));
    let mut v1 = bytes.clone();
    v1[0] = 1;
    assert_eq!(
        decode_hello(&v1),
        Err(DecodeError::UnknownVersion { got: 1 })
    );
    assert!(decode_hello(&encode(&fixtures::ack_message()).unwrap()).is_err());
}

fn varint_len(v: u64) -> usize {
    // bincode's varint: < 251 one byte, else a tag byte and 2, 4 or 8 bytes.
    match v {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

// ------------------------------------------------------------- signatures

/// What a signature binds: any change to the unit, boot, upto, ranges or
/// collector time, another key, an unknown key id or a damaged signature is
/// refused.
#[test]
fn ack_signatures_bind_unit_boot_and_seqs() {
    let key = fixtures::signing_key();
    let other = fixtures::next_signing_key();
    let unit = fixtures::unit();
    let Body::Ack(good) = fixtures::ack_message().body else {
        unreachable!()
    };
    let mut trusted = TrustedKeys::new();
    trusted.insert(key.public_key()).unwrap();
    assert_eq!(sign::verify_ack(&trusted, &unit, &good), Ok(key.key_id()));

    let other_unit = UnitId::new("metro-fire", "E13").unwrap();
    type Case = (&'static str, UnitId, Ack, fn(KeyId) -> VerifyError);
    let bad = |id| VerifyError::BadSignature(id);
    let with = |f: &dyn Fn(&mut Ack)| {
        let mut a = good.clone();
        f(&mut a);
        a
    };
    let cases: Vec<Case> = vec![
        ("another unit", other_unit, good.clone(), bad),
        (
            "another boot",
            unit.clone(),
            with(&|a| a.boot = BootId(a.boot.0 ^ 1)),
            bad,
        ),
        (
            "upto raised",
            unit.clone(),
            with(&|a| a.upto = 1 << 62),
            bad,
        ),
        (
            "range widened",
            unit.clone(),
            with(&|a| a.ranges[0].last += 1),
            bad,
        ),
        (
            "range added",
            unit.clone(),
            with(&|a| {
                a.ranges.push(SeqRange {
                    first: 5_000,
                    last: 6_000,
                })
            }),
            bad,
        ),
        (
            "ranges dropped",
            unit.clone(),
            with(&|a| a.ranges.clear()),
            bad,
        ),
        (
            "collector_ms",
            unit.clone(),
            with(&|a| a.collector_ms += 1),
            bad,
        ),
        (
            "signature flipped",
            unit.clone(),
            with(&|a| a.sig.1[5] ^= 1),
            bad,
        ),
        (
            "truncated signature (second half zero)",
            unit.clone(),
            with(&|a| a.sig.1 = [0; 32]),
            bad,
        ),
        (
            "unsigned",
            unit.clone(),
            with(&|a| {
                a.key_id = KeyId::NONE;
                a.sig = Signature::NONE;
            }),
            |_| VerifyError::Unsigned,
        ),
        (
            "unknown key id",
            unit.clone(),
            with(&|a| a.key_id = KeyId([1; 8])),
            |id| VerifyError::UnknownKey(id),
        ),
        (
            "signed by an untrusted key",
            unit.clone(),
            sign::sign_ack(&other, &unit, good.clone()),
            |id| VerifyError::UnknownKey(id),
        ),
        (
            "untrusted key's signature under the trusted key's id",
            unit.clone(),
            {
                let mut a = sign::sign_ack(&other, &unit, good.clone());
                a.key_id = key.key_id();
                a
            },
            bad,
        ),
    ];
    for (name, u, ack, want) in cases {
        let err = sign::verify_ack(&trusted, &u, &ack).unwrap_err();
        assert_eq!(err, want(ack.key_id), "{name}");
    }
    // Trusting the other key makes its signature good, and only for its unit.
    trusted.insert(other.public_key()).unwrap();
    let a = sign::sign_ack(&other, &unit, good.clone());
    assert_eq!(sign::verify_ack(&trusted, &unit, &a), Ok(other.key_id()));
    assert!(sign::verify_ack(&trusted, &UnitId::new("x", "y").unwrap(), &a).is_err());
}

#[test]
fn hello_signatures_bind_their_fields() {
    let key = fixtures::signing_key();
    let good = fixtures::hello();
    let mut trusted = TrustedKeys::new();
    trusted.insert(key.public_key()).unwrap();
    assert_eq!(sign::verify_hello(&trusted, &good), Ok(key.key_id()));
    let with = |f: &dyn Fn(&mut Hello)| {
        let mut h = good.clone();
        f(&mut h);
        h
    };
    let cases: Vec<(&str, Hello)> = vec![
        ("started_ms", with(&|h| h.started_ms += 1)),
        ("counter", with(&|h| h.counter += 1)),
        (
            "next key swapped",
            with(&|h| h.next_keys[0] = SigningKey::from_seed(&[1; 32]).public_key()),
        ),
        (
            "next key added",
            with(&|h| {
                h.next_keys
                    .push(SigningKey::from_seed(&[1; 32]).public_key())
            }),
        ),
        ("signature", with(&|h| h.sig.0[0] ^= 1)),
        (
            "unknown key",
            sign::sign_hello(&fixtures::next_signing_key(), 1, 1, vec![]),
        ),
    ];
    for (name, h) in cases {
        assert!(sign::verify_hello(&trusted, &h).is_err(), "{name}");
    }
    // An ack's signature is not a hello's: the contexts differ.
    let Body::Ack(a) = fixtures::ack_message().body else {
        unreachable!()
    };
    let h = Hello {
        key_id: a.key_id,
        sig: a.sig,
        ..good.clone()
    };
    assert!(sign::verify_hello(&trusted, &h).is_err());
}

// ----------------------------------------------------------- hostile input

#[test]
fn refusals_are_typed_and_counted_by_reason() {
    let good = encode(&fixtures::host_message()).unwrap();
    let mut v0 = good.clone();
    v0[0] = 0;
    let mut v9 = good.clone();
    v9[0] = SCHEMA_VERSION + 1;
    let mut trailing = good.clone();
    trailing.push(0);
    let big = vec![SCHEMA_VERSION; MAX_MESSAGE_BYTES + 1];

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "malformed"),
        ("version 0", v0, "unknown_version"),
        ("next version", v9, "unknown_version"),
        ("trailing", trailing, "malformed"),
        ("truncated", good[..good.len() - 1].to_vec(), "malformed"),
        ("oversized", big, "oversized"),
    ];
    for (name, bytes, reason) in cases {
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err.reason(), reason, "{name}: {err}");
    }
    assert!(matches!(
        decode(&v9_bytes()).unwrap_err(),
        DecodeError::UnknownVersion { got } if got == SCHEMA_VERSION + 1
    ));
}

fn v9_bytes() -> Vec<u8> {
    let mut b = encode(&fixtures::ack_message()).unwrap();
    b[0] = SCHEMA_VERSION + 1;
    b
}

#[test]
fn identity_is_validated_on_both_sides() {
    let mut msg = fixtures::ack_message();
    msg.unit.unit = "E12/#".into();
    assert!(matches!(encode(&msg), Err(EncodeError::Identity(_))));
    // Forge the same bytes by hand: the decoder refuses them too.
    let mut good = fixtures::ack_message();
    good.unit.unit = "E12xx".into();
    let mut bytes = encode(&good).unwrap();
    let pos = bytes.windows(5).position(|w| w == b"E12xx").unwrap();
    bytes[pos + 3..pos + 5].copy_from_slice(b"/#");
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err.reason(), "bad_identity", "{err}");
}

#[test]
fn batch_limits() {
    let too_many = fixtures::batch_message(MAX_BATCH_RECORDS as u64 + 1);
    assert!(matches!(
        encode(&too_many),
        Err(EncodeError::BatchTooLong(_))
    ));
    let ok = fixtures::batch_message(100);
    round_trip(&ok);
}

// ------------------------------------------------------ allocation bound

struct Counting;

// Per thread: the other tests of this binary allocate and free on their own
// threads at the same time, and must not count (a free of memory allocated
// before tracking began would otherwise drive the count below zero).
thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds GlobalAlloc's contract; the counting touches only thread-locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.with(Cell::get) {
            let now = LIVE.with(|l| {
                l.set(l.get() + layout.size() as isize);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(now)));
        }
        // SAFETY: the caller's `layout` contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if TRACK.with(Cell::get) {
            LIVE.with(|l| l.set(l.get() - layout.size() as isize));
        }
        // SAFETY: `ptr` came from `System.alloc` with this `layout` (above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak bytes allocated on this thread while decoding `bytes`.
fn decode_peak(bytes: &[u8]) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACK.with(|t| t.set(true));
    let r = decode(bytes);
    TRACK.with(|t| t.set(false));
    drop(r);
    PEAK.with(Cell::get).max(0) as usize
}

/// Length prefixes that claim huge sequences and strings allocate no more
/// than the payload limit.
#[test]
fn hostile_length_prefixes_do_not_allocate_past_the_limit() {
    let unit = fixtures::unit();
    // version, agency, unit, Body::Batch variant (1), then a varint u64 length of 2^60.
    let mut batch = vec![SCHEMA_VERSION];
    for s in [&unit.agency, &unit.unit] {
        batch.push(s.len() as u8);
        batch.extend_from_slice(s.as_bytes());
    }
    batch.push(1);
    batch.push(253);
    batch.extend_from_slice(&(1u64 << 60).to_le_bytes());
    // The same with a string length of 2^60 in place of the agency.
    let mut string = vec![SCHEMA_VERSION, 253];
    string.extend_from_slice(&(1u64 << 60).to_le_bytes());
    // A real batch whose first record's per-core list claims 2^32 entries.
    let mut cores = encode(&fixtures::batch_message(2)).unwrap();
    let pos = cores
        .windows(8)
        .position(|w| w == [8, 31, 12, 40, 8, 22, 19, 35])
        .unwrap();
    cores.splice(pos..pos + 1, [252, 0, 0, 0, 0x01].iter().copied());

    for (name, bytes) in [
        ("batch", batch),
        ("string", string),
        ("per-core list", cores),
    ] {
        let err = decode(&bytes).unwrap_err();
        let peak = decode_peak(&bytes);
        assert!(
            peak <= MAX_MESSAGE_BYTES,
            "{name}: decode peaked at {peak} bytes ({err})"
        );
    }
}

/// A full-size legitimate payload: decoded size is what the data needs.
#[test]
fn typical_sample_size_is_under_300_bytes() {
    let len = encode(&fixtures::host_message()).unwrap().len();
    assert!(len < 300, "a typical host sample is {len} bytes");
}

// ---------------------------------------------------- pre-encoded records

proptest! {
    /// Splicing stored records gives exactly what encoding the message gives.
    #[test]
    fn spliced_batches_equal_encoded_batches(unit in unit_id(), recs in vec(record(), 0..12)) {
        let stored: Vec<Vec<u8>> = recs.iter().map(|r| encode_record(r).unwrap()).collect();
        for r in &stored {
            prop_assert_eq!(&decode_record(r).unwrap(), &recs[stored.iter().position(|s| s == r).unwrap()]);
        }
        let refs: Vec<&[u8]> = stored.iter().map(|v| v.as_slice()).collect();
        let spliced = message_from_encoded(&unit, &refs, false).unwrap();
        let msg = Message { unit: unit.clone(), body: Body::Batch(recs.clone()) };
        prop_assert_eq!(&spliced, &encode(&msg).unwrap());
        if let [one] = recs.as_slice() {
            let single = message_from_encoded(&unit, &refs, true).unwrap();
            let msg = Message { unit, body: Body::Record(one.clone()) };
            prop_assert_eq!(single, encode(&msg).unwrap());
        }
    }
}

#[test]
fn splicing_refuses_bad_input() {
    let unit = fixtures::unit();
    let good = encode_record(&fixtures::record(1, Payload::Status(fixtures::status()))).unwrap();
    let mut bad_version = good.clone();
    bad_version[0] = 0;
    assert!(matches!(
        message_from_encoded(&unit, &[&bad_version], false),
        Err(EncodeError::BadStoredRecord(DecodeError::UnknownVersion {
            got: 0
        }))
    ));
    assert!(matches!(
        message_from_encoded(&unit, &[&good, &good], true),
        Err(EncodeError::NotSingle(2))
    ));
    assert!(decode_record(&good[..good.len() - 1]).is_err());
}

// ------------------------------------------------- fuzz corpus regression

/// The fuzz target's invariant, over the committed seed corpus and every
/// input that once crashed it (`proto/fuzz/regressions/`): runs on stable in
/// every test run, so a fixed crash stays fixed without nightly.
#[test]
fn fuzz_corpus_and_regressions_hold_the_invariant() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus/decode", "regressions"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if let Ok(decoded) = decode(&data) {
                let again = encode_version(&decoded.message, decoded.version).unwrap();
                assert!(again.len() <= data.len(), "{}", path.display());
                assert_eq!(decode(&again).unwrap(), decoded, "{}", path.display());
            }
            n += 1;
        }
    }
    assert!(n > fixtures::all_named().len(), "only {n} corpus files");
}

/// The presence reason: a code from a newer agent decodes as `Unknown`
/// (the collector treats it as lost and counts it); an online flag that
/// contradicts the reason, or an announcement record of another boot or
/// online, is `malformed`; v1 presences read as `Connected` / `Lost`.
#[test]
fn presence_reasons_are_validated_and_forward_compatible() {
    let online = encode(&fixtures::presence_message(true)).unwrap();
    // The reason is the last two bytes: code 0, no number.
    assert_eq!(&online[online.len() - 2..], &[0, 0]);
    let with = |tail: &[u8]| {
        let mut b = online[..online.len() - 2].to_vec();
        b.extend_from_slice(tail);
        decode(&b)
    };
    let Body::Presence(p) = with(&[99, 1, 5]).unwrap().message.body else {
        panic!("a presence")
    };
    assert_eq!(p.reason, PresenceReason::Unknown { code: 99 });
    for (tail, what) in [
        (&[3u8, 0][..], "online with reason shutdown"),
        (&[2, 0][..], "online with reason lost"),
        (&[5, 0][..], "online with reason sleep"),
    ] {
        let e = with(tail).unwrap_err();
        assert_eq!(e.reason(), "malformed", "{what}");
    }
    let mut off = fixtures::presence_message(false);
    if let Body::Presence(p) = &mut off.body {
        p.reason = PresenceReason::Resumed { slept_ms: 1 };
    }
    assert_eq!(
        decode(&encode(&off).unwrap()).unwrap_err().reason(),
        "malformed"
    );
    // An announcement record of another boot, or one that says online.
    let mut rec = fixtures::record(
        5,
        Payload::Presence(fixtures::presence(false, PresenceReason::Shutdown)),
    );
    rec.boot = BootId(1);
    let msg = Message {
        unit: fixtures::unit(),
        body: Body::Record(rec.clone()),
    };
    assert_eq!(
        decode(&encode(&msg).unwrap()).unwrap_err().reason(),
        "malformed"
    );
    assert!(decode_record(&encode_record(&rec).unwrap()).is_err());
    let msg = Message {
        unit: fixtures::unit(),
        body: Body::Record(fixtures::record(
            5,
            Payload::Presence(fixtures::presence(true, PresenceReason::Connected)),
        )),
    };
    assert_eq!(
        decode(&encode(&msg).unwrap()).unwrap_err().reason(),
        "malformed"
    );
    // v1 has no reasons and no announcement records.
    let v1_will = std::fs::read(golden_dir(1).join("presence_offline.bin")).unwrap();
    let Body::Presence(p) = decode(&v1_will).unwrap().message.body else {
        panic!("a presence")
    };
    assert_eq!(p.reason, PresenceReason::Lost);
    let (_, announce) = fixtures::v2_named().remove(0);
    assert!(matches!(
        encode_version(&announce, 1),
        Err(EncodeError::NotInVersion(..))
    ));
}

#[test]
fn config_documents_are_bound_to_their_scope_version_and_body() {
    let key = fixtures::signing_key();
    let mut trusted = TrustedKeys::new();
    trusted.insert(key.public_key()).unwrap();
    let unit = UnitId::new("metro-pd", "car-12").unwrap();
    let good = sign::sign_config(
        &key,
        DocScope::Unit { unit: unit.clone() },
        7,
        1_700_000_000_000,
        "[sampling]\ninterval = \"5s\"\n".into(),
    );
    assert_eq!(sign::verify_config(&trusted, &good), Ok(key.key_id()));
    let back = decode_config(&encode_config(&good).unwrap()).unwrap();
    assert_eq!(back, good);
    assert_eq!(sign::config_hash(&back), sign::config_hash(&good));
    let with = |f: &dyn Fn(&mut ConfigDoc)| {
        let mut d = good.clone();
        f(&mut d);
        d
    };
    let cases: Vec<(&str, ConfigDoc)> = vec![
        (
            "another unit",
            with(&|d| {
                d.scope = DocScope::Unit {
                    unit: UnitId::new("metro-pd", "car-13").unwrap(),
                }
            }),
        ),
        (
            "the agency's scope",
            with(&|d| {
                d.scope = DocScope::Agency {
                    agency: "metro-pd".into(),
                }
            }),
        ),
        ("version", with(&|d| d.version += 1)),
        ("issued", with(&|d| d.issued_ms += 1)),
        ("body", with(&|d| d.body.push(' '))),
        ("signature", with(&|d| d.sig.1[3] ^= 1)),
        (
            "unsigned",
            with(&|d| {
                d.sig = Signature::NONE;
                d.key_id = KeyId::NONE
            }),
        ),
        (
            "unknown key",
            sign::sign_config(
                &fixtures::next_signing_key(),
                good.scope.clone(),
                7,
                1,
                good.body.clone(),
            ),
        ),
    ];
    for (i, (name, d)) in cases.into_iter().enumerate() {
        assert!(sign::verify_config(&trusted, &d).is_err(), "{name}");
        // The hash names what a document says (scope, version, issue
        // time, body), not who signed it.
        if i < 5 {
            assert_ne!(sign::config_hash(&d), sign::config_hash(&good), "{name}");
        }
    }
    // A hello's signature is not a document's: the contexts differ.
    let h = fixtures::hello();
    let forged = with(&|d| {
        d.key_id = h.key_id;
        d.sig = h.sig
    });
    assert!(sign::verify_config(&trusted, &forged).is_err());
}

#[test]
fn config_documents_are_bounded() {
    let key = fixtures::signing_key();
    let scope = DocScope::Agency {
        agency: "metro-pd".into(),
    };
    let at = sign::sign_config(&key, scope.clone(), 1, 0, "x".repeat(MAX_CONFIG_BODY));
    let bytes = encode_config(&at).unwrap();
    assert_eq!(decode_config(&bytes).unwrap(), at);
    let over = sign::sign_config(&key, scope, 1, 0, "x".repeat(MAX_CONFIG_BODY + 1));
    assert!(matches!(encode_config(&over), Err(EncodeError::Invalid(_))));
    // Written past the encoder's check: the decoder refuses it too.
    let mut raw = vec![SCHEMA_VERSION];
    raw.extend(bincode_of(&over));
    assert!(matches!(
        decode_config(&raw),
        Err(DecodeError::Malformed(_))
    ));
    let bad_scope = ConfigDoc {
        scope: DocScope::Agency {
            agency: "a/b".into(),
        },
        ..at.clone()
    };
    assert!(encode_config(&bad_scope).is_err());
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(decode_config(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn facts_and_config_status_round_trip_and_are_validated() {
    let boot = BootId(7);
    let facts = UnitFacts {
        labels: vec![
            Label {
                key: "role".into(),
                value: "patrol".into(),
            },
            Label {
                key: "station".into(),
                value: "7".into(),
            },
        ],
        agent_version: "0.1.0".into(),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        cad_version: Some("5.4.2.118".into()),
    };
    assert_eq!(facts.label("station"), Some("7"));
    assert_eq!(facts.label("zone"), None);
    let status = ConfigStatus {
        doc: Some((
            DocScopeKind::Unit,
            DocRef {
                version: 3,
                hash: [1; 32],
            },
        )),
        state: ConfigState::Refused {
            reason: RefusalReason::OldVersion,
            detail: "version 3 is not newer than 4".into(),
        },
        running: [2; 32],
        running_agency: None,
        running_unit: Some(DocRef {
            version: 4,
            hash: [3; 32],
        }),
    };
    let unit = UnitId::new("metro-pd", "car-12").unwrap();
    for payload in [
        Payload::Facts(facts.clone()),
        Payload::Config(status.clone()),
    ] {
        let msg = Message {
            unit: unit.clone(),
            body: Body::Record(Record {
                boot,
                seq: 1,
                at_ms: 5,
                payload,
            }),
        };
        assert_eq!(decode(&encode(&msg).unwrap()).unwrap().message, msg);
        assert!(matches!(
            encode_version(&msg, 1),
            Err(EncodeError::NotInVersion(..))
        ));
    }
    let bad: Vec<(&str, UnitFacts)> = vec![
        ("unsorted", {
            let mut f = facts.clone();
            f.labels.reverse();
            f
        }),
        ("duplicate", {
            let mut f = facts.clone();
            f.labels[1].key = "role".into();
            f
        }),
        ("key", {
            let mut f = facts.clone();
            f.labels[0].key = "Role".into();
            f
        }),
        ("value", {
            let mut f = facts.clone();
            f.labels[0].value = "a\u{85}b".into();
            f
        }),
        ("too many", {
            let mut f = facts.clone();
            f.labels = (0..=MAX_LABELS)
                .map(|i| Label {
                    key: format!("k{i:02}"),
                    value: String::new(),
                })
                .collect();
            f
        }),
        ("os", {
            let mut f = facts.clone();
            f.os = "x".repeat(MAX_FACT_LEN + 1);
            f
        }),
    ];
    for (name, f) in bad {
        assert!(f.validate().is_err(), "{name}");
        let msg = Message {
            unit: unit.clone(),
            body: Body::Record(Record {
                boot,
                seq: 1,
                at_ms: 5,
                payload: Payload::Facts(f),
            }),
        };
        let bytes = encode(&msg).unwrap();
        assert!(
            matches!(decode(&bytes), Err(DecodeError::Malformed(_))),
            "{name}"
        );
    }
    let mut long = status.clone();
    long.state = ConfigState::Failed {
        reason: "x".repeat(MAX_CONFIG_REASON + 1),
    };
    let msg = Message {
        unit,
        body: Body::Record(Record {
            boot,
            seq: 1,
            at_ms: 5,
            payload: Payload::Config(long),
        }),
    };
    assert!(matches!(
        decode(&encode(&msg).unwrap()),
        Err(DecodeError::Malformed(_))
    ));
}

fn bincode_of<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
}

fn action_request() -> ActionRequest {
    sign::sign_action(
        &fixtures::signing_key(),
        ActionRequest {
            unit: UnitId::new("metro-pd", "car-12").unwrap(),
            action: "restart-cad-client".into(),
            params: vec![ActionParam {
                name: "service".into(),
                value: "cad".into(),
            }],
            nonce: [5; 16],
            issued_ms: 1_700_000_000_000,
            expires_ms: 1_700_000_060_000,
            requested_by: "operator:metro-pd".into(),
            key_id: KeyId::NONE,
            sig: Signature::NONE,
        },
    )
}

#[test]
fn action_requests_are_bound_to_everything_they_say() {
    let key = fixtures::signing_key();
    let mut trusted = TrustedKeys::new();
    trusted.insert(key.public_key()).unwrap();
    let good = action_request();
    assert_eq!(sign::verify_action(&trusted, &good), Ok(key.key_id()));
    assert_eq!(decode_action(&encode_action(&good).unwrap()).unwrap(), good);
    let with = |f: &dyn Fn(&mut ActionRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let cases: Vec<(&str, ActionRequest)> = vec![
        (
            "another unit",
            with(&|r| r.unit = UnitId::new("metro-pd", "car-13").unwrap()),
        ),
        (
            "another agency",
            with(&|r| r.unit = UnitId::new("county-fd", "car-12").unwrap()),
        ),
        ("action", with(&|r| r.action = "flush-dns".into())),
        ("param value", with(&|r| r.params[0].value = "cad2".into())),
        ("param name", with(&|r| r.params[0].name = "unit".into())),
        ("no params", with(&|r| r.params.clear())),
        ("nonce", with(&|r| r.nonce[0] ^= 1)),
        ("issued", with(&|r| r.issued_ms += 1)),
        ("expiry", with(&|r| r.expires_ms += 1)),
        ("requested_by", with(&|r| r.requested_by = "admin".into())),
        ("signature", with(&|r| r.sig.0[0] ^= 1)),
        (
            "unsigned",
            with(&|r| {
                r.sig = Signature::NONE;
                r.key_id = KeyId::NONE
            }),
        ),
        (
            "unknown key",
            sign::sign_action(&fixtures::next_signing_key(), good.clone()),
        ),
        (
            "a hello's signature",
            with(&|r| {
                let h = fixtures::hello();
                r.key_id = h.key_id;
                r.sig = h.sig
            }),
        ),
    ];
    for (name, r) in cases {
        assert!(sign::verify_action(&trusted, &r).is_err(), "{name}");
    }
    assert_eq!(
        sign::verify_action(&TrustedKeys::new(), &good),
        Err(VerifyError::UnknownKey(key.key_id()))
    );
}

#[test]
fn action_requests_and_audits_are_bounded() {
    let good = action_request();
    let with = |f: &dyn Fn(&mut ActionRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    // At each limit it encodes; one over, neither side takes it.
    let at = with(&|r| {
        r.params = (0..muster_proto::action::MAX_ACTION_PARAMS)
            .map(|i| ActionParam {
                name: format!("p{i}"),
                value: "v".repeat(muster_proto::action::MAX_PARAM_VALUE),
            })
            .collect();
        r.action = "a".repeat(muster_proto::action::MAX_ACTION_NAME);
        r.requested_by = "b".repeat(muster_proto::action::MAX_REQUESTED_BY);
    });
    assert_eq!(decode_action(&encode_action(&at).unwrap()).unwrap(), at);
    let over: Vec<(&str, ActionRequest)> = vec![
        (
            "value",
            with(&|r| r.params[0].value = "v".repeat(muster_proto::action::MAX_PARAM_VALUE + 1)),
        ),
        (
            "params",
            with(&|r| {
                r.params = (0..=muster_proto::action::MAX_ACTION_PARAMS)
                    .map(|i| ActionParam {
                        name: format!("p{i}"),
                        value: String::new(),
                    })
                    .collect()
            }),
        ),
        (
            "name",
            with(&|r| r.action = "a".repeat(muster_proto::action::MAX_ACTION_NAME + 1)),
        ),
        ("name chars", with(&|r| r.action = "restart;reboot".into())),
        (
            "param name chars",
            with(&|r| r.params[0].name = "a b".into()),
        ),
        (
            "requested_by",
            with(&|r| r.requested_by = "b".repeat(muster_proto::action::MAX_REQUESTED_BY + 1)),
        ),
        ("unit", with(&|r| r.unit.unit = "a/b".into())),
    ];
    for (name, r) in over {
        assert!(
            matches!(encode_action(&r), Err(EncodeError::Invalid(_))),
            "{name}"
        );
        let mut raw = vec![SCHEMA_VERSION];
        raw.extend(bincode_of(&r));
        assert!(
            matches!(decode_action(&raw), Err(DecodeError::Malformed(_))),
            "{name}"
        );
    }
    // A newline in a value is the agent's to refuse (against its pattern),
    // not the wire's: it must arrive to be audited.
    let nl = with(&|r| r.params[0].value = "cad\n; rm -rf /".into());
    assert_eq!(decode_action(&encode_action(&nl).unwrap()).unwrap(), nl);
    let bytes = encode_action(&good).unwrap();
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(decode_action(&bytes[..cut]).is_err(), "cut at {cut}");
    }

    // Audit records travel as records and are bounded the same way.
    let unit = good.unit.clone();
    let rec = |step: ActionStep| Message {
        unit: unit.clone(),
        body: Body::Record(Record {
            boot: BootId(7),
            seq: 1,
            at_ms: 2,
            payload: Payload::Action(ActionAudit {
                request: Some(good.reference()),
                step,
            }),
        }),
    };
    let out = "o".repeat(muster_proto::action::MAX_ACTION_OUTPUT);
    let fin = rec(ActionStep::Finished {
        exit_code: Some(0),
        timed_out: false,
        duration_ms: 12,
        stdout: out.clone(),
        stderr: out.clone(),
    });
    round_trip(&fin);
    let too_long = rec(ActionStep::Finished {
        exit_code: None,
        timed_out: true,
        duration_ms: 12,
        stdout: out.clone() + "o",
        stderr: String::new(),
    });
    assert!(matches!(
        decode(&[&[SCHEMA_VERSION][..], &bincode_of(&too_long)].concat()),
        Err(DecodeError::Malformed(_))
    ));
    let refused = rec(ActionStep::Refused {
        reason: ActionRefusal::Replayed,
        detail: "r".repeat(muster_proto::action::MAX_ACTION_REASON + 1),
    });
    assert!(matches!(
        decode(&[&[SCHEMA_VERSION][..], &bincode_of(&refused)].concat()),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        encode_version(&fin, 1),
        Err(EncodeError::NotInVersion(..))
    ));
}
