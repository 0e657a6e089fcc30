//! The collector over TLS: `mqtts://` with the CA from `mqtt.ca_file`,
//! plus username/password, against Mosquitto with a TLS listener and
//! password file made by the test (openssl, mosquitto_passwd).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use muster_collector::clock::ManualClock;
use muster_proto::{Body, BootId, Message, TopicKind, encode, topic};
use muster_testkit::{Mosquitto, MosquittoOptions, TempDir, eventually};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

use crate::harness::*;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1.
fn make_certs(dir: &Path) {
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=muster-test-ca", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.pem")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_over_tls_with_a_password() {
    let certs = TempDir::new().unwrap();
    make_certs(certs.path());
    let passwd = certs.path().join("passwd");
    run(Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["collector", "collector-secret"]));
    run(Command::new("mosquitto_passwd")
        .args(["-b"])
        .arg(&passwd)
        .args(["agent", "agent-secret"]));
    let c = |f: &str| certs.path().join(f).display().to_string();
    let broker = Mosquitto::start_with(MosquittoOptions {
        config: Some(format!(
            "listener {{port}} 127.0.0.1\n\
             cafile {}\ncertfile {}\nkeyfile {}\n\
             allow_anonymous false\npassword_file {}\n\
             persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            c("ca.pem"),
            c("server.pem"),
            c("server.key"),
            passwd.display()
        )),
        ..MosquittoOptions::default()
    });
    let store = TempDir::new().unwrap();
    // The harness config, switched to mqtts with the CA and a login.
    let text = collector_config(&broker, &store.path().join("store"), "collector-tls")
        .set_str("mqtt", "url", &broker.url().replace("mqtt://", "mqtts://"))
        .set_str("mqtt", "ca_file", &c("ca.pem"))
        .set_str("mqtt", "username", "collector")
        .set_str("mqtt", "password", "collector-secret")
        .render();
    let collector = Collector::start(&text, ManualClock::new(T0)).await;

    // A TLS agent.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut o = MqttOptions::new("tls-agent", "127.0.0.1", broker.port());
    o.set_transport(Transport::tls(
        std::fs::read(certs.path().join("ca.pem")).unwrap(),
        None,
        None,
    ));
    o.set_credentials("agent", "agent-secret");
    let (client, mut ev) = AsyncClient::new(o, 100);
    let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let acks2 = acks.clone();
    let driver = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(d) = muster_proto::decode(&p.payload)
                        && let Body::Ack(a) = d.message.body
                    {
                        acks2.lock().unwrap().push(a);
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("TLS agent: {e}"),
            }
        }
    });
    let u = unit("metro-fire", "T1");
    client
        .subscribe(topic::unit_topic(&u, TopicKind::Ack), QoS::AtLeastOnce)
        .await
        .unwrap();
    let boot = BootId(77);
    let msg = Message {
        unit: u.clone(),
        body: Body::Record(rec(boot, 1, T0, host(10.0))),
    };
    client
        .publish(
            topic::unit_topic(&u, TopicKind::Telemetry),
            QoS::AtLeastOnce,
            false,
            encode(&msg).unwrap(),
        )
        .await
        .unwrap();
    collector
        .wait_unit(&u, "ingested over TLS", |v| v["seq"]["received"] == 1)
        .await;
    eventually("an ack over TLS", Duration::from_secs(10), || async {
        acks.lock().unwrap().iter().any(|a| a.covers(boot, 1))
    })
    .await;
    driver.abort();
    collector.stop().await;
}
