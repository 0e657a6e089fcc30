//! Cluster mode's JetStream layout: the one stream and its consumers.
//!
//! Contract (issue 15; NATS 2.9, so no 2.10 features such as several
//! filter subjects per consumer):
//! * One stream, [`StreamSpec::name`] (default `MUSTER`), captures the
//!   partitioned telemetry subjects (`muster.v1.*.*.telemetry.*`, made by
//!   the nodes' subject mapping: [`super::partition`]) and the units'
//!   state (`muster.v1.*.*.state`, not mapped). File storage, replicated
//!   on [`StreamSpec::replicas`] nodes.
//! * Interest retention: a message goes once every consumer whose filter
//!   matches it has acked it. Partition consumers' filters are disjoint,
//!   so a telemetry message goes once its partition's owner acked it, which
//!   it does after its store commit (the agent's disk buffer still holds
//!   the record until the collector's signed ack, so the stream is a
//!   queue, not the record of truth).
//! * Bounded: at most `max_bytes` and `max_age`; when full, NEW messages
//!   are refused (discard new): the oldest are the ones a collector is
//!   about to read, and a refused record stays in its agent's buffer and
//!   is sent again.
//! * Interest retention keeps a message only for consumers that exist when
//!   it arrives: a partition with no consumer yet keeps nothing (its agents
//!   resend). So every partition's consumer is created at start-up, before
//!   any lease is taken, and never deleted while the fleet runs
//!   (`cluster_nats::telemetry_of_a_partition_without_a_consumer_is_not_kept`).
//! * One durable pull consumer per partition, `telemetry-<p>`, filtered on
//!   [`super::partition::telemetry_filter`], explicit acks, at most
//!   `max_ack_pending` unacked (the backpressure window, as MQTT 5's receive
//!   maximum is for the single collector).
//! * A stream that exists with other subjects or retention is an error
//!   naming the difference, never silently changed: it may be another
//!   deployment's.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};

use super::partition;

/// The state subjects (not partitioned).
pub const STATE_SUBJECT: &str = "muster.v1.*.*.state";

/// The partitioned telemetry subjects.
pub const TELEMETRY_SUBJECT: &str = "muster.v1.*.*.telemetry.*";

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("jetstream: {0}")]
    Nats(String),
    #[error(
        "stream {name} exists with {what} {found:?}, not {want:?}: another deployment's, or an older layout (change or delete it by hand)"
    )]
    Mismatch {
        name: String,
        what: &'static str,
        found: String,
        want: String,
    },
    #[error(transparent)]
    Partition(#[from] partition::PartitionError),
}

fn nats(e: impl std::fmt::Display) -> StreamError {
    StreamError::Nats(e.to_string())
}

/// The stream and consumer settings (from `[cluster]`, validated there).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub name: String,
    pub partitions: u32,
    pub replicas: usize,
    pub max_bytes: i64,
    pub max_age: Duration,
    pub max_ack_pending: i64,
    pub ack_wait: Duration,
}

impl StreamSpec {
    /// The stream's configuration.
    pub fn stream_config(&self) -> Config {
        Config {
            name: self.name.clone(),
            subjects: vec![TELEMETRY_SUBJECT.to_owned(), STATE_SUBJECT.to_owned()],
            retention: RetentionPolicy::Interest,
            storage: StorageType::File,
            num_replicas: self.replicas,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            discard: DiscardPolicy::New,
            ..Config::default()
        }
    }

    /// Partition `p`'s durable consumer.
    pub fn consumer_config(&self, p: u32) -> Result<pull::Config, StreamError> {
        if p >= self.partitions {
            return Err(partition::PartitionError::OutOfRange {
                partition: p,
                partitions: self.partitions,
            }
            .into());
        }
        Ok(pull::Config {
            durable_name: Some(format!("telemetry-{p}")),
            filter_subject: partition::telemetry_filter(p),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
            deliver_policy: DeliverPolicy::All,
            ..pull::Config::default()
        })
    }
}

/// The stream, created if absent; an existing one must capture the same
/// subjects with the same retention (module docs).
pub async fn ensure(
    js: &Context,
    spec: &StreamSpec,
) -> Result<jetstream::stream::Stream, StreamError> {
    let want = spec.stream_config();
    let mut stream = js.get_or_create_stream(want.clone()).await.map_err(nats)?;
    let found = stream.info().await.map_err(nats)?.config.clone();
    let mismatch = |what, found: String, want: String| StreamError::Mismatch {
        name: spec.name.clone(),
        what,
        found,
        want,
    };
    let (mut fs, mut ws) = (found.subjects.clone(), want.subjects.clone());
    fs.sort();
    ws.sort();
    if fs != ws {
        return Err(mismatch("subjects", fs.join(" "), ws.join(" ")));
    }
    if found.retention != want.retention {
        return Err(mismatch(
            "retention",
            format!("{:?}", found.retention),
            format!("{:?}", want.retention),
        ));
    }
    Ok(stream)
}

/// Partition `p`'s durable pull consumer, created if absent (NATS returns
/// the existing one when the configuration is the same).
pub async fn partition_consumer(
    stream: &jetstream::stream::Stream,
    spec: &StreamSpec,
    p: u32,
) -> Result<jetstream::consumer::PullConsumer, StreamError> {
    stream
        .create_consumer(spec.consumer_config(p)?)
        .await
        .map_err(nats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StreamSpec {
        StreamSpec {
            name: "MUSTER".into(),
            partitions: 64,
            replicas: 3,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            max_ack_pending: 4096,
            ack_wait: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_stream_is_bounded_replicated_and_refuses_new_when_full() {
        let c = spec().stream_config();
        assert_eq!(c.subjects, [TELEMETRY_SUBJECT, STATE_SUBJECT]);
        assert_eq!(c.retention, RetentionPolicy::Interest);
        assert_eq!(c.storage, StorageType::File);
        assert_eq!(c.discard, DiscardPolicy::New);
        assert_eq!((c.num_replicas, c.max_bytes), (3, 1 << 30));
        assert_eq!(c.max_age, Duration::from_secs(3600));
    }

    #[test]
    fn a_partition_consumer_is_durable_filtered_and_windowed() {
        let c = spec().consumer_config(7).unwrap();
        assert_eq!(c.durable_name.as_deref(), Some("telemetry-7"));
        assert_eq!(c.filter_subject, "muster.v1.*.*.telemetry.7");
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.max_ack_pending, 4096);
        assert!(spec().consumer_config(64).is_err());
    }
}
