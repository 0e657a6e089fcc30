//! A real PostgreSQL for tests: Debian's PostgreSQL 15 binaries (`initdb`,
//! `postgres`, `psql`), one cluster in a temp dir on a free loopback port,
//! never the system service. Trust authentication for the one role
//! `muster`, which owns the database `muster`; the unix socket lives in the
//! temp dir. [`Postgres::kill`] is a kill -9, [`Postgres::start_again`]
//! restarts on the same port and data. Killed on drop.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the data
//! dir belongs to `nobody` and `initdb` and the server run as `nobody`
//! through util-linux's `setpriv`. The server runs with `fsync = off`:
//! a kill -9 of the server loses nothing committed (the kernel has the
//! WAL), only a machine crash would, and tests do not crash the machine.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, eventually_blocking, forward_stderr, free_port};

/// Where the server binaries are: `PG_BINDIR` in the environment, else
/// Debian's PostgreSQL 15.
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The role and database the tests use.
pub const USER: &str = "muster";

pub struct Postgres {
    dir: TempDir,
    port: u16,
    /// The user the server runs as when we are root.
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    /// `initdb`, start, and wait until the `muster` database answers.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let run_as = if is_root() { Some(nobody()) } else { None };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        }
        let mut pg = Postgres {
            dir,
            port: free_port(),
            run_as,
            child: None,
        };
        let data = pg.data();
        let out = pg
            .command(&pg_bin_dir().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| missing("initdb", e));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.spawn();
        pg.wait_ready();
        let created = pg.psql_db("postgres", &format!("CREATE DATABASE {USER} OWNER {USER}"));
        assert!(created.is_ok(), "create the database: {created:?}");
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://muster@127.0.0.1:PORT/muster`
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{USER}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `bin`, as the server's user when we are root.
    fn command(&self, bin: &Path) -> Command {
        match self.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }

    fn spawn(&mut self) {
        let mut child = self
            .command(&pg_bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| missing("postgres", e));
        // Errors a failing test needs; not the refusals `wait_ready`'s
        // probes get while the server starts.
        forward_stderr(&mut child, format!("postgres :{}", self.port), |l| {
            (l.contains("ERROR") || l.contains("FATAL") || l.contains("PANIC"))
                && !l.contains("the database system is starting up")
        });
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        eventually_blocking(
            &format!("postgres on :{port} answers"),
            Duration::from_secs(30),
            || {
                crate::panic_if_exited(self.child.as_mut(), &format!("postgres on :{port}"));
                self.psql_db("postgres", "SELECT 1").is_ok()
            },
        );
    }

    /// Runs `sql` in the `muster` database through `psql` (unaligned,
    /// tuples only): the output, or psql's error.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.psql_db(USER, sql)
    }

    fn psql_db(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(pg_bin_dir().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
            ])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| missing("psql", e));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// kill -9 the server and wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The postmaster's children notice it is gone and exit; a new
        // postmaster refuses to start until they have (shared memory).
        let pid_file = self.data().join("postmaster.pid");
        eventually_blocking("the old postgres is gone", Duration::from_secs(30), || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_owned))
                .and_then(|pid| pid.trim().parse::<u32>().ok())
                .is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        });
    }

    /// Starts a killed server again (same port, same data) and waits until
    /// it answers (after crash recovery).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        self.spawn();
        self.wait_ready();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn missing(bin: &str, e: std::io::Error) -> ! {
    panic!(
        "cannot run {}/{bin}: {e}. postgresql is a required test dependency: \
         apt-get install -y postgresql (the README's test command does this)",
        pg_bin_dir().display()
    )
}

/// Whether this process runs as root (the owner of what it creates).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `nobody`'s uid and gid, from `/etc/passwd`.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0] != "nobody" {
                return None;
            }
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        })
        .expect("a user `nobody` in /etc/passwd to run postgres as")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts, keeps a committed row across a kill -9 and a restart.
    #[test]
    fn a_committed_row_survives_a_kill() {
        let mut pg = Postgres::start();
        pg.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (42)")
            .unwrap();
        pg.kill();
        assert!(pg.psql("SELECT 1").is_err(), "the server is down");
        pg.start_again();
        assert_eq!(pg.psql("SELECT n FROM t").unwrap(), "42");
        assert!(pg.url().ends_with(&format!(":{}/muster", pg.port())));
    }
}
