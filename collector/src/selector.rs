//! Label selectors (issue 16): which units carry given labels. Used by the
//! unit list (`?label=station=7`, repeatable) and by a deploy gate's cohort
//! (`"labels": {"station": "7"}`).
//!
//! Contract: pure. A selector is at most [`MAX_TERMS`] `key = value`
//! terms, each key and value valid by the wire's own label rules
//! (`muster_proto::validate_label_key`, `validate_text` with
//! `MAX_LABEL_VALUE`): a term that no unit could carry is refused, not
//! silently matched by none. A unit matches when it carries every term's
//! label with exactly that value (all must match); the empty selector
//! matches every unit; a unit that never reported its labels carries none.
//! The same key twice with different values matches no unit.

use muster_proto::{Label, LabelError, MAX_LABEL_VALUE, MAX_LABELS};

/// The most terms in one selector (a unit carries at most this many labels).
pub const MAX_TERMS: usize = MAX_LABELS;

/// Why a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{count} label terms; at most {MAX_TERMS}")]
    TooMany { count: usize },
    #[error("{term:?} is not key=value")]
    NotATerm { term: String },
    #[error("{0}")]
    Label(LabelError),
}

/// Terms a unit's labels must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<Label>,
}

impl LabelSelector {
    /// From `key=value` terms (split at the first `=`: a value may hold
    /// more), as the unit list's `?label=` parameters give them.
    pub fn parse<'a>(terms: impl IntoIterator<Item = &'a str>) -> Result<Self, SelectorError> {
        let pairs: Vec<(&str, &str)> = terms
            .into_iter()
            .map(|t| {
                t.split_once('=').ok_or_else(|| SelectorError::NotATerm {
                    term: t.chars().take(80).collect(),
                })
            })
            .collect::<Result<_, _>>()?;
        Self::from_pairs(pairs)
    }

    /// From (key, value) pairs, e.g. a gate cohort's `labels` object.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for (key, value) in pairs {
            if terms.len() == MAX_TERMS {
                return Err(SelectorError::TooMany {
                    count: MAX_TERMS + 1,
                });
            }
            muster_proto::validate_label_key(key).map_err(SelectorError::Label)?;
            muster_proto::validate_text(&format!("label {key}"), value, MAX_LABEL_VALUE)
                .map_err(SelectorError::Label)?;
            terms.push(Label {
                key: key.to_owned(),
                value: value.to_owned(),
            });
        }
        Ok(LabelSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Does a unit carrying `labels` match every term?
    pub fn matches(&self, labels: &[Label]) -> bool {
        self.terms
            .iter()
            .all(|t| labels.iter().any(|l| l.key == t.key && l.value == t.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
        let mut v: Vec<Label> = pairs
            .iter()
            .map(|(k, v)| Label {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_term_must_match() {
        let patrol7 = labels(&[("station", "7"), ("role", "patrol")]);
        let engine7 = labels(&[("station", "7"), ("role", "engine")]);
        let nine = labels(&[("station", "9")]);
        let none = labels(&[]);
        let eq = labels(&[("expr", "a=b")]);
        // (terms, which of [patrol7, engine7, nine, none, eq] match)
        let cases: &[(&[&str], [bool; 5])] = &[
            (&[], [true, true, true, true, true]),
            (&["station=7"], [true, true, false, false, false]),
            (
                &["station=7", "role=patrol"],
                [true, false, false, false, false],
            ),
            (
                &["role=patrol", "station=7"],
                [true, false, false, false, false],
            ),
            (
                &["station=7", "station=9"],
                [false, false, false, false, false],
            ),
            (
                &["station=7", "station=7"],
                [true, true, false, false, false],
            ),
            (&["station="], [false, false, false, false, false]),
            (&["station=07"], [false, false, false, false, false]),
            (&["station=7 "], [false, false, false, false, false]),
            (&["role=Patrol"], [false, false, false, false, false]),
            (&["expr=a=b"], [false, false, false, false, true]),
            (&["shift=night"], [false, false, false, false, false]),
        ];
        let units = [&patrol7, &engine7, &nine, &none, &eq];
        for (terms, want) in cases {
            let s = LabelSelector::parse(terms.iter().copied()).unwrap();
            let got: Vec<bool> = units.iter().map(|u| s.matches(u)).collect();
            assert_eq!(got, want.to_vec(), "{terms:?}");
        }
    }

    #[test]
    fn terms_no_unit_could_carry_are_refused() {
        let long = format!("k={}", "v".repeat(MAX_LABEL_VALUE + 1));
        let ok_long = format!("k={}", "é".repeat(MAX_LABEL_VALUE));
        let key32 = format!("{}=1", "k".repeat(32));
        let key33 = format!("{}=1", "k".repeat(33));
        // (term, a fragment of the error or "" for accepted)
        let cases: &[(&str, &str)] = &[
            ("station", "not key=value"),
            ("=7", "label key"),
            ("Station=7", "label key"),
            ("7station=7", "label key"),
            ("sta tion=7", "label key"),
            ("station\u{0}=7", "label key"),
            (&key32, ""),
            (&key33, "label key"),
            (&long, "at most 64 characters"),
            (&ok_long, ""),
            ("k=a\u{7}b", "control"),
            ("k=a\u{9f}b", "control"),
            ("k=", ""),
            ("a.b-c_d=x y", ""),
        ];
        for (term, frag) in cases {
            match LabelSelector::parse([*term]) {
                Ok(_) => assert!(frag.is_empty(), "{term:?} accepted"),
                Err(e) => {
                    assert!(!frag.is_empty(), "{term:?}: {e}");
                    assert!(e.to_string().contains(frag), "{term:?}: {e} lacks {frag:?}");
                }
            }
        }
        let many: Vec<String> = (0..=MAX_TERMS).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            LabelSelector::parse(many.iter().map(String::as_str)),
            Err(SelectorError::TooMany {
                count: MAX_TERMS + 1
            })
        );
        assert!(LabelSelector::parse(many[..MAX_TERMS].iter().map(String::as_str)).is_ok());
    }
}
