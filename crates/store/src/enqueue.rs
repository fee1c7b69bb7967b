//! Accepting jobs: idempotency, bans, caps and the fast-lane reservation. The steps run in
//! the server as one function call (`huaxian_enqueue`, migrations/0004) for a batch of jobs,
//! under their users' (and guilds') row locks, so a batch costs one round trip and one
//! commit.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use tracing::debug;
use uuid::Uuid;

use crate::model::batch_key;
use crate::quota::{period_end, period_start};
use crate::{Enqueued, Lane, NewJob, Refusal, Store, StoreError, Ticket};

/// A job as `huaxian_enqueue` reads it from its JSON argument.
#[derive(Serialize)]
struct JobArgs<'a> {
    item: usize,
    id: Uuid,
    kind: &'a str,
    parent_id: Option<Uuid>,
    image_index: Option<i16>,
    action: Option<&'a str>,
    spec: serde_json::Value,
    model: &'a str,
    lane: &'a str,
    pixels: i64,
    batch_key: String,
    images: i32,
    estimate_ms: i64,
    interaction_id: i64,
    part: i16,
    user_id: i64,
    guild_id: Option<i64>,
    channel_id: i64,
    inputs: &'a [String],
    /// Banned words are stored lowercased; Rust's lowercasing is the one that counts.
    prompt_lower: String,
}

/// One row of `huaxian_enqueue`: the job's index in the batch, the outcome, the ticket
/// columns of the job (created or existing), and the figure or word a refusal names.
type EnqueueRow = (
    i32,
    Option<String>,
    Option<Uuid>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<String>,
);

impl Store {
    /// Records a job as queued, or returns the job the same interaction or button already
    /// made. The caller dispatches the returned ticket only after this returns, so the row
    /// always exists before its dispatch entry.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, StoreError> {
        let mut outcomes = self.enqueue_batch(std::slice::from_ref(job)).await?;
        outcomes
            .pop()
            .ok_or(StoreError::Outcome("no answer".into()))?
    }

    /// [`Store::enqueue`] for several jobs in one transaction: each gets its own outcome, in
    /// the order given, and a refusal of one does not touch the others. Jobs of one user are
    /// taken in the order given, each counting those before it. The outer error is for
    /// failures of the whole batch (the database), when nothing was written.
    pub async fn enqueue_batch(
        &self,
        jobs: &[NewJob],
    ) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let today = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(now, |t| t.and_utc());
        let mut args = Vec::with_capacity(jobs.len());
        for (item, job) in jobs.iter().enumerate() {
            let (parent_id, action) = match &job.parent {
                Some((parent, action)) => (Some(*parent), Some(action.as_str())),
                None => (None, None),
            };
            args.push(JobArgs {
                item,
                id: Uuid::new_v4(),
                kind: job.kind.as_str(),
                parent_id,
                image_index: job.image_index,
                action,
                spec: serde_json::to_value(&job.spec)?,
                model: &job.spec.model,
                lane: job.lane.as_str(),
                pixels: i64::from(job.spec.width) * i64::from(job.spec.height),
                batch_key: batch_key(&job.spec),
                images: job.images,
                estimate_ms: job.estimate_ms,
                interaction_id: job.interaction_id,
                part: job.part,
                user_id: job.user_id,
                guild_id: job.guild_id,
                channel_id: job.channel_id,
                inputs: &job.inputs,
                prompt_lower: job.spec.raw.to_lowercase(),
            });
        }
        let caps = &self.caps;
        let rows: Vec<EnqueueRow> =
            sqlx::query_as("SELECT * FROM huaxian_enqueue($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(sqlx::types::Json(&args))
                .bind(caps.max_attempts)
                .bind(caps.queued_per_user)
                .bind(caps.commands_per_minute)
                .bind(caps.daily_images)
                .bind(caps.queued_per_guild)
                .bind(period_start(caps, now))
                .bind(caps.fast_ms_per_period)
                .bind(today)
                .fetch_all(&self.pool)
                .await?;

        let mut outcomes: Vec<Option<Result<Enqueued, StoreError>>> =
            jobs.iter().map(|_| None).collect();
        for row in rows {
            let item = usize::try_from(row.0).unwrap_or(usize::MAX);
            if let (Some(slot), Some(job)) = (outcomes.get_mut(item), jobs.get(item)) {
                *slot = Some(outcome(job, row, now, today, caps));
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(StoreError::Outcome("no answer".into()))))
            .collect())
    }
}

/// What one row of `huaxian_enqueue` means for `job`.
fn outcome(
    job: &NewJob,
    row: EnqueueRow,
    now: DateTime<Utc>,
    today: DateTime<Utc>,
    caps: &crate::Caps,
) -> Result<Enqueued, StoreError> {
    let (_, outcome, job_id, user_id, lane, model, pixels, key, ready_at, amount, word) = row;
    let outcome = outcome.unwrap_or_default();
    let amount = amount.unwrap_or(0);
    let refusal = match outcome.as_str() {
        "created" | "existing" => {
            let (Some(job_id), Some(user_id), Some(lane), Some(model), Some(pixels), Some(key)) =
                (job_id, user_id, lane, model, pixels, key)
            else {
                return Err(StoreError::Outcome(format!("{outcome} without its job")));
            };
            let created = outcome == "created";
            if created {
                debug!(job = %job_id, user = user_id, lane = %lane, "job queued");
            }
            return Ok(Enqueued {
                ticket: Ticket {
                    job_id,
                    user_id,
                    lane: Lane::parse(&lane),
                    model,
                    pixels,
                    batch_key: key,
                    ready_at,
                },
                created,
            });
        }
        "banned" => Refusal::Banned,
        "quota" => Refusal::QuotaExhausted {
            left_ms: amount,
            needed_ms: job.estimate_ms,
            resets_at: period_end(caps, now),
        },
        "user_queue" => Refusal::UserQueueFull(amount),
        "rate" => Refusal::RateLimited(caps.commands_per_minute),
        "daily" => Refusal::DailyImages {
            limit: caps.daily_images,
            resets_at: today + Duration::days(1),
        },
        "guild_queue" => Refusal::GuildQueueFull(amount),
        "banned_word" => Refusal::BannedWord(word.unwrap_or_default()),
        "conflict" => {
            return Err(StoreError::Outcome(
                "the interaction or button already has a job, which could not be read".into(),
            ))
        }
        _ => {
            return Err(StoreError::Outcome(format!(
                "outcome {outcome:?}; is the schema from another release?"
            )))
        }
    };
    Err(refusal.into())
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
