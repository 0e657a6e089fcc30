//! The threads that sign acks, off the runtime and behind what dispatch
//! sees.
//!
//! Contract:
//!
//! * [`SignPool::ready`] returns its batch ready to publish, in the order
//!   given: acks signed and encoded (`mqtt::ready_ack`), other messages as
//!   they are. A batch shorter than [`PARALLEL_SIGN_MIN`] is signed in the
//!   caller's task; a longer one is split over the pool's threads.
//! * The threads run at a lower CPU priority (Linux: nice +10, set per
//!   thread; elsewhere as the process). When the machine is saturated,
//!   ingest, rules and the feed get the CPU first and acks wait, and acks
//!   that wait are merged per unit in the publisher's queue, so the
//!   signing work shrinks as it falls behind. Agents keep every record on
//!   disk until an ack covers it (their ack timeout is 30 s). Measured
//!   (fleet bench, 100,000 units, 2 cores): see `ARCHITECTURE.md`.
//! * A job that panics (signing or encoding) loses only its acks, counted
//!   in the `errors` the caller passes (`muster_ack_publish_errors_total`);
//!   its thread lives on. Dropping the pool closes the threads' channels
//!   and joins them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::signing::Signer;
use crate::status_pub::{Out, Outbound};

/// A batch at least this long goes to the pool's threads; a shorter one is
/// signed in the caller's task (a thread hand-off costs more than a few
/// signatures).
pub const PARALLEL_SIGN_MIN: usize = 32;

/// The pool threads' nice value (Linux).
pub const SIGN_NICE: i32 = 10;

type Job = (Vec<Out>, oneshot::Sender<Vec<Outbound>>);

pub struct SignPool {
    signer: Arc<Signer>,
    senders: Vec<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

fn ready_all(batch: Vec<Out>, signer: &Signer) -> Vec<Outbound> {
    batch
        .into_iter()
        .filter_map(|o| match o {
            Out::Message(o) => Some(o),
            Out::Ack(a) => super::mqtt::ready_ack(a, signer),
        })
        .collect()
}

impl SignPool {
    /// `threads` signing threads (none for 0 or 1: everything is signed in
    /// the caller's task).
    pub fn new(threads: usize, signer: Arc<Signer>) -> SignPool {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        let n = if threads < 2 { 0 } else { threads };
        for i in 0..n {
            let (tx, rx) = mpsc::channel::<Job>();
            let signer = Arc::clone(&signer);
            let spawned = std::thread::Builder::new()
                .name(format!("ack-sign-{i}"))
                .spawn(move || {
                    lower_priority();
                    for (batch, done) in rx {
                        let signed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            ready_all(batch, &signer)
                        }));
                        // A panic drops `done`: the caller counts the loss.
                        if let Ok(signed) = signed {
                            let _ = done.send(signed);
                        }
                    }
                });
            match spawned {
                Ok(h) => {
                    senders.push(tx);
                    handles.push(h);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot start an ack signing thread; signing in the publisher.");
                    break;
                }
            }
        }
        SignPool {
            signer,
            senders,
            threads: handles,
        }
    }

    /// `batch` ready to publish, in order (module docs).
    pub async fn ready(&self, batch: Vec<Out>, errors: &AtomicU64) -> Vec<Outbound> {
        if batch.len() < PARALLEL_SIGN_MIN || self.senders.is_empty() {
            return ready_all(batch, &self.signer);
        }
        let per = batch.len().div_ceil(self.senders.len());
        let mut rest = batch;
        // Each chunk: signed by a thread (awaited below), or here if its
        // thread is gone (it cannot be, short of an abort) rather than lost.
        enum Part {
            Sent(usize, oneshot::Receiver<Vec<Outbound>>),
            Here(Vec<Outbound>),
        }
        let mut parts = Vec::with_capacity(self.senders.len());
        for tx in &self.senders {
            if rest.is_empty() {
                break;
            }
            let tail = rest.split_off(per.min(rest.len()));
            let chunk = std::mem::replace(&mut rest, tail);
            let len = chunk.len();
            let (done, got) = oneshot::channel();
            parts.push(match tx.send((chunk, done)) {
                Ok(()) => Part::Sent(len, got),
                Err(mpsc::SendError((chunk, _))) => Part::Here(ready_all(chunk, &self.signer)),
            });
        }
        let mut out = Vec::new();
        for part in parts {
            let (len, got) = match part {
                Part::Here(signed) => {
                    out.extend(signed);
                    continue;
                }
                Part::Sent(len, got) => (len, got),
            };
            match got.await {
                Ok(signed) => out.extend(signed),
                Err(_) => {
                    errors.fetch_add(len as u64, Ordering::Relaxed);
                    tracing::error!(
                        acks = len,
                        "Signing acks failed (a panic); the agents resend after their ack timeout."
                    );
                }
            }
        }
        out
    }
}

impl Drop for SignPool {
    fn drop(&mut self) {
        self.senders.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Nice +[`SIGN_NICE`] for the calling thread (Linux: the nice value is a
/// thread's own).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, SIGN_NICE) {
        tracing::debug!(error = %e, "Cannot lower the ack signing thread's priority.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_pub::{AckOut, OutboundKind};
    use muster_proto::{Ack, BootId, KeyId, Message, SigningKey, TopicKind, TrustedKeys, UnitId};

    fn ack_out(i: usize) -> Out {
        Out::Ack(AckOut {
            unit: UnitId::new("metro-fire", format!("E{i}")).unwrap(),
            ack: Ack {
                boot: BootId(7),
                upto: i as u64 + 1,
                ranges: Vec::new(),
                collector_ms: 1_000,
                key_id: KeyId::NONE,
                sig: muster_proto::Signature::NONE,
            },
            version: 2,
            since: None,
        })
    }

    fn status(i: usize) -> Out {
        Out::Message(Outbound {
            topic: format!("status/{i}"),
            payload: vec![i as u8],
            retain: true,
            since: None,
            kind: OutboundKind::Status,
        })
    }

    /// A batch signed over several threads comes back whole, in the order
    /// it was queued, every ack verifying under the collector's key; short
    /// and long batches, no threads and four.
    #[tokio::test]
    async fn a_batch_is_signed_over_the_threads_in_order() {
        let signer = Arc::new(crate::signing::Signer::from_keys(
            SigningKey::from_seed(&[3; 32]),
            None,
        ));
        let mut trusted = TrustedKeys::new();
        trusted.insert(signer.public_key()).unwrap();
        for (len, cores) in [
            (0, 2),
            (5, 2),
            (PARALLEL_SIGN_MIN, 2),
            (64, 4),
            (41, 1),
            (41, 3),
        ] {
            let batch: Vec<Out> = (0..len)
                .map(|i| if i % 10 == 3 { status(i) } else { ack_out(i) })
                .collect();
            let errors = std::sync::atomic::AtomicU64::new(0);
            let pool = SignPool::new(cores, Arc::clone(&signer));
            let ready = pool.ready(batch, &errors).await;
            assert_eq!(ready.len(), len, "len {len} cores {cores}");
            for (i, o) in ready.iter().enumerate() {
                if i % 10 == 3 {
                    assert_eq!(o.topic, format!("status/{i}"));
                    continue;
                }
                let unit = UnitId::new("metro-fire", format!("E{i}")).unwrap();
                assert_eq!(
                    o.topic,
                    muster_proto::topic::unit_topic(&unit, TopicKind::Ack)
                );
                let Message { body, .. } = muster_proto::decode(&o.payload).unwrap().message;
                let muster_proto::Body::Ack(ack) = body else {
                    panic!("not an ack: {body:?}")
                };
                assert_eq!(ack.upto, i as u64 + 1);
                muster_proto::sign::verify_ack(&trusted, &unit, &ack)
                    .unwrap_or_else(|e| panic!("ack {i} (len {len}, cores {cores}): {e}"));
            }
            assert_eq!(errors.load(Ordering::Relaxed), 0);
        }
    }
}
