//! `[network]` (issue 12): defaults, the shipped configs, and every error
//! names its key.

use std::time::Duration;

use muster_agent::config::{CellularMode, Config, ConfigError};
use muster_proto::SamplerFamily;

const BASE: &str =
    "agency = \"metro-fire\"\nunit_id = \"E12\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";

fn parse(extra: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{BASE}{extra}"))
}

#[test]
fn defaults_sample_every_network_family() {
    let c = parse("").unwrap();
    for f in [
        SamplerFamily::Route,
        SamplerFamily::Wifi,
        SamplerFamily::Cellular,
        SamplerFamily::Vpn,
    ] {
        assert!(c.sampling.enabled(f), "{f:?}");
    }
    let n = &c.sampling.network;
    assert!(n.vpn.is_empty());
    assert_eq!(n.cellular, CellularMode::Auto);
    assert_eq!(n.cellular_timeout, Duration::from_secs(1));
}

#[test]
fn a_full_network_section() {
    let c = parse(
        "[sampling]\ncollectors = [\"route\", \"vpn\"]\n[network]\nvpn = [\"tun0\", \"wg*\", \"NetMotion*\"]\ncellular = \"required\"\ncellular_timeout = \"250ms\"\n",
    )
    .unwrap();
    assert_eq!(
        c.sampling.collectors,
        vec![SamplerFamily::Route, SamplerFamily::Vpn]
    );
    let n = &c.sampling.network;
    assert_eq!(n.vpn, vec!["tun0", "wg*", "NetMotion*"]);
    assert_eq!(n.cellular, CellularMode::Required);
    assert_eq!(n.cellular_timeout, Duration::from_millis(250));
    assert_eq!(
        parse("[network]\ncellular = \"off\"")
            .unwrap()
            .sampling
            .network
            .cellular,
        CellularMode::Off
    );
}

#[test]
fn the_shipped_configs_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for p in [
        "packaging/deb/agent/agent.toml",
        "packaging/msi/agent.toml",
        "agent/config/agent.toml",
    ] {
        let text = std::fs::read_to_string(root.join(p)).unwrap();
        assert!(text.contains("[network]"), "{p}");
        // Only the [network] section: the rest may need files of the target machine.
        let section: String = text
            .split("\n[")
            .find(|s| s.starts_with("network]"))
            .map(|s| format!("[{s}"))
            .unwrap();
        let c = parse(&section).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(c.sampling.network.cellular, CellularMode::Auto, "{p}");
    }
}

#[test]
fn errors_name_the_key() {
    let many: Vec<String> = (0..17).map(|i| format!("\"tun{i}\"")).collect();
    let many = format!("[network]\nvpn = [{}]", many.join(", "));
    let long = format!("[network]\nvpn = [\"tun0\", \"{}\"]", "x".repeat(65));
    let cases: &[(&str, &str, &str)] = &[
        (
            "[network]\nvpn = [\"tun0\", \"\"]",
            "network.vpn[1]",
            "not an interface name",
        ),
        (&long, "network.vpn[1]", "1..=64"),
        ("[network]\nvpn = [\"../etc\"]", "network.vpn[0]", "no '/'"),
        (&many, "network.vpn", "at most 16"),
        (
            "[network]\ncellular = \"maybe\"",
            "network.cellular",
            "\"maybe\"",
        ),
        (
            "[network]\ncellular_timeout = \"soon\"",
            "network.cellular_timeout",
            "not a duration",
        ),
        (
            "[network]\ncellular_timeout = \"10ms\"",
            "network.cellular_timeout",
            "between 100ms and 10s",
        ),
        (
            "[network]\ncellular_timeout = \"1m\"",
            "network.cellular_timeout",
            "between 100ms and 10s",
        ),
        (
            "[sampling]\ncollectors = [\"modem\"]",
            "sampling.collectors[0]",
            "route, wifi, cellular, vpn",
        ),
    ];
    for (text, key, frag) in cases {
        let e = parse(text).expect_err(text);
        assert_eq!(e.key(), Some(*key), "{text}: {e}");
        assert!(e.to_string().contains(frag), "{text}: {e}");
    }
    let e = parse("[network]\nvpnz = []").unwrap_err();
    assert!(e.to_string().contains("vpnz"), "{e}");
}
