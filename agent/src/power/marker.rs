//! The restart marker: `muster-agent announce-restart --within 2m` (run by
//! the deb's postinst and the MSI before they restart the service) writes
//! `<data_dir>/restart-announced`; a stop while it is valid announces
//! `Stop{back_within}` instead of a plain `Stop`.
//!
//! Contract: written atomically (a temp file renamed over it), at most
//! [`MAX_BYTES`]; valid until `expires_ms` (written + `within`, agent
//! clock); removed when a stop reads it (consumed once), and ignored (and
//! removed) when stale, unreadable or malformed; a marker found at start
//! (no stop consumed it) is removed. `within` is at most
//! [`MAX_WITHIN`]. [`judge`] is the pure part.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The marker's file name in the data dir.
pub const FILE: &str = "restart-announced";

/// A marker larger than this is not ours: ignored.
pub const MAX_BYTES: u64 = 1024;

/// The longest restart a marker may announce.
pub const MAX_WITHIN: Duration = Duration::from_secs(3600);

const HEADER: &str = "muster restart marker v1";

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("--within must be between 1s and {}s", MAX_WITHIN.as_secs())]
    Within,
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The marker's text for a restart within `within_ms` announced at `now_ms`.
pub fn render(within_ms: u64, now_ms: u64) -> String {
    format!(
        "{HEADER}\nback_within_ms={within_ms}\nexpires_ms={}\n",
        now_ms.saturating_add(within_ms)
    )
}

/// Pure: the `back_within_ms` a marker's text announces at `now_ms`, or
/// `None` when it is malformed or stale.
pub fn judge(text: &str, now_ms: u64) -> Option<u64> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let (mut within, mut expires) = (None, None);
    for line in lines {
        let (k, v) = line.split_once('=')?;
        let v: u64 = v.trim().parse().ok()?;
        match k.trim() {
            "back_within_ms" => within = Some(v),
            "expires_ms" => expires = Some(v),
            _ => return None,
        }
    }
    let (within, expires) = (within?, expires?);
    let max = MAX_WITHIN.as_millis() as u64;
    // A marker written "in the future" beyond its window is not trusted.
    let written = expires.checked_sub(within)?;
    if within == 0 || within > max || now_ms >= expires || written > now_ms.saturating_add(max) {
        return None;
    }
    Some(within)
}

/// Writes the marker atomically; returns its path.
pub fn write(data_dir: &Path, within: Duration, now_ms: u64) -> Result<PathBuf, MarkerError> {
    if within < Duration::from_secs(1) || within > MAX_WITHIN {
        return Err(MarkerError::Within);
    }
    let dest = path(data_dir);
    muster_base::fsutil::write_atomic(
        &dest,
        render(within.as_millis() as u64, now_ms).as_bytes(),
        muster_base::fsutil::Mode::Default,
    )
    .map_err(|source| MarkerError::Io {
        path: dest.clone(),
        error: source,
    })?;
    Ok(dest)
}

/// Removes a marker no stop consumed (at start: it was meant for the stop
/// that started this run, which was an older agent's or a crash).
pub fn clear(data_dir: &Path) {
    let p = path(data_dir);
    match std::fs::remove_file(&p) {
        Ok(()) => tracing::info!(path = %p.display(), "Removed a restart marker no stop consumed."),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "Cannot remove the restart marker.")
        }
    }
}

/// Reads and removes the marker: the `back_within_ms` it announces, if it
/// is valid at `now_ms`. Any marker found is removed (consumed or stale).
pub fn take(data_dir: &Path, now_ms: u64) -> Option<u64> {
    let p = path(data_dir);
    let meta = std::fs::metadata(&p).ok()?;
    let text = if meta.len() <= MAX_BYTES {
        std::fs::read_to_string(&p).ok()
    } else {
        None
    };
    if let Err(e) = std::fs::remove_file(&p) {
        tracing::warn!(path = %p.display(), error = %e, "Cannot remove the restart marker.");
    }
    let got = text.as_deref().and_then(|t| judge(t, now_ms));
    match got {
        Some(ms) => tracing::info!(
            back_within_ms = ms,
            "Restart announced: stopping for a restart."
        ),
        None => tracing::info!(path = %p.display(), "Stale or malformed restart marker ignored."),
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_valid_until_it_expires() {
        let t = render(120_000, 1_000);
        let cases = [
            (t.as_str(), 1_000, Some(120_000)),
            (t.as_str(), 120_999, Some(120_000)),
            (t.as_str(), 121_000, None),
            (t.as_str(), u64::MAX, None),
            ("", 1_000, None),
            (
                "muster restart marker v2\nback_within_ms=1\nexpires_ms=9\n",
                1,
                None,
            ),
            ("muster restart marker v1\nback_within_ms=1000\n", 1, None),
            (
                "muster restart marker v1\nback_within_ms=x\nexpires_ms=9\n",
                1,
                None,
            ),
            (
                "muster restart marker v1\nback_within_ms=1\nexpires_ms=9\nmore=1\n",
                1,
                None,
            ),
            (
                "muster restart marker v1\nback_within_ms=0\nexpires_ms=9\n",
                1,
                None,
            ),
            // Longer than MAX_WITHIN.
            (
                "muster restart marker v1\nback_within_ms=3600001\nexpires_ms=3600002\n",
                1,
                None,
            ),
            // expires below within: malformed.
            (
                "muster restart marker v1\nback_within_ms=10\nexpires_ms=5\n",
                1,
                None,
            ),
        ];
        for (text, now, want) in cases {
            assert_eq!(judge(text, now), want, "{text:?} at {now}");
        }
        // Written far in the future (a clock set back since): not trusted.
        assert_eq!(judge(&render(1_000, 10_000_000), 1_000), None);
    }

    #[test]
    fn take_consumes_the_marker_once() {
        let dir = tempfile_dir();
        write(&dir, Duration::from_secs(60), 1_000).unwrap();
        assert_eq!(take(&dir, 2_000), Some(60_000));
        assert!(!path(&dir).exists());
        assert_eq!(take(&dir, 2_000), None);
        write(&dir, Duration::from_secs(60), 1_000).unwrap();
        assert_eq!(take(&dir, 61_000), None, "stale");
        assert!(!path(&dir).exists(), "a stale marker is removed");
        assert!(matches!(
            write(&dir, Duration::from_secs(7200), 1),
            Err(MarkerError::Within)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "muster-marker-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
