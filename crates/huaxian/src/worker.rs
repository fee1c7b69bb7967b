//! `huaxian worker`: loads the configured models and serves jobs until SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use huaxian_engine::{parse_device_and_dtype, LoadOptions};
use huaxian_service::wait_for_signal;
use huaxian_worker::{Settings, Worker};
use tch::Kind;
use tokio::sync::watch;

use crate::hub::{self, RepoRef};

#[derive(Parser, Debug)]
pub struct Args {
    /// The service's TOML configuration; `HUAXIAN__SECTION__KEY` variables override it.
    #[arg(long, env = "HUAXIAN_CONFIG")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let mut settings: Settings = huaxian_service::load(args.config.as_deref())?;
    let (device, kind) = parse_device_and_dtype(&settings.worker.device, &settings.worker.dtype)
        .context("[worker] device and dtype")?;
    for model in &mut settings.worker.models {
        if let Some(reference) = model.path.to_str().and_then(RepoRef::parse) {
            model.path = hub::fetch(&reference?, kind == Kind::Half)
                .with_context(|| format!("downloading model `{}`", model.name))?;
        }
    }
    let options = LoadOptions {
        device,
        kind,
        config_dir: None,
    };

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let worker = Worker::start(settings, options).await?;
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stop signal received; finishing the jobs in hand");
            let _ = stop.send(true);
        });
        worker.run(shutdown).await
    })
}
