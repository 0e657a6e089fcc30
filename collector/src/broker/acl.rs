//! The gate's access rules: who may publish, subscribe and leave a will
//! where. Pure: a principal and a packet's fields in, allow or a refusal
//! reason out. The gate (`gate.rs`) applies it to every client packet
//! before anything reaches the embedded broker.
//!
//! | principal | CONNECT will | PUBLISH | SUBSCRIBE |
//! |---|---|---|---|
//! | unit `{agency}/{unit}` | own `…/state`, QoS ≤ 1 | own `…/telemetry` (not retained), own `…/state` (retained ok), QoS ≤ 1 | own `…/ack`, own `…/state`, own `…/config`, own `…/action`, its agency's `muster/v1/{agency}/config`, `muster/v1/collector` |
//! | agency reader `{agency}` | none | none | subsets of `muster/v1/{agency}/+/status` and `muster/v1/{agency}/incidents` |
//!
//! A unit subscribes to its own state topic because the agent republishes
//! its birth when it sees a late will of its own say "offline" there. Its
//! action topic (signed requests, issue 17) it may only read: only the
//! collector, on rumqttd's internal listener, publishes there.
//!
//! A SUBSCRIBE filter is allowed when every topic it can match is one the
//! principal may read ([`is_subset`]): `muster/v1/{agency}/E12/status` and
//! `muster/v1/{agency}/+/status` are, `muster/v1/+/+/status`, `#` and
//! `$share/…` are not.
//!
//! Client ids are namespaced ([`client_id`]): whatever a client sends, the
//! broker sees `u:{agency}:{unit}` or `a:{agency}:{hash}`, which never
//! equals the collector's own id (`c:…`), so nobody can take over another
//! principal's session or kick the collector off. Parts are escaped
//! ([`escape_id`]) so that two identities never make the same id and
//! rumqttd's forbidden characters (`+ $ # /`) never appear.

use muster_proto::topic::{PREFIX, unit_topic};
use muster_proto::{TopicKind, UnitId};

/// The retained "collector online" hello every unit may read.
pub const COLLECTOR_HELLO_TOPIC: &str = "muster/v1/collector";

/// Who a connection is, once its CONNECT credentials check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A terminal, user name `{agency}/{unit}`.
    Unit(UnitId),
    /// An agency's status reader, user name `{agency}`.
    Agency(String),
}

/// Why the gate refused something. The labels are stable: they are the
/// `reason` label of `muster_broker_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Anonymous, unknown user, or wrong password.
    BadCredentials,
    /// Not MQTT 3.1.1, not CONNECT first, a malformed packet, QoS 2.
    Protocol,
    PublishDenied,
    SubscribeDenied,
    WillDenied,
    /// A packet over `broker.max_packet_bytes`.
    Oversized,
    /// `broker.max_connections` already open.
    ConnectionCap,
    /// No CONNECT within `broker.connect_timeout`.
    ConnectTimeout,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::BadCredentials,
        Refusal::Protocol,
        Refusal::PublishDenied,
        Refusal::SubscribeDenied,
        Refusal::WillDenied,
        Refusal::Oversized,
        Refusal::ConnectionCap,
        Refusal::ConnectTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadCredentials => "bad_credentials",
            Refusal::Protocol => "protocol",
            Refusal::PublishDenied => "publish_denied",
            Refusal::SubscribeDenied => "subscribe_denied",
            Refusal::WillDenied => "will_denied",
            Refusal::Oversized => "oversized",
            Refusal::ConnectionCap => "connection_cap",
            Refusal::ConnectTimeout => "connect_timeout",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl crate::ingest::refusal::LogReason for Refusal {
    const COUNT: usize = Refusal::ALL.len();
    fn index(self) -> usize {
        Refusal::index(self)
    }
}

/// May `p` publish to `topic` with this QoS (0, 1, 2) and retain flag?
pub fn check_publish(p: &Principal, topic: &str, qos: u8, retain: bool) -> Result<(), Refusal> {
    match p {
        Principal::Unit(u) if qos <= 1 => match own_topic_kind(u, topic) {
            Some(TopicKind::Telemetry) if !retain => Ok(()),
            Some(TopicKind::State) => Ok(()),
            _ => Err(Refusal::PublishDenied),
        },
        _ => Err(Refusal::PublishDenied),
    }
}

/// The kind of `topic` when it is exactly one of `u`'s own unit topics
/// (`muster/v1/{agency}/{unit}/{kind}`); compared without allocating, as
/// this runs for every publish.
fn own_topic_kind(u: &UnitId, topic: &str) -> Option<TopicKind> {
    let kind = topic
        .strip_prefix(PREFIX)?
        .strip_prefix('/')?
        .strip_prefix(u.agency.as_str())?
        .strip_prefix('/')?
        .strip_prefix(u.unit.as_str())?
        .strip_prefix('/')?;
    TopicKind::ALL.into_iter().find(|k| k.as_str() == kind)
}

/// May `p` connect with this will?
pub fn check_will(p: &Principal, topic: &str, qos: u8) -> Result<(), Refusal> {
    match p {
        Principal::Unit(u) if qos <= 1 && topic == unit_topic(u, TopicKind::State) => Ok(()),
        _ => Err(Refusal::WillDenied),
    }
}

/// May `p` subscribe to `filter`?
pub fn check_subscribe(p: &Principal, filter: &str) -> Result<(), Refusal> {
    let allowed = match p {
        Principal::Unit(u) => [
            unit_topic(u, TopicKind::Ack),
            unit_topic(u, TopicKind::State),
            unit_topic(u, TopicKind::Config),
            unit_topic(u, TopicKind::Action),
            format!("{PREFIX}/{}/config", u.agency),
            COLLECTOR_HELLO_TOPIC.to_owned(),
        ]
        .iter()
        .any(|t| is_subset(filter, t)),
        Principal::Agency(a) => [
            format!("{PREFIX}/{a}/+/status"),
            format!("{PREFIX}/{a}/incidents"),
        ]
        .iter()
        .any(|t| is_subset(filter, t)),
    };
    if allowed {
        Ok(())
    } else {
        Err(Refusal::SubscribeDenied)
    }
}

/// True when every topic `filter` can match is matched by `pattern`.
/// `pattern` uses only whole-level `+` wildcards (no `#`). An invalid
/// filter (a wildcard sharing a level with other characters, `#` not last,
/// an empty filter) is a subset of nothing.
pub fn is_subset(filter: &str, pattern: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let p: Vec<&str> = pattern.split('/').collect();
    for l in &f {
        if (l.contains('+') || l.contains('#')) && l.len() > 1 {
            return false;
        }
    }
    // `#` matches any number of levels, so it is wider than any `+`-only pattern.
    if f.contains(&"#") {
        return false;
    }
    if f.len() != p.len() {
        return false;
    }
    f.iter().zip(&p).all(|(fl, pl)| match (*fl, *pl) {
        (_, "+") => true,
        ("+", _) => false,
        (a, b) => a == b,
    })
}

/// The client id the broker sees for `p`, whatever id it sent. Units keep
/// one id (a stable session across reconnects); an agency's readers are
/// told apart by a hash of their own id.
pub fn client_id(p: &Principal, requested: &str) -> String {
    match p {
        Principal::Unit(u) => format!("u:{}:{}", escape_id(&u.agency), escape_id(&u.unit)),
        Principal::Agency(a) => {
            let d = ring::digest::digest(&ring::digest::SHA256, requested.as_bytes());
            let hex: String = d.as_ref()[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("a:{}:{hex}", escape_id(a))
        }
    }
}

/// The collector's own client id on the embedded broker: the `c:` prefix
/// is one no gate client can be given.
pub fn collector_client_id(configured: &str) -> String {
    format!("c:{}", escape_id(configured))
}

/// `%XX` for `%`, `:` (the separator) and rumqttd's forbidden client id
/// characters `+ $ # /`; everything else as is. Injective.
pub fn escape_id(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | ':' | '+' | '$' | '#' | '/') {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(a: &str, u: &str) -> Principal {
        Principal::Unit(UnitId::new(a, u).unwrap())
    }

    #[test]
    fn publish_table() {
        let e12 = unit("metro-fire", "E12");
        let fire = Principal::Agency("metro-fire".into());
        let ok = Ok(());
        let no = Err(Refusal::PublishDenied);
        type Case<'a> = (&'a Principal, &'a str, u8, bool, Result<(), Refusal>);
        let cases: &[Case] = &[
            (&e12, "muster/v1/metro-fire/E12/telemetry", 1, false, ok),
            (&e12, "muster/v1/metro-fire/E12/telemetry", 0, false, ok),
            (&e12, "muster/v1/metro-fire/E12/telemetry", 1, true, no),
            (&e12, "muster/v1/metro-fire/E12/telemetry", 2, false, no),
            (&e12, "muster/v1/metro-fire/E12/state", 1, true, ok),
            (&e12, "muster/v1/metro-fire/E12/state", 1, false, ok),
            (&e12, "muster/v1/metro-fire/E13/telemetry", 1, false, no),
            (&e12, "muster/v1/metro-fire/E13/state", 1, true, no),
            (&e12, "muster/v1/county-ems/E12/telemetry", 1, false, no),
            (&e12, "muster/v1/metro-fire/E12/ack", 1, false, no),
            (&e12, "muster/v1/metro-fire/E12/status", 1, true, no),
            (&e12, "muster/v1/metro-fire/incidents", 1, true, no),
            (&e12, COLLECTOR_HELLO_TOPIC, 1, true, no),
            // Config documents come only from the collector.
            (&e12, "muster/v1/metro-fire/E12/config", 1, true, no),
            (&e12, "muster/v1/metro-fire/config", 1, true, no),
            // So do action requests: not its own, not another's, any QoS.
            (&e12, "muster/v1/metro-fire/E12/action", 1, false, no),
            (&e12, "muster/v1/metro-fire/E12/action", 0, false, no),
            (&e12, "muster/v1/metro-fire/E12/action", 1, true, no),
            (&e12, "muster/v1/metro-fire/E13/action", 1, false, no),
            (&fire, "muster/v1/metro-fire/E12/action", 1, false, no),
            (&e12, "muster/v1/metro-fire/+/telemetry", 1, false, no),
            (&e12, "muster/v1/metro-fire/E12/telemetry/x", 1, false, no),
            (&fire, "muster/v1/metro-fire/E12/status", 1, true, no),
            (&fire, "muster/v1/metro-fire/E12/telemetry", 1, false, no),
        ];
        for (p, topic, qos, retain, want) in cases {
            assert_eq!(
                check_publish(p, topic, *qos, *retain),
                *want,
                "{p:?} {topic} q{qos} r{retain}"
            );
        }
    }

    #[test]
    fn will_table() {
        let e12 = unit("metro-fire", "E12");
        let fire = Principal::Agency("metro-fire".into());
        assert_eq!(
            check_will(&e12, "muster/v1/metro-fire/E12/state", 1),
            Ok(())
        );
        for (p, t, q) in [
            (&e12, "muster/v1/metro-fire/E13/state", 1),
            (&e12, "muster/v1/metro-fire/E12/state", 2),
            (&e12, "muster/v1/metro-fire/E12/telemetry", 1),
            (&fire, "muster/v1/metro-fire/E12/state", 1),
        ] {
            assert_eq!(check_will(p, t, q), Err(Refusal::WillDenied), "{p:?} {t}");
        }
    }

    #[test]
    fn subscribe_table() {
        let e12 = unit("metro-fire", "E12");
        let fire = Principal::Agency("metro-fire".into());
        let cases: &[(&Principal, &str, bool)] = &[
            (&e12, "muster/v1/metro-fire/E12/ack", true),
            (&e12, "muster/v1/metro-fire/E12/state", true),
            (&e12, COLLECTOR_HELLO_TOPIC, true),
            (&e12, "muster/v1/metro-fire/E12/config", true),
            (&e12, "muster/v1/metro-fire/config", true),
            (&e12, "muster/v1/metro-fire/E13/config", false),
            // Its own action requests only.
            (&e12, "muster/v1/metro-fire/E12/action", true),
            (&e12, "muster/v1/metro-fire/E13/action", false),
            (&e12, "muster/v1/county-ems/E12/action", false),
            (&e12, "muster/v1/metro-fire/+/action", false),
            (&e12, "muster/v1/+/E12/action", false),
            (&e12, "muster/v1/+/+/action", false),
            (&fire, "muster/v1/metro-fire/E12/action", false),
            (&fire, "muster/v1/metro-fire/+/action", false),
            (&e12, "muster/v1/county-ems/config", false),
            (&e12, "muster/v1/+/config", false),
            (&e12, "muster/v1/metro-fire/E13/ack", false),
            (&e12, "muster/v1/metro-fire/+/ack", false),
            (&e12, "muster/v1/metro-fire/E12/+", false),
            (&e12, "muster/v1/metro-fire/E12/telemetry", false),
            (&e12, "muster/v1/+/+/telemetry", false),
            (&e12, "#", false),
            (&e12, "muster/#", false),
            (&e12, "+/+/+/+/+", false),
            (&fire, "muster/v1/metro-fire/+/status", true),
            (&fire, "muster/v1/metro-fire/E12/status", true),
            (&fire, "muster/v1/metro-fire/incidents", true),
            (&fire, "muster/v1/+/+/status", false),
            (&fire, "muster/v1/county-ems/+/status", false),
            (&fire, "muster/v1/county-ems/incidents", false),
            (&fire, "muster/v1/metro-fire/#", false),
            (&fire, "muster/v1/metro-fire/+/+", false),
            (&fire, "muster/v1/metro-fire/+/telemetry", false),
            (&fire, "muster/v1/metro-fire/E12/ack", false),
            (&fire, "muster/v1/metro-fire/+", false),
            (&fire, "#", false),
            (&fire, "$share/g/muster/v1/metro-fire/+/status", false),
            (&fire, "muster/v1/metro-fire/E+/status", false),
            (&fire, COLLECTOR_HELLO_TOPIC, false),
            (&fire, "muster/v1/metro-fire/config", false),
        ];
        for (p, f, want) in cases {
            assert_eq!(check_subscribe(p, f).is_ok(), *want, "{p:?} {f}");
        }
    }

    #[test]
    fn subset_edge_cases() {
        assert!(is_subset("a/b", "a/b"));
        assert!(is_subset("a/+", "+/+"));
        assert!(!is_subset("+/b", "a/+"));
        assert!(!is_subset("", "+"));
        assert!(!is_subset("a/#", "a/+"));
        assert!(!is_subset("#", "+"));
        assert!(!is_subset("a/b#", "a/+"));
        assert!(is_subset("a//b", "a/+/b"));
        assert!(!is_subset("a/b", "a/b/c"));
    }

    #[test]
    fn client_ids_are_namespaced() {
        let e12 = unit("metro-fire", "E12");
        let fire = Principal::Agency("metro-fire".into());
        assert_eq!(client_id(&e12, "anything"), "u:metro-fire:E12");
        assert_eq!(client_id(&e12, "muster-collector"), "u:metro-fire:E12");
        let a = client_id(&fire, "muster-collector");
        assert!(a.starts_with("a:metro-fire:"), "{a}");
        assert_ne!(a, client_id(&fire, "other"));
        assert_eq!(a, client_id(&fire, "muster-collector"));
        for id in [client_id(&e12, "c:x"), a] {
            assert_ne!(id, collector_client_id("muster-collector"));
            assert!(!id.starts_with("c:"));
        }
        // Separators inside identities cannot make two units one id.
        assert_ne!(
            client_id(&unit("x", "a:b"), ""),
            client_id(&unit("x:a", "b"), "")
        );
        assert_eq!(client_id(&unit("x$", "a%3A"), ""), "u:x%24:a%253A");
        for id in [
            client_id(&unit("x$", "a:b"), ""),
            collector_client_id("c/$x#+"),
        ] {
            assert!(!id.contains(['+', '$', '#', '/']), "{id}");
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in Refusal::ALL {
            assert!(seen.insert(r.as_str()));
            assert_eq!(Refusal::ALL[r.index()], r);
        }
    }
}
