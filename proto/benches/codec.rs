//! `cargo bench -p muster-proto`: encode/decode cost per typical host sample
//! and per 100-record replay batch, bytes per sample, and the same sample as
//! JSON (serde_json) for comparison, all measured in this run.
//!
//! Goal: a typical host sample under 300 bytes (cellular links are metered).

// Tests and benches drive real processes over real sockets: they wait and
// measure in real time.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use muster_proto::{Body, Message, decode, encode, encode_record, fixtures, message_from_encoded};

/// Runs `f` repeatedly for about `budget` and returns nanoseconds per call
/// (best of 5 rounds, to shrug off a noisy neighbour on a 2-core machine).
fn ns_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Calibrate the iteration count to ~budget/5 per round.
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() > budget / 50 {
            break;
        }
        iters *= 2;
    }
    let iters = iters * 10;
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // `cargo test --benches` runs this with `--test`: keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let budget = if quick {
        Duration::from_millis(20)
    } else {
        Duration::from_secs(2)
    };

    let sample = fixtures::host_message();
    let sample_bytes = encode(&sample).unwrap();
    let Body::Record(rec) = &sample.body else {
        unreachable!()
    };
    let json = serde_json::to_vec(&sample).unwrap();
    let json_record = serde_json::to_vec(rec).unwrap();

    let batch = fixtures::batch_message(100);
    let batch_bytes = encode(&batch).unwrap();
    let Body::Batch(records) = &batch.body else {
        unreachable!()
    };
    let stored: Vec<Vec<u8>> = records.iter().map(|r| encode_record(r).unwrap()).collect();
    let stored_refs: Vec<&[u8]> = stored.iter().map(Vec::as_slice).collect();

    let enc = ns_per_call(budget, || {
        black_box(encode(black_box(&sample)).unwrap());
    });
    let dec = ns_per_call(budget, || {
        black_box(decode(black_box(&sample_bytes)).unwrap());
    });
    let json_enc = ns_per_call(budget, || {
        black_box(serde_json::to_vec(black_box(&sample)).unwrap());
    });
    let json_dec = ns_per_call(budget, || {
        black_box(serde_json::from_slice::<Message>(black_box(&json)).unwrap());
    });
    let benc = ns_per_call(budget, || {
        black_box(encode(black_box(&batch)).unwrap());
    });
    let bsplice = ns_per_call(budget, || {
        black_box(message_from_encoded(&batch.unit, black_box(&stored_refs), false).unwrap());
    });
    let bdec = ns_per_call(budget, || {
        black_box(decode(black_box(&batch_bytes)).unwrap());
    });

    println!(
        "muster-proto codec benchmark (typical MCT host sample: 8 cores, 2 disks, 3 interfaces, 2 processes)"
    );
    println!();
    println!("size per typical host sample");
    println!(
        "  bincode message (envelope + identity + record): {:>6} bytes",
        sample_bytes.len()
    );
    println!(
        "  JSON message (serde_json, same data):           {:>6} bytes",
        json.len()
    );
    println!(
        "  JSON record only (no identity):                 {:>6} bytes",
        json_record.len()
    );
    println!(
        "  bincode / JSON:                                 {:>6.2}  ({:.1}x smaller)",
        sample_bytes.len() as f64 / json.len() as f64,
        json.len() as f64 / sample_bytes.len() as f64
    );
    println!(
        "  goal < 300 bytes:                               {}",
        if sample_bytes.len() < 300 {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!(
        "  100-record batch:                               {:>6} bytes ({:.1} bytes/record)",
        batch_bytes.len(),
        batch_bytes.len() as f64 / 100.0
    );
    println!();
    println!("time per typical host sample");
    println!(
        "  encode  {enc:>9.0} ns   (JSON {json_enc:>7.0} ns, ratio {:.2})",
        enc / json_enc
    );
    println!(
        "  decode  {dec:>9.0} ns   (JSON {json_dec:>7.0} ns, ratio {:.2})",
        dec / json_dec
    );
    println!();
    println!("time per 100-record batch");
    println!(
        "  encode                  {benc:>9.0} ns  ({:.0} ns/record)",
        benc / 100.0
    );
    println!(
        "  splice stored records   {bsplice:>9.0} ns  ({:.0} ns/record, {:.2} of encode)",
        bsplice / 100.0,
        bsplice / benc
    );
    println!(
        "  decode                  {bdec:>9.0} ns  ({:.0} ns/record)",
        bdec / 100.0
    );
}
