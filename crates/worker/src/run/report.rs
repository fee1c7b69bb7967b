//! Reporting what became of each job of a batch: stored and completed, failed, released
//! or discarded, with the result published for the gateway.

use std::time::Duration;

use huaxian_queue::{Claimed, DispatchError, Done, JobResult, Outcome, ResultImage};
use huaxian_store::{Failure, Job, JobState, NewImage, StoreError};
use tracing::{error, info, warn};
use uuid::Uuid;

use super::Worker;
use crate::control::Stop;
use crate::render::Rendered;

impl Worker {
    /// A job that was stopped while in hand: nothing of it is kept.
    pub(super) async fn stopped(&self, job: &Job, claimed: &Claimed, stop: Stop) {
        match stop {
            Stop::Cancelled => {
                info!(job = %job.id, "job cancelled; output discarded");
                self.metrics.outcome("cancelled");
            }
            Stop::LeaseLost => {
                warn!(job = %job.id, "job no longer held while rendering; output discarded");
                self.count_loss(job).await;
            }
            Stop::Shutdown => match self.dispatcher.release(&self.id, claimed).await {
                Ok(()) => self.metrics.outcome("released"),
                Err(error) => warn!(
                    job = %job.id, %error,
                    "job not released; it returns to the queue when its lease runs out"
                ),
            },
        }
    }

    /// Counts a job the worker found it no longer holds: cancelled, if the store says so
    /// (a cancellation that raced the watcher), else a lost lease.
    async fn count_loss(&self, job: &Job) {
        let cancelled = matches!(
            self.dispatcher.store().job(job.id).await,
            Ok(row) if row.state == JobState::Cancelled
        );
        if cancelled {
            self.metrics.outcome("cancelled");
        } else {
            self.metrics.lease_losses.inc();
            self.metrics.outcome("lease_lost");
        }
    }

    /// Records a failed attempt: retried after a backoff, or failed, refunded and reported.
    pub(super) async fn failed(
        &self,
        job: &Job,
        claimed: &Claimed,
        message: &str,
        retryable: bool,
    ) {
        match self
            .dispatcher
            .fail(&self.id, claimed, message, retryable)
            .await
        {
            Ok(Failure::Retry(_)) => self.metrics.outcome("retried"),
            Ok(Failure::Failed { user_id, error }) => {
                self.metrics.outcome("failed");
                let result = JobResult {
                    job_id: job.id,
                    user_id,
                    outcome: Outcome::Failed,
                    error: Some(error),
                    grid_key: None,
                    images: Vec::new(),
                    prompt: job.spec.positive_text(),
                    cost_ms: 0,
                };
                if let Err(error) = self.dispatcher.publish_result(&result).await {
                    error!(job = %job.id, %error, "failure result lost");
                }
            }
            Err(DispatchError::Store(StoreError::Stale(_))) => self.count_loss(job).await,
            Err(error) => warn!(
                job = %job.id, %error,
                "failure not recorded; the job returns to the queue when its lease runs out"
            ),
        }
    }

    /// Writes a job's images under keys of its attempt, so a stale attempt never
    /// overwrites what the winning one stored.
    pub(super) async fn store_images(
        &self,
        job: &Job,
        claimed: &Claimed,
        rendered: &Rendered,
    ) -> Result<(Vec<NewImage>, Option<String>), huaxian_service::BlobError> {
        let folder = attempt_folder(job.id, claimed.attempt);
        let mut images = Vec::with_capacity(rendered.images.len());
        for (index, image) in rendered.images.iter().enumerate() {
            let key = format!("{folder}/{index}.png");
            self.blobs.put(&key, image.png.clone()).await?;
            images.push(NewImage {
                index: index as i16,
                blob_key: key,
                width: image.width as i32,
                height: image.height as i32,
                bytes: image.png.len() as i64,
                seed: image.seed as i64,
            });
        }
        let grid_key = match &rendered.grid_png {
            Some(png) => {
                let key = format!("{folder}/grid.png");
                self.blobs.put(&key, png.clone()).await?;
                Some(key)
            }
            None => None,
        };
        Ok((images, grid_key))
    }

    /// Completes the stored jobs in one transaction and reports each. A job the worker no
    /// longer holds has its blobs removed, unless the store shows that this very attempt
    /// committed (a reply lost on the way back).
    pub(super) async fn complete(
        &self,
        jobs: &[Job],
        claimed: &[Claimed],
        finished: Vec<(usize, Rendered, Vec<NewImage>, Option<String>)>,
    ) {
        if finished.is_empty() {
            return;
        }
        let reports: Vec<Done> = finished
            .iter()
            .map(|(index, rendered, images, grid_key)| Done {
                claimed: &claimed[*index],
                measured_ms: rendered.gpu_ms,
                images: images.clone(),
                grid_key: grid_key.clone(),
                final_prompt: rendered.final_prompt.clone(),
            })
            .collect();
        let mut outcomes = None;
        for attempt in 0..3 {
            match self.dispatcher.complete_batch(&self.id, &reports).await {
                Ok(done) => {
                    outcomes = Some(done);
                    break;
                }
                Err(error) => {
                    warn!(%error, attempt, "completion not recorded; trying again");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        let Some(outcomes) = outcomes else {
            error!(
                jobs = finished.len(),
                "completions not recorded; the jobs return to the queue when their leases run out"
            );
            return;
        };

        for ((index, rendered, images, grid_key), outcome) in finished.iter().zip(outcomes) {
            let job = &jobs[*index];
            let claim = &claimed[*index];
            let cost_ms = match outcome {
                Ok(completed) => completed.cost_ms,
                Err(_) => match self.committed(claim).await {
                    Committed::Ours(cost_ms) => cost_ms,
                    Committed::Unknown => {
                        // The row could not be read: keep the blobs, which an image row may
                        // point at, and leave the outcome to the store.
                        warn!(job = %job.id, "completion outcome unknown; images kept");
                        continue;
                    }
                    Committed::Other => {
                        warn!(job = %job.id, "job no longer held at completion; output discarded");
                        self.count_loss(job).await;
                        let folder = attempt_folder(job.id, claim.attempt);
                        for image in images {
                            let _ = self.blobs.delete(&image.blob_key).await;
                        }
                        let _ = self.blobs.delete(&format!("{folder}/grid.png")).await;
                        continue;
                    }
                },
            };
            self.metrics.outcome("succeeded");
            self.metrics.images.inc_by(images.len() as u64);
            self.metrics
                .run_seconds
                .observe(claim.started.elapsed().as_secs_f64());
            info!(
                job = %job.id, user = job.user_id, kind = job.kind.as_str(),
                images = images.len(), seconds = format!("{:.2}", claim.started.elapsed().as_secs_f64()),
                "job succeeded"
            );
            let result = JobResult {
                job_id: job.id,
                user_id: job.user_id,
                outcome: Outcome::Succeeded,
                error: None,
                grid_key: grid_key.clone(),
                images: images
                    .iter()
                    .map(|image| ResultImage {
                        index: image.index,
                        blob_key: image.blob_key.clone(),
                        width: image.width,
                        height: image.height,
                        seed: image.seed,
                    })
                    .collect(),
                prompt: rendered
                    .final_prompt
                    .clone()
                    .unwrap_or_else(|| job.spec.positive_text()),
                cost_ms,
            };
            if let Err(error) = self.dispatcher.publish_result(&result).await {
                error!(job = %job.id, %error, "result not published; the gateway must recover it from Postgres");
            }
        }
    }

    /// What the store shows of a completion the worker was told is stale: its own attempt
    /// succeeded after all (a reply lost on the way back), another outcome, or nothing.
    async fn committed(&self, claimed: &Claimed) -> Committed {
        match self.dispatcher.store().job(claimed.ticket.job_id).await {
            Ok(job)
                if job.state == JobState::Succeeded
                    && job.attempt == claimed.attempt
                    && job.worker_id.as_deref() == Some(self.id.as_str()) =>
            {
                Committed::Ours(job.cost_ms.unwrap_or(0))
            }
            Ok(_) => Committed::Other,
            Err(_) => Committed::Unknown,
        }
    }
}

/// What the store says of a completion reported stale.
enum Committed {
    /// This attempt succeeded, charging this much.
    Ours(i64),
    /// The job ended another way, or another attempt holds it.
    Other,
    /// The row could not be read.
    Unknown,
}

/// Where an attempt's images live: `jobs/<job>/<attempt>/`.
pub fn attempt_folder(job_id: Uuid, attempt: i32) -> String {
    format!("jobs/{job_id}/{attempt}")
}
