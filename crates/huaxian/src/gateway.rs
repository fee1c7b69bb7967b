//! `huaxian gateway`: serves the Discord bot until SIGTERM.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use huaxian_gateway::{Gateway, Options, Settings};
use tokio::sync::watch;

use crate::worker::wait_for_signal;

#[derive(Parser, Debug)]
pub struct Args {
    /// The service's TOML configuration; `HUAXIAN__SECTION__KEY` variables override it.
    #[arg(long, env = "HUAXIAN_CONFIG")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let settings: Settings = huaxian_service::load(args.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let gateway = Gateway::start(settings, Options::default()).await?;
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stop signal received; closing the Discord connection");
            let _ = stop.send(true);
        });
        gateway.run(shutdown).await
    })
}
