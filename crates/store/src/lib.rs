//! The Postgres store of huaxian: users and their settings, guilds, jobs, images, the
//! fast-lane quota ledger, the audit log and workers. It is the only crate that writes SQL.
//!
//! Invariants it keeps:
//! - A job moves `queued → running → succeeded | failed | cancelled` (and `running → queued`
//!   for a retry). Every transition names the state and the attempt it expects and writes
//!   only if the row still has them: in one guarded statement, or (starting and completing
//!   a claimed batch, in `huaxian_start` and `huaxian_complete`) by checking the locked row
//!   in the transaction that writes it. The attempt is raised by every start, so it fences
//!   stale workers: a worker whose lease ran out can no longer renew, complete, fail or
//!   charge the job.
//! - No job reaches a terminal state twice; terminal states have no way out.
//! - Every movement of fast-lane time is a `quota_ledger` row written in the same
//!   transaction as `users.fast_balance_ms`, so a balance always equals its ledger sum, and a
//!   CHECK keeps it from going negative.
//! - Caps are checked with the user's row (and the guild's) locked, so concurrent requests
//!   are serialised per user and never pass a cap together.
//! - An interaction id and part make at most one job; a button (parent job, action, user) has
//!   at most one live job.
//! - Accepting, starting and completing jobs each cost one round trip: the steps run in
//!   stored functions (migrations/0004), with the service's caps and clock as arguments.

mod admin;
mod complete;
mod config;
mod enqueue;
mod error;
mod model;
mod quota;
mod read;
mod start;
mod stats;
mod transition;

pub use admin::{UserSettings, Worker};
pub use complete::Finished;
pub use config::Caps;
pub use error::{Refusal, StoreError};
pub use model::{
    Action, Enqueued, Job, JobKind, JobState, Lane, NewImage, NewJob, StoredImage, Ticket,
};
pub use quota::Balance;
pub use stats::{LaneDepth, QueueStats};
pub use transition::{Completed, Expired, Failure, Start};

use sqlx::postgres::{PgPool, PgPoolOptions};

/// The migrations of `migrations/` at the repository root, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A pool on `url`, after one plain connection: a pool retries failed connections until its
/// timeout and then says only that it timed out, while one attempt fails at once with the
/// reason (refused, authentication, no such database). Errors name the server, never the
/// password.
async fn open_pool(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::Connection as _;

    let not_postgres = |detail: String| StoreError::Connect {
        address: "the configured URL".into(),
        reason: format!("it is not a postgres:// URL{detail}"),
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(not_postgres(String::new()));
    }
    let options: PgConnectOptions = url
        .parse()
        .map_err(|error: sqlx::Error| not_postgres(format!(" ({error})")))?;
    let address = format!("{}:{}", options.get_host(), options.get_port());
    let failed = |error: sqlx::Error| StoreError::Connect {
        address: address.clone(),
        reason: error.to_string(),
    };
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options));
    match probe.await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
        }
        Ok(Err(error)) => return Err(failed(error)),
        Err(_) => {
            return Err(StoreError::Connect {
                address,
                reason: format!("no answer in {CONNECT_TIMEOUT:?}"),
            })
        }
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(failed)
}

/// How long connecting to Postgres may take before a service gives up with the reason.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Handle on the database; cheap to clone, shares one pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    caps: Caps,
}

impl Store {
    /// Connects with a pool of up to `max_connections` and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32, caps: Caps) -> Result<Self, StoreError> {
        let pool = open_pool(url, max_connections).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, caps })
    }

    /// Brings the database at `url` up to this build's schema, and returns the migrations
    /// it applied now, as (version, description); none when it was already current. A
    /// database migrated by a newer build is refused rather than touched.
    pub async fn migrate(url: &str) -> Result<Vec<(i64, String)>, StoreError> {
        use sqlx::migrate::Migrate as _;

        let pool = open_pool(url, 1).await?;
        let mut connection = pool.acquire().await?;
        connection.ensure_migrations_table().await?;
        let before: Vec<i64> = connection
            .list_applied_migrations()
            .await?
            .into_iter()
            .map(|applied| applied.version)
            .collect();
        drop(connection);
        MIGRATOR.run(&pool).await?;
        pool.close().await;
        Ok(MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !before.contains(&m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect())
    }

    /// Wraps a pool whose database is already migrated (tests, embedding services).
    pub fn from_pool(pool: PgPool, caps: Caps) -> Self {
        Self { pool, caps }
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The caps this store enforces.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }
}

/// `url` with its database name replaced by `database`, keeping everything else: user,
/// password, server and the query (`sslmode` and the like). For tools that make a database
/// of their own on a server they were given.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // The database is the path after the authority; a URL may also have none.
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{root}/{database}?{query}"),
        None => format!("{root}/{database}"),
    }
}

/// The database name in a `postgres://` URL, if it names one.
pub fn database_name(url: &str) -> Option<&str> {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    let after = base.find("://").map_or(base, |i| &base[i + 3..]);
    after
        .split_once('/')
        .map(|(_, name)| name)
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{database_name, with_database};

    #[test]
    fn database_urls_keep_their_server_and_query() {
        assert_eq!(
            with_database("postgres://u:p@db:5432/postgres", "t1"),
            "postgres://u:p@db:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u@db/postgres?sslmode=disable", "t1"),
            "postgres://u@db/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://db:5432", "t1"),
            "postgres://db:5432/t1"
        );
        assert_eq!(
            database_name("postgres://u@db/t1?sslmode=require"),
            Some("t1")
        );
        assert_eq!(database_name("postgres://u@db"), None);
    }
}
