//! Query-string parsing with errors that name the parameter.

use std::collections::HashMap;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;

use super::error::ApiError;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn from(
        q: Result<Query<HashMap<String, String>>, QueryRejection>,
    ) -> Result<Self, ApiError> {
        q.map(|Query(m)| Params(m))
            .map_err(|_| ApiError::bad_request("the query string is not valid"))
    }

    /// Refuses parameters the endpoint does not know: a typo should not
    /// silently widen a query.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::bad_request(format!(
                "unknown parameter {k:?}; this endpoint takes {}",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    pub fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.str("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "limit: {s:?} is not a number from 1 to {MAX_LIMIT}"
                ))),
            },
        }
    }

    /// A time: unix ms, an RFC 3339 timestamp, or a duration ago (`15m`).
    pub fn time(&self, k: &str, now_ms: u64) -> Result<Option<u64>, ApiError> {
        let Some(s) = self.str(k) else {
            return Ok(None);
        };
        if let Ok(ms) = s.parse::<u64>() {
            return Ok(Some(ms));
        }
        if let Ok(t) = humantime::parse_rfc3339_weak(s) {
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            return Ok(Some(ms));
        }
        if let Ok(d) = humantime::parse_duration(s) {
            return Ok(Some(now_ms.saturating_sub(d.as_millis() as u64)));
        }
        Err(ApiError::bad_request(format!(
            "{k}: {s:?} is not unix milliseconds, an RFC 3339 time or a duration ago like \"15m\""
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn limits_and_times() {
        assert_eq!(p(&[]).limit().unwrap(), DEFAULT_LIMIT);
        assert_eq!(p(&[("limit", "5")]).limit().unwrap(), 5);
        for bad in ["0", "-1", "x", "1001"] {
            let e = p(&[("limit", bad)]).limit().unwrap_err();
            assert!(e.message.starts_with("limit:"), "{bad}: {}", e.message);
        }
        let now = 1_000_000;
        assert_eq!(p(&[("since", "5")]).time("since", now).unwrap(), Some(5));
        assert_eq!(
            p(&[("since", "15s")]).time("since", now).unwrap(),
            Some(985_000)
        );
        assert_eq!(
            p(&[("since", "1970-01-01T00:00:01Z")])
                .time("since", now)
                .unwrap(),
            Some(1_000)
        );
        let e = p(&[("since", "soon")]).time("since", now).unwrap_err();
        assert!(e.message.starts_with("since:"));
        assert!(p(&[("x", "1")]).only(&["limit"]).is_err());
    }
}
