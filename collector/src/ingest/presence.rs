//! Ordering of presence messages (the agent's retained birth and its MQTT
//! will). Pure. A late will of an older connection must not override a newer
//! birth: within one boot the connection number orders them; across boots
//! (the agent restarted, new random boot id) the event time does.

use muster_proto::Presence;

/// Whether `new` replaces `current` as the unit's presence.
pub fn supersedes(current: Option<&Presence>, new: &Presence) -> bool {
    let Some(c) = current else {
        return true;
    };
    if c.boot == new.boot {
        // Same connection: its will (offline) comes after its birth.
        (new.connection, !new.online) > (c.connection, !c.online)
    } else {
        new.at_ms > c.at_ms || (new.at_ms == c.at_ms && new.boot > c.boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::BootId;

    fn p(boot: u64, connection: u32, online: bool, at_ms: u64) -> Presence {
        Presence {
            online,
            boot: BootId(boot),
            connection,
            at_ms,
        }
    }

    #[test]
    fn ordering_table() {
        let cases: &[(Option<Presence>, Presence, bool, &str)] = &[
            (None, p(1, 1, true, 10), true, "first presence"),
            (
                Some(p(1, 1, true, 10)),
                p(1, 1, false, 10),
                true,
                "will of the same connection",
            ),
            (
                Some(p(1, 2, true, 20)),
                p(1, 1, false, 10),
                false,
                "late will of an older connection",
            ),
            (
                Some(p(1, 1, false, 10)),
                p(1, 2, true, 20),
                true,
                "reconnect",
            ),
            (
                Some(p(1, 2, true, 20)),
                p(1, 2, true, 20),
                false,
                "retained birth seen again",
            ),
            (
                Some(p(1, 2, false, 20)),
                p(1, 2, true, 20),
                false,
                "birth after its own will",
            ),
            (
                Some(p(1, 5, true, 20)),
                p(2, 1, true, 30),
                true,
                "agent restarted: new boot",
            ),
            (
                Some(p(2, 1, true, 30)),
                p(1, 5, false, 20),
                false,
                "old boot's will after a restart",
            ),
        ];
        for (cur, new, want, what) in cases {
            assert_eq!(supersedes(cur.as_ref(), new), *want, "{what}");
        }
    }
}
