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
    /// Concurrent submitters in the throughput run, each submitting its next job when the
    /// last is accepted (a closed loop); ignored with `--rate`. The gateway submits each
    /// interaction from a task of its own, so this stands for the requests in flight.
    #[arg(long, default_value_t = 64)]
    submitters: usize,
    /// Offer jobs at this many per second instead, each in a task of its own as Discord
    /// interactions arrive (an open loop), and report the submit latency under that load.
    #[arg(long)]
    rate: Option<f64>,
    /// Simulated workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Jobs a worker takes per claim.
    #[arg(long, default_value_t = 8)]
    batch: u32,
    /// Also time submitting alone, then claiming and completing alone, before the end to
    /// end run (on as many jobs again).
    #[arg(long)]
    phases: bool,
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

/// Submits jobs `first..first + total` from `submitters` concurrent tasks.
async fn submit_all(
    dispatcher: &Dispatcher,
    first: usize,
    total: usize,
    submitters: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..submitters {
        let dispatcher = dispatcher.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                let n = first + n;
                dispatcher.submit(&job(n as i64 % 500, n as i64)).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Submits jobs `0..total` at `rate` per second, each in a task of its own started when it
/// is due whatever the others are doing; returns each one's submit latency.
async fn offer(dispatcher: &Dispatcher, total: usize, rate: f64) -> anyhow::Result<Vec<Duration>> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut n = 0;
    while n < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        while n < due {
            let dispatcher = dispatcher.clone();
            let job = job(n as i64 % 500, n as i64);
            tasks.push(tokio::spawn(async move {
                let asked = Instant::now();
                dispatcher.submit(&job).await?;
                anyhow::Ok(asked.elapsed())
            }));
            n += 1;
        }
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.push(task.await??);
    }
    Ok(latencies)
}

/// Claims and completes jobs with `workers` simulated workers until `total` are done;
/// returns the claims that got jobs and those that found none.
async fn drain(
    dispatcher: &Dispatcher,
    total: usize,
    workers: usize,
    batch: u32,
) -> anyhow::Result<(usize, usize)> {
    let done = Arc::new(AtomicUsize::new(0));
    let claims = Arc::new(AtomicUsize::new(0));
    let empty_claims = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let dispatcher = dispatcher.clone();
        let done = done.clone();
        let claims = claims.clone();
        let empty_claims = empty_claims.clone();
        let spec = WorkerSpec {
            id: format!("bench-{w}"),
            model: "sd15".into(),
            max_pixels: 1 << 30,
            max_batch: batch,
        };
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < total {
                let claimed = dispatcher.claim(&spec).await?;
                if claimed.is_empty() {
                    empty_claims.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                dispatcher
                    .complete_batch(&spec.id, &finished(&claimed))
                    .await?;
                claims.fetch_add(1, Ordering::Relaxed);
                done.fetch_add(claimed.len(), Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((
        claims.load(Ordering::Relaxed),
        empty_claims.load(Ordering::Relaxed),
    ))
}

/// What a simulated worker reports for the jobs it claimed: no images, 0.9 s each.
fn finished(claimed: &[huaxian_queue::Claimed]) -> Vec<Done<'_>> {
    claimed
        .iter()
        .map(|claimed| Done {
            claimed,
            measured_ms: 900,
            images: Vec::new(),
            grid_key: None,
            final_prompt: None,
        })
        .collect()
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
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());

    let result = run(
        &args,
        &huaxian_store::with_database(&database_url, &name),
        &prefix,
    )
    .await;

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
    loop {
        let claimed = dispatcher.claim(&spec).await?;
        if claimed.is_empty() {
            break;
        }
        dispatcher
            .complete_batch(&spec.id, &finished(&claimed))
            .await?;
    }

    // Each phase alone first, on jobs of their own: what submitting costs, then what
    // claiming and completing cost, with nothing else running.
    let alone = if args.phases {
        let total = args.jobs;
        let started = Instant::now();
        submit_all(&dispatcher, 10_000_000, total, args.submitters).await?;
        let submit_alone = started.elapsed();
        let started = Instant::now();
        let (claims, _) = drain(&dispatcher, total, args.workers, args.batch).await?;
        Some((submit_alone, started.elapsed(), claims))
    } else {
        None
    };

    // End to end: submitters and workers at once, until every job is complete.
    let total = args.jobs;
    let started = Instant::now();
    let (submitted, drained) = tokio::join!(
        async {
            let loaded = match args.rate {
                Some(rate) => offer(&dispatcher, total, rate).await?,
                None => {
                    submit_all(&dispatcher, 0, total, args.submitters).await?;
                    Vec::new()
                }
            };
            anyhow::Ok((started.elapsed(), loaded))
        },
        drain(&dispatcher, total, args.workers, args.batch)
    );
    let (submit_time, mut loaded) = submitted?;
    let (claims, empty_claims) = drained?;
    let elapsed = started.elapsed();

    let end_to_end = total as f64 / elapsed.as_secs_f64();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    match args.rate {
        Some(rate) => println!(
            "queue-bench: {total} jobs offered at {rate:.0}/s, {} workers (batch {})",
            args.workers, args.batch
        ),
        None => println!(
            "queue-bench: {total} jobs, {} submitters, {} workers (batch {})",
            args.submitters, args.workers, args.batch
        ),
    }
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
    println!(
        "  claims               {claims:>9} ({:.1} jobs each; {empty_claims} found nothing)",
        total as f64 / claims.max(1) as f64,
    );
    if !loaded.is_empty() {
        loaded.sort();
        println!(
            "  enqueue under load   p50 {:.2} ms, p99 {:.2} ms",
            percentile(&loaded, 0.50).as_secs_f64() * 1e3,
            percentile(&loaded, 0.99).as_secs_f64() * 1e3
        );
    }
    if let Some((submit_alone, drain_alone, claims)) = alone {
        println!(
            "  submit alone         {:>9.0} jobs/s",
            total as f64 / submit_alone.as_secs_f64()
        );
        println!(
            "  claim+complete alone {:>9.0} jobs/s   ({:.1} jobs per claim)",
            total as f64 / drain_alone.as_secs_f64(),
            total as f64 / claims.max(1) as f64
        );
    }
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
