//! Text-to-image and image-to-image with classifier-free guidance (Ho and Salimans 2022).
//!
//! One call renders one or more [`Request`]s as a single UNet batch. Each request keeps its
//! own prompt, guidance, seeds and sampler state; they only have to share the image size, the
//! sampler and its step count, so the worker can batch compatible jobs.

use std::ops::ControlFlow;
use std::time::Instant;

use image::RgbImage;
use tch::{Kind, Tensor};

use crate::image_io::{fit, image_to_tensor, latent_preview, tensor_to_images};
use crate::models::clip::ids_tensor;
use crate::rng::{batch_randn, per_image, TorchRng};
use crate::sampler::{Sampler, SamplerKind};
use crate::{Error, Result, StableDiffusion};

/// The largest side, in pixels, a request may ask for.
pub const MAX_SIDE: i64 = 4096;
/// The most images one request may ask for.
pub const MAX_COUNT: usize = 16;
/// Latent sides above this decode in tiles.
const TILE_LATENTS: i64 = 96;

/// An image to start from, and how far from it to go.
#[derive(Clone)]
pub struct InitImage {
    pub image: RgbImage,
    /// 0 keeps the image, 1 ignores it.
    pub strength: f64,
}

/// What to render.
#[derive(Clone)]
pub struct Request {
    pub prompt: String,
    pub negative: String,
    pub width: i64,
    pub height: i64,
    pub steps: usize,
    pub sampler: SamplerKind,
    /// Classifier-free guidance scale; 1 or less turns guidance off.
    pub guidance: f64,
    /// Image `i` uses seed `seed + i`.
    pub seed: u64,
    pub count: usize,
    /// Text-encoder layers to skip from the end (diffusers' `clip_skip`).
    pub clip_skip: usize,
    pub init: Option<InitImage>,
}

impl Request {
    pub fn new(prompt: impl Into<String>) -> Self {
        Request {
            prompt: prompt.into(),
            negative: String::new(),
            width: 512,
            height: 512,
            steps: 30,
            sampler: SamplerKind::EulerA,
            guidance: 7.0,
            seed: 0,
            count: 1,
            clip_skip: 0,
            init: None,
        }
    }

    /// Checks the request against the model, with a message that says what to change.
    pub fn validate(&self, model: &StableDiffusion) -> Result<()> {
        let factor = model.downscale_factor();
        let bad = |m: String| Err(Error::InvalidRequest(m));
        for (name, side) in [("width", self.width), ("height", self.height)] {
            if side <= 0 || side % factor != 0 {
                return bad(format!(
                    "{name} {side} is not a positive multiple of {factor}; this model works in \
                     steps of {factor} pixels"
                ));
            }
            if side > MAX_SIDE {
                return bad(format!("{name} {side} is above the maximum of {MAX_SIDE}"));
            }
        }
        if self.steps == 0 || self.steps > 1000 {
            return bad(format!(
                "steps must be between 1 and 1000, got {}",
                self.steps
            ));
        }
        if self.count == 0 || self.count > MAX_COUNT {
            return bad(format!(
                "count must be between 1 and {MAX_COUNT}, got {}",
                self.count
            ));
        }
        if !self.guidance.is_finite() || !(0.0..=100.0).contains(&self.guidance) {
            return bad(format!(
                "guidance must be between 0 and 100, got {}",
                self.guidance
            ));
        }
        if let Some(init) = &self.init {
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return bad(format!("strength must be in (0, 1], got {}", init.strength));
            }
        }
        Ok(())
    }

    /// Same size, sampler, steps and starting point: these requests can share a UNet batch.
    pub fn batches_with(&self, other: &Request) -> bool {
        let strength = |r: &Request| r.init.as_ref().map(|i| i.strength);
        self.width == other.width
            && self.height == other.height
            && self.sampler == other.sampler
            && self.steps == other.steps
            && strength(self) == strength(other)
    }
}

/// Where a render is, passed to the progress callback after every step.
pub struct StepInfo<'a> {
    /// Steps done, from 1.
    pub step: usize,
    /// Steps this render runs (fewer than requested for image-to-image).
    pub steps: usize,
    latents: &'a [Tensor],
}

impl StepInfo<'_> {
    /// A cheap preview of request `index`'s images from the current latents.
    pub fn preview(&self, index: usize) -> Result<Vec<RgbImage>> {
        match self.latents.get(index) {
            Some(l) => latent_preview(l),
            None => Err(Error::InvalidRequest(format!(
                "no request {index} in this batch"
            ))),
        }
    }
}

/// What a request produced.
pub struct Output {
    pub images: Vec<RgbImage>,
    /// The seed of each image.
    pub seeds: Vec<u64>,
    /// Tokens in the prompt, excluding bos and eos; over 75 means several windows were used.
    pub prompt_tokens: usize,
}

/// The text conditioning of one request: `[2, tokens, width]` (negative, positive) or
/// `[1, tokens, width]` without guidance.
fn encode_prompts(
    model: &StableDiffusion,
    request: &Request,
    guided: bool,
) -> Result<(Tensor, usize)> {
    let tokenizer = &model.tokenizer;
    let positive = tokenizer.encode_chunked(&request.prompt, 1)?;
    let negative = tokenizer.encode_chunked(&request.negative, positive.windows.len())?;
    let windows = positive.windows.len().max(negative.windows.len());
    let positive = tokenizer.encode_chunked(&request.prompt, windows)?;

    let encode = |ids: &[Vec<u32>], skip: usize| -> Result<Tensor> {
        let parts = ids
            .iter()
            .map(|w| {
                model
                    .text_encoder()?
                    .forward(&ids_tensor(w, model.device), skip)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1))
    };
    let cond = encode(&positive.windows, request.clip_skip)?;
    // diffusers applies clip skip to the prompt only, never to the negative prompt; we match
    // it so a seed renders the same image in both.
    let context = if guided {
        Tensor::cat(&[encode(&negative.windows, 0)?, cond], 0)
    } else {
        cond
    };
    Ok((context, positive.tokens))
}

/// Renders `requests` as one batch. `progress` runs after every step; returning
/// `ControlFlow::Break` cancels the render.
///
/// Requests are validated first. What libtorch reports while rendering (above all, running
/// out of device memory) comes back as [`Error::Torch`]: `tch`'s tensor operators panic on
/// such errors, and the panic is caught here, at the one boundary every render crosses.
pub fn generate(
    model: &StableDiffusion,
    requests: &[Request],
    progress: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<Vec<Output>> {
    let encoded = encode(model, requests)?;
    generate_encoded(model, requests, encoded, progress)
}

/// The prompts of a batch, encoded: what the UNet attends to.
pub struct Encoded {
    contexts: Vec<Tensor>,
    tokens: Vec<usize>,
    guided: bool,
    seconds: f64,
}

/// Validates `requests` and encodes their prompts, so the text encoder can be released
/// before rendering.
pub fn encode(model: &StableDiffusion, requests: &[Request]) -> Result<Encoded> {
    guarded(|| encode_batch(model, requests))
}

/// Renders `requests` from prompts [`encode`]d for them.
pub fn generate_encoded(
    model: &StableDiffusion,
    requests: &[Request],
    encoded: Encoded,
    progress: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<Vec<Output>> {
    guarded(|| render(model, requests, encoded, progress))
}

fn guarded<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    attempt.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libtorch failed while rendering".to_string());
        Err(Error::Torch(tch::TchError::Torch(message)))
    })
}

fn encode_batch(model: &StableDiffusion, requests: &[Request]) -> Result<Encoded> {
    let started = Instant::now();
    if let Some(first) = requests.first() {
        for request in requests {
            request.validate(model)?;
            if !first.batches_with(request) {
                return Err(Error::InvalidRequest(
                    "requests in one batch must share size, sampler, steps and strength".into(),
                ));
            }
        }
    }
    let _no_grad = tch::no_grad_guard();
    let guided = requests.iter().any(|r| r.guidance > 1.0);
    let mut contexts = Vec::new();
    let mut windows = None;
    let mut tokens = Vec::new();
    for request in requests {
        let (context, count) = encode_prompts(model, request, guided)?;
        let len = context.size()[1];
        if *windows.get_or_insert(len) != len {
            return Err(Error::InvalidRequest(
                "requests in one batch must need the same number of 77-token windows".into(),
            ));
        }
        tokens.push(count);
        contexts.push(context.to_kind(model.kind));
    }
    Ok(Encoded {
        contexts,
        tokens,
        guided,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn render(
    model: &StableDiffusion,
    requests: &[Request],
    encoded: Encoded,
    progress: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<Vec<Output>> {
    let Some(first) = requests.first() else {
        return Ok(Vec::new());
    };
    if encoded.contexts.len() != requests.len() {
        return Err(Error::InvalidRequest(
            "the encoded prompts belong to another batch".into(),
        ));
    }
    let _no_grad = tch::no_grad_guard();
    let encoded_at = Instant::now();
    let Encoded {
        contexts,
        tokens: prompt_tokens,
        guided,
        seconds: encode_seconds,
    } = encoded;
    let device = model.device;
    let factor = model.downscale_factor();
    let channels = model.unet.config().in_channels;
    let latent_shape = [channels, first.height / factor, first.width / factor];
    let scaling = model.vae.config().scaling_factor;

    let mut samplers = Vec::new();
    let mut rngs: Vec<Vec<TorchRng>> = Vec::new();
    let mut latents = Vec::new();
    for request in requests {
        let mut sampler = Sampler::new(request.sampler, &model.scheduler, request.steps)?;
        let mut generators = per_image(request.seed, request.count);
        let start = match &request.init {
            None => {
                let noise = batch_randn(&mut generators, &latent_shape, device)?;
                latents.push(noise * sampler.init_noise_sigma());
                0
            }
            Some(init) => {
                let begin = sampler.begin_index_for_strength(init.strength);
                sampler.set_begin_index(begin);
                let clean = encode_image(model, init, request, &mut generators, scaling)?;
                let noise = batch_randn(&mut generators, &latent_shape, device)?;
                latents.push(sampler.add_noise(&clean, &noise, begin));
                begin
            }
        };
        samplers.push((sampler, start));
        rngs.push(generators);
    }

    let begin = samplers[0].1;
    let total = samplers[0].0.timesteps().len();
    if begin >= total {
        return Err(Error::InvalidRequest(
            "strength is too low for the number of steps: no step would run; raise either".into(),
        ));
    }
    let context = Tensor::cat(&contexts, 0);
    for step in begin..total {
        let mut inputs = Vec::new();
        let mut timesteps = Vec::new();
        for ((sampler, _), x) in samplers.iter().zip(&latents) {
            let scaled = sampler.scale_model_input(x, step);
            let copies = if guided { 2 } else { 1 };
            for _ in 0..copies {
                inputs.push(scaled.shallow_clone());
            }
            let t = sampler.timesteps()[step];
            timesteps.extend(std::iter::repeat_n(t as f32, copies * x.size()[0] as usize));
        }
        let input = Tensor::cat(&inputs, 0).to_kind(model.kind);
        let t = Tensor::from_slice(&timesteps).to_device(device);
        let context = expand_context(&context, requests, guided);
        let output = model
            .unet
            .forward(&input, &t, &context)
            .to_kind(Kind::Float);

        let mut offset = 0;
        for (i, request) in requests.iter().enumerate() {
            let n = request.count as i64;
            let prediction = if guided {
                let uncond = output.narrow(0, offset, n);
                let cond = output.narrow(0, offset + n, n);
                offset += 2 * n;
                if request.guidance > 1.0 {
                    &uncond + (&cond - &uncond) * request.guidance
                } else {
                    cond
                }
            } else {
                let cond = output.narrow(0, offset, n);
                offset += n;
                cond
            };
            let generators = &mut rngs[i];
            let shape = latent_shape;
            let mut noise = || batch_randn(generators, &shape, device);
            latents[i] = samplers[i]
                .0
                .step(&prediction, step, &latents[i], &mut noise)?;
        }

        let info = StepInfo {
            step: step + 1 - begin,
            steps: total - begin,
            latents: &latents,
        };
        if progress(&info).is_break() {
            return Err(Error::Cancelled {
                step: step + 1 - begin,
                steps: total - begin,
            });
        }
    }

    let denoised = Instant::now();
    let mut outputs = Vec::new();
    for ((request, x), tokens) in requests.iter().zip(&latents).zip(prompt_tokens) {
        let mut images = Vec::with_capacity(request.count);
        for i in 0..request.count as i64 {
            let latent = (x.narrow(0, i, 1) / scaling).to_kind(model.vae_kind);
            let decoded = model.vae.decode_tiled(&latent, TILE_LATENTS, 16);
            images.extend(tensor_to_images(&decoded)?);
        }
        outputs.push(Output {
            images,
            seeds: (0..request.count as u64)
                .map(|i| request.seed.wrapping_add(i))
                .collect(),
            prompt_tokens: tokens,
        });
    }
    let done = Instant::now();
    tracing::info!(
        requests = requests.len(),
        images = requests.iter().map(|r| r.count).sum::<usize>(),
        steps = total - begin,
        encode_s = format!("{encode_seconds:.2}"),
        denoise_s = format!("{:.2}", (denoised - encoded_at).as_secs_f64()),
        decode_s = format!("{:.2}", (done - denoised).as_secs_f64()),
        "render finished"
    );
    Ok(outputs)
}

/// Repeats each request's conditioning once per image, in the layout of the UNet batch:
/// per request, all negatives then all positives.
fn expand_context(context: &Tensor, requests: &[Request], guided: bool) -> Tensor {
    let per = if guided { 2 } else { 1 };
    let mut parts = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        for j in 0..per {
            let row = context.narrow(0, (i * per + j) as i64, 1);
            parts.push(row.expand([request.count as i64, -1, -1], false));
        }
    }
    Tensor::cat(&parts, 0)
}

/// Encodes the init image once per image of the request, sampling the latent distribution
/// with that image's generator, as diffusers does with a list of generators.
fn encode_image(
    model: &StableDiffusion,
    init: &InitImage,
    request: &Request,
    generators: &mut [TorchRng],
    scaling: f64,
) -> Result<Tensor> {
    let image = fit(&init.image, request.width as u32, request.height as u32);
    let pixels = image_to_tensor(&image, model.device)?.to_kind(model.vae_kind);
    let (mean, logvar) = model.vae.encode(&pixels);
    let mean = mean.to_kind(Kind::Float);
    let std = (logvar.to_kind(Kind::Float) * 0.5).exp();
    let shape: Vec<i64> = mean.size()[1..].to_vec();
    let mut samples = Vec::new();
    for generator in generators.iter_mut() {
        let noise = batch_randn(std::slice::from_mut(generator), &shape, model.device)?;
        samples.push(&mean + &std * noise);
    }
    Ok(Tensor::cat(&samples, 0) * scaling)
}

/// The `parameters` text A1111 writes into PNGs, so other tools read the settings back.
pub fn parameters_text(model: &StableDiffusion, request: &Request, seed: u64) -> String {
    let mut text = request.prompt.clone();
    if !request.negative.is_empty() {
        text.push_str(&format!("\nNegative prompt: {}", request.negative));
    }
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model hash: {}, Model: {}",
        request.steps,
        request.sampler.a1111_name(),
        request.guidance,
        seed,
        request.width,
        request.height,
        model.hash,
        model.name,
    ));
    if let Some(init) = &request.init {
        text.push_str(&format!(", Denoising strength: {}", init.strength));
    }
    if request.clip_skip > 0 {
        text.push_str(&format!(", Clip skip: {}", request.clip_skip + 1));
    }
    text
}
