//! Config parsing and validation: bad keys, bad durations, bad URLs, and every
//! error names its key.

use std::time::Duration;

use muster_agent::buffer::settings::FullPolicy;
use muster_agent::config::{Config, ConfigError, LogTarget, ProbeTarget};
use muster_proto::SamplerFamily;

const BASE: &str =
    "agency = \"metro-fire\"\nunit_id = \"E12\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";

fn parse(extra: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{BASE}{extra}"))
}

#[test]
fn the_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.unit.to_string(), "metro-fire/E12");
    assert_eq!(c.probes.len(), 4);
    assert_eq!(c.sampling.interval, Duration::from_secs(5));
    assert_eq!(c.sampling.processes, vec!["cadclient", "cadupdater"]);
    assert_eq!(c.buffer.max_bytes, 64 << 20);
    assert_eq!(c.report.unwrap().listen.to_string(), "127.0.0.1:8125");
}

#[test]
fn defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.mqtt.brokers, [("127.0.0.1".to_owned(), 1883)]);
    assert!(!c.mqtt.tls);
    assert_eq!(c.mqtt.client_id, "muster-metro-fire-E12");
    assert_eq!(c.mqtt.keepalive, Duration::from_secs(30));
    assert_eq!(c.buffer.max_bytes, 64 << 20);
    assert_eq!(c.buffer.on_full, FullPolicy::DropOldest);
    assert_eq!(c.buffer.path, c.data_dir.join("buffer"));
    assert_eq!(c.sampling.interval, Duration::from_secs(5));
    assert_eq!(c.sampling.collectors.len(), 11);
    assert_eq!(c.channel_capacity, 1024);
    assert!(c.report.is_none());
    assert_eq!(c.log.target, LogTarget::Stderr);
    assert!(c.probes.is_empty());
}

#[test]
fn a_full_config_is_typed() {
    let c = parse(
        r#"
[buffer]
path = "/tmp/b"
max_bytes = "8MiB"
max_age = "2h"
on_full = "thin"
thin_keep_one_in = 5
flush_interval = "250ms"
[uplink]
max_inflight = 4
batch_max_bytes = "32KiB"
replay_bytes_per_sec = "16KiB"
reconnect_min = "2s"
reconnect_max = "2m"
[sampling]
interval = "1s"
processes = ["cadclient.exe"]
collectors = ["cpu", "memory"]
[log]
to = "file"
dir = "/tmp/logs"
rotation = "hourly"
max_files = 3
[[probe]]
name = "cad-api"
kind = "https"
target = "https://cad.example.org:8443/health?deep=1"
expect_status = "200-204"
body_contains = "ok"
[[probe]]
name = "gw"
kind = "icmp"
target = "10.1.2.3"
count = 5
"#,
    )
    .unwrap();
    assert_eq!(c.buffer.max_bytes, 8 << 20);
    assert_eq!(c.buffer.max_age, Some(Duration::from_secs(7200)));
    assert_eq!(c.buffer.on_full, FullPolicy::Thin { keep_one_in: 5 });
    assert_eq!(c.buffer.flush_interval, Duration::from_millis(250));
    assert_eq!(c.uplink.max_inflight, 4);
    assert_eq!(c.uplink.batch_max_bytes, 32 * 1024);
    assert_eq!(c.uplink.replay_bytes_per_sec, Some(16 * 1024));
    assert_eq!(c.uplink.reconnect_max, Duration::from_secs(120));
    assert_eq!(
        c.sampling.collectors,
        vec![SamplerFamily::Cpu, SamplerFamily::Memory]
    );
    assert!(matches!(c.log.target, LogTarget::File { max_files: 3, .. }));
    let ProbeTarget::Http(h) = &c.probes[0].target else {
        panic!()
    };
    assert!(h.tls);
    assert_eq!((h.host.as_str(), h.port), ("cad.example.org", 8443));
    assert!(h.status_ok(204) && !h.status_ok(205));
    assert_eq!(c.probes[0].interval, Duration::from_secs(30));
    assert_eq!(c.probes[0].timeout, Duration::from_secs(5));
    assert!(matches!(
        c.probes[1].target,
        ProbeTarget::Icmp { count: 5, .. }
    ));
}

#[test]
fn mqtts_and_auth() {
    let dir = crate::servers::scratch("cfg");
    let pw = dir.join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let c = Config::parse(&format!(
        "agency = \"a\"\nunit_id = \"u\"\n[mqtt]\nurl = \"mqtts://broker.example.org\"\nusername = \"u\"\npassword_file = {:?}\n",
        pw.display().to_string()
    ))
    .unwrap();
    assert!(c.mqtt.tls);
    assert_eq!(c.mqtt.brokers, [("broker.example.org".to_owned(), 8883)]);
    assert_eq!(c.mqtt.password.as_deref(), Some("s3cret"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// (config text after the base, the key the error must name, a fragment of the message)
const BAD: &[(&str, &str, &str)] = &[
    (
        "[sampling]\ninterval = \"5x\"",
        "sampling.interval",
        "\"5x\" is not a duration",
    ),
    (
        "[sampling]\ninterval = \"100ms\"",
        "sampling.interval",
        "between 1s",
    ),
    (
        "[sampling]\ncollectors = [\"gpu\"]",
        "sampling.collectors[0]",
        "\"gpu\"",
    ),
    (
        "[sampling]\nprocesses = [\"\"]",
        "sampling.processes[0]",
        "non-empty",
    ),
    (
        "[buffer]\nmax_bytes = \"64 parsecs\"",
        "buffer.max_bytes",
        "not a byte size",
    ),
    (
        "[buffer]\nmax_bytes = \"1KiB\"",
        "buffer.max_bytes",
        "at least 1MiB",
    ),
    (
        "[buffer]\non_full = \"panic\"",
        "buffer.on_full",
        "\"panic\"",
    ),
    (
        "[buffer]\nthin_keep_one_in = 3",
        "buffer.thin_keep_one_in",
        "only applies",
    ),
    (
        "[buffer]\nmax_age = \"soon\"",
        "buffer.max_age",
        "not a duration",
    ),
    (
        "[uplink]\nreconnect_min = \"10s\"\nreconnect_max = \"1s\"",
        "uplink.reconnect_max",
        "reconnect_min",
    ),
    ("[uplink]\nmax_inflight = 0", "uplink.max_inflight", ">= 1"),
    (
        "[uplink]\nack_timeout = \"x\"",
        "uplink.ack_timeout",
        "not a duration",
    ),
    (
        "[report]\nlisten = \"0.0.0.0:8125\"",
        "report.listen",
        "loopback",
    ),
    (
        "[report]\nlisten = \"localhost\"",
        "report.listen",
        "not an address",
    ),
    ("[log]\nto = \"syslog\"", "log.to", "\"syslog\""),
    ("[log]\nlevel = \"[[[\"", "log.level", "not a log filter"),
    (
        "[[probe]]\nkind = \"http\"\ntarget = \"http://a/\"",
        "probe[0].name",
        "missing",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"gopher\"\ntarget = \"a\"",
        "probe[0].kind",
        "\"gopher\"",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"http\"\ntarget = \"ftp://a/\"",
        "probe[0].target",
        "http:// or https://",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"http\"\ntarget = \"not a url\"",
        "probe[0].target",
        "not a URL",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"http\"\ntarget = \"http://a/\"\ntimeout = \"3x\"",
        "probe[0].timeout",
        "\"3x\" is not a duration",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"http\"\ntarget = \"http://a/\"\ninterval = \"5s\"\ntimeout = \"10s\"",
        "probe[0].timeout",
        "longer than the probe's interval",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"http\"\ntarget = \"http://a/\"\nexpect_status = 999",
        "probe[0].expect_status",
        "999",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"http\"\ntarget = \"http://a/\"\nca_file = \"/c.pem\"",
        "probe[0].ca_file",
        "https://",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"https\"\ntarget = \"https://a/\"\nca_file = \"/no/such/ca.pem\"",
        "probe[0].ca_file",
        "/no/such/ca.pem",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"tcp\"\ntarget = \"a\"",
        "probe[0].target",
        "not host:port",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"http\"\ntarget = \"http://a:70000/\"",
        "probe[0].target",
        "bad port",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"tcp\"\ntarget = \"a:80\"\nbody_contains = \"x\"",
        "probe[0].body_contains",
        "only applies to http",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"dns\"\ntarget = \"bad name!\"",
        "probe[0].target",
        "not a host name",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"icmp\"\ntarget = \"a\"\ncount = 0",
        "probe[0].count",
        "between 1 and 20",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"dns\"\ntarget = \"a\"\n[[probe]]\nname = \"x\"\nkind = \"dns\"\ntarget = \"b\"",
        "probe[1].name",
        "used by another probe",
    ),
    (
        "[[probe]]\nname = \"x\"\nkind = \"dns\"\ntarget = \"a\"\n[[probe]]\nname = \"y\"\nkind = \"dns\"\ntarget = \"b\"\ntimeout = \"0s\"",
        "probe[1].timeout",
        "> 0",
    ),
    // Labels (issue 16): the wire's rules, the key named.
    (
        "[labels]\nStation = \"7\"",
        "labels.Station",
        "label key \"Station\"",
    ),
    (
        "[labels]\n7th = \"x\"",
        "labels.7th",
        "starting with a letter",
    ),
    (
        "[labels]\n\"station 7\" = \"x\"",
        "labels.\"station 7\"",
        "label key",
    ),
    (
        "[labels]\nstation_with_a_very_long_name_xyz = \"x\"",
        "labels.station_with_a_very_long_name_xyz",
        "1 to 32",
    ),
    ("[labels]\nstation = 7", "labels.station", "station = \"7\""),
    (
        "[labels]\nstation = [\"7\"]",
        "labels.station",
        "must be a string",
    ),
    (
        "[labels]\nrole = \"patrol\\u0007\"",
        "labels.role",
        "no control characters",
    ),
    (
        "[labels]\nrole = \"pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp\"",
        "labels.role",
        "at most 64 characters",
    ),
    // [cad] (issue 16)
    (
        "[cad]\nversion_file = \"/opt/cad/VERSION\"\nversion_command = [\"/opt/cad/bin/cad\", \"--version\"]",
        "cad.version_command",
        "set only one of cad.version_file, cad.version_command",
    ),
    (
        "[cad]\nversion_file = \"VERSION\"",
        "cad.version_file",
        "not an absolute path",
    ),
    (
        "[cad]\nversion_command = []",
        "cad.version_command",
        "1 to 32 strings",
    ),
    (
        "[cad]\nversion_command = [\"cad\", \"--version\"]",
        "cad.version_command[0]",
        "not looked up in PATH",
    ),
    (
        "[cad]\nversion_command = [\"/bin/cad\", \"a\\u0000b\"]",
        "cad.version_command[1]",
        "without NUL",
    ),
    (
        "[cad]\nversion_timeout = \"5s\"",
        "cad.version_timeout",
        "only applies with cad.version_file",
    ),
    (
        "[cad]\nversion_refresh = \"5m\"",
        "cad.version_refresh",
        "only applies with",
    ),
    (
        "[cad]\nversion_file = \"/v\"\nversion_timeout = \"50ms\"",
        "cad.version_timeout",
        "between 100ms and 60s",
    ),
    (
        "[cad]\nversion_file = \"/v\"\nversion_timeout = \"soon\"",
        "cad.version_timeout",
        "not a duration",
    ),
    (
        "[cad]\nversion_file = \"/v\"\nversion_refresh = \"25h\"",
        "cad.version_refresh",
        "between 1s and 24h",
    ),
    (
        "[cad]\nversion_file = \"/v\"\nversion_refresh = \"2s\"\nversion_timeout = \"2s\"",
        "cad.version_timeout",
        "shorter than cad.version_refresh",
    ),
];

#[test]
fn bad_values_name_their_key() {
    for (extra, key, fragment) in BAD {
        let e = parse(extra).expect_err(extra);
        assert_eq!(e.key(), Some(*key), "{extra:?}: {e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{key}: ")), "{msg}");
        assert!(
            msg.contains(fragment),
            "{extra:?}: {msg:?} lacks {fragment:?}"
        );
    }
}

#[test]
fn bad_mqtt_urls() {
    let cases: &[(&str, &str)] = &[
        ("http://broker:1883", "mqtt:// or mqtts://"),
        ("mqtt://", "not a URL"),
        ("mqtt://broker:1883/path", "must not have a path"),
        ("broker:1883", "mqtt:// or mqtts://"),
        ("mqtt://broker:99999", "bad port"),
        ("mqtt://broker:0", "bad port"),
    ];
    for (url, fragment) in cases {
        let e = Config::parse(&format!(
            "agency = \"a\"\nunit_id = \"u\"\n[mqtt]\nurl = \"{url}\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key(), Some("mqtt.url"), "{url}: {e}");
        assert!(e.to_string().contains(fragment), "{url}: {e}");
    }
    let e = Config::parse("agency = \"a\"\nunit_id = \"u\"\n").unwrap_err();
    assert_eq!(e.key(), Some("mqtt.url"));
}

#[test]
fn a_cluster_is_a_list_of_brokers_tried_in_order() {
    let c = Config::parse(
        "agency = \"a\"\nunit_id = \"u\"\n[mqtt]\nurls = [\"mqtt://n1:4222\", \"mqtt://[::1]:1884\", \"mqtt://n3\"]\n",
    )
    .unwrap();
    assert_eq!(
        c.mqtt.brokers,
        [
            ("n1".to_owned(), 4222),
            ("::1".to_owned(), 1884),
            ("n3".to_owned(), 1883)
        ]
    );
    assert_eq!(c.mqtt.broker_list(), "n1:4222, [::1]:1884, n3:1883");
    let cases: &[(&str, &str)] = &[
        ("urls = []", "1 to 16 brokers"),
        (
            "urls = [\"mqtt://a\", \"mqtts://b\"]",
            "mixes mqtt:// and mqtts://",
        ),
        ("urls = [\"mqtt://a\", \"mqtt://a:1883\"]", "listed twice"),
        ("urls = [\"mqtt://a\", \"http://b\"]", "mqtt:// or mqtts://"),
        ("url = \"mqtt://a\"\nurls = [\"mqtt://b\"]", "not both"),
    ];
    for (mqtt, fragment) in cases {
        let e = Config::parse(&format!(
            "agency = \"a\"\nunit_id = \"u\"\n[mqtt]\n{mqtt}\n"
        ))
        .unwrap_err();
        assert_eq!(e.key(), Some("mqtt.urls"), "{mqtt}: {e}");
        assert!(e.to_string().contains(fragment), "{mqtt}: {e}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("\"mqtt://n{i}\"")).collect();
    let e = Config::parse(&format!(
        "agency = \"a\"\nunit_id = \"u\"\n[mqtt]\nurls = [{}]\n",
        many.join(", ")
    ))
    .unwrap_err();
    assert!(e.to_string().contains("1 to 16 brokers"), "{e}");
}

#[test]
fn bad_identity_and_unknown_keys() {
    let e =
        Config::parse("agency = \"metro/fire\"\nunit_id = \"E12\"\n[mqtt]\nurl = \"mqtt://a\"\n")
            .unwrap_err();
    assert_eq!(e.key(), Some("agency"));
    let e = Config::parse("unit_id = \"E12\"\n[mqtt]\nurl = \"mqtt://a\"\n").unwrap_err();
    assert_eq!(e.key(), Some("agency"));

    // Unknown keys are refused wherever they are, and the message names them.
    for (extra, name) in [
        ("colour = \"red\"", "colour"),
        ("[sampling]\nintervall = \"5s\"", "intervall"),
        ("[mqtt2]\nurl = \"x\"", "mqtt2"),
        (
            "[[probe]]\nname = \"x\"\nkind = \"dns\"\ntarget = \"a\"\ntimeuot = \"1s\"",
            "timeuot",
        ),
    ] {
        let e = parse(extra).unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)), "{e}");
        assert!(e.to_string().contains(name), "{e}");
    }
    // A TOML syntax error.
    assert!(matches!(parse("[sampling\n"), Err(ConfigError::Parse(_))));
    // A missing file.
    assert!(matches!(
        Config::load(std::path::Path::new("/no/such/agent.toml")),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn enroll_section_is_validated() {
    let tok = "metro-fire-enrol-0123456789";
    let c = parse(&format!(
        "[enroll]\nurl = \"https://collector.example:8443/muster/\"\ntoken = \"{tok}\"\n"
    ))
    .unwrap();
    let e = c.enroll.unwrap();
    assert_eq!(
        (e.host.as_str(), e.port, e.tls),
        ("collector.example", 8443, true)
    );
    assert_eq!(e.path, "/muster/api/v1/enroll");
    assert_eq!(e.authority, "collector.example:8443");
    assert!(
        !format!("{e:?}").contains(tok),
        "the token stays out of Debug"
    );
    let e = parse(&format!(
        "[enroll]\nurl = \"http://10.0.0.5\"\ntoken = \"{tok}\"\n"
    ))
    .unwrap()
    .enroll
    .unwrap();
    assert_eq!(
        (e.port, e.tls, e.path.as_str()),
        (80, false, "/api/v1/enroll")
    );
    assert!(parse("").unwrap().enroll.is_none());

    let dir = muster_testkit::TempDir::new().unwrap();
    let tf = dir.path().join("enroll.token");
    std::fs::write(&tf, format!("{tok}\r\n")).unwrap();
    let e = parse(&format!(
        "[enroll]\nurl = \"http://c:8080\"\ntoken_file = {:?}\n",
        tf.display().to_string()
    ))
    .unwrap()
    .enroll
    .unwrap();
    assert_eq!(e.token, tok, "the token file is trimmed");

    let cases: &[(&str, &str)] = &[
        (
            "[enroll]\ntoken = \"metro-fire-enrol-0123456789\"\n",
            "enroll.url",
        ),
        (
            "[enroll]\nurl = \"mqtt://c\"\ntoken = \"metro-fire-enrol-0123456789\"\n",
            "enroll.url",
        ),
        (
            "[enroll]\nurl = \"http://c/?x=1\"\ntoken = \"metro-fire-enrol-0123456789\"\n",
            "enroll.url",
        ),
        (
            "[enroll]\nurl = \"http://u:p@c\"\ntoken = \"metro-fire-enrol-0123456789\"\n",
            "enroll.url",
        ),
        ("[enroll]\nurl = \"http://c\"\n", "enroll.token"),
        (
            "[enroll]\nurl = \"http://c\"\ntoken = \"short\"\n",
            "enroll.token",
        ),
        (
            "[enroll]\nurl = \"http://c\"\ntoken = \"has a space in it 0123\"\n",
            "enroll.token",
        ),
        (
            "[enroll]\nurl = \"http://c\"\ntoken = \"metro-fire-enrol-0123456789\"\ntoken_file = \"/x\"\n",
            "enroll.token_file",
        ),
        (
            "[enroll]\nurl = \"http://c\"\ntoken_file = \"/nonexistent/token\"\n",
            "enroll.token_file",
        ),
        (
            "[enroll]\nurl = \"http://c\"\ntoken = \"metro-fire-enrol-0123456789\"\nca_file = \"/etc/hostname\"\n",
            "enroll.ca_file",
        ),
        (
            "[enroll]\nurl = \"https://c\"\ntoken = \"metro-fire-enrol-0123456789\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "enroll.ca_file",
        ),
    ];
    for (extra, key) in cases {
        let e = parse(extra).unwrap_err();
        assert_eq!(e.key(), Some(*key), "{extra:?}: {e}");
    }
    let e =
        parse("[enroll]\nurl = \"http://c\"\ntoken = \"metro-fire-enrol-0123456789\"\nbogus = 1\n")
            .unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
}

#[test]
fn labels_and_the_cad_version_source_are_typed() {
    use muster_agent::config::{
        CadVersionSource, DEFAULT_VERSION_REFRESH, DEFAULT_VERSION_TIMEOUT,
    };
    // Top-level inline table, sorted by key; values as given (any script).
    let c = Config::parse(&format!(
        "labels = {{ station = \"7\", role = \"patrol – night\", a = \"\" }}\n{BASE}"
    ))
    .unwrap();
    let kv: Vec<(&str, &str)> = c
        .labels
        .iter()
        .map(|l| (l.key.as_str(), l.value.as_str()))
        .collect();
    assert_eq!(
        kv,
        [("a", ""), ("role", "patrol – night"), ("station", "7")]
    );
    assert_eq!(c.cad.version, None);
    // No labels, no [cad]: none and defaults.
    let d = parse("").unwrap();
    assert!(d.labels.is_empty());
    assert_eq!(d.cad.version_refresh, DEFAULT_VERSION_REFRESH);
    assert_eq!(DEFAULT_VERSION_REFRESH, Duration::from_secs(600));
    // A [labels] table is the same thing; 16 labels of 64 characters pass.
    let sixteen: String = (0..16)
        .map(|i| format!("k{i} = \"{}\"\n", "é".repeat(64)))
        .collect();
    assert_eq!(
        parse(&format!("[labels]\n{sixteen}")).unwrap().labels.len(),
        16
    );
    let e = parse(&format!("[labels]\n{sixteen}k16 = \"x\"\n")).unwrap_err();
    assert_eq!(e.key(), Some("labels"), "{e}");
    assert!(e.to_string().contains("17 labels; at most 16"), "{e}");

    let c = parse("[cad]\nversion_file = \"/opt/cad/VERSION\"").unwrap();
    assert_eq!(
        c.cad.version,
        Some(CadVersionSource::File("/opt/cad/VERSION".into()))
    );
    assert_eq!(c.cad.version_timeout, DEFAULT_VERSION_TIMEOUT);
    let c = parse(
        "[cad]\nversion_command = [\"/opt/cad/bin/cadclient\", \"--version\"]\nversion_timeout = \"2s\"\nversion_refresh = \"1m\"",
    )
    .unwrap();
    assert_eq!(
        c.cad.version,
        Some(CadVersionSource::Command(vec![
            "/opt/cad/bin/cadclient".into(),
            "--version".into()
        ]))
    );
    assert_eq!(
        (c.cad.version_timeout, c.cad.version_refresh),
        (Duration::from_secs(2), Duration::from_secs(60))
    );
    // A refresh shorter than the default timeout shortens the timeout.
    let c = parse("[cad]\nversion_file = \"/v\"\nversion_refresh = \"1s\"").unwrap();
    assert_eq!(c.cad.version_timeout, Duration::from_millis(500));
    let many: Vec<String> = (0..33).map(|i| format!("\"/a{i}\"")).collect();
    let e = parse(&format!("[cad]\nversion_command = [{}]", many.join(", "))).unwrap_err();
    assert_eq!(e.key(), Some("cad.version_command"), "{e}");
    // An executable's file version is read on Windows only.
    let exe = parse("[cad]\nexecutable = 'C:\\Program Files\\CAD\\cadclient.exe'");
    if cfg!(windows) {
        assert_eq!(
            exe.unwrap().cad.version,
            Some(CadVersionSource::Executable(
                r"C:\Program Files\CAD\cadclient.exe".into()
            ))
        );
    } else {
        let e = exe.unwrap_err();
        assert_eq!(e.key(), Some("cad.executable"), "{e}");
        assert!(e.to_string().contains("only on Windows"), "{e}");
    }
    // Unknown keys in [cad] are refused like everywhere else.
    let e = parse("[cad]\nversion_fiel = \"/v\"").unwrap_err();
    assert!(
        matches!(e, ConfigError::Parse(_)) && e.to_string().contains("version_fiel"),
        "{e}"
    );
}
