//! Remote config documents' endpoints (`crate::remote`), admin token only
//! (a document changes what terminals run):
//!
//! * `PUT /api/v1/config/{agency}` and `PUT /api/v1/config/{agency}/{unit}`:
//!   body `{"body": "<TOML>"}`; signs the next version, publishes it
//!   retained, answers 200 with the entry. 400 for a body that is not TOML
//!   or sets a section that cannot be set remotely; 409 when the book is
//!   full; 501 in cluster mode.
//! * `GET` the same paths: the current document (404: none).
//! * `DELETE` the same paths: publishes the next version with an empty
//!   body (agents drop that scope's sections and run on the rest); 204,
//!   404 if there was none.
//! * `GET /api/v1/config`: every current document.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::FeedState;
use super::error::ApiError;
use crate::remote::{ConfigBook, DocEntry, DocError};
use crate::status_pub::{Out, Outbound, OutboundKind};

/// A document's request body at most: the TOML limit, JSON-escaped.
pub const MAX_BODY_BYTES: usize = 2 * muster_proto::MAX_CONFIG_BODY + 1024;

/// What the endpoints need (single node only).
#[derive(Clone)]
pub struct ConfigDocs {
    pub book: Arc<ConfigBook>,
    pub signer: Arc<crate::signing::Signer>,
    /// The publisher's queue (retained, coalesced per topic).
    pub out: mpsc::UnboundedSender<Out>,
}

impl ConfigDocs {
    /// Publishes every current document again (at start: a broker that
    /// lost its retained messages has them again).
    pub fn republish_all(&self) -> usize {
        let docs = self.book.signed(self.signer.current_key());
        let n = docs.len();
        for (topic, d) in docs {
            self.publish(topic, &d);
        }
        n
    }

    pub(crate) fn publish(&self, topic: String, d: &muster_proto::ConfigDoc) {
        let payload = match muster_proto::encode_config(d) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(%topic, error = %e, "Cannot encode a config document.");
                return;
            }
        };
        self.send(topic, payload);
    }

    fn send(&self, topic: String, payload: Vec<u8>) {
        let _ = self.out.send(Out::Message(Outbound {
            topic,
            payload,
            retain: true,
            since: None,
            kind: OutboundKind::Status,
        }));
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    pub body: String,
}

#[derive(Debug, Serialize)]
pub struct DocList {
    pub items: Vec<DocEntry>,
}

fn docs(st: &FeedState, headers: &HeaderMap) -> Result<ConfigDocs, ApiError> {
    let scope = st.auth.authenticate(headers)?;
    if !scope.is_admin() {
        return Err(ApiError::forbidden(
            "remote config documents need the admin token",
        ));
    }
    st.config_docs.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "remote config documents are served by a single-node collector in this version",
        )
    })
}

fn doc_error(e: DocError) -> ApiError {
    match e {
        DocError::Invalid(m) => ApiError::bad_request(m),
        DocError::Full { .. } => ApiError::conflict(e.to_string()),
        other => ApiError::internal(&other),
    }
}

async fn put(
    st: FeedState,
    headers: HeaderMap,
    agency: String,
    unit: Option<String>,
    body: Bytes,
) -> Result<Json<DocEntry>, ApiError> {
    let d = docs(&st, &headers)?;
    let req: PutBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body is not {{\"body\": \"<TOML>\"}}: {e}"))
    })?;
    let now = st.clock.now_ms();
    let (book, signer) = (Arc::clone(&d.book), Arc::clone(&d.signer));
    let (entry, doc) = tokio::task::spawn_blocking(move || {
        book.set(
            &agency,
            unit.as_deref(),
            req.body,
            signer.current_key(),
            now,
        )
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(doc_error)?;
    d.publish(entry.topic(), &doc);
    tracing::info!(topic = %entry.topic(), version = entry.version, hash = entry.hash.as_deref().unwrap_or(""), "Config document signed and published.");
    Ok(Json(entry))
}

/// `PUT /api/v1/config/{agency}`.
pub async fn put_agency(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(agency): Path<String>,
    body: Bytes,
) -> Result<Json<DocEntry>, ApiError> {
    put(st, headers, agency, None, body).await
}

/// `PUT /api/v1/config/{agency}/{unit}`.
pub async fn put_unit(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<DocEntry>, ApiError> {
    put(st, headers, agency, Some(unit), body).await
}

fn get(
    st: &FeedState,
    headers: &HeaderMap,
    agency: &str,
    unit: Option<&str>,
) -> Result<Json<DocEntry>, ApiError> {
    let d = docs(st, headers)?;
    d.book.get(agency, unit).map(Json).ok_or_else(|| {
        ApiError::not_found(match unit {
            None => format!("no config document for agency {agency:?}"),
            Some(u) => format!("no config document for unit {agency}/{u}"),
        })
    })
}

/// `GET /api/v1/config/{agency}`.
pub async fn get_agency(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(agency): Path<String>,
) -> Result<Json<DocEntry>, ApiError> {
    get(&st, &headers, &agency, None)
}

/// `GET /api/v1/config/{agency}/{unit}`.
pub async fn get_unit(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
) -> Result<Json<DocEntry>, ApiError> {
    get(&st, &headers, &agency, Some(&unit))
}

async fn clear(
    st: FeedState,
    headers: HeaderMap,
    agency: String,
    unit: Option<String>,
) -> Result<StatusCode, ApiError> {
    let d = docs(&st, &headers)?;
    let (book, signer, now) = (
        Arc::clone(&d.book),
        Arc::clone(&d.signer),
        st.clock.now_ms(),
    );
    let (a, u) = (agency.clone(), unit.clone());
    let cleared = tokio::task::spawn_blocking(move || {
        book.clear(&a, u.as_deref(), signer.current_key(), now)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(doc_error)?;
    match cleared {
        Some((e, doc)) => {
            // A signed empty document, retained: running agents drop the
            // scope's sections (an empty retained message would not reach
            // them as a change).
            d.publish(e.topic(), &doc);
            tracing::info!(topic = %e.topic(), version = e.version, "Config document cleared.");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found(format!(
            "no config document for {agency}{}",
            unit.map(|u| format!("/{u}")).unwrap_or_default()
        ))),
    }
}

/// `DELETE /api/v1/config/{agency}`.
pub async fn delete_agency(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(agency): Path<String>,
) -> Result<StatusCode, ApiError> {
    clear(st, headers, agency, None).await
}

/// `DELETE /api/v1/config/{agency}/{unit}`.
pub async fn delete_unit(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    clear(st, headers, agency, Some(unit)).await
}

/// `GET /api/v1/config`.
pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
) -> Result<Json<DocList>, ApiError> {
    let d = docs(&st, &headers)?;
    Ok(Json(DocList {
        items: d.book.list(),
    }))
}
