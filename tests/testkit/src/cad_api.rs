//! A small CAD API over real HTTP/1.1, for synthetic-transaction tests
//! (issue 18): a login that hands out expiring bearer tokens, a unit's
//! assignments, incidents, a health and a ping route, and a body of any size.
//!
//! Contract:
//! - [`CadApi::start`] binds 127.0.0.1:0 and serves on its own thread with its
//!   own tokio runtime (usable from sync and async tests alike); dropping it
//!   stops the server and closes its connections.
//! - Every answer says `Connection: close` and the connection is closed after
//!   it; requests are read whole (headers ≤ 64 KiB, body by `Content-Length`,
//!   ≤ 1 MiB), a malformed one is answered 400.
//! - Routes:
//!   - `POST /api/login`, JSON `{"user","password"}` → 200
//!     `{"token":"<random hex>","expires_in":<whole seconds>}`, or 401
//!     `{"error":"bad credentials"}`;
//!   - `GET /api/units/{unit}/assignments` with `Authorization: Bearer <token>`
//!     → 200 `{"unit":"…","assignments":[…]}`, or 401 `{"error":"token
//!     expired"}` / `{"error":"bad token"}` / `{"error":"missing token"}`;
//!   - `POST /api/incidents` (Bearer, a JSON body) → 201 `{"id":n}`, 400 for
//!     a body that is not JSON, 401 as above;
//!   - `GET /api/health` → 200 `{"status":"ok"}`;
//!   - `GET /api/ping/{anything}` → 200 `pong`;
//!   - `GET /api/big?bytes=N` → 200 with an N-byte body (`Content-Length: N`)
//!     written in 64 KiB chunks, never held whole;
//!   - anything else 404, a known path with the wrong method 405.
//! - Tokens really expire: the server's monotonic clock against the TTL it
//!   had when the token was issued ([`CadApi::set_token_ttl`], default 10 min).
//! - [`CadApi::set_delay`]: a request whose path (without the query) starts
//!   with a prefix waits that long after it was read, before it is answered;
//!   the longest matching prefix wins. [`CadApi::set_wrong_body`]: a matching
//!   request is answered 200 `{"status":"maintenance"}`, a body without the
//!   content the route would have (no token, no assignments, no id).
//! - [`CadApi::hits`] counts requests by path prefix as they arrive (before
//!   any delay); [`CadApi::bytes_sent`] counts body bytes the server managed
//!   to write, so a test can see a client stop reading; [`CadApi::tokens`]
//!   lists the tokens issued, so a test can look for them where they must
//!   not be.
//!
//! The routing is a pure function of the shared state, the request and `now`
//! ([`route`]); the tokio edge reads, waits, writes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// A running CAD API test server; stopped on drop.
pub struct CadApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    sent: Arc<Mutex<HashMap<String, u64>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the server knows: its users, the tokens it issued, the knobs the
/// test turned, and what it was asked.
#[derive(Debug)]
pub struct State {
    users: HashMap<String, String>,
    tokens: HashMap<String, Instant>,
    ttl: Duration,
    delays: Vec<(String, u64)>,
    wrong_body: Vec<String>,
    hits: HashMap<String, u64>,
    next_incident: u64,
    rng: crate::rng::Rng,
}

/// A request as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    Bytes(Vec<u8>),
    /// `n` bytes of filler, written chunk by chunk.
    Filler(u64),
}

impl Reply {
    fn json(status: u16, v: serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: ReplyBody::Bytes(v.to_string().into_bytes()),
        }
    }

    fn text(status: u16, s: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: ReplyBody::Bytes(s.as_bytes().to_vec()),
        }
    }

    fn error(status: u16, msg: &str) -> Reply {
        Reply::json(status, serde_json::json!({ "error": msg }))
    }
}

impl State {
    fn new(users: &[(&str, &str)], seed: u64) -> State {
        State {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            tokens: HashMap::new(),
            ttl: DEFAULT_TTL,
            delays: Vec::new(),
            wrong_body: Vec::new(),
            hits: HashMap::new(),
            next_incident: 1,
            rng: crate::rng::Rng(seed),
        }
    }

    /// The delay for `path`: the longest configured prefix it starts with.
    pub fn delay_for(&self, path: &str) -> Duration {
        self.delays
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(Duration::ZERO, |(_, ms)| Duration::from_millis(*ms))
    }

    fn wrong_body_for(&self, path: &str) -> bool {
        self.wrong_body.iter().any(|p| path.starts_with(p.as_str()))
    }

    fn check_token(&self, req: &Request, now: Instant) -> Result<(), Reply> {
        let Some(auth) = req.header("authorization") else {
            return Err(Reply::error(401, "missing token"));
        };
        let Some(token) = auth.strip_prefix("Bearer ") else {
            return Err(Reply::error(401, "bad token"));
        };
        match self.tokens.get(token.trim()) {
            None => Err(Reply::error(401, "bad token")),
            Some(expires) if now >= *expires => Err(Reply::error(401, "token expired")),
            Some(_) => Ok(()),
        }
    }
}

/// The pure router: the answer to `req` at `now`, updating `state` (tokens
/// issued, incidents numbered).
pub fn route(state: &mut State, req: &Request, now: Instant) -> Reply {
    let wrong = state.wrong_body_for(&req.path);
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let method = req.method.as_str();
    let known = |m: &str| {
        if method == m {
            None
        } else {
            Some(Reply::error(405, "method not allowed"))
        }
    };
    match segs.as_slice() {
        ["api", "login"] => {
            if let Some(r) = known("POST") {
                return r;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
                return Reply::error(400, "body is not JSON");
            };
            let (Some(user), Some(password)) = (v["user"].as_str(), v["password"].as_str()) else {
                return Reply::error(400, "user and password are required");
            };
            if state.users.get(user).map(String::as_str) != Some(password) {
                return Reply::error(401, "bad credentials");
            }
            if wrong {
                return maintenance();
            }
            let token = format!("{:016x}{:016x}", state.rng.next_u64(), state.rng.next_u64());
            state.tokens.insert(token.clone(), now + state.ttl);
            Reply::json(
                200,
                serde_json::json!({ "token": token, "expires_in": state.ttl.as_secs() }),
            )
        }
        ["api", "units", unit, "assignments"] if !unit.is_empty() => {
            if let Some(r) = known("GET") {
                return r;
            }
            if let Err(r) = state.check_token(req, now) {
                return r;
            }
            if wrong {
                return maintenance();
            }
            Reply::json(
                200,
                serde_json::json!({
                    "unit": unit,
                    "assignments": [
                        { "incident": 4711, "role": "primary", "status": "en_route" },
                        { "incident": 4702, "role": "backup", "status": "assigned" },
                    ],
                }),
            )
        }
        ["api", "incidents"] => {
            if let Some(r) = known("POST") {
                return r;
            }
            if let Err(r) = state.check_token(req, now) {
                return r;
            }
            if serde_json::from_slice::<serde_json::Value>(&req.body).is_err() {
                return Reply::error(400, "body is not JSON");
            }
            if wrong {
                return maintenance();
            }
            let id = state.next_incident;
            state.next_incident += 1;
            Reply::json(201, serde_json::json!({ "id": id }))
        }
        ["api", "health"] => known("GET").unwrap_or_else(|| {
            if wrong {
                maintenance()
            } else {
                Reply::json(200, serde_json::json!({ "status": "ok" }))
            }
        }),
        ["api", "ping", rest @ ..] if !rest.is_empty() => known("GET").unwrap_or_else(|| {
            if wrong {
                maintenance()
            } else {
                Reply::text(200, "pong")
            }
        }),
        ["api", "big"] => {
            if let Some(r) = known("GET") {
                return r;
            }
            let n = req
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("bytes="))
                .and_then(|n| n.parse::<u64>().ok());
            match n {
                Some(_) if wrong => maintenance(),
                Some(n) => Reply {
                    status: 200,
                    content_type: "application/octet-stream",
                    body: ReplyBody::Filler(n),
                },
                None => Reply::error(400, "bytes=N is required"),
            }
        }
        _ => Reply::error(404, "not found"),
    }
}

fn maintenance() -> Reply {
    Reply::json(200, serde_json::json!({ "status": "maintenance" }))
}

/// Parses a request head (through the blank line); `Ok(None)` while more
/// bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad version {version:?}"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header {l:?}"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
    };
    let len = match req.header("content-length") {
        None => 0,
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| format!("bad content-length {n:?}"))?,
    };
    if len > MAX_BODY {
        return Err("request body too large".into());
    }
    if req
        .header("transfer-encoding")
        .is_some_and(|t| !t.eq_ignore_ascii_case("identity"))
    {
        return Err("chunked requests are not supported".into());
    }
    Ok(Some((req, end + 4, len)))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Other",
    }
}

impl CadApi {
    /// Starts the server with these `(user, password)` accounts.
    pub fn start(users: &[(&str, &str)]) -> CadApi {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the CAD API");
        std_listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("CAD API address");
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u16(addr.port());
            h.finish()
        };
        let state = Arc::new(Mutex::new(State::new(users, seed)));
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (st, se) = (state.clone(), sent.clone());
        let thread = std::thread::Builder::new()
            .name("cad-api".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("CAD API runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            let (st, se) = (st.clone(), se.clone());
                            tokio::spawn(async move {
                                let _ = serve(stream, st, se).await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels the connection tasks.
            })
            .expect("spawn the CAD API thread");
        CadApi {
            addr,
            state,
            sent,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests whose path starts with `path_prefix` wait `ms` before they
    /// are answered; the longest prefix wins; 0 removes the prefix.
    pub fn set_delay(&self, path_prefix: &str, ms: u64) {
        let mut s = self.state.lock().expect("state");
        s.delays.retain(|(p, _)| p != path_prefix);
        if ms > 0 {
            s.delays.push((path_prefix.to_string(), ms));
        }
    }

    /// The lifetime of tokens issued from now on (default 10 min).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.state.lock().expect("state").ttl = ttl;
    }

    /// Requests whose path starts with `path_prefix` are answered 200 with a
    /// body that lacks the expected content, while `on`.
    pub fn set_wrong_body(&self, path_prefix: &str, on: bool) {
        let mut s = self.state.lock().expect("state");
        s.wrong_body.retain(|p| p != path_prefix);
        if on {
            s.wrong_body.push(path_prefix.to_string());
        }
    }

    /// Requests received whose path starts with `path_prefix`.
    pub fn hits(&self, path_prefix: &str) -> u64 {
        let s = self.state.lock().expect("state");
        s.hits
            .iter()
            .filter(|(p, _)| p.starts_with(path_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every token issued so far (tests check they never leak).
    pub fn tokens(&self) -> Vec<String> {
        let s = self.state.lock().expect("state");
        s.tokens.keys().cloned().collect()
    }

    /// Response body bytes written so far to requests whose path starts with
    /// `path_prefix` (what the kernel accepted: a client that stops reading
    /// holds the server back by at most the socket buffers).
    pub fn bytes_sent(&self, path_prefix: &str) -> u64 {
        let s = self.sent.lock().expect("sent");
        s.iter()
            .filter(|(p, _)| p.starts_with(path_prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for CadApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    sent: Arc<Mutex<HashMap<String, u64>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let parsed = loop {
        match parse_head(&buf) {
            Ok(Some(p)) => break Ok(p),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (mut req, head_len, body_len) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let r = Reply::error(400, &e);
            return write_reply(&mut stream, r, "", &sent).await;
        }
    };
    let mut body = buf.split_off(head_len);
    while body.len() < body_len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(body_len);
    req.body = body;
    // Counted on arrival, answered after the wait.
    let delay = {
        let mut s = state.lock().expect("state");
        *s.hits.entry(req.path.clone()).or_default() += 1;
        s.delay_for(&req.path)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = route(&mut state.lock().expect("state"), &req, Instant::now());
    write_reply(&mut stream, reply, &req.path, &sent).await
}

async fn write_reply(
    stream: &mut tokio::net::TcpStream,
    reply: Reply,
    path: &str,
    sent: &Mutex<HashMap<String, u64>>,
) -> std::io::Result<()> {
    let len = match &reply.body {
        ReplyBody::Bytes(b) => b.len() as u64,
        ReplyBody::Filler(n) => *n,
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
    );
    stream.write_all(head.as_bytes()).await?;
    let count = |n: usize| {
        *sent
            .lock()
            .expect("sent")
            .entry(path.to_string())
            .or_default() += n as u64;
    };
    match reply.body {
        ReplyBody::Bytes(b) => {
            stream.write_all(&b).await?;
            count(b.len());
        }
        ReplyBody::Filler(mut left) => {
            let filler = vec![b'x'; CHUNK];
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                stream.write_all(&filler[..n]).await?;
                count(n);
                left -= n as u64;
            }
        }
    }
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::blocking;

    fn call(
        api: &CadApi,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> crate::http::Response {
        let raw = crate::http::request_bytes(method, path, headers, body);
        blocking::send(api.addr(), &raw, Duration::from_secs(10)).expect("CAD API answers")
    }

    fn login(api: &CadApi) -> String {
        let r = call(
            api,
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            Some(br#"{"user":"disp1","password":"s3cret"}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        r.json()["token"].as_str().expect("a token").to_string()
    }

    #[test]
    fn a_login_flow_with_tokens_that_expire() {
        let api = CadApi::start(&[("disp1", "s3cret")]);
        let bad = call(
            &api,
            "POST",
            "/api/login",
            &[],
            Some(br#"{"user":"disp1","password":"nope"}"#),
        );
        assert_eq!(bad.status, 401);
        let token = login(&api);
        let auth = format!("Bearer {token}");
        let a = call(
            &api,
            "GET",
            "/api/units/E3/assignments",
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["unit"], "E3");
        assert!(a.json()["assignments"].is_array());
        let i = call(
            &api,
            "POST",
            "/api/incidents",
            &[("Authorization", &auth)],
            Some(br#"{"kind":"test"}"#),
        );
        assert_eq!(i.status, 201);
        assert_eq!(i.json()["id"], 1);
        let none = call(&api, "GET", "/api/units/E3/assignments", &[], None);
        assert_eq!(none.status, 401);

        api.set_token_ttl(Duration::from_millis(100));
        let short = login(&api);
        std::thread::sleep(Duration::from_millis(150));
        let expired = call(
            &api,
            "GET",
            "/api/units/E3/assignments",
            &[("Authorization", &format!("Bearer {short}"))],
            None,
        );
        assert_eq!(expired.status, 401);
        assert_eq!(expired.json()["error"], "token expired");
        assert_eq!(api.hits("/api/units/"), 3);
        assert_eq!(api.hits("/api/login"), 3);
    }

    #[test]
    fn delays_wrong_bodies_pings_and_big_bodies() {
        let api = CadApi::start(&[("disp1", "s3cret")]);
        api.set_delay("/api/ping/", 50);
        api.set_delay("/api/ping/E3", 300);
        let t = Instant::now();
        let p = call(&api, "GET", "/api/ping/E3", &[], None);
        assert_eq!((p.status, p.text().as_str()), (200, "pong"));
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        call(&api, "GET", "/api/ping/E4", &[], None);
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(50) && e < Duration::from_millis(300),
            "{e:?}"
        );
        api.set_delay("/api/ping/", 0);
        api.set_delay("/api/ping/E3", 0);

        api.set_wrong_body("/api/health", true);
        let h = call(&api, "GET", "/api/health", &[], None);
        assert_eq!(h.status, 200);
        assert!(!h.text().contains("ok"), "{}", h.text());
        api.set_wrong_body("/api/health", false);
        assert_eq!(
            call(&api, "GET", "/api/health", &[], None).json()["status"],
            "ok"
        );

        let big = call(&api, "GET", "/api/big?bytes=200000", &[], None);
        assert_eq!(big.body.len(), 200_000);
        assert_eq!(api.bytes_sent("/api/big"), 200_000);
        assert_eq!(call(&api, "GET", "/nope", &[], None).status, 404);
        assert_eq!(call(&api, "GET", "/api/login", &[], None).status, 405);
    }

    #[test]
    fn dropping_it_stops_the_server() {
        let api = CadApi::start(&[]);
        let addr = api.addr();
        drop(api);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
