//! What a message from the broker is: pure and allocation-light, run on the
//! MQTT task so that decoding is off the ingest worker (which owns the
//! rules, the seq accounting and the group commit).
//!
//! Contract: [`parse`] never panics; it either names the unit, the topic
//! kind, the wire version and the body, or says why the message is refused
//! (a [`Refusal`] and a one-line detail naming the topic). A payload whose
//! unit differs from its topic's is `Spoofed`; a body of the wrong kind for
//! its topic is `UnexpectedBody`.

use muster_proto::{Body, Topic, TopicKind, UnitId};

use super::refusal::Refusal;

/// A message that decoded and belongs on its topic.
#[derive(Debug)]
pub struct Parsed {
    pub unit: UnitId,
    pub kind: TopicKind,
    /// Wire schema version the unit spoke.
    pub version: u8,
    pub body: Body,
}

/// Why a message is refused, for the worker to count and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub topic: String,
    pub detail: String,
}

fn refused(reason: Refusal, topic: &str, detail: impl ToString) -> Refused {
    Refused {
        reason,
        topic: topic.to_owned(),
        detail: detail.to_string(),
    }
}

pub fn body_name(b: &Body) -> &'static str {
    match b {
        Body::Record(_) => "record",
        Body::Batch(_) => "batch",
        Body::Ack(_) => "ack",
        Body::Presence(_) => "presence",
    }
}

/// Topic and payload as the broker delivered them.
pub fn parse(topic: &[u8], payload: &[u8]) -> Result<Parsed, Refused> {
    let Ok(topic_s) = std::str::from_utf8(topic) else {
        return Err(refused(
            Refusal::BadTopic,
            "<not utf-8>",
            "topic is not UTF-8",
        ));
    };
    let topic = match Topic::parse(topic_s) {
        Ok(t) if matches!(t.kind, TopicKind::Telemetry | TopicKind::State) => t,
        Ok(t) => {
            return Err(refused(
                Refusal::BadTopic,
                topic_s,
                format!("kind {}", t.kind.as_str()),
            ));
        }
        Err(e) => return Err(refused(Refusal::BadTopic, topic_s, e)),
    };
    let decoded = muster_proto::decode(payload)
        .map_err(|e| refused(Refusal::from_decode(&e), topic_s, &e))?;
    let unit = decoded.message.unit;
    if unit != topic.unit {
        return Err(refused(
            Refusal::Spoofed,
            topic_s,
            format!("payload says {unit}"),
        ));
    }
    let body = decoded.message.body;
    let fits = matches!(
        (topic.kind, &body),
        (TopicKind::Telemetry, Body::Record(_) | Body::Batch(_))
            | (TopicKind::State, Body::Presence(_))
    );
    if !fits {
        return Err(refused(
            Refusal::UnexpectedBody,
            topic_s,
            format!("{} body", body_name(&body)),
        ));
    }
    Ok(Parsed {
        unit,
        kind: topic.kind,
        version: decoded.version,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::{Message, Payload, PresenceReason, encode, fixtures, topic::unit_topic};

    fn unit(u: &str) -> UnitId {
        UnitId::new("metro-fire", u).unwrap()
    }

    fn msg(u: &str, body: Body) -> Vec<u8> {
        encode(&Message {
            unit: unit(u),
            body,
        })
        .unwrap()
    }

    #[test]
    fn each_message_is_parsed_or_refused_for_its_reason() {
        let tele = unit_topic(&unit("E1"), TopicKind::Telemetry);
        let state = unit_topic(&unit("E1"), TopicKind::State);
        let ack = unit_topic(&unit("E1"), TopicKind::Ack);
        let record = || Body::Record(fixtures::record(1, Payload::Host(fixtures::host_sample())));
        let presence = || Body::Presence(fixtures::presence(true, PresenceReason::Connected));
        type Case<'a> = (&'a str, &'a [u8], Vec<u8>, Result<TopicKind, Refusal>);
        let cases: Vec<Case> = vec![
            (
                "record",
                tele.as_bytes(),
                msg("E1", record()),
                Ok(TopicKind::Telemetry),
            ),
            (
                "presence",
                state.as_bytes(),
                msg("E1", presence()),
                Ok(TopicKind::State),
            ),
            (
                "not utf-8",
                b"\xff\xfe",
                msg("E1", record()),
                Err(Refusal::BadTopic),
            ),
            (
                "ack topic",
                ack.as_bytes(),
                msg("E1", record()),
                Err(Refusal::BadTopic),
            ),
            (
                "foreign topic",
                b"a/b/c",
                msg("E1", record()),
                Err(Refusal::BadTopic),
            ),
            (
                "garbage",
                tele.as_bytes(),
                vec![2, 0xff, 0xff],
                Err(Refusal::Malformed),
            ),
            ("empty", tele.as_bytes(), vec![], Err(Refusal::Malformed)),
            (
                "spoofed",
                tele.as_bytes(),
                msg("E2", record()),
                Err(Refusal::Spoofed),
            ),
            (
                "presence on telemetry",
                tele.as_bytes(),
                msg("E1", presence()),
                Err(Refusal::UnexpectedBody),
            ),
            (
                "record on state",
                state.as_bytes(),
                msg("E1", record()),
                Err(Refusal::UnexpectedBody),
            ),
        ];
        for (name, topic, payload, want) in cases {
            let got = parse(topic, &payload).map(|p| p.kind).map_err(|r| r.reason);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_refusal_names_the_topic_and_what_was_wrong() {
        let tele = unit_topic(&unit("E1"), TopicKind::Telemetry);
        let r = parse(
            tele.as_bytes(),
            &msg(
                "E2",
                Body::Record(fixtures::record(1, Payload::Host(fixtures::host_sample()))),
            ),
        )
        .unwrap_err();
        assert_eq!(r.topic, tele);
        assert_eq!(r.detail, "payload says metro-fire/E2");
    }
}
