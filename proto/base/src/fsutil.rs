//! Writing a small file so that a crash at any point leaves either the old
//! or the new content, never a torn one: a temporary beside it, fsync,
//! rename over, then fsync of the directory (best effort).
//! [`write_atomic_unsynced`] is the same without the fsyncs, for files
//! that are rewritten often and only describe the present.

use std::io::Write;
use std::path::Path;

/// Whether the file is readable by its owner only (Unix mode 0600; on
/// Windows the data directory's ACL is the protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Private,
    Default,
}

/// Writes `bytes` to `path` atomically and durably; creates the parent
/// directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    write(path, bytes, mode, true)
}

/// [`write_atomic`] without the fsyncs. Contract: the rename is still
/// atomic, so a reader (or a crash of the process) sees the old or the new
/// content, never a torn one; but a power cut may lose the write (the old
/// content, or an empty file, after the reboot). For a file rewritten every
/// few seconds that only describes the present (the agent's
/// `status.json`, every 5 s), not for state that must survive: an fsync
/// each time would cost disk wear and latency for nothing.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    write(path, bytes, mode, false)
}

/// The one implementation: `synced` fsyncs the file before the rename and
/// the directory after it.
fn write(path: &Path, bytes: &[u8], mode: Mode, synced: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if mode == Mode::Private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(&tmp)?;
    f.write_all(bytes)?;
    if synced {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if synced
        && let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Write = fn(&Path, &[u8], Mode) -> std::io::Result<()>;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let both: [(&str, Write); 2] = [
            ("synced", write_atomic),
            ("unsynced", write_atomic_unsynced),
        ];
        for (name, write) in both {
            let dir =
                std::env::temp_dir().join(format!("muster-fsutil-{name}-{}", std::process::id()));
            let p = dir.join("sub").join("f.json");
            write(&p, b"one", Mode::Default).unwrap();
            // A temporary left by a crash is replaced, not appended to.
            std::fs::write(dir.join("sub").join("f.json.tmp"), b"stale and longer").unwrap();
            write(&p, b"two", Mode::Private).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"two", "{name}");
            let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["f.json"], "{name}");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(m, 0o600, "{name}");
            }
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
