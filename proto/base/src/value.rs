//! Config values both binaries parse: durations, byte sizes and MQTT URLs.
//! The typed parsers are pure; the keyed ones return a [`BadValue`] that
//! names the key, which each config's error type wraps (`From`), so every
//! message reads `section.key: "value" is not …`.

use std::time::Duration;

/// A config value that does not parse, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BadValue {
    pub key: String,
    pub message: String,
}

impl BadValue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        BadValue {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `"5s"`, `"250ms"`, `"1m 30s"`, `"16h"` (humantime).
pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

/// `"64MiB"`, `"512 KiB"`, `"1GB"`, `"4096"` (bytes).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return None;
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    if num.contains('.') {
        let f: f64 = num.parse().ok()?;
        let v = f * mult as f64;
        (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
    } else {
        num.parse::<u64>().ok()?.checked_mul(mult)
    }
}

/// The duration at `key`.
pub fn duration(key: &str, s: &str) -> Result<Duration, BadValue> {
    parse_duration(s).ok_or_else(|| {
        BadValue::new(
            key,
            format!("{s:?} is not a duration (e.g. \"30s\", \"5m\")"),
        )
    })
}

/// The duration at `key`, or `default` when the key is absent.
pub fn duration_or(key: &str, s: Option<&str>, default: Duration) -> Result<Duration, BadValue> {
    s.map_or(Ok(default), |s| duration(key, s))
}

/// The byte size at `key`.
pub fn bytes(key: &str, s: &str) -> Result<u64, BadValue> {
    parse_bytes(s).ok_or_else(|| {
        BadValue::new(
            key,
            format!("{s:?} is not a byte size (e.g. \"64MiB\", \"4096\")"),
        )
    })
}

/// Plain TCP or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttScheme {
    Tcp,
    Tls,
}

/// `mqtt://host[:port]` (or `tcp://`), `mqtts://host[:port]` (or `ssl://`),
/// IPv6 in brackets; no path (a trailing `/` is allowed), query or
/// credentials. Default ports 1883 and 8883.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub scheme: MqttScheme,
    /// Without brackets.
    pub host: String,
    pub port: u16,
}

impl MqttUrl {
    pub fn parse(url: &str) -> Result<MqttUrl, String> {
        let bad = |why: &str| format!("{url:?} {why}");
        let (scheme, rest) = [
            ("mqtt://", MqttScheme::Tcp),
            ("tcp://", MqttScheme::Tcp),
            ("mqtts://", MqttScheme::Tls),
            ("ssl://", MqttScheme::Tls),
        ]
        .iter()
        .find_map(|(p, s)| url.strip_prefix(p).map(|r| (*s, r)))
        .ok_or_else(|| bad("must start with mqtt:// or mqtts://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(bad("is not a URL: it has no host"));
        }
        if rest.contains('@') {
            return Err(bad("must not carry credentials (use mqtt.username)"));
        }
        if rest.contains(['/', '?', '#']) {
            return Err(bad("must not have a path or a query"));
        }
        let default_port = match scheme {
            MqttScheme::Tcp => 1883,
            MqttScheme::Tls => 8883,
        };
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("has a bad port"))
        };
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, tail) = r
                .split_once(']')
                .ok_or_else(|| bad("is not a URL: unclosed '['"))?;
            match tail.strip_prefix(':') {
                Some(p) => (h, port(p)?),
                None if tail.is_empty() => (h, default_port),
                None => return Err(bad("is not a URL")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, port(p)?),
                None => (rest, default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("is not a URL: it has no host"));
        }
        Ok(MqttUrl {
            scheme,
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        use MqttScheme::*;
        let ok: &[(&str, MqttScheme, &str, u16)] = &[
            ("mqtt://broker", Tcp, "broker", 1883),
            ("mqtt://broker/", Tcp, "broker", 1883),
            ("tcp://10.0.0.1:1884", Tcp, "10.0.0.1", 1884),
            ("mqtts://broker.example", Tls, "broker.example", 8883),
            ("ssl://b:9000", Tls, "b", 9000),
            ("mqtt://[::1]:1883", Tcp, "::1", 1883),
            ("mqtts://[fe80::1]", Tls, "fe80::1", 8883),
        ];
        for (url, scheme, host, port) in ok {
            let u = MqttUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((u.scheme, u.host.as_str(), u.port), (*scheme, *host, *port));
        }
        let bad: &[(&str, &str)] = &[
            ("http://broker:1883", "mqtt:// or mqtts://"),
            ("broker:1883", "mqtt:// or mqtts://"),
            ("mqtt://", "not a URL"),
            ("mqtt://:1883", "no host"),
            ("mqtt://broker:1883/path", "must not have a path"),
            ("mqtt://broker?x=1", "must not have a path"),
            ("mqtt://user:pw@broker", "credentials"),
            ("mqtt://broker:99999", "bad port"),
            ("mqtt://broker:0", "bad port"),
            ("mqtt://broker:x", "bad port"),
            ("mqtt://[::1", "unclosed"),
            ("mqtt://[::1]x", "not a URL"),
        ];
        for (url, fragment) in bad {
            let e = MqttUrl::parse(url).unwrap_err();
            assert!(e.contains(fragment), "{url}: {e}");
            assert!(e.starts_with(&format!("{url:?}")), "{url}: {e}");
        }
    }

    #[test]
    fn durations_and_sizes_name_their_key() {
        assert_eq!(duration("a.b", " 1m 30s "), Ok(Duration::from_secs(90)));
        let e = duration("probe[2].timeout", "3x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "probe[2].timeout: \"3x\" is not a duration (e.g. \"30s\", \"5m\")"
        );
        assert_eq!(
            duration_or("k", None, Duration::from_secs(3)),
            Ok(Duration::from_secs(3))
        );
        let sizes: &[(&str, Option<u64>)] = &[
            ("4096", Some(4096)),
            ("64MiB", Some(64 << 20)),
            ("512 KiB", Some(512 << 10)),
            ("64 MiB", Some(64 << 20)),
            ("512k", Some(512 << 10)),
            ("1.5MiB", Some(3 << 19)),
            ("-1", None),
            ("1GB", Some(1_000_000_000)),
            ("1.5k", Some(1536)),
            ("", None),
            ("MiB", None),
            ("12 parsecs", None),
            ("99999999999999999999", None),
            ("20000000000GiB", None),
        ];
        for (s, want) in sizes {
            assert_eq!(parse_bytes(s), *want, "{s:?}");
        }
        assert_eq!(
            bytes("buffer.max_bytes", "lots").unwrap_err().key,
            "buffer.max_bytes"
        );
    }
}
