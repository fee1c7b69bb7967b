//! What a job asks of the engine: turning a stored job into engine requests, or into a copy
//! of an image that already exists.
//!
//! | job | source | work |
//! |---|---|---|
//! | `imagine`, `reroll` | the spec (and, for `imagine`, optional image prompts) | a grid of 4 |
//! | `variation` (V1–V4, Vary) | image *i* of the parent | a grid of 4 by image-to-image |
//! | `upscale` (U1–U4) | image *i* of the parent | a copy: no rendering |
//! | `upscale` subtle/creative | image *i* of the parent | 1 image at the spec's size by image-to-image |
//! | `blend` | 2–5 input images | a grid of 4 from their blended latents |
//!
//! A grid's image `i` is rendered as its own request with seed `seed + i` and the guidance
//! `--chaos` gives that position, so all four still share one UNet batch.

use huaxian_engine::image_io::decode_untrusted;
use huaxian_engine::pipeline::{InitImage, Request};
use huaxian_engine::SamplerKind;
use huaxian_prompt::{JobSpec, GRID_IMAGES};
use huaxian_service::{BlobError, BlobStore};
use huaxian_store::{Action, Job, JobKind, Store};
use image::RgbImage;
use uuid::Uuid;

use crate::settings::Strengths;

/// Most images a blend takes, as Midjourney's `/blend`.
pub const MAX_BLEND_INPUTS: usize = 5;

/// The work of one job.
pub enum Work {
    /// An existing image becomes this job's image (U1–U4).
    Copy {
        png: Vec<u8>,
        width: i32,
        height: i32,
        seed: i64,
    },
    /// Requests to render; with `grid`, four images and their 2×2 grid.
    Render { requests: Vec<Request>, grid: bool },
}

/// Why a job could not be turned into work.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PlanError {
    /// In words for the user.
    pub message: String,
    /// True when trying again later may succeed (the blob store was unreachable); false
    /// when the job itself is at fault (a corrupt image, an unknown sampler).
    pub retryable: bool,
}

impl PlanError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Reads what the job needs and says what to render.
pub async fn plan(
    job: &Job,
    store: &Store,
    blobs: &BlobStore,
    strengths: &Strengths,
    max_input_bytes: u64,
) -> Result<Work, PlanError> {
    let spec = &job.spec;
    let seed = grid_seed(job.id, spec);
    let action =
        match job.action.as_deref() {
            Some(key) => Some(Action::parse(key).ok_or_else(|| {
                PlanError::bad(format!("unknown button `{key}` on job {}", job.id))
            })?),
            None => None,
        };

    match (job.kind, action) {
        (JobKind::Imagine, _) | (JobKind::Reroll, _) => {
            let inputs = read_inputs(job, blobs, max_input_bytes).await?;
            let init = if inputs.is_empty() {
                None
            } else {
                Some(InitImage {
                    images: inputs,
                    strength: strengths.image_prompt,
                })
            };
            grid(spec, seed, init)
        }
        (JobKind::Blend, _) => {
            let inputs = read_inputs(job, blobs, max_input_bytes).await?;
            if !(2..=MAX_BLEND_INPUTS).contains(&inputs.len()) {
                return Err(PlanError::bad(format!(
                    "a blend takes 2 to {MAX_BLEND_INPUTS} images, this one has {}",
                    inputs.len()
                )));
            }
            let init = InitImage {
                images: inputs,
                strength: strengths.blend,
            };
            grid(spec, seed, Some(init))
        }
        (JobKind::Upscale, Some(Action::Upscale(index))) => {
            let (source, png) = parent_image(job, store, blobs, index, max_input_bytes).await?;
            Ok(Work::Copy {
                png,
                width: source.width,
                height: source.height,
                seed: source.seed,
            })
        }
        (JobKind::Upscale, Some(Action::UpscaleSubtle(index)))
        | (JobKind::Upscale, Some(Action::UpscaleCreative(index))) => {
            let strength = if matches!(action, Some(Action::UpscaleSubtle(_))) {
                strengths.upscale_subtle
            } else {
                strengths.upscale_creative
            };
            let (source, png) = parent_image(job, store, blobs, index, max_input_bytes).await?;
            let image = decode(&png, "the parent image")?;
            // The upscale keeps the source's seed, so its noise matches the picture it
            // refines rather than adding a new one.
            let mut request = base_request(spec, source.seed as u64)?;
            request.init = Some(InitImage::new(image, strength));
            Ok(Work::Render {
                requests: vec![request],
                grid: false,
            })
        }
        (JobKind::Variation, Some(Action::VarySubtle(index)))
        | (JobKind::Variation, Some(Action::VaryStrong(index))) => {
            let strength = if matches!(action, Some(Action::VarySubtle(_))) {
                strengths.vary_subtle
            } else {
                strengths.vary_strong
            };
            let (_, png) = parent_image(job, store, blobs, index, max_input_bytes).await?;
            let image = decode(&png, "the parent image")?;
            grid(spec, seed, Some(InitImage::new(image, strength)))
        }
        (kind, action) => Err(PlanError::bad(format!(
            "a {} job cannot come from the button {:?}",
            kind.as_str(),
            action.map(Action::key)
        ))),
    }
}

/// The seed of image 0 of the job's grid: the spec's, or one derived from the job id, so a
/// retried job renders the same images.
pub fn grid_seed(job_id: Uuid, spec: &JobSpec) -> u64 {
    match spec.seed {
        Some(seed) => u64::from(seed),
        None => {
            let bytes = job_id.as_bytes();
            u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        }
    }
}

/// Four requests, one per image of the grid, with chaos spreading their guidance.
fn grid(spec: &JobSpec, seed: u64, init: Option<InitImage>) -> Result<Work, PlanError> {
    let guidances = spec.image_guidances();
    let mut requests = Vec::with_capacity(usize::from(GRID_IMAGES));
    for (index, guidance) in guidances.into_iter().enumerate() {
        let mut request = base_request(spec, seed + index as u64)?;
        request.guidance = guidance;
        request.init = init.clone();
        requests.push(request);
    }
    Ok(Work::Render {
        requests,
        grid: true,
    })
}

/// One image of the spec at `seed`.
pub fn base_request(spec: &JobSpec, seed: u64) -> Result<Request, PlanError> {
    let sampler: SamplerKind = spec
        .sampler
        .parse()
        .map_err(|e| PlanError::bad(format!("sampler `{}`: {e}", spec.sampler)))?;
    let mut request = Request::new(spec.positive_text());
    let weighted = spec.prompt.len() > 1 || spec.prompt.iter().any(|p| p.weight != 1.0);
    if weighted {
        request.parts = spec
            .prompt
            .iter()
            .map(|part| (part.text.clone(), part.weight))
            .collect();
    }
    request.negative = spec.negative.clone();
    request.width = i64::from(spec.width);
    request.height = i64::from(spec.height);
    request.steps = spec.steps as usize;
    request.stop_at = (spec.stop_percent < 100).then(|| spec.steps_to_run() as usize);
    request.sampler = sampler;
    request.guidance = spec.guidance;
    request.seed = seed;
    request.count = 1;
    Ok(request)
}

async fn read_inputs(
    job: &Job,
    blobs: &BlobStore,
    max_bytes: u64,
) -> Result<Vec<RgbImage>, PlanError> {
    let mut images = Vec::with_capacity(job.inputs.len());
    for (n, key) in job.inputs.iter().enumerate() {
        let bytes = blobs.get(key, max_bytes).await.map_err(blob_error)?;
        images.push(decode(&bytes, &format!("input image {}", n + 1))?);
    }
    Ok(images)
}

async fn parent_image(
    job: &Job,
    store: &Store,
    blobs: &BlobStore,
    index: u8,
    max_bytes: u64,
) -> Result<(huaxian_store::StoredImage, Vec<u8>), PlanError> {
    let parent = job
        .parent_id
        .ok_or_else(|| PlanError::bad(format!("job {} names no parent job", job.id)))?;
    let images = store.images(parent).await.map_err(|e| PlanError {
        message: format!("cannot read the parent's images: {e}"),
        retryable: true,
    })?;
    let image = images
        .into_iter()
        .find(|image| image.index == i16::from(index))
        .ok_or_else(|| {
            PlanError::bad(format!(
                "the parent job {parent} has no image {}; it may have failed or been removed",
                index + 1
            ))
        })?;
    let png = blobs
        .get(&image.blob_key, max_bytes)
        .await
        .map_err(blob_error)?;
    Ok((image, png))
}

fn decode(bytes: &[u8], what: &str) -> Result<RgbImage, PlanError> {
    decode_untrusted(bytes).map_err(|e| PlanError::bad(format!("{what}: {e}")))
}

fn blob_error(error: BlobError) -> PlanError {
    let retryable = matches!(error, BlobError::Store { .. });
    PlanError {
        message: match &error {
            BlobError::NotFound { .. } => format!("{error}: the image is no longer stored"),
            _ => error.to_string(),
        },
        retryable,
    }
}
