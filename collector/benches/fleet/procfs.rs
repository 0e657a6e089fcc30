//! What the bench reads about the collector process and its store, and the
//! arithmetic on it.
//!
//! Contract:
//! * CPU: `/proc/PID/stat` is `pid (comm) state ppid ...`; `comm` may hold
//!   spaces and parentheses, so the fields are those after the LAST `)`;
//!   `utime` and `stime` are fields 14 and 15 of the whole line (11 and 12
//!   after the comm, counting `state` as the first). Fields are split, never
//!   filtered: `tpgid` is -1 for a daemon, and a parser that drops fields
//!   that are not unsigned shifts everything after it.
//! * Store size: bytes allocated on disk (`st_blocks * 512`, as `du`)
//!   under the collector's data directory, not the files' apparent sizes.
//! * RSS slope: least-squares KiB per minute over the samples of the last
//!   half of the run, so "plateaus" is a number near zero.
//!
//! The parsers and the arithmetic are pure and checked by [`self_test`].

use std::path::Path;
use std::time::Duration;

/// Clock ticks per second for `/proc/PID/stat` times (`sysconf(_SC_CLK_TCK)`
/// is 100 on every Linux the bench runs on).
const TICKS_PER_S: f64 = 100.0;

/// `utime + stime` in ticks, from a `/proc/PID/stat` line.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // f[0] is field 3 (state): field k of the line is f[k - 3].
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds `pid` used so far (utime + stime); 0 if unreadable.
pub fn cpu_s(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(stat_cpu_ticks)
        .unwrap_or(0) as f64
        / TICKS_PER_S
}

/// Bytes allocated on disk under `path` (as `du -s --block-size=1`).
pub fn du_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for e in entries.flatten() {
            total += du_bytes(&e.path());
        }
    }
    total
}

/// Least-squares slope of `(t, kib)` samples, KiB per minute, over those
/// in the last half of the time they span; NaN with fewer than 2.
pub fn slope_kib_per_min(samples: &[(Duration, u64)]) -> f64 {
    let Some(&(end, _)) = samples.last() else {
        return f64::NAN;
    };
    let start = samples[0].0;
    let half = start + (end - start) / 2;
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= half)
        .map(|&(t, k)| (t.as_secs_f64() / 60.0, k as f64))
        .collect();
    if pts.len() < 2 {
        return f64::NAN;
    }
    let n = pts.len() as f64;
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { f64::NAN } else { sxy / sxx }
}

/// Nearest-rank percentile of ascending `sorted`; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Table checks of this module (run by the bench binary without `--bench`).
pub fn self_test() -> usize {
    let mut n = 0;
    // A comm with spaces and parentheses, and tpgid -1 (field 8).
    let line = "4242 (tokio (rt) ) x) S 1 4242 4242 0 -1 4194560 5163 0 0 0 \
                10050 1570 3 4 20 0 6 0 123 4567 890 18446744073709551615";
    assert_eq!(stat_cpu_ticks(line), Some(10050 + 1570));
    let plain = "17 (muster-collector) R 1 17 17 0 -1 4194304 100 0 0 0 7 5 0 0 20 0 3 0";
    assert_eq!(stat_cpu_ticks(plain), Some(12));
    // The old parser's failure: dropping "-1" shifted stime + cutime in.
    assert_ne!(stat_cpu_ticks(line), Some(1570 + 3));
    assert_eq!(stat_cpu_ticks("12 (x) S 1 2"), None);
    assert_eq!(stat_cpu_ticks("no paren"), None);
    n += 5;

    let m = |s: u64| Duration::from_secs(s);
    // Flat in the second half after growth in the first: slope 0.
    let flat = [(m(0), 100), (m(60), 500), (m(120), 900), (m(180), 900)];
    assert_eq!(slope_kib_per_min(&flat), 0.0);
    // 100 KiB/min throughout.
    let rising: Vec<_> = (0..10).map(|k| (m(60 * k), 1000 + 100 * k)).collect();
    assert!((slope_kib_per_min(&rising) - 100.0).abs() < 1e-9);
    assert!(slope_kib_per_min(&[(m(0), 1)]).is_nan());
    n += 3;

    assert!(percentile(&[], 0.5).is_nan());
    assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.99), 3.0);
    n += 3;
    n
}
