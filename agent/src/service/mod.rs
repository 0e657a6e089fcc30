//! Running as a service: shutdown signals, logging, systemd's `Type=notify`
//! (READY/WATCHDOG/STOPPING) on Linux, and the Windows service (SCM entry,
//! `service install|uninstall` with restart-on-failure recovery actions).

pub mod log;
pub mod notify;
#[cfg(windows)]
pub mod windows;

/// Resolves on SIGTERM or SIGINT (Unix) or Ctrl-C / Ctrl-Break (Windows).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down."),
                    _ = int.recv() => tracing::info!("SIGINT: shutting down."),
                }
            }
            _ => {
                tracing::error!("Cannot install signal handlers; stop with Ctrl-C.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C: shutting down.");
    }
}
