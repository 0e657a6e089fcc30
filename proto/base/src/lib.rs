//! Muster's shared plumbing: the small pieces both binaries need, each with
//! one home here instead of a copy in each.
//!
//! * [`clock`]: the injected wall clock (`Clock`, `SystemClock`,
//!   `TokioClock` that follows paused tokio time, `ManualClock`).
//! * [`fsutil`]: a small file written atomically (temporary, fsync,
//!   rename), optionally owner-only.
//! * [`shutdown`]: the SIGTERM / SIGINT / Ctrl-C future, installed early.
//! * [`backoff`]: exponential backoff with injected randomness (full or
//!   equal jitter) and a small seedable jitter source.
//! * [`systemd`]: `Type=notify` datagrams and the watchdog interval.
//! * [`rate`]: "N per D" limits: the parser and the sliding-window counter.
//! * [`value`]: config values: durations, byte sizes and MQTT URLs, with
//!   errors that name the key.
//!
//! Invariants: no dependency on the wire contract (`muster-proto`) or on
//! either binary; nothing here reads a clock or draws randomness except the
//! `SystemClock`/`TokioClock`/`Jitter::from_entropy` constructors, which
//! exist to be injected.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod clock;
pub mod fsutil;
pub mod rate;
pub mod shutdown;
pub mod systemd;
pub mod value;
