//! The http/https probe: a hand-timed hyper 1.x HTTP/1.1 client over tokio
//! and tokio-rustls (ring), so every phase is measured on one monotonic clock:
//!
//! `t0` start → `t_dns` name resolved → `t_conn` TCP connected → `t_tls` TLS
//! handshake done (https) → `t_fb` first response byte read → `t_end` body read.
//!
//! Each phase is the difference of consecutive stamps, computed in whole
//! microseconds from `t0` (telescoping), so `dns + connect + tls + ttfb` is
//! exactly `t_fb - t0` and never exceeds `total = t_end - t0`. TTFB includes
//! writing the request. One connection per run (`Connection: close`): a
//! probe measures what a fresh client sees.
//!
//! [`Client`] is the one home of that exchange: the http probe sends a GET or
//! HEAD through it, a transaction step (`super::transaction`) any method with
//! headers and a body. A response body is read up to `body_max_bytes`; past
//! it the read stops, the connection is closed, and the cut is counted
//! ([`super::ProbeStats::body_cuts`]) — the prefix is what `body_contains`
//! and extraction judge. Only that prefix is ever kept, and only when
//! something judges it: a body of any size costs at most `body_max_bytes`
//! plus one read buffer.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Body as _;
use hyper::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use muster_proto::ErrorClass;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

use super::classify::{Failure, Step, hyper_failure, io_failure, timeout_failure};
use super::{ProbeError, ProbeStats, Run, connect_any, resolve};
use crate::config::{HttpMethod, HttpSpec};

/// A configured http probe, its TLS client config built once.
pub struct HttpProbe {
    spec: HttpSpec,
    client: Client,
    path: String,
    stats: Arc<ProbeStats>,
    label: String,
}

impl HttpProbe {
    pub fn new(spec: HttpSpec) -> Result<Self, ProbeError> {
        HttpProbe::with_stats(spec, "http", Arc::default())
    }

    /// An http probe named `label` (for the cut log) counting into `stats`.
    pub fn with_stats(
        spec: HttpSpec,
        label: &str,
        stats: Arc<ProbeStats>,
    ) -> Result<Self, ProbeError> {
        let authority = spec
            .url
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| spec.host.clone());
        let tls = if spec.tls {
            Some(connector(
                spec.ca_file.as_deref(),
                spec.insecure_skip_verify,
            )?)
        } else {
            None
        };
        let client = Client::new(spec.host.clone(), spec.port, authority, tls);
        let path = spec
            .url
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        Ok(HttpProbe {
            spec,
            client,
            path,
            stats,
            label: label.to_owned(),
        })
    }

    pub async fn run(&self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        let out = Outgoing {
            method: self.spec.method,
            path_and_query: &self.path,
            headers: &[],
            body: Bytes::new(),
        };
        let reading = Reading {
            body_max_bytes: self.spec.body_max_bytes,
            body_contains: self.spec.body_contains.as_deref(),
            keep_body: false,
            label: &self.label,
        };
        let x = self
            .client
            .exchange(&out, &reading, deadline, timeout, &self.stats)
            .await;
        let mut run = x.run;
        if run.outcome.is_ok()
            && let Some(status) = run.status
        {
            run.outcome = judge(
                status,
                &self.spec.expect_status,
                self.spec.body_contains.as_deref(),
                x.found,
                x.read,
                x.cut,
            );
        }
        run
    }
}

/// One request to send.
pub(crate) struct Outgoing<'a> {
    pub method: HttpMethod,
    /// Already percent-encoded where it must be.
    pub path_and_query: &'a str,
    /// Extra headers; a `User-Agent` here replaces the agent's.
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub body: Bytes,
}

/// What to read of the response.
pub(crate) struct Reading<'a> {
    /// The most body bytes read; more is a counted cut.
    pub body_max_bytes: usize,
    /// Looked for in the body prefix.
    pub body_contains: Option<&'a str>,
    /// Keep the body prefix (for JSON extraction).
    pub keep_body: bool,
    /// Names the probe (or `probe.step`) in the cut log.
    pub label: &'a str,
}

/// What one exchange measured and read.
pub(crate) struct Exchange {
    /// Phases, status, certificate; `outcome` is the transport's only (the
    /// status and body are judged by the caller, [`judge`]).
    pub run: Run,
    /// The response headers, when a response came.
    pub headers: HeaderMap,
    /// The body prefix, when [`Reading::keep_body`].
    pub body: Vec<u8>,
    /// Body bytes read (at most `body_max_bytes`).
    pub read: usize,
    /// The body was longer than `body_max_bytes`.
    pub cut: bool,
    /// `body_contains` was found in the prefix.
    pub found: bool,
}

/// One HTTP/1.1 endpoint (host, port, TLS config built once).
pub(crate) struct Client {
    host: String,
    port: u16,
    authority: String,
    tls: Option<TlsConnector>,
    user_agent: HeaderValue,
}

impl Client {
    /// `tls`: `Some` for https (several clients may share one connector).
    pub(crate) fn new(
        host: String,
        port: u16,
        authority: String,
        tls: Option<TlsConnector>,
    ) -> Client {
        Client {
            host,
            port,
            authority,
            tls,
            user_agent: HeaderValue::from_static(concat!(
                "muster-agent/",
                env!("CARGO_PKG_VERSION")
            )),
        }
    }

    /// Resolves, connects, handshakes, sends `out` and reads the answer, by
    /// `deadline` (`timeout` is only for the failure's words).
    pub(crate) async fn exchange(
        &self,
        out: &Outgoing<'_>,
        reading: &Reading<'_>,
        deadline: Instant,
        timeout: Duration,
        stats: &ProbeStats,
    ) -> Exchange {
        let t0 = Instant::now();
        let mut x = Exchange {
            run: Run::default(),
            headers: HeaderMap::new(),
            body: Vec::new(),
            read: 0,
            cut: false,
            found: false,
        };
        let us = |t: Instant| t.duration_since(t0).as_micros().min(u32::MAX as u128) as u32;
        let finish = |mut x: Exchange, r: Result<(), Failure>| {
            x.run.phases.total_us = us(Instant::now());
            x.run.outcome = r;
            x
        };

        // DNS
        let addrs = match resolve(&self.host, self.port, deadline, timeout).await {
            Ok(a) => a,
            Err(f) => return finish(x, Err(f)),
        };
        let t_dns = us(Instant::now());
        x.run.phases.dns_us = Some(t_dns);

        // TCP connect
        let tcp = match connect_any(&addrs, deadline, timeout).await {
            Ok(s) => s,
            Err(f) => return finish(x, Err(f)),
        };
        let t_conn = us(Instant::now());
        x.run.phases.connect_us = Some(t_conn - t_dns);
        let mut t_prev = t_conn;

        let first_byte = Arc::new(OnceLock::new());
        let r = match &self.tls {
            None => {
                self.send(
                    Timed::new(tcp, first_byte.clone()),
                    out,
                    reading,
                    deadline,
                    timeout,
                    &mut x,
                )
                .await
            }
            Some(connector) => {
                let name = match ServerName::try_from(self.host.clone()) {
                    Ok(n) => n,
                    Err(e) => {
                        return finish(
                            x,
                            Err(Failure::new(ErrorClass::Tls, format!("server name: {e}"))),
                        );
                    }
                };
                let tls = match timeout_at(deadline, connector.connect(name, tcp)).await {
                    Err(_) => return finish(x, Err(timeout_failure(Step::Tls, timeout))),
                    Ok(Err(e)) => return finish(x, Err(io_failure(Step::Tls, &e))),
                    Ok(Ok(s)) => s,
                };
                let t_tls = us(Instant::now());
                x.run.phases.tls_us = Some(t_tls - t_conn);
                t_prev = t_tls;
                x.run.cert_days_left = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| super::cert::days_left(c, unix_now_s()));
                self.send(
                    Timed::new(tls, first_byte.clone()),
                    out,
                    reading,
                    deadline,
                    timeout,
                    &mut x,
                )
                .await
            }
        };
        if let Some(fb) = first_byte.get() {
            x.run.phases.ttfb_us = Some(us(*fb).saturating_sub(t_prev));
        }
        let x = finish(x, r);
        if x.cut {
            stats.body_cut(reading.label, reading.body_max_bytes);
        }
        x
    }

    /// Sends the request and reads the response over an established stream.
    async fn send<S>(
        &self,
        stream: Timed<S>,
        out: &Outgoing<'_>,
        reading: &Reading<'_>,
        deadline: Instant,
        timeout: Duration,
        x: &mut Exchange,
    ) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = match timeout_at(
            deadline,
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)),
        )
        .await
        {
            Err(_) => return Err(timeout_failure(Step::Request, timeout)),
            Ok(Err(e)) => return Err(hyper_failure(Step::Request, &e)),
            Ok(Ok(x)) => x,
        };
        // Dropped (the connection closed) when this returns: after the
        // body's end, or at a cut.
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let mut req = Request::builder()
            .method(out.method.as_hyper())
            .uri(out.path_and_query)
            .header(HOST, &self.authority)
            .header(CONNECTION, "close");
        if !out.headers.iter().any(|(n, _)| *n == USER_AGENT) {
            req = req.header(USER_AGENT, &self.user_agent);
        }
        for (n, v) in out.headers {
            req = req.header(n, v);
        }
        let req = req
            .body(Full::new(out.body.clone()))
            .map_err(|e| Failure::new(ErrorClass::Protocol, format!("request: {e}")))?;
        let resp = match timeout_at(deadline, sender.send_request(req)).await {
            Err(_) => return Err(timeout_failure(Step::Response, timeout)),
            Ok(Err(e)) => return Err(hyper_failure(Step::Response, &e)),
            Ok(Ok(r)) => r,
        };
        x.run.status = Some(resp.status().as_u16());
        let (parts, mut body) = resp.into_parts();
        x.headers = parts.headers;

        // Read the body up to the cap, so `total` covers the whole response;
        // keep the prefix only when something judges it.
        let want = reading.body_contains.map(str::as_bytes);
        let keep = reading.keep_body || want.is_some();
        let max = reading.body_max_bytes;
        loop {
            let frame = match timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(timeout_failure(Step::Body, timeout)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(hyper_failure(Step::Body, &e)),
                Ok(Some(Ok(f))) => f,
            };
            let Some(d) = frame.data_ref() else { continue };
            if d.is_empty() {
                continue;
            }
            let room = max - x.read;
            if room == 0 {
                x.cut = true;
                break;
            }
            let take = room.min(d.len());
            if keep {
                // A match may straddle the previous frame's end.
                let from = x
                    .body
                    .len()
                    .saturating_sub(want.map_or(0, |w| w.len().saturating_sub(1)));
                x.body.extend_from_slice(&d[..take]);
                if let Some(w) = want
                    && !x.found
                {
                    x.found = contains(&x.body[from..], w);
                }
            }
            x.read += take;
            if take < d.len() {
                x.cut = true;
                break;
            }
            if x.read == max && body.is_end_stream() {
                break;
            }
        }
        drop(conn);
        Ok(())
    }
}

/// Judges a response: the status against `expect`, then `body_contains`
/// against what was read. Fixed phrases only (never the body).
pub(crate) fn judge(
    status: u16,
    expect: &[(u16, u16)],
    body_contains: Option<&str>,
    found: bool,
    read: usize,
    cut: bool,
) -> Result<(), Failure> {
    if !expect.iter().any(|(lo, hi)| *lo <= status && status <= *hi) {
        return Err(Failure::new(
            ErrorClass::BadStatus,
            format!("status {status}, expected {}", expected_text(expect)),
        ));
    }
    if let Some(w) = body_contains
        && !found
    {
        return Err(Failure::new(
            ErrorClass::BodyMismatch,
            format!(
                "the body ({read} bytes read{}) does not contain {:?}",
                if cut { ", cut at body_max_bytes" } else { "" },
                truncate(w, 40)
            ),
        ));
    }
    Ok(())
}

/// `200`, `200-399`, `200, 204`.
fn expected_text(expect: &[(u16, u16)]) -> String {
    expect
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

// Real wall time: a certificate's expiry is compared with the terminal's
// clock, as the TLS stack itself does.
#[allow(clippy::disallowed_methods)]
fn unix_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TLS connector over [`tls_client_config`].
pub(crate) fn connector(
    ca_file: Option<&std::path::Path>,
    insecure: bool,
) -> Result<TlsConnector, ProbeError> {
    Ok(TlsConnector::from(Arc::new(tls_client_config(
        ca_file, insecure,
    )?)))
}

/// An HTTP/1.1 rustls (ring) client config: the built-in web roots, or the
/// PEM CA bundle `ca_file`, or (only when `insecure`) no verification. The
/// one home of the agent's https client TLS (probes and enrolment).
pub(crate) fn tls_client_config(
    ca_file: Option<&std::path::Path>,
    insecure: bool,
) -> Result<ClientConfig, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let path = path.to_path_buf();
                let pem = std::fs::read(&path)
                    .map_err(|e| ProbeError::CaFile(path.clone(), e.to_string()))?;
                let mut n = 0;
                for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let c = c.map_err(|e| ProbeError::CaFile(path.clone(), e.to_string()))?;
                    roots
                        .add(c)
                        .map_err(|e| ProbeError::CaFile(path.clone(), e.to_string()))?;
                    n += 1;
                }
                if n == 0 {
                    return Err(ProbeError::CaFile(
                        path.clone(),
                        "no PEM certificates in it".into(),
                    ));
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// `insecure_skip_verify = true`: accepts any certificate (signatures of the
/// handshake itself are still checked).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A stream that records when the first byte was read from it.
struct Timed<S> {
    inner: S,
    first_byte: Arc<OnceLock<Instant>>,
}

impl<S> Timed<S> {
    fn new(inner: S, first_byte: Arc<OnceLock<Instant>>) -> Self {
        Timed { inner, first_byte }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let _ = self.first_byte.set(Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
