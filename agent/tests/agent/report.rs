//! The CAD client's self-report endpoint, over a real loopback UDP socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_agent::clock::{Clock, SystemClock};
use muster_agent::report::{self, ReportStats};
use muster_agent::sample::DropCounter;
use muster_proto::{ErrorClass, Outcome, Payload, ProbeKind};
use tokio::sync::{mpsc, watch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_become_reported_results() {
    let sock = report::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stats = Arc::new(ReportStats::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let task = tokio::spawn(report::serve(
        sock,
        50,
        tx,
        clock,
        Arc::new(DropCounter::default()),
        stats.clone(),
        stop_rx,
    ));

    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"cad.login:734|ms|#ok", addr).unwrap();
    client
        .send_to(b"cad.search:5012.5|ms|#fail,status:504\nnot a line\n", addr)
        .unwrap();

    let mut got = Vec::new();
    for _ in 0..2 {
        let o = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let Payload::Probe(p) = o.payload else {
            panic!()
        };
        got.push(p);
    }
    assert_eq!(got[0].name, "cad.login");
    assert_eq!(got[0].kind, ProbeKind::Reported);
    assert_eq!(got[0].outcome, Outcome::Ok);
    assert_eq!(got[0].phases.total_us, 734_000);
    assert_eq!(got[1].outcome, Outcome::Fail(ErrorClass::Reported));
    assert_eq!(got[1].status, Some(504));
    muster_testkit::wait_until("malformed line counted", Duration::from_secs(5), || {
        stats.malformed.load(Ordering::Relaxed) == 1
    });
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);

    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("endpoint stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_is_counted_not_forwarded() {
    let sock = report::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let stats = Arc::new(ReportStats::default());
    tokio::spawn(report::serve(
        sock,
        3,
        tx,
        Arc::new(SystemClock),
        Arc::new(DropCounter::default()),
        stats.clone(),
        stop_rx,
    ));
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let burst: String = (0..10).map(|i| format!("t{i}:1|ms\n")).collect();
    client.send_to(burst.as_bytes(), addr).unwrap();
    muster_testkit::wait_until("burst handled", Duration::from_secs(5), || {
        stats.accepted.load(Ordering::Relaxed) + stats.rate_limited.load(Ordering::Relaxed) == 10
    });
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 3);
    assert_eq!(stats.rate_limited.load(Ordering::Relaxed), 7);
    for _ in 0..3 {
        assert!(rx.recv().await.is_some());
    }
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn refuses_a_non_loopback_address() {
    let e = report::bind("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a loopback"), "{e}");
}
