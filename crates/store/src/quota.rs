//! The fast-lane quota: a ledger of GPU time per user, granted per period.
//!
//! Every function here runs inside a transaction that already holds the user's row lock,
//! and writes the ledger row and the cached balance together.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Caps, Store, StoreError};

/// A user's fast-lane balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    /// The cached balance on the user row.
    pub balance_ms: i64,
    /// The sum of the user's ledger rows; equal to `balance_ms`.
    pub ledger_ms: i64,
    /// When the current period ends and a fresh grant replaces what is left.
    pub resets_at: DateTime<Utc>,
}

/// Start of the quota period containing `now`; periods are aligned to the Unix epoch.
pub(crate) fn period_start(caps: &Caps, now: DateTime<Utc>) -> DateTime<Utc> {
    let length = caps.period.num_milliseconds().max(1);
    let start = now.timestamp_millis().div_euclid(length) * length;
    DateTime::from_timestamp_millis(start).unwrap_or(now)
}

/// End of the quota period containing `now`.
pub(crate) fn period_end(caps: &Caps, now: DateTime<Utc>) -> DateTime<Utc> {
    period_start(caps, now) + caps.period
}

/// Writes one ledger row and moves the cached balance by the same amount; returns the new
/// balance. The schema's CHECK refuses a negative balance, so callers clamp first.
pub(crate) async fn post(
    tx: &mut Transaction<'_, Postgres>,
    user_id: i64,
    delta_ms: i64,
    reason: &str,
    job_id: Option<Uuid>,
) -> Result<i64, StoreError> {
    let balance: i64 = sqlx::query_scalar("SELECT huaxian_post($1, $2, $3, $4)")
        .bind(user_id)
        .bind(delta_ms)
        .bind(reason)
        .bind(job_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(balance)
}

/// Brings the user into the current period: what is left of the old grant expires and the
/// new grant is posted. Returns the balance. The caller holds the user's row lock.
pub(crate) async fn roll_period(
    tx: &mut Transaction<'_, Postgres>,
    caps: &Caps,
    user_id: i64,
) -> Result<i64, StoreError> {
    let balance: i64 = sqlx::query_scalar("SELECT huaxian_roll_period($1, $2, $3)")
        .bind(user_id)
        .bind(period_start(caps, Utc::now()))
        .bind(caps.fast_ms_per_period)
        .fetch_one(&mut **tx)
        .await?;
    Ok(balance)
}

/// Gives back a job's reservation, once (a unique index on the ledger enforces it).
pub(crate) async fn refund(
    tx: &mut Transaction<'_, Postgres>,
    user_id: i64,
    job_id: Uuid,
    reserved_ms: i64,
) -> Result<(), StoreError> {
    if reserved_ms > 0 {
        post(tx, user_id, reserved_ms, "refund", Some(job_id)).await?;
    }
    Ok(())
}

impl Store {
    /// The user's fast-lane balance in the current period, with its ledger sum.
    pub async fn balance(&self, user_id: i64) -> Result<Balance, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, user_id).await?;
        let balance_ms = roll_period(&mut tx, &self.caps, user_id).await?;
        let ledger_ms: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(delta_ms), 0)::BIGINT FROM quota_ledger WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Balance {
            balance_ms,
            ledger_ms,
            resets_at: period_end(&self.caps, Utc::now()),
        })
    }
}

/// Creates the user's row if needed and locks it for the transaction; returns `banned`.
pub(crate) async fn lock_user(
    tx: &mut Transaction<'_, Postgres>,
    user_id: i64,
) -> Result<bool, StoreError> {
    let banned = sqlx::query_scalar(
        "INSERT INTO users (id) VALUES ($1) \
         ON CONFLICT (id) DO UPDATE SET banned = users.banned \
         RETURNING banned",
    )
    .bind(user_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(banned)
}
