//! Load averages, where the OS has them (not on Windows).

use sysinfo::System;

/// `Ok(None)` where the OS has no load average.
pub fn read() -> Result<Option<[u32; 3]>, String> {
    if cfg!(windows) {
        return Ok(None);
    }
    match System::load_average() {
        Ok(l) => Ok(Some([x100(l.one), x100(l.five), x100(l.fifteen)])),
        Err(sysinfo::Error::Unsupported) => Ok(None),
        Err(e) => Err(format!("load average unavailable: {e}")),
    }
}

fn x100(v: f64) -> u32 {
    if v.is_finite() && v > 0.0 {
        (v * 100.0).round().min(u32::MAX as f64) as u32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scaled() {
        assert_eq!(super::x100(1.234), 123);
        assert_eq!(super::x100(-1.0), 0);
        assert_eq!(super::x100(f64::NAN), 0);
    }
}
