//! What users and admins read about the queue: a user's live jobs, and the queue's health
//! over the last hour.

use crate::read::{JobRecord, JOB_COLUMNS};
use crate::{Job, Lane, Store, StoreError};

/// The queue as admins see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Jobs waiting, per lane, with the age of the oldest in seconds.
    pub queued: Vec<LaneDepth>,
    /// Jobs rendering now.
    pub running: i64,
    /// Time from queued to started of the jobs started in the last hour, p50 and p95, in
    /// seconds; `None` when none started.
    pub wait_p50_s: Option<f64>,
    pub wait_p95_s: Option<f64>,
    /// Time from started to succeeded of the jobs that succeeded in the last hour.
    pub run_p50_s: Option<f64>,
    pub run_p95_s: Option<f64>,
    /// Jobs that ended in the last hour, by how.
    pub succeeded_last_hour: i64,
    pub failed_last_hour: i64,
    pub cancelled_last_hour: i64,
    /// Fast-lane reservations given back in the last hour (failures and cancellations).
    pub refunds_last_hour: i64,
}

/// The waiting jobs of one lane.
#[derive(Clone, Debug, PartialEq)]
pub struct LaneDepth {
    pub lane: Lane,
    pub jobs: i64,
    pub oldest_s: f64,
}

impl Store {
    /// The user's queued and running jobs, oldest first.
    pub async fn live_jobs(&self, user_id: i64) -> Result<Vec<Job>, StoreError> {
        let records: Vec<JobRecord> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs \
             WHERE user_id = $1 AND state IN ('queued', 'running') ORDER BY queued_at LIMIT 25"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        records.into_iter().map(JobRecord::into_job).collect()
    }

    /// Depth, throughput and latency of the queue over the last hour.
    pub async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let lanes: Vec<(String, i64, f64)> = sqlx::query_as(
            "SELECT lane, COUNT(*), \
                    COALESCE(EXTRACT(EPOCH FROM now() - MIN(queued_at)), 0)::FLOAT8 \
             FROM jobs WHERE state = 'queued' GROUP BY lane ORDER BY lane",
        )
        .fetch_all(&self.pool)
        .await?;
        let (running, succeeded, failed, cancelled): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE state = 'running'), \
                    COUNT(*) FILTER (WHERE state = 'succeeded'), \
                    COUNT(*) FILTER (WHERE state = 'failed'), \
                    COUNT(*) FILTER (WHERE state = 'cancelled') \
             FROM jobs \
             WHERE state IN ('succeeded', 'failed', 'cancelled') \
               AND COALESCE(succeeded_at, failed_at, cancelled_at) > now() - interval '1 hour'",
        )
        .fetch_one(&self.pool)
        .await?;
        let (wait_p50_s, wait_p95_s): (Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY w), \
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY w) \
             FROM (SELECT EXTRACT(EPOCH FROM running_at - queued_at)::FLOAT8 AS w FROM jobs \
                   WHERE running_at > now() - interval '1 hour') waits",
        )
        .fetch_one(&self.pool)
        .await?;
        let (run_p50_s, run_p95_s): (Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY r), \
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY r) \
             FROM (SELECT EXTRACT(EPOCH FROM succeeded_at - running_at)::FLOAT8 AS r FROM jobs \
                   WHERE state = 'succeeded' AND running_at IS NOT NULL \
                     AND succeeded_at > now() - interval '1 hour') runs",
        )
        .fetch_one(&self.pool)
        .await?;
        let refunds_last_hour: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM quota_ledger \
             WHERE reason = 'refund' AND created_at > now() - interval '1 hour'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            queued: lanes
                .into_iter()
                .map(|(lane, jobs, oldest_s)| LaneDepth {
                    lane: Lane::parse(&lane),
                    jobs,
                    oldest_s,
                })
                .collect(),
            running,
            wait_p50_s,
            wait_p95_s,
            run_p50_s,
            run_p95_s,
            succeeded_last_hour: succeeded,
            failed_last_hour: failed,
            cancelled_last_hour: cancelled,
            refunds_last_hour,
        })
    }
}
