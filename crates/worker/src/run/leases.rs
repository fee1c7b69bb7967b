//! Beside a batch: lease renewals and cancellation polls; beside the worker: heartbeats.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use huaxian_queue::{Claimed, DispatchError, Dispatcher};
use huaxian_store::{JobState, Store, StoreError};
use tracing::{debug, warn};
use uuid::Uuid;

use super::CANCEL_POLL;
use crate::control::{Control, Stop};
use crate::metrics::{MemorySource, Metrics};

/// Renews the leases of the jobs in hand and polls for cancellations, stopping a job's
/// control when either says it must stop. Runs until aborted.
pub(super) async fn watch_jobs(
    dispatcher: Dispatcher,
    worker: String,
    claimed: Vec<Claimed>,
    controls: Vec<Arc<Control>>,
    lease: Duration,
) {
    let renew_every = lease / 3;
    let mut next_renew = Instant::now() + renew_every;
    loop {
        tokio::time::sleep(CANCEL_POLL).await;
        let live: Vec<usize> = (0..claimed.len())
            .filter(|i| controls[*i].stopped().is_none())
            .collect();
        if live.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = live.iter().map(|i| claimed[*i].ticket.job_id).collect();
        // Bounded, so a slow Redis never delays the lease renewals below.
        match tokio::time::timeout(CANCEL_POLL, dispatcher.cancelled(&ids))
            .await
            .unwrap_or_else(|_| Err(DispatchError::Timeout))
        {
            Ok(flags) => {
                for (i, cancelled) in live.iter().zip(flags) {
                    if cancelled {
                        controls[*i].stop(Stop::Cancelled);
                    }
                }
            }
            Err(error) => debug!(%error, "cancel poll failed; the lease renewal still fences"),
        }

        if Instant::now() < next_renew {
            continue;
        }
        next_renew = Instant::now() + renew_every;
        for i in live {
            if controls[i].stopped().is_some() {
                continue;
            }
            match dispatcher.renew(&worker, &claimed[i]).await {
                Ok(()) => {}
                Err(DispatchError::Store(StoreError::Stale(job_id))) => {
                    let cancelled = matches!(
                        dispatcher.store().job(job_id).await,
                        Ok(job) if job.state == JobState::Cancelled
                    );
                    controls[i].stop(if cancelled {
                        Stop::Cancelled
                    } else {
                        Stop::LeaseLost
                    });
                }
                Err(error) => {
                    warn!(job = %claimed[i].ticket.job_id, %error, "lease renewal failed; retrying")
                }
            }
        }
    }
}

/// Tells Postgres the worker is alive, and samples memory for the metrics.
pub(super) async fn heartbeat(
    store: Store,
    worker: String,
    every: Duration,
    alive_at: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
    memory: MemorySource,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        metrics.sample_memory(&memory);
        match store.worker_heartbeat(&worker).await {
            Ok(()) => alive_at.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed),
            Err(error) => warn!(%error, "heartbeat failed"),
        }
    }
}
