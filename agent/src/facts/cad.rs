//! Reading the watched CAD client's version (`[cad]`): the first line of a
//! file, the first line of a command's output, or (Windows) an
//! executable's file version ([`super::pe`]).
//!
//! Contract: every reading is bounded in time and in bytes. At most
//! [`MAX_READ`] bytes of a file or of a command's output are read; a
//! command that prints more is refused, and one still running at the
//! timeout is killed. A command is run directly from its argv (no shell, no
//! PATH lookup: the config insists on an absolute program path), with
//! stdin and stderr closed. A version is the first line, trimmed (and a
//! UTF-8 byte-order mark dropped), non-empty, at most
//! [`muster_proto::MAX_FACT_LEN`] characters and without control
//! characters: what is returned always passes the wire's `validate_text`.

use std::path::Path;
use std::time::Duration;

use muster_proto::MAX_FACT_LEN;
use tokio::io::AsyncReadExt;

use super::pe;
use crate::config::CadVersionSource;

/// The most bytes read of a version file or a command's output.
pub const MAX_READ: usize = 4096;

/// Why the CAD client's version could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("cannot run {program}: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{program} exited with {status}")]
    Exit { program: String, status: String },
    #[error("{program} printed more than {MAX_READ} bytes")]
    TooMuchOutput { program: String },
    #[error("the first line is empty")]
    Empty,
    #[error("the first line is not UTF-8 text")]
    NotText,
    #[error("the first line has {0} characters; at most {MAX_FACT_LEN}")]
    TooLong(usize),
    #[error("the first line has control characters")]
    Control,
    #[error("{path}: {error}")]
    Pe { path: String, error: pe::PeError },
    #[error("the reading thread failed: {0}")]
    Task(String),
}

/// The version in `bytes`: its first line, trimmed. Pure.
pub fn first_line(bytes: &[u8]) -> Result<String, VersionError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line)
        .map_err(|_| VersionError::NotText)?
        .trim();
    if line.is_empty() {
        return Err(VersionError::Empty);
    }
    let n = line.chars().count();
    if n > MAX_FACT_LEN {
        return Err(VersionError::TooLong(n));
    }
    if line.chars().any(char::is_control) {
        return Err(VersionError::Control);
    }
    Ok(line.to_owned())
}

/// The first line of the file at `path`, reading at most [`MAX_READ`]
/// bytes. Blocking.
pub fn read_file(path: &Path) -> Result<String, VersionError> {
    use std::io::Read;
    let io = |error| VersionError::Io {
        path: path.display().to_string(),
        error,
    };
    let mut buf = Vec::with_capacity(MAX_READ);
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_READ as u64)
        .read_to_end(&mut buf)
        .map_err(io)?;
    first_line(&buf)
}

/// The file version of the executable at `path`. Blocking.
pub fn read_executable(path: &Path) -> Result<String, VersionError> {
    let mut f = std::fs::File::open(path).map_err(|error| VersionError::Io {
        path: path.display().to_string(),
        error,
    })?;
    pe::file_version(&mut f)
        .map(|v| v.to_string())
        .map_err(|error| VersionError::Pe {
            path: path.display().to_string(),
            error,
        })
}

/// The first line of `argv`'s standard output. The caller bounds the time
/// ([`read`]); dropping this future kills the command.
pub async fn run_command(argv: &[String]) -> Result<String, VersionError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut child = tokio::process::Command::new(&program)
        .args(&argv[1.min(argv.len())..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| VersionError::Spawn {
            program: program.clone(),
            error,
        })?;
    let mut out = Vec::with_capacity(MAX_READ);
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(MAX_READ as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|error| VersionError::Io {
                path: format!("{program} (its output)"),
                error,
            })?;
    }
    if out.len() > MAX_READ {
        // Dropping the child kills it.
        return Err(VersionError::TooMuchOutput { program });
    }
    let status = child.wait().await.map_err(|error| VersionError::Spawn {
        program: program.clone(),
        error,
    })?;
    if !status.success() {
        return Err(VersionError::Exit {
            program,
            status: status.to_string(),
        });
    }
    first_line(&out)
}

/// Reads the version from `source`, within `timeout`. File and executable
/// readings run on a blocking thread: one stuck on a hung share is left
/// behind at the timeout (it holds nothing else).
pub async fn read(source: &CadVersionSource, timeout: Duration) -> Result<String, VersionError> {
    let blocking = |f: Box<dyn FnOnce() -> Result<String, VersionError> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| VersionError::Task(e.to_string()))?
    };
    let reading = async {
        match source {
            CadVersionSource::File(p) => {
                let p = p.clone();
                blocking(Box::new(move || read_file(&p))).await
            }
            CadVersionSource::Executable(p) => {
                let p = p.clone();
                blocking(Box::new(move || read_executable(&p))).await
            }
            CadVersionSource::Command(argv) => run_command(argv).await,
        }
    };
    tokio::time::timeout(timeout, reading)
        .await
        .map_err(|_| VersionError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_trimmed_and_bounded() {
        let long = "7".repeat(MAX_FACT_LEN);
        let too_long = "7".repeat(MAX_FACT_LEN + 1);
        let cases: &[(&[u8], Result<&str, &str>)] = &[
            (b"7.4.1\n", Ok("7.4.1")),
            (b"  7.4.1 build 12 \r\nsecond line\n", Ok("7.4.1 build 12")),
            (b"\xEF\xBB\xBF7.4.1\r\n", Ok("7.4.1")),
            (b"7.4.1", Ok("7.4.1")),
            (
                "Version 7.4 \u{2013} Ünits".as_bytes(),
                Ok("Version 7.4 \u{2013} Ünits"),
            ),
            (long.as_bytes(), Ok(&long)),
            (too_long.as_bytes(), Err("129 characters")),
            (b"", Err("empty")),
            (b"\n7.4.1\n", Err("empty")),
            (b"   \r\n", Err("empty")),
            (b"7.4\x001\n", Err("control")),
            (b"7.4\x1b[0m\n", Err("control")),
            ("7.4\u{85}1".as_bytes(), Err("control")),
            (b"7.4.\xff\n", Err("not UTF-8")),
        ];
        for (input, want) in cases {
            let got = first_line(input).map_err(|e| e.to_string());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{input:?}"),
                (Err(frag), Err(e)) => assert!(e.contains(frag), "{input:?}: {e:?} lacks {frag:?}"),
                _ => panic!("{input:?}: {got:?}, want {want:?}"),
            }
            if let Ok(v) = &got {
                muster_proto::validate_text("cad_version", v, MAX_FACT_LEN).unwrap();
            }
        }
    }
}
