//! Real local servers for the probe tests, all on 127.0.0.1:0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A unique scratch directory under the OS temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "muster-agent-test-{}-{}-{}",
        name,
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `<dir>/agent.toml` for unit metro-fire/E12 (broker on
/// 127.0.0.1:1883, 1 s sampling, the suite's trusted collector key):
/// `sampling` goes into `[sampling]`, `rest` after the `[trust]` table.
pub fn agent_config(dir: &std::path::Path, sampling: &str, rest: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "agency = \"metro-fire\"\nunit_id = \"E12\"\ndata_dir = {:?}\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[sampling]\ninterval = \"1s\"\n{sampling}\n{}{rest}",
            dir.display().to_string(),
            muster_testkit::agent_trust_toml()
        ),
    )
    .unwrap();
    path
}

/// What an HTTP test server answers.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub body: &'static str,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &'static str) -> Self {
        Reply {
            status: 200,
            body,
            delay: Duration::ZERO,
        }
    }
}

async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> bool {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // A TLS ClientHello: answer like a real plain-HTTP server (nginx: 400).
                if buf[0] == 0x16 {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    return false;
                }
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    return true;
                }
            }
        }
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, reply: Reply) {
    if !read_request(&mut s).await {
        return;
    }
    tokio::time::sleep(reply.delay).await;
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(reply.body.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A plain HTTP/1.1 server answering every request with `reply`.
pub async fn http(reply: Reply) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(answer(s, reply.clone()));
        }
    });
    addr
}

/// A self-signed TLS server certificate for `localhost` / 127.0.0.1.
pub struct SelfSigned {
    pub cert: CertificateDer<'static>,
    pub key: Vec<u8>,
    pub pem_file: PathBuf,
    pub not_after: (i32, u8, u8),
}

pub fn self_signed(dir: &std::path::Path) -> SelfSigned {
    let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let not_after = (2035, 6, 30);
    p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let pem_file = dir.join("ca.pem");
    std::fs::write(&pem_file, cert.pem()).unwrap();
    SelfSigned {
        cert: cert.der().clone(),
        key: key.serialize_der(),
        pem_file,
        not_after,
    }
}

/// An HTTPS server with the given certificate.
pub async fn https(cert: &SelfSigned, reply: Reply) -> SocketAddr {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let reply = reply.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    answer(tls, reply).await;
                }
            });
        }
    });
    addr
}

/// Accepts connections and never says a word (held open until the test ends).
pub async fn silent() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Accepts, reads the request, then resets the connection (RST).
pub async fn resetting() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            read_request(&mut s).await;
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
        }
    });
    addr
}

/// Answers every request with bytes that are not HTTP.
pub async fn garbage() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                read_request(&mut s).await;
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    drop(l);
    p
}
