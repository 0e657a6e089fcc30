//! A small WebDriver client for chromedriver and headless Chromium
//! (Debian's `chromium` and `chromium-driver`; missing ones fail the test,
//! never skip it). Plain JSON over the suite's one HTTP client
//! ([`crate::http`]); only the commands the dashboard tests use.
//!
//! Contract: a [`ChromeDriver`] listens on a free loopback port; on drop (a
//! failed test too) it ends the sessions still open, so no Chromium outlives
//! the test, then kills the driver. Every command fails loudly with the
//! driver's error; [`Browser::wait`] polls a JavaScript condition.
//! Why not fantoccini: its default TLS is native-tls (OpenSSL, a C build);
//! without TLS it would do, but it is a new dependency tree (and a
//! Cargo.lock change) for a dozen JSON calls on loopback. Not tried.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{TempDir, eventually, free_port, http};

pub fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// `chromedriver` on a free loopback port. On drop (a failed test too) it
/// ends its browser sessions, so no Chromium outlives the test, then stops.
pub struct ChromeDriver {
    child: Child,
    port: u16,
    chromium: PathBuf,
    sessions: std::sync::Mutex<Vec<String>>,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let sessions =
            std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        for id in sessions {
            // Blocking on purpose: Drop cannot await. Errors only mean it is gone.
            let _ = http::blocking::send(
                SocketAddr::from(([127, 0, 0, 1], self.port)),
                &http::request_bytes("DELETE", &format!("/session/{id}"), &[], Some(b"")),
                Duration::from_secs(10),
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChromeDriver {
    pub async fn start() -> ChromeDriver {
        let driver = find_binary(&["chromedriver"]).unwrap_or_else(|| {
            panic!(
                "chromedriver not found: install Debian's `chromium` and `chromium-driver` \
                 (apt-get install -y chromium chromium-driver)"
            )
        });
        let chromium = find_binary(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!(
                "chromium not found: install Debian's `chromium` and `chromium-driver` \
                 (apt-get install -y chromium chromium-driver)"
            )
        });
        let port = free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let d = ChromeDriver {
            child,
            port,
            chromium,
            sessions: std::sync::Mutex::new(Vec::new()),
        };
        eventually(
            &format!("chromedriver ready on port {port}"),
            Duration::from_secs(20),
            || async {
                match wd_try(port, "GET", "/status", None).await {
                    Ok(v) if v["value"]["ready"] == true => Ok(()),
                    Ok(v) => Err(v.to_string()),
                    Err(e) => Err(e),
                }
            },
        )
        .await;
        d
    }

    pub async fn session(&self, width: u32, height: u32) -> Browser {
        let profile = TempDir::new().unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--force-device-scale-factor=1".into(),
            "--lang=en-US".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": self.chromium.display().to_string(), "args": args}
            }}
        });
        let v = wd(self.port, "POST", "/session", Some(caps)).await;
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.clone());
        let b = Browser {
            port: self.port,
            id,
            _profile: profile,
        };
        b.set_size(width, height).await;
        b
    }
}

pub struct Browser {
    port: u16,
    id: String,
    _profile: TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    pub async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
        .await["value"]
            .take()
    }

    pub async fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
        // Headless windows may size the outer window: make the viewport the size asked for.
        let inner = self
            .js("return [window.innerWidth, window.innerHeight]")
            .await;
        let (iw, ih) = (inner[0].as_u64().unwrap(), inner[1].as_u64().unwrap());
        if (iw, ih) != (u64::from(width), u64::from(height)) {
            let w = u64::from(width) * 2 - iw;
            let h = u64::from(height) * 2 - ih;
            self.cmd(
                "POST",
                "/window/rect",
                Some(json!({"width": w, "height": h})),
            )
            .await;
        }
    }

    pub async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls the page until `expr` is truthy (20 s); the timeout shows
    /// what the page says.
    pub async fn wait(&self, what: &str, expr: &str) {
        let script = format!("try {{ return !!({expr}); }} catch (e) {{ return false; }}");
        let what = format!("{what} ({expr})");
        eventually(&what, Duration::from_secs(20), || async {
            if self.js(&script).await == Value::Bool(true) {
                return Ok(());
            }
            let body = self
                .js("return document.body ? document.body.innerText.slice(0, 3000) : ''")
                .await;
            Err(format!(
                "the page shows:\n{}",
                body.as_str().unwrap_or_default()
            ))
        })
        .await;
    }

    pub async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn screenshot(&self, path: &std::path::Path) {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("screenshot is base64"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// The whole page, not just the viewport (Chrome DevTools through chromedriver).
    pub async fn full_screenshot(&self, path: &std::path::Path) {
        let size = self
            .js("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            .await;
        let v = self
            .cmd(
                "POST",
                "/goog/cdp/execute",
                Some(json!({"cmd": "Page.captureScreenshot", "params": {
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
                }})),
            )
            .await;
        let png = base64_decode(v["data"].as_str().expect("screenshot is base64"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Ends the session (the driver's drop ends any left open).
    pub async fn close(&self, driver: &ChromeDriver) {
        wd(self.port, "DELETE", &format!("/session/{}", self.id), None).await;
        driver
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| *s != self.id);
    }
}

/// A WebDriver command; panics with the driver's error.
pub async fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    // Boxed, like every WebDriver call: the scenario awaits many of them.
    let v = Box::pin(wd_try(port, method, path, body))
        .await
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
    if let Some(err) = v["value"]["error"].as_str() {
        panic!(
            "WebDriver {method} {path}: {err}: {}",
            v["value"]["message"]
        );
    }
    v
}

/// One WebDriver request.
pub async fn wd_try(
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let raw = http::request_bytes(
        method,
        path,
        &[("Content-Type", "application/json; charset=utf-8")],
        Some(body.as_bytes()),
    );
    let r = http::send(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &raw,
        Duration::from_secs(60),
    )
    .await?;
    serde_json::from_slice(&r.body).map_err(|e| {
        format!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
        )
    })
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YQ=="), b"a");
}
