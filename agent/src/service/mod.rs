//! Running as a service: logging, and the Windows service (SCM entry,
//! `service install|uninstall` with restart-on-failure recovery actions).

pub mod log;
#[cfg(windows)]
pub mod windows;
