//! One test suite for every `Store` implementation: each store's tests
//! call these with a way to open it.

use std::path::Path;

use muster_proto::{Payload, UnitId, fixtures};

use super::*;
use crate::model::{Change, Status, Transition};

pub fn unit(a: &str, u: &str) -> UnitId {
    UnitId::new(a, u).unwrap()
}

pub fn transition(a: &str, u: &str, at_ms: u64) -> Change {
    Change::Transition(Transition {
        agency: a.into(),
        unit: u.into(),
        from: Status::Ok,
        to: Status::Degraded,
        at_ms,
        reasons: vec![],
    })
}

/// `u` with labels and facts, as a unit's facts record leaves them.
pub fn with_facts(mut u: UnitRecord) -> UnitRecord {
    u.facts = Some(KnownFacts {
        boot: muster_proto::BootId(u64::MAX - 1),
        seq: 3,
        at_ms: fixtures::AT_MS,
        facts: muster_proto::UnitFacts {
            labels: vec![
                muster_proto::Label {
                    key: "role".into(),
                    value: "patrol – night".into(),
                },
                muster_proto::Label {
                    key: "station".into(),
                    value: "7".into(),
                },
            ],
            agent_version: "0.1.0".into(),
            os: "Linux (Debian GNU/Linux 12)".into(),
            cad_version: Some("7.4.1".into()),
        },
    });
    u
}

/// Commit, drop, reopen; then samples page by cursor, latest, events by
/// agency and unit, and prune (`raw_pruned`: how many of the ten raw
/// records the store's prune removes at a cut-off after the third).
pub fn commit_survives_reopen_and_queries_page(
    open: impl Fn(&Path) -> Box<dyn Store>,
    raw_pruned: u64,
) {
    let dir = muster_testkit::TempDir::new().unwrap();
    let u = unit("metro-fire", "E12");
    {
        let s = open(dir.path());
        let mut batch = CommitBatch::default();
        for seq in 1..=10 {
            let rec = fixtures::record(seq, Payload::Host(fixtures::host_sample()));
            batch.samples.push((u.clone(), rec));
        }
        batch.units.push(with_facts(UnitRecord::new(u.clone(), 5)));
        batch.events = (1..=5)
            .map(|id| StoredEvent {
                id,
                change: transition(if id % 2 == 0 { "a" } else { "b" }, "E1", id * 10),
            })
            .collect();
        s.commit(&batch).unwrap();
    }
    let s = open(dir.path());
    let units = s.load_units().unwrap();
    assert_eq!(units.len(), 1);
    // The unit's labels and facts are kept with it (issue 16).
    assert_eq!(
        units[0].facts,
        with_facts(UnitRecord::new(u.clone(), 5)).facts
    );
    assert_eq!(units[0].labels().len(), 2);
    assert_eq!(s.last_event_id().unwrap(), 5);
    let q = SampleQuery {
        since_ms: 0,
        until_ms: u64::MAX,
        after: None,
        limit: 4,
    };
    let (page1, c) = s.samples(&u, q).unwrap();
    assert_eq!(
        page1.iter().map(|x| x.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let c = SampleCursor::decode(&c.unwrap().encode()).unwrap();
    let (page2, _) = s
        .samples(
            &u,
            SampleQuery {
                after: Some(c),
                ..q
            },
        )
        .unwrap();
    assert_eq!(
        page2.iter().map(|x| x.seq).collect::<Vec<_>>(),
        [5, 6, 7, 8]
    );
    // since filters by event time.
    let since = fixtures::AT_MS + 9 * 5_000;
    let (tail, more) = s
        .samples(
            &u,
            SampleQuery {
                since_ms: since,
                ..q
            },
        )
        .unwrap();
    assert_eq!(tail.iter().map(|x| x.seq).collect::<Vec<_>>(), [9, 10]);
    assert!(more.is_none());
    let latest = s.latest(&u).unwrap();
    assert_eq!(latest.host.unwrap().seq, 10);

    let evq = |agency: Option<&str>, before_id, limit| EventQuery {
        agency: agency.map(str::to_owned),
        unit: None,
        before_id,
        limit,
    };
    let (all, more) = s.events(&evq(None, None, 3)).unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [5, 4, 3]);
    assert!(more);
    let (a, more) = s.events(&evq(Some("a"), None, 10)).unwrap();
    assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 2]);
    assert!(!more);
    let (b, _) = s.events(&evq(Some("b"), Some(5), 10)).unwrap();
    assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 1]);

    let st = s.prune(fixtures::AT_MS + 3 * 5_000, 25).unwrap();
    assert_eq!(st.samples, raw_pruned);
    assert_eq!(st.events, 2);
    let (a, _) = s.events(&evq(Some("a"), None, 10)).unwrap();
    assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), [4]);
}
