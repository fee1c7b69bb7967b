//! Acknowledgement latency of the gateway: how long from Discord sending an interaction to
//! the bot's first response arriving back, against the target of p99 < 50 ms.
//!
//! The gateway runs in this process against the loopback Discord (serenity unchanged,
//! HTTPS REST and the websocket gateway on 127.0.0.1), with the local Postgres and Redis
//! in a database and key prefix of its own, removed afterwards. Each interaction is an
//! `/imagine` from one of 100 users, sent in waves of `--concurrency`; the time is measured
//! by the fake, from writing the event to the socket to receiving the callback, so it
//! includes serenity's event handling and one HTTPS round trip.
//!
//! ```text
//! cargo run --release -p huaxian-gateway --example ack_bench -- --interactions 500
//! ```

use std::time::Duration;

use clap::Parser;
use huaxian_discord_loopback::{Loopback, Slash, User};
use huaxian_gateway::{Gateway, Options, Settings};
use serde_json::json;
use tokio::sync::watch;

/// The issue's target for the 99th percentile.
const TARGET_P99: Duration = Duration::from_millis(50);

#[derive(Parser)]
struct Args {
    /// Interactions timed (after 20 warm-up ones).
    #[arg(long, default_value_t = 500)]
    interactions: usize,
    /// Interactions sent at once in each wave.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let database = huaxian_testkit::scratch_database("huaxian_ackbench").await?;
    let prefix = format!("ackbench-{}", uuid::Uuid::new_v4().simple());
    let outcome = run(&args, &database, &prefix).await;
    huaxian_testkit::flush(&prefix).await;
    huaxian_testkit::drop_database(&database).await?;
    outcome
}

async fn run(args: &Args, database: &str, prefix: &str) -> anyhow::Result<()> {
    let discord = Loopback::start().await;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{database}\"\n[redis]\nurl = \"{redis}\"\nprefix = \"{prefix}\"\n\
             [blob]\nurl = \"{blobs}\"\n[caps]\ncommands_per_minute = 100000\n\
             queued_per_user = 100000\nqueued_per_guild = 1000000\n\
             [discord]\ntoken = \"{token}\"\nguild_id = 1\n",
            redis = huaxian_testkit::redis_url(),
            blobs = dir.path().join("blobs").display(),
            token = discord.bot_token(),
        ),
    )?;
    let settings: Settings = huaxian_service::load(Some(&config))?;
    let options = Options {
        discord_client: Some(discord.http_client()),
    };
    let gateway = Gateway::start(settings, options).await?;
    let (stop, shutdown) = watch::channel(false);
    let running = tokio::spawn(gateway.run(shutdown));
    discord
        .wait_for(Duration::from_secs(60), "command registration", |state| {
            (!state.commands().is_empty()).then_some(())
        })
        .await;

    let warmup = 20;
    let total = warmup + args.interactions;
    let mut ids = Vec::with_capacity(total);
    for wave in (0..total)
        .collect::<Vec<_>>()
        .chunks(args.concurrency.max(1))
    {
        let sent = wave.iter().map(|i| {
            let user = User::new(1000 + (*i as u64 % 100), "bench");
            let prompt = format!("a lighthouse number {i} --steps 1");
            discord.slash(
                Slash::new(user, Some(1), 2, "imagine")
                    .options(json!([{ "name": "prompt", "type": 3, "value": prompt }])),
            )
        });
        let wave_ids: Vec<u64> = futures_join(sent).await;
        // The next wave goes once this one is acknowledged, as users would not all press
        // at the same microsecond anyway.
        let pending = wave_ids.clone();
        discord
            .wait_for(
                Duration::from_secs(30),
                "a wave acknowledged",
                move |state| {
                    pending
                        .iter()
                        .all(|id| {
                            state
                                .interaction(*id)
                                .is_some_and(|i| i.response_type.is_some())
                        })
                        .then_some(())
                },
            )
            .await;
        ids.extend(wave_ids);
    }

    let mut latencies: Vec<Duration> = discord.with_state(|state| {
        ids.iter()
            .skip(warmup)
            .filter_map(|id| {
                let interaction = state.interaction(*id)?;
                let callback = format!("/interactions/{id}/");
                let answered = state
                    .requests()
                    .iter()
                    .find(|r| r.path.starts_with(&callback))?;
                Some(answered.at.duration_since(interaction.dispatched_at))
            })
            .collect()
    });
    latencies.sort();
    let _ = stop.send(true);
    let _ = running.await;

    let at = |p: f64| {
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    };
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "gateway ack latency, {} /imagine interactions in waves of {} (release: {})",
        latencies.len(),
        args.concurrency,
        !cfg!(debug_assertions)
    );
    println!("| figure | measured | target |");
    println!("|---|---|---|");
    println!("| p50 | {} | |", ms(at(0.5)));
    println!("| p95 | {} | |", ms(at(0.95)));
    println!("| p99 | {} | < {} |", ms(at(0.99)), ms(TARGET_P99));
    println!("| max | {} | |", ms(at(1.0)));
    println!(
        "p99 {} the target",
        if at(0.99) < TARGET_P99 {
            "meets"
        } else {
            "misses"
        }
    );
    Ok(())
}

/// Sends the interactions of a wave together and returns their ids in order.
async fn futures_join<F>(sent: impl Iterator<Item = F>) -> Vec<u64>
where
    F: std::future::Future<Output = huaxian_discord_loopback::Interaction>,
{
    futures_util::future::join_all(sent)
        .await
        .into_iter()
        .map(|interaction| interaction.id)
        .collect()
}
