//! `huaxian expand`: continue a prompt with the expander model, as `--expand` does in the
//! worker, and print the result.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use huaxian_engine::parse_device_and_dtype;
use huaxian_engine::textgen::{Decoding, Expander, Strategy};

#[derive(Parser, Debug)]
pub struct Args {
    /// A transformers GPT-2 folder: config.json, model.safetensors, tokenizer.json (or
    /// vocab.json + merges.txt).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Most tokens to add.
    #[arg(long, default_value_t = 40)]
    max_new_tokens: usize,
    /// Always take the likeliest token instead of sampling.
    #[arg(long)]
    greedy: bool,
    /// Seed of the sampling; the same seed gives the same words.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Hold the expansion to the words of this file (one word or phrase per line).
    #[arg(long)]
    allow_words: Option<PathBuf>,
    /// Keep going past end-of-text and newlines, up to --max-new-tokens (benchmarks).
    #[arg(long)]
    no_stop: bool,
    /// Print the decoding speed on stderr.
    #[arg(long)]
    timing: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> Result<()> {
    let (device, _) = parse_device_and_dtype(&args.device, "f32")?;
    let loaded = Instant::now();
    let expander = Expander::load(&args.model, device)?;
    let load_seconds = loaded.elapsed().as_secs_f64();
    let allowed = match &args.allow_words {
        Some(path) => Some(
            expander
                .allow_words_file(path)
                .with_context(|| format!("reading the word list {}", path.display()))?,
        ),
        None => None,
    };
    let strategy = if args.greedy {
        Strategy::Greedy
    } else {
        Strategy::Sample {
            top_k: Some(args.top_k),
            top_p: Some(args.top_p),
            temperature: args.temperature,
            seed: args.seed,
        }
    };
    let options = Decoding {
        max_new_tokens: args.max_new_tokens,
        strategy,
        stop_at_end: !args.no_stop,
        stop_at_newline: !args.no_stop,
        allowed,
    };
    let started = Instant::now();
    let expansion = expander.expand(&args.prompt, &options)?;
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", expansion.text);
    if args.timing {
        eprintln!(
            "load {load_seconds:.2} s; {} tokens in {seconds:.3} s: {:.1} tokens/s",
            expansion.ids.len(),
            expansion.ids.len() as f64 / seconds.max(1e-9)
        );
    }
    Ok(())
}
