//! The supervisor's dashboard, served at `/`: plain HTML, CSS and JS with
//! no build step, embedded in the binary so it works offline in a
//! dispatch centre (no CDN, no fonts from elsewhere).
//!
//! The page asks for a token, keeps it in `sessionStorage`, reads the
//! `/api/v1` feed with it and follows `/api/v1/stream?access_token=`
//! (EventSource cannot send headers).
//!
//! Actions: under a flag's inline runbook, when the runbook suggests one
//! (`/api/v1/runbooks/{rule}`'s `action`) and `/api/v1/me` says the token
//! is the admin or an operator of the unit's agency, the page offers a
//! button ("Run restart-cad-client on E7"), asks for confirmation in the
//! page, posts the request and shows its steps as they are logged (the
//! stream's `action` events matched by the request's nonce, or
//! `/api/v1/actions?unit=` while the stream is down); refusals (403, 429
//! with its `Retry-After`, 501) are shown as text. A viewer gets no button
//! (and the API would refuse it anyway).
//!
//! Caching: `/` is `no-cache` and names its assets with a content hash
//! (`/assets/app.js?v=<hash>`); an asset asked for with the current hash is
//! cached for a year (`immutable`), otherwise revalidated. Every response
//! carries a strict Content-Security-Policy: scripts, styles and
//! connections only from this origin.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

const INDEX: &str = include_str!("assets/index.html");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// FNV-1a, hex: a content hash for cache busting (not for security).
fn hash(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn version_of(name: &str) -> Option<String> {
    ASSETS.iter().find(|a| a.name == name).map(|a| hash(a.body))
}

/// An asset's address with its content hash (`/assets/app.css?v=…`), for
/// the other pages that use the dashboard's style (`super::runbooks`).
pub(super) fn asset_url(name: &str) -> String {
    format!("/assets/{name}?v={}", version_of(name).unwrap_or_default())
}

/// The page with each `{{v:name}}` replaced by that asset's hash.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    let mut page = INDEX.to_owned();
    for a in ASSETS {
        page = page.replace(&format!("{{{{v:{}}}}}", a.name), &hash(a.body));
    }
    page
});

/// The dashboard's security headers (CSP, nosniff, no framing, no
/// referrer), also on the runbook pages.
pub(super) fn secure(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

async fn index() -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE.as_str(),
    )
        .into_response();
    secure(&mut r);
    r
}

async fn asset(
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::not_found(format!("no asset {name:?}")).into_response();
    };
    let v = version_of(a.name).unwrap_or_default();
    let etag = format!("\"{v}\"");
    let cache = if q.get("v") == Some(&v) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(e) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, e);
    }
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    secure(&mut r);
    r
}

/// `/` and `/assets/{name}`; merged into the feed's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{name}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_hash() {
        for a in ASSETS {
            let v = hash(a.body);
            assert!(
                PAGE.contains(&format!("/assets/{}?v={v}", a.name)),
                "{} not referenced with its hash",
                a.name
            );
        }
        assert!(!PAGE.contains("{{"), "an unreplaced placeholder is left");
    }

    #[test]
    fn hashes_differ_with_content() {
        assert_ne!(hash(b"a"), hash(b"b"));
        assert_eq!(hash(b"a").len(), 16);
    }
}
