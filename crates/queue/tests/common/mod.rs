//! Shared test helpers: a dispatcher on the test's own database and Redis key prefix.

#![allow(dead_code)]

use std::time::Duration;

use huaxian_prompt::{JobSpec, PromptPart};
use huaxian_queue::{Config, Dispatcher, WorkerSpec};
use huaxian_store::{Caps, JobKind, Lane, NewJob, Store};
use redis::AsyncCommands;
use sqlx::PgPool;

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn spec(model: &str, size: u32, steps: u32) -> JobSpec {
    JobSpec {
        prompt: vec![PromptPart {
            text: "a lighthouse".into(),
            weight: 1.0,
        }],
        negative: String::new(),
        width: size,
        height: size,
        aspect: (1, 1),
        seed: Some(1),
        steps,
        stop_percent: 100,
        guidance: 7.0,
        stylize: 100,
        chaos: 0,
        quality: 1.0,
        sampler: "euler_a".into(),
        model: model.into(),
        raw: "a lighthouse".into(),
        expand: None,
    }
}

pub fn job(user_id: i64, interaction_id: i64, lane: Lane) -> NewJob {
    NewJob {
        kind: JobKind::Imagine,
        spec: spec("sd15", 512, 20),
        lane,
        images: 4,
        estimate_ms: 1000,
        parent: None,
        image_index: None,
        inputs: Vec::new(),
        interaction_id,
        user_id,
        guild_id: None,
        channel_id: 1,
    }
}

pub fn caps() -> Caps {
    Caps {
        running_per_user: 1000,
        queued_per_user: 1000,
        running_per_guild: 1000,
        queued_per_guild: 100_000,
        commands_per_minute: 100_000,
        daily_images: 1_000_000,
        fast_ms_per_period: 1_000_000_000,
        retry_backoff: chrono::Duration::zero(),
        ..Caps::default()
    }
}

pub fn config() -> Config {
    Config {
        prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        reconcile_grace: Duration::ZERO,
        ..Config::default()
    }
}

pub async fn dispatcher(pool: PgPool, caps: Caps, config: Config) -> Dispatcher {
    Dispatcher::connect(Store::from_pool(pool, caps), &redis_url(), config)
        .await
        .unwrap()
}

pub fn worker(id: &str) -> WorkerSpec {
    WorkerSpec {
        id: id.into(),
        model: "sd15".into(),
        max_pixels: 1024 * 1024,
        max_batch: 1,
    }
}

/// Deletes every key under the prefix: what a FLUSHALL does to this test's dispatch, without
/// touching the tests running next to it.
pub async fn flush(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis.keys(format!("{prefix}:*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).await.unwrap();
    }
}

/// The name of the test's database, for worker processes to connect to.
pub async fn database_url(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let root = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(root, _)| root);
    format!("{root}/{name}")
}
