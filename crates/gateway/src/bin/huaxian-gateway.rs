//! `huaxian-gateway`: the Discord gateway alone, for the gateway's container image. It is
//! `huaxian gateway` without the engine, so it links no libtorch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Serve the Discord bot: slash commands, buttons, progress and results.
#[derive(Parser)]
#[command(name = "huaxian-gateway", version)]
struct Cli {
    /// The service's TOML configuration; `HUAXIAN__SECTION__KEY` variables override it.
    #[arg(long, env = "HUAXIAN_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match huaxian_gateway::command::run(cli.config.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
