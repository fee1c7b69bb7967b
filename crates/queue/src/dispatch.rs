//! The dispatcher: submit, claim, renew, finish and reconcile.

use std::time::{Duration, Instant};

use chrono::Utc;
use huaxian_store::{
    Completed, Enqueued, Failure, Finished, Lane, NewImage, NewJob, Start, Store, StoreError,
    Ticket,
};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::events::{JobResult, Outcome};
use crate::scripts;
use crate::submit::Submitter;

/// How long a cancel signal outlives the cancellation, in seconds: longer than any render.
const CANCEL_SIGNAL_S: u64 = 3600;

/// Claim rounds of only stale entries before a claim reports nothing to do.
const STALE_ROUNDS: usize = 64;

/// Dispatch settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Prefix of every Redis key, so several deployments (or tests) share one Redis.
    pub prefix: String,
    /// How long a claim holds a job before it goes back to the queue unless renewed.
    pub lease: Duration,
    /// Every this-many claims, relax is served before fast (when both have jobs).
    pub relax_every: u32,
    /// Users looked at per pass of a claim; bounds the work of one claim script.
    pub scan: u32,
    /// A queued job younger than this is not redispatched by the reconciler: its submit may
    /// still be on the way to Redis.
    pub reconcile_grace: Duration,
    /// Most jobs one reconcile pass looks at.
    pub reconcile_batch: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix: "huaxian".into(),
            lease: Duration::from_secs(30),
            relax_every: 4,
            scan: 256,
            reconcile_grace: Duration::from_secs(5),
            reconcile_batch: 1000,
        }
    }
}

/// What a worker can run.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub id: String,
    /// The model it has loaded.
    pub model: String,
    /// Largest image it renders, in pixels.
    pub max_pixels: i64,
    /// Most jobs it takes in one claim (they share model, sampler, steps and size).
    pub max_batch: u32,
}

/// A job a worker holds: present `attempt` with every later call about it.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub ticket: Ticket,
    pub attempt: i32,
    pub spec: serde_json::Value,
    /// When the claim started, for the run-time statistics.
    pub started: Instant,
}

/// A job a worker finished, as it reports it to [`Dispatcher::complete_batch`].
#[derive(Clone, Debug)]
pub struct Done<'a> {
    pub claimed: &'a Claimed,
    /// GPU time the job took.
    pub measured_ms: i64,
    pub images: Vec<NewImage>,
    /// Blob key of the grid, for jobs that make one.
    pub grid_key: Option<String>,
    /// The prompt as rendered, when a text model expanded it.
    pub final_prompt: Option<String>,
}

/// What one reconcile pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Jobs whose lease ran out and that were queued again.
    pub retried: usize,
    /// Jobs whose lease ran out on their last attempt, now failed and refunded.
    pub failed: usize,
    /// Queued jobs that had no entry in Redis and got one.
    pub redispatched: usize,
}

/// Failure of a dispatch operation.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    // Shown in the message, not kept as `source()`, so a printed chain says it once.
    #[error("redis error: {0}; the reconciler will restore dispatch once Redis is back")]
    Redis(redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("cannot connect to Redis at {address}: {reason}; check [redis] url")]
    Connect { address: String, reason: String },
}

/// How long connecting to Redis may take before the service gives up with the reason.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection manager for `client`, after one plain attempt: the manager retries quietly,
/// so a wrong address would otherwise wait without a word; the attempt fails at once with
/// its reason.
pub(crate) async fn connect_manager(
    client: &redis::Client,
) -> Result<ConnectionManager, DispatchError> {
    let address = client.get_connection_info().addr.to_string();
    let failed = |reason: String| DispatchError::Connect {
        address: address.clone(),
        reason,
    };
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection());
    match attempt.await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(failed(error.to_string())),
        Err(_) => return Err(failed(format!("no answer in {CONNECT_TIMEOUT:?}"))),
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, ConnectionManager::new(client.clone())).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(error)) => Err(failed(error.to_string())),
        Err(_) => Err(failed(format!("no answer in {CONNECT_TIMEOUT:?}"))),
    }
}

impl From<redis::RedisError> for DispatchError {
    fn from(error: redis::RedisError) -> Self {
        DispatchError::Redis(error)
    }
}

/// Gives a queued job a dispatch entry unless it has one. Returns whether it was added.
pub(crate) async fn push_entry(
    redis: &mut ConnectionManager,
    prefix: &str,
    ticket: &Ticket,
) -> Result<bool, DispatchError> {
    let now = Utc::now().timestamp_millis();
    let ready = ticket.ready_at.map_or(0, |at| at.timestamp_millis());
    let added: i32 = scripts::PUSH
        .arg(prefix)
        .arg(ticket.job_id.to_string())
        .arg(entry(ticket))
        .arg(ticket.user_id)
        .arg(ticket.lane.as_str())
        .arg(&ticket.model)
        .arg(ready)
        .arg(now)
        .invoke_async(redis)
        .await?;
    Ok(added == 1)
}

/// Gives an accepted job its dispatch entry. If Redis fails after the commit, the job stays
/// queued and the reconciler dispatches it later; the error is logged, not returned,
/// because the job was accepted.
pub(crate) async fn push_accepted(redis: &mut ConnectionManager, prefix: &str, ticket: &Ticket) {
    if let Err(error) = push_entry(redis, prefix, ticket).await {
        warn!(job = %ticket.job_id, %error, "dispatch failed; reconciler will retry");
    }
}

/// Gateway and worker handle on the dispatch queue; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    pub(crate) store: Store,
    /// Shared by every clone: commands on it must answer at once, never block.
    pub(crate) redis: ConnectionManager,
    /// For connections of their own ([`Dispatcher::event_reader`]).
    pub(crate) client: redis::Client,
    pub(crate) config: Config,
    /// Writes submitted jobs in batches ([`crate::submit`]).
    submitter: Submitter,
}

impl Dispatcher {
    /// Connects to Redis at `redis_url`.
    pub async fn connect(
        store: Store,
        redis_url: &str,
        config: Config,
    ) -> Result<Self, DispatchError> {
        let client = redis::Client::open(redis_url)?;
        let redis = connect_manager(&client).await?;
        let submitter = Submitter::start(store.clone(), redis.clone(), config.prefix.clone());
        Ok(Self {
            store,
            redis,
            client,
            config,
            submitter,
        })
    }

    /// The prefix of this dispatcher's Redis keys.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// Runs [`Dispatcher::reconcile`] every `interval` until the task is dropped. A failed
    /// pass is logged and retried at the next tick, since both stores recover on their own.
    pub async fn reconcile_every(&self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.reconcile().await {
                warn!(%error, "reconcile pass failed; retrying next tick");
            }
        }
    }

    /// The store behind this dispatcher.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records the job in Postgres, then gives it a dispatch entry. Jobs submitted at the
    /// same time share one transaction. If Redis fails after the commit, the job stays
    /// queued and the reconciler dispatches it later; the error is logged, not returned,
    /// because the job was accepted.
    pub async fn submit(&self, job: &NewJob) -> Result<Enqueued, DispatchError> {
        if let Some(outcome) = self.submitter.submit(job).await {
            return outcome;
        }
        // The batch writer is gone (the runtime is shutting down): write it here.
        let enqueued = self.store.enqueue(job).await?;
        push_accepted(
            &mut self.redis.clone(),
            &self.config.prefix,
            &enqueued.ticket,
        )
        .await;
        Ok(enqueued)
    }

    /// Gives a queued job a dispatch entry unless it has one. Returns whether it was added.
    pub async fn push(&self, ticket: &Ticket) -> Result<bool, DispatchError> {
        push_entry(&mut self.redis.clone(), &self.config.prefix, ticket).await
    }

    /// Claims up to `worker.max_batch` jobs the worker can run, starting each in Postgres.
    /// Entries whose job is no longer queued are dropped; entries whose user is at the
    /// running cap go back to the head of their list. Returns an empty list when nothing is
    /// waiting.
    pub async fn claim(&self, worker: &WorkerSpec) -> Result<Vec<Claimed>, DispatchError> {
        let lease = chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        let mut claimed = Vec::new();
        let mut busy = Vec::new();
        if let Err(error) = self.record_worker(&worker.model, &worker.id).await {
            debug!(%error, "worker not recorded for ETAs");
        }

        // Entries can all be stale (duplicates, cancelled jobs): keep taking until one
        // starts or the lists run dry, bounded so one call stays short.
        for _ in 0..STALE_ROUNDS {
            let entries: Vec<String> = scripts::CLAIM
                .arg(&self.config.prefix)
                .arg(&worker.model)
                .arg(worker.max_pixels)
                .arg(worker.max_batch.max(1))
                .arg(Utc::now().timestamp_millis())
                .arg(self.config.relax_every.max(1))
                .arg(self.config.scan.max(1))
                .invoke_async(&mut self.redis.clone())
                .await?;
            if entries.is_empty() {
                break;
            }

            let mut tickets = Vec::with_capacity(entries.len());
            for raw in entries {
                match parse_entry(&raw) {
                    Some(ticket) => tickets.push((ticket, raw)),
                    None => warn!(entry = %raw, "unreadable dispatch entry dropped"),
                }
            }
            let ids: Vec<Uuid> = tickets.iter().map(|(t, _)| t.job_id).collect();
            let starts = self.store.start_batch(&ids, &worker.id, lease).await?;
            for ((ticket, raw), (_, start)) in tickets.into_iter().zip(starts) {
                match start {
                    Start::Started { attempt, spec } => claimed.push(Claimed {
                        ticket,
                        attempt,
                        spec,
                        started: Instant::now(),
                    }),
                    Start::Busy => busy.push(raw),
                    Start::Gone => debug!(job = %ticket.job_id, "stale dispatch entry dropped"),
                }
            }
            if !claimed.is_empty() || !busy.is_empty() {
                break;
            }
        }

        if !busy.is_empty() {
            let mut script = scripts::UNCLAIM.prepare_invoke();
            script.arg(&self.config.prefix);
            for raw in &busy {
                script.arg(raw);
            }
            // The claimed jobs already run in Postgres: an error here must not lose them.
            let unclaimed: Result<i32, _> = script.invoke_async(&mut self.redis.clone()).await;
            if let Err(error) = unclaimed {
                warn!(%error, entries = busy.len(), "busy entries not put back; reconciler will");
            }
        }
        Ok(claimed)
    }

    /// Extends the lease on a held job; `Stale` when the worker lost it and must stop.
    pub async fn renew(&self, worker: &str, claimed: &Claimed) -> Result<(), DispatchError> {
        let lease = chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        self.store
            .renew(claimed.ticket.job_id, claimed.attempt, worker, lease)
            .await?;
        Ok(())
    }

    /// Records a finished job and its measured GPU time; `Stale` when the worker lost it.
    pub async fn complete(
        &self,
        worker: &str,
        claimed: &Claimed,
        measured_ms: i64,
        images: &[NewImage],
    ) -> Result<Completed, DispatchError> {
        let done = self
            .store
            .complete(
                claimed.ticket.job_id,
                claimed.attempt,
                worker,
                measured_ms,
                images,
            )
            .await?;
        let run_ms = claimed.started.elapsed().as_millis() as i64;
        if let Err(error) = self.record_run(&claimed.ticket.model, run_ms).await {
            warn!(%error, "run time not recorded; ETAs use older figures");
        }
        Ok(done)
    }

    /// Records several finished jobs of one worker in one transaction (a batch); each
    /// outcome is `Stale` on its own when the worker lost that job.
    pub async fn complete_batch(
        &self,
        worker: &str,
        finished: &[Done<'_>],
    ) -> Result<Vec<Result<Completed, StoreError>>, DispatchError> {
        let reports: Vec<Finished> = finished
            .iter()
            .map(|done| Finished {
                job_id: done.claimed.ticket.job_id,
                attempt: done.claimed.attempt,
                measured_ms: done.measured_ms,
                images: done.images.clone(),
                grid_key: done.grid_key.clone(),
                final_prompt: done.final_prompt.clone(),
            })
            .collect();
        let outcomes = self.store.complete_batch(worker, &reports).await?;
        if let Some(done) = finished.first() {
            let run_ms = done.claimed.started.elapsed().as_millis() as i64;
            if let Err(error) = self.record_run(&done.claimed.ticket.model, run_ms).await {
                warn!(%error, "run time not recorded; ETAs use older figures");
            }
        }
        Ok(outcomes)
    }

    /// Gives a held job back to the queue at once, without spending one of its attempts:
    /// for a worker that is shutting down.
    pub async fn release(&self, worker: &str, claimed: &Claimed) -> Result<(), DispatchError> {
        let ticket = self
            .store
            .release(claimed.ticket.job_id, claimed.attempt, worker)
            .await?;
        if let Err(error) = self.push(&ticket).await {
            warn!(job = %ticket.job_id, %error, "released job not dispatched; reconciler will");
        }
        Ok(())
    }

    /// Records a failed attempt; a retry is dispatched with its backoff.
    pub async fn fail(
        &self,
        worker: &str,
        claimed: &Claimed,
        error: &str,
        retryable: bool,
    ) -> Result<Failure, DispatchError> {
        let failure = self
            .store
            .fail(
                claimed.ticket.job_id,
                claimed.attempt,
                worker,
                error,
                retryable,
            )
            .await?;
        if let Failure::Retry(ticket) = &failure {
            self.push(ticket).await?;
        }
        Ok(failure)
    }

    /// Cancels the user's job; its entry, if any, is dropped when claimed. A worker rendering
    /// it sees the cancellation within a fraction of a second ([`Dispatcher::cancelled`]) and
    /// stops; if the signal is lost, its next lease renewal is refused instead.
    pub async fn cancel(&self, job_id: Uuid, user_id: i64) -> Result<bool, DispatchError> {
        let cancelled = self.store.cancel(job_id, user_id).await?;
        if cancelled {
            let key = format!("{}:cancel:{job_id}", self.config.prefix);
            let signalled: Result<(), _> = self.redis.clone().set_ex(key, 1, CANCEL_SIGNAL_S).await;
            if let Err(error) = signalled {
                warn!(job = %job_id, %error, "cancel signal not sent; the lease will fence");
            }
        }
        Ok(cancelled)
    }

    /// Which of `job_ids` were cancelled, by the signal [`Dispatcher::cancel`] leaves.
    pub async fn cancelled(&self, job_ids: &[Uuid]) -> Result<Vec<bool>, DispatchError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = job_ids
            .iter()
            .map(|id| format!("{}:cancel:{id}", self.config.prefix))
            .collect();
        let flags: Vec<Option<i32>> = self.redis.clone().mget(keys).await?;
        Ok(flags.into_iter().map(|flag| flag.is_some()).collect())
    }

    /// Takes back jobs whose lease ran out and dispatches queued jobs that have no entry.
    /// Run it every few seconds from one or more processes; passes are idempotent.
    pub async fn reconcile(&self) -> Result<ReconcileReport, DispatchError> {
        let started = Instant::now();
        let mut report = ReconcileReport::default();

        for expired in self
            .store
            .expire_leases(self.config.reconcile_batch)
            .await?
        {
            match expired.failure {
                Failure::Retry(ticket) => {
                    // Already queued in Postgres: a failed push is redone by the next pass.
                    if let Err(error) = self.push(&ticket).await {
                        warn!(job = %ticket.job_id, %error, "retry not dispatched yet");
                    }
                    report.retried += 1;
                }
                Failure::Failed { user_id, error } => {
                    report.failed += 1;
                    let result = JobResult {
                        job_id: expired.job_id,
                        user_id,
                        outcome: Outcome::Failed,
                        error: Some(error),
                        grid_key: None,
                        images: Vec::new(),
                        prompt: String::new(),
                        cost_ms: 0,
                    };
                    if let Err(error) = self.publish_result(&result).await {
                        warn!(job = %expired.job_id, %error, "failure result not published");
                    }
                }
            }
        }

        let grace = chrono::Duration::from_std(self.config.reconcile_grace).unwrap_or_default();
        let tickets = self
            .store
            .queued_tickets(grace, self.config.reconcile_batch)
            .await?;
        for ticket in &tickets {
            if self.push(ticket).await? {
                report.redispatched += 1;
            }
        }

        if report != ReconcileReport::default() {
            info!(
                retried = report.retried,
                failed = report.failed,
                redispatched = report.redispatched,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reconciled dispatch with the store"
            );
        }
        Ok(report)
    }
}

/// The dispatch entry of a ticket; fields never contain `|` (ids, numbers, model names and
/// the batch key, whose parts are names and numbers).
pub(crate) fn entry(ticket: &Ticket) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}",
        ticket.job_id,
        ticket.user_id,
        ticket.lane.as_str(),
        ticket.model,
        ticket.pixels,
        ticket.batch_key
    )
}

fn parse_entry(raw: &str) -> Option<Ticket> {
    let mut fields = raw.splitn(6, '|');
    let job_id = fields.next()?.parse().ok()?;
    let user_id = fields.next()?.parse().ok()?;
    let lane = Lane::parse(fields.next()?);
    let model = fields.next()?.to_string();
    let pixels = fields.next()?.parse().ok()?;
    let batch_key = fields.next()?.to_string();
    Some(Ticket {
        job_id,
        user_id,
        lane,
        model,
        pixels,
        batch_key,
        ready_at: None,
    })
}
