//! The dns probe: resolution time and the addresses, through the OS resolver
//! (`tokio::net::lookup_host`, i.e. getaddrinfo on a blocking thread).
//!
//! Why the OS resolver and not hickory: the probe answers "can this terminal
//! resolve the CAD server the way the CAD client does", and the CAD client
//! uses the OS resolver, with its hosts file, search domains, VPN split DNS
//! and Windows' NRPT. A private DNS client would measure a different path
//! (and add a dependency). The cost: getaddrinfo cannot be cancelled, so a
//! timed-out lookup finishes on its blocking thread in the background.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::{MAX_ADDRS, Run, resolve};

pub async fn run(name: &str, timeout: Duration) -> Run {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut run = Run::default();
    run.outcome = match resolve(name, 0, deadline, timeout).await {
        Ok(addrs) => {
            let mut ips: Vec<IpAddr> = Vec::with_capacity(addrs.len().min(MAX_ADDRS));
            for a in addrs {
                if !ips.contains(&a.ip()) && ips.len() < MAX_ADDRS {
                    ips.push(a.ip());
                }
            }
            run.addrs = ips;
            Ok(())
        }
        Err(f) => Err(f),
    };
    let total = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
    run.phases.dns_us = Some(total);
    run.phases.total_us = total;
    run
}
