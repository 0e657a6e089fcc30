//! Host uptime.

use sysinfo::System;

pub fn read() -> Result<u64, String> {
    System::uptime().map_err(|e| format!("uptime unavailable: {e}"))
}
