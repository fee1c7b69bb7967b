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
/// The most images one init may blend.
pub const MAX_BLEND: usize = 8;
/// Latent sides above this decode in tiles.
const TILE_LATENTS: i64 = 96;

/// The image to start from, and how far from it to go.
#[derive(Clone)]
pub struct InitImage {
    /// One image, or several to blend: their latents are averaged (see [`encode_image`]).
    pub images: Vec<RgbImage>,
    /// 0 keeps the image, 1 ignores it.
    pub strength: f64,
}

impl InitImage {
    /// Starts from one image.
    pub fn new(image: RgbImage, strength: f64) -> Self {
        InitImage {
            images: vec![image],
            strength,
        }
    }
}

/// What to render.
#[derive(Clone)]
pub struct Request {
    pub prompt: String,
    /// A weighted multi-prompt (`text::weight` parts). When set, it conditions the render
    /// instead of `prompt`, which then only names the render in metadata: each part is
    /// encoded alone and the embeddings are averaged by weight (see [`encode_prompts`]).
    pub parts: Vec<(String, f64)>,
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
    /// Stop after this many steps of the schedule and decode the model's estimate of the
    /// clean image at that point (Midjourney's `--stop`): softer, less detailed pictures.
    /// `None` runs every step.
    pub stop_at: Option<usize>,
}

impl Request {
    pub fn new(prompt: impl Into<String>) -> Self {
        Request {
            prompt: prompt.into(),
            parts: Vec::new(),
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
            stop_at: None,
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
        if !self.parts.is_empty() {
            let total: f64 = self.parts.iter().map(|(_, w)| w).sum();
            if self.parts.iter().any(|(_, w)| !w.is_finite()) || total.is_nan() || total <= 0.0 {
                return bad(format!(
                    "multi-prompt weights must be finite and add up to a positive total, got {total}"
                ));
            }
        }
        if let Some(init) = &self.init {
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return bad(format!("strength must be in (0, 1], got {}", init.strength));
            }
            if init.images.is_empty() || init.images.len() > MAX_BLEND {
                return bad(format!(
                    "an init needs 1 to {MAX_BLEND} images, got {}",
                    init.images.len()
                ));
            }
        }
        Ok(())
    }

    /// Same size, sampler, steps, starting point and stop: these requests can share a UNet
    /// batch.
    pub fn batches_with(&self, other: &Request) -> bool {
        let strength = |r: &Request| r.init.as_ref().map(|i| i.strength);
        self.width == other.width
            && self.height == other.height
            && self.sampler == other.sampler
            && self.steps == other.steps
            && strength(self) == strength(other)
            && self.stop_at == other.stop_at
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

/// How many 77-token windows the request's prompts need: requests in one batch must need
/// the same number.
pub fn windows_needed(model: &StableDiffusion, request: &Request) -> Result<usize> {
    let tokenizer = &model.tokenizer;
    let mut windows = tokenizer
        .encode_chunked(&request.negative, 1)?
        .windows
        .len();
    if request.parts.is_empty() {
        windows = windows.max(tokenizer.encode_chunked(&request.prompt, 1)?.windows.len());
    }
    for (text, _) in &request.parts {
        windows = windows.max(tokenizer.encode_chunked(text, 1)?.windows.len());
    }
    Ok(windows)
}

/// The text conditioning of one request: `[2, tokens, width]` (negative, positive) or
/// `[1, tokens, width]` without guidance.
///
/// A multi-prompt's parts are padded to the same number of 77-token windows, encoded one
/// by one, and combined as `Σ wᵢ·cᵢ / Σ wᵢ`. A negative weight therefore pushes the
/// conditioning away from its part, and weights only matter relative to each other, as in
/// Midjourney, where `a::2 b` equals `a::4 b::2`.
fn encode_prompts(
    model: &StableDiffusion,
    request: &Request,
    guided: bool,
) -> Result<(Tensor, usize)> {
    let tokenizer = &model.tokenizer;
    let single = [(request.prompt.clone(), 1.0)];
    let parts: &[(String, f64)] = if request.parts.is_empty() {
        &single
    } else {
        &request.parts
    };
    let windows = windows_needed(model, request)?;

    let encode = |text: &str, skip: usize| -> Result<(Tensor, usize)> {
        let chunks = tokenizer.encode_chunked(text, windows)?;
        let parts = chunks
            .windows
            .iter()
            .map(|w| {
                model
                    .text_encoder()?
                    .forward(&ids_tensor(w, model.device), skip)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::cat(&parts, 1), chunks.tokens))
    };
    let total: f64 = parts.iter().map(|(_, weight)| weight).sum();
    let mut cond: Option<Tensor> = None;
    let mut tokens = 0;
    for (text, weight) in parts {
        let (embedding, count) = encode(text, request.clip_skip)?;
        tokens = tokens.max(count);
        let weighted = if parts.len() == 1 {
            embedding
        } else {
            embedding * (weight / total)
        };
        cond = Some(match cond {
            Some(sum) => sum + weighted,
            None => weighted,
        });
    }
    let cond = cond.ok_or_else(|| Error::InvalidRequest("the prompt has no parts".into()))?;
    // diffusers applies clip skip to the prompt only, never to the negative prompt; we match
    // it so a seed renders the same image in both.
    let context = if guided {
        Tensor::cat(&[encode(&request.negative, 0)?.0, cond], 0)
    } else {
        cond
    };
    Ok((context, tokens))
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

pub(crate) fn guarded<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
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
                    "requests in one batch must share size, sampler, steps, strength and stop"
                        .into(),
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
    // `--stop` ends the schedule early, but never before one step has run.
    let end = first
        .stop_at
        .map_or(total, |stop| stop.clamp(begin + 1, total));
    let context = Tensor::cat(&contexts, 0);
    for step in begin..end {
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
            steps: end - begin,
            latents: &latents,
        };
        if progress(&info).is_break() {
            return Err(Error::Cancelled {
                step: step + 1 - begin,
                steps: end - begin,
            });
        }
    }
    if end < total {
        for ((sampler, _), x) in samplers.iter().zip(latents.iter_mut()) {
            if let Some(denoised) = sampler.denoised() {
                *x = denoised.shallow_clone();
            }
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
        steps = end - begin,
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

/// Encodes the init once per image of the request, sampling the latent distribution with
/// that image's generator, as diffusers does with a list of generators.
///
/// Several init images are blended in latent space: the mean of their latent means, then
/// rescaled per channel to the inputs' average mean and spread. A plain average of unrelated
/// latents has a smaller spread than any of them and decodes washed out; restoring the
/// spread keeps the blend as contrasted as its inputs, and the denoising that follows turns
/// the superposition into one coherent picture.
fn encode_image(
    model: &StableDiffusion,
    init: &InitImage,
    request: &Request,
    generators: &mut [TorchRng],
    scaling: f64,
) -> Result<Tensor> {
    let mut means = Vec::new();
    let mut stds = Vec::new();
    for image in &init.images {
        let image = fit(image, request.width as u32, request.height as u32);
        let pixels = image_to_tensor(&image, model.device)?.to_kind(model.vae_kind);
        let (mean, logvar) = model.vae.encode(&pixels);
        means.push(mean.to_kind(Kind::Float));
        stds.push((logvar.to_kind(Kind::Float) * 0.5).exp());
    }
    let (mean, std) = match (means.as_slice(), stds.as_slice()) {
        ([mean], [std]) => (mean.shallow_clone(), std.shallow_clone()),
        _ => {
            let stacked = Tensor::cat(&means, 0);
            let dims: &[i64] = &[2, 3];
            let target_mean =
                stacked
                    .mean_dim(dims, true, Kind::Float)
                    .mean_dim(0, true, Kind::Float);
            let target_spread = stacked
                .std_dim(dims, true, true)
                .mean_dim(0, true, Kind::Float);
            let blended = stacked.mean_dim(0, true, Kind::Float);
            let centred = &blended - blended.mean_dim(dims, true, Kind::Float);
            let spread = centred.std_dim(dims, true, true).clamp_min(1e-6);
            let mean = centred / spread * target_spread + target_mean;
            let std = Tensor::cat(&stds, 0).mean_dim(0, true, Kind::Float);
            (mean, std)
        }
    };
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
        if init.images.len() > 1 {
            text.push_str(&format!(", Blend: {} images", init.images.len()));
        }
    }
    if request.clip_skip > 0 {
        text.push_str(&format!(", Clip skip: {}", request.clip_skip + 1));
    }
    if let Some(stop) = request.stop_at.filter(|stop| *stop < request.steps) {
        text.push_str(&format!(", Stop at step: {stop}"));
    }
    text
}
