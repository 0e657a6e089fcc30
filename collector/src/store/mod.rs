//! Durable state: the unit registry with each unit's current state and seq
//! accounting, status transitions, incidents, recent samples and unit
//! enrolments. Behind the
//! [`Store`] trait so a shared database can replace the embedded sled one
//! ([`SledStore`]) for several collectors.
//!
//! Contract: [`Store::commit`] returns only once everything in the batch is
//! durable; ingest acks records to agents only after that.

pub mod block;
mod fjall_store;
mod keys;
mod pg_store;
pub mod rollup;
mod sled_store;
#[cfg(test)]
mod suite;

pub use fjall_store::{FjallStore, journal_bytes, write_buffer_bytes};
pub use pg_store::{HeldEpochs, PgStore, PgStoreOptions};
pub use sled_store::SledStore;

use muster_proto::{AgentStatus, BootId, Label, Payload, Presence, Record, UnitFacts, UnitId};
use serde::{Deserialize, Serialize};

pub use crate::actions::StoredAction;
use crate::enroll::registry::Enrollment;
use crate::model::{Change, Incident, UnitHealth};
use crate::rules::incident::IncidentShare;
use crate::seq::SeqAccount;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(sled::Error),
    #[error("fjall: {0}")]
    Fjall(#[from] fjall::Error),
    #[error("corrupt entry in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("invalid cursor")]
    Cursor,
    #[error("store task failed: {0}")]
    Task(String),
    /// The PostgreSQL store (`PgStore`): a database or connection error,
    /// or a timeout.
    #[error("postgres: {0}")]
    Postgres(String),
    /// A commit touched a partition this collector does not hold (`epoch`
    /// `None`), or no longer holds at `epoch`; nothing was written.
    #[error("partition {partition} is not held (epoch {epoch:?}): write refused")]
    Fenced { partition: u32, epoch: Option<u64> },
    #[error("{0}")]
    Partition(#[from] crate::cluster::partition::PartitionError),
}

/// A unit in the registry, with everything the collector must remember
/// about it across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    pub unit: UnitId,
    /// Collector time (unix ms) the unit was first heard of.
    pub first_seen_ms: u64,
    /// Collector time of the unit's last message of any kind.
    pub last_seen_ms: u64,
    /// Event time of the unit's newest record.
    pub last_at_ms: Option<u64>,
    pub health: UnitHealth,
    pub presence: Option<Presence>,
    pub seq: SeqAccount,
    /// The agent's sampling interval, from its host samples or heartbeat.
    pub interval_ms: Option<u32>,
    /// The agent's latest heartbeat (version, backlog, drops...).
    pub agent: Option<AgentStatus>,
    /// Wire schema version the unit last spoke (acks answer in it).
    pub wire_version: u8,
    /// The unit's newest labels and facts (issue 16), and which record
    /// said them; `None` before its first facts record. Stored with the
    /// unit, so a restart, or another collector in cluster mode, knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<KnownFacts>,
    /// The unit's configuration as it last reported it (issue 16), and
    /// its last step about its own document: what a rollout waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<KnownConfig>,
}

/// What a unit's `Payload::Config` records said, newest by event time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KnownConfig {
    /// Event time of the newest record.
    pub at_ms: u64,
    /// SHA-256 of the effective configuration, hex.
    pub running: String,
    /// The versions of the documents it runs.
    pub running_agency: Option<u64>,
    pub running_unit: Option<u64>,
    /// The newest step about the unit's own document: its version, state
    /// (`applying`, `applied`, `failed`, `refused`, `rolled_back`) and
    /// reason.
    pub unit_step: Option<(u64, String, Option<String>)>,
    pub unit_step_at_ms: u64,
}

impl KnownConfig {
    /// Folds in a record with event time `at_ms` (older ones than what is
    /// known change nothing: a buffer replayed late does not turn a unit
    /// back). Pure.
    pub fn update(known: &mut Option<KnownConfig>, at_ms: u64, s: &muster_proto::ConfigStatus) {
        let k = known.get_or_insert_with(KnownConfig::default);
        if at_ms >= k.at_ms {
            k.at_ms = at_ms;
            k.running = muster_proto::sign::hex_of(&s.running);
            k.running_agency = s.running_agency.map(|d| d.version);
            k.running_unit = s.running_unit.map(|d| d.version);
        }
        if let Some((muster_proto::DocScopeKind::Unit, d)) = &s.doc
            && at_ms >= k.unit_step_at_ms
        {
            let reason = match &s.state {
                muster_proto::ConfigState::Failed { reason }
                | muster_proto::ConfigState::RolledBack { reason } => Some(reason.clone()),
                muster_proto::ConfigState::Refused { detail, .. } => Some(detail.clone()),
                _ => None,
            };
            k.unit_step = Some((d.version, s.state.as_str().to_owned(), reason));
            k.unit_step_at_ms = at_ms;
        }
    }
}

/// A unit's newest `Payload::Facts` record: which one it was (the rules
/// engine orders them, `Engine::newest_facts`) and what it said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownFacts {
    pub boot: BootId,
    pub seq: u64,
    /// Event time of the record (the agent's clock).
    pub at_ms: u64,
    pub facts: UnitFacts,
}

impl UnitRecord {
    pub fn new(unit: UnitId, now_ms: u64) -> Self {
        UnitRecord {
            unit,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            last_at_ms: None,
            health: UnitHealth::ok(now_ms),
            presence: None,
            seq: SeqAccount::default(),
            interval_ms: None,
            agent: None,
            wire_version: muster_proto::SCHEMA_VERSION,
            facts: None,
            config: None,
        }
    }

    /// The labels the unit last reported (none before its first facts).
    pub fn labels(&self) -> &[Label] {
        self.facts.as_ref().map_or(&[], |f| &f.facts.labels)
    }

    /// Is the unit connected, as far as the collector believes? Its
    /// presence says so, unless that presence is a departure (will or
    /// announcement) that newer records overruled (the engine then raises
    /// no `lost.will`, `off` or `overdue`).
    pub fn online(&self) -> Option<bool> {
        self.presence.map(|p| {
            let departed = self.health.reasons.iter().any(|r| {
                matches!(
                    r.rule.as_str(),
                    "lost.will" | "offline.will" | "off" | "overdue"
                ) || (r.rule == "lost.stale" && p.reason.is_announced())
            });
            p.online || !departed
        })
    }

    /// A stored presence from before schema v2 has no reason, which reads
    /// as `Lost`: an online one is a birth (`Connected`).
    pub fn upgrade_presence(&mut self) {
        if let Some(p) = &mut self.presence
            && p.online
            && p.reason == muster_proto::PresenceReason::Lost
        {
            p.reason = muster_proto::PresenceReason::Connected;
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub boot: BootId,
    pub seq: u64,
    pub at_ms: u64,
    pub payload: Payload,
}

/// A stored change with its feed-wide id (ids grow; the SSE stream uses them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: u64,
    pub change: Change,
}

impl StoredEvent {
    pub fn agency(&self) -> &str {
        match &self.change {
            Change::Transition(t) => &t.agency,
            Change::Incident(i) => &i.agency,
            Change::Rollout(r) => &r.agency,
            Change::Automation(a) => &a.agency,
        }
    }
}

/// One group commit.
#[derive(Debug, Default)]
pub struct CommitBatch {
    pub samples: Vec<(UnitId, Record)>,
    pub events: Vec<StoredEvent>,
    pub incidents: Vec<Incident>,
    pub units: Vec<UnitRecord>,
    /// Cluster mode only (the PostgreSQL store; the others ignore them):
    /// the partitions' shares of agency-wide incident groups
    /// (`rules::incident::Board`), fenced like the units they count.
    pub shares: Vec<IncidentShare>,
    /// Single node only (the embedded store; the others ignore them):
    /// action steps (`crate::actions`), with ids from the events' sequence.
    pub actions: Vec<StoredAction>,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
            && self.events.is_empty()
            && self.actions.is_empty()
            && self.incidents.is_empty()
            && self.units.is_empty()
            && self.shares.is_empty()
    }
}

/// What a prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneStats {
    pub samples: u64,
    pub events: u64,
    pub incidents: u64,
}

/// What one retention round did (`Store::retain`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetainStats {
    /// Minute rollups written (merged from what `commit` folded, or
    /// rebuilt from raw).
    pub minutes_rolled: u64,
    /// Of those, rebuilt from raw records (see `FjallStore`'s docs).
    pub minutes_from_raw: u64,
    /// Hour rollups written.
    pub hours_rolled: u64,
    pub samples_pruned: u64,
    pub minutes_pruned: u64,
    pub hours_pruned: u64,
}

/// Where a sample listing continues: after this (at_ms, boot, seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleCursor {
    pub at_ms: u64,
    pub boot: u64,
    pub seq: u64,
}

impl SampleCursor {
    pub fn encode(&self) -> String {
        format!("{:x}.{:x}.{:x}", self.at_ms, self.boot, self.seq)
    }

    /// Three dot-separated runs of 1 to 16 hex digits (no sign).
    pub fn decode(s: &str) -> Result<Self, StoreError> {
        let mut it = s.split('.').map(|p| {
            if (1..=16).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit()) {
                u64::from_str_radix(p, 16).map_err(|_| ())
            } else {
                Err(())
            }
        });
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(Ok(at_ms)), Some(Ok(boot)), Some(Ok(seq)), None) => {
                Ok(SampleCursor { at_ms, boot, seq })
            }
            _ => Err(StoreError::Cursor),
        }
    }
}

/// A query over samples of one unit.
#[derive(Debug, Clone, Copy)]
pub struct SampleQuery {
    pub since_ms: u64,
    pub until_ms: u64,
    pub after: Option<SampleCursor>,
    pub limit: usize,
}

/// A query over stored events, newest first.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Only this agency's events (`None`: all, for the admin).
    pub agency: Option<String>,
    /// Only this unit's transitions.
    pub unit: Option<UnitId>,
    /// Only ids below this (the cursor).
    pub before_id: Option<u64>,
    pub limit: usize,
}

/// A query over logged action steps, newest first.
#[derive(Debug, Clone)]
pub struct ActionQuery {
    /// Only this agency's steps (`None`: all, for the admin).
    pub agency: Option<String>,
    /// Only this unit's.
    pub unit: Option<UnitId>,
    /// Only ids below this (the cursor).
    pub before_id: Option<u64>,
    /// Only steps logged at or after this (collector clock); the listing
    /// stops at the first older one (ids grow with the collector's clock).
    pub since_ms: u64,
    pub limit: usize,
}

/// The unit's newest data, for the unit detail view.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    pub host: Option<StoredSample>,
    /// Newest result of each probe, by probe name.
    pub probes: Vec<StoredSample>,
    pub status: Option<StoredSample>,
}

pub trait Store: Send + Sync + 'static {
    /// Every unit in the registry.
    fn load_units(&self) -> Result<Vec<UnitRecord>, StoreError>;
    /// The highest event id stored (0 when none).
    fn last_event_id(&self) -> Result<u64, StoreError>;
    /// Writes the batch and makes it durable before returning.
    fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError>;
    /// Samples of a unit in event-time order, at most `limit`; with the
    /// cursor to continue from when more remain.
    fn samples(
        &self,
        unit: &UnitId,
        q: SampleQuery,
    ) -> Result<(Vec<StoredSample>, Option<SampleCursor>), StoreError>;
    fn latest(&self, unit: &UnitId) -> Result<Latest, StoreError>;
    /// Events newest first, and whether more remain.
    fn events(&self, q: &EventQuery) -> Result<(Vec<StoredEvent>, bool), StoreError>;
    /// Every stored incident (open, and ended within retention).
    fn incidents(&self) -> Result<Vec<Incident>, StoreError>;
    /// Drops samples with event time before `samples_before_ms`, and events
    /// and ended incidents before `events_before_ms`.
    fn prune(
        &self,
        samples_before_ms: u64,
        events_before_ms: u64,
    ) -> Result<PruneStats, StoreError>;
    /// One retention round (`rollup` module docs): rolls every minute that
    /// got records since it was last rolled (and their hours), then drops
    /// raw records, minute and hour rollups older than `cut`. In the fjall
    /// store each unit's round is one atomic batch; `PgStore`'s transactions
    /// are bounded batches of minutes, each leaving its hours consistent.
    fn retain(&self, cut: &rollup::Cutoffs) -> Result<RetainStats, StoreError>;
    /// A unit's rollups at `res` with start in `since_ms..=until_ms`, oldest
    /// first, at most `limit`, and whether more remain.
    fn rollups(
        &self,
        unit: &UnitId,
        res: rollup::Resolution,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<(Vec<rollup::Rollup>, bool), StoreError>;
    /// Bytes the store takes on disk.
    fn size_on_disk(&self) -> u64;
    /// Every unit enrolment (`crate::enroll`).
    fn load_enrollments(&self) -> Result<Vec<Enrollment>, StoreError>;
    /// Writes one enrolment (replacing the unit's previous one) and makes it
    /// durable before returning.
    fn put_enrollment(&self, e: &Enrollment) -> Result<(), StoreError>;
    /// Action steps newest first, and whether more remain. Stores that keep
    /// none (cluster mode's: actions are single-node) have none.
    fn actions(&self, _q: &ActionQuery) -> Result<(Vec<StoredAction>, bool), StoreError> {
        Ok((Vec::new(), false))
    }
    /// Action steps with ids above `after_id`, oldest first, at most
    /// `limit` (the audit file follows the store with it).
    fn actions_after(
        &self,
        _after_id: u64,
        _limit: usize,
    ) -> Result<Vec<StoredAction>, StoreError> {
        Ok(Vec::new())
    }
}

/// One retention round at `now_ms` (the prune task's, and the retention
/// tests'): rolls up and drops rollups and raw records by `retention`
/// (`Store::retain`), then drops events and ended incidents older than
/// `event_retention`.
pub fn retention_round(
    store: &dyn Store,
    now_ms: u64,
    retention: &rollup::Retention,
    event_retention: std::time::Duration,
) -> Result<(RetainStats, PruneStats), StoreError> {
    let cut = rollup::cutoffs(now_ms, retention);
    let r = store.retain(&cut)?;
    let events_before = now_ms.saturating_sub(event_retention.as_millis() as u64);
    let st = store.prune(cut.raw_before, events_before)?;
    Ok((r, st))
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::PresenceReason;

    /// A unit stored by an earlier build has no `facts`; one without facts
    /// is written without the key (the record stays as it was).
    #[test]
    fn facts_are_optional_in_a_stored_unit() {
        let u = UnitRecord::new(UnitId::new("metro-fire", "E1").unwrap(), 1);
        let json = serde_json::to_value(&u).unwrap();
        assert!(json.get("facts").is_none(), "{json}");
        let back: UnitRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.facts, None);
        assert!(back.labels().is_empty());
        let with = super::suite::with_facts(u);
        let back: UnitRecord = serde_json::from_slice(&serde_json::to_vec(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }

    /// What a rollout waits for: a unit's newest configuration, and its
    /// newest step about its own document, each by event time.
    #[test]
    fn known_config_keeps_the_newest_by_event_time() {
        use muster_proto::{ConfigState, ConfigStatus, DocRef, DocScopeKind, RefusalReason};
        let st = |doc: Option<(DocScopeKind, u64)>, state: ConfigState, unit: Option<u64>| {
            ConfigStatus {
                doc: doc.map(|(k, v)| {
                    (
                        k,
                        DocRef {
                            version: v,
                            hash: [1; 32],
                        },
                    )
                }),
                state,
                running: [unit.unwrap_or(0) as u8; 32],
                running_agency: None,
                running_unit: unit.map(|v| DocRef {
                    version: v,
                    hash: [2; 32],
                }),
            }
        };
        let mut k = None;
        KnownConfig::update(&mut k, 10, &st(None, ConfigState::Applied, None));
        assert_eq!(k.as_ref().unwrap().unit_step, None);
        KnownConfig::update(
            &mut k,
            20,
            &st(Some((DocScopeKind::Unit, 3)), ConfigState::Applied, Some(3)),
        );
        let refused = ConfigState::Refused {
            reason: RefusalReason::OldVersion,
            detail: "old".into(),
        };
        // An agency document's step leaves the unit's step alone.
        KnownConfig::update(
            &mut k,
            30,
            &st(Some((DocScopeKind::Agency, 9)), refused.clone(), Some(3)),
        );
        let now = k.clone().unwrap();
        assert_eq!((now.at_ms, now.running_unit), (30, Some(3)));
        assert_eq!(now.unit_step, Some((3, "applied".into(), None)));
        // A record replayed late (older event time) changes nothing.
        KnownConfig::update(
            &mut k,
            15,
            &st(Some((DocScopeKind::Unit, 2)), refused, Some(2)),
        );
        assert_eq!(k.clone().unwrap(), now);
        KnownConfig::update(
            &mut k,
            40,
            &st(
                Some((DocScopeKind::Unit, 4)),
                ConfigState::RolledBack {
                    reason: "no ack".into(),
                },
                Some(3),
            ),
        );
        let k = k.unwrap();
        assert_eq!(
            k.unit_step,
            Some((4, "rolled_back".into(), Some("no ack".into())))
        );
        assert_eq!(k.running, muster_proto::sign::hex_of(&[3; 32]));
    }

    /// A unit stored before schema v2: its presence has no `reason`.
    #[test]
    fn a_presence_stored_before_v2_reads_by_its_online_flag() {
        for (online, want) in [
            (true, PresenceReason::Connected),
            (false, PresenceReason::Lost),
        ] {
            let mut u = UnitRecord::new(UnitId::new("metro-fire", "E1").unwrap(), 1);
            u.presence = Some(Presence {
                online,
                boot: BootId(7),
                connection: 2,
                at_ms: 5,
                reason: PresenceReason::Sleep,
            });
            let mut json: serde_json::Value = serde_json::to_value(&u).unwrap();
            json["presence"].as_object_mut().unwrap().remove("reason");
            let mut back: UnitRecord = serde_json::from_value(json).unwrap();
            back.upgrade_presence();
            assert_eq!(back.presence.unwrap().reason, want, "online {online}");
        }
    }
}
