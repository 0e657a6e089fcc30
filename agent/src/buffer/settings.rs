//! The disk buffer's validated settings (`[buffer]` in the agent's TOML;
//! `crate::config` parses and validates the raw table into this).

use std::path::PathBuf;
use std::time::Duration;

/// What to do when the buffer reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Drop the oldest records first (default).
    DropOldest,
    /// Thin old data: keep 1 of every `keep_one_in` host samples in the oldest
    /// part of the backlog before dropping anything outright.
    Thin { keep_one_in: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSettings {
    /// Directory of the sled tree (`buffer.path`).
    pub path: PathBuf,
    /// Cap on buffered record bytes (`buffer.max_bytes`, default 64 MiB).
    pub max_bytes: u64,
    /// Records older than this are dropped as expired (`buffer.max_age`, default none).
    pub max_age: Option<Duration>,
    /// `buffer.on_full = "drop_oldest" | "thin"`, with `buffer.thin_keep_one_in`.
    pub on_full: FullPolicy,
    /// How often appended records are flushed to disk (`buffer.flush_interval`,
    /// default 1 s): the most a power cut can cost.
    pub flush_interval: Duration,
}

impl BufferSettings {
    pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

    pub fn new(path: PathBuf) -> Self {
        BufferSettings {
            path,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_age: None,
            on_full: FullPolicy::DropOldest,
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
        }
    }
}
