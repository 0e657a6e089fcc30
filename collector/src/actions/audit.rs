//! The exportable audit log: every logged action step, one JSON object a
//! line (the API's shape, `ActionView`), in id order, in
//! `<store.path>/actions/audit.jsonl`.
//!
//! Contract:
//!
//! * **Bounded.** Before a line would take the file past `max_bytes` it is
//!   rotated: `audit.jsonl` becomes `audit.jsonl.1` (the previous one, and
//!   its entries, are dropped and counted) and a new file starts. So at
//!   most two files are kept, each at most `max_bytes` (a single line
//!   longer than that gets a file of its own): the log holds the newest
//!   entries, at least `max_bytes` of them once it has rotated.
//! * **Append-only, exactly once.** An entry is appended only if its id is
//!   above the last one in the log; lines are whole (a write that fails is
//!   cut back off; a torn last line left by a crash is cut at open), and
//!   each append is fsynced. The log follows the store, where the entries
//!   are committed first (`crate::actions`), so a restart appends what the
//!   last run did not and nothing twice.
//! * **Exported whole**: [`AuditLog::files`] opens the previous file and the
//!   current one together, with the lengths they had (complete lines), so a
//!   rotation during an export neither loses nor repeats an entry.
//!
//! Synchronous file I/O: callers run it on a blocking thread.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::event::{ActionView, StoredAction};

/// The current file, under the log's directory.
pub const CURRENT: &str = "audit.jsonl";
/// The previous file (one is kept).
pub const PREVIOUS: &str = "audit.jsonl.1";
/// The longest last line read back at open to learn the last id.
const MAX_TAIL: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: its last line is not an audit entry: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |error| AuditError::Io {
        path: path.to_owned(),
        error,
    }
}

/// What one append did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Entries written.
    pub written: u64,
    /// Entries dropped by rotation (the previous file's).
    pub dropped: u64,
}

#[derive(Debug)]
struct Inner {
    file: File,
    bytes: u64,
    entries: u64,
    previous_entries: u64,
    last_id: u64,
}

/// The audit log (see the module's contract).
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

/// Newlines in `path` (0 when it does not exist).
fn count_lines(path: &Path) -> Result<u64, AuditError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(path)(e)),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf).map_err(io(path))?;
        if got == 0 {
            return Ok(n);
        }
        n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// The id of the last whole line of `f` (`len` bytes, ending in a newline),
/// if any.
fn last_id(path: &Path, f: &mut File, len: u64) -> Result<Option<u64>, AuditError> {
    if len == 0 {
        return Ok(None);
    }
    // The line before the final newline: read backwards until the newline
    // before it (or the file's start).
    let end = len - 1;
    let mut start = end;
    let mut tail: Vec<u8> = Vec::new();
    while start > 0 && end - start < MAX_TAIL {
        let step = start.min(64 * 1024);
        start -= step;
        let mut chunk = vec![0u8; step as usize];
        f.seek(SeekFrom::Start(start)).map_err(io(path))?;
        f.read_exact(&mut chunk).map_err(io(path))?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if let Some(i) = tail.iter().rposition(|&b| b == b'\n') {
            tail.drain(..=i);
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Id {
        id: u64,
    }
    serde_json::from_slice::<Id>(&tail)
        .map(|i| Some(i.id))
        .map_err(|e| AuditError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Opens `path` for appending, cutting a torn last line; its length.
fn open_whole(path: &Path) -> Result<(File, u64), AuditError> {
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    if len == 0 {
        return Ok((f, 0));
    }
    // The position after the last newline (0: none).
    let mut keep = 0u64;
    let mut pos = len;
    while pos > 0 {
        let step = pos.min(64 * 1024);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        f.seek(SeekFrom::Start(pos)).map_err(io(path))?;
        f.read_exact(&mut chunk).map_err(io(path))?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            keep = pos + i as u64 + 1;
            break;
        }
    }
    if keep < len {
        tracing::warn!(path = %path.display(), cut_bytes = len - keep, "Audit log: a torn last line (a crash mid-write) was cut.");
        f.set_len(keep).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok((f, keep))
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, rotating past `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cur = dir.join(CURRENT);
        let prev = dir.join(PREVIOUS);
        let (mut file, bytes) = open_whole(&cur)?;
        let mut last = last_id(&cur, &mut file, bytes)?;
        if last.is_none() && prev.exists() {
            let (mut p, plen) = open_whole(&prev)?;
            last = last_id(&prev, &mut p, plen)?;
        }
        let inner = Inner {
            entries: count_lines(&cur)?,
            previous_entries: count_lines(&prev)?,
            file,
            bytes,
            last_id: last.unwrap_or(0),
        };
        Ok(AuditLog {
            dir: dir.to_owned(),
            max_bytes,
            inner: Mutex::new(inner),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of the newest entry (0: none).
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the entries newer than the last one, in order, rotating as
    /// needed; fsynced before it returns.
    pub fn append(&self, entries: &[StoredAction]) -> Result<Appended, AuditError> {
        let cur = self.dir.join(CURRENT);
        let mut g = self.lock();
        let mut done = Appended::default();
        for e in entries {
            if e.id <= g.last_id {
                continue;
            }
            let mut line =
                serde_json::to_vec(&ActionView::from(e)).map_err(|e| AuditError::Corrupt {
                    path: cur.clone(),
                    message: e.to_string(),
                })?;
            line.push(b'\n');
            if g.bytes > 0 && g.bytes + line.len() as u64 > self.max_bytes {
                done.dropped += self.rotate(&mut g)?;
            }
            if let Err(err) = g.file.write_all(&line) {
                // Whole lines only: cut a partial write back off.
                let keep = g.bytes;
                let _ = g.file.set_len(keep);
                return Err(io(&cur)(err));
            }
            g.bytes += line.len() as u64;
            g.entries += 1;
            g.last_id = e.id;
            done.written += 1;
        }
        if done.written > 0 {
            g.file.sync_data().map_err(io(&cur))?;
        }
        Ok(done)
    }

    /// The current file becomes the previous one (dropping that one's
    /// entries: returned); a new current file starts.
    fn rotate(&self, g: &mut Inner) -> Result<u64, AuditError> {
        let cur = self.dir.join(CURRENT);
        let prev = self.dir.join(PREVIOUS);
        g.file.sync_data().map_err(io(&cur))?;
        std::fs::rename(&cur, &prev).map_err(io(&prev))?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&cur)
            .map_err(io(&cur))?;
        // The rename and the new file survive a crash.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        let dropped = g.previous_entries;
        g.previous_entries = g.entries;
        g.entries = 0;
        g.bytes = 0;
        g.file = file;
        Ok(dropped)
    }

    /// The previous file (if any) then the current one, opened together,
    /// each with the length of its whole lines at that moment.
    pub fn files(&self) -> Result<Vec<(File, u64)>, AuditError> {
        let g = self.lock();
        let mut out = Vec::with_capacity(2);
        let prev = self.dir.join(PREVIOUS);
        match File::open(&prev) {
            Ok(f) => {
                let len = f.metadata().map_err(io(&prev))?.len();
                out.push((f, len));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&prev)(e)),
        }
        let cur = self.dir.join(CURRENT);
        let f = File::open(&cur).map_err(io(&cur))?;
        out.push((f, g.bytes));
        Ok(out)
    }

    /// Bytes on disk (both files).
    pub fn size(&self) -> u64 {
        let g = self.lock();
        let prev = std::fs::metadata(self.dir.join(PREVIOUS)).map_or(0, |m| m.len());
        g.bytes + prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::event::{ActionEvent, Step};

    fn entry(id: u64, out: usize) -> StoredAction {
        StoredAction {
            id,
            event: ActionEvent {
                agency: "metro-fire".into(),
                unit: "E12".into(),
                step: Step::Finished,
                at_ms: id,
                request: Some("ab".repeat(16)),
                action: Some("restart-cad-client".into()),
                requested_by: Some("admin".into()),
                params: None,
                issued_ms: None,
                expires_ms: None,
                record: None,
                refusal: None,
                reason: None,
                exit_code: Some(0),
                timed_out: Some(false),
                duration_ms: Some(5),
                stdout: Some("x".repeat(out)),
                stderr: None,
                summary: "restart-cad-client finished: exit 0 in 5ms".into(),
            },
        }
    }

    fn ids(log: &AuditLog) -> Vec<u64> {
        let mut out = Vec::new();
        for (mut f, len) in log.files().unwrap() {
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            for l in s[..len as usize].lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["type"], "action");
                out.push(v["id"].as_u64().unwrap());
            }
        }
        out
    }

    #[test]
    fn entries_are_appended_once_in_order_and_survive_a_reopen() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.last_id(), 0);
        let a = log.append(&[entry(3, 10), entry(5, 10)]).unwrap();
        assert_eq!(
            a,
            Appended {
                written: 2,
                dropped: 0
            }
        );
        // Again, and older: nothing twice.
        let a = log
            .append(&[entry(5, 10), entry(4, 10), entry(8, 10)])
            .unwrap();
        assert_eq!(a.written, 1);
        assert_eq!(ids(&log), [3, 5, 8]);
        drop(log);
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.last_id(), 8);
        assert_eq!(log.append(&[entry(8, 1)]).unwrap().written, 0);
        assert_eq!(ids(&log), [3, 5, 8]);
    }

    #[test]
    fn a_torn_last_line_is_cut_at_open() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&[entry(1, 10), entry(2, 10)]).unwrap();
        drop(log);
        let path = dir.path().join(CURRENT);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\": 3, \"type\": \"act").unwrap();
        drop(f);
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.last_id(), 2);
        log.append(&[entry(3, 10)]).unwrap();
        assert_eq!(ids(&log), [1, 2, 3]);
    }

    #[test]
    fn rotation_keeps_two_files_within_the_bound_and_counts_what_it_drops() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let one = serde_json::to_vec(&ActionView::from(&entry(10, 500)))
            .unwrap()
            .len() as u64
            + 1;
        // Three lines a file.
        let max = 3 * one + one / 2;
        let log = AuditLog::open(dir.path(), max).unwrap();
        let mut dropped = 0;
        for id in 10..30 {
            dropped += log.append(&[entry(id, 500)]).unwrap().dropped;
            let cur = std::fs::metadata(dir.path().join(CURRENT)).unwrap().len();
            let prev = std::fs::metadata(dir.path().join(PREVIOUS)).map_or(0, |m| m.len());
            assert!(cur <= max && prev <= max, "{cur} {prev} > {max}");
            assert!(log.size() <= 2 * max);
        }
        // 20 written, the newest two files' worth kept: 6 (3 + 3 when the
        // last rotation just happened, else fewer in the current).
        let kept = ids(&log);
        assert_eq!(kept.len() as u64 + dropped, 20, "{kept:?}");
        assert_eq!(*kept.last().unwrap(), 29);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert!(kept.len() >= 4, "{kept:?}");
        // The counts survive a reopen: the next rotation drops the
        // previous file's lines.
        drop(log);
        let log = AuditLog::open(dir.path(), max).unwrap();
        assert_eq!(log.last_id(), 29);
        let before = ids(&log);
        let prev_lines = count_lines(&dir.path().join(PREVIOUS)).unwrap();
        let mut d = 0;
        for id in 30..34 {
            d += log.append(&[entry(id, 500)]).unwrap().dropped;
        }
        assert!(d >= prev_lines, "{d} < {prev_lines}");
        assert_eq!(ids(&log).len() as u64 + d, before.len() as u64 + 4);
        // A line longer than the bound gets a file of its own.
        let big = log.append(&[entry(40, 8 * max as usize)]).unwrap();
        assert_eq!(big.written, 1);
        assert_eq!(*ids(&log).last().unwrap(), 40);
    }
}
