//! The webhook HTTP client: hyper 1 over rustls (ring), trusting the
//! system's CA store plus the webhook's `ca_file`. No OpenSSL. Each attempt
//! is bounded by the webhook's `timeout` (connect, send, response head).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::NotifyError;
use super::config::WebhookConfig;
use super::sign::{self, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

const UA: &str = concat!("muster-collector/", env!("CARGO_PKG_VERSION"));

pub struct WebhookClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: hyper::Uri,
    secret: Vec<u8>,
    timeout: Duration,
}

fn tls_config(cfg: &WebhookConfig, key: &str) -> Result<rustls::ClientConfig, NotifyError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = &cfg.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| NotifyError::Tls(format!("{key}.ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(NotifyError::Tls(format!(
                "{key}.ca_file {}: no certificate in it",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| NotifyError::Tls(format!("{key}.ca_file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(NotifyError::Tls(format!(
            "{key}: no trusted CA (the system store is empty; set ca_file)"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NotifyError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Error and its causes on one line: hyper's top-level errors say little.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl WebhookClient {
    /// `key` names the config table in errors (`agency[0].webhook`).
    pub fn new(cfg: &WebhookConfig, key: &str) -> Result<Self, NotifyError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.timeout));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = if cfg.https {
            builder
                .with_tls_config(tls_config(cfg, key)?)
                .https_only()
                .enable_http1()
                .wrap_connector(http)
        } else {
            // Plain http: a receiver on the same host or a trusted segment;
            // the signature still authenticates the body.
            builder
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| NotifyError::Tls(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(WebhookClient {
            client,
            url: cfg.url.clone(),
            secret: cfg.secret.0.as_bytes().to_vec(),
            timeout: cfg.timeout,
        })
    }

    /// One attempt: signs `body` for `timestamp_s` and POSTs it. `Ok` with
    /// a 2xx status; `Err` with what went wrong otherwise.
    pub async fn send(&self, delivery: &str, timestamp_s: u64, body: Bytes) -> Result<u16, String> {
        let signature = sign::sign(&self.secret, timestamp_s, &body);
        let req = Request::post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static(UA))
            .header(DELIVERY_HEADER, delivery)
            .header(TIMESTAMP_HEADER, timestamp_s.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| {
                format!(
                    "no response within {}",
                    humantime::format_duration(self.timeout)
                )
            })?
            .map_err(|e| chain(&e))?;
        let status = resp.status();
        // The body is not read: dropping it closes or recycles the connection.
        drop(resp);
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}
