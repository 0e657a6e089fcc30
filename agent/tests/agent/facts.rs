//! The unit's facts (issue 16): the CAD client's version read from a real
//! file and a real command, bounded in time and bytes, and the facts task
//! that sends them at start and only on change, waiting for room rather
//! than dropping.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_agent::clock::SystemClock;
use muster_agent::config::{CadConfig, CadVersionSource};
use muster_agent::facts::{self, cad};
use muster_proto::{Label, Payload, UnitFacts};
use muster_testkit::program;
use tokio::sync::{mpsc, watch};

fn command(argv: &[&str]) -> CadVersionSource {
    let mut v: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    v[0] = program(argv[0]);
    CadVersionSource::Command(v)
}

async fn read(source: &CadVersionSource, timeout: Duration) -> Result<String, String> {
    cad::read(source, timeout).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_version_command_is_bounded_in_time_and_output() {
    let t = Duration::from_secs(10);
    // (argv, the version or a fragment of the error)
    let cases: &[(&[&str], Result<&str, &str>)] = &[
        (&["printf", "7.4.1\\nbuilt 2026-01-01\\n"], Ok("7.4.1")),
        (
            &["printf", "  CAD Client 7.4.1 (x64)\\r\\n"],
            Ok("CAD Client 7.4.1 (x64)"),
        ),
        (
            &["echo", "7.4.1", "--", "a;b", "$HOME"],
            Ok("7.4.1 -- a;b $HOME"),
        ),
        (&["true"], Err("empty")),
        (&["false"], Err("exited with exit status: 1")),
        (&["sh", "-c", "echo 7.4.1; exit 3"], Err("exit status: 3")),
        // Endless output: at most MAX_READ bytes are read, then it is killed.
        (&["yes", "7.4.1"], Err("printed more than 4096 bytes")),
        (
            &["head", "-c", "4097", "/dev/zero"],
            Err("printed more than 4096 bytes"),
        ),
        (
            &["head", "-c", "4096", "/dev/zero"],
            Err("4096 characters; at most 128"),
        ),
    ];
    for (argv, want) in cases {
        let got = read(&command(argv), t).await;
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{argv:?}"),
            (Err(frag), Err(e)) => assert!(e.contains(frag), "{argv:?}: {e:?} lacks {frag:?}"),
            _ => panic!("{argv:?}: {got:?}, want {want:?}"),
        }
    }
    // Never a shell: the argument is one argument, not a command line.
    let echo = command(&["echo", "$(id -u)"]);
    assert_eq!(read(&echo, t).await, Ok("$(id -u)".into()));
    // A program that does not exist.
    let missing = CadVersionSource::Command(vec!["/no/such/cadclient".into()]);
    let e = read(&missing, t).await.unwrap_err();
    assert!(e.contains("cannot run /no/such/cadclient"), "{e}");
}

#[tokio::test]
async fn a_version_command_that_hangs_is_killed_at_its_timeout() {
    let dir = muster_testkit::TempDir::new().unwrap();
    let pid_file = dir.path().join("pid");
    // The shell execs sleep, so the pid it wrote is the one to be killed.
    let hang = command(&[
        "sh",
        "-c",
        &format!("echo $$ > {}; exec sleep 30", pid_file.display()),
    ]);
    let start = Instant::now();
    let e = read(&hang, Duration::from_millis(300)).await.unwrap_err();
    let took = start.elapsed();
    assert!(e.contains("no answer within 300ms"), "{e}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    muster_testkit::eventually(
        "the hung command is killed",
        Duration::from_secs(10),
        || async {
            // Gone, or a zombie on its way out.
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => Ok(()),
                Ok(s) if s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) => Ok(()),
                Ok(s) => Err(s),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_version_file_is_read_bounded() {
    let dir = muster_testkit::TempDir::new().unwrap();
    let t = Duration::from_secs(10);
    let file = |name: &str, body: &[u8]| -> CadVersionSource {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        CadVersionSource::File(p)
    };
    assert_eq!(
        read(&file("v", b"7.4.1\nsecond\n"), t).await,
        Ok("7.4.1".into())
    );
    assert_eq!(
        read(&file("bom", b"\xEF\xBB\xBF 7.4.1 \r\n"), t).await,
        Ok("7.4.1".into())
    );
    // A big file: only its first 4 KiB are read; a first line that long is
    // too long.
    let mut big = b"7.4.1\n".to_vec();
    big.resize(8 << 20, b'x');
    assert_eq!(read(&file("big", &big), t).await, Ok("7.4.1".into()));
    let e = read(&file("long", &vec![b'7'; 8 << 20]), t)
        .await
        .unwrap_err();
    assert!(e.contains("4096 characters; at most 128"), "{e}");
    // An endless one: the read still ends.
    let e = read(&CadVersionSource::File("/dev/zero".into()), t)
        .await
        .unwrap_err();
    assert!(e.contains("at most 128") || e.contains("control"), "{e}");
    let e = read(&file("empty", b""), t).await.unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let missing = dir.path().join("missing");
    let e = read(&CadVersionSource::File(missing.clone()), t)
        .await
        .unwrap_err();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    // A file whose open blocks (a FIFO without a writer, as a hung share
    // would): the timeout answers, the blocked thread is left behind.
    let fifo = dir.path().join("fifo");
    let st = std::process::Command::new(program("mkfifo"))
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    let e = read(
        &CadVersionSource::File(fifo.clone()),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(e.contains("no answer within 300ms"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Release the blocked reader so the runtime can shut down.
    unblock(&fifo);
}

/// Opens `fifo` for writing and closes it: a reader blocked in `open`
/// returns (and reads end of file).
fn unblock(fifo: &Path) {
    let _w = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
}

/// The facts task's next observation, within 20 s.
async fn next_facts(rx: &mut mpsc::Receiver<muster_agent::observation::Observation>) -> UnitFacts {
    let obs = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("facts within 20s")
        .expect("the facts task is running");
    match obs.payload {
        Payload::Facts(f) => f,
        other => panic!("not facts: {other:?}"),
    }
}

fn cad_file(path: &Path, refresh: Duration) -> CadConfig {
    CadConfig {
        version: Some(CadVersionSource::File(path.into())),
        version_timeout: Duration::from_secs(5),
        version_refresh: refresh,
    }
}

#[tokio::test]
async fn facts_are_sent_at_start_and_only_when_they_change() {
    let dir = muster_testkit::TempDir::new().unwrap();
    let version: PathBuf = dir.path().join("VERSION");
    std::fs::write(&version, "7.4.1\n").unwrap();
    let labels = vec![
        Label {
            key: "role".into(),
            value: "patrol".into(),
        },
        Label {
            key: "station".into(),
            value: "7".into(),
        },
    ];
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(facts::run(
        labels.clone(),
        cad_file(&version, Duration::from_millis(50)),
        tx,
        Arc::new(SystemClock),
        stop,
    ));
    let first = next_facts(&mut rx).await;
    assert_eq!(first.labels, labels);
    assert_eq!(first.agent_version, muster_agent::run::AGENT_VERSION);
    assert!(!first.os.is_empty());
    assert_eq!(first.os, facts::os());
    assert_eq!(first.cad_version.as_deref(), Some("7.4.1"));
    first.validate().unwrap();
    // Unchanged for 20 refreshes: nothing more is sent. (A window for
    // something that must not happen.)
    let quiet = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(quiet.is_err(), "facts sent again unchanged: {quiet:?}");
    // The CAD client is upgraded: sent once, with the new version.
    std::fs::write(&version, "7.5.0\n").unwrap();
    let second = next_facts(&mut rx).await;
    assert_eq!(second.cad_version.as_deref(), Some("7.5.0"));
    assert_eq!(second.labels, labels);
    // Its version file is gone: the version is none.
    std::fs::remove_file(&version).unwrap();
    assert_eq!(next_facts(&mut rx).await.cad_version, None);
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task stops")
        .unwrap();
}

#[tokio::test]
async fn facts_wait_for_room_in_a_full_channel() {
    let (tx, mut rx) = mpsc::channel(1);
    // The channel is full (a stalled uplink).
    tx.try_send(muster_agent::observation::Observation {
        at_ms: 1,
        payload: Payload::Status(muster_proto::fixtures::status()),
    })
    .unwrap();
    let (_stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(facts::run(
        Vec::new(),
        CadConfig::default(),
        tx,
        Arc::new(SystemClock),
        stop,
    ));
    // Long enough for the facts to have been read and offered. (A window
    // for a drop that must not happen.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        rx.recv().await.unwrap().payload,
        Payload::Status(_)
    ));
    let f = next_facts(&mut rx).await;
    assert_eq!((f.labels.len(), f.cad_version), (0, None));
    // The uplink gone: the task ends.
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task ends without its uplink")
        .unwrap();
}
