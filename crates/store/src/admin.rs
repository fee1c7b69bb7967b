//! User settings, admin overrides with their audit rows, guild settings and workers.

use chrono::{DateTime, Utc};
use tracing::info;

use crate::quota::{lock_user, post, roll_period};
use crate::{Lane, Store, StoreError};

/// A user's defaults for new jobs; `None` falls back to the service's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserSettings {
    pub default_model: Option<String>,
    pub stylize: Option<i16>,
    pub lane: Option<Lane>,
    pub sampler: Option<String>,
    /// Whether `--expand` is on when a prompt does not say.
    pub expand: Option<bool>,
}

/// A GPU worker as admins see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    pub id: String,
    /// Models the worker has loaded.
    pub models: Vec<String>,
    /// The accelerator, in words.
    pub device: String,
    /// Largest image it renders, in pixels.
    pub max_pixels: i64,
    /// Most jobs it renders in one batch.
    pub max_batch: i32,
    pub heartbeat_at: DateTime<Utc>,
}

type WorkerRow = (String, Vec<String>, String, i64, i32, DateTime<Utc>);

impl Store {
    /// The user's settings, creating the user on first sight.
    pub async fn settings(&self, user_id: i64) -> Result<UserSettings, StoreError> {
        sqlx::query("INSERT INTO users (id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        let (default_model, stylize, lane, sampler, expand): (
            Option<String>,
            Option<i16>,
            String,
            Option<String>,
            Option<bool>,
        ) = sqlx::query_as(
            "SELECT default_model, stylize, lane, sampler, expand FROM users WHERE id = $1",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(UserSettings {
            default_model,
            stylize,
            lane: Some(Lane::parse(&lane)),
            sampler,
            expand,
        })
    }

    /// Replaces the user's settings.
    pub async fn set_settings(
        &self,
        user_id: i64,
        settings: &UserSettings,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, default_model, stylize, lane, sampler, expand) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET default_model = $2, stylize = $3, lane = $4, \
                                            sampler = $5, expand = $6",
        )
        .bind(user_id)
        .bind(&settings.default_model)
        .bind(settings.stylize)
        .bind(settings.lane.unwrap_or(Lane::Fast).as_str())
        .bind(&settings.sampler)
        .bind(settings.expand)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Bans or unbans a user; banned users' requests are refused.
    pub async fn set_banned(
        &self,
        actor_id: i64,
        user_id: i64,
        banned: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, user_id).await?;
        sqlx::query("UPDATE users SET banned = $2 WHERE id = $1")
            .bind(user_id)
            .bind(banned)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor_id,
            user_id,
            if banned { "ban" } else { "unban" },
            0,
        )
        .await?;
        tx.commit().await?;
        info!(actor = actor_id, user = user_id, banned, "user ban changed");
        Ok(())
    }

    /// Adds fast-lane time to the user's current period (negative amounts take it away,
    /// never below zero). Returns the new balance.
    pub async fn grant(&self, actor_id: i64, user_id: i64, ms: i64) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, user_id).await?;
        let balance = roll_period(&mut tx, &self.caps, user_id).await?;
        let delta = ms.max(-balance);
        let balance = post(&mut tx, user_id, delta, "admin_grant", None).await?;
        audit(&mut tx, actor_id, user_id, "grant", delta).await?;
        tx.commit().await?;
        info!(
            actor = actor_id,
            user = user_id,
            delta_ms = delta,
            "fast time granted"
        );
        Ok(balance)
    }

    /// Resets the user's balance to the period's full grant. Returns the new balance.
    pub async fn reset_quota(&self, actor_id: i64, user_id: i64) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, user_id).await?;
        let balance = roll_period(&mut tx, &self.caps, user_id).await?;
        let delta = self.caps.fast_ms_per_period - balance;
        let balance = post(&mut tx, user_id, delta, "admin_reset", None).await?;
        audit(&mut tx, actor_id, user_id, "reset_quota", delta).await?;
        tx.commit().await?;
        info!(actor = actor_id, user = user_id, "fast quota reset");
        Ok(balance)
    }

    /// Sets a guild's caps; `None` keeps the service default.
    pub async fn set_guild_caps(
        &self,
        guild_id: i64,
        max_running: Option<i32>,
        max_queued: Option<i32>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO guilds (id, max_running, max_queued) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET max_running = $2, max_queued = $3",
        )
        .bind(guild_id)
        .bind(max_running)
        .bind(max_queued)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds a word prompts in the guild may not contain (case-insensitive).
    pub async fn ban_word(&self, guild_id: i64, word: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO guilds (id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(guild_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO banned_words (guild_id, word) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(guild_id)
        .bind(word.to_lowercase())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a banned word; returns whether the guild had it.
    pub async fn unban_word(&self, guild_id: i64, word: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM banned_words WHERE guild_id = $1 AND word = $2")
            .bind(guild_id)
            .bind(word.to_lowercase())
            .execute(&self.pool)
            .await?;
        Ok(removed.rows_affected() > 0)
    }

    /// The guild's banned words, sorted.
    pub async fn banned_words(&self, guild_id: i64) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT word FROM banned_words WHERE guild_id = $1 ORDER BY word")
                .bind(guild_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Writes an audit row: an admin's action, or an attempt moderators should see (a
    /// banned word). `actor_id` is `None` for the service itself.
    pub async fn record_audit(
        &self,
        actor_id: Option<i64>,
        user_id: i64,
        guild_id: Option<i64>,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (actor_id, user_id, guild_id, action, detail) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(actor_id)
        .bind(user_id)
        .bind(guild_id)
        .bind(action)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Audit rows about a user, newest first.
    pub async fn audit_log(
        &self,
        user_id: i64,
    ) -> Result<Vec<(Option<i64>, String, serde_json::Value)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT actor_id, action, detail FROM audit_log WHERE user_id = $1 \
             ORDER BY at DESC, id DESC LIMIT 100",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Registers a worker or refreshes its description and heartbeat.
    pub async fn register_worker(&self, worker: &Worker) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, models, device, max_pixels, max_batch) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET models = $2, device = $3, max_pixels = $4, \
                 max_batch = $5, heartbeat_at = now()",
        )
        .bind(&worker.id)
        .bind(&worker.models)
        .bind(&worker.device)
        .bind(worker.max_pixels)
        .bind(worker.max_batch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that the worker is alive.
    pub async fn worker_heartbeat(&self, worker_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET heartbeat_at = now() WHERE id = $1")
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a worker that is shutting down, so admins no longer see it.
    pub async fn remove_worker(&self, worker_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Workers heard from within `silence`, most recently seen first; a worker silent for
    /// longer counts as gone.
    pub async fn live_workers(&self, silence: chrono::Duration) -> Result<Vec<Worker>, StoreError> {
        let mut workers = self.workers().await?;
        let since = Utc::now() - silence;
        workers.retain(|worker| worker.heartbeat_at >= since);
        Ok(workers)
    }

    /// All workers, most recently seen first.
    pub async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            "SELECT id, models, device, max_pixels, max_batch, heartbeat_at FROM workers \
             ORDER BY heartbeat_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, models, device, max_pixels, max_batch, heartbeat_at)| Worker {
                    id,
                    models,
                    device,
                    max_pixels,
                    max_batch,
                    heartbeat_at,
                },
            )
            .collect())
    }
}

async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    actor_id: i64,
    user_id: i64,
    action: &str,
    delta_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (actor_id, user_id, action, detail) VALUES ($1, $2, $3, $4)",
    )
    .bind(actor_id)
    .bind(user_id)
    .bind(action)
    .bind(serde_json::json!({ "delta_ms": delta_ms }))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
