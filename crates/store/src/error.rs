//! Errors and refusals.

use chrono::{DateTime, Utc};

/// Why a request for a job was refused; each message tells the user what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("you are banned from making images here; ask a moderator if this is a mistake")]
    Banned,
    #[error("your prompt contains the word {0:?}, which this server does not allow")]
    BannedWord(String),
    #[error("you already have {0} jobs queued; wait for one to start")]
    UserQueueFull(i64),
    #[error("this server already has {0} jobs queued; try again in a minute")]
    GuildQueueFull(i64),
    #[error("too many commands: at most {0} per minute; try again shortly")]
    RateLimited(i64),
    #[error("daily image limit of {limit} reached; it resets at {resets_at} (UTC midnight)")]
    DailyImages {
        limit: i64,
        resets_at: DateTime<Utc>,
    },
    #[error(
        "fast GPU time used up ({left_ms} ms left, {needed_ms} ms needed); it resets at \
         {resets_at}; use the relax lane until then"
    )]
    QuotaExhausted {
        left_ms: i64,
        needed_ms: i64,
        resets_at: DateTime<Utc>,
    },
}

/// Failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request was understood and refused; show the message to the user.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The job is no longer in the state and attempt the caller holds: another worker owns
    /// it now, or it ended. The caller must drop its work on it.
    #[error("job {0} is no longer held at that attempt; drop the work")]
    Stale(uuid::Uuid),
    #[error("job {0} does not exist")]
    NoSuchJob(uuid::Uuid),
    /// A stored function answered something this build cannot use: a bug, or a schema
    /// from another release.
    #[error("unexpected answer from the database: {0}")]
    Outcome(String),
    // The causes below are shown in the message and not also kept as `source()`, so an
    // error chain printed whole does not say them twice.
    #[error("a stored job spec could not be read: {0}")]
    Spec(serde_json::Error),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The database URL names no server we could reach or log in to.
    #[error("cannot connect to Postgres at {address}: {reason}; check [database] url")]
    Connect { address: String, reason: String },
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Spec(error)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(error)
    }
}
