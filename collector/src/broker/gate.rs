//! The gate: the embedded broker's public MQTT 3.1.1 listener. It owns the
//! public socket and stands in front of rumqttd, which listens only on
//! loopback behind a credential known to this process.
//!
//! Per connection:
//! 1. The connection cap (`broker.max_connections`) is taken at accept,
//!    before a byte is read; over it, the socket is closed (`connection_cap`).
//! 2. The first packet must be a CONNECT within `broker.connect_timeout`
//!    (`connect_timeout`), MQTT 3.1.1 (else CONNACK 1, `protocol`), with
//!    credentials that make a principal (else CONNACK 4 or 5,
//!    `bad_credentials`) and a will the ACL allows (else CONNACK 5,
//!    `will_denied`).
//! 3. The gate connects to rumqttd and sends the CONNECT rewritten: the
//!    namespaced client id (`acl::client_id`) and the internal credential.
//! 4. Client → broker: every packet is framed against
//!    `broker.max_packet_bytes` (fixed header included; over it the
//!    connection is closed, `oversized`, and the packet is never read whole
//!    nor forwarded), parsed with rumqttc's codec, checked, and re-encoded.
//!    A refused PUBLISH is dropped (QoS 1 gets a PUBACK, as MQTT 3.1.1 has
//!    no negative ack; QoS 2 closes the connection); refused SUBSCRIBE
//!    filters get 0x80 in the SUBACK and are not forwarded.
//! 5. Broker → client: packets are framed and copied through unchanged,
//!    except SUBACKs that the gate merges with its own refusals.
//!
//! Accept errors (EMFILE…) back off 50 ms doubling to 1 s and are logged
//! once per second with a count. Every refusal is counted in
//! `muster_broker_refused_total{reason}` and logged at most once per reason
//! per interval. On shutdown the accept loop stops and every connection
//! task ends (their sockets close; rumqttd fires the wills).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Login, Packet, PubAck, SubAck, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::acl::{self, Principal, Refusal};
use super::auth::Authenticator;
use crate::ingest::refusal::RefusalLog;
use crate::metrics::broker::BrokerMetrics;

/// What the gate needs to know.
#[derive(Debug, Clone)]
pub struct GateSettings {
    pub max_packet_bytes: usize,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// rumqttd's internal MQTT 3.1.1 listener.
    pub upstream: SocketAddr,
    /// The credential rumqttd accepts (user, password).
    pub internal_login: (String, String),
    /// Largest packet rumqttd may send a client (framing limit of the
    /// broker → client direction).
    pub upstream_max_packet: usize,
    /// At most one log line per refusal reason per this interval.
    pub log_interval: Duration,
}

/// The running gate's shared state.
pub struct Gate {
    settings: GateSettings,
    auth: Authenticator,
    metrics: Arc<BrokerMetrics>,
    log: Mutex<RefusalLog<Refusal>>,
    started: Instant,
}

impl Gate {
    pub fn new(settings: GateSettings, auth: Authenticator, metrics: Arc<BrokerMetrics>) -> Self {
        let log = Mutex::new(RefusalLog::new(settings.log_interval.as_millis() as u64));
        Gate {
            settings,
            auth,
            metrics,
            log,
            started: Instant::now(),
        }
    }

    fn refuse(&self, r: Refusal, peer: SocketAddr, detail: &str) {
        self.metrics.refuse(r);
        let now = self.started.elapsed().as_millis() as u64;
        let admit = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(r, now);
        if let Some(suppressed) = admit {
            warn!(reason = r.as_str(), %peer, detail, suppressed, "Embedded broker refused a client.");
        }
    }
}

/// Accepts until `shutdown`, then waits for every connection task to end.
pub async fn run(listener: TcpListener, gate: Arc<Gate>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(gate.settings.max_connections));
    let tracker = TaskTracker::new();
    let min_backoff = Duration::from_millis(50);
    let mut backoff = min_backoff;
    let mut unlogged_errors = 0u64;
    let mut last_error_log: Option<Instant> = None;
    loop {
        let r = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        match r {
            Ok((sock, peer)) => {
                backoff = min_backoff;
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    drop(sock);
                    gate.refuse(
                        Refusal::ConnectionCap,
                        peer,
                        "broker.max_connections reached",
                    );
                    continue;
                };
                tracker.spawn(connection(
                    Arc::clone(&gate),
                    sock,
                    peer,
                    permit,
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                gate.metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                unlogged_errors += 1;
                let now = Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    warn!(error = %e, errors = unlogged_errors, retry_in = ?backoff, "Embedded broker cannot accept connections.");
                    unlogged_errors = 0;
                    last_error_log = Some(now);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// A client-chosen string cut to 128 bytes for a log line.
fn short(s: &str) -> &str {
    let mut end = s.len().min(128);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decrements the open-connection gauge when the connection ends.
struct Open(Arc<BrokerMetrics>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why reading a packet stopped.
#[derive(Debug)]
enum ReadError {
    Closed,
    Oversized(usize),
    Malformed,
}

/// The fixed header of the packet at the start of `buf`: (header length,
/// remaining length), None while incomplete. Pure.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(())
}

/// Takes the whole packet at the start of `buf` when it is there (at most
/// `max` bytes, fixed header included); None while incomplete. A packet
/// announced larger than `max` fails at once, before its body is read.
fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, ReadError> {
    match fixed_header(buf) {
        Err(()) => Err(ReadError::Malformed),
        Ok(Some((h, rem))) => {
            let total = h + rem;
            if total > max {
                return Err(ReadError::Oversized(total));
            }
            if buf.len() >= total {
                return Ok(Some(buf.split_to(total)));
            }
            buf.reserve(total - buf.len());
            Ok(None)
        }
        Ok(None) => {
            buf.reserve(64);
            Ok(None)
        }
    }
}

/// Reads one whole packet of at most `max` bytes.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<BytesMut, ReadError> {
    loop {
        if let Some(f) = take_frame(buf, max)? {
            return Ok(f);
        }
        match r.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

/// Parses a whole frame (no copy: the payload stays in the read buffer).
fn decode(mut frame: BytesMut) -> Result<Packet, ReadError> {
    Packet::read(&mut frame, usize::MAX).map_err(|_| ReadError::Malformed)
}

/// Appends `p`'s encoding to `out`.
fn encode(out: &mut BytesMut, p: &Packet) {
    // Writing to a BytesMut cannot fail below usize::MAX.
    let _ = p.write(out, usize::MAX);
}

async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut BytesMut,
    p: &Packet,
) -> std::io::Result<()> {
    out.clear();
    encode(out, p);
    w.write_all(out).await
}

/// Writes out what `out` holds and empties it.
async fn flush<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Encoded bytes gathered before a write, at most (more is written at once).
const WRITE_BATCH: usize = 64 * 1024;

/// How often an open connection's credentials are checked again: a unit
/// revoked (or an agency token changed) loses its session within this.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

async fn connack(client: &mut TcpStream, code: ConnectReturnCode) {
    let mut out = BytesMut::new();
    let _ = write_packet(
        client,
        &mut out,
        &Packet::ConnAck(ConnAck::new(code, false)),
    )
    .await;
    let _ = client.shutdown().await;
}

/// The CONNECT's protocol level when its protocol name is "MQTT" or
/// "MQIsdp" (3.1), from the raw frame: a v5 CONNECT is not parsed as 3.1.1.
fn protocol_level(frame: &[u8], header: usize) -> Option<u8> {
    let v = frame.get(header..)?;
    if v.starts_with(b"\x00\x04MQTT") {
        return v.get(6).copied();
    }
    if v.starts_with(b"\x00\x06MQIsdp") {
        return v.get(8).copied();
    }
    None
}

async fn connection(
    gate: Arc<Gate>,
    mut client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    gate.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let _open = Open(Arc::clone(&gate.metrics));
    let _ = client.set_nodelay(true);
    let s = &gate.settings;
    let mut cbuf = BytesMut::with_capacity(1024);

    let first = tokio::select! {
        r = tokio::time::timeout(s.connect_timeout, read_frame(&mut client, &mut cbuf, s.max_packet_bytes)) => r,
        _ = shutdown.cancelled() => return,
    };
    let frame = match first {
        Err(_) => return gate.refuse(Refusal::ConnectTimeout, peer, "no CONNECT in time"),
        Ok(Err(ReadError::Oversized(n))) => {
            return gate.refuse(Refusal::Oversized, peer, &format!("{n} byte CONNECT"));
        }
        Ok(Err(ReadError::Malformed)) => {
            return gate.refuse(Refusal::Protocol, peer, "malformed packet");
        }
        Ok(Err(ReadError::Closed)) => return,
        Ok(Ok(f)) => f,
    };
    if frame[0] >> 4 != 1 {
        return gate.refuse(Refusal::Protocol, peer, "first packet is not CONNECT");
    }
    let header = fixed_header(&frame).ok().flatten().map_or(2, |(h, _)| h);
    if protocol_level(&frame, header) != Some(4) {
        gate.refuse(Refusal::Protocol, peer, "not MQTT 3.1.1");
        return connack(&mut client, ConnectReturnCode::RefusedProtocolVersion).await;
    }
    let mut connect = match decode(frame) {
        Ok(Packet::Connect(c)) if c.protocol == Protocol::V4 => c,
        _ => return gate.refuse(Refusal::Protocol, peer, "malformed CONNECT"),
    };
    let Some(mut login) = connect.login.take() else {
        gate.refuse(Refusal::BadCredentials, peer, "anonymous");
        return connack(&mut client, ConnectReturnCode::NotAuthorized).await;
    };
    let Some(principal) = gate
        .auth
        .authenticate(&login.username, login.password.as_bytes())
    else {
        gate.refuse(
            Refusal::BadCredentials,
            peer,
            &format!("user {:?}", short(&login.username)),
        );
        return connack(&mut client, ConnectReturnCode::BadUserNamePassword).await;
    };
    if let Some(w) = &connect.last_will
        && let Err(r) = acl::check_will(&principal, &w.topic, w.qos as u8)
    {
        gate.refuse(
            r,
            peer,
            &format!("{principal:?} will on {:?}", short(&w.topic)),
        );
        return connack(&mut client, ConnectReturnCode::NotAuthorized).await;
    }
    connect.client_id = acl::client_id(&principal, &connect.client_id);
    // Kept to check again while the session lasts (see RECHECK_INTERVAL).
    let (username, password) = (
        std::mem::take(&mut login.username),
        std::mem::take(&mut login.password),
    );
    let (user, pass) = &s.internal_login;
    connect.login = Some(Login::new(user.clone(), pass.clone()));

    let upstream =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(s.upstream)).await;
    let mut upstream = match upstream {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            warn!(error = %e, "Embedded broker gate cannot reach rumqttd.");
            return connack(&mut client, ConnectReturnCode::ServiceUnavailable).await;
        }
        Err(_) => {
            warn!("Embedded broker gate: rumqttd did not accept within 5 s.");
            return connack(&mut client, ConnectReturnCode::ServiceUnavailable).await;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut out = BytesMut::with_capacity(4096);
    if write_packet(&mut upstream, &mut out, &Packet::Connect(connect))
        .await
        .is_err()
    {
        return;
    }
    gate.metrics.connects.fetch_add(1, Ordering::Relaxed);
    debug!(%peer, ?principal, "Client connected through the gate.");

    let (client_r, client_w) = client.into_split();
    let (up_r, up_w) = upstream.into_split();
    let (tx, rx) = mpsc::channel(64);
    let c2b = client_to_broker(&gate, peer, &principal, client_r, cbuf, up_w, out, tx);
    let b2c = broker_to_client(s.upstream_max_packet, up_r, client_w, rx);
    let still_valid = async {
        let mut every = tokio::time::interval(RECHECK_INTERVAL);
        every.tick().await;
        loop {
            every.tick().await;
            let now = gate.auth.authenticate(&username, password.as_bytes());
            if now.as_ref() != Some(&principal) {
                break;
            }
        }
    };
    tokio::select! {
        _ = c2b => {}
        _ = b2c => {}
        _ = still_valid => gate.refuse(
            Refusal::BadCredentials,
            peer,
            &format!("{principal:?}: credential no longer valid (revoked); session closed"),
        ),
        _ = shutdown.cancelled() => {}
    }
}

/// What the client → broker side tells the broker → client side.
enum ToClient {
    /// A packet the gate answers itself (PUBACK, SUBACK of refused filters).
    Inject(Packet),
    /// The broker's SUBACK for `pkid` covers only the allowed filters:
    /// `allowed[i]` says whether the client's i-th filter was forwarded.
    Merge { pkid: u16, allowed: Vec<bool> },
}

/// What to do with one client packet.
enum Verdict {
    Forward(Packet),
    /// Dropped (refused, answered by the gate if needed).
    Drop,
    /// Close the connection.
    Close,
}

/// Checks one client packet against the ACL (and tells the broker →
/// client side what to answer or merge).
async fn check_packet(
    gate: &Gate,
    peer: SocketAddr,
    principal: &Principal,
    packet: Packet,
    tx: &mpsc::Sender<ToClient>,
) -> Verdict {
    match packet {
        Packet::Publish(p) => {
            match acl::check_publish(principal, &p.topic, p.qos as u8, p.retain) {
                Ok(()) => Verdict::Forward(Packet::Publish(p)),
                Err(r) => {
                    gate.refuse(
                        r,
                        peer,
                        &format!("{principal:?} publish to {:?}", short(&p.topic)),
                    );
                    match p.qos {
                        QoS::AtMostOnce => Verdict::Drop,
                        QoS::AtLeastOnce => {
                            let ack = ToClient::Inject(Packet::PubAck(PubAck::new(p.pkid)));
                            if tx.send(ack).await.is_err() {
                                return Verdict::Close;
                            }
                            Verdict::Drop
                        }
                        QoS::ExactlyOnce => Verdict::Close,
                    }
                }
            }
        }
        Packet::Subscribe(mut sub) => {
            let allowed: Vec<bool> = sub
                .filters
                .iter()
                .map(|f| match acl::check_subscribe(principal, &f.path) {
                    Ok(()) => true,
                    Err(r) => {
                        gate.refuse(
                            r,
                            peer,
                            &format!("{principal:?} subscribe to {:?}", short(&f.path)),
                        );
                        false
                    }
                })
                .collect();
            if allowed.iter().all(|a| !a) {
                let codes = vec![SubscribeReasonCode::Failure; allowed.len()];
                let ack = ToClient::Inject(Packet::SubAck(SubAck::new(sub.pkid, codes)));
                if tx.send(ack).await.is_err() {
                    return Verdict::Close;
                }
                return Verdict::Drop;
            }
            if allowed.iter().any(|a| !a) {
                let mut i = 0;
                sub.filters.retain(|_| {
                    i += 1;
                    allowed[i - 1]
                });
                let merge = ToClient::Merge {
                    pkid: sub.pkid,
                    allowed,
                };
                if tx.send(merge).await.is_err() {
                    return Verdict::Close;
                }
            }
            for f in &mut sub.filters {
                if f.qos == QoS::ExactlyOnce {
                    f.qos = QoS::AtLeastOnce;
                }
            }
            Verdict::Forward(Packet::Subscribe(sub))
        }
        p @ (Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::Unsubscribe(_)
        | Packet::PingReq
        | Packet::Disconnect) => Verdict::Forward(p),
        other => {
            let what = format!("unexpected {} from a client", packet_name(&other));
            gate.refuse(Refusal::Protocol, peer, &what);
            Verdict::Close
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_to_broker(
    gate: &Gate,
    peer: SocketAddr,
    principal: &Principal,
    mut client: tokio::net::tcp::OwnedReadHalf,
    mut buf: BytesMut,
    mut up: tokio::net::tcp::OwnedWriteHalf,
    mut out: BytesMut,
    tx: mpsc::Sender<ToClient>,
) {
    let max = gate.settings.max_packet_bytes;
    out.clear();
    loop {
        // Every whole packet already read, then one write for all of them.
        loop {
            let frame = match take_frame(&mut buf, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let _ = flush(&mut up, &mut out).await;
                    return match e {
                        ReadError::Oversized(n) => {
                            gate.refuse(Refusal::Oversized, peer, &format!("{n} byte packet"))
                        }
                        _ => gate.refuse(Refusal::Protocol, peer, "malformed packet"),
                    };
                }
            };
            let packet = match decode(frame) {
                Ok(p) => p,
                Err(_) => {
                    let _ = flush(&mut up, &mut out).await;
                    return gate.refuse(Refusal::Protocol, peer, "malformed packet");
                }
            };
            match check_packet(gate, peer, principal, packet, &tx).await {
                Verdict::Forward(p) => {
                    encode(&mut out, &p);
                    if matches!(p, Packet::Disconnect) {
                        let _ = flush(&mut up, &mut out).await;
                        return;
                    }
                }
                Verdict::Drop => {}
                Verdict::Close => {
                    let _ = flush(&mut up, &mut out).await;
                    return;
                }
            }
            if out.len() >= WRITE_BATCH && flush(&mut up, &mut out).await.is_err() {
                return;
            }
        }
        if flush(&mut up, &mut out).await.is_err() {
            return;
        }
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::SubAck(_) => "SUBACK",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingResp => "PINGRESP",
        _ => "packet",
    }
}

/// SUBACKs awaiting a merge, at most this many per connection.
const MAX_PENDING_MERGES: usize = 64;

async fn broker_to_client(
    max: usize,
    mut up: tokio::net::tcp::OwnedReadHalf,
    mut client: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<ToClient>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    let mut pending: HashMap<u16, Vec<bool>> = HashMap::new();
    // Applies one message from the other side; false ends the connection.
    fn apply(m: ToClient, pending: &mut HashMap<u16, Vec<bool>>, out: &mut BytesMut) -> bool {
        match m {
            ToClient::Inject(p) => {
                encode(out, &p);
                true
            }
            ToClient::Merge { pkid, allowed } => {
                pending.insert(pkid, allowed);
                pending.len() <= MAX_PENDING_MERGES
            }
        }
    }
    loop {
        tokio::select! {
            r = up.read_buf(&mut buf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return;
                }
                loop {
                    let frame = match take_frame(&mut buf, max) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(_) => return,
                    };
                    if frame[0] >> 4 == 9 {
                        // A SUBACK: take every merge queued before its
                        // SUBSCRIBE was forwarded.
                        while let Ok(m) = rx.try_recv() {
                            if !apply(m, &mut pending, &mut out) {
                                return;
                            }
                        }
                        if let Ok(Packet::SubAck(ack)) = decode(frame.clone())
                            && let Some(allowed) = pending.remove(&ack.pkid)
                        {
                            let mut granted = ack.return_codes.into_iter();
                            let codes = allowed
                                .iter()
                                .map(|a| {
                                    if *a {
                                        granted.next().unwrap_or(SubscribeReasonCode::Failure)
                                    } else {
                                        SubscribeReasonCode::Failure
                                    }
                                })
                                .collect();
                            encode(&mut out, &Packet::SubAck(SubAck::new(ack.pkid, codes)));
                            continue;
                        }
                    }
                    out.extend_from_slice(&frame);
                    if out.len() >= WRITE_BATCH && flush(&mut client, &mut out).await.is_err() {
                        return;
                    }
                }
            }
            m = rx.recv() => {
                let Some(m) = m else { return };
                if !apply(m, &mut pending, &mut out) {
                    return;
                }
            }
        }
        if flush(&mut client, &mut out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_header_table() {
        type Parsed = Result<Option<(usize, usize)>, ()>;
        let cases: &[(&[u8], Parsed)] = &[
            (&[], Ok(None)),
            (&[0x30], Ok(None)),
            (&[0x30, 0x00], Ok(Some((2, 0)))),
            (&[0x30, 0x7f], Ok(Some((2, 127)))),
            (&[0x30, 0x80], Ok(None)),
            (&[0x30, 0x80, 0x01], Ok(Some((3, 128)))),
            (&[0x30, 0xff, 0xff, 0xff, 0x7f], Ok(Some((5, 268_435_455)))),
            (&[0x30, 0x80, 0x80, 0x40], Ok(Some((4, 1_048_576)))),
            (&[0x30, 0xff, 0xff, 0xff, 0xff], Err(())),
        ];
        for (buf, want) in cases {
            assert_eq!(fixed_header(buf), *want, "{buf:?}");
        }
    }

    #[test]
    fn protocol_levels() {
        let v4 = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c";
        let v5 = b"\x10\x0c\x00\x04MQTT\x05\x02\x00\x3c";
        let v31 = b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c";
        assert_eq!(protocol_level(v4, 2), Some(4));
        assert_eq!(protocol_level(v5, 2), Some(5));
        assert_eq!(protocol_level(v31, 2), Some(3));
        assert_eq!(protocol_level(b"\x10\x02\x00\x01", 2), None);
    }

    #[tokio::test]
    async fn oversized_frames_fail_before_their_body() {
        // A header announcing 1 MiB, and no body: refused without waiting.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0x30, 0x80, 0x80, 0x40]).await.unwrap();
        let mut buf = BytesMut::new();
        let r = read_frame(&mut b, &mut buf, 266_240).await;
        assert!(matches!(r, Err(ReadError::Oversized(1_048_580))), "{r:?}");
        // At the limit exactly (fixed header included), it is read whole.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let mut p = vec![0x30, 0x80, 0x80, 0x01];
        p.resize(4 + 16_384, 7);
        a.write_all(&p).await.unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(
            read_frame(&mut b, &mut buf, 16_388).await.unwrap().len(),
            16_388
        );
        a.write_all(&p).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, &mut buf, 16_387).await,
            Err(ReadError::Oversized(16_388))
        ));
    }
}
