//! The dashboard's page and assets (types, caching, CSP), and the stream's
//! `?access_token=` for EventSource with the same scoping as the header.

use std::time::Duration;

use muster_proto::BootId;
use muster_testkit::http::{self, Sse};

use super::fleet::{CAD_SLOW_RULE, slow_probe};
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_without_a_token_with_types_and_caching() {
    let w = World::start("").await;
    let c = w.c();
    let page = http::get(c.addr, "/", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = page.text();
    for (name, ctype) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        // The page names each asset with its content hash.
        let at = html
            .find(&format!("/assets/{name}?v="))
            .unwrap_or_else(|| panic!("{name} not in the page"));
        let url: String = html[at..].chars().take_while(|c| *c != '"').collect();
        let v = url.rsplit('=').next().unwrap().to_owned();
        assert_eq!(v.len(), 16, "{url}");
        let r = http::get(c.addr, &url, None).await;
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(r.header("content-type"), Some(ctype), "{url}");
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{url}"
        );
        assert_eq!(r.header("etag"), Some(format!("\"{v}\"").as_str()));
        assert!(!r.body.is_empty());
        // Without (or with a stale) hash: revalidate every time.
        let r = http::get(c.addr, &format!("/assets/{name}?v=0"), None).await;
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{name}");
    }
    let js = http::get(c.addr, "/assets/app.js", None).await.text();
    assert!(js.contains("/api/v1/stream?access_token="));
    let missing = http::get(c.addr, "/assets/nope.js", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    // The API still wants a token.
    let r = http::get(c.addr, "/api/v1/units", None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_takes_a_query_token_with_the_same_scoping() {
    let extra = CAD_SLOW_RULE;
    let w = World::start(extra).await;
    let c = w.c();
    // Refused: unknown token, and another agency's units.
    let r = http::get(c.addr, "/api/v1/stream?access_token=nope", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = http::get(
        c.addr,
        &format!("/api/v1/stream?access_token={FIRE}&agency=county-police"),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "forbidden");
    // The query token is for the stream only.
    let r = http::get(c.addr, &format!("/api/v1/units?access_token={FIRE}"), None).await;
    assert_eq!(r.status, 401, "{}", r.text());

    let mut fire = Sse::connect(c.addr, &format!("/api/v1/stream?access_token={FIRE}"), None).await;
    assert_eq!(fire.status, 200);
    let ready = fire.next(Duration::from_secs(10)).await.expect("ready");
    assert_eq!(ready.event, "ready");
    let a = w.agent("agent").await;
    let boot = BootId(7);
    let police = unit("county-police", "P1");
    let engine = unit("metro-fire", "E1");
    w.clock.set(T0 + 1_000);
    a.record(&police, rec(boot, 1, T0 + 1_000, slow_probe(3_000)))
        .await;
    c.wait_unit(&police, "degraded", |v| v["status"] == "degraded")
        .await;
    a.record(&engine, rec(boot, 1, T0 + 1_000, slow_probe(3_000)))
        .await;
    let (got, skipped) = fire
        .wait_for(Duration::from_secs(20), |e| e.event == "transition")
        .await;
    let got = got.expect("the fire token's stream gets its unit's transition");
    assert_eq!(got.json()["unit"], "E1");
    assert_eq!(got.json()["agency"], "metro-fire");
    assert!(
        skipped.iter().all(|e| !e.data.contains("county-police")),
        "{skipped:?}"
    );
}
