//! Submissions written together: jobs that arrive while earlier ones are being written share
//! one transaction ([`Store::enqueue_batch`]) and one burst of Redis pushes.
//!
//! Under load, most of an enqueue's cost is per transaction (the round trip, the commit and
//! its WAL flush), so writing the jobs that queue up meanwhile in one go raises throughput
//! without delaying anyone: a job that arrives on an idle system is written at once, alone.

use std::sync::Arc;

use huaxian_store::{Enqueued, NewJob, Store};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::warn;

use crate::dispatch::{push_accepted, DispatchError};

/// Most jobs in one transaction: enough to spread its fixed cost, few enough that the locks
/// it holds (one row per user in it) are released soon.
const MAX_BATCH: usize = 64;

/// Batches written at once. More than one keeps the database busy while a batch commits;
/// batches lock their users in id order, so they never deadlock one another.
const IN_FLIGHT: usize = 4;

/// A job waiting for its batch, and where its outcome goes.
struct Pending {
    job: NewJob,
    reply: oneshot::Sender<Result<Enqueued, DispatchError>>,
}

/// The submitting side; cheap to clone. The writer task ends when every clone is dropped.
#[derive(Clone)]
pub(crate) struct Submitter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Submitter {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(store: Store, redis: ConnectionManager, prefix: String) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let writer = Writer {
            store,
            redis,
            prefix: prefix.into(),
        };
        tokio::spawn(writer.run(waiting));
        Self { queue }
    }

    /// Records `job` in Postgres with whatever else is waiting, then gives it a dispatch
    /// entry. `None` when the writer task is gone (its runtime is shutting down); the caller
    /// then writes the job itself.
    pub(crate) async fn submit(&self, job: &NewJob) -> Option<Result<Enqueued, DispatchError>> {
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            job: job.clone(),
            reply,
        };
        self.queue.send(pending).ok()?;
        outcome.await.ok()
    }
}

#[derive(Clone)]
struct Writer {
    store: Store,
    redis: ConnectionManager,
    prefix: Arc<str>,
}

impl Writer {
    async fn run(self, mut waiting: mpsc::UnboundedReceiver<Pending>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(first) = waiting.recv().await {
            // While every slot is busy, more jobs arrive and join this batch.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match waiting.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            // A task of its own, so a caller that stops waiting cannot cut a write short.
            let writer = self.clone();
            tokio::spawn(async move {
                writer.write(batch).await;
                drop(slot);
            });
        }
    }

    async fn write(&self, batch: Vec<Pending>) {
        let (jobs, replies): (Vec<NewJob>, Vec<_>) =
            batch.into_iter().map(|p| (p.job, p.reply)).unzip();
        let outcomes = match self.store.enqueue_batch(&jobs).await {
            Ok(outcomes) => outcomes,
            Err(error) if jobs.len() > 1 => {
                // The whole transaction failed, so nothing was written: write each job on
                // its own, so a job that cannot be written fails alone.
                warn!(%error, jobs = jobs.len(), "batched enqueue failed; writing the jobs one by one");
                let mut outcomes = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    outcomes.push(self.store.enqueue(job).await);
                }
                outcomes
            }
            Err(error) => vec![Err(error)],
        };

        // Rows are committed: now their entries. The pushes share the connection and go
        // out together.
        let pushes = outcomes.iter().map(|outcome| async move {
            if let Ok(enqueued) = outcome {
                push_accepted(&mut self.redis.clone(), &self.prefix, &enqueued.ticket).await;
            }
        });
        futures_util::future::join_all(pushes).await;

        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that stopped waiting has its job written all the same.
            let _ = reply.send(outcome.map_err(DispatchError::from));
        }
    }
}
