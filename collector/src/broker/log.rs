//! rumqttd's log lines that are not errors.
//!
//! rumqttd 0.20 logs every ordinary client departure at ERROR: a client
//! that sends DISCONNECT gives `router-drop` and then, as the router
//! handles the disconnection twice, `no-connection id N is already gone`;
//! a client whose socket closes gives `disconnected` (a reset or an EOF).
//! Behind the gate every unit's session ends on one of those paths (an
//! end-of-shift shutdown, a car in a dead zone), so they are routine here:
//! the gate itself logs and counts what is wrong with a connection
//! (`muster_broker_refused_total`). [`RumqttdRoutine`] drops exactly these
//! three messages from the log; every other rumqttd line (bind failures,
//! `Error while handling MQTT connect packet`, `Router done!`...) stays
//! visible. [`is_routine`] is the pure decision.

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Is this rumqttd event (target, message) a routine client departure?
pub fn is_routine(target: &str, message: &str) -> bool {
    if target == "rumqttd::server::broker" {
        return matches!(message, "router-drop" | "disconnected");
    }
    if target == "rumqttd::router::routing" {
        return message.starts_with("no-connection id ") && message.ends_with(" is already gone");
    }
    false
}

/// A per-layer filter dropping rumqttd's routine departures (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct RumqttdRoutine;

struct MessageText(String);

impl Visit for MessageText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S> Filter<S> for RumqttdRoutine {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let target = event.metadata().target();
        if !target.starts_with("rumqttd::") {
            return true;
        }
        let mut m = MessageText(String::new());
        event.record(&mut m);
        !is_routine(target, &m.0)
    }
}

#[cfg(test)]
mod tests {
    use super::is_routine;

    #[test]
    fn only_routine_departures_are_dropped() {
        let b = "rumqttd::server::broker";
        let r = "rumqttd::router::routing";
        for (target, msg, routine) in [
            (b, "router-drop", true),
            (b, "disconnected", true),
            (r, "no-connection id 0 is already gone", true),
            (r, "no-connection id 1234 is already gone", true),
            (b, "Error while handling MQTT connect packet", false),
            (b, "Server error - V4", false),
            (b, "connection-stop", false),
            (b, "Remote link error", false),
            (r, "Router done!", false),
            (r, "no space for new connection", false),
            (r, "Connection is already disconnected", false),
            ("rumqttd::link::remote", "disconnected", false),
            ("muster_collector::broker", "router-drop", false),
        ] {
            assert_eq!(is_routine(target, msg), routine, "{target} {msg:?}");
        }
    }
}
