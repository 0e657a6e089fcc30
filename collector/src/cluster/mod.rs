//! Cluster mode (issue 15): several collectors share one fleet through
//! NATS JetStream and PostgreSQL, chosen by `[cluster]` in the config
//! ([`config`]); without it the collector is a single node, as before.
//!
//! * [`partition`]: which partition a unit is in (NATS's subject mapping,
//!   and the same hash for the topics that cannot be mapped).
//! * [`stream`]: the JetStream stream and its per-partition consumers.
//! * [`lease`] (pure): the partition-lease planner (ownership, balance,
//!   takeover, fencing epochs) and the moves a collector makes.
//! * [`pg`]: its PostgreSQL edge (migrations, the lease table's
//!   compare-and-sets, the fence before every state write).
//! * [`node`]: one collector of the cluster, end to end (ingest from the
//!   partitions it leases into `crate::store::PgStore`, the whole feed).
//! * [`status`]: where acks (core NATS) and retained status (MQTT to the
//!   NATS nodes' listeners, `[cluster] mqtt`) go.
//! * [`webhooks`]: notifications sent once, by the coordinator.
//! * [`incidents`]: agency-wide incidents, decided by the coordinator
//!   from every owner's shares.

pub mod config;
pub mod incidents;
pub mod lease;
pub mod node;
pub mod partition;
pub mod pg;
pub mod status;
pub mod stream;
pub mod webhooks;
