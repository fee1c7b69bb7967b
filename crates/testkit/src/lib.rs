//! Test support: where the test services are, and cleaning up after a test.
//!
//! Each test gets its own database from `#[sqlx::test]` and its own Redis key prefix, so
//! tests run side by side; these helpers name the services (`DATABASE_URL`, `REDIS_URL`,
//! or the local defaults) and remove a test's Redis keys.

use redis::AsyncCommands;
use sqlx::PgPool;

/// The Redis the tests use: `$REDIS_URL`, else the local server.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The URL of the database `pool` is connected to, on the server of `$DATABASE_URL`, for
/// processes the test starts.
pub async fn database_url(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("the test database answers");
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    huaxian_store::with_database(&base, &name)
}

/// Deletes every key under `prefix`: what a FLUSHALL does to one test's dispatch, without
/// touching the tests running beside it.
pub async fn flush(prefix: &str) {
    let client = redis::Client::open(redis_url()).expect("a valid REDIS_URL");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis answers");
    let keys: Vec<String> = redis
        .keys(format!("{prefix}:*"))
        .await
        .expect("KEYS answers");
    if !keys.is_empty() {
        let _: () = redis.del(keys).await.expect("DEL answers");
    }
}

/// A database of its own on the server of `$DATABASE_URL`, for benchmarks and tools that
/// run outside `#[sqlx::test]`; drop it with [`drop_database`].
pub async fn scratch_database(name_prefix: &str) -> Result<String, sqlx::Error> {
    use sqlx::{Connection, Executor};

    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("{name_prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    Ok(huaxian_store::with_database(&base, &name))
}

/// Drops a database [`scratch_database`] made, closing its connections.
pub async fn drop_database(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};

    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let Some(name) = huaxian_store::database_name(url) else {
        return Ok(());
    };
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    Ok(())
}
