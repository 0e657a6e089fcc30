//! Bearer tokens: each agency's token sees that agency's units; the admin
//! token sees all. No or an unknown token is 401; a known token asking for
//! another agency's data is 403.
//!
//! Roles (issue 17): an agency's `token` is its **viewer**; its optional
//! `operator_token` is its **operator**, which sees exactly what the viewer
//! sees ([`Scope::Agency`]: every existing endpoint treats it as the
//! viewer) and may also request actions from the agency's units; the admin
//! token is **admin**. The role is asked for only where it matters
//! ([`Auth::access`]), so every `sees()` caller stays right by
//! construction.

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

/// What a token may do besides reading what its scope sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agency's `token`: reads its agency's units.
    Viewer,
    /// An agency's `operator_token`: reads as the viewer, and requests
    /// actions from its agency's units.
    Operator,
    /// The admin token.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A token's scope and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub scope: Scope,
    pub role: Role,
}

#[derive(Debug, Default)]
pub struct Auth {
    admin: Option<String>,
    /// Agency name -> its viewer's token.
    agencies: BTreeMap<String, String>,
    /// Agency name -> its operator's token.
    operators: BTreeMap<String, String>,
}

/// Compares without an early exit, so timing does not tell how much of a
/// guessed token was right.
pub(crate) fn same(a: &str, b: &str) -> bool {
    ct_eq(a.as_bytes(), b.as_bytes())
}

/// Byte strings equal, compared without an early exit (also the embedded
/// broker's credential check).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
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
        Auth {
            admin,
            agencies,
            operators: BTreeMap::new(),
        }
    }

    /// With the agencies' operator tokens (agency name -> token).
    pub fn with_operators(mut self, operators: BTreeMap<String, String>) -> Self {
        self.operators = operators;
        self
    }

    /// The token's scope and role. Every token is compared (no early
    /// exit), so timing does not tell which kind a token is.
    pub fn access_of(&self, token: &str) -> Option<Access> {
        let mut found = None;
        if self.admin.as_deref().is_some_and(|t| same(t, token)) {
            found = Some(Access {
                scope: Scope::Admin,
                role: Role::Admin,
            });
        }
        for (role, tokens) in [
            (Role::Viewer, &self.agencies),
            (Role::Operator, &self.operators),
        ] {
            for (agency, t) in tokens {
                if same(t, token) {
                    found = Some(Access {
                        scope: Scope::Agency(agency.clone()),
                        role,
                    });
                }
            }
        }
        found
    }

    /// An agency this collector serves (it has a viewer token).
    pub fn knows_agency(&self, agency: &str) -> bool {
        self.agencies.contains_key(agency)
    }

    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        self.access_of(token).map(|a| a.scope)
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        self.access(headers).map(|a| a.scope)
    }

    /// As [`Auth::authenticate`], with the token's role.
    pub fn access(&self, headers: &HeaderMap) -> Result<Access, ApiError> {
        let token = bearer(headers)?;
        self.access_of(token)
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
        .with_operators([("a".to_string(), "a-operator-0123456789".to_string())].into())
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
            // An operator reads exactly what its agency's viewer reads.
            (
                Some("Bearer a-operator-0123456789"),
                Ok(Scope::Agency("a".into())),
            ),
            (Some("Bearer a-operator-012345678"), Err("unauthorized")),
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
    fn roles_table() {
        let auth = auth();
        let cases: &[(&str, Option<(Scope, Role)>)] = &[
            ("admin-token-0123456789", Some((Scope::Admin, Role::Admin))),
            (
                "a-token-0123456789",
                Some((Scope::Agency("a".into()), Role::Viewer)),
            ),
            (
                "b-token-0123456789",
                Some((Scope::Agency("b".into()), Role::Viewer)),
            ),
            (
                "a-operator-0123456789",
                Some((Scope::Agency("a".into()), Role::Operator)),
            ),
            ("b-operator-0123456789", None),
            ("", None),
        ];
        for (token, want) in cases {
            let got = auth.access_of(token).map(|a| (a.scope, a.role));
            assert_eq!(got, *want, "{token:?}");
        }
        assert_eq!(Role::Operator.as_str(), "operator");
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
