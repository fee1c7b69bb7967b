//! Worker benchmark: images per second for concurrent `imagine` jobs rendered as one batch
//! against the same jobs one at a time, on the same worker code, model and device, with the
//! real Postgres, Redis and a blob folder. Prints the figures side by side with the target,
//! and the process's peak memory.
//!
//! Each run queues all jobs first, then starts a worker and times from its start to the last
//! result; model loading is outside the timing. Runs alternate serial and batched, so drift
//! on a shared machine affects both.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use huaxian_engine::{parse_device_and_dtype, LoadOptions, StableDiffusion};
use huaxian_prompt::JobSpec;
use huaxian_queue::{Config, Dispatcher, Outcome};
use huaxian_service::BlobStore;
use huaxian_store::{Caps, NewJob, Store};
use huaxian_worker::render::{render_batch, RenderJob, RenderOutcome};
use huaxian_worker::renderer::Renderer;
use huaxian_worker::{Models, Worker, WorkerSettings};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::watch;

#[derive(Parser)]
struct Args {
    /// A diffusers folder or single file; default: the tiny fixture model.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Concurrent `imagine` jobs (4 images each).
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Runs of each mode, alternating.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The batching target, as a multiple of serial images per second.
    #[arg(long, default_value_t = 1.3)]
    target: f64,
    /// Time the worker's batch renderer alone, without Postgres, Redis or blobs (for
    /// machines that have a GPU but not the services): serial renders one job per call.
    #[arg(long)]
    direct: bool,
    /// Postgres URL from which the benchmark creates and drops its databases.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads exist: the allocator settings are process-wide.
    huaxian_engine::cpu::tune_process();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = Args::parse();
    let (device, kind) = parse_device_and_dtype(&args.device, &args.dtype)?;
    let model_path = args.model.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/sd1")
    });
    let options = LoadOptions {
        device,
        kind,
        config_dir: None,
    };
    println!(
        "worker-bench: {} jobs × 4 images, {}×{}, {} steps, model {}, device {:?}, dtype {}",
        args.jobs,
        args.size,
        args.size,
        args.steps,
        model_path.display(),
        device,
        args.dtype
    );

    let load = || {
        let (path, options) = (model_path.clone(), options.clone());
        move || -> anyhow::Result<Models> {
            let model = StableDiffusion::load(&path, &options)
                .with_context(|| format!("loading {}", path.display()))?;
            Ok(Models::one("bench", model))
        }
    };
    let resident = if args.direct {
        Some(Renderer::start(load()).await?.0)
    } else {
        None
    };
    let mut serial = Vec::new();
    let mut batched = Vec::new();
    for run in 0..args.runs {
        for (max_batch, figures) in [(1, &mut serial), (args.jobs as u32, &mut batched)] {
            let seconds = match &resident {
                Some(renderer) => {
                    let jobs = render_jobs(&args)?;
                    let per_call = max_batch as usize;
                    renderer
                        .run(move |models| direct_run(jobs, per_call, &models.diffusion["bench"]))
                        .await??
                }
                None => timed_run(&args, max_batch, load()).await?,
            };
            let rate = (args.jobs * 4) as f64 / seconds;
            println!(
                "run {}: max_batch {:>2}: {:.2} s, {:.2} images/s",
                run + 1,
                max_batch,
                seconds,
                rate
            );
            figures.push(rate);
        }
    }

    let serial = median(&mut serial);
    let batched = median(&mut batched);
    let ratio = batched / serial;
    println!();
    println!("| figure | serial | batched | batched / serial | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| images/s (median of {}) | {serial:.2} | {batched:.2} | {ratio:.2} | ≥ {:.2} {} |",
        args.runs,
        args.target,
        if ratio >= args.target {
            "met"
        } else {
            "not met"
        }
    );
    println!(
        "| worker peak RSS | {:.2} GiB (whole process, all runs) | | | |",
        peak_rss_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The process's peak resident memory, from `/proc/self/status`.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The benchmark's jobs as the worker's renderer takes them.
fn render_jobs(args: &Args) -> anyhow::Result<Vec<RenderJob>> {
    let mut jobs = Vec::new();
    for n in 0..args.jobs {
        let spec = spec(args, n);
        let seed = u64::from(spec.seed.unwrap_or(0));
        let requests = (0..4)
            .map(|i| huaxian_worker::plan::base_request(&spec, seed + i))
            .collect::<Result<Vec<_>, _>>()?;
        jobs.push(RenderJob {
            job_id: uuid::Uuid::new_v4(),
            requests,
            grid: true,
            expand: false,
            control: Default::default(),
        });
    }
    Ok(jobs)
}

/// Renders the jobs with the worker's batch renderer, `per_call` jobs per call.
fn direct_run(
    jobs: Vec<RenderJob>,
    per_call: usize,
    model: &StableDiffusion,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for chunk in jobs.chunks(per_call.max(1)) {
        let (outcomes, _) = render_batch(model, chunk, &mut |_| {});
        for outcome in outcomes {
            if let RenderOutcome::Failed { message, .. } = outcome {
                bail!("a job failed: {message}");
            }
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Queues the jobs, starts a worker taking `max_batch` per claim, and returns the seconds
/// from its start to the last result.
async fn timed_run<F>(args: &Args, max_batch: u32, load: F) -> anyhow::Result<f64>
where
    F: FnOnce() -> anyhow::Result<Models> + Send + 'static,
{
    let name = format!("huaxian_wbench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let url = huaxian_store::with_database(&args.database_url, &name);
    let prefix = format!("wbench-{}", uuid::Uuid::new_v4().simple());
    let blobs_dir = tempfile::tempdir()?;

    let outcome = async {
        let caps = Caps {
            running_per_user: 1000,
            fast_ms_per_period: i64::MAX / 4,
            ..Caps::default()
        };
        let store = Store::connect(&url, 8, caps).await?;
        let config = Config {
            prefix: prefix.clone(),
            lease: Duration::from_secs(600),
            ..Config::default()
        };
        let dispatcher = Dispatcher::connect(store, &args.redis_url, config).await?;
        let mut jobs = Vec::new();
        for n in 0..args.jobs {
            let job = NewJob::imagine(spec(args, n), n as i64, n as i64, 1);
            jobs.push(dispatcher.submit(&job).await?.ticket.job_id);
        }

        let settings = WorkerSettings {
            id: Some(format!("bench-{max_batch}")),
            max_batch,
            max_pixels: i64::from(args.size) * i64::from(args.size),
            lease_s: 600.0,
            idle_poll_ms: 5,
            ..WorkerSettings::default()
        };
        let blobs = BlobStore::open(blobs_dir.path().to_str().unwrap_or("."))?;
        let worker = Worker::new(settings, dispatcher.clone(), blobs, load, 1 << 20).await?;
        let (stop, shutdown) = watch::channel(false);
        let started = Instant::now();
        let running = tokio::spawn(worker.run(shutdown));

        let mut reader = dispatcher.event_reader().await?;
        let mut left = jobs.len();
        while left > 0 {
            let deliveries = reader
                .read_results("bench", "b", 64, Duration::from_millis(200))
                .await?;
            for delivery in deliveries {
                dispatcher.ack_result("bench", &delivery.entry_id).await?;
                if delivery.result.outcome != Outcome::Succeeded {
                    bail!("a job failed: {:?}", delivery.result.error);
                }
                left -= 1;
            }
            if started.elapsed() > Duration::from_secs(3600) {
                bail!("the jobs took over an hour");
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let _ = stop.send(true);
        running.await??;
        anyhow::Ok(seconds)
    }
    .await;

    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut redis, format!("{prefix}:*")).await?;
    if !keys.is_empty() {
        let _: () = redis::AsyncCommands::del(&mut redis, keys).await?;
    }
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await?;
    outcome
}

fn spec(args: &Args, n: usize) -> JobSpec {
    let prompt = format!("benchmark scene number {n}, a harbour at dawn");
    JobSpec {
        negative: "blurry".into(),
        width: args.size,
        height: args.size,
        seed: Some(1000 + n as u32 * 4),
        steps: args.steps,
        sampler: "ddim".into(),
        ..JobSpec::new(&prompt, "bench")
    }
}
