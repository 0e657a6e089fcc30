//! Running an accepted action: the I/O edge. Every process is an argv,
//! never a shell; every run is bounded in time and in output.
//!
//! * [`run_argv`]: a process in a process group of its own (Unix), stdin
//!   closed, stdout and stderr read concurrently, each cut to `output_max`
//!   bytes (the rest is read and dropped, so the program never blocks on a
//!   full pipe). At the timeout, or when the agent stops, the whole group
//!   is killed (Linux; elsewhere the process) and the step is `Finished`
//!   with no exit code (`timed_out` at the timeout). When the program ends
//!   by itself, what it left in its group is killed too: an action leaves
//!   nothing running. A program that cannot be started is `Failed`.
//! * `restart_process`: every process of that name (as the process
//!   sampler matches names; never the agent itself) gets SIGTERM, then
//!   SIGKILL after a grace of a third of the timeout (at most 5 s); then
//!   `start` runs detached (its own process group, null stdio, not killed
//!   with the action), so it outlives the action and the agent; then the
//!   agent polls until a process of that name other than the old ones
//!   runs. Its stdout says which pids were killed and started.
//! * `flush_dns`, `renew_dhcp`: the platform's tools, found on `PATH`
//!   (Linux `resolvectl flush-caches`, `networkctl renew <iface…>`;
//!   Windows `ipconfig /flushdns`, `ipconfig /renew [iface]`).
//! * `collect_diagnostics`: `status.json`, the output of
//!   `<this executable> once --config <config> --compact`, and the tail of
//!   the agent's log file (when it logs to a file), combined and cut to
//!   `MAX_ACTION_OUTPUT`.
//! * `restart_service`: the service manager, through `super::service`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use muster_proto::action::{ActionStep, MAX_ACTION_OUTPUT, truncate_output};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{ActionKind, ActionSpec, LogConfig, LogTarget};
use crate::probe::schedule::stopped;

/// What the agent says in the stderr of an action it killed as it stopped.
pub const KILLED_BY_STOP: &str = "muster-agent: killed: the agent is stopping";

/// How long the pipes are still read after the process ended or was
/// killed (a process that left its group may hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// How often `restart_process` looks at the processes.
const POLL: Duration = Duration::from_millis(100);

/// What runs need beyond the action.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub data_dir: PathBuf,
    pub log: LogConfig,
    /// The config file `collect_diagnostics` runs `once` with.
    pub config_path: Option<PathBuf>,
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Runs `spec` (`argv`: a `command`'s, parameters in place) until it ends,
/// its timeout, or `stop`.
pub async fn run(
    spec: &ActionSpec,
    argv: &[String],
    ctx: &Ctx,
    mut stop: watch::Receiver<bool>,
) -> ActionStep {
    let (timeout, max) = (spec.timeout, spec.output_max);
    match &spec.kind {
        ActionKind::Command { .. } => run_argv(argv, timeout, max, &mut stop).await,
        ActionKind::FlushDns => run_argv(&flush_dns_argv(), timeout, max, &mut stop).await,
        ActionKind::RenewDhcp { interface } => {
            run_argv(
                &renew_dhcp_argv(interface.as_deref()),
                timeout,
                max,
                &mut stop,
            )
            .await
        }
        ActionKind::RestartProcess { process, start } => {
            restart_process(process, start, timeout, max, &mut stop).await
        }
        ActionKind::CollectDiagnostics => diagnostics(ctx, timeout, &mut stop).await,
        ActionKind::RestartService { service } => {
            let started = Instant::now();
            // The service manager's own timeout is `timeout`; this one is
            // the agent's bound on the call itself.
            tokio::select! {
                r = tokio::time::timeout(timeout + Duration::from_secs(5), super::service::restart_service(service, timeout)) => match r {
                    Ok(Ok(out)) => ActionStep::Finished {
                        exit_code: Some(0),
                        timed_out: false,
                        duration_ms: ms(started),
                        stdout: truncate_output(&out, max),
                        stderr: String::new(),
                    },
                    Ok(Err(e)) => ActionStep::Failed {
                        reason: cut_reason(&format!("restarting {service}: {e}")),
                        duration_ms: ms(started),
                    },
                    Err(_) => ActionStep::Finished {
                        exit_code: None,
                        timed_out: true,
                        duration_ms: ms(started),
                        stdout: String::new(),
                        stderr: format!("the service manager did not answer within {timeout:?}"),
                    },
                },
                _ = stopped(&mut stop) => ActionStep::Finished {
                    exit_code: None,
                    timed_out: false,
                    duration_ms: ms(started),
                    stdout: String::new(),
                    stderr: KILLED_BY_STOP.into(),
                },
            }
        }
    }
}

/// A failure reason within the wire's bound.
fn cut_reason(s: &str) -> String {
    s.chars()
        .take(muster_proto::action::MAX_ACTION_REASON)
        .collect()
}

fn flush_dns_argv() -> Vec<String> {
    if cfg!(windows) {
        vec!["ipconfig".into(), "/flushdns".into()]
    } else {
        vec!["resolvectl".into(), "flush-caches".into()]
    }
}

fn renew_dhcp_argv(interface: Option<&str>) -> Vec<String> {
    if cfg!(windows) {
        let mut a = vec!["ipconfig".to_owned(), "/renew".to_owned()];
        a.extend(interface.map(str::to_owned));
        a
    } else {
        let mut a = vec!["networkctl".to_owned(), "renew".to_owned()];
        match interface {
            Some(i) => a.push(i.to_owned()),
            None => a.extend(interfaces()),
        }
        a
    }
}

/// Every network interface but loopback (`/sys/class/net`), sorted.
fn interfaces() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reads all of `r`, keeping the first `max` bytes; returns them and the
/// total read.
async fn read_bounded<R: AsyncRead + Unpin>(r: Option<R>, max: usize) -> (Vec<u8>, u64) {
    let Some(mut r) = r else {
        return (Vec::new(), 0);
    };
    let mut kept = Vec::with_capacity(max.min(8192));
    let mut total = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, total)
}

/// Output as text, at most `max` bytes, "…" when cut.
fn text(kept: &[u8], total: u64, max: usize) -> String {
    let mut s = String::from_utf8_lossy(kept).into_owned();
    if total > kept.len() as u64 {
        s.push('…');
    }
    truncate_output(&s, max)
}

enum End {
    Exited(Option<std::process::ExitStatus>),
    TimedOut,
    Stopped,
}

/// Runs `argv` bounded (see the module's contract).
pub async fn run_argv(
    argv: &[String],
    timeout: Duration,
    output_max: usize,
    stop: &mut watch::Receiver<bool>,
) -> ActionStep {
    let started = Instant::now();
    let Some(program) = argv.first() else {
        return ActionStep::Failed {
            reason: "no program".into(),
            duration_ms: 0,
        };
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(windows)]
    cmd.creation_flags(CREATE_NO_WINDOW);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ActionStep::Failed {
                reason: cut_reason(&format!("cannot start {program}: {e}")),
                duration_ms: ms(started),
            };
        }
    };
    let pid = child.id();
    let mut out = tokio::spawn(read_bounded(child.stdout.take(), output_max));
    let mut err = tokio::spawn(read_bounded(child.stderr.take(), output_max));
    let end = tokio::select! {
        s = child.wait() => End::Exited(s.ok()),
        _ = tokio::time::sleep(timeout) => End::TimedOut,
        _ = stopped(stop) => End::Stopped,
    };
    // Nothing the action started outlives it: its whole group goes (at
    // the timeout, at a stop, and what is left when it ended by itself).
    if let Some(pid) = pid {
        kill_group(pid);
    }
    let status = match end {
        End::Exited(s) => s,
        End::TimedOut | End::Stopped => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    let duration_ms = ms(started);
    let grace = Instant::now() + PIPE_GRACE;
    let (o, o_total) = match tokio::time::timeout_at(grace, &mut out).await {
        Ok(Ok(v)) => v,
        _ => {
            out.abort();
            (Vec::new(), 0)
        }
    };
    let (e, e_total) = match tokio::time::timeout_at(grace, &mut err).await {
        Ok(Ok(v)) => v,
        _ => {
            err.abort();
            (Vec::new(), 0)
        }
    };
    let stdout = text(&o, o_total, output_max);
    let mut stderr = text(&e, e_total, output_max);
    let (exit_code, timed_out) = match end {
        End::Exited(_) => (status.and_then(|s| s.code()), false),
        End::TimedOut => (None, true),
        End::Stopped => {
            stderr = append_note(&stderr, KILLED_BY_STOP, output_max);
            (None, false)
        }
    };
    ActionStep::Finished {
        exit_code,
        timed_out,
        duration_ms,
        stdout,
        stderr,
    }
}

/// `s` with `note` on a line of its own at the end, within `max` bytes
/// (the output is cut first, the note is kept).
fn append_note(s: &str, note: &str, max: usize) -> String {
    let room = max.saturating_sub(note.len() + 1);
    let mut out = truncate_output(s, room);
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(note);
    truncate_output(&out, max)
}

#[cfg(windows)]
const CREATE_NO_WINDOW: u32 = 0x0800_0000;
#[cfg(windows)]
const DETACHED_PROCESS: u32 = 0x0000_0008;
#[cfg(windows)]
const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;

// ----------------------------------------------------------- processes

/// Kills process group `pgid` (SIGKILL). Never group 0 or 1.
#[cfg(target_os = "linux")]
fn kill_group(pgid: u32) {
    let Ok(g) = i32::try_from(pgid) else {
        return;
    };
    if g <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals that process group; it
    // takes no pointers. `g > 1`, so never every process (-1) nor our own
    // group (0).
    let _ = unsafe { libc::kill(-g, libc::SIGKILL) };
}

#[cfg(not(target_os = "linux"))]
fn kill_group(_pgid: u32) {}

/// The pids of processes named `name` (as the process sampler matches
/// names), not zombies, never this process.
#[cfg(target_os = "linux")]
pub fn pids_named(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            proc_stat(*pid).is_some_and(|(comm, state)| {
                !matches!(state, 'Z' | 'X' | 'x')
                    && crate::sample::process::name_matches(name, &comm)
            })
        })
        .collect();
    out.sort_unstable();
    out
}

/// `(comm, state)` of `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn proc_stat(pid: u32) -> Option<(String, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let state = s.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

/// Sends SIGTERM (`force`: SIGKILL) to each pid.
#[cfg(target_os = "linux")]
fn terminate(pids: &[u32], force: bool) {
    let sig = if force { libc::SIGKILL } else { libc::SIGTERM };
    for pid in pids {
        let Ok(p) = i32::try_from(*pid) else { continue };
        if p <= 1 {
            continue;
        }
        // SAFETY: kill(2) on one positive pid (> 1); no pointers.
        let _ = unsafe { libc::kill(p, sig) };
    }
}

#[cfg(not(target_os = "linux"))]
pub fn pids_named(name: &str) -> Vec<u32> {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let me = std::process::id();
    let Ok(mut sys) = System::new() else {
        return Vec::new();
    };
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    let mut out: Vec<u32> = sys
        .processes()
        .iter()
        .filter(|(pid, p)| {
            pid.as_u32() != me
                && crate::sample::process::name_matches(name, &p.name().to_string_lossy())
        })
        .map(|(pid, _)| pid.as_u32())
        .collect();
    out.sort_unstable();
    out
}

/// Ends each pid (Windows has no SIGTERM: always forced).
#[cfg(not(target_os = "linux"))]
fn terminate(pids: &[u32], _force: bool) {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let list: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
    let Ok(mut sys) = System::new() else {
        return;
    };
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&list),
        true,
        ProcessRefreshKind::nothing(),
    );
    for p in &list {
        if let Some(proc_) = sys.process(*p) {
            proc_.kill();
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Sleeps one poll; `false` when the agent is stopping.
async fn poll(stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(POLL) => true,
        _ = stopped(stop) => false,
    }
}

/// Restarts the processes named `process` (see the module's contract).
async fn restart_process(
    process: &str,
    start: &[String],
    timeout: Duration,
    max: usize,
    stop: &mut watch::Receiver<bool>,
) -> ActionStep {
    let started = Instant::now();
    let deadline = started + timeout;
    let name = process.to_owned();
    let named = move || {
        let n = name.clone();
        blocking(move || pids_named(&n))
    };
    let old = named().await.unwrap_or_default();
    let finished =
        |code: Option<i32>, timed_out: bool, out: String, err: String| ActionStep::Finished {
            exit_code: code,
            timed_out,
            duration_ms: ms(started),
            stdout: truncate_output(&out, max),
            stderr: truncate_output(&err, max),
        };
    let stopping = |out: String| ActionStep::Finished {
        exit_code: None,
        timed_out: false,
        duration_ms: ms(started),
        stdout: truncate_output(&out, max),
        stderr: KILLED_BY_STOP.into(),
    };
    // Stop the old ones: TERM, a grace, KILL.
    if !old.is_empty() {
        let pids = old.clone();
        blocking(move || terminate(&pids, false)).await;
        let grace = started + (timeout / 3).min(Duration::from_secs(5));
        let mut forced = false;
        loop {
            let alive: Vec<u32> = {
                let now = named().await.unwrap_or_default();
                old.iter().copied().filter(|p| now.contains(p)).collect()
            };
            if alive.is_empty() {
                break;
            }
            if !forced && Instant::now() >= grace {
                forced = true;
                tracing::info!(process, pids = ?alive, "Action restart_process: still running after SIGTERM; killing.");
                blocking(move || terminate(&alive, true)).await;
                continue;
            }
            if Instant::now() >= deadline {
                return finished(
                    None,
                    true,
                    format!("killed {old:?}"),
                    format!("{alive:?} still running at the timeout; nothing started"),
                );
            }
            if !poll(stop).await {
                return stopping(format!("stopping {old:?}"));
            }
        }
    }
    // Start it again, detached.
    let program = &start[0];
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&start[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false);
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(windows)]
    cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ActionStep::Failed {
                reason: cut_reason(&format!("killed {old:?}; cannot start {program}: {e}")),
                duration_ms: ms(started),
            };
        }
    };
    let new_pid = child.id();
    let said = format!(
        "killed {old:?}; started {program} as pid {}",
        new_pid.map_or("?".into(), |p| p.to_string())
    );
    // Running again: a process of that name that is not an old one.
    loop {
        let now: Vec<u32> = named()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !old.contains(p))
            .collect();
        if !now.is_empty() {
            tracing::info!(process, killed = ?old, started = ?new_pid, running = ?now, "Action restart_process: running again.");
            // Dropped without a kill: tokio reaps it when it exits.
            drop(child);
            return finished(
                Some(0),
                false,
                format!("{said}; {process} running as {now:?}"),
                String::new(),
            );
        }
        if let Ok(Some(status)) = child.try_wait()
            && !status.success()
        {
            return finished(
                status.code(),
                false,
                said,
                format!("the start command exited with {status}; no {process} running"),
            );
        }
        if Instant::now() >= deadline {
            drop(child);
            return finished(
                None,
                true,
                said,
                format!("no {process} running within {timeout:?}"),
            );
        }
        if !poll(stop).await {
            drop(child);
            return stopping(said);
        }
    }
}

// --------------------------------------------------------- diagnostics

/// The last `max` bytes of the newest `muster-agent*.log` in `dir`, from
/// a line start; `None` without one.
fn log_tail(dir: &Path, max: usize) -> Option<(PathBuf, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("muster-agent") && n.ends_with("log")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()?
        .1;
    let mut f = std::fs::File::open(&newest).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(max as u64);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::with_capacity(max);
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    if from > 0
        && let Some(nl) = s.find('\n')
    {
        s.drain(..=nl);
    }
    Some((newest, s))
}

/// The agent's status, its `once` output and its log's tail.
async fn diagnostics(ctx: &Ctx, timeout: Duration, stop: &mut watch::Receiver<bool>) -> ActionStep {
    let started = Instant::now();
    let status_path = ctx.data_dir.join(crate::status::STATUS_FILE);
    let status = match tokio::fs::read(&status_path).await {
        Ok(b) => truncate_output(&String::from_utf8_lossy(&b), MAX_ACTION_OUTPUT / 4),
        Err(e) => format!("({}: {e})", status_path.display()),
    };
    let (once, once_err, exit_code, timed_out) = match (&ctx.config_path, std::env::current_exe()) {
        (Some(cfg), Ok(exe)) => {
            let argv = vec![
                exe.display().to_string(),
                "once".into(),
                "--config".into(),
                cfg.display().to_string(),
                "--compact".into(),
            ];
            match run_argv(&argv, timeout, MAX_ACTION_OUTPUT / 2, stop).await {
                ActionStep::Finished {
                    exit_code,
                    timed_out,
                    stdout,
                    stderr,
                    ..
                } => (stdout, stderr, exit_code, timed_out),
                ActionStep::Failed { reason, .. } => (String::new(), reason, None, false),
                other => (String::new(), format!("{other:?}"), None, false),
            }
        }
        (None, _) => (
            "(not run: the agent was not started from a config file)".into(),
            String::new(),
            Some(0),
            false,
        ),
        (_, Err(e)) => (
            format!("(not run: cannot find this executable: {e})"),
            String::new(),
            Some(0),
            false,
        ),
    };
    let mut out = format!(
        "== status ({}) ==\n{status}\n== once ==\n{once}\n",
        status_path.display()
    );
    let room = MAX_ACTION_OUTPUT.saturating_sub(out.len() + 64);
    match &ctx.log.target {
        LogTarget::File { dir, .. } => {
            let dir = dir.clone();
            match blocking(move || log_tail(&dir, room)).await.flatten() {
                Some((path, tail)) => {
                    out.push_str(&format!("== log tail ({}) ==\n{tail}", path.display()))
                }
                None => out.push_str("== log ==\n(no log file yet)\n"),
            }
        }
        LogTarget::Stderr => {
            out.push_str("== log ==\n(the agent logs to stderr: see its journal)\n")
        }
    }
    ActionStep::Finished {
        exit_code,
        timed_out,
        duration_ms: ms(started),
        stdout: truncate_output(&out, MAX_ACTION_OUTPUT),
        stderr: truncate_output(&once_err, MAX_ACTION_OUTPUT),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn output_is_cut_and_the_rest_drained() {
        let (_tx, mut stop) = watch::channel(false);
        let step = run_argv(
            &sh("head -c 100000 /dev/zero | tr '\\0' a; echo err >&2; exit 3"),
            Duration::from_secs(20),
            10,
            &mut stop,
        )
        .await;
        let ActionStep::Finished {
            exit_code,
            timed_out,
            stdout,
            stderr,
            ..
        } = step
        else {
            panic!("{step:?}")
        };
        assert_eq!((exit_code, timed_out), (Some(3), false));
        assert!(stdout.len() <= 10 && stdout.ends_with('…'), "{stdout:?}");
        assert_eq!(stderr, "err\n");
    }

    #[tokio::test]
    async fn a_missing_program_is_failed_and_a_stop_kills() {
        let (tx, mut stop) = watch::channel(false);
        let step = run_argv(
            &["/nonexistent/prog".into()],
            Duration::from_secs(5),
            100,
            &mut stop,
        )
        .await;
        assert!(
            matches!(&step, ActionStep::Failed { reason, .. } if reason.contains("/nonexistent/prog")),
            "{step:?}"
        );
        let run = tokio::spawn(async move {
            run_argv(
                &sh("echo hi; exec sleep 600"),
                Duration::from_secs(600),
                100,
                &mut stop,
            )
            .await
        });
        // Whether the stop comes before or after the spawn, it kills.
        tx.send(true).unwrap();
        let step = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("killed at the stop")
            .unwrap();
        let ActionStep::Finished {
            exit_code,
            timed_out,
            stderr,
            ..
        } = step
        else {
            panic!("{step:?}")
        };
        assert_eq!((exit_code, timed_out), (None, false));
        assert!(stderr.ends_with(KILLED_BY_STOP), "{stderr:?}");
    }

    #[test]
    fn a_note_fits_within_the_limit() {
        let s = append_note(&"x".repeat(100), "note", 20);
        assert!(s.len() <= 20 && s.ends_with("\nnote"), "{s:?}");
        assert_eq!(append_note("", "note", 20), "note");
    }
}
