//! The runbooks (`crate::runbooks`), for people and for programs:
//!
//! * `GET /runbooks/{rule}`: the runbook as a page (no token, like the
//!   dashboard: a flag's `runbook` link opens it in any browser at the
//!   centre), rendered with raw HTML escaped and unsafe links dropped,
//!   under the dashboard's CSP (no script at all, styles from this origin).
//!   The runbook itself is the `<article id="runbook">`, which the
//!   dashboard shows inline under a flag.
//! * `GET /runbooks`: the list of them as a page.
//! * `GET /api/v1/runbooks/{rule}` (any token: runbooks are not an
//!   agency's): `{rule, source, title, markdown, action}`, `source`
//!   `builtin` or `site` (a file in `[runbooks] dir`, which may override a
//!   built-in), `action` the action its front matter suggests, or `null`
//!   (`markdown` is without the front matter).
//! * `GET /api/v1/runbooks`: `{items: [{rule, source, title}]}` by rule
//!   name, not paginated (at most the built-in ones plus
//!   `runbooks::MAX_SITE_RUNBOOKS`).
//!
//! A rule with no runbook is a 404 in the one error shape, on both.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::FeedState;
use super::dashboard;
use super::error::ApiError;
use super::query::Params;
use crate::runbooks::render::escape;
use crate::runbooks::{Runbook, Source};

#[derive(Serialize)]
struct RunbookView<'a> {
    rule: &'a str,
    source: Source,
    /// The text of its first heading; `null` when it does not start with one.
    title: Option<&'a str>,
    markdown: &'a str,
    /// The action the runbook suggests (front matter `action:`).
    action: Option<&'a str>,
}

#[derive(Serialize)]
struct Entry<'a> {
    rule: &'a str,
    source: Source,
    title: Option<&'a str>,
}

#[derive(Serialize)]
struct List<'a> {
    items: Vec<Entry<'a>>,
}

fn not_found(rule: &str) -> ApiError {
    ApiError::not_found(format!("no runbook for rule {rule:?}"))
}

/// `GET /api/v1/runbooks`.
pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    st.auth.authenticate(&headers)?;
    Params::from(q)?.only(&[])?;
    let items = st
        .runbooks
        .iter()
        .map(|b| Entry {
            rule: &b.rule,
            source: b.source,
            title: b.title.as_deref(),
        })
        .collect();
    Ok(Json(List { items }).into_response())
}

/// `GET /api/v1/runbooks/{rule}`.
pub async fn get(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(rule): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    st.auth.authenticate(&headers)?;
    Params::from(q)?.only(&[])?;
    let b = st.runbooks.get(&rule).ok_or_else(|| not_found(&rule))?;
    Ok(Json(RunbookView {
        rule: &b.rule,
        source: b.source,
        title: b.title.as_deref(),
        markdown: &b.markdown,
        action: b.action.as_deref(),
    })
    .into_response())
}

/// A page in the dashboard's style and under its headers.
fn html_page(title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} — Muster</title>\n\
         <link rel=\"icon\" href=\"{icon}\" type=\"image/svg+xml\">\n\
         <link rel=\"stylesheet\" href=\"{css}\">\n</head>\n<body class=\"runbook-page\">\n\
         <header class=\"top\"><h1>Muster <span class=\"sub\">runbooks</span></h1>\
         <nav class=\"top-right\"><a href=\"/runbooks\">All runbooks</a><a href=\"/\">Dashboard</a></nav></header>\n\
         <main>\n{body}</main>\n</body>\n</html>\n",
        title = escape(title),
        icon = dashboard::asset_url("favicon.svg"),
        css = dashboard::asset_url("app.css"),
    );
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page,
    )
        .into_response();
    dashboard::secure(&mut r);
    r
}

fn source_note(b: &Runbook) -> String {
    let rule = escape(&b.rule);
    match b.source {
        Source::Builtin => format!(
            "Built-in runbook of rule <code>{rule}</code>, shipped with Muster {}. \
             A site replaces it with <code>{rule}.md</code> in the collector's <code>[runbooks] dir</code>.",
            env!("CARGO_PKG_VERSION")
        ),
        Source::Site => format!(
            "This centre's runbook of rule <code>{rule}</code> (<code>{rule}.md</code> in the collector's <code>[runbooks] dir</code>)."
        ),
    }
}

/// `GET /runbooks/{rule}`.
pub async fn page(State(st): State<FeedState>, Path(rule): Path<String>) -> Response {
    let Some(b) = st.runbooks.get(&rule) else {
        return not_found(&rule).into_response();
    };
    let body = format!(
        "<article class=\"panel runbook\" id=\"runbook\" data-rule=\"{rule}\" data-source=\"{source}\">\n{html}</article>\n\
         <p class=\"runbook-source\">{note}</p>\n",
        rule = escape(&b.rule),
        source = match b.source {
            Source::Builtin => "builtin",
            Source::Site => "site",
        },
        html = b.html,
        note = source_note(b),
    );
    let title = match &b.title {
        Some(t) => format!("Runbook: {t}"),
        None => format!("Runbook: {}", b.rule),
    };
    html_page(&title, &body)
}

/// `GET /runbooks`.
pub async fn index(State(st): State<FeedState>) -> Response {
    let mut rows = String::new();
    for b in st.runbooks.iter() {
        rows.push_str(&format!(
            "<tr data-rule=\"{rule}\"><td><a href=\"/runbooks/{rule}\"><code>{rule}</code></a></td><td>{title}</td><td>{source}</td></tr>\n",
            rule = escape(&b.rule),
            title = escape(b.title.as_deref().unwrap_or("")),
            source = match b.source {
                Source::Builtin => "built-in",
                Source::Site => "this centre's",
            },
        ));
    }
    let body = format!(
        "<section class=\"panel runbook\" id=\"runbooks\">\n<h1>Runbooks</h1>\n\
         <p>What the support desk does about each flag. A flag in the dashboard links to its rule's runbook.</p>\n\
         <table>\n<thead><tr><th>Rule</th><th>Runbook</th><th>Source</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n</section>\n"
    );
    html_page("Runbooks", &body)
}
