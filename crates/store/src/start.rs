//! Starting claimed jobs, one or a batch per transaction, under the running caps.

use std::collections::HashMap;

use chrono::Duration;
use uuid::Uuid;

use crate::{Start, Store, StoreError};

impl Store {
    /// Moves a queued job to running for `worker`, raising its attempt: the new attempt is
    /// the fencing token every later call about this job must present.
    pub async fn start(
        &self,
        job_id: Uuid,
        worker: &str,
        lease: Duration,
    ) -> Result<Start, StoreError> {
        let mut started = self.start_batch(&[job_id], worker, lease).await?;
        Ok(started.pop().map_or(Start::Gone, |(_, start)| start))
    }

    /// Starts several jobs for one worker in one transaction (one call of `huaxian_start`,
    /// migrations/0004); returns each job's outcome in the order given. Jobs are locked in
    /// id order, then their users and guilds in id order, the same order every transition
    /// uses, so concurrent batches cannot deadlock.
    pub async fn start_batch(
        &self,
        job_ids: &[Uuid],
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<(Uuid, Start)>, StoreError> {
        let rows: Vec<(Uuid, String, Option<i32>, Option<serde_json::Value>)> =
            sqlx::query_as("SELECT * FROM huaxian_start($1, $2, $3, $4, $5)")
                .bind(job_ids)
                .bind(worker)
                .bind(lease)
                .bind(self.caps.running_per_user)
                .bind(self.caps.running_per_guild)
                .fetch_all(&self.pool)
                .await?;
        let mut outcomes: HashMap<Uuid, Start> = HashMap::with_capacity(rows.len());
        for (id, outcome, attempt, spec) in rows {
            let start = match (outcome.as_str(), attempt, spec) {
                ("started", Some(attempt), Some(spec)) => Start::Started { attempt, spec },
                ("busy", _, _) => Start::Busy,
                _ => return Err(StoreError::Outcome(format!("start answered {outcome:?}"))),
            };
            outcomes.insert(id, start);
        }
        Ok(job_ids
            .iter()
            .map(|id| (*id, outcomes.remove(id).unwrap_or(Start::Gone)))
            .collect())
    }
}
