//! Query-string parsing with errors that name the parameter.
//!
//! What is accepted is exactly what `openapi.json` declares (schemathesis
//! checks both ways): numbers are plain ASCII digits (no sign; too large
//! saturates, since a cursor or id beyond every stored one is a valid
//! position), times are unix ms, RFC 3339 with any offset (before 1970
//! clamps to 0) or a duration ago.

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

    /// As [`Params::from`], with one parameter that may be repeated
    /// (`?label=a=1&label=b=2`): its values in order, beside the others
    /// (of which the last one given counts, as with [`Params::from`]).
    pub fn with_repeated(
        q: Result<Query<Vec<(String, String)>>, QueryRejection>,
        repeated: &str,
    ) -> Result<(Self, Vec<String>), ApiError> {
        let Query(pairs) = q.map_err(|_| ApiError::bad_request("the query string is not valid"))?;
        let mut values = Vec::new();
        let mut rest = HashMap::new();
        for (k, v) in pairs {
            if k == repeated {
                values.push(v);
            } else {
                rest.insert(k, v);
            }
        }
        if !values.is_empty() {
            // Known, so `only` accepts it.
            rest.insert(repeated.to_owned(), String::new());
        }
        Ok((Params(rest), values))
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

    /// An `agency/unit` cursor (split at the first '/'). A cursor is a
    /// position in a list ordered by unit, so any pair is accepted,
    /// identity or not.
    pub fn unit_cursor(&self) -> Result<Option<muster_proto::UnitId>, ApiError> {
        self.str("cursor")
            .map(|s| {
                s.split_once('/')
                    .map(|(a, u)| muster_proto::UnitId {
                        agency: a.to_owned(),
                        unit: u.to_owned(),
                    })
                    .ok_or_else(|| {
                        ApiError::bad_request("cursor: not a cursor this endpoint gave out")
                    })
            })
            .transpose()
    }

    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.str("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(s) => match digits(s) {
                Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => Ok(n as usize),
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
        if let Some(ms) = digits(s) {
            return Ok(Some(ms));
        }
        if let Some(ms) = rfc3339_ms(s) {
            return Ok(Some(ms));
        }
        if !s.starts_with(['+', '-'])
            && let Ok(d) = humantime::parse_duration(s)
        {
            return Ok(Some(now_ms.saturating_sub(d.as_millis() as u64)));
        }
        Err(ApiError::bad_request(format!(
            "{k}: {s:?} is not unix milliseconds, an RFC 3339 time or a duration ago like \"15m\""
        )))
    }
}

/// A number of plain ASCII digits (no sign, no spaces), saturating at
/// `u64::MAX`. Pure.
pub fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 `date-time` (`2026-11-21T08:30:00Z`, `...T08:30:00.5+02:00`,
/// `t`/`z` or a space accepted) as unix ms; before 1970 is 0. Pure.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let p = b.get(r)?;
        p.iter()
            .all(u8::is_ascii_digit)
            .then(|| p.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let f = &b[start..i.min(start + 3)];
        frac_ms =
            f.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')) * 10i64.pow(3 - f.len() as u32);
    }
    let offset_s = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let _ = (h1, h2, m1, m2);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    let ms = secs * 1000 + frac_ms;
    Some(u64::try_from(ms).unwrap_or(0))
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
        for bad in ["soon", "", "+5", "-5", " 5", "-15m", "2026-13-01T00:00:00Z"] {
            let e = p(&[("since", bad)]).time("since", now).unwrap_err();
            assert!(e.message.starts_with("since:"), "{bad:?}");
        }
        assert!(p(&[("x", "1")]).only(&["limit"]).is_err());
    }

    #[test]
    fn digits_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("42", Some(42)),
            ("18446744073709551615", Some(u64::MAX)),
            ("99999999999999999999999", Some(u64::MAX)),
            ("", None),
            ("+1", None),
            ("-1", None),
            ("1 ", None),
            ("1\n", None),
            ("١", None),
        ];
        for (s, want) in cases {
            assert_eq!(digits(s), *want, "{s:?}");
        }
    }

    #[test]
    fn rfc3339_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1970-01-01T00:00:01.5Z", Some(1_500)),
            ("1970-01-01t00:00:01.123456789z", Some(1_123)),
            ("1970-01-01 01:00:00+01:00", Some(0)),
            ("1970-01-01T00:00:00-00:30", Some(1_800_000)),
            ("2000-02-29T00:00:00Z", Some(951_782_400_000)),
            ("2026-11-21T00:00:00Z", Some(1_795_219_200_000)),
            ("0001-01-01T00:00:00Z", Some(0)),
            ("9999-12-31T23:59:59Z", Some(253_402_300_799_000)),
            ("2001-02-29T00:00:00Z", None),
            ("2026-00-01T00:00:00Z", None),
            ("2026-01-01T24:00:00Z", None),
            ("2026-01-01T00:00:00", None),
            ("2026-01-01T00:00:00.Z", None),
            ("2026-01-01T00:00:00+0100", None),
            ("2026-01-01T00:00:00Z\n", None),
            ("2026-1-01T00:00:00Z", None),
        ];
        for (s, want) in cases {
            assert_eq!(rfc3339_ms(s), *want, "{s:?}");
        }
    }
}
