//! Cluster mode (issue 15, in progress): several collectors share one
//! fleet through NATS JetStream and PostgreSQL. So far: [`lease`], the
//! pure partition-lease planner (ownership, balance, takeover, fencing
//! epochs), [`pg`], its PostgreSQL edge (migrations, the lease table's
//! compare-and-sets, the fence before every state write), and
//! [`partition`], which partition a unit is in (NATS's subject mapping,
//! and the same hash for the topics that cannot be mapped), and [`stream`],
//! the JetStream stream and per-partition consumers. The ingest loop on
//! them and the PostgreSQL store are not built yet; single-node mode does
//! not use any of it.

pub mod lease;
pub mod partition;
pub mod pg;
pub mod stream;
