//! Finishing jobs: one or a batch per transaction, with images and cost settlement.

use uuid::Uuid;

use crate::quota::settle;
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
        };
        let mut outcomes = self.complete_batch(worker, &[finished]).await?;
        outcomes.pop().ok_or(StoreError::Stale(job_id))?
    }

    /// Completes several jobs of one worker in one transaction; each outcome is `Stale` on
    /// its own without affecting the others. Job rows are locked in id order, then users in
    /// id order, as every other transition does.
    pub async fn complete_batch(
        &self,
        worker: &str,
        finished: &[Finished],
    ) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
        let mut order: Vec<usize> = (0..finished.len()).collect();
        order.sort_by_key(|&i| finished[i].job_id);

        let mut tx = self.pool.begin().await?;
        let mut held: Vec<Option<(i64, Lane, i64)>> = vec![None; finished.len()];
        for &i in &order {
            let job = &finished[i];
            let row: Option<(i64, String, i64)> = sqlx::query_as(
                "UPDATE jobs SET state = 'succeeded', succeeded_at = now(), \
                        lease_expires_at = NULL \
                 WHERE id = $1 AND state = 'running' AND attempt = $2 AND worker_id = $3 \
                 RETURNING user_id, lane, reserved_ms",
            )
            .bind(job.job_id)
            .bind(job.attempt)
            .bind(worker)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((user_id, lane, reserved_ms)) = row else {
                continue;
            };
            held[i] = Some((user_id, Lane::parse(&lane), reserved_ms));

            for image in &job.images {
                sqlx::query(
                    "INSERT INTO images (id, job_id, index, blob_key, width, height, bytes, seed) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(Uuid::new_v4())
                .bind(job.job_id)
                .bind(image.index)
                .bind(&image.blob_key)
                .bind(image.width)
                .bind(image.height)
                .bind(image.bytes)
                .bind(image.seed)
                .execute(&mut *tx)
                .await?;
            }
        }

        let mut users: Vec<i64> = held
            .iter()
            .flatten()
            .filter(|(_, lane, _)| *lane == Lane::Fast)
            .map(|(user, _, _)| *user)
            .collect();
        users.sort_unstable();
        users.dedup();
        if !users.is_empty() {
            sqlx::query("SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&users)
                .execute(&mut *tx)
                .await?;
        }

        let mut outcomes = Vec::with_capacity(finished.len());
        let mut ids = Vec::new();
        let mut costs = Vec::new();
        for (job, held) in finished.iter().zip(&held) {
            let Some((user_id, lane, reserved_ms)) = *held else {
                outcomes.push(Err(StoreError::Stale(job.job_id)));
                continue;
            };
            let cost_ms = match lane {
                Lane::Fast => {
                    settle(&mut tx, user_id, job.job_id, reserved_ms, job.measured_ms).await?
                }
                Lane::Relax => 0,
            };
            ids.push(job.job_id);
            costs.push(cost_ms);
            outcomes.push(Ok(Completed { user_id, cost_ms }));
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
