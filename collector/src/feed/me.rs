//! `GET /api/v1/me`: who a token is, for a page that shows each person only
//! what they may do (the dashboard offers a runbook's action to an operator
//! of the unit's agency and to the admin, never to a viewer).
//!
//! Any valid token: `{"role": "viewer"|"operator"|"admin", "agency":
//! "<name>"|null}` (`agency` is `null` for the admin, whose scope is every
//! agency). 401 without a token or with an unknown one. It says nothing a
//! token's holder could not learn from the other endpoints, and it is not
//! an authorisation: every endpoint still checks the token itself.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::FeedState;
use super::auth::{Access, Scope};
use super::error::ApiError;
use super::query::Params;

/// The answer.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MeView<'a> {
    pub role: &'static str,
    pub agency: Option<&'a str>,
}

impl<'a> From<&'a Access> for MeView<'a> {
    fn from(a: &'a Access) -> Self {
        MeView {
            role: a.role.as_str(),
            agency: match &a.scope {
                Scope::Admin => None,
                Scope::Agency(name) => Some(name),
            },
        }
    }
}

/// `GET /api/v1/me`.
pub async fn me(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let access = st.auth.access(&headers)?;
    Params::from(q)?.only(&[])?;
    Ok(Json(MeView::from(&access)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::auth::{Auth, Role};

    #[test]
    fn each_role_and_its_agency() {
        let auth = Auth::new(
            Some("admin-token-0123456789".into()),
            [("a".to_string(), "a-token-0123456789".to_string())].into(),
        )
        .with_operators([("a".to_string(), "a-operator-0123456789".to_string())].into());
        let cases = [
            ("admin-token-0123456789", ("admin", None)),
            ("a-token-0123456789", ("viewer", Some("a"))),
            ("a-operator-0123456789", ("operator", Some("a"))),
        ];
        for (token, (role, agency)) in cases {
            let a = auth.access_of(token).unwrap();
            assert_eq!(MeView::from(&a), MeView { role, agency }, "{token}");
        }
        let admin = Access {
            scope: Scope::Admin,
            role: Role::Admin,
        };
        assert_eq!(
            serde_json::to_value(MeView::from(&admin)).unwrap(),
            serde_json::json!({"role": "admin", "agency": null})
        );
    }
}
