//! CPU usage, total and per logical core, from the one shared `System`.

use muster_proto::Cpu;
use sysinfo::System;

/// Reads CPU usage as of the last two refreshes (sysinfo computes usage from
/// the delta between them).
pub fn read(sys: &System) -> Result<Cpu, String> {
    let cpus = sys.cpus();
    if cpus.is_empty() {
        return Err("the OS reported no CPUs".into());
    }
    let total = sys.global_cpu_usage();
    if !total.is_finite() {
        return Err(format!("the OS reported a CPU usage of {total}"));
    }
    Ok(Cpu {
        total_bp: pct_to_bp(total),
        per_core_pct: cpus.iter().map(|c| pct_to_whole(c.usage())).collect(),
    })
}

/// Percent (0.0..=100.0) to basis points, clamped.
pub fn pct_to_bp(pct: f32) -> u16 {
    if pct.is_nan() {
        return 0;
    }
    (pct * 100.0).round().clamp(0.0, 10_000.0) as u16
}

fn pct_to_whole(pct: f32) -> u8 {
    if pct.is_nan() {
        return 0;
    }
    pct.round().clamp(0.0, 100.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(pct_to_bp(12.345), 1235);
        assert_eq!(pct_to_bp(100.2), 10_000);
        assert_eq!(pct_to_bp(-1.0), 0);
        assert_eq!(pct_to_bp(f32::NAN), 0);
        assert_eq!(pct_to_whole(49.5), 50);
        assert_eq!(pct_to_whole(250.0), 100);
    }
}
