//! The agent's disk buffer: every record goes here first and leaves only
//! when the collector has acknowledged it.
//!
//! # Contract
//!
//! **Layout.** `buffer.path` holds:
//! * `LOCK`: an exclusive file lock; a second agent on the same directory
//!   fails to start ([`BufferError::Locked`]) instead of sharing it. Closing
//!   the buffer (dropping it) unlocks it explicitly (`DirLock`), so the
//!   directory can be opened again the moment the buffer is gone, by this
//!   process too.
//! * `seg-{first key, 20 digits}/`: segments, each its own sled database with
//!   one tree. New records go to the newest segment (the *head*); when the
//!   head has taken in [`segment_bytes`] of records, a new head starts. A
//!   segment whose records are all acknowledged or dropped is deleted whole.
//!   This is how disk space and memory come back: sled never returns space
//!   after deletions and its memory grows with the data it has opened, so
//!   the buffer keeps at most [`MAX_OPEN_SEGMENTS`] segments open (the head,
//!   the one replay reads, one more) and throws drained ones away.
//! * `state.json`: the drop counts ([`DropCounts`]) and thinning progress,
//!   written atomically (temporary file, fsync, rename) at each flush, so the
//!   counts survive restarts and reach the next heartbeat.
//! * `quarantine/`: segments that could not be opened, moved aside with a
//!   timestamp; the newest [`QUARANTINE_KEEP`] are kept for a post-mortem.
//!
//! **Record format.** Key: a big-endian `u64` append counter, unique across
//! segments and increasing, so sled's key order is append order. Value: a
//! 30-byte header — crc32 of everything after it, header format, payload
//! kind, boot id, seq, event time — followed by the record exactly as
//! `muster_proto::encode_record` wrote it (see [`record`]). Only proto knows
//! bincode; the header lets the buffer and the uplink evict, thin and match
//! acks without decoding, and replay splices the stored bytes into a batch.
//!
//! **Ordering.** Reads are in key order, which is append order: the backlog
//! drains oldest first. (The uplink may send a record ahead of older ones —
//! live first — but the buffer's order never changes.)
//!
//! **Flush policy.** Appends go to sled's in-memory log at once; [`Buffer::flush`]
//! makes them durable. The uplink calls it every `buffer.flush_interval`
//! (default 1 s) and at shutdown, so a power cut costs at most the records
//! of the last interval. Acks (removals) ride on the same flushes: a removal
//! lost to a power cut means a resend, which the collector deduplicates.
//!
//! **Bounded.** The sum of stored value sizes stays under `buffer.max_bytes`.
//! Before an append that would cross it, records are dropped: the oldest
//! first (`drop_oldest`), or with `thin` first every host sample but 1 of N
//! in the oldest not-yet-thinned part of the backlog, then the oldest. With
//! `buffer.max_age`, records older than that are dropped too. Records in
//! flight (published, awaiting the ack) are never evicted, so while
//! connected the cap can be exceeded by at most the bytes in flight
//! (`max_inflight × batch_max_bytes`); during an outage nothing is in flight
//! and the cap holds exactly. Every drop is counted by reason in
//! [`DropCounts`] and persisted.
//!
//! **Full disk.** If sled refuses a write (the filesystem is full, an I/O
//! error), the incoming record is dropped and counted as `full` (the record
//! could not be buffered), a warning is logged, the head segment is
//! reopened at the next append, and shipping of what is stored goes on.
//!
//! **Deletion.** A record is deleted only when the collector's ack covers it
//! ([`Buffer::remove`], called by the uplink with the keys an ack freed), or
//! when the policy above drops it and counts it. A broker's PUBACK is not
//! enough: a broker without persistence that restarts loses what it held.
//!
//! **Recovery without a human.** A value whose checksum, length or header
//! does not match (a torn write at a power cut, a flipped bit) is removed
//! and counted as `corrupt` when it is read — at open every segment is
//! scanned — and never stops the agent. sled itself stops replaying its
//! log at a torn or corrupt entry and says nothing, so `state.json` also
//! keeps, per segment, how many records with keys up to which were live at
//! the last flush: fewer found at open are counted as `corrupt` too. For
//! that count to be exact after a crash, deletions (acks and policy drops)
//! are *deferred*: a deleted record is hidden from reads at once, but sled
//! removes it only at the next flush, after `state.json` has recorded the
//! new live counts and drop counts. A crash before that flush brings acked
//! records back (they are resent and the collector deduplicates them) and
//! never makes sled hold fewer records than `state.json` says. Measured on
//! a copy of a real buffer: flipped bytes, a file cut in half, a zeroed
//! block, garbage files, a missing config, a segment replaced by a file —
//! every record either survives intact or is counted. A segment sled cannot open (or
//! panics opening) is moved to `quarantine/`, a fresh one takes its place,
//! `DropCounts.resets` is incremented and a warning says how many records it
//! held, as far as known. An unreadable `state.json` is moved aside and
//! counted the same way.

pub mod evict;
pub mod record;
pub mod settings;

use std::collections::BTreeMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use muster_proto::DropCounts;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use evict::{Candidate, EvictReason, ThinState};
pub use record::{Kind, Meta};
pub use settings::{BufferSettings, FullPolicy};

/// Segments open at once, the head included.
pub const MAX_OPEN_SEGMENTS: usize = 3;
/// Quarantined segments kept for a post-mortem.
pub const QUARANTINE_KEEP: usize = 2;
/// sled's page cache per open segment.
pub const SEGMENT_CACHE_BYTES: u64 = 1024 * 1024;

/// Records a head segment takes before a new one starts: an eighth of the
/// cap, between 64 KiB and 4 MiB. Small segments keep what sled holds in
/// memory small. Measured (`benches/buffer.rs`, read-and-delete of a full
/// buffer, peak RSS): 26 / 29 / 30 MB at 16 / 64 / 256 MiB, where one sled
/// database takes 15 / 23 / 77 MB. On disk sled takes about 2.8 times the
/// record bytes (180 MiB for a full 64 MiB buffer; one database: 141 MiB);
/// 1 MiB segments saved 3 MB of RSS but took 271 MiB of disk.
pub fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(64 * 1024, 4 * 1024 * 1024)
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("cannot create the buffer directory {path}: {error}")]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the buffer directory {0} is in use by another process")]
    Locked(PathBuf),
    #[error("buffer I/O on {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("sled: {0}")]
    Sled(sled::Error),
}

/// A record read back from the buffer.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: u64,
    pub meta: Meta,
    value: sled::IVec,
}

impl Stored {
    /// The `encode_record` bytes.
    pub fn encoded(&self) -> &[u8] {
        &self.value[record::HEADER_LEN..]
    }
    /// Bytes this record takes in the buffer.
    pub fn stored_len(&self) -> u64 {
        self.value.len() as u64
    }
}

/// What happened to an appended record.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    Stored {
        key: u64,
    },
    /// The write failed (full filesystem, I/O error); the record was counted
    /// as dropped.
    Dropped {
        reason: String,
    },
}

/// Depth of the buffer, for the heartbeat and self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub records: u64,
    pub bytes: u64,
    pub oldest_at_ms: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    drops: DropCounts,
    thin: ThinState,
    /// Per segment (by first key), as of the last flush: records with keys
    /// up to `last_key` that were live. At open, fewer found than that
    /// means sled lost records (it stops at a torn or corrupt log entry and
    /// says nothing): the difference is counted as corrupt.
    #[serde(default)]
    marks: BTreeMap<u64, Mark>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    last_key: u64,
    live: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    records: u64,
    bytes: u64,
    /// Bytes ever appended (the head rotates on this).
    appended: u64,
    /// Highest key appended to it (0: none).
    last_key: u64,
}

/// The disk buffer. Not thread-safe by design: one owner (the uplink task).
pub struct Buffer {
    dir: PathBuf,
    settings: BufferSettings,
    segment_bytes: u64,
    /// first key -> segment.
    segs: BTreeMap<u64, Segment>,
    /// Open segments, least recently used first.
    open: Vec<(u64, sled::Db)>,
    head: u64,
    next_key: u64,
    records: u64,
    bytes: u64,
    state: State,
    state_dirty: bool,
    /// Segments with writes not yet flushed.
    dirty: Vec<u64>,
    /// Keys deleted (acked or dropped) but still in sled: hidden from reads,
    /// removed from sled at the next flush, after `state.json` (see the
    /// contract above).
    pending: std::collections::BTreeSet<u64>,
    head_failed: bool,
    next_expiry_ms: u64,
    /// The latest `now` seen (names quarantined segments).
    last_now_ms: u64,
    /// Released last, by [`Drop`], after the segments are closed.
    lock: DirLock,
}

/// The exclusive lock on `LOCK`, released explicitly when dropped.
///
/// An flock belongs to the open file, which every copy of its descriptor
/// shares, and a child this process forks holds a copy of each from its fork
/// until its exec closes them (close-on-exec). Left to go with the last
/// descriptor, the lock outlived a closed buffer by that window (measured
/// under load: 25 to 160 ms), and opening the buffer again in this process
/// (the uplink's next run, a test counting what is left on disk) failed with
/// [`BufferError::Locked`] whenever another thread was starting a process
/// then. Unlocking releases it at once whatever copies exist. (Windows asks
/// for the explicit unlock too: a lock left to the close of its handle is
/// released when the system gets to it.)
struct DirLock(File);

impl DirLock {
    /// Unlocks (again: harmless).
    fn release(&self) {
        if let Err(e) = self.0.unlock() {
            warn!(error = %e, "Cannot unlock the disk buffer directory; it stays locked until every copy of its descriptor is closed.");
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        self.release();
    }
}

fn seg_name(first: u64) -> String {
    format!("seg-{first:020}")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?.parse().ok()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.to_owned(),
        error: source,
    }
}

/// sled's own file lock: held by another process, or, in this one, by a
/// segment sled is still closing in the background.
fn is_lock_error(why: &str) -> bool {
    why.contains("could not acquire lock")
}

fn open_sled_once(path: &Path) -> Result<sled::Db, String> {
    let cfg = sled::Config::new()
        .path(path)
        .cache_capacity(SEGMENT_CACHE_BYTES)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(None);
    match std::panic::catch_unwind(AssertUnwindSafe(|| cfg.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("sled panicked while opening".into()),
    }
}

/// Opens a segment. A lock still held by sled's background threads after
/// this process closed the segment a moment ago is waited out (up to about
/// a second) rather than taken for damage.
fn open_sled(path: &Path) -> Result<sled::Db, String> {
    let mut tries = 0;
    loop {
        match open_sled_once(path) {
            Err(why) if is_lock_error(&why) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Buffer {
    /// Opens (or creates) the buffer at `settings.path`, scanning every
    /// segment: corrupt records are removed and counted, unopenable segments
    /// quarantined. `now_ms` stamps quarantined names.
    pub fn open(settings: BufferSettings, now_ms: u64) -> Result<Buffer, BufferError> {
        let dir = settings.path.clone();
        let mut moved_aside = false;
        if dir.exists() && !dir.is_dir() {
            let aside = aside_name(&dir, now_ms);
            warn!(path = %dir.display(), aside = %aside.display(), "Buffer path is not a directory; moving it aside.");
            std::fs::rename(&dir, &aside).map_err(io_err(&dir))?;
            moved_aside = true;
        }
        std::fs::create_dir_all(&dir).map_err(|source| BufferError::CreateDir {
            path: dir.clone(),
            error: source,
        })?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(BufferError::Locked(dir));
        }
        // From here on, every way out (an error below included) unlocks.
        let lock = DirLock(lock);

        let mut state = State::default();
        let state_path = dir.join("state.json");
        let mut state_dirty = false;
        match std::fs::read(&state_path) {
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(s) => state = s,
                Err(e) => {
                    let aside = aside_name(&state_path, now_ms);
                    warn!(error = %e, aside = %aside.display(), "Buffer state file is unreadable; drop counts restart from zero.");
                    let _ = std::fs::rename(&state_path, &aside);
                    state.drops.resets += 1;
                    state_dirty = true;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&state_path)(e)),
        }

        if moved_aside {
            state.drops.resets += 1;
            state_dirty = true;
        }
        let mut buf = Buffer {
            segment_bytes: segment_bytes(settings.max_bytes),
            dir,
            settings,
            segs: BTreeMap::new(),
            open: Vec::new(),
            head: 0,
            next_key: 1,
            records: 0,
            bytes: 0,
            state,
            state_dirty,
            dirty: Vec::new(),
            pending: std::collections::BTreeSet::new(),
            head_failed: false,
            next_expiry_ms: 0,
            last_now_ms: now_ms,
            lock,
        };
        buf.recover(now_ms)?;
        buf.flush()?;
        info!(
            path = %buf.dir.display(),
            records = buf.records,
            bytes = buf.bytes,
            segments = buf.segs.len(),
            corrupt = buf.state.drops.corrupt,
            resets = buf.state.drops.resets,
            "Disk buffer open."
        );
        Ok(buf)
    }

    fn recover(&mut self, now_ms: u64) -> Result<(), BufferError> {
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_seg_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut max_key = 0u64;
        for first in firsts {
            let path = self.dir.join(seg_name(first));
            let mark = self.state.marks.get(&first).copied();
            let db = match open_sled(&path) {
                Ok(db) => db,
                Err(why) if is_lock_error(&why) => {
                    // Someone else has it: never quarantine a live segment.
                    return Err(BufferError::Locked(path));
                }
                Err(why) => {
                    self.lost(mark.map_or(0, |m| m.live));
                    self.quarantine(&path, now_ms, &why, mark.map(|m| m.live));
                    continue;
                }
            };
            let upto = mark.map_or(0, |m| m.last_key);
            let scanned = std::panic::catch_unwind(AssertUnwindSafe(|| scan(&db, upto)));
            let (seg, found_old, mut corrupt) = match scanned {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    drop(db);
                    self.lost(mark.map_or(0, |m| m.live));
                    self.quarantine(&path, now_ms, &e.to_string(), mark.map(|m| m.live));
                    continue;
                }
                Err(_) => {
                    drop(db);
                    self.lost(mark.map_or(0, |m| m.live));
                    self.quarantine(
                        &path,
                        now_ms,
                        "sled panicked while reading",
                        mark.map(|m| m.live),
                    );
                    continue;
                }
            };
            let last = seg.last_key;
            if let Some(m) = mark
                && found_old < m.live
            {
                // Records that were live at the last flush and are gone:
                // sled dropped a torn or corrupt part of its log. (Acks and
                // drops reach sled only after `state.json` has recorded
                // them, so a crash cannot make this over-count.)
                let vanished = m.live - found_old;
                warn!(segment = %path.display(), vanished, "Disk buffer segment lost records (torn or corrupt log); counted as corrupt.");
                corrupt += vanished;
            }
            if corrupt > 0 {
                warn!(segment = %path.display(), corrupt, "Skipped corrupt records in the disk buffer.");
                self.state.drops.corrupt += corrupt;
                self.state_dirty = true;
                if let Err(e) = db.flush() {
                    warn!(error = %e, "Flushing the removal of corrupt records failed.");
                }
            }
            max_key = max_key.max(last).max(first).max(upto);
            if seg.records == 0 {
                drop(db);
                remove_dir(&path);
                continue;
            }
            self.records += seg.records;
            self.bytes += seg.bytes;
            self.segs.insert(first, seg);
        }
        self.next_key = max_key + 1;
        // Continue in the newest segment if it has room; else start one.
        match self.segs.last_key_value() {
            Some((&first, seg)) if seg.appended < self.segment_bytes => self.head = first,
            _ => self.new_head(),
        }
        Ok(())
    }

    /// Counts records lost with a segment.
    fn lost(&mut self, records: u64) {
        self.state.drops.corrupt += records;
        self.state_dirty = true;
    }

    fn new_head(&mut self) {
        self.head = self.next_key;
        self.segs.insert(self.head, Segment::default());
    }

    fn quarantine(&mut self, path: &Path, now_ms: u64, why: &str, records: Option<u64>) {
        let qdir = self.dir.join("quarantine");
        let _ = std::fs::create_dir_all(&qdir);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = qdir.join(format!("{name}.{now_ms}"));
        match std::fs::rename(path, &aside) {
            Ok(()) => {}
            Err(e) => {
                warn!(error = %e, "Cannot move the broken segment aside; deleting it.");
                remove_dir(path);
            }
        }
        self.state.drops.resets += 1;
        self.state_dirty = true;
        warn!(segment = %path.display(), aside = %aside.display(), reason = why, records = ?records,
            "Disk buffer segment could not be opened; moved it aside and started afresh.");
        // Keep only the newest few.
        if let Ok(rd) = std::fs::read_dir(&qdir) {
            let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            names.sort_by_key(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .and_then(|e| e.parse::<u64>().ok())
                    .unwrap_or(0)
            });
            let excess = names.len().saturating_sub(QUARANTINE_KEEP);
            for p in &names[..excess] {
                remove_dir(p);
            }
        }
    }

    /// The segment a key lives in.
    fn seg_of(&self, key: u64) -> Option<u64> {
        self.segs.range(..=key).next_back().map(|(&f, _)| f)
    }

    /// An open handle on segment `first`, opening it (and closing the least
    /// recently used) if need be. A segment that cannot be opened any more
    /// is quarantined and its records counted as corrupt.
    fn db(&mut self, first: u64) -> Option<sled::Db> {
        if let Some(i) = self.open.iter().position(|(f, _)| *f == first) {
            let e = self.open.remove(i);
            let db = e.1.clone();
            self.open.push(e);
            return Some(db);
        }
        let path = self.dir.join(seg_name(first));
        match open_sled(&path) {
            Ok(db) => {
                while self.open.len() >= MAX_OPEN_SEGMENTS {
                    let Some(i) = self.open.iter().position(|(f, _)| *f != self.head) else {
                        break;
                    };
                    let (f, old) = self.open.remove(i);
                    if let Err(e) = old.flush() {
                        warn!(error = %e, "Flushing a segment before closing it failed.");
                    }
                    self.dirty.retain(|d| *d != f);
                    debug!(segment = f, "Closed a disk buffer segment.");
                }
                self.open.push((first, db.clone()));
                Some(db)
            }
            Err(why) if is_lock_error(&why) => {
                // Still closing from an earlier use: transient.
                warn!(segment = first, reason = %why, "Disk buffer segment is busy; will retry.");
                None
            }
            Err(why) => {
                let seg = self.segs.remove(&first).unwrap_or_default();
                self.records -= seg.records;
                self.bytes -= seg.bytes;
                self.state.drops.corrupt += seg.records;
                self.quarantine(&path, self.last_now_ms, &why, Some(seg.records));
                if first == self.head {
                    self.new_head();
                }
                None
            }
        }
    }

    fn mark_dirty(&mut self, first: u64) {
        if !self.dirty.contains(&first) {
            self.dirty.push(first);
        }
    }

    /// Appends a record (`encoded` from `encode_record`), first making room
    /// under the cap. `inflight` says which keys are published and awaiting
    /// an ack (never evicted).
    pub fn append(
        &mut self,
        meta: Meta,
        encoded: &[u8],
        now_ms: u64,
        inflight: &dyn Fn(u64) -> bool,
    ) -> Appended {
        let value = record::encode_value(&meta, encoded);
        let size = value.len() as u64;
        self.last_now_ms = self.last_now_ms.max(now_ms);
        if self.settings.max_age.is_some() && now_ms >= self.next_expiry_ms {
            // At most once a second: expiry reads the oldest records.
            self.next_expiry_ms = now_ms + 1000;
            self.expire(now_ms, inflight);
        }
        let need = evict::room_needed(self.bytes, size, self.settings.max_bytes);
        if need > 0 {
            self.make_room(need, inflight);
        }
        if self
            .segs
            .get(&self.head)
            .is_some_and(|s| s.appended >= self.segment_bytes)
        {
            self.new_head();
        }
        if self.head_failed {
            // Reopen the head after a failed write: sled may have latched the error.
            let head = self.head;
            if let Some(i) = self.open.iter().position(|(f, _)| *f == head) {
                self.open.remove(i);
            }
            self.head_failed = false;
        }
        let key = self.next_key;
        let head = self.head;
        let result = match self.db(head) {
            Some(db) => db
                .insert(record::key_bytes(key), value)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("head segment unavailable".to_string()),
        };
        match result {
            Ok(()) => {
                self.next_key += 1;
                let seg = self.segs.entry(head).or_default();
                seg.records += 1;
                seg.bytes += size;
                seg.appended += size;
                seg.last_key = key;
                self.records += 1;
                self.bytes += size;
                self.mark_dirty(head);
                Appended::Stored { key }
            }
            Err(reason) => {
                self.head_failed = true;
                self.state.drops.full += 1;
                self.state_dirty = true;
                warn!(%reason, seq = meta.seq, dropped_full = self.state.drops.full,
                    "Disk buffer write failed; the record is dropped and counted.");
                Appended::Dropped { reason }
            }
        }
    }

    /// Candidates for eviction, oldest first, starting at key `from`.
    fn candidates(
        &mut self,
        from: u64,
        n: usize,
        inflight: &dyn Fn(u64) -> bool,
    ) -> Vec<Candidate> {
        let mut out = Vec::new();
        for s in self.read(from, u64::MAX, n) {
            out.push(Candidate {
                key: s.key,
                bytes: s.stored_len(),
                at_ms: s.meta.at_ms,
                kind: s.meta.kind,
                inflight: inflight(s.key),
            });
        }
        out
    }

    fn make_room(&mut self, need: u64, inflight: &dyn Fn(u64) -> bool) {
        const CHUNK: usize = 64;
        let mut freed = 0;
        if let FullPolicy::Thin { keep_one_in } = self.settings.on_full {
            loop {
                let from = self.state.thin.upto + 1;
                let cands = self.candidates(from, CHUNK, inflight);
                if cands.is_empty() {
                    break;
                }
                let mut thin = self.state.thin;
                let pass = evict::thin_pass(need - freed, keep_one_in, &mut thin, &cands);
                self.state.thin = thin;
                self.state_dirty = true;
                freed += self.apply(&pass.drops);
                if freed >= need {
                    return;
                }
            }
        }
        let mut from = 0;
        while freed < need {
            let cands = self.candidates(from, CHUNK, inflight);
            let Some(last) = cands.last() else { break };
            from = last.key + 1;
            let pass = evict::oldest_pass(need - freed, &cands);
            freed += self.apply(&pass.drops);
        }
    }

    /// Drops records older than `max_age` (no-op without one).
    pub fn expire(&mut self, now_ms: u64, inflight: &dyn Fn(u64) -> bool) {
        let Some(max_age) = self.settings.max_age else {
            return;
        };
        let mut from = 0;
        loop {
            let cands = self.candidates(from, 256, inflight);
            let Some(last) = cands.last() else { return };
            from = last.key + 1;
            let pass = evict::expiry_pass(now_ms, max_age, &cands);
            let examined_all =
                pass.drops.len() + cands.iter().filter(|c| c.inflight).count() >= cands.len();
            self.apply(&pass.drops);
            if !examined_all {
                return;
            }
        }
    }

    /// Carries out drops, counting each; returns the bytes freed.
    fn apply(&mut self, drops: &[(u64, EvictReason)]) -> u64 {
        let mut freed = 0;
        for &(key, reason) in drops {
            let n = self.delete(key);
            if n > 0 {
                freed += n;
                let d = &mut self.state.drops;
                match reason {
                    EvictReason::Full => d.full += 1,
                    EvictReason::Expired => d.expired += 1,
                    EvictReason::Thinned => d.thinned += 1,
                }
                self.state_dirty = true;
            }
        }
        if !drops.is_empty() {
            debug!(dropped = drops.len(), freed, "Disk buffer made room.");
            self.gc_segments();
        }
        freed
    }

    /// Deletes one record; returns its stored size (0 if it was not
    /// there). The record is hidden at once and leaves sled at the next flush.
    fn delete(&mut self, key: u64) -> u64 {
        if self.pending.contains(&key) {
            return 0;
        }
        let Some(first) = self.seg_of(key) else {
            return 0;
        };
        let Some(db) = self.db(first) else { return 0 };
        match db.get(record::key_bytes(key)) {
            Ok(Some(old)) => {
                let n = old.len() as u64;
                if let Some(seg) = self.segs.get_mut(&first) {
                    seg.records -= 1;
                    seg.bytes -= n;
                }
                self.records -= 1;
                self.bytes -= n;
                self.pending.insert(key);
                self.mark_dirty(first);
                n
            }
            Ok(None) => 0,
            Err(e) => {
                warn!(error = %e, key, "Disk buffer delete failed; will retry on the next ack.");
                0
            }
        }
    }

    /// Deletes records the collector acknowledged. Returns how many were deleted.
    pub fn remove(&mut self, keys: &[u64]) -> usize {
        let mut n = 0;
        for &k in keys {
            if self.delete(k) > 0 {
                n += 1;
            }
        }
        if n > 0 {
            self.gc_segments();
        }
        n
    }

    /// Deletes emptied segments (not the head) whole: this gives their disk
    /// space and memory back.
    fn gc_segments(&mut self) {
        let empty: Vec<u64> = self
            .segs
            .iter()
            .filter(|(f, s)| **f != self.head && s.records == 0)
            .map(|(f, _)| *f)
            .collect();
        for f in empty {
            let end = self
                .segs
                .range(f + 1..)
                .next()
                .map_or(u64::MAX, |(n, _)| *n);
            let gone: Vec<u64> = self.pending.range(f..end).copied().collect();
            for k in gone {
                self.pending.remove(&k);
            }
            self.segs.remove(&f);
            if let Some(i) = self.open.iter().position(|(o, _)| *o == f) {
                self.open.remove(i);
            }
            self.dirty.retain(|d| *d != f);
            remove_dir(&self.dir.join(seg_name(f)));
            debug!(segment = f, "Deleted a drained disk buffer segment.");
        }
    }

    /// Reads up to `max_records` records, oldest first, from key `from` on,
    /// stopping before `max_bytes` of stored values would be passed (at least
    /// one record is returned if any exists). Corrupt records met on the way
    /// are removed and counted.
    pub fn read(&mut self, from: u64, max_bytes: u64, max_records: usize) -> Vec<Stored> {
        self.read_filtered(from, max_bytes, max_records, &|_| false)
    }

    /// Like [`Buffer::read`], skipping keys for which `skip` is true.
    pub fn read_filtered(
        &mut self,
        from: u64,
        max_bytes: u64,
        max_records: usize,
        skip: &dyn Fn(u64) -> bool,
    ) -> Vec<Stored> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut corrupt = Vec::new();
        let start_seg = self.seg_of(from).unwrap_or(0);
        let firsts: Vec<u64> = self.segs.range(start_seg..).map(|(f, _)| *f).collect();
        'segs: for first in firsts {
            if self.segs.get(&first).is_none_or(|s| s.records == 0) {
                continue;
            }
            // A segment that cannot be opened right now ends this read (the
            // next one retries): skipping it would let a caller's cursor
            // pass records it never saw.
            let Some(db) = self.db(first) else { break };
            for item in db.range(record::key_bytes(from)..) {
                let (k, v) = match item {
                    Ok(kv) => kv,
                    Err(e) => {
                        warn!(error = %e, segment = first, "Disk buffer read failed.");
                        continue 'segs;
                    }
                };
                let Some(key) = record::key_of(&k) else {
                    corrupt.push((first, k.to_vec()));
                    continue;
                };
                if skip(key) || self.pending.contains(&key) {
                    continue;
                }
                match record::decode_value(&v) {
                    Ok((meta, _)) => {
                        let len = v.len() as u64;
                        if !out.is_empty() && (bytes + len > max_bytes || out.len() >= max_records)
                        {
                            break 'segs;
                        }
                        bytes += len;
                        out.push(Stored {
                            key,
                            meta,
                            value: v,
                        });
                        if out.len() >= max_records {
                            break 'segs;
                        }
                    }
                    Err(why) => {
                        warn!(key, %why, "Skipping a corrupt record in the disk buffer.");
                        corrupt.push((first, k.to_vec()));
                    }
                }
            }
        }
        for (first, k) in corrupt {
            if let Some(db) = self.db(first)
                && let Ok(Some(old)) = db.remove(&k)
            {
                let n = old.len() as u64;
                if let Some(seg) = self.segs.get_mut(&first) {
                    seg.records -= 1;
                    seg.bytes -= n;
                }
                self.records -= 1;
                self.bytes -= n;
                self.state.drops.corrupt += 1;
                self.state_dirty = true;
                self.mark_dirty(first);
            }
        }
        out
    }

    /// Removes a record that was read but cannot be used (it does not
    /// decode), counting it as corrupt.
    pub fn discard_corrupt(&mut self, key: u64) {
        if self.delete(key) > 0 {
            self.state.drops.corrupt += 1;
            self.state_dirty = true;
            self.gc_segments();
        }
    }

    /// One record by key.
    pub fn get(&mut self, key: u64) -> Option<Stored> {
        self.read(key, u64::MAX, 1)
            .into_iter()
            .find(|s| s.key == key)
    }

    /// Makes every append and removal so far durable, and persists the
    /// drop counts. Called every `flush_interval` and at shutdown.
    pub fn flush(&mut self) -> Result<(), BufferError> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut failed = Vec::new();
        for first in dirty {
            if let Some((_, db)) = self.open.iter().find(|(f, _)| *f == first)
                && let Err(e) = db.flush()
            {
                warn!(error = %e, segment = first, "Disk buffer flush failed.");
                failed.push(first);
                if first == self.head {
                    self.head_failed = true;
                }
            }
        }
        let mut marks = BTreeMap::new();
        for (&first, seg) in &self.segs {
            let mark = if failed.contains(&first) {
                self.state.marks.get(&first).copied()
            } else {
                Some(Mark {
                    last_key: seg.last_key,
                    live: seg.records,
                })
            };
            if let Some(m) = mark {
                marks.insert(first, m);
            }
        }
        if marks != self.state.marks {
            self.state.marks = marks;
            self.state_dirty = true;
        }
        self.dirty.extend(failed);
        if self.state_dirty {
            let path = self.dir.join("state.json");
            let bytes = serde_json::to_vec(&self.state).expect("state serialises");
            muster_base::fsutil::write_atomic(&path, &bytes, muster_base::fsutil::Mode::Default)
                .map_err(io_err(&path))?;
            self.state_dirty = false;
        }
        self.apply_pending();
        Ok(())
    }

    /// Removes deferred deletions from sled, now that `state.json` counts
    /// them, and makes the removals durable.
    fn apply_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.pending);
        let mut touched = Vec::new();
        for key in keys {
            let Some(first) = self.seg_of(key) else {
                continue;
            };
            let Some(db) = self.db(first) else {
                // Not openable now: keep it hidden and retry next flush.
                self.pending.insert(key);
                continue;
            };
            match db.remove(record::key_bytes(key)) {
                Ok(_) => {
                    if !touched.contains(&first) {
                        touched.push(first);
                    }
                }
                Err(e) => {
                    warn!(error = %e, key, "Disk buffer removal failed; retrying at the next flush.");
                    self.pending.insert(key);
                }
            }
        }
        for first in touched {
            if let Some(db) = self.db(first)
                && let Err(e) = db.flush()
            {
                warn!(error = %e, segment = first, "Flushing disk buffer removals failed.");
                self.mark_dirty(first);
            }
        }
    }

    pub fn stats(&mut self) -> Stats {
        let oldest_at_ms = self.read(0, u64::MAX, 1).first().map(|s| s.meta.at_ms);
        Stats {
            records: self.records,
            bytes: self.bytes,
            oldest_at_ms,
        }
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Drops since the buffer was created, by reason (persisted).
    pub fn drops(&self) -> DropCounts {
        self.state.drops
    }

    /// Segments on disk, and how many are open.
    pub fn segments(&self) -> (usize, usize) {
        (self.segs.len(), self.open.len())
    }

    /// The key the next append gets.
    pub fn next_key(&self) -> u64 {
        self.next_key
    }

    pub fn settings(&self) -> &BufferSettings {
        &self.settings
    }
}

/// Closes the buffer: a final flush, the segments closed, then the
/// directory unlocked (`DirLock`): when the owner (the uplink) is gone,
/// the buffer can be opened again at once.
impl Drop for Buffer {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            warn!(error = %e, "Final disk buffer flush failed.");
        }
        // Our handles on the segments go before the lock (sled may finish
        // closing one in the background: `open_sled` waits for that).
        self.open.clear();
        self.lock.release();
    }
}

/// Scans a segment: counts records and bytes, removes corrupt ones.
/// Returns (stats, valid records with keys up to `upto`, corrupt count).
fn scan(db: &sled::Db, upto: u64) -> Result<(Segment, u64, u64), sled::Error> {
    let mut seg = Segment::default();
    let mut found_old = 0;
    let mut bad = Vec::new();
    for item in db.iter() {
        let (k, v) = item?;
        match (record::key_of(&k), record::decode_value(&v)) {
            (Some(key), Ok(_)) => {
                seg.records += 1;
                seg.bytes += v.len() as u64;
                seg.last_key = key;
                if key <= upto {
                    found_old += 1;
                }
            }
            _ => bad.push(k),
        }
    }
    let corrupt = bad.len() as u64;
    for k in bad {
        if let Some(key) = record::key_of(&k) {
            seg.last_key = seg.last_key.max(key);
            if key <= upto {
                // Counted here as corrupt, not again as vanished.
                found_old += 1;
            }
        }
        db.remove(k)?;
    }
    seg.appended = seg.bytes;
    Ok((seg, found_old, corrupt))
}

fn aside_name(path: &Path, now_ms: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".broken-{now_ms}"));
    PathBuf::from(s)
}

fn remove_dir(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "Cannot delete a disk buffer segment.");
    }
}

impl From<sled::Error> for BufferError {
    fn from(e: sled::Error) -> Self {
        BufferError::Sled(e)
    }
}
