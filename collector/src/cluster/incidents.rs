//! Cluster mode's agency-wide incidents (`[rules.incidents]`): an agency's
//! units span partitions and collectors, so no owner sees a whole group;
//! the coordinator decides from what every owner stores.
//!
//! Contract:
//! * **Owners** keep each (agency, probe, target) group's members and
//!   expire them as a single node does (`rules::incident::Incidents`, shared
//!   mode), and store each held partition's share (units running the
//!   probe, which of them fail it, as of when) in their ordinary commits,
//!   fenced by that partition's lease (`ingest::worker`). A changed group
//!   is stored at the next tick, every non-empty one once per quarter
//!   window.
//! * **One decider.** The coordinator (the holder of partition 0's lease,
//!   as for webhooks and retention) tails the shares by rev
//!   ([`crate::store::PgStore::shares_changed_since`]) into a
//!   [`Board`], which sums a group's live shares and opens, updates or ends
//!   its incident with the single node's rule
//!   (`rules::incident::decide`). A share older than the window no longer
//!   counts (its owner stopped saying so).
//! * **Fenced.** Changed incidents and their events are one commit fenced
//!   on partition 0 ([`crate::store::PgStore::commit_fenced_on`]): a
//!   coordinator that lost its lease writes nothing. A new coordinator
//!   (or one whose commit failed) starts from the store: the open
//!   incidents and every share. An incident is never opened twice; one
//!   decided but not committed was not decided.
//! * **Everyone sees them.** Every collector's feed tails the event log
//!   (`node::tail_events`), so the incidents view, SSE and webhooks carry
//!   them; owners tag their units' health with the open incidents that
//!   name them (`Engine::tag_incidents`). The coordinator publishes the
//!   agency's incidents topic.
//! * **Stopping**: the loop ends at `stop`; nothing is held in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::webhooks::COORDINATOR_PARTITION;
use crate::clock::SharedClock;
use crate::ingest::worker::enqueue;
use crate::model::{Change, Incident};
use crate::rules::IncidentConfig;
use crate::rules::incident::Board;
use crate::state::Shared;
use crate::status_pub::{self, Out};
use crate::store::{CommitBatch, PgStore, Store, StoreError, StoredEvent};

/// How often shares are read and incidents decided.
pub const TICK: Duration = Duration::from_secs(1);
/// Shares read at once.
const PAGE: usize = 10_000;

/// The coordinator's state while it holds partition 0 at `epoch`.
struct Deciding {
    epoch: u64,
    board: Board,
    rev: i64,
}

/// Runs until `stop`: decides incidents while this collector is the
/// coordinator (module docs).
pub async fn run(
    cfg: IncidentConfig,
    store: Arc<PgStore>,
    shared: Arc<Shared>,
    clock: SharedClock,
    out: Option<mpsc::UnboundedSender<Out>>,
    stop: CancellationToken,
) {
    let held = store.leases();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state: Option<Deciding> = None;
    let mut failures = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(epoch) = held.get(COORDINATOR_PARTITION) else {
            if state.take().is_some() {
                info!("No longer the coordinator: incidents are decided elsewhere.");
            }
            continue;
        };
        let s = match state.take() {
            Some(s) if s.epoch == epoch => s,
            _ => {
                let (store, cfg) = (Arc::clone(&store), cfg.clone());
                match tokio::task::spawn_blocking(move || start(&store, cfg, epoch)).await {
                    Ok(Ok(s)) => {
                        info!(
                            open = s.board.open().count(),
                            "Coordinator: deciding agency-wide incidents."
                        );
                        s
                    }
                    Ok(Err(e)) => {
                        note_failure(&mut failures, &e);
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "Incident coordinator task failed.");
                        continue;
                    }
                }
            }
        };
        let now = clock.now_ms();
        let store2 = Arc::clone(&store);
        let r = tokio::task::spawn_blocking(move || round(&store2, s, now)).await;
        match r {
            Ok(Ok((s, changed))) => {
                failures = 0;
                publish(&shared, out.as_ref(), &s.board, &changed);
                state = Some(s);
            }
            // The board is dropped: the next tick starts from the store.
            Ok(Err(e)) => note_failure(&mut failures, &e),
            Err(e) => warn!(error = %e, "Incident coordinator task failed."),
        }
    }
}

/// A new coordinator's board: the store's open incidents and every share.
fn start(store: &PgStore, cfg: IncidentConfig, epoch: u64) -> Result<Deciding, StoreError> {
    let mut board = Board::new(cfg);
    for i in store.incidents()? {
        board.restore(i);
    }
    let mut s = Deciding {
        epoch,
        board,
        rev: 0,
    };
    read_shares(store, &mut s)?;
    Ok(s)
}

fn read_shares(store: &PgStore, s: &mut Deciding) -> Result<(), StoreError> {
    let board = &mut s.board;
    store.tail(&mut s.rev, PAGE, PgStore::shares_changed_since, |shares| {
        for sh in shares {
            board.share(sh);
        }
    })
}

/// One tick: new shares in, decisions out, committed fenced on partition 0.
fn round(
    store: &PgStore,
    mut s: Deciding,
    now_ms: u64,
) -> Result<(Deciding, Vec<Incident>), StoreError> {
    read_shares(store, &mut s)?;
    let mut changed = Vec::new();
    s.board.tick(now_ms, &mut changed);
    if !changed.is_empty() {
        let batch = CommitBatch {
            events: changed
                .iter()
                .map(|i| StoredEvent {
                    id: 0,
                    change: Change::Incident(i.clone()),
                })
                .collect(),
            incidents: changed.clone(),
            ..CommitBatch::default()
        };
        store.commit_fenced_on(&batch, COORDINATOR_PARTITION)?;
    }
    Ok((s, changed))
}

fn note_failure(failures: &mut u64, e: &StoreError) {
    *failures += 1;
    // Once, then once a minute of ticks: a store that is down fails every tick.
    if *failures == 1 || (*failures).is_multiple_of(60) {
        warn!(error = %e, failures = *failures, "Incident coordinator: could not read or commit; starting again from the store.");
    }
}

/// What a committed round changed: counted, logged, and each touched
/// agency's incidents topic published.
fn publish(
    shared: &Shared,
    out: Option<&mpsc::UnboundedSender<Out>>,
    board: &Board,
    changed: &[Incident],
) {
    let mut agencies: Vec<&str> = Vec::new();
    for i in changed {
        shared
            .metrics
            .transitions
            .incidents
            .fetch_add(1, Ordering::Relaxed);
        info!(id = %i.id, affected = i.affected.len(), of = i.of_units, ended = i.ended_ms.is_some(), "Incident changed.");
        if !agencies.contains(&i.agency.as_str()) {
            agencies.push(&i.agency);
        }
    }
    let Some(out) = out else { return };
    for agency in agencies {
        if let Some(o) = status_pub::agency_incidents(agency, board.open()) {
            enqueue(shared, out, o);
        }
    }
}
