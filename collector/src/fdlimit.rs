//! The open-file limit. Every HTTP connection, MQTT connection (the
//! embedded broker's too) and store file is a descriptor, and the usual
//! soft limit of 1,024 is far below what `http.max_connections` plus the
//! broker allow. At start the collector raises its soft `RLIMIT_NOFILE` to
//! the hard limit (no privilege needed) and logs both. The packaged systemd
//! unit sets both with `LimitNOFILE=` (its seccomp filter may refuse the
//! raise; then this only logs the limit it got).
//!
//! Linux only; elsewhere [`raise`] reports [`FdLimit::Unsupported`].

/// What [`raise`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdLimit {
    /// The soft limit is now `soft` (it was `was`); `hard` is the ceiling
    /// (`None`: unlimited).
    Raised {
        was: u64,
        soft: u64,
        hard: Option<u64>,
    },
    /// Already at the hard limit.
    Unchanged {
        soft: Option<u64>,
        hard: Option<u64>,
    },
    /// The raise was refused; the soft limit stays `soft`.
    Failed {
        soft: Option<u64>,
        hard: Option<u64>,
        error: i32,
    },
    Unsupported,
}

/// The soft limit to ask for: the hard one, or, if that is unlimited, a
/// ceiling the kernel accepts (`nr_open`, 1,048,576 by default). Pure.
pub fn target(soft: Option<u64>, hard: Option<u64>) -> Option<u64> {
    const NR_OPEN_DEFAULT: u64 = 1 << 20;
    let want = hard.unwrap_or(NR_OPEN_DEFAULT);
    match soft {
        None => None,
        Some(s) if s >= want => None,
        Some(_) => Some(want),
    }
}

/// Raises the soft open-file limit to the hard limit.
#[cfg(target_os = "linux")]
pub fn raise() -> FdLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let (soft, hard) = (cur.current, cur.maximum);
    let Some(want) = target(soft, hard) else {
        return FdLimit::Unchanged { soft, hard };
    };
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: hard,
        },
    ) {
        Ok(()) => FdLimit::Raised {
            was: soft.unwrap_or(0),
            soft: want,
            hard,
        },
        Err(e) => FdLimit::Failed {
            soft,
            hard,
            error: e.raw_os_error(),
        },
    }
}

#[cfg(not(target_os = "linux"))]
pub fn raise() -> FdLimit {
    FdLimit::Unsupported
}

/// Raises the limit and logs what it is.
pub fn raise_and_log() -> FdLimit {
    let r = raise();
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    match r {
        FdLimit::Raised { was, soft, hard } => tracing::info!(
            was,
            soft,
            hard = %show(hard),
            "Open-file limit raised to the hard limit."
        ),
        FdLimit::Unchanged { soft, hard } => tracing::info!(
            soft = %show(soft),
            hard = %show(hard),
            "Open-file limit."
        ),
        FdLimit::Failed { soft, hard, error } => tracing::warn!(
            soft = %show(soft),
            hard = %show(hard),
            error = %std::io::Error::from_raw_os_error(error),
            "Could not raise the open-file limit; HTTP connections beyond it fail to accept."
        ),
        FdLimit::Unsupported => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_table() {
        let cases: &[(Option<u64>, Option<u64>, Option<u64>)] = &[
            (Some(1024), Some(524_288), Some(524_288)),
            (Some(1024), Some(65_536), Some(65_536)),
            (Some(65_536), Some(65_536), None),
            (Some(1024), None, Some(1 << 20)),
            (None, None, None),
            (Some(2_000_000), None, None),
        ];
        for &(soft, hard, want) in cases {
            assert_eq!(target(soft, hard), want, "{soft:?}/{hard:?}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn raise_reaches_the_hard_limit() {
        let r = raise();
        let cur = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert!(!matches!(r, FdLimit::Failed { .. }), "{r:?}");
        if let Some(h) = cur.maximum {
            assert_eq!(cur.current, Some(h));
        }
    }
}
