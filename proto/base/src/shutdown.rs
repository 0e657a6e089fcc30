//! The shutdown signal both binaries stop on.

/// Resolves on SIGTERM or SIGINT (Unix) or Ctrl-C / Ctrl-Break (Windows).
/// The handlers are installed when this is called, not when the future is
/// first polled: a SIGTERM that arrives while a binary is still starting
/// (opening its store) then stops it cleanly instead of killing it. Call it
/// inside the runtime (`Runtime::enter`). (Windows has nothing to install
/// early: there the service control handler stops the agent.)
#[cfg_attr(not(unix), allow(clippy::manual_async_fn))]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let installed = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match installed {
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
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C: shutting down.");
        }
    }
}
