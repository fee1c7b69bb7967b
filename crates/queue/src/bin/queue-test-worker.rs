//! A worker process for the failure tests: claims one job, holds it while renewing its
//! lease, then completes it, reporting each step on stdout as one line
//! (`claimed <job> <attempt>`, `renew ok|stale`, `complete ok|stale`, `idle`).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use huaxian_queue::{Config, DispatchError, Dispatcher, WorkerSpec};
use huaxian_store::{Caps, NewImage, Store, StoreError};

#[derive(Parser)]
struct Args {
    /// Postgres URL of the (already migrated) test database.
    #[arg(long)]
    database_url: String,
    /// Redis URL.
    #[arg(long)]
    redis_url: String,
    /// Redis key prefix of the test.
    #[arg(long)]
    prefix: String,
    /// This worker's id.
    #[arg(long)]
    worker: String,
    /// Model the worker serves.
    #[arg(long, default_value = "sd15")]
    model: String,
    /// Lease length in milliseconds.
    #[arg(long, default_value_t = 1000)]
    lease_ms: u64,
    /// How long to hold the job before completing it, in milliseconds.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Interval between lease renewals while holding, in milliseconds.
    #[arg(long, default_value_t = 200)]
    renew_ms: u64,
    /// GPU time reported for the job, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    measured_ms: i64,
    /// How long to keep trying to claim before giving up, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    wait_ms: u64,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn stale(error: &DispatchError) -> bool {
    matches!(error, DispatchError::Store(StoreError::Stale(_)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = Store::connect(&args.database_url, 2, Caps::default())
        .await
        .context("connecting to Postgres")?;
    let config = Config {
        prefix: args.prefix.clone(),
        lease: Duration::from_millis(args.lease_ms),
        ..Config::default()
    };
    let dispatcher = Dispatcher::connect(store, &args.redis_url, config)
        .await
        .context("connecting to Redis")?;
    let spec = WorkerSpec {
        id: args.worker.clone(),
        model: args.model.clone(),
        max_pixels: 4096 * 4096,
        max_batch: 1,
    };

    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    let claimed = loop {
        if let Some(claimed) = dispatcher.claim(&spec).await?.pop() {
            break claimed;
        }
        if Instant::now() > deadline {
            say("idle");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    say(&format!(
        "claimed {} {}",
        claimed.ticket.job_id, claimed.attempt
    ));

    let hold_until = Instant::now() + Duration::from_millis(args.hold_ms);
    while Instant::now() < hold_until {
        tokio::time::sleep(Duration::from_millis(args.renew_ms)).await;
        match dispatcher.renew(&args.worker, &claimed).await {
            Ok(()) => say("renew ok"),
            Err(error) if stale(&error) => say("renew stale"),
            Err(error) => return Err(error.into()),
        }
    }

    let image = NewImage {
        index: 0,
        blob_key: format!("test/{}/0.png", claimed.ticket.job_id),
        width: 512,
        height: 512,
        bytes: 1,
        seed: 1,
    };
    match dispatcher
        .complete(&args.worker, &claimed, args.measured_ms, &[image])
        .await
    {
        Ok(_) => say("complete ok"),
        Err(error) if stale(&error) => say("complete stale"),
        Err(error) => return Err(error.into()),
    }
    Ok(())
}
