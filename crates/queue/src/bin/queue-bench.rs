//! Dispatch benchmark against the local Postgres and Redis: latency of one enqueue, then
//! end-to-end throughput (submit → claim → complete) with simulated workers. Uses a fresh
//! database and key prefix, removed afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use huaxian_prompt::JobSpec;
use huaxian_queue::{Config, Dispatcher, Done, WorkerSpec};
use huaxian_store::{Caps, Lane, NewJob, Store};
use redis::AsyncCommands;
use sqlx::{Connection, Executor, PgConnection};

#[derive(Parser)]
struct Args {
    /// Postgres URL from which the benchmark creates and drops its database; default
    /// `$DATABASE_URL`, else the local server.
    #[arg(long)]
    database_url: Option<String>,
    /// Redis URL; default `$REDIS_URL`, else the local server.
    #[arg(long)]
    redis_url: Option<String>,
    /// Jobs in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent submitters in the throughput run.
    #[arg(long, default_value_t = 16)]
    submitters: usize,
    /// Simulated workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Jobs a worker takes per claim.
    #[arg(long, default_value_t = 8)]
    batch: u32,
    /// Sequential enqueues timed for the latency figures.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
}

fn spec() -> JobSpec {
    JobSpec {
        seed: Some(1),
        steps: 20,
        ..JobSpec::new("bench", "sd15")
    }
}

fn job(user_id: i64, interaction_id: i64) -> NewJob {
    // Every fifth job waits in the relax lane, so both lanes are exercised.
    let lane = if interaction_id % 5 == 0 {
        Lane::Relax
    } else {
        Lane::Fast
    };
    NewJob {
        lane,
        ..NewJob::imagine(spec(), user_id, interaction_id, 1)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.database_url = Some(args.database_url.take().unwrap_or_else(|| {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }));
    args.redis_url = Some(args.redis_url.take().unwrap_or_else(|| {
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }));
    let database_url = args.database_url.clone().unwrap_or_default();
    let redis_url = args.redis_url.clone().unwrap_or_default();
    let name = format!("huaxian_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&database_url)
        .await
        .context("connecting to Postgres")?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let root = database_url.rsplit_once('/').map_or("", |(root, _)| root);
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());

    let result = run(&args, &format!("{root}/{name}"), &prefix).await;

    let client = redis::Client::open(redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis.keys(format!("{prefix}:*")).await?;
    if !keys.is_empty() {
        let _: () = redis.del(keys).await?;
    }
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await?;
    result
}

async fn run(args: &Args, database_url: &str, prefix: &str) -> anyhow::Result<()> {
    let caps = Caps {
        queued_per_user: i64::MAX,
        running_per_user: i64::MAX,
        queued_per_guild: i64::MAX,
        running_per_guild: i64::MAX,
        commands_per_minute: i64::MAX,
        daily_images: i64::MAX,
        fast_ms_per_period: i64::MAX / 4,
        ..Caps::default()
    };
    let store = Store::connect(database_url, 24, caps).await?;
    let config = Config {
        prefix: prefix.into(),
        ..Config::default()
    };
    let dispatcher =
        Dispatcher::connect(store, args.redis_url.as_deref().unwrap_or_default(), config).await?;

    // Latency of one enqueue, one at a time on an idle system.
    let mut latencies = Vec::with_capacity(args.samples);
    for n in 0..args.samples {
        let started = Instant::now();
        dispatcher
            .submit(&job(1_000_000 + n as i64 % 50, -(n as i64) - 1))
            .await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let spec = WorkerSpec {
        id: "drain".into(),
        model: "sd15".into(),
        max_pixels: 1 << 30,
        max_batch: 64,
    };
    while !dispatcher.claim(&spec).await?.is_empty() {}

    // End to end: submitters and workers at once, until every job is complete.
    let total = args.jobs;
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.submitters {
        let dispatcher = dispatcher.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                dispatcher.submit(&job(n as i64 % 500, n as i64)).await?;
            }
        }));
    }
    let submitted_at = Arc::new(std::sync::Mutex::new(None::<Duration>));
    for w in 0..args.workers {
        let dispatcher = dispatcher.clone();
        let done = done.clone();
        let spec = WorkerSpec {
            id: format!("bench-{w}"),
            model: "sd15".into(),
            max_pixels: 1 << 30,
            max_batch: args.batch,
        };
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < total {
                let claimed = dispatcher.claim(&spec).await?;
                if claimed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let finished: Vec<_> = claimed
                    .iter()
                    .map(|claimed| Done {
                        claimed,
                        measured_ms: 900,
                        images: Vec::new(),
                        grid_key: None,
                        final_prompt: None,
                    })
                    .collect();
                dispatcher.complete_batch(&spec.id, &finished).await?;
                done.fetch_add(claimed.len(), Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let watcher = {
        let next = next.clone();
        let submitted_at = submitted_at.clone();
        tokio::spawn(async move {
            while next.load(Ordering::Relaxed) < total {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Ok(mut at) = submitted_at.lock() {
                *at = Some(started.elapsed());
            }
        })
    };
    for task in tasks {
        task.await??;
    }
    watcher.await?;
    let elapsed = started.elapsed();
    let submit_time = submitted_at
        .lock()
        .ok()
        .and_then(|at| *at)
        .unwrap_or(elapsed);

    let end_to_end = total as f64 / elapsed.as_secs_f64();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!(
        "queue-bench: {total} jobs, {} submitters, {} workers (batch {})",
        args.submitters, args.workers, args.batch
    );
    println!(
        "  enqueue throughput   {:>9.0} jobs/s",
        total as f64 / submit_time.as_secs_f64()
    );
    println!(
        "  end to end           {:>9.0} jobs/s   target >= 2000   {}",
        end_to_end,
        if end_to_end >= 2000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!("  one enqueue p50      {:>9.2} ms", p50.as_secs_f64() * 1e3);
    println!(
        "  one enqueue p99      {:>9.2} ms   target < 10      {}",
        p99.as_secs_f64() * 1e3,
        if p99 < Duration::from_millis(10) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
