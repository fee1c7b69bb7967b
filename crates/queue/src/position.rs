//! Queue position and ETA of a waiting job, from recent run times and live workers.

use std::time::Duration;

use chrono::Utc;
use huaxian_store::Ticket;
use redis::AsyncCommands;

use crate::dispatch::{entry, DispatchError, Dispatcher};
use crate::scripts;

/// Run times kept per model for the ETA.
const RECENT_RUNS: isize = 50;

/// Run time assumed before any job of a model has finished.
const DEFAULT_RUN: Duration = Duration::from_secs(10);

/// A worker counts as live for the ETA if it claimed within this window.
const LIVE_WORKER_MS: i64 = 60_000;

/// Where a waiting job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Jobs that will start before it (0: it is next).
    pub ahead: u64,
    /// Estimated wait until it starts.
    pub eta: Duration,
}

impl Dispatcher {
    /// The job's position and ETA, or `None` when it is not waiting in Redis (started,
    /// ended, in a retry's backoff, or missing until the next reconcile). A few Redis
    /// round trips: cheap enough for every progress update.
    pub async fn position(&self, ticket: &Ticket) -> Result<Option<Position>, DispatchError> {
        let ahead: i64 = scripts::POSITION
            .arg(&self.config.prefix)
            .arg(entry(ticket))
            .arg(self.config.scan.max(1))
            .arg(self.config.relax_every.max(1))
            .invoke_async(&mut self.redis.clone())
            .await?;
        if ahead < 0 {
            return Ok(None);
        }

        let mut redis = self.redis.clone();
        let prefix = &self.config.prefix;
        let runs: Vec<u64> = redis
            .lrange(
                format!("{prefix}:runs:{}", ticket.model),
                0,
                RECENT_RUNS - 1,
            )
            .await?;
        let run = if runs.is_empty() {
            DEFAULT_RUN
        } else {
            Duration::from_millis(runs.iter().sum::<u64>() / runs.len() as u64)
        };
        let since = Utc::now().timestamp_millis() - LIVE_WORKER_MS;
        let workers: u64 = redis
            .zcount(format!("{prefix}:workers:{}", ticket.model), since, "+inf")
            .await?;

        let ahead = ahead as u64;
        let rounds = (ahead + 1).div_ceil(workers.max(1));
        Ok(Some(Position {
            ahead,
            eta: run * rounds as u32,
        }))
    }

    /// Notes a worker as live for the model's ETA.
    pub(crate) async fn record_worker(
        &self,
        model: &str,
        worker: &str,
    ) -> Result<(), DispatchError> {
        let key = format!("{}:workers:{model}", self.config.prefix);
        let _: () = self
            .redis
            .clone()
            .zadd(key, worker, Utc::now().timestamp_millis())
            .await?;
        Ok(())
    }

    /// Adds a finished job's run time to the model's recent runs.
    pub(crate) async fn record_run(&self, model: &str, run_ms: i64) -> Result<(), DispatchError> {
        let key = format!("{}:runs:{model}", self.config.prefix);
        let mut redis = self.redis.clone();
        let _: () = redis.lpush(&key, run_ms.max(0)).await?;
        let _: () = redis.ltrim(&key, 0, RECENT_RUNS - 1).await?;
        Ok(())
    }
}
