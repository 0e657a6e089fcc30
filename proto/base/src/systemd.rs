//! systemd `Type=notify` support: `READY=1`, `WATCHDOG=1`, `STOPPING=1` sent
//! as datagrams to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). A no-op where systemd did not set the variables, and on Windows.

use std::time::Duration;

/// A handle on `$NOTIFY_SOCKET`.
pub struct SystemdNotifier {
    #[cfg(unix)]
    sock: std::os::unix::net::UnixDatagram,
    #[cfg(unix)]
    addr: std::os::unix::net::SocketAddr,
}

impl SystemdNotifier {
    /// The notifier systemd asked for, if any.
    #[cfg(unix)]
    pub fn from_env() -> Option<SystemdNotifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = notify_addr(&path)?;
        let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
        Some(SystemdNotifier { sock, addr })
    }

    #[cfg(not(unix))]
    pub fn from_env() -> Option<SystemdNotifier> {
        None
    }

    /// Sends one state line (`READY=1`). Errors are logged, never fatal.
    pub fn notify(&self, state: &str) {
        #[cfg(unix)]
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, state, "sd_notify failed.");
        }
        #[cfg(not(unix))]
        let _ = state;
    }
}

#[cfg(unix)]
fn notify_addr(path: &std::ffi::OsStr) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::linux::net::SocketAddrExt;
            return std::os::unix::net::SocketAddr::from_abstract_name(name).ok();
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = name;
            return None;
        }
    }
    if bytes.first() != Some(&b'/') {
        return None;
    }
    std::os::unix::net::SocketAddr::from_pathname(std::path::Path::new(path)).ok()
}

/// systemd's watchdog interval (`$WATCHDOG_USEC`, for this pid if
/// `$WATCHDOG_PID` is set). Ping at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// Pure part of [`watchdog_interval`].
pub fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(p) = pid
        && p.trim().parse::<u32>().ok()? != me
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env() {
        assert_eq!(
            watchdog_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_from(None, None, 7), None);
    }

    #[cfg(unix)]
    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("muster-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let addr = notify_addr(path.as_os_str()).unwrap();
        let n = SystemdNotifier {
            sock: std::os::unix::net::UnixDatagram::unbound().unwrap(),
            addr,
        };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn relative_paths_are_refused() {
        assert!(notify_addr(std::ffi::OsStr::new("relative/sock")).is_none());
    }
}
