//! Fuzz-style: thousands of random, malformed, oversized and spoofed
//! messages; the collector keeps serving and keeps ingesting good data,
//! and counts every refusal by reason.

use muster_proto::{Body, BootId, Message, encode, fixtures};

use crate::harness::*;
use muster_testkit::{eventually, http};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_counted_and_breaks_nothing() {
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("fuzzer").await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let good = unit("metro-fire", "G1");
    let valid = encode(&Message {
        unit: good.clone(),
        body: Body::Record(rec(BootId(1), 1, T0, host(10.0))),
    })
    .unwrap();
    let telemetry = "muster/v1/metro-fire/G1/telemetry";
    let n = 3_000;
    let mut sent = [0u64; 6];
    for i in 0..n {
        let (topic, payload): (String, Vec<u8>) = match i % 6 {
            // Random bytes.
            0 => {
                let len = rng.below(512) as usize;
                let mut b = rng.bytes(len);
                if let Some(f) = b.first_mut() {
                    *f = 1; // a known version, so it is malformed, not unknown
                }
                (telemetry.into(), b)
            }
            // A valid message, truncated or with a flipped byte.
            1 => {
                let mut b = valid.clone();
                if rng.below(2) == 0 {
                    b.truncate(1 + rng.below(b.len() as u64 - 1) as usize);
                } else {
                    b.push(rng.next() as u8); // trailing garbage
                }
                (telemetry.into(), b)
            }
            // Unknown schema version.
            2 => {
                let mut b = valid.clone();
                b[0] = 200 + rng.below(50) as u8;
                (telemetry.into(), b)
            }
            // Spoofed: another unit's topic.
            3 => (
                format!("muster/v1/county-police/P{}/telemetry", rng.below(100)),
                valid.clone(),
            ),
            // Bad topic levels.
            4 => (
                format!("muster/v1/metro fire/E{}/telemetry", rng.below(100)),
                valid.clone(),
            ),
            // Oversized.
            _ => {
                let mut b = vec![1u8];
                let extra = rng.below(1000) as usize;
                b.extend(rng.bytes(muster_proto::MAX_MESSAGE_BYTES + 1 + extra));
                (telemetry.into(), b)
            }
        };
        sent[i % 6] += 1;
        a.publish_raw(&topic, payload, false).await;
    }
    // Still serving, still ingesting good data after all that.
    let boot = BootId(2);
    let ga = w.agent("good").await;
    for seq in 1..=3 {
        ga.record(&good, rec(boot, seq, T0 + seq, host(10.0))).await;
    }
    c.wait_unit(&good, "good data in", |v| v["seq"]["received"] == 3)
        .await;
    ga.wait_acked(&good, boot, 1..=3).await;
    assert_eq!(http::get(c.addr, "/healthz", None).await.status, 200);
    assert_eq!(http::get(c.addr, "/readyz", None).await.status, 200);
    eventually(
        "every message counted",
        std::time::Duration::from_secs(30),
        || async {
            let total = c.metric("muster_ingest_messages_total ").await;
            if total >= (n + 3) as f64 {
                Ok(())
            } else {
                Err(total)
            }
        },
    )
    .await;
    let refused = |reason: &str| {
        let reason = reason.to_owned();
        async move {
            c.metric(&format!(
                "muster_ingest_refused_total{{reason=\"{reason}\"}}"
            ))
            .await as u64
        }
    };
    // Every hostile message was refused, each under its reason. Random
    // bytes mostly fail to decode (malformed); a few decode far enough to
    // fail as an oversized list or a bad identity instead.
    let by_reason = [
        "malformed",
        "oversized",
        "unknown_version",
        "bad_identity",
        "spoofed",
        "bad_topic",
        "unexpected_body",
    ];
    let mut total = 0;
    for r in by_reason {
        total += refused(r).await;
    }
    assert_eq!(
        total, n as u64,
        "every hostile message refused exactly once"
    );
    let malformed = refused("malformed").await;
    assert!(malformed >= (sent[0] + sent[1]) * 9 / 10, "{malformed}");
    assert!(malformed <= sent[0] + sent[1]);
    assert_eq!(refused("unknown_version").await, sent[2]);
    assert_eq!(refused("spoofed").await, sent[3]);
    assert_eq!(refused("bad_topic").await, sent[4]);
    assert!(refused("oversized").await >= sent[5]);
    // Nothing of the spoofed or garbage traffic became a unit.
    let units = c.json("/api/v1/units", ADMIN).await;
    let names = items(&units, "unit");
    assert_eq!(names, ["G1"]);
    // A message of the wrong kind for its topic, and a valid fixture.
    ga.publish_raw(
        "muster/v1/metro-fire/E12/state",
        encode(&fixtures::host_message()).unwrap(),
        false,
    )
    .await;
    eventually(
        "the unexpected body refused",
        std::time::Duration::from_secs(10),
        || async {
            match refused("unexpected_body").await {
                1 => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
}
