//! "At most N per D": the one parser and the one counter for every such
//! limit in config (an agent's `[[action]] rate`, a rule's `auto_max`).
//! Pure: times are the caller's unix ms.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::value::BadValue;

/// `N per D`: at most `max` within any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub max: u32,
    pub per: Duration,
}

impl Rate {
    /// `"3 per 1h"`, `"1 per 30m"` (N from 1 to 10000; D a positive
    /// duration of at most 30 days).
    pub fn parse(s: &str) -> Option<Rate> {
        let (n, d) = s.trim().split_once(" per ")?;
        let max: u32 = n.trim().parse().ok()?;
        let per = crate::value::parse_duration(d)?;
        ((1..=10_000).contains(&max)
            && !per.is_zero()
            && per <= Duration::from_secs(30 * 24 * 3600))
        .then_some(Rate { max, per })
    }

    pub fn per_ms(&self) -> u64 {
        self.per.as_millis() as u64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per {}",
            self.max,
            humantime::format_duration(self.per)
        )
    }
}

/// The rate at `key`.
pub fn rate(key: &str, s: &str) -> Result<Rate, BadValue> {
    Rate::parse(s).ok_or_else(|| {
        BadValue::new(
            key,
            format!("{s:?} is not a rate; write \"N per D\" (e.g. \"3 per 1h\"), N from 1 to 10000, D at most 30 days"),
        )
    })
}

/// The times something happened within the last `per`, at most `max`
/// kept: whether one more is allowed now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    times: VecDeque<u64>,
}

impl Window {
    fn prune(&mut self, rate: Rate, now_ms: u64) {
        // Counted: within (now - per, now].
        if let Some(from) = now_ms.checked_sub(rate.per_ms()) {
            while self.times.front().is_some_and(|&t| t <= from) {
                self.times.pop_front();
            }
        }
        // A limit lowered since: only the newest `max` can matter.
        while self.times.len() > rate.max as usize {
            self.times.pop_front();
        }
    }

    /// Would one more at `now_ms` stay within `rate`?
    pub fn allows(&mut self, rate: Rate, now_ms: u64) -> bool {
        self.prune(rate, now_ms);
        self.times.len() < rate.max as usize
    }

    /// Counts one at `now_ms` if `rate` allows it; `false` (nothing
    /// counted) when it does not.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        if !self.allows(rate, now_ms) {
            return false;
        }
        self.times.push_back(now_ms);
        true
    }

    /// The times counted (oldest first).
    pub fn times(&self) -> impl Iterator<Item = u64> + '_ {
        self.times.iter().copied()
    }

    /// When the oldest counted one leaves the window (the next allowed
    /// time when full), if any is counted.
    pub fn frees_at(&self, rate: Rate) -> Option<u64> {
        self.times.front().map(|t| t + rate.per_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!(
            Rate::parse("3 per 1h"),
            Some(Rate {
                max: 3,
                per: Duration::from_secs(3600)
            })
        );
        assert_eq!(Rate::parse(" 1 per 30m ").unwrap().per_ms(), 1_800_000);
        for bad in [
            "",
            "3",
            "per 1h",
            "0 per 1h",
            "3 per 0s",
            "3 per",
            "x per 1h",
            "3/1h",
            "3 per 31d",
            "10001 per 1h",
        ] {
            assert_eq!(Rate::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Rate::parse("3 per 1h").unwrap().to_string(), "3 per 1h");
        let e = rate("action[0].rate", "lots").unwrap_err();
        assert_eq!(e.key, "action[0].rate");
    }

    #[test]
    fn a_window_allows_n_within_d_and_frees_as_they_age_out() {
        let r = Rate::parse("2 per 10s").unwrap();
        let mut w = Window::default();
        let cases: &[(u64, bool)] = &[
            (0, true),
            (1_000, true),
            (2_000, false), // two within 10 s
            (9_999, false),
            (10_000, true), // the one at 0 is out (window is (now-10s, now])
            (10_500, false),
            (11_000, true), // the one at 1 000 is out
        ];
        for &(t, want) in cases {
            assert_eq!(w.take(r, t), want, "at {t}");
        }
        assert_eq!(w.times().collect::<Vec<_>>(), vec![10_000, 11_000]);
        assert_eq!(w.frees_at(r), Some(20_000));
        // Lowered to 1: only the newest counts.
        let one = Rate::parse("1 per 10s").unwrap();
        assert!(!w.allows(one, 11_500));
        assert!(w.allows(one, 21_000));
    }
}
