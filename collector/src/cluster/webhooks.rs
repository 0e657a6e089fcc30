//! Cluster mode's webhooks: sent once, by one collector, and surviving
//! restarts and takeovers.
//!
//! Contract:
//! * **One sender.** The coordinator, the holder of partition 0's lease,
//!   runs the notifier (`crate::notify`, unchanged: batching, retries,
//!   dead letters); the others run none. Leases are exclusive, so two
//!   notifiers overlap only while a paused holder has not yet noticed its
//!   lease is gone, and that one can no longer advance a cursor (below).
//! * **The queue is the store's event log**, in id order (ids commit in
//!   order: `crate::store::PgStore`). Per agency, `webhook_cursors` holds
//!   how far notifications are settled (delivered, or dead-lettered and
//!   counted). The coordinator feeds the notifier every event after its
//!   agency's cursor, and advances a cursor only in a transaction fenced by
//!   its partition-0 lease epoch (`super::pg::fence`): a stale coordinator
//!   is refused and stops.
//! * **Names.** A notification is `evt-<its first event id>`
//!   (`X-Muster-Delivery`), whichever collector sends it. At a takeover, the
//!   next coordinator sends again what was not settled: a receiver that
//!   dedups on the delivery id sees each notification once. (A window that
//!   closes differently the second time carries the same first event id.)
//! * **First start.** An agency with no cursor starts at the newest event
//!   then: history is not replayed as notifications (`/api/v1/events` has it).
//! * **Stopping** (the coordinator's lease lost, or shutdown): the notifier
//!   stops at once; what it had not settled is left to the next coordinator
//!   (not counted as dead letters).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::pg::{PgError, fence};
use crate::clock::SharedClock;
use crate::notify::{WebhookConfig, WebhookSender};
use crate::state::Shared;
use crate::store::{HeldEpochs, PgStore, Store};

/// The partition whose lease makes a collector the coordinator.
pub const COORDINATOR_PARTITION: u32 = 0;
/// How often the event log is read for the notifier.
const FEED_EVERY: Duration = Duration::from_millis(250);
/// Connecting to PostgreSQL, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events in the notifier's queue at most before the feed waits.
const FEED_QUEUE: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("store: {0}")]
    Store(String),
}

/// Runs until `stop`: the notifier while this collector is the coordinator.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    webhooks: BTreeMap<String, WebhookConfig>,
    store: Arc<PgStore>,
    held: Arc<HeldEpochs>,
    url: String,
    me: String,
    shared: Arc<Shared>,
    clock: SharedClock,
    stop: CancellationToken,
) {
    let mut wait = tokio::time::interval(Duration::from_secs(1));
    wait.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = wait.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(epoch) = held.get(COORDINATOR_PARTITION) else {
            continue;
        };
        info!(epoch, "Coordinator: sending webhooks.");
        let r = coordinate(
            &webhooks, &store, &held, &url, &me, epoch, &shared, &clock, &stop,
        )
        .await;
        match r {
            Ok(()) => info!(epoch, "No longer the coordinator: webhooks stopped."),
            Err(e) => warn!(error = %e, epoch, "Webhook coordinator stopped; retrying."),
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, WebhookError> {
    let (client, conn) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| WebhookError::Store("connecting to PostgreSQL timed out".into()))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The cursors, created at `start` for agencies that have none.
async fn cursors(
    c: &tokio_postgres::Client,
    agencies: impl Iterator<Item = &String>,
    start: u64,
) -> Result<BTreeMap<String, u64>, WebhookError> {
    let mut out = BTreeMap::new();
    for a in agencies {
        c.execute(
            "INSERT INTO webhook_cursors (agency, settled_upto) VALUES ($1, $2)
             ON CONFLICT (agency) DO NOTHING",
            &[a, &(start as i64)],
        )
        .await?;
        let row = c
            .query_one(
                "SELECT settled_upto FROM webhook_cursors WHERE agency = $1",
                &[a],
            )
            .await?;
        out.insert(a.clone(), row.get::<_, i64>(0).max(0) as u64);
    }
    Ok(out)
}

/// Advances an agency's cursor, fenced by the coordinator's lease.
async fn advance(
    c: &mut tokio_postgres::Client,
    me: &str,
    epoch: u64,
    agency: &str,
    upto: u64,
) -> Result<(), WebhookError> {
    let tx = c.transaction().await?;
    fence(&tx, COORDINATOR_PARTITION, me, epoch).await?;
    tx.execute(
        "UPDATE webhook_cursors SET settled_upto = greatest(settled_upto, $2) WHERE agency = $1",
        &[&agency, &(upto as i64)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn coordinate(
    webhooks: &BTreeMap<String, WebhookConfig>,
    store: &Arc<PgStore>,
    held: &HeldEpochs,
    url: &str,
    me: &str,
    epoch: u64,
    shared: &Arc<Shared>,
    clock: &SharedClock,
    stop: &CancellationToken,
) -> Result<(), WebhookError> {
    let mut client = connect(url).await?;
    let newest = {
        let s = Arc::clone(store);
        tokio::task::spawn_blocking(move || s.last_event_id())
            .await
            .map_err(|e| WebhookError::Store(e.to_string()))?
            .map_err(|e| WebhookError::Store(e.to_string()))?
    };
    let mut settled =
        tokio::time::timeout(CONNECT_TIMEOUT, cursors(&client, webhooks.keys(), newest))
            .await
            .map_err(|_| WebhookError::Store("reading webhook cursors timed out".into()))??;
    let mut pos = settled.values().copied().min().unwrap_or(newest);
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
    let (tx, rx) = broadcast::channel(FEED_QUEUE * 2);
    let sender = WebhookSender::new(webhooks, Arc::clone(shared), Arc::clone(clock))
        .map_err(|e| WebhookError::Store(e.to_string()))?
        .clustered(settled_tx);
    let stop_sender = CancellationToken::new();
    let task = tokio::spawn(sender.run(rx, stop_sender.clone(), Duration::ZERO));
    let mut feed = tokio::time::interval(FEED_EVERY);
    feed.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            Some((agency, upto)) = settled_rx.recv() => {
                match tokio::time::timeout(CONNECT_TIMEOUT, advance(&mut client, me, epoch, &agency, upto)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e),
                    Err(_) => break Err(WebhookError::Store("advancing a webhook cursor timed out".into())),
                }
                let s = settled.entry(agency).or_default();
                *s = (*s).max(upto);
            }
            _ = feed.tick() => {
                if held.get(COORDINATOR_PARTITION) != Some(epoch) {
                    break Ok(());
                }
                if tx.len() > FEED_QUEUE {
                    continue;
                }
                let s = Arc::clone(store);
                let from = pos;
                let events = tokio::task::spawn_blocking(move || s.events_after(from, 1_000))
                    .await
                    .map_err(|e| WebhookError::Store(e.to_string()))
                    .and_then(|r| r.map_err(|e| WebhookError::Store(e.to_string())));
                let events = match events {
                    Ok(e) => e,
                    Err(e) => break Err(e),
                };
                for ev in events {
                    pos = pos.max(ev.id);
                    if settled.get(ev.agency()).is_some_and(|s| ev.id > *s) {
                        let _ = tx.send(Arc::new(ev));
                    }
                }
            }
        }
    };
    stop_sender.cancel();
    let _ = task.await;
    result
}
