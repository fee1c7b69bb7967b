//! Guarded job transitions. Each names the state and attempt it expects in its WHERE
//! clause, so exactly one of any set of racing callers wins and stale workers lose.

use chrono::{DateTime, Duration, Utc};
use sqlx::{Postgres, Transaction};
use tracing::{info, warn};
use uuid::Uuid;

use crate::enqueue::{IntoTicket, TicketRow, TICKET_COLUMNS};
use crate::quota::{lock_user, refund};
use crate::{Store, StoreError, Ticket};

/// Outcome of trying to start a claimed job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The caller now holds the job at `attempt` until its lease runs out.
    Started {
        attempt: i32,
        spec: serde_json::Value,
    },
    /// The job's user or guild is at its running cap; put the entry back and try later.
    Busy,
    /// The job is not waiting to start (a duplicate entry, cancelled, already running, or
    /// its retry is not due): drop the entry.
    Gone,
}

/// Outcome of a finished job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    pub user_id: i64,
    /// Fast-lane time charged after settling; 0 on the relax lane.
    pub cost_ms: i64,
}

/// Outcome of a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The job is queued again and must be dispatched with this ticket (its `ready_at` is
    /// the end of the backoff).
    Retry(Ticket),
    /// The job failed for good; its reservation was refunded.
    Failed { user_id: i64, error: String },
}

/// A job whose lease ran out, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub job_id: Uuid,
    pub attempt: i32,
    pub failure: Failure,
}

impl Store {
    /// Extends the lease of a job the worker holds; `Stale` when it no longer does.
    pub async fn renew(
        &self,
        job_id: Uuid,
        attempt: i32,
        worker: &str,
        lease: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        let until: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE jobs SET lease_expires_at = now() + $4 \
             WHERE id = $1 AND state = 'running' AND attempt = $2 AND worker_id = $3 \
             RETURNING lease_expires_at",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(worker)
        .bind(lease)
        .fetch_optional(&self.pool)
        .await?;
        until.ok_or(StoreError::Stale(job_id))
    }

    /// Records a failed attempt of a held job. A `retryable` failure with attempts left puts
    /// the job back in the queue after a backoff; otherwise it fails and is refunded.
    pub async fn fail(
        &self,
        job_id: Uuid,
        attempt: i32,
        worker: &str,
        error: &str,
        retryable: bool,
    ) -> Result<Failure, StoreError> {
        let mut tx = self.pool.begin().await?;
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT attempt FROM jobs \
             WHERE id = $1 AND state = 'running' AND attempt = $2 AND worker_id = $3 FOR UPDATE",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Err(StoreError::Stale(job_id));
        }
        let failure = self
            .fail_held(&mut tx, job_id, attempt, error, retryable)
            .await?;
        tx.commit().await?;
        Ok(failure)
    }

    async fn fail_held(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        job_id: Uuid,
        attempt: i32,
        error: &str,
        retryable: bool,
    ) -> Result<Failure, StoreError> {
        if retryable {
            let retry_at = Utc::now() + self.caps.backoff(attempt);
            let ticket: Option<TicketRow> = sqlx::query_as(&format!(
                "UPDATE jobs SET state = 'queued', retry_at = $3, error = $4, worker_id = NULL, \
                        lease_expires_at = NULL \
                 WHERE id = $1 AND state = 'running' AND attempt = $2 AND attempt < max_attempts \
                 RETURNING {TICKET_COLUMNS}"
            ))
            .bind(job_id)
            .bind(attempt)
            .bind(retry_at)
            .bind(error)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(ticket) = ticket {
                warn!(job = %job_id, attempt, %retry_at, "job attempt failed; retrying");
                return Ok(Failure::Retry(ticket.into_ticket()));
            }
        }

        let row: Option<(i64, i32, i64)> = sqlx::query_as(
            "UPDATE jobs SET state = 'failed', failed_at = now(), error = $3, \
                    lease_expires_at = NULL, cost_ms = 0 \
             WHERE id = $1 AND state = 'running' AND attempt = $2 \
             RETURNING user_id, attempt, reserved_ms",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(error)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((user_id, attempts, reserved_ms)) = row else {
            return Err(StoreError::Stale(job_id));
        };
        lock_user(tx, user_id).await?;
        refund(tx, user_id, job_id, reserved_ms).await?;
        info!(job = %job_id, attempts, "job failed");
        Ok(Failure::Failed {
            user_id,
            error: format!("failed after {attempts} attempt(s): {error}"),
        })
    }

    /// Gives a held job back to the queue without counting the attempt against it (a worker
    /// shutting down, or one that loaded the job and found it cannot run it now). Returns
    /// the ticket to dispatch it with; `Stale` when the worker no longer holds it.
    pub async fn release(
        &self,
        job_id: Uuid,
        attempt: i32,
        worker: &str,
    ) -> Result<Ticket, StoreError> {
        // The attempt stays raised, as it must for fencing; raising max_attempts with it
        // keeps the number of real tries the job has left.
        let ticket: Option<TicketRow> = sqlx::query_as(&format!(
            "UPDATE jobs SET state = 'queued', worker_id = NULL, lease_expires_at = NULL, \
                    retry_at = NULL, max_attempts = max_attempts + 1 \
             WHERE id = $1 AND state = 'running' AND attempt = $2 AND worker_id = $3 \
             RETURNING {TICKET_COLUMNS}"
        ))
        .bind(job_id)
        .bind(attempt)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?;
        let ticket = ticket.ok_or(StoreError::Stale(job_id))?;
        info!(job = %job_id, attempt, "job released back to the queue");
        Ok(ticket.into_ticket())
    }

    /// Cancels the user's job if it is queued or running, refunding its reservation.
    /// Returns false when it had already ended. A worker still rendering it is fenced out.
    pub async fn cancel(&self, job_id: Uuid, user_id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, i32)> = sqlx::query_as(
            "SELECT state, attempt FROM jobs WHERE id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(job_id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((state, attempt)) = row else {
            return Err(StoreError::NoSuchJob(job_id));
        };
        if state != "queued" && state != "running" {
            return Ok(false);
        }

        let reserved: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'cancelled', cancelled_at = now(), lease_expires_at = NULL, \
                    cost_ms = 0 \
             WHERE id = $1 AND state = $2 AND attempt = $3 RETURNING reserved_ms",
        )
        .bind(job_id)
        .bind(&state)
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(reserved_ms) = reserved else {
            return Ok(false);
        };
        lock_user(&mut tx, user_id).await?;
        refund(&mut tx, user_id, job_id, reserved_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Takes back up to `limit` running jobs whose lease ran out: each is retried after a
    /// backoff, or failed and refunded when it has no attempts left.
    pub async fn expire_leases(&self, limit: i64) -> Result<Vec<Expired>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid, i32)> = sqlx::query_as(
            "SELECT id, attempt FROM jobs WHERE state = 'running' AND lease_expires_at < now() \
             ORDER BY user_id, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;

        let mut expired = Vec::with_capacity(rows.len());
        for (job_id, attempt) in rows {
            let failure = self
                .fail_held(
                    &mut tx,
                    job_id,
                    attempt,
                    "worker lost (lease expired)",
                    true,
                )
                .await?;
            expired.push(Expired {
                job_id,
                attempt,
                failure,
            });
        }
        tx.commit().await?;
        if !expired.is_empty() {
            warn!(jobs = expired.len(), "leases expired; jobs taken back");
        }
        Ok(expired)
    }

    /// Queued jobs that have waited at least `grace`, oldest first, for the reconciler to
    /// check against the dispatch queue.
    pub async fn queued_tickets(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<Ticket>, StoreError> {
        let rows: Vec<TicketRow> = sqlx::query_as(&format!(
            "SELECT {TICKET_COLUMNS} FROM jobs \
             WHERE state = 'queued' AND queued_at < now() - $1 \
             ORDER BY queued_at LIMIT $2"
        ))
        .bind(grace)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(IntoTicket::into_ticket).collect())
    }
}
