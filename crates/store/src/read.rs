//! Reading jobs and their images back.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::enqueue::{IntoTicket, TicketRow, TICKET_COLUMNS};
use crate::{Job, JobKind, JobState, Lane, Store, StoreError, StoredImage, Ticket};

#[derive(sqlx::FromRow)]
pub(crate) struct JobRecord {
    id: Uuid,
    kind: String,
    parent_id: Option<Uuid>,
    image_index: Option<i16>,
    action: Option<String>,
    inputs: Vec<String>,
    grid_key: Option<String>,
    final_prompt: Option<String>,
    state: String,
    attempt: i32,
    lane: String,
    model: String,
    user_id: i64,
    guild_id: Option<i64>,
    channel_id: i64,
    interaction_id: i64,
    worker_id: Option<String>,
    error: Option<String>,
    reserved_ms: i64,
    cost_ms: Option<i64>,
    spec: serde_json::Value,
    queued_at: DateTime<Utc>,
    running_at: Option<DateTime<Utc>>,
}

pub(crate) const JOB_COLUMNS: &str = "id, kind, parent_id, image_index, action, inputs, grid_key, \
     final_prompt, state, \
     attempt, lane, model, user_id, guild_id, channel_id, interaction_id, worker_id, error, \
     reserved_ms, cost_ms, spec, queued_at, running_at";

impl JobRecord {
    pub(crate) fn into_job(self) -> Result<Job, StoreError> {
        let unreadable = StoreError::NoSuchJob(self.id);
        Ok(Job {
            id: self.id,
            kind: JobKind::parse(&self.kind).ok_or(unreadable)?,
            parent_id: self.parent_id,
            image_index: self.image_index,
            action: self.action,
            inputs: self.inputs,
            grid_key: self.grid_key,
            final_prompt: self.final_prompt,
            state: JobState::parse(&self.state).ok_or(StoreError::NoSuchJob(self.id))?,
            attempt: self.attempt,
            lane: Lane::parse(&self.lane),
            model: self.model,
            user_id: self.user_id,
            guild_id: self.guild_id,
            channel_id: self.channel_id,
            interaction_id: self.interaction_id,
            worker_id: self.worker_id,
            error: self.error,
            reserved_ms: self.reserved_ms,
            cost_ms: self.cost_ms,
            spec: serde_json::from_value(self.spec)?,
            queued_at: self.queued_at,
            running_at: self.running_at,
        })
    }
}

impl Store {
    /// One job, as stored.
    pub async fn job(&self, job_id: Uuid) -> Result<Job, StoreError> {
        let record: Option<JobRecord> =
            sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await?;
        record.ok_or(StoreError::NoSuchJob(job_id))?.into_job()
    }

    /// The job's queue ticket as it was enqueued; the queue finds a waiting job's entry
    /// (for its position) only by the whole ticket.
    pub async fn ticket(&self, job_id: Uuid) -> Result<Ticket, StoreError> {
        let row: Option<TicketRow> =
            sqlx::query_as(&format!("SELECT {TICKET_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.ok_or(StoreError::NoSuchJob(job_id))?.into_ticket())
    }

    /// Several jobs in one query, in the order asked; a missing id is an error.
    pub async fn jobs(&self, job_ids: &[Uuid]) -> Result<Vec<Job>, StoreError> {
        let records: Vec<JobRecord> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1)"
        ))
        .bind(job_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut jobs = records
            .into_iter()
            .map(JobRecord::into_job)
            .collect::<Result<Vec<_>, _>>()?;
        let mut ordered = Vec::with_capacity(job_ids.len());
        for id in job_ids {
            let at = jobs
                .iter()
                .position(|job| job.id == *id)
                .ok_or(StoreError::NoSuchJob(*id))?;
            ordered.push(jobs.swap_remove(at));
        }
        Ok(ordered)
    }

    /// The images a finished job stored, by index.
    pub async fn images(&self, job_id: Uuid) -> Result<Vec<StoredImage>, StoreError> {
        let rows: Vec<(i16, String, i32, i32, i64, i64)> = sqlx::query_as(
            "SELECT index, blob_key, width, height, bytes, seed FROM images \
             WHERE job_id = $1 ORDER BY index",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(index, blob_key, width, height, bytes, seed)| StoredImage {
                    index,
                    blob_key,
                    width,
                    height,
                    bytes,
                    seed,
                },
            )
            .collect())
    }
}
