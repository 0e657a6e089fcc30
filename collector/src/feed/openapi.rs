//! The feed contract: `GET /api/v1/openapi.json`, and the layer that keeps
//! every error in the one JSON shape.
//!
//! The document is hand-written (`openapi.json` beside this file), not
//! derived: the wire types of samples live in `muster-proto`, which must
//! stay free of HTTP concerns, and several shapes (`#[serde(flatten)]` of
//! tagged enums, externally tagged `Outcome`) are exactly where derive
//! macros and serde disagree. What keeps it true is the integration test
//! `tests/collector/openapi.rs`: it validates real responses of every
//! endpoint against the served schemas (with `additionalProperties: false`,
//! so a renamed or added field fails) and checks that the document lists
//! exactly the routes the router serves.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The OpenAPI 3.1 document.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /api/v1/openapi.json` (no token: it is the map, not the data).
pub async fn document() -> Response {
    let mut r = DOCUMENT.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The stable code of an error status.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

fn is_json(r: &Response) -> bool {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Rewrites any error response that is not already the feed's JSON shape
/// (axum's plain-text extractor rejections, e.g. a path that is not valid
/// percent-encoded UTF-8) into `{"error": {"code", "message"}}`.
pub async fn uniform_errors(r: Response) -> Response {
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&r) {
        return r;
    }
    let (_, body) = r.into_parts();
    let message = match axum::body::to_bytes(Body::new(body), 16 * 1024).await {
        Ok(b) if !b.is_empty() && status.is_client_error() => {
            String::from_utf8_lossy(&b).trim().to_owned()
        }
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    };
    ApiError::new(status, code_of(status), message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let v: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json parses");
        assert_eq!(v["openapi"], "3.1.0");
        assert!(v["paths"]["/api/v1/openapi.json"].is_object());
        assert!(v["components"]["schemas"]["Error"].is_object());
    }

    #[tokio::test]
    async fn plain_errors_get_the_one_shape_and_others_pass() {
        let plain = (StatusCode::BAD_REQUEST, "Invalid URL: bad utf-8").into_response();
        let r = uniform_errors(plain).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(is_json(&r));
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert_eq!(v["error"]["message"], "Invalid URL: bad utf-8");

        let r = uniform_errors(StatusCode::INTERNAL_SERVER_ERROR.into_response()).await;
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "internal");

        let ok = (StatusCode::OK, "fine").into_response();
        let r = uniform_errors(ok).await;
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        assert_eq!(&b[..], b"fine");

        let json = ApiError::forbidden("no").into_response();
        let r = uniform_errors(json).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
