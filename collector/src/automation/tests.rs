//! Table tests of the automation machine: plain numbers for time.

use std::sync::Arc;

use muster_proto::{ActionRefusal, ActionStep, UnitId};

use super::*;
use crate::model::AutomationStep as StepKind;
use crate::rules::AutoRule;

const T0: u64 = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000 + 14 * 3_600_000 + 2 * 60_000; // 14:02Z
const MIN: u64 = 60_000;
const RULE: &str = "cad-client-down";

fn machine(max: &str) -> Machine {
    Machine::new([(
        Arc::<str>::from(RULE),
        AutoRule {
            action: "restart-cad-client".into(),
            max: muster_base::rate::Rate::parse(max).unwrap(),
            window_ms: 10 * MIN,
        },
    )])
}

fn unit() -> UnitId {
    UnitId::new("metro-fire", "E1").unwrap()
}

fn ok() -> ActionStep {
    ActionStep::Finished {
        exit_code: Some(0),
        timed_out: false,
        duration_ms: 800,
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// The steps, as (kind, summary), and whether an escalating annotation or a
/// request came out.
fn steps(out: &[Out]) -> Vec<(StepKind, String)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Event(s) => Some((s.step, s.summary.clone())),
            _ => None,
        })
        .collect()
}

fn requested(out: &[Out]) -> bool {
    out.iter().any(|o| matches!(o, Out::Request { .. }))
}

fn escalates(out: &[Out]) -> bool {
    out.iter()
        .any(|o| matches!(o, Out::Annotate { escalate: true, .. }))
}

fn note(out: &[Out]) -> Option<String> {
    out.iter().find_map(|o| match o {
        Out::Annotate { note, .. } => note.clone(),
        _ => None,
    })
}

#[test]
fn a_raise_requests_once_the_answer_joins_the_reason_and_a_clear_counts_as_helped() {
    let mut m = machine("1 per 1h");
    let u = unit();
    let out = m.raised(&u, RULE, T0);
    assert!(requested(&out));
    assert_eq!(
        steps(&out),
        vec![(
            StepKind::Requested,
            "restart-cad-client requested (1 of 1 per 1h)".into()
        )]
    );
    m.issued(&u, RULE, [1; 16]);
    assert_eq!(m.pending(), 1);
    // Started says nothing; another request's audit is not automation's.
    assert!(
        m.audit(&u, [1; 16], &ActionStep::Started, T0 + 100)
            .is_empty()
    );
    assert!(m.audit(&u, [9; 16], &ok(), T0 + 100).is_empty());
    let out = m.audit(&u, [1; 16], &ok(), T0 + 900);
    assert_eq!(
        note(&out).as_deref(),
        Some("auto: restart-cad-client at 14:02Z, exit 0")
    );
    assert!(!escalates(&out));
    assert_eq!(steps(&out)[0].0, StepKind::Succeeded);
    // The same audit again (it cannot come twice, but if it did): nothing.
    assert!(m.audit(&u, [1; 16], &ok(), T0 + 950).is_empty());
    let out = m.cleared(&u, RULE, T0 + MIN);
    assert_eq!(
        steps(&out),
        vec![(
            StepKind::Helped,
            "cleared 1m after restart-cad-client at 14:02Z".into()
        )]
    );
    // The window passes with nothing open: no escalation.
    assert!(m.tick(T0 + 11 * MIN).is_empty());
}

#[test]
fn a_second_raise_within_the_limit_escalates_instead_of_repeating() {
    let mut m = machine("1 per 1h");
    let u = unit();
    assert!(requested(&m.raised(&u, RULE, T0)));
    m.issued(&u, RULE, [1; 16]);
    m.audit(&u, [1; 16], &ok(), T0 + 1_000);
    m.cleared(&u, RULE, T0 + MIN);
    // 20 minutes later it crash-loops again.
    let out = m.raised(&u, RULE, T0 + 20 * MIN);
    assert!(!requested(&out), "{out:?}");
    assert!(escalates(&out));
    assert_eq!(
        steps(&out),
        vec![(
            StepKind::Escalated,
            "raised again; restart-cad-client already ran 14:02Z (auto_max 1 per 1h): escalated"
                .into()
        )]
    );
    // Escalated once: the window passing adds nothing.
    assert!(m.tick(T0 + 40 * MIN).is_empty());
    m.cleared(&u, RULE, T0 + 41 * MIN);
    // An hour after the first request, the limit allows one again.
    assert!(requested(&m.raised(&u, RULE, T0 + 61 * MIN)));
}

#[test]
fn a_flag_that_outlives_its_window_escalates_once() {
    let mut m = machine("3 per 1h");
    let u = unit();
    m.raised(&u, RULE, T0);
    m.issued(&u, RULE, [1; 16]);
    m.audit(&u, [1; 16], &ok(), T0 + 1_000);
    assert!(m.tick(T0 + 10 * MIN - 1).is_empty());
    let out = m.tick(T0 + 10 * MIN);
    assert!(escalates(&out));
    assert_eq!(
        steps(&out),
        vec![(
            StepKind::Escalated,
            "not cleared 10m after restart-cad-client at 14:02Z".into()
        )]
    );
    assert!(m.tick(T0 + 11 * MIN).is_empty());
    // Cleared after escalating: not "helped".
    assert!(m.cleared(&u, RULE, T0 + 12 * MIN).is_empty());
}

#[test]
fn failures_escalate_at_once_and_say_why() {
    let cases: Vec<(ActionStep, &str)> = vec![
        (
            ActionStep::Finished {
                exit_code: Some(3),
                timed_out: false,
                duration_ms: 5,
                stdout: String::new(),
                stderr: String::new(),
            },
            "restart-cad-client at 14:02Z: exit 3",
        ),
        (
            ActionStep::Finished {
                exit_code: None,
                timed_out: true,
                duration_ms: 30_000,
                stdout: String::new(),
                stderr: String::new(),
            },
            "restart-cad-client at 14:02Z: timed out",
        ),
        (
            ActionStep::Refused {
                reason: ActionRefusal::UnknownAction,
                detail: "no such action".into(),
            },
            "restart-cad-client at 14:02Z: refused (unknown_action)",
        ),
        (
            ActionStep::Failed {
                reason: "no such file".into(),
                duration_ms: 1,
            },
            "restart-cad-client at 14:02Z: failed: no such file",
        ),
    ];
    for (step, want) in cases {
        let mut m = machine("1 per 1h");
        let u = unit();
        m.raised(&u, RULE, T0);
        m.issued(&u, RULE, [1; 16]);
        let out = m.audit(&u, [1; 16], &step, T0 + 1_000);
        assert!(escalates(&out), "{want}");
        assert_eq!(
            steps(&out),
            vec![
                (StepKind::Failed, want.to_owned()),
                (StepKind::Escalated, want.to_owned())
            ]
        );
        assert_eq!(note(&out), Some(format!("auto: {want}")));
        assert!(m.tick(T0 + 30 * MIN).is_empty(), "{want}: escalated once");
    }
    // Not even sent.
    let mut m = machine("1 per 1h");
    let u = unit();
    m.raised(&u, RULE, T0);
    let out = m.issue_failed(&u, RULE, "the collector holds 1024 pending requests", T0);
    assert!(escalates(&out));
    assert_eq!(
        steps(&out).iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![StepKind::Failed, StepKind::Escalated]
    );
    // Sent, never answered: the window ends it.
    let mut m = machine("1 per 1h");
    m.raised(&u, RULE, T0);
    m.issued(&u, RULE, [2; 16]);
    let out = m.tick(T0 + 10 * MIN);
    assert_eq!(
        steps(&out).iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![StepKind::Failed, StepKind::Escalated]
    );
    assert_eq!(m.pending(), 0);
}

#[test]
fn the_kill_switch_suppresses_requests_and_survives_a_restart_with_the_limit() {
    let mut m = machine("1 per 1h");
    let u = unit();
    assert!(m.set_enabled("metro-fire", false));
    let out = m.raised(&u, RULE, T0);
    assert!(!requested(&out));
    assert_eq!(steps(&out)[0].0, StepKind::Suppressed);
    m.cleared(&u, RULE, T0 + MIN);
    m.set_enabled("metro-fire", true);
    assert!(requested(&m.raised(&u, RULE, T0 + 2 * MIN)));
    // Restarted: the request is remembered (the limit holds), the switch too.
    m.set_enabled("county-ems", false);
    let saved = m.persisted();
    let mut again = machine("1 per 1h");
    again.restore(serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap());
    assert!(!again.enabled("county-ems"));
    assert!(!requested(&again.raised(&u, RULE, T0 + 3 * MIN)));
    // Rules without automation, and unknown rules, are not its business.
    assert!(again.raised(&u, "cpu-high", T0).is_empty());
}

#[test]
fn tracks_are_forgotten_once_nothing_is_left_to_remember() {
    let mut m = machine("1 per 1h");
    for n in 0..50 {
        let u = UnitId::new("metro-fire", format!("E{n}")).unwrap();
        m.raised(&u, RULE, T0);
        m.cleared(&u, RULE, T0 + MIN);
    }
    assert_eq!(m.persisted().fired.len(), 50);
    m.tick(T0 + 61 * MIN);
    assert!(m.persisted().fired.is_empty());
    assert_eq!(m.pending(), 0);
}

#[test]
fn transitions_raise_and_clear_by_the_rules_present_and_only_the_unit_answers() {
    let mut m = machine("2 per 1h");
    let u = unit();
    let other = UnitId::new("metro-fire", "E2").unwrap();
    // Another rule's flag, then ours with it: ours raised once.
    assert!(m.transition(&u, ["cpu-high"], T0).is_empty());
    let out = m.transition(&u, ["cpu-high", RULE], T0);
    assert!(requested(&out));
    // The same set again (a note, another flag): nothing new.
    assert!(m.transition(&u, [RULE], T0 + 1).is_empty());
    m.issued(&u, RULE, [4; 16]);
    // Another unit answering this request is not heard.
    assert!(m.audit(&other, [4; 16], &ok(), T0 + 2).is_empty());
    assert_eq!(m.pending(), 1);
    assert_eq!(
        steps(&m.audit(&u, [4; 16], &ok(), T0 + 3))[0].0,
        StepKind::Succeeded
    );
    // Gone from the set: cleared (helped).
    let out = m.transition(&u, ["cpu-high"], T0 + MIN);
    assert_eq!(steps(&out)[0].0, StepKind::Helped);
    // Suppressed raises are raises too: clearing and raising again
    // under the switch does not request twice.
    m.set_enabled("metro-fire", false);
    assert_eq!(
        steps(&m.transition(&u, [RULE], T0 + 2 * MIN))[0].0,
        StepKind::Suppressed
    );
    assert!(
        m.transition(&u, [RULE, "cpu-high"], T0 + 3 * MIN)
            .is_empty()
    );
}

#[test]
fn a_replay_refusal_of_a_redelivered_request_is_not_the_outcome() {
    let mut m = machine("1 per 1h");
    let u = unit();
    m.raised(&u, RULE, T0);
    m.issued(&u, RULE, [1; 16]);
    // The request came twice (QoS 1 after a reconnect): the unit refuses
    // the second as replayed, maybe before the first finishes.
    let replayed = ActionStep::Refused {
        reason: ActionRefusal::Replayed,
        detail: "nonce seen".into(),
    };
    assert!(m.audit(&u, [1; 16], &replayed, T0 + 100).is_empty());
    let out = m.audit(&u, [1; 16], &ok(), T0 + 900);
    assert!(!escalates(&out), "{out:?}");
    assert_eq!(steps(&out)[0].0, StepKind::Succeeded);
}
