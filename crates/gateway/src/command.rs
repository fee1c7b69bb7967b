//! The gateway as a command: `huaxian gateway` and the libtorch-free `huaxian-gateway`
//! binary of the gateway's container image both run this.

use std::path::Path;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::{Gateway, Options, Settings};

/// Reads the configuration (`file`, then `HUAXIAN__…` variables) and serves Discord until
/// SIGTERM or Ctrl-C.
pub fn run(file: Option<&Path>) -> anyhow::Result<()> {
    let settings: Settings = huaxian_service::load(file)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let gateway = Gateway::start(settings, Options::default()).await?;
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            huaxian_service::wait_for_signal().await;
            tracing::info!("stop signal received; closing the Discord connection");
            let _ = stop.send(true);
        });
        gateway.run(shutdown).await
    })
}
