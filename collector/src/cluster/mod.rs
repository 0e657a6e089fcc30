//! Cluster mode (issue 15, in progress): several collectors share one
//! fleet through NATS JetStream and PostgreSQL. So far: [`lease`], the
//! pure partition-lease planner (ownership, balance, takeover, fencing
//! epochs). The PostgreSQL edge that applies its actions, and the
//! JetStream ingest, are not built yet; single-node mode does not use it.

pub mod lease;
