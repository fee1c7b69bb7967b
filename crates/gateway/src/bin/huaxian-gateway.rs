//! `huaxian-gateway`: the Discord gateway alone, for the gateway's container image. It is
//! `huaxian gateway` without the engine, so it links no libtorch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Serve the Discord bot: slash commands, buttons, progress and results.
#[derive(Parser)]
#[command(name = "huaxian-gateway", version)]
struct Cli {
    /// The service's TOML configuration; `HUAXIAN__SECTION__KEY` variables override it.
    #[arg(long, env = "HUAXIAN_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the database up to this version's schema, then exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = cli.config.as_deref();
    let result = match cli.command {
        None => huaxian_gateway::command::run(config),
        Some(Command::Migrate) => huaxian_service::migrate(config).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
