//! Finishing jobs: one or a batch per transaction, with images and cost settlement.

use std::collections::HashMap;

use uuid::Uuid;

use crate::{Completed, NewImage, Store, StoreError};

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

    /// Completes several jobs of one worker in one transaction (one call of
    /// `huaxian_complete`, migrations/0004); each outcome is `Stale` on its own without
    /// affecting the others. Job rows are locked in id order, then users in id order, as
    /// every other transition does; the unused part of a reservation comes back and an
    /// overrun is charged as far as the balance goes.
    pub async fn complete_batch(
        &self,
        worker: &str,
        finished: &[Finished],
    ) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
        let images: Vec<(&Finished, &NewImage)> = finished
            .iter()
            .flat_map(|f| f.images.iter().map(move |image| (f, image)))
            .collect();
        let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "SELECT * FROM huaxian_complete($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                                            $13, $14)",
        )
        .bind(worker)
        .bind(finished.iter().map(|f| f.job_id).collect::<Vec<_>>())
        .bind(finished.iter().map(|f| f.attempt).collect::<Vec<_>>())
        .bind(finished.iter().map(|f| f.measured_ms).collect::<Vec<_>>())
        .bind(
            finished
                .iter()
                .map(|f| f.grid_key.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            finished
                .iter()
                .map(|f| f.final_prompt.clone())
                .collect::<Vec<_>>(),
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
        .fetch_all(&self.pool)
        .await?;
        let mut done: HashMap<Uuid, Completed> = rows
            .into_iter()
            .map(|(id, user_id, cost_ms)| (id, Completed { user_id, cost_ms }))
            .collect();
        Ok(finished
            .iter()
            .map(|f| done.remove(&f.job_id).ok_or(StoreError::Stale(f.job_id)))
            .collect())
    }
}
