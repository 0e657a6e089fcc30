//! The icmp probe: `count` echo requests, loss and min/avg/max RTT.
//!
//! Socket choice, in order:
//! 1. an unprivileged ICMP datagram socket (`SOCK_DGRAM`/`IPPROTO_ICMP`), which
//!    Linux allows when the agent's gid is in `net.ipv4.ping_group_range`
//!    (the kernel owns the echo identifier and filters replies for us);
//! 2. a raw ICMP socket, which needs `CAP_NET_RAW` on Linux or an
//!    administrator/LocalSystem account on Windows;
//! 3. neither: a `Permission` failure that says how to allow one.
//!
//! The exchange is blocking socket I/O with read timeouts, run on tokio's
//! blocking pool, bounded by the probe's timeout.

// Real time: the raw-socket fallback times a real round trip on a
// blocking thread.
#![allow(clippy::disallowed_methods)]

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use muster_proto::{ErrorClass, IcmpStats};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::classify::{Failure, Step, io_failure, timeout_failure};
use super::{Run, resolve};

const PAYLOAD_LEN: usize = 24;

pub async fn run(host: &str, count: u16, timeout: Duration) -> Run {
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + timeout;
    let mut run = Run::default();
    let addrs = match resolve(host, 0, deadline, timeout).await {
        Ok(a) => a,
        Err(f) => {
            run.outcome = Err(f);
            run.phases.total_us = t0.elapsed().as_micros() as u32;
            return run;
        }
    };
    let t_dns = t0.elapsed();
    run.phases.dns_us = Some(t_dns.as_micros() as u32);
    // Prefer IPv4, as ping does.
    let ip = addrs.iter().find(|a| a.is_ipv4()).unwrap_or(&addrs[0]).ip();
    let left = timeout.saturating_sub(t_dns);
    let token: u64 = rand::random();
    let r = tokio::task::spawn_blocking(move || ping(ip, count, left, token)).await;
    match r {
        Ok(Ok(stats)) => {
            if stats.lost == stats.sent {
                run.outcome = Err(Failure::new(
                    ErrorClass::Unreachable,
                    format!("all {} echo requests to {ip} were lost", stats.sent),
                ));
            }
            run.icmp = Some(stats);
        }
        Ok(Err(f)) => run.outcome = Err(f),
        Err(e) => {
            run.outcome = Err(Failure::new(
                ErrorClass::Protocol,
                format!("ping task: {e}"),
            ))
        }
    }
    run.phases.total_us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
    run
}

/// Opens a datagram ICMP socket, else a raw one. `raw` tells which.
fn open(ip: IpAddr) -> Result<(Socket, bool), Failure> {
    let (domain, proto) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let dgram_err = match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Ok(s) => return Ok((s, false)),
        Err(e) => e,
    };
    match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => Ok((s, true)),
        Err(raw_err) => {
            let denied = |e: &io::Error| {
                matches!(e.kind(), io::ErrorKind::PermissionDenied)
                    || matches!(e.raw_os_error(), Some(1) | Some(13) | Some(10013))
            };
            if denied(&raw_err) || denied(&dgram_err) {
                Err(Failure::new(
                    ErrorClass::Permission,
                    format!(
                        "no ICMP socket allowed (datagram: {dgram_err}; raw: {raw_err}); on Linux add \
                         the agent's group to net.ipv4.ping_group_range or grant CAP_NET_RAW, on \
                         Windows run the service as LocalSystem"
                    ),
                ))
            } else {
                Err(io_failure(Step::Connect, &raw_err))
            }
        }
    }
}

/// The internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum = sum.wrapping_add(word as u32);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request: type, code 0, checksum, identifier, sequence, payload.
pub fn echo_request(v6: bool, ident: u16, seq: u16, token: u64) -> [u8; 8 + PAYLOAD_LEN] {
    let mut p = [0u8; 8 + PAYLOAD_LEN];
    p[0] = if v6 { 128 } else { 8 };
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&token.to_be_bytes());
    for (i, b) in p[16..].iter_mut().enumerate() {
        *b = i as u8;
    }
    if !v6 {
        // The kernel computes ICMPv6 checksums itself (it needs the pseudo-header).
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// Is `pkt` (ICMP, without IP header) the echo reply to (`ident`?, `seq`, `token`)?
/// `ident` is `None` on datagram sockets, where the kernel rewrites it.
pub fn is_reply(pkt: &[u8], v6: bool, ident: Option<u16>, seq: u16, token: u64) -> bool {
    pkt.len() >= 16
        && pkt[0] == if v6 { 129 } else { 0 }
        && pkt[1] == 0
        && ident.is_none_or(|id| pkt[4..6] == id.to_be_bytes())
        && pkt[6..8] == seq.to_be_bytes()
        && pkt[8..16] == token.to_be_bytes()
}

fn ping(ip: IpAddr, count: u16, budget: Duration, token: u64) -> Result<IcmpStats, Failure> {
    let v6 = ip.is_ipv6();
    let (sock, raw) = open(ip)?;
    let peer = SockAddr::from(SocketAddr::new(ip, 0));
    sock.connect(&peer)
        .map_err(|e| io_failure(Step::Connect, &e))?;
    let ident = (token >> 48) as u16;
    let per_packet = (budget / count.max(1) as u32).max(Duration::from_millis(1));
    let mut rtts: Vec<u32> = Vec::with_capacity(count as usize);
    let mut sent = 0u16;
    let mut buf = [0u8; 1500];
    for seq in 1..=count {
        let req = echo_request(v6, ident, seq, token);
        let t = Instant::now();
        match (&sock).write_all_once(&req) {
            Ok(()) => sent += 1,
            Err(e) => {
                let f = io_failure(Step::Request, &e);
                if sent == 0 {
                    return Err(f);
                }
                break;
            }
        }
        let wait_until = t + per_packet;
        loop {
            let left = wait_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if sock.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let n = match (&sock).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let f = io_failure(Step::Response, &e);
                    if f.class == ErrorClass::Unreachable || sent == 1 && rtts.is_empty() {
                        return Err(f);
                    }
                    break;
                }
            };
            let pkt = &buf[..n];
            // Raw IPv4 sockets deliver the IP header too.
            let pkt = if raw && !v6 && n >= 20 && pkt[0] >> 4 == 4 {
                let ihl = ((pkt[0] & 0x0f) as usize) * 4;
                if n < ihl {
                    continue;
                }
                &pkt[ihl..]
            } else {
                pkt
            };
            if is_reply(pkt, v6, raw.then_some(ident), seq, token) {
                rtts.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                break;
            }
        }
    }
    if sent == 0 {
        return Err(timeout_failure(Step::Request, budget));
    }
    let lost = sent - rtts.len() as u16;
    let (min, max, avg) = if rtts.is_empty() {
        (None, None, None)
    } else {
        let sum: u64 = rtts.iter().map(|&r| r as u64).sum();
        (
            rtts.iter().min().copied(),
            rtts.iter().max().copied(),
            Some((sum / rtts.len() as u64) as u32),
        )
    };
    Ok(IcmpStats {
        sent,
        lost,
        min_us: min,
        avg_us: avg,
        max_us: max,
    })
}

trait SendOnce {
    fn write_all_once(self, buf: &[u8]) -> io::Result<()>;
}

impl SendOnce for &Socket {
    fn write_all_once(self, buf: &[u8]) -> io::Result<()> {
        let n = self.send(buf)?;
        if n == buf.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WriteZero, "short ICMP send"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_request_verifies() {
        let p = echo_request(false, 0x1234, 7, 42);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to 0");
        assert_eq!(p[0], 8);
    }

    #[test]
    fn reply_matching() {
        let mut r = echo_request(false, 9, 3, 77);
        r[0] = 0;
        assert!(is_reply(&r, false, Some(9), 3, 77));
        assert!(is_reply(&r, false, None, 3, 77));
        assert!(!is_reply(&r, false, Some(8), 3, 77));
        assert!(!is_reply(&r, false, Some(9), 4, 77));
        assert!(!is_reply(&r, false, Some(9), 3, 78));
        assert!(!is_reply(&r[..10], false, Some(9), 3, 77));
        r[0] = 8; // our own request, looped back on a raw socket
        assert!(!is_reply(&r, false, Some(9), 3, 77));
    }
}
