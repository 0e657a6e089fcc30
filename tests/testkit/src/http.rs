//! The suite's one HTTP/1.1 client and SSE reader, plain bytes over a TCP
//! stream on purpose: the tests check what the servers put on the wire.
//!
//! The parsing is a pure core, fed bytes by whatever transport reads them:
//! [`ResponseReader`] (status line, headers, then a body framed by
//! `Content-Length`, chunked transfer coding or the close),
//! [`ChunkedDecoder`] (the one chunked decoder) and [`SseParser`]. The
//! transports are thin: [`send`]/[`get`]/[`post`] and [`Sse`] over tokio,
//! [`blocking`] over std threads for tests without a runtime.
//!
//! Contract: a response is complete when its framing says so, not when the
//! server closes (chromedriver keeps connections open); a close before the
//! end of a framed body is an error; requests say `Connection: close`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

// ------------------------------------------------------------ the pure core

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
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
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The bytes of a request: `Host`, `Connection: close`, the given headers,
/// and `Content-Length` when there is a body.
pub fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    r.push_str("\r\n");
    let mut raw = r.into_bytes();
    raw.extend_from_slice(body.unwrap_or_default());
    raw
}

fn bearer(token: Option<&str>) -> Option<String> {
    token.map(|t| format!("Bearer {t}"))
}

/// Header lines, in order, as (name, value).
pub type Headers = Vec<(String, String)>;

/// A response head: status, headers, and where the body starts in the bytes.
fn parse_head(raw: &[u8]) -> Option<Result<(u16, Headers, usize), String>> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let Some(status) = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()) else {
        return Some(Err(format!("bad status line {line:?}")));
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Ok((status, headers, end + 4)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(usize),
    Trailer,
    Done,
}

/// Decodes the chunked transfer coding, fed any split of the bytes.
#[derive(Debug)]
pub struct ChunkedDecoder {
    pending: Vec<u8>,
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            pending: Vec::new(),
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    /// Takes more bytes; appends the decoded data to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.pending.extend_from_slice(bytes);
        loop {
            match self.state {
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(eol) = self.pending.windows(2).position(|w| w == b"\r\n") else {
                        return Ok(());
                    };
                    let line: Vec<u8> = self.pending.drain(..eol + 2).take(eol).collect();
                    let line = String::from_utf8_lossy(&line);
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let n = usize::from_str_radix(size, 16)
                        .map_err(|e| format!("bad chunk size {line:?}: {e}"))?;
                    self.state = if n == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(n)
                    };
                }
                ChunkState::Data(n) => {
                    if self.pending.len() < n + 2 {
                        return Ok(());
                    }
                    if &self.pending[n..n + 2] != b"\r\n" {
                        return Err(format!("chunk of {n} bytes not followed by CRLF"));
                    }
                    out.extend(self.pending.drain(..n + 2).take(n));
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => return Ok(()),
            }
        }
    }

    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[derive(Debug)]
enum Framing {
    Length(usize),
    Chunked(ChunkedDecoder),
    Close,
}

/// One response, parsed from bytes as they arrive.
#[derive(Debug, Default)]
pub struct ResponseReader {
    raw: Vec<u8>,
    head: Option<(u16, Headers, Framing)>,
    body: Vec<u8>,
}

impl ResponseReader {
    /// Takes more bytes; the response once its framing says it is complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Response>, String> {
        let data = match &mut self.head {
            Some(_) => bytes.to_vec(),
            None => {
                self.raw.extend_from_slice(bytes);
                let Some(head) = parse_head(&self.raw) else {
                    return Ok(None);
                };
                let (status, headers, start) = head?;
                let framing = if header(&headers, "transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
                {
                    Framing::Chunked(ChunkedDecoder::default())
                } else if let Some(n) = header(&headers, "content-length") {
                    Framing::Length(
                        n.parse()
                            .map_err(|e| format!("content-length {n:?}: {e}"))?,
                    )
                } else {
                    Framing::Close
                };
                self.head = Some((status, headers, framing));
                self.raw.split_off(start)
            }
        };
        let Some((_, _, framing)) = &mut self.head else {
            unreachable!("the head was just parsed");
        };
        let done = match framing {
            Framing::Length(n) => {
                self.body.extend_from_slice(&data);
                self.body.len() >= *n
            }
            Framing::Chunked(d) => {
                d.push(&data, &mut self.body)?;
                d.is_done()
            }
            Framing::Close => {
                self.body.extend_from_slice(&data);
                false
            }
        };
        Ok(done.then(|| self.take()))
    }

    /// The connection closed: the response, if its body may end so.
    pub fn eof(mut self) -> Result<Response, String> {
        match &self.head {
            None => Err(format!(
                "connection closed before the HTTP head ({} bytes)",
                self.raw.len()
            )),
            Some((_, _, Framing::Close)) => Ok(self.take()),
            Some((status, _, _)) => Err(format!(
                "status {status}: connection closed mid-body after {} bytes",
                self.body.len()
            )),
        }
    }

    fn take(&mut self) -> Response {
        let (status, headers, framing) = self.head.take().expect("a parsed head");
        let mut body = std::mem::take(&mut self.body);
        if let Framing::Length(n) = framing {
            body.truncate(n);
        }
        Response {
            status,
            headers,
            body,
        }
    }
}

/// One server-sent event. Keep-alive comments come as event `comment`.
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

/// Splits an event stream's (decoded) body into events.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
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
            if any {
                out.push(ev);
            }
        }
        out
    }
}

// ------------------------------------------------------------ tokio

/// One request and its response, within `timeout`.
pub async fn send(addr: SocketAddr, raw: &[u8], timeout: Duration) -> Result<Response, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        // The server may answer (413) and close before taking all of it.
        let _ = s.write_all(raw).await;
        let mut r = ResponseReader::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return r.eof(),
                Ok(n) => {
                    if let Some(resp) = r.push(&buf[..n])? {
                        return Ok(resp);
                    }
                }
                // A reset after the server's answer and close ends it too.
                Err(e) => return r.eof().map_err(|eof| format!("{e}; {eof}")),
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no response from {addr} within {timeout:?}"))?
}

async fn must(addr: SocketAddr, raw: Vec<u8>, what: String) -> Response {
    send(addr, &raw, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `GET path`, with a bearer token if given; panics on a transport error.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    let auth = bearer(token);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let raw = request_bytes("GET", path, &headers, None);
    must(addr, raw, format!("GET {path}")).await
}

/// A POST with a JSON body.
pub async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &[u8]) -> Response {
    let auth = bearer(token);
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend(auth.iter().map(|a| ("Authorization", a.as_str())));
    let raw = request_bytes("POST", path, &headers, Some(body));
    must(addr, raw, format!("POST {path}")).await
}

/// An open event stream; events arrive on `rx`. Keep-alive comments come
/// as event `comment` ([`Sse::next`] skips them).
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
        let auth = bearer(token);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let mut s = TcpStream::connect(addr).await.expect("connect to the feed");
        s.write_all(&request_bytes("GET", path, &headers, None))
            .await
            .expect("send the stream request");
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let (status, headers, start) = loop {
            let n = s.read(&mut buf).await.expect("read the stream's head");
            assert!(n > 0, "{path}: closed before the HTTP head");
            raw.extend_from_slice(&buf[..n]);
            if let Some(head) = parse_head(&raw) {
                break head.unwrap_or_else(|e| panic!("{path}: {e}"));
            }
        };
        let content_type = header(&headers, "content-type")
            .unwrap_or_default()
            .to_owned();
        let mut chunked = header(&headers, "transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
            .then(ChunkedDecoder::default);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut parser = SseParser::default();
            let mut data = raw.split_off(start);
            loop {
                let body = match &mut chunked {
                    Some(d) => {
                        let mut out = Vec::new();
                        if d.push(&data, &mut out).is_err() {
                            return;
                        }
                        out
                    }
                    None => data,
                };
                for ev in parser.push(&body) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                if chunked.as_ref().is_some_and(ChunkedDecoder::is_done) {
                    return;
                }
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => data = buf[..n].to_vec(),
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

// ------------------------------------------------------------ std threads

/// The same client over std's blocking sockets.
pub mod blocking {
    use super::*;
    use std::io::{Read, Write};

    /// One request and its response, within `timeout` per read.
    pub fn send(addr: SocketAddr, raw: &[u8], timeout: Duration) -> Result<Response, String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let _ = s.write_all(raw);
        let mut r = ResponseReader::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return r.eof(),
                Ok(n) => {
                    if let Some(resp) = r.push(&buf[..n])? {
                        return Ok(resp);
                    }
                }
                Err(e) => return r.eof().map_err(|eof| format!("{e}; {eof}")),
            }
        }
    }

    /// `GET path`, with a bearer token if given.
    pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<Response, String> {
        let auth = bearer(token);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        send(
            addr,
            &request_bytes("GET", path, &headers, None),
            Duration::from_secs(10),
        )
    }

    /// `method path` with a JSON body (or none), with a bearer token if given.
    pub fn call(
        addr: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Response, String> {
        let auth = bearer(token);
        let mut headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        send(
            addr,
            &request_bytes(method, path, &headers, body),
            Duration::from_secs(30),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(raw: &[u8], at: usize) -> Result<Option<Response>, String> {
        let mut r = ResponseReader::default();
        if let Some(resp) = r.push(&raw[..at])? {
            return Ok(Some(resp));
        }
        r.push(&raw[at..])
    }

    #[test]
    fn a_chunked_body_is_decoded_at_any_split() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        for at in 0..raw.len() {
            let resp = feed_split(raw, at).unwrap().expect("complete");
            assert_eq!(resp.status, 200);
            assert_eq!(resp.text(), "hello, world", "split at {at}");
        }
    }

    #[test]
    fn a_content_length_body_is_complete_without_a_close() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        let resp = feed_split(raw, 10).unwrap().expect("complete");
        assert_eq!((resp.status, resp.text().as_str()), (404, "{}"));
        assert_eq!(resp.header("Content-Length"), Some("2"));
    }

    #[test]
    fn a_close_delimited_body_ends_at_eof_and_a_cut_one_is_an_error() {
        let mut r = ResponseReader::default();
        assert!(r.push(b"HTTP/1.1 200 OK\r\n\r\nab").unwrap().is_none());
        assert_eq!(r.eof().unwrap().text(), "ab");
        let mut r = ResponseReader::default();
        assert!(
            r.push(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
                .unwrap()
                .is_none()
        );
        assert!(r.eof().is_err());
        let mut r = ResponseReader::default();
        assert!(
            r.push(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
                .is_err()
        );
    }

    #[test]
    fn sse_events_comments_and_multi_line_data() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: unit\nid: 7\ndata: {\"a\"").is_empty());
        let evs = p.push(b":1}\n\n: keep-alive\n\ndata: x\ndata: y\n\n");
        let got: Vec<_> = evs
            .iter()
            .map(|e| (e.event.as_str(), e.id.as_deref(), e.data.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("unit", Some("7"), "{\"a\":1}"),
                ("comment", None, ""),
                ("message", None, "x\ny"),
            ]
        );
    }
}
