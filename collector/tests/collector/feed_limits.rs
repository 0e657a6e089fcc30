//! The feed's connection limits, attacked over real sockets: a slow or
//! silent request head is closed after `http.header_read_timeout`; an idle
//! keep-alive connection after `http.idle_timeout`; a connection over
//! `http.max_connections` at once; a stream client that stops reading is
//! dropped and counted while another keeps receiving; and the real binary,
//! started with the usual soft file limit of 1,024, raises it and keeps
//! answering with 1,100 idle connections open.
//!
//! Timeouts here are real time (paused tokio time does not move the
//! kernel's sockets); the tests wait for the EOF itself and bound how long
//! it may take.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use muster_proto::BootId;
use muster_testkit::{KillOnDrop, Mosquitto, TempDir};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::harness::*;
use muster_testkit::{eventually, eventually_every, http};

/// Reads until the server closes the connection (EOF or reset); returns
/// how long that took from `since`. Fails past `within`.
async fn closed_after<R: AsyncReadExt + Unpin>(
    r: &mut R,
    since: Instant,
    within: Duration,
) -> Duration {
    let mut buf = vec![0u8; 64 * 1024];
    let fut = async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, fut)
        .await
        .unwrap_or_else(|_| panic!("the server did not close the connection within {within:?}"))
}

/// One keep-alive request on an open connection; the status and body.
async fn keep_alive_get(
    r: &mut BufReader<TcpStream>,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: collector\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    r.get_mut().write_all(req.as_bytes()).await.ok()?;
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_silent_head_is_closed_after_header_read_timeout() {
    let w = World::start_http("header_read_timeout = \"1s\"\nidle_timeout = \"60s\"", "").await;
    let addr = w.c().addr;
    let before = w
        .c()
        .metric("muster_http_refused_total{reason=\"header_timeout\"}")
        .await;

    // Connects and sends nothing.
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Slowloris: a head one byte every 100 ms, never finished. The bytes
    // keep coming; the clock runs from the connection's first byte.
    let slow = TcpStream::connect(addr).await.unwrap();
    let (mut slow_r, mut slow_w) = slow.into_split();
    let drip = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: collector\r\nX-Slow: ";
        let mut sent = 0usize;
        for b in head.iter().chain(std::iter::repeat(&b'a')) {
            if slow_w.write_all(&[*b]).await.is_err() {
                return sent;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    });

    let silent_after = closed_after(&mut silent, t0, Duration::from_secs(10)).await;
    let slow_after = closed_after(&mut slow_r, t0, Duration::from_secs(10)).await;
    let sent = drip.await.unwrap();
    assert!(
        silent_after >= Duration::from_millis(900) && silent_after < Duration::from_secs(5),
        "silent connection closed after {silent_after:?}"
    );
    assert!(
        slow_after >= Duration::from_millis(900) && slow_after < Duration::from_secs(5),
        "slow head closed after {slow_after:?}"
    );
    assert!(sent >= 5, "the slow client sent only {sent} bytes");

    // A normal client is served meanwhile, and the drops are counted.
    assert_eq!(http::get(addr, "/healthz", None).await.status, 200);
    let after = w
        .c()
        .metric("muster_http_refused_total{reason=\"header_timeout\"}")
        .await;
    assert!(after >= before + 2.0, "header_timeout {before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_refused() {
    let w = World::start("").await;
    let mut s = TcpStream::connect(w.c().addr).await.unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: collector\r\nX-Big: {}\r\n\r\n",
        "a".repeat(muster_collector::feed::server::MAX_HEAD_BYTES)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut got = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut got))
        .await
        .expect("the server answers an oversized head")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&got[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    // The header clock is long: what closes the connection is the idle one.
    let w = World::start_http("header_read_timeout = \"30s\"\nidle_timeout = \"1s\"", "").await;
    let addr = w.c().addr;
    let mut r = BufReader::new(TcpStream::connect(addr).await.unwrap());
    // Two requests on one connection: it is kept alive between them.
    for _ in 0..2 {
        let (status, _) = keep_alive_get(&mut r, "/api/v1/units", Some(FIRE))
            .await
            .expect("a response on the kept-alive connection");
        assert_eq!(status, 200);
    }
    let t0 = Instant::now();
    let idle = closed_after(&mut r, t0, Duration::from_secs(10)).await;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "idle connection closed after {idle:?}"
    );
    let closed = w.c().metric("muster_http_idle_closed_total").await;
    assert!(closed >= 1.0, "muster_http_idle_closed_total {closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_closed_at_once_and_counted() {
    let w = World::start_http("max_connections = 3\nheader_read_timeout = \"60s\"", "").await;
    let addr = w.c().addr;
    // Three kept-alive connections, each proven to hold a slot by an answer.
    // (A slot of the harness's closed readiness probe may take a moment to
    // come back: retry until answered.)
    let mut held = Vec::new();
    eventually("3 connections open", Duration::from_secs(10), async || {
        while held.len() < 3 {
            let mut r = BufReader::new(TcpStream::connect(addr).await.unwrap());
            match keep_alive_get(&mut r, "/healthz", None).await {
                Some((200, _)) => held.push(r),
                other => return Err(format!("{} held; then {other:?}", held.len())),
            }
        }
        Ok(())
    })
    .await;
    // The fourth is closed at once, with nothing written.
    let t0 = Instant::now();
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: collector\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection over the cap was not closed");
    assert!(
        got.is_empty(),
        "over the cap, the server answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        t0.elapsed()
    );
    // A held connection still works; once one is gone, a new one is served.
    let (status, _) = keep_alive_get(&mut held[0], "/healthz", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    held.clear();
    // The server frees the slots as it sees the closes: poll until served.
    let metrics = eventually("a slot back", Duration::from_secs(10), || async {
        let mut r = BufReader::new(TcpStream::connect(addr).await.unwrap());
        match keep_alive_get(&mut r, "/metrics", Some(ADMIN)).await {
            Some((200, body)) => Ok(body),
            other => Err(other),
        }
    })
    .await;
    let m: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("muster_http_refused_total{reason=\"connection_cap\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no connection_cap count in\n{metrics}"));
    assert!(m >= 1.0, "connection_cap {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_stops_reading_is_dropped_and_the_others_keep_receiving() {
    let w = World::start_http("sse_buffer = 4\nsse_send_timeout = \"1s\"", "").await;
    let c = w.c();
    let mut healthy = c.stream(ADMIN).await;

    // The stuck client: a small receive window, and it never reads.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stuck = sock.connect(c.addr).await.unwrap();
    stuck
        .write_all(
            format!("GET /api/v1/stream HTTP/1.1\r\nHost: collector\r\nAuthorization: Bearer {ADMIN}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    // Subscribed: the stuck client and the healthy one.
    c.wait_metric("muster_sse_clients", |n| n >= 2.0).await;

    // Transitions until the stuck client's queue has stayed full: a unit
    // going offline and back, over and over.
    let a = w.agent("agent").await;
    let u = unit("metro-fire", "S1");
    let boot = BootId(7);
    let mut conn = 0u32;
    let mut toggles = 0u32;
    eventually_every(
        "the stuck client dropped",
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            if c.metric("muster_sse_dropped_total").await >= 1.0 {
                return Ok(());
            }
            for _ in 0..50 {
                conn += 1;
                a.presence(&u, online(boot, conn, T0 + conn as u64, true))
                    .await;
                a.presence(&u, online(boot, conn, T0 + conn as u64, false))
                    .await;
                toggles += 1;
            }
            Err(format!("not yet, after {toggles} toggles"))
        },
    )
    .await;
    // Its connection is closed (what it had buffered drains, then EOF)...
    closed_after(&mut stuck, Instant::now(), Duration::from_secs(10)).await;
    // The dropped client is no longer counted.
    c.wait_metric("muster_sse_clients", |n| n == 1.0).await;
    // ...while the healthy client saw the transitions and still gets new ones.
    let (_, seen) = healthy
        .wait_for(Duration::from_millis(500), |_| false)
        .await;
    let transitions = seen.iter().filter(|e| e.event == "transition").count();
    assert!(
        transitions > 8,
        "healthy client saw {transitions} transitions of {toggles} toggles"
    );
    conn += 1;
    a.presence(&u, online(boot, conn, T0 + conn as u64, true))
        .await;
    conn += 1;
    a.presence(&u, online(boot, conn, T0 + conn as u64, false))
        .await;
    let (ev, _) = healthy
        .wait_for(Duration::from_secs(10), |e| e.event == "transition")
        .await;
    assert!(ev.is_some(), "the healthy client stopped receiving");
}

/// `LimitNOFILE=` of the packaged collector unit.
fn packaged_limit_nofile() -> u64 {
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/deb/collector/muster-collector.service"
    );
    std::fs::read_to_string(unit)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the packaged unit sets LimitNOFILE=")
        .trim()
        .parse()
        .expect("LimitNOFILE is a number")
}

#[test]
fn the_packaged_file_limit_fits_the_broker_and_the_feed() {
    // The embedded broker's clients at its default cap (three descriptors
    // each), the feed's cap, and slack for the store, the MQTT client,
    // webhooks and logs.
    const SLACK: u64 = 1_024;
    let broker = muster_collector::config::BrokerConfig::default().max_connections
        * muster_collector::broker::FDS_PER_CLIENT;
    let need = broker as u64 + muster_collector::config::DEFAULT_MAX_CONNECTIONS as u64 + SLACK;
    let got = packaged_limit_nofile();
    assert!(got >= need, "LimitNOFILE={got} < {need}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_with_a_soft_limit_of_1024_answers_through_1100_idle_connections() {
    // This test holds 1,100 sockets itself.
    muster_collector::fdlimit::raise();
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = nofile
        .maximum
        .unwrap_or(u64::MAX)
        .min(packaged_limit_nofile());
    assert!(
        hard >= 4096 && nofile.current.unwrap_or(u64::MAX) >= 2048,
        "this test needs a hard open-file limit of at least 4096 (ulimit -Hn), got {nofile:?}"
    );

    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("collector.toml");
    // Every [http] limit at its default but the head timeout, long enough
    // that no idle connection is closed during the test.
    let text = collector_config(&broker, &dir.path().join("store"), "collector-fd")
        .set_str("http", "header_read_timeout", "5m")
        .render();
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("stderr.log");
    // The soft limit systemd leaves by default (1,024) under the packaged
    // hard limit (or this machine's, if lower): the collector must raise it.
    let mut child = KillOnDrop(
        Command::new("prlimit")
            .arg(format!("--nofile=1024:{hard}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_muster-collector"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start muster-collector under prlimit (util-linux)"),
    );
    let out = child.stdout.take().unwrap();
    let addr: SocketAddr =
        tokio::task::spawn_blocking(move || muster_testkit::collector_listen_addr(out))
            .await
            .unwrap()
            .expect("muster-collector exited before saying where it listens");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .map(|v| v.parse::<u64>().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(open_files, [hard, hard], "soft limit not raised: {limits}");
    // The log line, without its colours.
    let raw = std::fs::read_to_string(&log).unwrap();
    let mut logged = String::new();
    let mut rest = raw.as_str();
    while let Some(i) = rest.find('\x1b') {
        logged.push_str(&rest[..i]);
        rest = rest[i..].split_once('m').map_or("", |(_, r)| r);
    }
    logged.push_str(rest);
    assert!(
        logged.contains("Open-file limit raised")
            && logged.contains("was=1024")
            && logged.contains(&format!("soft={hard}")),
        "{logged}"
    );

    let mut idle = Vec::with_capacity(1_100);
    for _ in 0..1_100 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // With all of them open, the feed answers: health, an agency's units,
    // and the metrics that count the connections.
    for _ in 0..4 {
        assert_eq!(http::get(addr, "/healthz", None).await.status, 200);
        let r = http::get(addr, "/api/v1/units", Some(FIRE)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = http::get(addr, "/metrics", Some(ADMIN)).await.text();
    let open: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("muster_http_connections "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open >= 1_100.0, "muster_http_connections {open}");
    let errors: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("muster_http_accept_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(errors, 0.0);
    drop(idle);
}
