//! A minimal HTTP/1.1 client for the tests (GET, and POST with a body; Connection: close,
//! chunked bodies) and an SSE reader. Kept tiny on purpose: the tests check
//! the bytes the collector puts on the wire.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(path: &str, token: Option<&str>) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: collector\r\nConnection: close\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str("\r\n");
    r
}

async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
}

/// Reads one chunk; `None` at the last one.
async fn read_chunk<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf).await.ok()?;
    buf.truncate(size);
    Some(buf)
}

pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    exchange(
        addr,
        request(path, token).into_bytes(),
        &format!("GET {path}"),
    )
    .await
}

/// A POST with a JSON body (`Connection: close`).
pub async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &[u8]) -> Response {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: collector\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str("\r\n");
    let mut raw = r.into_bytes();
    raw.extend_from_slice(body);
    exchange(addr, raw, &format!("POST {path}")).await
}

async fn exchange(addr: SocketAddr, raw: Vec<u8>, what: &str) -> Response {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect to the feed");
        // The server may answer (413) and close before taking all of it.
        let _ = s.write_all(&raw).await;
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r).await;
        let mut body = Vec::new();
        if is_chunked(&headers) {
            while let Some(c) = read_chunk(&mut r).await {
                body.extend(c);
            }
        } else {
            let _ = r.read_to_end(&mut body).await;
        }
        Response {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// An open `/api/v1/stream`; events arrive on `rx`. Comments (keep-alives)
/// are counted in `comments`.
pub struct Sse {
    pub rx: mpsc::UnboundedReceiver<SseEvent>,
    pub status: u16,
    pub content_type: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sse {
    pub async fn connect(addr: SocketAddr, path: &str, token: Option<&str>) -> Sse {
        let mut s = TcpStream::connect(addr).await.expect("connect to the feed");
        s.write_all(request(path, token).as_bytes()).await.unwrap();
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r).await;
        let content_type = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let chunked = is_chunked(&headers);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut buf = String::new();
            loop {
                let chunk = if chunked {
                    match read_chunk(&mut r).await {
                        Some(c) => c,
                        None => return,
                    }
                } else {
                    let mut b = vec![0; 4096];
                    match r.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => b[..n].to_vec(),
                    }
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut ev = SseEvent {
                        event: "message".into(),
                        id: None,
                        data: String::new(),
                    };
                    let mut any = false;
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            ev.event = v.trim().to_owned();
                            any = true;
                        } else if let Some(v) = line.strip_prefix("data:") {
                            if !ev.data.is_empty() {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                            any = true;
                        } else if let Some(v) = line.strip_prefix("id:") {
                            ev.id = Some(v.trim().to_owned());
                        } else if line.starts_with(':') {
                            ev.event = "comment".into();
                            any = true;
                        }
                    }
                    if any && tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        Sse {
            rx,
            status,
            content_type,
            task,
        }
    }

    /// The next event that is not a keep-alive comment.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if ev.event != "comment" {
                return Some(ev);
            }
        }
    }

    /// Waits for an event matching `pred`, returning the ones skipped too.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&SseEvent) -> bool,
    ) -> (Option<SseEvent>, Vec<SseEvent>) {
        let mut skipped = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(ev) if pred(&ev) => return (Some(ev), skipped),
                Some(ev) => skipped.push(ev),
                None => return (None, skipped),
            }
        }
    }
}
