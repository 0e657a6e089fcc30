//! Every failure class of every probe kind, against real local servers.

use std::time::Duration;

use muster_agent::config::Config;
use muster_agent::probe::Probe;
use muster_proto::{ErrorClass, Outcome, ProbeResult};

use crate::servers::{self, Reply};

fn probe(body: &str) -> Probe {
    let toml = format!(
        "agency = \"metro-fire\"\nunit_id = \"E12\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[[probe]]\nname = \"p\"\n{body}"
    );
    let cfg = Config::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    Probe::new(cfg.probes[0].clone()).unwrap()
}

fn http_probe(target: &str, extra: &str) -> Probe {
    probe(&format!(
        "kind = \"http\"\ntarget = \"{target}\"\ninterval = \"10s\"\ntimeout = \"2s\"\n{extra}"
    ))
}

/// Sequential phases never add up to more than the total.
fn assert_consistent(r: &ProbeResult) {
    let p = &r.phases;
    let sum: u64 = [p.dns_us, p.connect_us, p.tls_us, p.ttfb_us]
        .iter()
        .map(|x| x.unwrap_or(0) as u64)
        .sum();
    assert!(sum <= p.total_us as u64, "phases {p:?} exceed the total");
}

fn fail(r: &ProbeResult) -> ErrorClass {
    match r.outcome {
        Outcome::Fail(c) => c,
        Outcome::Ok => panic!("expected a failure, got {r:?}"),
    }
}

#[tokio::test]
async fn http_ok_has_every_plain_phase() {
    let addr = servers::http(Reply::ok("status: healthy")).await;
    let p = http_probe(
        &format!("http://localhost:{}/health", addr.port()),
        "body_contains = \"healthy\"",
    );
    let r = p.run().await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.status, Some(200));
    assert!(r.phases.dns_us.is_some());
    assert!(r.phases.connect_us.is_some());
    assert!(r.phases.ttfb_us.is_some());
    assert_eq!(r.phases.tls_us, None);
    assert!(r.detail.is_empty());
    assert_consistent(&r);
}

#[tokio::test]
async fn http_ttfb_covers_a_slow_server() {
    let addr = servers::http(Reply {
        status: 200,
        body: "ok",
        delay: Duration::from_millis(300),
    })
    .await;
    let r = http_probe(&format!("http://127.0.0.1:{}/", addr.port()), "")
        .run()
        .await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert!(r.phases.ttfb_us.unwrap() >= 300_000, "{:?}", r.phases);
    assert_consistent(&r);
}

#[tokio::test]
async fn wrong_status_is_bad_status() {
    let addr = servers::http(Reply {
        status: 503,
        body: "down",
        delay: Duration::ZERO,
    })
    .await;
    let r = http_probe(&format!("http://127.0.0.1:{}/", addr.port()), "")
        .run()
        .await;
    assert_eq!(fail(&r), ErrorClass::BadStatus, "{r:?}");
    assert_eq!(r.status, Some(503));
    assert!(r.detail.contains("503"), "{}", r.detail);
    assert_consistent(&r);
}

#[tokio::test]
async fn expected_status_list_accepts_a_redirect_only_when_listed() {
    let addr = servers::http(Reply {
        status: 302,
        body: "",
        delay: Duration::ZERO,
    })
    .await;
    let url = format!("http://127.0.0.1:{}/", addr.port());
    let r = http_probe(&url, "expect_status = 200").run().await;
    assert_eq!(fail(&r), ErrorClass::BadStatus);
    let r = http_probe(&url, "expect_status = [200, 302]").run().await;
    assert_eq!(r.outcome, Outcome::Ok);
}

#[tokio::test]
async fn body_mismatch() {
    let addr = servers::http(Reply::ok("maintenance page")).await;
    let r = http_probe(
        &format!("http://127.0.0.1:{}/", addr.port()),
        "body_contains = \"healthy\"",
    )
    .run()
    .await;
    assert_eq!(fail(&r), ErrorClass::BodyMismatch, "{r:?}");
    assert_eq!(r.status, Some(200));
}

#[tokio::test]
async fn closed_port_is_refused() {
    let port = servers::closed_port();
    let r = http_probe(&format!("http://127.0.0.1:{port}/"), "")
        .run()
        .await;
    assert_eq!(fail(&r), ErrorClass::Refused, "{r:?}");
    let r = probe(&format!("kind = \"tcp\"\ntarget = \"127.0.0.1:{port}\""))
        .run()
        .await;
    assert_eq!(fail(&r), ErrorClass::Refused, "{r:?}");
}

#[tokio::test]
async fn silent_server_is_a_timeout_naming_the_step() {
    let addr = servers::silent().await;
    let p = probe(&format!(
        "kind = \"http\"\ntarget = \"http://127.0.0.1:{}/\"\ntimeout = \"300ms\"",
        addr.port()
    ));
    let r = p.run().await;
    assert_eq!(fail(&r), ErrorClass::Timeout, "{r:?}");
    assert!(
        r.detail.contains("waiting for the response"),
        "{}",
        r.detail
    );
    assert!(r.phases.total_us >= 300_000);
    assert!(r.phases.connect_us.is_some());
    assert_consistent(&r);

    // The same server as https: the handshake never completes.
    let p = probe(&format!(
        "kind = \"http\"\ntarget = \"https://127.0.0.1:{}/\"\ntimeout = \"300ms\"",
        addr.port()
    ));
    let r = p.run().await;
    assert_eq!(fail(&r), ErrorClass::Timeout, "{r:?}");
    assert!(r.detail.contains("TLS handshake"), "{}", r.detail);
}

#[tokio::test]
async fn unresolvable_name_is_dns() {
    let r = http_probe("http://no-such-host.invalid/", "").run().await;
    assert_eq!(fail(&r), ErrorClass::Dns, "{r:?}");
    let r = probe("kind = \"dns\"\ntarget = \"no-such-host.invalid\"")
        .run()
        .await;
    assert_eq!(fail(&r), ErrorClass::Dns, "{r:?}");
    let r = probe("kind = \"tcp\"\ntarget = \"no-such-host.invalid:80\"")
        .run()
        .await;
    assert_eq!(fail(&r), ErrorClass::Dns, "{r:?}");
}

#[tokio::test]
async fn reset_mid_request() {
    let addr = servers::resetting().await;
    let r = http_probe(&format!("http://127.0.0.1:{}/", addr.port()), "")
        .run()
        .await;
    assert_eq!(fail(&r), ErrorClass::Reset, "{r:?}");
}

#[tokio::test]
async fn non_http_answer_is_protocol() {
    let addr = servers::garbage().await;
    let r = http_probe(&format!("http://127.0.0.1:{}/", addr.port()), "")
        .run()
        .await;
    assert_eq!(fail(&r), ErrorClass::Protocol, "{r:?}");
}

#[tokio::test]
async fn self_signed_certificate_is_tls_unless_trusted() {
    let dir = servers::scratch("tls");
    let cert = servers::self_signed(&dir);
    let addr = servers::https(&cert, Reply::ok("ok")).await;
    let url = format!("https://localhost:{}/", addr.port());

    // Built-in web roots: the self-signed certificate is refused.
    let r = http_probe(&url, "").run().await;
    assert_eq!(fail(&r), ErrorClass::Tls, "{r:?}");
    assert!(r.detail.contains("TLS"), "{}", r.detail);

    // The probe's own CA file: trusted, every phase, days to expiry.
    let r = http_probe(
        &url,
        &format!("ca_file = {:?}", cert.pem_file.display().to_string()),
    )
    .run()
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    let p = r.phases;
    assert!(
        p.dns_us.is_some() && p.connect_us.is_some() && p.tls_us.is_some() && p.ttfb_us.is_some()
    );
    assert_consistent(&r);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (y, m, d) = cert.not_after;
    // Days from the civil date, computed independently of the agent's parser.
    let expiry = days_since_epoch(y, m as u32, d as u32) * 86_400;
    let want = (expiry - now).div_euclid(86_400) as i32;
    assert_eq!(r.cert_days_left, Some(want));

    // Explicitly insecure: accepted.
    let r = http_probe(&url, "insecure_skip_verify = true").run().await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");

    // https:// to a plain HTTP server: a TLS failure, not a hang.
    let plain = servers::http(Reply::ok("ok")).await;
    let r = http_probe(&format!("https://localhost:{}/", plain.port()), "")
        .run()
        .await;
    assert_eq!(fail(&r), ErrorClass::Tls, "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn days_since_epoch(y: i32, m: u32, d: u32) -> i64 {
    let mut days = 0i64;
    for yy in 1970..y {
        days += if (yy % 4 == 0 && yy % 100 != 0) || yy % 400 == 0 {
            366
        } else {
            365
        };
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    for md in &month_days[..(m - 1) as usize] {
        days += *md as i64;
    }
    days + (d - 1) as i64
}

#[tokio::test]
async fn tcp_connect_time() {
    let addr = servers::silent().await;
    let r = probe(&format!(
        "kind = \"tcp\"\ntarget = \"localhost:{}\"",
        addr.port()
    ))
    .run()
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert!(r.phases.connect_us.is_some() && r.phases.dns_us.is_some());
    assert_consistent(&r);
}

#[tokio::test]
async fn dns_resolves_localhost() {
    let r = probe("kind = \"dns\"\ntarget = \"localhost\"").run().await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert!(r.addrs.iter().any(|a| a.is_loopback()), "{:?}", r.addrs);
    assert_eq!(r.phases.dns_us, Some(r.phases.total_us));
}

#[tokio::test]
async fn icmp_to_loopback() {
    let r = probe("kind = \"icmp\"\ntarget = \"127.0.0.1\"\ncount = 3\ntimeout = \"3s\"")
        .run()
        .await;
    match r.outcome {
        Outcome::Ok => {
            let s = r.icmp.expect("stats");
            assert_eq!((s.sent, s.lost), (3, 0), "{s:?}");
            assert!(
                s.min_us.unwrap() <= s.avg_us.unwrap() && s.avg_us.unwrap() <= s.max_us.unwrap()
            );
        }
        // Without CAP_NET_RAW and outside ping_group_range the failure must say so.
        Outcome::Fail(ErrorClass::Permission) => {
            assert!(r.detail.contains("ping_group_range"), "{}", r.detail);
            panic!("this test host allows no ICMP socket: {}", r.detail);
        }
        Outcome::Fail(c) => panic!("icmp to loopback failed: {c:?} {}", r.detail),
    }
}
