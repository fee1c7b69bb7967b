//! Accepting a job: idempotency, bans, caps and the fast-lane reservation, in one
//! transaction that holds the user's (and guild's) row lock.

use chrono::{Duration, Utc};
use sqlx::{Postgres, Transaction};
use tracing::debug;
use uuid::Uuid;

use crate::model::batch_key;
use crate::quota::{lock_user_row, period_end, roll_locked};
use crate::{Enqueued, Lane, NewJob, Refusal, Store, StoreError, Ticket};

impl Store {
    /// Records a job as queued, or returns the job the same interaction or button already
    /// made. The caller dispatches the returned ticket only after this returns, so the row
    /// always exists before its dispatch entry.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, StoreError> {
        let mut tx = self.pool.begin().await?;
        let user = lock_user_row(&mut tx, job.user_id).await?;
        let left_ms = match job.lane {
            Lane::Fast => {
                roll_locked(
                    &mut tx,
                    &self.caps,
                    job.user_id,
                    user.balance_ms,
                    user.period,
                )
                .await?
            }
            Lane::Relax => 0,
        };

        let reserved_ms = match job.lane {
            Lane::Fast => job.estimate_ms,
            Lane::Relax => 0,
        };
        if user.banned || left_ms < reserved_ms {
            if let Some(ticket) = existing(&mut tx, job).await? {
                tx.commit().await?;
                return Ok(Enqueued {
                    ticket,
                    created: false,
                });
            }
            if user.banned {
                return Err(Refusal::Banned.into());
            }
            // Keep the period grant roll_locked may have written.
            tx.commit().await?;
            return Err(Refusal::QuotaExhausted {
                left_ms,
                needed_ms: reserved_ms,
                resets_at: period_end(&self.caps, Utc::now()),
            }
            .into());
        }

        // One statement inserts the job, reserves its cost and counts the user's other
        // jobs (its snapshot is taken under the user's lock, and does not see the new row).
        // A conflict means the interaction or the button already has a job, returned
        // instead; a refusal below rolls everything back.
        let id = Uuid::new_v4();
        let spec = serde_json::to_value(&job.spec)?;
        let pixels = i64::from(job.spec.width) * i64::from(job.spec.height);
        let (parent_id, action) = match &job.parent {
            Some((parent, action)) => (Some(*parent), Some(action.as_str())),
            None => (None, None),
        };
        let today = Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc());
        let today = today.unwrap_or_else(Utc::now);
        let (created, queued, recent, images): (Option<Uuid>, i64, i64, i64) = sqlx::query_as(
            "WITH counts AS ( \
                 SELECT COUNT(*) FILTER (WHERE state = 'queued') AS queued, \
                        COUNT(*) FILTER (WHERE queued_at > now() - interval '1 minute') AS recent, \
                        COALESCE(SUM(images) FILTER (WHERE queued_at >= $18 \
                                 AND state NOT IN ('failed', 'cancelled')), 0)::BIGINT AS images \
                 FROM jobs WHERE user_id = $15 \
                   AND (state = 'queued' OR queued_at > now() - interval '1 minute' \
                        OR queued_at >= $18)), \
             created AS ( \
                 INSERT INTO jobs (id, kind, parent_id, image_index, action, spec, model, lane, \
                     pixels, batch_key, images, max_attempts, reserved_ms, interaction_id, \
                     user_id, guild_id, channel_id, inputs, part) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                         $17, $19, $20) \
                 ON CONFLICT DO NOTHING RETURNING id, reserved_ms), \
             reserve AS ( \
                 INSERT INTO quota_ledger (user_id, delta_ms, reason, job_id) \
                 SELECT $15, -reserved_ms, 'reserve', id FROM created WHERE reserved_ms > 0), \
             balance AS ( \
                 UPDATE users SET fast_balance_ms = fast_balance_ms - created.reserved_ms \
                 FROM created WHERE users.id = $15 AND created.reserved_ms > 0) \
             SELECT (SELECT id FROM created), queued, recent, images FROM counts",
        )
        .bind(id)
        .bind(job.kind.as_str())
        .bind(parent_id)
        .bind(job.image_index)
        .bind(action)
        .bind(spec)
        .bind(&job.spec.model)
        .bind(job.lane.as_str())
        .bind(pixels)
        .bind(batch_key(&job.spec))
        .bind(job.images)
        .bind(self.caps.max_attempts)
        .bind(reserved_ms)
        .bind(job.interaction_id)
        .bind(job.user_id)
        .bind(job.guild_id)
        .bind(job.channel_id)
        .bind(today)
        .bind(&job.inputs)
        .bind(job.part)
        .fetch_one(&mut *tx)
        .await?;
        if created.is_none() {
            let ticket = existing(&mut tx, job)
                .await?
                .ok_or(StoreError::NoSuchJob(id))?;
            tx.commit().await?;
            return Ok(Enqueued {
                ticket,
                created: false,
            });
        }

        let caps = &self.caps;
        if queued >= caps.queued_per_user {
            return Err(Refusal::UserQueueFull(queued).into());
        }
        if recent >= caps.commands_per_minute {
            return Err(Refusal::RateLimited(caps.commands_per_minute).into());
        }
        if images + i64::from(job.images) > caps.daily_images {
            return Err(Refusal::DailyImages {
                limit: caps.daily_images,
                resets_at: today + Duration::days(1),
            }
            .into());
        }
        if let Some(guild_id) = job.guild_id {
            self.check_guild(&mut tx, job, guild_id, id).await?;
        }
        tx.commit().await?;
        debug!(job = %id, user = job.user_id, lane = job.lane.as_str(), "job queued");

        Ok(Enqueued {
            ticket: Ticket {
                job_id: id,
                user_id: job.user_id,
                lane: job.lane,
                model: job.spec.model.clone(),
                pixels,
                batch_key: batch_key(&job.spec),
                ready_at: None,
            },
            created: true,
        })
    }

    async fn check_guild(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        job: &NewJob,
        guild_id: i64,
        new_id: Uuid,
    ) -> Result<(), StoreError> {
        let caps = &self.caps;
        sqlx::query("INSERT INTO guilds (id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(guild_id)
            .execute(&mut **tx)
            .await?;
        let (max_queued,): (Option<i32>,) =
            sqlx::query_as("SELECT max_queued FROM guilds WHERE id = $1 FOR UPDATE")
                .bind(guild_id)
                .fetch_one(&mut **tx)
                .await?;
        let max_queued = max_queued.map_or(caps.queued_per_guild, i64::from);
        let guild_queued: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE guild_id = $1 AND state = 'queued' AND id <> $2",
        )
        .bind(guild_id)
        .bind(new_id)
        .fetch_one(&mut **tx)
        .await?;
        if guild_queued >= max_queued {
            return Err(Refusal::GuildQueueFull(guild_queued).into());
        }

        let words: Vec<String> =
            sqlx::query_scalar("SELECT word FROM banned_words WHERE guild_id = $1")
                .bind(guild_id)
                .fetch_all(&mut **tx)
                .await?;
        let text = job.spec.raw.to_lowercase();
        if let Some(word) = words.into_iter().find(|w| text.contains(&w.to_lowercase())) {
            return Err(Refusal::BannedWord(word).into());
        }
        Ok(())
    }
}

/// The job this interaction part, or this button while its job is live, already made.
async fn existing(
    tx: &mut Transaction<'_, Postgres>,
    job: &NewJob,
) -> Result<Option<Ticket>, StoreError> {
    let (parent_id, action) = match &job.parent {
        Some((parent, action)) => (Some(*parent), Some(action.as_str())),
        None => (None, None),
    };
    let row: Option<TicketRow> = sqlx::query_as(
        "SELECT id, user_id, lane, model, pixels, batch_key, retry_at FROM jobs \
         WHERE (interaction_id = $1 AND part = $5) \
            OR (parent_id = $2 AND action = $3 AND user_id = $4 \
                AND state IN ('queued', 'running')) \
         LIMIT 1",
    )
    .bind(job.interaction_id)
    .bind(parent_id)
    .bind(action)
    .bind(job.user_id)
    .bind(job.part)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(IntoTicket::into_ticket))
}

/// The columns of a job that make its [`Ticket`], in [`TicketRow`]'s order.
pub(crate) const TICKET_COLUMNS: &str = "id, user_id, lane, model, pixels, batch_key, retry_at";

/// The columns of a job that make its [`Ticket`].
pub(crate) type TicketRow = (
    Uuid,
    i64,
    String,
    String,
    i64,
    String,
    Option<chrono::DateTime<Utc>>,
);

pub(crate) trait IntoTicket {
    fn into_ticket(self) -> Ticket;
}

impl IntoTicket for TicketRow {
    fn into_ticket(self) -> Ticket {
        let (job_id, user_id, lane, model, pixels, batch_key, ready_at) = self;
        Ticket {
            job_id,
            user_id,
            lane: Lane::parse(&lane),
            model,
            pixels,
            batch_key,
            ready_at,
        }
    }
}
