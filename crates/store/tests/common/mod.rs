//! Shared test helpers: jobs to enqueue and the ledger invariant.

#![allow(dead_code)]

use huaxian_prompt::JobSpec;
use huaxian_store::{Caps, NewJob, Store};
use sqlx::PgPool;

pub fn spec(model: &str) -> JobSpec {
    JobSpec {
        seed: Some(7),
        steps: 20,
        ..JobSpec::new("a red car", model)
    }
}

pub fn job(user_id: i64, interaction_id: i64) -> NewJob {
    NewJob::imagine(spec("sd15"), user_id, interaction_id, 1)
}

pub fn caps() -> Caps {
    Caps {
        queued_per_user: 1000,
        commands_per_minute: 1000,
        daily_images: 100_000,
        queued_per_guild: 100_000,
        retry_backoff: chrono::Duration::zero(),
        ..Caps::default()
    }
}

pub fn store(pool: PgPool, caps: Caps) -> Store {
    Store::from_pool(pool, caps)
}

/// Asserts every user's cached balance equals the sum of their ledger rows, and none is
/// negative.
pub async fn assert_ledger(pool: &PgPool) {
    let bad: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM users u \
         LEFT JOIN (SELECT user_id, SUM(delta_ms) AS total FROM quota_ledger GROUP BY user_id) l \
           ON l.user_id = u.id \
         WHERE u.fast_balance_ms <> COALESCE(l.total, 0) OR u.fast_balance_ms < 0",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(bad, 0, "a balance differs from its ledger");
}

/// Ledger rows of a job with the given reason.
pub async fn ledger_rows(pool: &PgPool, job: uuid::Uuid, reason: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM quota_ledger WHERE job_id = $1 AND reason = $2")
        .bind(job)
        .bind(reason)
        .fetch_one(pool)
        .await
        .unwrap()
}
