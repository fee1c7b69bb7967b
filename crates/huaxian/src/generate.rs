//! `huaxian generate`: load a model, render, write PNGs with their parameters.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use huaxian_engine::image_io::{grid, png_with_parameters, read_image};
use huaxian_engine::pipeline::{self, parameters_text, InitImage, Request};
use huaxian_engine::{parse_device_and_dtype, LoadOptions, SamplerKind, StableDiffusion};
use indicatif::{ProgressBar, ProgressStyle};
use tch::Kind;

use crate::hub::{self, RepoRef};

#[derive(Parser, Debug)]
pub struct Args {
    /// A diffusers folder (with model_index.json), a single-file .safetensors checkpoint, or
    /// hf:owner/name[@revision] to download one from the Hugging Face Hub.
    #[arg(long)]
    model: PathBuf,
    /// For a single-file checkpoint: a diffusers folder whose configs, tokenizer and
    /// scheduler to use instead of the family defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative: String,
    /// Image i uses seed + i. Random when absent; the seed used is printed.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// ddim, euler, euler_a, euler_karras, dpmpp_2m, dpmpp_2m_karras, dpmpp_2m_sde,
    /// dpmpp_2m_sde_karras or lcm (A1111 names such as "DPM++ 2M Karras" work too).
    #[arg(long, default_value = "euler_a")]
    sampler: String,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.0)]
    guidance: f64,
    #[arg(long, default_value_t = 512)]
    width: i64,
    #[arg(long, default_value_t = 512)]
    height: i64,
    /// Images to render in one batch.
    #[arg(long, default_value_t = 4)]
    count: usize,
    /// Skip this many final text-encoder layers.
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
    /// Start from this image (image-to-image).
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// How far from the init image to go: 0 keeps it, 1 ignores it.
    #[arg(long, default_value_t = 0.6)]
    strength: f64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Folder for image-<i>.png and grid.png.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let sampler: SamplerKind = args.sampler.parse()?;
    let (device, kind) = parse_device_and_dtype(&args.device, &args.dtype)?;
    let model_path = match args.model.to_str().and_then(RepoRef::parse) {
        Some(reference) => hub::fetch(&reference?, kind == Kind::Half)?,
        None => args.model.clone(),
    };
    if !model_path.exists() {
        bail!(
            "model `{}` does not exist: pass a diffusers folder, a .safetensors file or \
             hf:owner/name",
            args.model.display()
        );
    }
    let init = match &args.init_image {
        Some(path) => Some(InitImage::new(read_image(path)?, args.strength)),
        None => None,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;

    let options = LoadOptions {
        device,
        kind,
        config_dir: args.config.clone(),
    };
    let mut model = StableDiffusion::load(&model_path, &options)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let request = Request {
        prompt: args.prompt,
        parts: Vec::new(),
        negative: args.negative,
        width: args.width,
        height: args.height,
        steps: args.steps,
        sampler,
        guidance: args.guidance,
        seed,
        count: args.count,
        clip_skip: args.clip_skip,
        init,
        stop_at: None,
    };
    request.validate(&model)?;

    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(request.steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut progress = |info: &pipeline::StepInfo| {
        bar.set_length(info.steps as u64);
        bar.set_position(info.step as u64);
        ControlFlow::Continue(())
    };
    // One render: encode the prompts, then free the text encoder before the UNet runs.
    let requests = std::slice::from_ref(&request);
    let encoded = pipeline::encode(&model, requests)?;
    model.release_text_encoder();
    let outputs = pipeline::generate_encoded(&model, requests, encoded, &mut progress)?;
    bar.finish_and_clear();

    let output = outputs
        .into_iter()
        .next()
        .context("the pipeline returned no output")?;
    for (i, (image, seed)) in output.images.iter().zip(&output.seeds).enumerate() {
        let path = args.out.join(format!("image-{i}.png"));
        let png = png_with_parameters(image, &parameters_text(&model, &request, *seed))?;
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if output.images.len() == 4 {
        let path = args.out.join("grid.png");
        let png = png_with_parameters(
            &grid(&output.images)?,
            &parameters_text(&model, &request, seed),
        )?;
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if output.prompt_tokens > 75 {
        eprintln!(
            "note: the prompt has {} tokens; it was encoded in {} windows of 75",
            output.prompt_tokens,
            output.prompt_tokens.div_ceil(75)
        );
    }
    println!(
        "seed {seed}: wrote {} image(s) to {}",
        output.images.len(),
        args.out.display()
    );
    Ok(())
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % (1u64 << 32)
}
