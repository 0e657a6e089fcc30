//! Cluster mode (issue 15, in progress): several collectors share one
//! fleet through NATS JetStream and PostgreSQL. So far: [`lease`], the
//! pure partition-lease planner (ownership, balance, takeover, fencing
//! epochs), and [`pg`], its PostgreSQL edge (migrations, the lease table's
//! compare-and-sets, the fence before every state write). The JetStream
//! ingest and the PostgreSQL store are not built yet; single-node mode
//! does not use any of it.

pub mod lease;
pub mod pg;
