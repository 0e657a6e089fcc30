//! Which presence (the agent's retained birth, its announced departure, or
//! its MQTT will) the collector believes, and which boot of a unit is live.
//! Pure: no clock, no I/O; the one home of presence ordering (the ingest
//! worker stores what the engine believes, it does not decide again).
//!
//! # Contract
//!
//! * **Receive order, never the agent's clock.** A presence's `at_ms` comes
//!   from the agent's clock, which may be a year ahead (and then fixed) or
//!   forged. It never orders anything here: boots are ordered by the order in
//!   which the collector received their births.
//! * **A birth of another boot always wins** and retires the boot it
//!   replaces. A presence of a retired boot is history and is ignored (a late
//!   will, a redelivered birth, a replayed announcement).
//! * **A departure (will or announcement) is believed only for the live
//!   boot** (or when no boot is known yet and the newest data is of its
//!   boot). A departure of any other boot is ignored: it cannot be newer
//!   than the live boot's birth, which the collector received after that
//!   boot started.
//! * **Within the live boot** the connection number orders presences; within
//!   one connection, birth < will < announcement. A will comes after the
//!   birth of its own connection. An announcement (`Shutdown`, `Stop`,
//!   `Sleep`) is believed like a will of its connection, and outranks the
//!   will of that same connection: the agent disconnects cleanly after
//!   announcing, so normally no will follows, but a broker that missed the
//!   DISCONNECT still publishes it, and it must not turn `off` into `lost`;
//!   an announcement received after the will of its connection (the
//!   retained will, then the buffered announcement record) is believed. A
//!   late will of an older connection never overrides a newer announcement.
//! * **An announcement arrives twice**: as the retained state (this module's
//!   [`PresenceTrack::presence`]) and as a buffered, acked record
//!   ([`PresenceTrack::announcement`], which knows its seq). Either may come
//!   first, or only one. The second copy changes nothing but the seq the
//!   departure is judged against (see below).
//! * **Newer data overrules a departure.** A record of the live boot with a
//!   seq above every seq the collector had of that boot when it believed the
//!   departure (for an announcement record: above its own seq) proves the
//!   unit is connected again (an agent only publishes while connected, and
//!   its records from before the loss were sent before the broker published
//!   the will). The departure is then overruled, and the next presence of
//!   that boot is believed whatever its connection number, so a will with a
//!   forged connection number cannot pin a unit offline. An announcement
//!   record is a departure, never proof of being connected: it does not
//!   overrule. When the record copy of an announcement arrives after records
//!   overruled its retained copy, and none of those records is newer than the
//!   announcement's seq, they were older than the announcement: the
//!   departure stands again.
//! * **Unknown reasons** (a newer agent's code): offline ranks as a will
//!   (`lost`), online as a birth.
//! * Bounded: at most [`MAX_RETIRED`] retired boots are remembered.

use std::collections::VecDeque;

use crate::{BootId, Presence};

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

/// Orders presences within one connection: birth < will < announcement.
fn rank(p: &Presence) -> u8 {
    if p.online {
        0
    } else if p.reason.is_announced() {
        2
    } else {
        1
    }
}

/// A unit's presence, as believed, and its live boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceTrack {
    current: Option<Presence>,
    /// The current departure was overruled by newer records of its boot.
    overruled: bool,
    /// Highest seq of the live boot received so far.
    live_max_seq: u64,
    /// Highest seq of the live boot when the current departure was believed
    /// (or the announcement record's own seq, when higher).
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

    /// Is the unit gone by its will or its announcement (believed and not
    /// overruled)?
    pub fn gone(&self) -> Option<&Presence> {
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

    /// A presence arrived on the state topic. `newest_record_boot` is the
    /// boot of the unit's newest record, when no presence is known yet.
    pub fn presence(&mut self, p: &Presence, newest_record_boot: Option<BootId>) -> Verdict {
        if self.is_retired(p.boot) {
            return Verdict::Ignored("retired boot");
        }
        let believed = match &self.current {
            None => p.online || newest_record_boot.is_none_or(|b| b == p.boot),
            Some(c) if c.boot == p.boot => {
                (p.connection, rank(p)) > (c.connection, rank(c)) || (self.overruled && p != c)
            }
            Some(_) => p.online,
        };
        if !believed {
            return Verdict::Ignored(match &self.current {
                Some(c) if c.boot != p.boot => "departure of a boot that is not live",
                None => "departure of a boot that is not live",
                Some(c) if c.connection == p.connection && rank(c) == 2 && rank(p) == 1 => {
                    "will after the announcement of its connection"
                }
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

    /// An announcement record (`Payload::Presence`, always offline, of the
    /// record's own boot) with its seq. Ordered like [`Self::presence`]; it
    /// never overrules a departure (it is one). `Believed` also when it
    /// restores a departure its retained copy had, overruled only by older
    /// records.
    pub fn announcement(
        &mut self,
        p: &Presence,
        seq: u64,
        newest_record_boot: Option<BootId>,
    ) -> Verdict {
        if self.is_retired(p.boot) {
            return Verdict::Ignored("retired boot");
        }
        if self.current.is_none_or(|c| c.boot == p.boot) {
            self.live_max_seq = self.live_max_seq.max(seq);
        }
        match self.presence(p, newest_record_boot) {
            Verdict::Believed => {
                self.will_max_seq = self.will_max_seq.max(seq);
                Verdict::Believed
            }
            ignored => {
                if self.current.as_ref() == Some(p) {
                    // The retained copy came first: judge the departure
                    // against the announcement's own seq.
                    self.will_max_seq = self.will_max_seq.max(seq);
                    if self.overruled && self.live_max_seq <= seq {
                        self.overruled = false;
                        return Verdict::Believed;
                    }
                }
                ignored
            }
        }
    }

    /// A record of `boot` arrived (not an announcement). Returns `true` when
    /// it overrules the believed departure (the unit is connected again).
    pub fn record(&mut self, boot: BootId, seq: u64) -> bool {
        let live = match self.current {
            Some(c) => c.boot == boot,
            None => true,
        };
        if !live {
            return false;
        }
        self.live_max_seq = self.live_max_seq.max(seq);
        if self.gone().is_some() && seq > self.will_max_seq {
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
                crate::PresenceReason::Connected
            } else {
                crate::PresenceReason::Lost
            },
        }
    }

    /// An announcement (`Shutdown`) of `boot`'s connection.
    fn a(boot: u64, connection: u32) -> Presence {
        Presence {
            reason: crate::PresenceReason::Shutdown,
            ..p(boot, connection, false, 0)
        }
    }

    /// A presence with an unknown (newer agent's) reason.
    fn unknown(boot: u64, connection: u32, online: bool) -> Presence {
        Presence {
            reason: crate::PresenceReason::Unknown { code: 99 },
            ..p(boot, connection, online, 0)
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
            (
                &[(p(1, 1, true, 10), true), (a(1, 1), true)],
                "announcement of the live connection",
            ),
            (
                &[
                    (p(1, 1, true, 10), true),
                    (a(1, 1), true),
                    (p(1, 1, false, 10), false),
                ],
                "will after the announcement of the same connection",
            ),
            (
                &[
                    (p(1, 1, true, 10), true),
                    (p(1, 1, false, 10), true),
                    (a(1, 1), true),
                ],
                "announcement (record) after the will of its connection",
            ),
            (
                &[
                    (p(1, 2, true, 10), true),
                    (a(1, 2), true),
                    (p(1, 1, false, 10), false),
                ],
                "late will of an older connection vs a newer announcement",
            ),
            (
                &[(p(1, 1, true, 10), true), (a(1, 1), true), (a(1, 1), false)],
                "announcement seen again (retained, then record)",
            ),
            (
                &[(p(2, 1, true, 10), true), (a(1, 1), false)],
                "announcement of a boot that is not live",
            ),
            (
                &[
                    (p(1, 1, true, 10), true),
                    (p(2, 1, true, 10), true),
                    (a(1, 1), false),
                ],
                "announcement of a retired boot (replayed)",
            ),
            (
                &[
                    (p(1, 1, true, 10), true),
                    (a(1, 1), true),
                    (p(1, 2, true, 10), true),
                ],
                "off, then a new connection (resumed)",
            ),
            (
                &[
                    (unknown(1, 1, true), true),
                    (unknown(1, 1, false), true),
                    (a(1, 1), true),
                ],
                "unknown reasons rank as birth and will",
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
            Verdict::Ignored("departure of a boot that is not live")
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
        assert!(t.gone().is_some());
        // Records the collector already had, or of another boot, prove nothing.
        assert!(!t.record(BootId(7), 10));
        assert!(!t.record(BootId(7), 3));
        assert!(!t.record(BootId(8), 11));
        assert!(t.gone().is_some());
        // A newer record of the live boot does.
        assert!(t.record(BootId(7), 11));
        assert!(t.gone().is_none());
        assert!(!t.record(BootId(7), 12), "overruled once");
        // The forged will redelivered (retained) stays overruled...
        assert_ne!(t.presence(&forged, None), Verdict::Believed);
        assert!(t.gone().is_none());
        // ...but a real will of a later connection is believed again.
        assert_eq!(t.presence(&p(7, 2, false, 0), None), Verdict::Believed);
        assert!(t.gone().is_some());
        assert!(!t.record(BootId(7), 12), "no seq above the will's");
        assert!(t.record(BootId(7), 13));
    }

    #[test]
    fn a_restored_will_is_not_overruled_by_records_already_stored() {
        let mut t = PresenceTrack::restored(p(4, 2, false, 0), 100);
        assert!(!t.record(BootId(4), 100));
        assert!(!t.record(BootId(4), 57));
        assert!(t.gone().is_some());
        assert!(t.record(BootId(4), 101));
    }

    #[test]
    fn an_announcement_record_never_overrules_and_sets_the_seq_to_beat() {
        // Record after the retained copy: the departure is judged against
        // the record's seq, and older records that arrived in between (the
        // backlog sent before the announcement) do not overrule it.
        let mut t = PresenceTrack::default();
        t.presence(&p(3, 1, true, 0), None);
        assert!(!t.record(BootId(3), 4));
        assert_eq!(t.presence(&a(3, 1), None), Verdict::Believed);
        assert!(t.record(BootId(3), 6), "a record above what was known");
        assert!(t.gone().is_none());
        assert_eq!(t.announcement(&a(3, 1), 8, None), Verdict::Believed);
        assert!(
            t.gone().is_some(),
            "the record was older than the announcement"
        );
        assert!(!t.record(BootId(3), 7));
        assert!(!t.record(BootId(3), 8));
        assert!(t.record(BootId(3), 9), "newer than the announcement");
        assert!(t.gone().is_none());
        // An announcement record is not proof of being connected.
        let mut t = PresenceTrack::default();
        t.presence(&p(3, 1, true, 0), None);
        t.presence(&p(3, 1, false, 0), None);
        assert!(t.gone().is_some());
        assert_eq!(t.announcement(&a(3, 1), 50, None), Verdict::Believed);
        assert_eq!(t.current(), Some(&a(3, 1)));
        assert!(!t.record(BootId(3), 50));
        assert!(t.record(BootId(3), 51));
        // A record first, then its retained copy: one departure.
        let mut t = PresenceTrack::default();
        t.presence(&p(3, 1, true, 0), None);
        assert_eq!(t.announcement(&a(3, 1), 5, None), Verdict::Believed);
        assert_ne!(t.presence(&a(3, 1), None), Verdict::Believed);
        assert!(!t.record(BootId(3), 5));
        assert!(t.gone().is_some());
        // Replayed from a retired boot: ignored.
        t.presence(&p(4, 1, true, 0), None);
        assert_ne!(t.announcement(&a(3, 1), 99, None), Verdict::Believed);
        assert!(t.gone().is_none());
    }

    mod interleavings {
        use super::*;
        use proptest::prelude::*;

        fn any_presence() -> impl Strategy<Value = Presence> {
            (1u32..4, 0u8..6).prop_map(|(connection, r)| {
                use crate::PresenceReason as R;
                let reason = match r {
                    0 => R::Connected,
                    1 => R::Resumed { slept_ms: 5 },
                    2 => R::Lost,
                    3 => R::Shutdown,
                    4 => R::Sleep,
                    _ => R::Unknown { code: 99 },
                };
                Presence {
                    online: reason.is_online(),
                    boot: BootId(1),
                    connection,
                    at_ms: 0,
                    reason,
                }
            })
        }

        proptest! {
            /// Within one boot and without records, whatever the receive
            /// order, the believed presence is the newest one: the first
            /// received of the greatest (connection, birth < will <
            /// announcement).
            #[test]
            fn the_newest_presence_wins_in_any_order(
                ps in proptest::collection::vec(any_presence(), 1..12),
            ) {
                let mut t = PresenceTrack::default();
                for p in &ps {
                    t.presence(p, None);
                }
                let key = |p: &Presence| (p.connection, rank(p));
                let best = ps.iter().map(key).max().unwrap();
                let want = ps.iter().find(|p| key(p) == best).unwrap();
                prop_assert_eq!(t.current(), Some(want));
                // Off (announced) or lost depends only on that newest one.
                prop_assert_eq!(
                    t.gone().map(|p| p.reason.is_announced()),
                    (!want.online).then(|| want.reason.is_announced())
                );
            }
        }
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
