//! Finishing jobs: one or a batch per transaction, with images and cost settlement.

use std::collections::HashMap;

use uuid::Uuid;

use crate::{Completed, Lane, NewImage, Store, StoreError};

/// A job a worker finished, as it reports it.
#[derive(Clone, Debug)]
pub struct Finished {
    pub job_id: Uuid,
    /// The attempt the worker holds the job at.
    pub attempt: i32,
    /// GPU time the job took, charged to the fast quota.
    pub measured_ms: i64,
    pub images: Vec<NewImage>,
    /// Blob key of the 2×2 grid, for jobs that make one.
    pub grid_key: Option<String>,
    /// The prompt as rendered, when a text model expanded it.
    pub final_prompt: Option<String>,
}

impl Store {
    /// Marks a held job succeeded, records its images and settles its cost; `Stale` when
    /// the worker no longer holds it, in which case nothing is written.
    pub async fn complete(
        &self,
        job_id: Uuid,
        attempt: i32,
        worker: &str,
        measured_ms: i64,
        images: &[NewImage],
    ) -> Result<Completed, StoreError> {
        let finished = Finished {
            job_id,
            attempt,
            measured_ms,
            images: images.to_vec(),
            grid_key: None,
            final_prompt: None,
        };
        let mut outcomes = self.complete_batch(worker, &[finished]).await?;
        outcomes.pop().ok_or(StoreError::Stale(job_id))?
    }

    /// Completes several jobs of one worker in one transaction; each outcome is `Stale` on
    /// its own without affecting the others. Job rows are locked in id order, then users in
    /// id order, as every other transition does; the batch costs the same few statements
    /// whatever its size.
    pub async fn complete_batch(
        &self,
        worker: &str,
        finished: &[Finished],
    ) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<Uuid> = finished.iter().map(|f| f.job_id).collect();
        let attempts: Vec<i32> = finished.iter().map(|f| f.attempt).collect();
        let grids: Vec<Option<String>> = finished.iter().map(|f| f.grid_key.clone()).collect();
        let prompts: Vec<Option<String>> =
            finished.iter().map(|f| f.final_prompt.clone()).collect();
        let rows: Vec<(Uuid, i64, String, i64)> = sqlx::query_as(
            "UPDATE jobs SET state = 'succeeded', succeeded_at = now(), lease_expires_at = NULL, \
                    grid_key = held.grid_key, final_prompt = held.final_prompt \
             FROM (SELECT * FROM UNNEST($1::uuid[], $2::int4[], $4::text[], $5::text[]) \
                   AS r (id, attempt, grid_key, final_prompt) ORDER BY id) AS held \
             WHERE jobs.id = held.id AND jobs.state = 'running' AND jobs.attempt = held.attempt \
               AND jobs.worker_id = $3 \
             RETURNING jobs.id, jobs.user_id, jobs.lane, jobs.reserved_ms",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(worker)
        .bind(&grids)
        .bind(&prompts)
        .fetch_all(&mut *tx)
        .await?;
        let held: HashMap<Uuid, (i64, Lane, i64)> = rows
            .into_iter()
            .map(|(id, user, lane, reserved)| (id, (user, Lane::parse(&lane), reserved)))
            .collect();

        let images: Vec<(&Finished, &NewImage)> = finished
            .iter()
            .filter(|f| held.contains_key(&f.job_id))
            .flat_map(|f| f.images.iter().map(move |image| (f, image)))
            .collect();
        if !images.is_empty() {
            sqlx::query(
                "INSERT INTO images (id, job_id, index, blob_key, width, height, bytes, seed) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int2[], $4::text[], \
                                      $5::int4[], $6::int4[], $7::int8[], $8::int8[])",
            )
            .bind(images.iter().map(|_| Uuid::new_v4()).collect::<Vec<_>>())
            .bind(images.iter().map(|(f, _)| f.job_id).collect::<Vec<_>>())
            .bind(images.iter().map(|(_, i)| i.index).collect::<Vec<_>>())
            .bind(
                images
                    .iter()
                    .map(|(_, i)| i.blob_key.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(images.iter().map(|(_, i)| i.width).collect::<Vec<_>>())
            .bind(images.iter().map(|(_, i)| i.height).collect::<Vec<_>>())
            .bind(images.iter().map(|(_, i)| i.bytes).collect::<Vec<_>>())
            .bind(images.iter().map(|(_, i)| i.seed).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }

        let mut users: Vec<i64> = held
            .values()
            .filter(|(_, lane, _)| *lane == Lane::Fast)
            .map(|(user, _, _)| *user)
            .collect();
        users.sort_unstable();
        users.dedup();
        let mut balances: HashMap<i64, i64> = if users.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as(
                "SELECT id, fast_balance_ms FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .bind(&users)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };

        // Settle in Rust against the locked balances: the unused part of a reservation
        // comes back; an overrun is charged as far as the balance goes.
        let mut outcomes = Vec::with_capacity(finished.len());
        let mut ledger: (Vec<i64>, Vec<i64>, Vec<Uuid>) = Default::default();
        let mut costs = Vec::new();
        ids.clear();
        for job in finished {
            let Some(&(user_id, lane, reserved_ms)) = held.get(&job.job_id) else {
                outcomes.push(Err(StoreError::Stale(job.job_id)));
                continue;
            };
            let cost_ms = match lane {
                Lane::Fast => {
                    let balance = balances.entry(user_id).or_insert(0);
                    let delta = (reserved_ms - job.measured_ms).max(-*balance);
                    *balance += delta;
                    ledger.0.push(user_id);
                    ledger.1.push(delta);
                    ledger.2.push(job.job_id);
                    reserved_ms - delta
                }
                Lane::Relax => 0,
            };
            ids.push(job.job_id);
            costs.push(cost_ms);
            outcomes.push(Ok(Completed { user_id, cost_ms }));
        }
        if !ledger.0.is_empty() {
            sqlx::query(
                "WITH entries AS ( \
                     INSERT INTO quota_ledger (user_id, delta_ms, reason, job_id) \
                     SELECT user_id, delta_ms, 'settle', job_id \
                     FROM UNNEST($1::int8[], $2::int8[], $3::uuid[]) AS e (user_id, delta_ms, job_id) \
                     RETURNING user_id, delta_ms) \
                 UPDATE users SET fast_balance_ms = fast_balance_ms + moved.total \
                 FROM (SELECT user_id, SUM(delta_ms)::BIGINT AS total FROM entries \
                       GROUP BY user_id) AS moved \
                 WHERE users.id = moved.user_id",
            )
            .bind(&ledger.0)
            .bind(&ledger.1)
            .bind(&ledger.2)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE jobs SET cost_ms = cost.ms \
             FROM UNNEST($1::uuid[], $2::int8[]) AS cost (id, ms) WHERE jobs.id = cost.id",
        )
        .bind(&ids)
        .bind(&costs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}
