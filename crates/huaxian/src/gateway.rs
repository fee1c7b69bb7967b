//! `huaxian gateway`, which serves the Discord bot until SIGTERM, and `huaxian migrate`,
//! which read the same configuration.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
pub struct Args {
    /// The service's TOML configuration; `HUAXIAN__SECTION__KEY` variables override it.
    #[arg(long, env = "HUAXIAN_CONFIG")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    huaxian_gateway::command::run(args.config.as_deref())
}

pub fn migrate(args: Args) -> Result<()> {
    Ok(huaxian_service::migrate(args.config.as_deref())?)
}
