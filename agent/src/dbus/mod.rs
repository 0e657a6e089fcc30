//! A small, bounded, blocking D-Bus client (Linux): what the agent needs to
//! talk to logind, systemd and ModemManager on the system bus, and no more.
//!
//! Contract:
//! * [`wire`] (pure): values, signatures, whole messages; decoding is strict
//!   and bounded (≤ 1 MiB a message, nesting within the spec's limits,
//!   padding and UTF-8 checked) and never panics (proptests).
//! * [`auth`] (pure): the SASL EXTERNAL exchange, unix fd negotiation
//!   included, lines bounded.
//! * [`conn`]: a blocking connection on a `UnixStream`: `Hello`, method
//!   calls with their replies (≤ the connection's timeout), a bounded queue
//!   of signals, fds received through SCM_RIGHTS as `OwnedFd`s. All the
//!   module's `unsafe` is one function there (`recvmsg`).
//! * No threads, no runtime: callers run it on a thread of their own
//!   (logind's follower, the `modem` thread).
//!
//! Why in-house and not zbus: the agent needs a handful of method calls
//! (`Hello`, `NameHasOwner`, `GetNameOwner`, `AddMatch`, logind's
//! `Inhibit`, `Properties.Get`/`GetAll`, `GetManagedObjects`, `Setup`) and
//! two signals, blocking, on threads it already has; zbus and zvariant
//! were ~560 KB of the static binary's text plus their generic
//! instantiations and async deps (issue 12: the agent's RSS over
//! collectd's was mapped code).

pub mod auth;
pub mod conn;
pub mod wire;

pub use conn::{Conn, DbusError};
pub use wire::{Message, Type, Value};
