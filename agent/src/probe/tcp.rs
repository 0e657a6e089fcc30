//! The tcp probe: name resolution and connect time.

use std::time::Duration;

use tokio::time::Instant;

use super::{Run, connect_any, resolve};

pub async fn run(host: &str, port: u16, timeout: Duration) -> Run {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let us = |t: Instant| t.duration_since(t0).as_micros().min(u32::MAX as u128) as u32;
    let mut run = Run::default();
    run.outcome = async {
        let addrs = resolve(host, port, deadline, timeout).await?;
        let t_dns = us(Instant::now());
        run.phases.dns_us = Some(t_dns);
        let stream = connect_any(&addrs, deadline, timeout).await?;
        run.phases.connect_us = Some(us(Instant::now()) - t_dns);
        drop(stream);
        Ok(())
    }
    .await;
    run.phases.total_us = us(Instant::now());
    run
}
