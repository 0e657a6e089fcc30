//! Enrolment by claim: how a new terminal gets its own broker credential
//! and learns the collector's ack-signing keys, with nothing made by hand
//! but the agency's enrol token (`[enroll] token` / `token_file`, which the
//! MSI's `ENROLL_TOKEN` property and the deb write).
//!
//! Contract:
//! * The credential is 32 random bytes from the OS RNG, kept in
//!   `<data_dir>/credential` (hex, mode 0600; on Windows the data
//!   directory's ACL already restricts it to the service). It is made once
//!   and never replaced: a damaged file stops the start rather than
//!   silently becoming a new identity the collector would refuse (409).
//! * Only its SHA-256 leaves the terminal over HTTP(S) (`POST
//!   /api/v1/enroll`); the secret itself goes only to the broker, as the
//!   MQTT password (hex) with username `{agency}/{unit}`, unless `[mqtt]`
//!   sets a username (explicit config wins).
//! * The agent claims until the collector says `active` (201, or 200 for a
//!   repeat), retrying with the uplink's backoff (full jitter) through
//!   `pending`, refusals and network errors; the uplink runs meanwhile and
//!   simply cannot connect until the unit is active. Then
//!   `<data_dir>/enrolled` records it, and later starts do not claim again.
//! * Trust on first enrolment: the `collector_keys` of the active answer are
//!   written to `<data_dir>/trusted_keys` (one `ed25519:<64 hex>` a line)
//!   only when the config lists no keys. Over plain `http://` whoever
//!   answers first is trusted: use `https://` for `enroll.url`, or list the
//!   keys in the config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use muster_proto::UnitId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls::pki_types::ServerName;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use muster_base::backoff::Retry;

pub const CREDENTIAL_FILE: &str = "credential";
pub const ENROLLED_FILE: &str = "enrolled";

/// One claim's time limit (connect, TLS, request and answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most answer bytes read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A repeated failure is logged again at most this often.
const LOG_REPEAT: Duration = Duration::from_secs(600);

/// `[enroll]`, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollSettings {
    pub host: String,
    pub port: u16,
    /// `https://`
    pub tls: bool,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    /// The claim endpoint's path (`<url path>/api/v1/enroll`).
    pub path: String,
    /// `enroll.token` or the contents of `enroll.token_file`.
    pub token: String,
    /// `enroll.ca_file`: PEM CA bundle for an https collector (default: the
    /// built-in web roots).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for EnrollSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("path", &self.path)
            .field("token", &"***")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{}: not a credential this agent wrote (64 hex digits); restore it, or move it away and have an admin revoke the unit so it can enrol again",
        .0.display()
    )]
    Corrupt(PathBuf),
    #[error("the OS random source failed: {0}")]
    Random(String),
    #[error("enroll.ca_file: {0}")]
    Tls(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |source| EnrollError::Io {
        path: path.to_owned(),
        error: source,
    }
}

/// The unit's secret. Never in a log line.
pub struct Credential([u8; 32]);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}…)", self.fingerprint())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl Credential {
    pub fn generate() -> Result<Credential, EnrollError> {
        use rand::TryRngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut b)
            .map_err(|e| EnrollError::Random(e.to_string()))?;
        Ok(Credential(b))
    }

    /// Parses the credential file's text: 64 lowercase hex digits.
    pub fn parse(text: &str) -> Option<Credential> {
        let t = text.trim();
        if t.len() != 64 || !t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut b = [0u8; 32];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Credential(b))
    }

    /// The MQTT password: the hex of the secret.
    pub fn password(&self) -> String {
        hex(&self.0)
    }

    /// What the collector stores: the hex SHA-256 of the secret.
    pub fn sha256_hex(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, &self.0).as_ref())
    }

    /// The first 16 hex digits of the hash, as the collector's admin list shows.
    pub fn fingerprint(&self) -> String {
        self.sha256_hex()[..16].to_owned()
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only on Unix.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EnrollError> {
    muster_base::fsutil::write_atomic(path, bytes, muster_base::fsutil::Mode::Private)
        .map_err(io_err(path))
}

/// The unit's credential: read from `<data_dir>/credential`, or made and
/// written there when the file does not exist. `true` when made now.
pub fn load_or_create(data_dir: &Path) -> Result<(Credential, bool), EnrollError> {
    let path = data_dir.join(CREDENTIAL_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Credential::parse(&text)
            .map(|c| (c, false))
            .ok_or(EnrollError::Corrupt(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
            let c = Credential::generate()?;
            write_private(&path, format!("{}\n", c.password()).as_bytes())?;
            Ok((c, true))
        }
        Err(e) => Err(EnrollError::Io { path, error: e }),
    }
}

/// Whether an earlier run saw its enrolment active.
pub fn is_enrolled(data_dir: &Path) -> bool {
    data_dir.join(ENROLLED_FILE).exists()
}

/// What a claim's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Enrolled and active, with the collector's keys.
    Active(Vec<String>),
    /// Waiting for an admin's approval.
    Pending,
    /// Anything else: try again later (the message says why).
    Refused(String),
}

/// Reads a claim's answer (pure).
pub fn interpret(status: u16, body: &[u8]) -> Answer {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let state = v["state"].as_str();
    match (status, state) {
        (200 | 201, Some("active")) => Answer::Active(
            v["collector_keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        (200 | 202, Some("pending")) => Answer::Pending,
        _ => {
            let msg = v["error"]["message"]
                .as_str()
                .map(|m| m.chars().take(200).collect::<String>())
                .unwrap_or_else(|| "no error message".into());
            Answer::Refused(format!("HTTP {status}: {msg}"))
        }
    }
}

/// One claim: POST the hash, return the status and body.
async fn post_claim(
    s: &EnrollSettings,
    tls: Option<&TlsConnector>,
    unit: &UnitId,
    hash: &str,
) -> Result<(u16, Vec<u8>), String> {
    let deadline = tokio::time::Instant::now() + ATTEMPT_TIMEOUT;
    let addrs = crate::probe::resolve(&s.host, s.port, deadline, ATTEMPT_TIMEOUT)
        .await
        .map_err(|f| f.detail)?;
    let tcp = crate::probe::connect_any(&addrs, deadline, ATTEMPT_TIMEOUT)
        .await
        .map_err(|f| f.detail)?;
    let body = serde_json::json!({"unit": unit.unit, "credential_sha256": hash}).to_string();
    let req = Request::post(s.path.as_str())
        .header(HOST, s.authority.as_str())
        .header(
            USER_AGENT,
            concat!("muster-agent/", env!("CARGO_PKG_VERSION")),
        )
        .header(AUTHORIZATION, format!("Bearer {}", s.token))
        .header(CONTENT_TYPE, "application/json")
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let exchange = async {
        match tls {
            None => send(TokioIo::new(tcp), req).await,
            Some(c) => {
                let name = ServerName::try_from(s.host.clone())
                    .map_err(|e| format!("server name: {e}"))?;
                let stream = c
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                send(TokioIo::new(stream), req).await
            }
        }
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| format!("no answer within {ATTEMPT_TIMEOUT:?}"))?
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<(u16, Vec<u8>), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let r = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body.to_vec()))
    }
    .await;
    conn.abort();
    r
}

/// Writes the collector's keys as `trusted_keys`, one a line.
/// What [`run`] needs.
pub struct Enrolment {
    pub settings: EnrollSettings,
    pub unit: UnitId,
    pub credential_sha256: String,
    pub fingerprint: String,
    pub data_dir: PathBuf,
    /// The config lists collector keys: they win, enrolment writes none.
    pub config_lists_keys: bool,
    pub backoff: Retry,
}

/// Claims until the collector says active (or `stop`), then records it.
pub async fn run(mut e: Enrolment, mut stop: watch::Receiver<bool>) {
    let tls = if e.settings.tls {
        match crate::probe::http::tls_client_config(e.settings.ca_file.as_deref(), false) {
            Ok(c) => Some(TlsConnector::from(Arc::new(c))),
            Err(err) => {
                warn!(error = %err, "Enrolment cannot start: its TLS settings are unusable.");
                return;
            }
        }
    } else {
        None
    };
    let mut rng = StdRng::from_os_rng();
    let mut last_log: Option<(String, Instant)> = None;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let answer =
            match post_claim(&e.settings, tls.as_ref(), &e.unit, &e.credential_sha256).await {
                Ok((status, body)) => interpret(status, &body),
                Err(err) => Answer::Refused(err),
            };
        match answer {
            Answer::Active(keys) => {
                let valid: Vec<muster_proto::PublicKey> =
                    keys.iter().filter_map(|k| k.parse().ok()).collect();
                if valid.len() != keys.len() {
                    warn!(
                        ignored = keys.len() - valid.len(),
                        "The collector sent keys that are not ed25519:<64 hex>; they are ignored."
                    );
                }
                if !e.config_lists_keys && !valid.is_empty() {
                    let path = crate::trust::trusted_keys_path(&e.data_dir);
                    if let Err(err) = crate::trust::persist(&path, &valid) {
                        warn!(error = %err, "Cannot write the collector's keys; will enrol again.");
                    } else {
                        info!(
                            keys = valid.len(),
                            "Trusting the collector's keys from enrolment."
                        );
                    }
                }
                if let Err(err) = write_private(&e.data_dir.join(ENROLLED_FILE), b"active\n") {
                    warn!(error = %err, "Cannot record the enrolment; the next start claims again.");
                }
                info!(unit = %e.unit, fingerprint = %e.fingerprint, attempt, "Enrolled: the unit's credential is active.");
                return;
            }
            Answer::Pending => {
                let msg = "pending".to_owned();
                if last_log
                    .as_ref()
                    .is_none_or(|(m, t)| *m != msg || t.elapsed() > LOG_REPEAT)
                {
                    info!(
                        unit = %e.unit,
                        fingerprint = %e.fingerprint,
                        attempt,
                        "Enrolment pending an admin's approval; the admin should see this fingerprint."
                    );
                    last_log = Some((msg, Instant::now()));
                }
            }
            Answer::Refused(msg) => {
                if last_log
                    .as_ref()
                    .is_none_or(|(m, t)| *m != msg || t.elapsed() > LOG_REPEAT)
                {
                    warn!(unit = %e.unit, attempt, error = %msg, "Enrolment refused or failed; retrying.");
                    last_log = Some((msg, Instant::now()));
                }
            }
        }
        let wait = e.backoff.next_full(rng.random::<f64>());
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_table() {
        let k = format!("ed25519:{}", "ab".repeat(32));
        let active = format!(r#"{{"state":"active","collector_keys":["{k}"]}}"#);
        let cases: &[(u16, &str, Answer)] = &[
            (201, &active, Answer::Active(vec![k.clone()])),
            (200, &active, Answer::Active(vec![k.clone()])),
            (201, r#"{"state":"active"}"#, Answer::Active(vec![])),
            (202, r#"{"state":"pending"}"#, Answer::Pending),
            (200, r#"{"state":"pending"}"#, Answer::Pending),
            (
                409,
                r#"{"error":{"code":"conflict","message":"taken"}}"#,
                Answer::Refused("HTTP 409: taken".into()),
            ),
            (
                502,
                "<html>bad gateway</html>",
                Answer::Refused("HTTP 502: no error message".into()),
            ),
            // A 202 that says active is not trusted as active.
            (
                202,
                &active,
                Answer::Refused("HTTP 202: no error message".into()),
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                &interpret(*status, body.as_bytes()),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn credential_is_made_once_private_and_reread() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let d = dir.path().join("data");
        let (c, made) = load_or_create(&d).unwrap();
        assert!(made);
        let path = d.join(CREDENTIAL_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, made) = load_or_create(&d).unwrap();
        assert!(!made);
        assert_eq!(again.password(), c.password());
        assert_eq!(c.password().len(), 64);
        assert_ne!(c.sha256_hex(), c.password());
        assert!(c.sha256_hex().starts_with(&c.fingerprint()));
        // A damaged file stops the start instead of becoming a new identity.
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(load_or_create(&d), Err(EnrollError::Corrupt(_))));
        // Two credentials are not the same.
        let other = Credential::generate().unwrap();
        assert_ne!(other.password(), c.password());
    }
}
