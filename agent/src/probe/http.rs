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

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
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
use super::{ProbeError, Run, connect_any, resolve};
use crate::config::{HttpMethod, HttpSpec};

/// A configured http probe, its TLS client config built once.
pub struct HttpProbe {
    spec: HttpSpec,
    tls: Option<TlsConnector>,
    user_agent: String,
}

impl HttpProbe {
    pub fn new(spec: HttpSpec) -> Result<Self, ProbeError> {
        let tls = if spec.tls {
            Some(TlsConnector::from(Arc::new(client_config(&spec)?)))
        } else {
            None
        };
        Ok(HttpProbe {
            spec,
            tls,
            user_agent: format!("muster-agent/{}", env!("CARGO_PKG_VERSION")),
        })
    }

    pub async fn run(&self, timeout: Duration) -> Run {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let mut run = Run::default();
        let us = |t: Instant| t.duration_since(t0).as_micros().min(u32::MAX as u128) as u32;
        let finish = |mut run: Run, r: Result<(), Failure>| {
            run.phases.total_us = us(Instant::now());
            run.outcome = r;
            run
        };

        // DNS
        let addrs = match resolve(&self.spec.host, self.spec.port, deadline, timeout).await {
            Ok(a) => a,
            Err(f) => return finish(run, Err(f)),
        };
        let t_dns = us(Instant::now());
        run.phases.dns_us = Some(t_dns);

        // TCP connect
        let tcp = match connect_any(&addrs, deadline, timeout).await {
            Ok(s) => s,
            Err(f) => return finish(run, Err(f)),
        };
        let t_conn = us(Instant::now());
        run.phases.connect_us = Some(t_conn - t_dns);
        let mut t_prev = t_conn;

        let first_byte = Arc::new(OnceLock::new());
        let r = match &self.tls {
            None => {
                self.exchange(
                    Timed::new(tcp, first_byte.clone()),
                    deadline,
                    timeout,
                    &mut run,
                )
                .await
            }
            Some(connector) => {
                let name = match ServerName::try_from(self.spec.host.clone()) {
                    Ok(n) => n,
                    Err(e) => {
                        return finish(
                            run,
                            Err(Failure::new(ErrorClass::Tls, format!("server name: {e}"))),
                        );
                    }
                };
                let tls = match timeout_at(deadline, connector.connect(name, tcp)).await {
                    Err(_) => return finish(run, Err(timeout_failure(Step::Tls, timeout))),
                    Ok(Err(e)) => return finish(run, Err(io_failure(Step::Tls, &e))),
                    Ok(Ok(s)) => s,
                };
                let t_tls = us(Instant::now());
                run.phases.tls_us = Some(t_tls - t_conn);
                t_prev = t_tls;
                run.cert_days_left = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| super::cert::days_left(c, unix_now_s()));
                self.exchange(
                    Timed::new(tls, first_byte.clone()),
                    deadline,
                    timeout,
                    &mut run,
                )
                .await
            }
        };
        if let Some(fb) = first_byte.get() {
            run.phases.ttfb_us = Some(us(*fb).saturating_sub(t_prev));
        }
        finish(run, r)
    }

    /// Sends the request and reads the response over an established stream.
    async fn exchange<S>(
        &self,
        stream: Timed<S>,
        deadline: Instant,
        timeout: Duration,
        run: &mut Run,
    ) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
            {
                Ok(x) => x,
                Err(e) => return Err(hyper_failure(Step::Request, &e)),
            };
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let path = self
            .spec
            .url
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let authority = self
            .spec
            .url
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(&self.spec.host);
        let method = match self.spec.method {
            HttpMethod::Get => hyper::Method::GET,
            HttpMethod::Head => hyper::Method::HEAD,
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, authority)
            .header(USER_AGENT, &self.user_agent)
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failure::new(ErrorClass::Protocol, format!("request: {e}")))?;
        let resp = match timeout_at(deadline, sender.send_request(req)).await {
            Err(_) => return Err(timeout_failure(Step::Response, timeout)),
            Ok(Err(e)) => return Err(hyper_failure(Step::Response, &e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        run.status = Some(status);

        // Read the body (up to the cap) so `total` covers the whole response.
        let want = self.spec.body_contains.as_deref().map(str::as_bytes);
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let mut found = false;
        let mut read = 0usize;
        loop {
            let frame = match timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(timeout_failure(Step::Body, timeout)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(hyper_failure(Step::Body, &e)),
                Ok(Some(Ok(f))) => f,
            };
            if let Some(d) = frame.data_ref() {
                read += d.len();
                if let Some(w) = want
                    && !found
                {
                    buf.extend_from_slice(d);
                    found = contains(&buf, w);
                    if buf.len() > self.spec.body_max_bytes {
                        // Keep only a tail long enough for a match across frames.
                        let keep = w.len().saturating_sub(1);
                        buf.drain(..buf.len() - keep);
                    }
                }
                if read >= self.spec.body_max_bytes {
                    break;
                }
            }
        }
        drop(conn);
        if !self.spec.status_ok(status) {
            return Err(Failure::new(
                ErrorClass::BadStatus,
                format!("status {status} is not an expected one"),
            ));
        }
        if let Some(w) = &self.spec.body_contains
            && !found
        {
            return Err(Failure::new(
                ErrorClass::BodyMismatch,
                format!(
                    "the body ({read} bytes read) does not contain {:?}",
                    truncate(w, 40)
                ),
            ));
        }
        Ok(())
    }
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

/// The rustls client config of one https probe: the built-in web roots, or the
/// probe's `ca_file`, or (only when configured) no verification at all.
fn client_config(spec: &HttpSpec) -> Result<ClientConfig, ProbeError> {
    tls_client_config(spec.ca_file.as_deref(), spec.insecure_skip_verify)
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
