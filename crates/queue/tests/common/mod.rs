//! Shared test helpers: a dispatcher on the test's own database and Redis key prefix.

#![allow(dead_code)]

use std::time::Duration;

use huaxian_prompt::JobSpec;
use huaxian_queue::{Config, Dispatcher, WorkerSpec};
use huaxian_store::{Caps, Lane, NewJob, Store};
use sqlx::PgPool;

#[allow(unused_imports)]
pub use huaxian_testkit::{database_url, flush, redis_url};

pub fn spec(model: &str, size: u32, steps: u32) -> JobSpec {
    JobSpec {
        width: size,
        height: size,
        seed: Some(1),
        steps,
        ..JobSpec::new("a lighthouse", model)
    }
}

pub fn job(user_id: i64, interaction_id: i64, lane: Lane) -> NewJob {
    NewJob {
        lane,
        ..NewJob::imagine(spec("sd15", 512, 20), user_id, interaction_id, 1)
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
