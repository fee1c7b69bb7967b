//! `huaxian`: one binary, one subcommand per service.

mod expand;
mod gateway;
mod generate;
mod hub;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "huaxian",
    version,
    about = "Self-hosted image generation for Discord"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render images from a prompt with a local model, no services needed.
    Generate(Box<generate::Args>),
    /// Serve queued jobs on this machine's device with the configured models.
    Worker(worker::Args),
    /// Continue a prompt with a GPT-2 expander model, as `--expand` does.
    Expand(expand::Args),
    /// Serve the Discord bot: slash commands, buttons, progress and results.
    Gateway(gateway::Args),
    /// Bring the database up to this version's schema, then exit.
    Migrate(gateway::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only the commands that run libtorch; the services without it keep glibc's defaults.
    if matches!(
        cli.command,
        Command::Generate(_) | Command::Worker(_) | Command::Expand(_)
    ) {
        huaxian_engine::cpu::tune_process();
    }
    // Services log what operators follow (jobs started and finished); the one-shot command
    // keeps the terminal for its progress bar.
    let default_filter = match cli.command {
        Command::Generate(_) | Command::Expand(_) => "warn",
        // sqlx reports Postgres notices such as "relation already exists" at info.
        Command::Worker(_) | Command::Gateway(_) | Command::Migrate(_) => "info,sqlx=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let result = match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Worker(args) => worker::run(args),
        Command::Expand(args) => expand::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Migrate(args) => gateway::migrate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
