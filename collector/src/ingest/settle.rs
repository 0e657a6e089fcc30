//! Settling a message with the broker it came from, once the worker knows
//! its fate.
//!
//! Contract:
//! * MQTT needs nothing here: the client acks on receipt and the agent's
//!   disk buffer owns delivery until the collector's signed ack.
//! * A JetStream message (cluster mode) is acked only once the commit that
//!   holds it is durable (or at once when it is refused or a duplicate,
//!   with that commit), so a partition consumer's `max_ack_pending` is the
//!   backpressure window and a collector that dies leaves what it had not
//!   stored to be redelivered. It is nak'd when its unit's partition moved
//!   to another collector before the commit: redelivered to the new owner
//!   at once instead of after `ack_wait`.

/// One message's delivery, to settle once.
pub trait Settle: Send + std::fmt::Debug {
    /// Processed: the broker may forget it.
    fn ack(self: Box<Self>);
    /// Not processed here: deliver it again (to whoever pulls next).
    fn nak(self: Box<Self>);
}

/// Whether this collector owns a unit (cluster mode: its partition's lease).
pub trait Scope: Send + Sync + std::fmt::Debug {
    fn owns(&self, unit: &muster_proto::UnitId) -> bool;
    /// The unit's partition.
    fn partition(&self, unit: &muster_proto::UnitId) -> Option<u32>;
    /// Whether this collector holds partition `p`.
    fn holds(&self, p: u32) -> bool;
}
