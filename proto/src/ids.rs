//! Unit identity and boot ids.
//!
//! An identity part (agency or unit id) becomes an MQTT topic level, so it is
//! validated everywhere it enters: non-empty, at most [`MAX_ID_LEN`] bytes, and
//! none of `+`, `#`, `/`, whitespace or control characters.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest agency or unit id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why an agency or unit id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong { field: &'static str, len: usize },
    #[error("{field} contains {ch:?}, which cannot stand in an MQTT topic level")]
    BadChar { field: &'static str, ch: char },
}

/// Checks one identity part; `field` names it in the error (`"agency"`, `"unit_id"`).
pub fn validate_part(field: &'static str, s: &str) -> Result<(), IdentityError> {
    if s.is_empty() {
        return Err(IdentityError::Empty { field });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdentityError::TooLong {
            field,
            len: s.len(),
        });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/') || c.is_whitespace() || c.is_control())
    {
        return Err(IdentityError::BadChar { field, ch });
    }
    Ok(())
}

/// Who a message is about: the agency and the unit (vehicle or workstation) id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitId {
    pub agency: String,
    pub unit: String,
}

impl UnitId {
    /// A validated identity.
    pub fn new(agency: impl Into<String>, unit: impl Into<String>) -> Result<Self, IdentityError> {
        let id = UnitId {
            agency: agency.into(),
            unit: unit.into(),
        };
        id.validate()?;
        Ok(id)
    }

    pub fn validate(&self) -> Result<(), IdentityError> {
        validate_part("agency", &self.agency)?;
        validate_part("unit_id", &self.unit)
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.agency, self.unit)
    }
}

/// A random id drawn at every agent start. Together with the per-boot
/// sequence number it names a record uniquely: `(unit, boot, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BootId(pub u64);

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for BootId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(BootId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_parts_table() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let max = "x".repeat(MAX_ID_LEN);
        let cases: &[(&str, bool)] = &[
            ("E12", true),
            ("metro-fire", true),
            ("Engine_12.a", true),
            ("Éq-7", true),
            (&max, true),
            ("", false),
            (&long, false),
            ("a+b", false),
            ("a#", false),
            ("a/b", false),
            ("a b", false),
            ("a\u{0}", false),
            ("tab\t", false),
        ];
        for (s, ok) in cases {
            assert_eq!(validate_part("unit_id", s).is_ok(), *ok, "{s:?}");
        }
    }

    #[test]
    fn error_names_the_field() {
        let e = UnitId::new("metro/fire", "E12").unwrap_err();
        assert_eq!(
            e.to_string(),
            "agency contains '/', which cannot stand in an MQTT topic level"
        );
        let e = UnitId::new("metro", "").unwrap_err();
        assert_eq!(e.to_string(), "unit_id is empty");
    }

    #[test]
    fn boot_id_hex_round_trip() {
        let b = BootId(0x00ab_cdef_0123_4567);
        assert_eq!(b.to_string(), "00abcdef01234567");
        assert_eq!(b.to_string().parse::<BootId>().unwrap(), b);
    }
}
