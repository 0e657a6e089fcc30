//! Every mounted disk: used, total, and I/O rates from the delta between two
//! refreshes of the one `Disks` list kept for the whole run.

use muster_proto::Disk;
use sysinfo::{DiskRefreshKind, Disks};

use super::per_sec;

pub fn refresh(disks: &mut Disks) {
    disks.refresh_specifics(true, DiskRefreshKind::everything().without_kind());
}

/// `elapsed_ms`: time between the last two refreshes (0 on the first).
pub fn read(disks: &Disks, elapsed_ms: u64) -> Result<Vec<Disk>, String> {
    let mut out: Vec<Disk> = Vec::with_capacity(disks.len());
    for d in disks.iter() {
        let mount = d.mount_point().to_string_lossy();
        // The same mount point listed twice (bind mounts): keep the first.
        if out.iter().any(|o| o.mount == mount) {
            continue;
        }
        let total = d.total_space();
        let usage = d.usage();
        out.push(Disk {
            mount: mount.into_owned(),
            total_kib: total / 1024,
            used_kib: total.saturating_sub(d.available_space()) / 1024,
            read_bps: per_sec(usage.read_bytes, elapsed_ms),
            write_bps: per_sec(usage.written_bytes, elapsed_ms),
        });
    }
    if out.is_empty() {
        return Err("the OS reported no mounted disks".into());
    }
    out.sort_by(|a, b| a.mount.cmp(&b.mount));
    Ok(out)
}
