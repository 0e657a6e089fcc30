//! Which presence (the agent's retained birth, or its MQTT will) the
//! collector believes, and which boot of a unit is live. Pure: no clock, no
//! I/O; the one home of presence ordering (the ingest worker stores what the
//! engine believes, it does not decide again).
//!
//! # Contract
//!
//! * **Receive order, never the agent's clock.** A presence's `at_ms` comes
//!   from the agent's clock, which may be a year ahead (and then fixed) or
//!   forged. It never orders anything here: boots are ordered by the order in
//!   which the collector received their births.
//! * **A birth of another boot always wins** and retires the boot it
//!   replaces. A presence of a retired boot is history and is ignored (a late
//!   will, a redelivered birth).
//! * **A will is believed only for the live boot** (or when no boot is known
//!   yet). A will of any other boot is ignored: it cannot be newer than the
//!   live boot's birth, which the collector received after that boot started.
//! * **Within the live boot** the connection number orders presences, and a
//!   will comes after the birth of its own connection.
//! * **Newer data overrules a will.** A record of the live boot with a seq
//!   above every seq the collector had of that boot when it believed the will
//!   proves the unit is connected again (an agent only publishes while
//!   connected, and its records from before the loss were sent before the
//!   broker published the will). The will is then overruled, and the next
//!   presence of that boot is believed whatever its connection number, so a
//!   will with a forged connection number cannot pin a unit offline.
//! * Bounded: at most [`MAX_RETIRED`] retired boots are remembered.

use std::collections::VecDeque;

use muster_proto::{BootId, Presence};

/// Retired boots remembered per unit.
pub const MAX_RETIRED: usize = 16;

/// What became of one presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Believed: it is now the unit's presence.
    Believed,
    /// Ignored, and why (a log field).
    Ignored(&'static str),
}

/// A unit's presence, as believed, and its live boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceTrack {
    current: Option<Presence>,
    /// The current will was overruled by newer records of its boot.
    overruled: bool,
    /// Highest seq of the live boot received so far.
    live_max_seq: u64,
    /// Highest seq of the live boot when the current will was believed.
    will_max_seq: u64,
    retired: VecDeque<BootId>,
}

impl PresenceTrack {
    /// A track seeded from the store at start: `max_seq` is the highest seq
    /// of `p.boot` the collector has stored.
    pub fn restored(p: Presence, max_seq: u64) -> Self {
        PresenceTrack {
            current: Some(p),
            overruled: false,
            live_max_seq: max_seq,
            will_max_seq: max_seq,
            retired: VecDeque::new(),
        }
    }

    /// The believed presence, if any.
    pub fn current(&self) -> Option<&Presence> {
        self.current.as_ref()
    }

    /// Is the unit offline by its will (believed and not overruled)?
    pub fn will(&self) -> Option<&Presence> {
        self.current
            .as_ref()
            .filter(|p| !p.online && !self.overruled)
    }

    /// The boot the collector believes is running, from the newest birth.
    pub fn live_boot(&self) -> Option<BootId> {
        self.current.map(|p| p.boot)
    }

    fn is_retired(&self, boot: BootId) -> bool {
        self.retired.contains(&boot)
    }

    /// A presence arrived. `newest_record_boot` is the boot of the unit's
    /// newest record, when no presence is known yet.
    pub fn presence(&mut self, p: &Presence, newest_record_boot: Option<BootId>) -> Verdict {
        if self.is_retired(p.boot) {
            return Verdict::Ignored("retired boot");
        }
        let believed = match &self.current {
            None => p.online || newest_record_boot.is_none_or(|b| b == p.boot),
            Some(c) if c.boot == p.boot => {
                (p.connection, !p.online) > (c.connection, !c.online) || (self.overruled && p != c)
            }
            Some(_) => p.online,
        };
        if !believed {
            return Verdict::Ignored(match &self.current {
                Some(c) if c.boot != p.boot => "will of a boot that is not live",
                None => "will of a boot that is not live",
                Some(_) => "older than the believed presence",
            });
        }
        if let Some(c) = self.current
            && c.boot != p.boot
        {
            if self.retired.len() == MAX_RETIRED {
                self.retired.pop_front();
            }
            self.retired.push_back(c.boot);
            self.live_max_seq = 0;
        }
        self.current = Some(*p);
        self.overruled = false;
        self.will_max_seq = self.live_max_seq;
        Verdict::Believed
    }

    /// A record of `boot` arrived. Returns `true` when it overrules the
    /// believed will (the unit is connected again).
    pub fn record(&mut self, boot: BootId, seq: u64) -> bool {
        let live = match self.current {
            Some(c) => c.boot == boot,
            None => true,
        };
        if !live {
            return false;
        }
        self.live_max_seq = self.live_max_seq.max(seq);
        if self.will().is_some() && seq > self.will_max_seq {
            self.overruled = true;
            return true;
        }
        false
    }

    /// Is a record of `boot` from a boot older than the live one (replayed
    /// history of a retired boot)? `None` when presence cannot tell.
    pub fn is_older_boot(&self, boot: BootId, than: BootId) -> Option<bool> {
        let live = self.live_boot()?;
        if boot == live && than != live {
            Some(false)
        } else if than == live && boot != live {
            Some(true)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(boot: u64, connection: u32, online: bool, at_ms: u64) -> Presence {
        Presence {
            online,
            boot: BootId(boot),
            connection,
            at_ms,
            reason: if online {
                muster_proto::PresenceReason::Connected
            } else {
                muster_proto::PresenceReason::Lost
            },
        }
    }

    const YEAR: u64 = 365 * 24 * 3600 * 1000;

    #[test]
    fn ordering_table() {
        // (presences in receive order, each with its verdict), what
        let cases: &[(&[(Presence, bool)], &str)] = &[
            (&[(p(1, 1, true, 10), true)], "first presence"),
            (
                &[(p(1, 1, true, 10), true), (p(1, 1, false, 10), true)],
                "will of the same connection",
            ),
            (
                &[(p(1, 2, true, 20), true), (p(1, 1, false, 10), false)],
                "late will of an older connection",
            ),
            (
                &[(p(1, 1, false, 10), true), (p(1, 2, true, 20), true)],
                "reconnect",
            ),
            (
                &[(p(1, 2, true, 20), true), (p(1, 2, true, 20), false)],
                "retained birth seen again",
            ),
            (
                &[(p(1, 2, false, 20), true), (p(1, 2, true, 20), false)],
                "birth after its own will",
            ),
            (
                &[(p(1, 5, true, 20), true), (p(2, 1, true, 30), true)],
                "agent restarted: new boot",
            ),
            (
                &[
                    (p(1, 5, true, 20), true),
                    (p(2, 1, true, 30), true),
                    (p(1, 5, false, 20), false),
                ],
                "old boot's will after a restart",
            ),
            (
                &[
                    (p(1, 1, true, 10 + YEAR), true),
                    (p(1, 1, false, 10 + YEAR), true),
                    (p(2, 1, true, 20), true),
                ],
                "clock a year ahead, then fixed: the new boot's birth wins",
            ),
            (
                &[
                    (p(2, 1, true, 20), true),
                    (p(3, 1, false, 20 + YEAR), false),
                ],
                "future-dated will of another boot",
            ),
            (
                &[
                    (p(1, 1, true, 10), true),
                    (p(2, 1, true, 5), true),
                    (p(1, 2, true, 50), false),
                ],
                "birth of a retired boot (redelivered)",
            ),
        ];
        for (steps, what) in cases {
            let mut t = PresenceTrack::default();
            for (i, (pr, want)) in steps.iter().enumerate() {
                let v = t.presence(pr, None);
                assert_eq!(v == Verdict::Believed, *want, "{what}: step {i}: {v:?}");
            }
        }
    }

    #[test]
    fn a_will_of_another_boot_than_the_newest_data_is_ignored() {
        let mut t = PresenceTrack::default();
        assert_eq!(
            t.presence(&p(10, 3, false, 0), Some(BootId(11))),
            Verdict::Ignored("will of a boot that is not live")
        );
        assert_eq!(
            t.presence(&p(10, 3, false, 0), Some(BootId(10))),
            Verdict::Believed
        );
    }

    #[test]
    fn newer_records_overrule_a_forged_will_and_older_ones_do_not() {
        let mut t = PresenceTrack::default();
        t.presence(&p(7, 1, true, 0), None);
        for seq in 1..=10 {
            assert!(!t.record(BootId(7), seq));
        }
        // A will with the largest connection number and a date far ahead.
        let forged = p(7, u32::MAX, false, u64::MAX);
        assert_eq!(t.presence(&forged, None), Verdict::Believed);
        assert!(t.will().is_some());
        // Records the collector already had, or of another boot, prove nothing.
        assert!(!t.record(BootId(7), 10));
        assert!(!t.record(BootId(7), 3));
        assert!(!t.record(BootId(8), 11));
        assert!(t.will().is_some());
        // A newer record of the live boot does.
        assert!(t.record(BootId(7), 11));
        assert!(t.will().is_none());
        assert!(!t.record(BootId(7), 12), "overruled once");
        // The forged will redelivered (retained) stays overruled...
        assert_ne!(t.presence(&forged, None), Verdict::Believed);
        assert!(t.will().is_none());
        // ...but a real will of a later connection is believed again.
        assert_eq!(t.presence(&p(7, 2, false, 0), None), Verdict::Believed);
        assert!(t.will().is_some());
        assert!(!t.record(BootId(7), 12), "no seq above the will's");
        assert!(t.record(BootId(7), 13));
    }

    #[test]
    fn a_restored_will_is_not_overruled_by_records_already_stored() {
        let mut t = PresenceTrack::restored(p(4, 2, false, 0), 100);
        assert!(!t.record(BootId(4), 100));
        assert!(!t.record(BootId(4), 57));
        assert!(t.will().is_some());
        assert!(t.record(BootId(4), 101));
    }

    #[test]
    fn retired_boots_are_bounded() {
        let mut t = PresenceTrack::default();
        for b in 0..(MAX_RETIRED as u64 + 5) {
            assert_eq!(t.presence(&p(b, 1, true, 0), None), Verdict::Believed);
        }
        assert_eq!(t.retired.len(), MAX_RETIRED);
        // The oldest were forgotten; the newer retired ones are still refused.
        assert_ne!(
            t.presence(&p(MAX_RETIRED as u64 + 3, 1, false, 0), None),
            Verdict::Believed
        );
    }

    #[test]
    fn older_boot_by_presence() {
        let mut t = PresenceTrack::default();
        assert_eq!(t.is_older_boot(BootId(1), BootId(2)), None);
        t.presence(&p(2, 1, true, 0), None);
        assert_eq!(t.is_older_boot(BootId(1), BootId(2)), Some(true));
        assert_eq!(t.is_older_boot(BootId(2), BootId(1)), Some(false));
        assert_eq!(t.is_older_boot(BootId(1), BootId(3)), None);
    }
}
