//! Memory and swap.

use muster_proto::Memory;
use sysinfo::System;

pub fn refresh(sys: &mut System) {
    sys.refresh_memory();
}

pub fn read(sys: &System) -> Result<Memory, String> {
    let total = sys.total_memory();
    if total == 0 {
        return Err("the OS reported 0 bytes of memory".into());
    }
    // "Used" as an operator reads it: what is not available to start new programs.
    let available = sys.available_memory();
    let used = if available > 0 {
        total.saturating_sub(available)
    } else {
        sys.used_memory().min(total)
    };
    Ok(Memory {
        total_kib: total / 1024,
        used_kib: used / 1024,
        swap_total_kib: sys.total_swap() / 1024,
        swap_used_kib: sys.used_swap().min(sys.total_swap()) / 1024,
    })
}
