//! Every network interface: up or down, rx/tx rates and errors, from the
//! delta between two refreshes of the one `Networks` list kept for the run.

use muster_proto::NetIf;
use sysinfo::{InterfaceOperationalState as State, Networks};

use super::per_sec;

pub fn refresh(nets: &mut Networks) {
    nets.refresh(true);
}

pub fn read(nets: &Networks, elapsed_ms: u64) -> Result<Vec<NetIf>, String> {
    let mut out: Vec<NetIf> = nets
        .iter()
        .map(|(name, d)| NetIf {
            name: name.to_string_lossy().into_owned(),
            // Linux reports loopback and some virtual links as "unknown": they pass packets.
            up: matches!(d.operational_state(), State::Up | State::Unknown),
            rx_bps: per_sec(d.received(), elapsed_ms),
            tx_bps: per_sec(d.transmitted(), elapsed_ms),
            rx_errors: d.errors_on_received().min(u32::MAX as u64) as u32,
            tx_errors: d.errors_on_transmitted().min(u32::MAX as u64) as u32,
        })
        .collect();
    if out.is_empty() {
        return Err("the OS reported no network interfaces".into());
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
