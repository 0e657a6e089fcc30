//! Bearer tokens: each agency's token sees that agency's units; the admin
//! token sees all. No or an unknown token is 401; a known token asking for
//! another agency's data is 403.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, header};

use super::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Agency(String),
}

impl Scope {
    pub fn sees(&self, agency: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Agency(a) => a == agency,
        }
    }

    pub fn is_admin(&self) -> bool {
        *self == Scope::Admin
    }

    /// 403 unless this scope sees `agency`.
    pub fn check(&self, agency: &str) -> Result<(), ApiError> {
        if self.sees(agency) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this token does not give access to that agency's units",
            ))
        }
    }
}

#[derive(Debug, Default)]
pub struct Auth {
    admin: Option<String>,
    /// Agency name -> token.
    agencies: BTreeMap<String, String>,
}

/// Compares without an early exit, so timing does not tell how much of a
/// guessed token was right.
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl Auth {
    pub fn new(admin: Option<String>, agencies: BTreeMap<String, String>) -> Self {
        Auth { admin, agencies }
    }

    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        let mut found = None;
        if self.admin.as_deref().is_some_and(|t| same(t, token)) {
            found = Some(Scope::Admin);
        }
        for (agency, t) in &self.agencies {
            if same(t, token) {
                found = Some(Scope::Agency(agency.clone()));
            }
        }
        found
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        let token = bearer(headers)?;
        self.scope_of(token)
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }
}

/// The token of an `Authorization: Bearer <token>` header; 401 without one.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing bearer token (Authorization: Bearer <token>)",
        ));
    };
    v.to_str()
        .ok()
        .and_then(|s| {
            s.strip_prefix("Bearer ")
                .or_else(|| s.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not a bearer token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Auth {
        Auth::new(
            Some("admin-token-0123456789".into()),
            [
                ("a".to_string(), "a-token-0123456789".to_string()),
                ("b".to_string(), "b-token-0123456789".to_string()),
            ]
            .into(),
        )
    }

    #[test]
    fn scopes_table() {
        let auth = auth();
        let cases: &[(Option<&str>, Result<Scope, &str>)] = &[
            (None, Err("unauthorized")),
            (Some("Basic abc"), Err("unauthorized")),
            (Some("Bearer nope"), Err("unauthorized")),
            (Some("Bearer a-token-012345678"), Err("unauthorized")),
            (
                Some("Bearer a-token-0123456789"),
                Ok(Scope::Agency("a".into())),
            ),
            (
                Some("Bearer b-token-0123456789"),
                Ok(Scope::Agency("b".into())),
            ),
            (Some("Bearer admin-token-0123456789"), Ok(Scope::Admin)),
        ];
        for (h, want) in cases {
            let mut headers = HeaderMap::new();
            if let Some(h) = h {
                headers.insert(header::AUTHORIZATION, HeaderValue::from_str(h).unwrap());
            }
            let got = auth.authenticate(&headers).map_err(|e| e.code);
            assert_eq!(got, want.clone(), "{h:?}");
        }
    }

    #[test]
    fn agency_scope_sees_only_its_own() {
        let s = Scope::Agency("a".into());
        assert!(s.sees("a"));
        assert!(!s.sees("b"));
        assert_eq!(s.check("b").unwrap_err().code, "forbidden");
        assert!(Scope::Admin.sees("b"));
    }
}
