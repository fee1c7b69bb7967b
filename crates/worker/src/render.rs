//! Rendering a claimed batch on a loaded model. Runs on a blocking thread: everything here
//! is synchronous libtorch work.
//!
//! The requests of all jobs in the batch are grouped by what the engine needs to share a
//! UNet batch (strength, stop, prompt windows); each group is one engine call. When the
//! device runs out of memory the group is split in halves and each half tried again, down
//! to single images; a job one of whose images does not fit alone fails with that reason.
//! A request's output does not depend on what it was batched with, so splitting changes
//! no pixel.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huaxian_engine::image_io::{grid, jpeg_within, png_with_parameters};
use huaxian_engine::pipeline::{self, parameters_text, Output, Request, StepInfo};
use huaxian_engine::{Error, StableDiffusion};
use huaxian_queue::Progress;
use image::RgbImage;
use uuid::Uuid;

use crate::control::{Control, Stop};

/// Largest preview sent with a progress event, in bytes.
pub const PREVIEW_BYTES: usize = 64 * 1024;

/// Longer side of a preview, in pixels.
pub const PREVIEW_SIDE: u32 = 256;

/// Shortest gap between two progress events of one job.
pub const PROGRESS_GAP: Duration = Duration::from_secs(1);

/// One job's part of a batch.
pub struct RenderJob {
    pub job_id: Uuid,
    /// One request per image, each with `count` 1.
    pub requests: Vec<Request>,
    /// Whether the images form a 2×2 grid.
    pub grid: bool,
    /// Whether a text model expands the prompt first (`--expand`).
    pub expand: bool,
    pub control: Arc<Control>,
}

/// One image of a finished job, encoded.
pub struct RenderedImage {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
}

/// What a finished job produced.
pub struct Rendered {
    pub images: Vec<RenderedImage>,
    pub grid_png: Option<Vec<u8>>,
    /// Share of the batch's render time that was this job's, in milliseconds.
    pub gpu_ms: i64,
    /// The prompt as rendered, when it was expanded.
    pub final_prompt: Option<String>,
}

/// How one job of a batch came out.
pub enum RenderOutcome {
    Done(Rendered),
    Failed {
        message: String,
        retryable: bool,
    },
    /// Its control said stop.
    Stopped,
}

/// What the batch did, for the metrics.
#[derive(Default, Debug, Clone)]
pub struct BatchStats {
    /// Seconds of each denoising step, as measured.
    pub step_seconds: Vec<f64>,
    /// Engine calls made (more than the groups when memory ran out).
    pub calls: usize,
    pub seconds: f64,
}

/// The engine, as the splitting logic sees it; a closure in tests.
pub type Generate<'a> = dyn FnMut(&[Request], &mut dyn FnMut(&StepInfo) -> ControlFlow<()>) -> Result<Vec<Output>, Error>
    + 'a;

/// Renders every job of the batch on `model`; `progress` gets rate-limited events.
pub fn render_batch(
    model: &StableDiffusion,
    jobs: &[RenderJob],
    progress: &mut dyn FnMut(Progress),
) -> (Vec<RenderOutcome>, BatchStats) {
    let started = Instant::now();
    let mut generate =
        |requests: &[Request],
         on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>|
         -> Result<Vec<Output>, Error> { pipeline::generate(model, requests, on_step) };
    // Each request is checked alone first, so one job's bad request fails only that job
    // instead of the engine refusing the whole group.
    let windows = |request: &Request| {
        request.validate(model)?;
        pipeline::windows_needed(model, request)
    };
    let (images, mut stats) = render_units(jobs, &windows, &mut generate, progress);
    stats.seconds = started.elapsed().as_secs_f64();

    let total_units: usize = jobs.iter().map(|job| job.requests.len()).sum();
    let outcomes = jobs
        .iter()
        .zip(images)
        .map(|(job, result)| {
            let images = match result {
                UnitsResult::Images(images) => images,
                UnitsResult::Failed { message, retryable } => {
                    return RenderOutcome::Failed { message, retryable }
                }
                UnitsResult::Stopped => return RenderOutcome::Stopped,
            };
            let share = job.requests.len() as f64 / total_units.max(1) as f64;
            match encode(model, job, images) {
                Ok(mut rendered) => {
                    rendered.gpu_ms = (stats.seconds * share * 1000.0).round() as i64;
                    RenderOutcome::Done(rendered)
                }
                Err(error) => RenderOutcome::Failed {
                    message: format!("cannot encode the images: {error}"),
                    retryable: false,
                },
            }
        })
        .collect();
    (outcomes, stats)
}

/// A job's images, or why there are none.
enum UnitsResult {
    Images(Vec<RgbImage>),
    Failed { message: String, retryable: bool },
    Stopped,
}

/// What requests of one engine call share: strength, stop, prompt windows, and size,
/// sampler and steps.
type GroupKey = (Option<u64>, Option<usize>, usize, String);

/// One request of one job.
#[derive(Clone, Copy)]
struct Unit {
    job: usize,
    request: usize,
}

fn render_units(
    jobs: &[RenderJob],
    windows: &dyn Fn(&Request) -> Result<usize, Error>,
    generate: &mut Generate<'_>,
    progress: &mut dyn FnMut(Progress),
) -> (Vec<UnitsResult>, BatchStats) {
    let mut results: Vec<Vec<Option<RgbImage>>> = jobs
        .iter()
        .map(|job| vec![None; job.requests.len()])
        .collect();
    let mut failures: Vec<Option<(String, bool)>> = vec![None; jobs.len()];

    // Group the units by what must be equal within one engine call.
    let mut groups: BTreeMap<GroupKey, Vec<Unit>> = BTreeMap::new();
    for (j, job) in jobs.iter().enumerate() {
        for (r, request) in job.requests.iter().enumerate() {
            match windows(request) {
                Ok(count) => {
                    let strength = request.init.as_ref().map(|i| i.strength.to_bits());
                    let shape = format!(
                        "{}x{}:{}:{}",
                        request.width, request.height, request.sampler, request.steps
                    );
                    groups
                        .entry((strength, request.stop_at, count, shape))
                        .or_default()
                        .push(Unit { job: j, request: r });
                }
                Err(error) => failures[j] = Some((error.to_string(), false)),
            }
        }
    }

    let mut stats = BatchStats::default();
    let mut tracker = ProgressTracker::new(jobs);
    for units in groups.into_values() {
        let live: Vec<Unit> = units
            .into_iter()
            .filter(|unit| {
                failures[unit.job].is_none() && jobs[unit.job].control.stopped().is_none()
            })
            .collect();
        if live.is_empty() {
            continue;
        }
        let mut pending = vec![live];
        while let Some(units) = pending.pop() {
            let requests: Vec<Request> = units
                .iter()
                .map(|unit| jobs[unit.job].requests[unit.request].clone())
                .collect();
            stats.calls += 1;
            tracker.restart();
            let mut last_step = Instant::now();
            let mut on_step = |info: &StepInfo| {
                let now = Instant::now();
                stats.step_seconds.push((now - last_step).as_secs_f64());
                last_step = now;
                tracker.step(jobs, &units, info, progress);
                let all_stopped = units
                    .iter()
                    .all(|unit| jobs[unit.job].control.stopped().is_some());
                if all_stopped {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            match generate(&requests, &mut on_step) {
                Ok(outputs) => {
                    for (unit, output) in units.iter().zip(outputs) {
                        results[unit.job][unit.request] = output.images.into_iter().next();
                    }
                }
                Err(error) if error.is_out_of_memory() && units.len() > 1 => {
                    tracing::warn!(
                        images = units.len(),
                        "out of device memory; splitting the batch"
                    );
                    let half = units.len() / 2;
                    pending.push(units[half..].to_vec());
                    pending.push(units[..half].to_vec());
                }
                Err(Error::Cancelled { .. }) => {}
                Err(error) => {
                    let (message, retryable) = describe(&error, &requests[0]);
                    for unit in &units {
                        failures[unit.job].get_or_insert((message.clone(), retryable));
                    }
                }
            }
        }
    }

    let results = jobs
        .iter()
        .zip(results)
        .zip(failures)
        .map(|((job, images), failure)| {
            if let Some((message, retryable)) = failure {
                return UnitsResult::Failed { message, retryable };
            }
            let stop = job.control.stopped();
            match (images.into_iter().collect::<Option<Vec<_>>>(), stop) {
                // Finished before the shutdown came: worth keeping.
                (Some(images), None | Some(Stop::Shutdown)) => UnitsResult::Images(images),
                (_, Some(_)) => UnitsResult::Stopped,
                (None, None) => UnitsResult::Failed {
                    message: "the engine returned fewer images than asked for".into(),
                    retryable: true,
                },
            }
        })
        .collect();
    (results, stats)
}

/// The user-facing reason of an engine failure, and whether a retry may help.
fn describe(error: &Error, request: &Request) -> (String, bool) {
    match error {
        _ if error.is_out_of_memory() => (
            format!(
                "not enough device memory for even one {}×{} image on this worker; ask for a \
                 smaller size or a lower upscale",
                request.width, request.height
            ),
            false,
        ),
        Error::InvalidRequest(message) => (message.clone(), false),
        other => (format!("rendering failed: {other}"), true),
    }
}

/// Sends each job's progress at most once per [`PROGRESS_GAP`].
struct ProgressTracker {
    last: Vec<Option<Instant>>,
    started: Instant,
}

impl ProgressTracker {
    fn new(jobs: &[RenderJob]) -> Self {
        Self {
            last: vec![None; jobs.len()],
            started: Instant::now(),
        }
    }

    /// Starts timing a new engine call, whose steps the ETA is estimated from.
    fn restart(&mut self) {
        self.started = Instant::now();
    }

    fn step(
        &mut self,
        jobs: &[RenderJob],
        units: &[Unit],
        info: &StepInfo,
        progress: &mut dyn FnMut(Progress),
    ) {
        let now = Instant::now();
        let mut seen: Vec<usize> = units.iter().map(|unit| unit.job).collect();
        seen.dedup();
        for job in seen {
            let due = self.last[job].is_none_or(|at| now - at >= PROGRESS_GAP);
            if !due || info.step >= info.steps {
                continue;
            }
            self.last[job] = Some(now);
            let per_step = self.started.elapsed().as_secs_f64() / info.step.max(1) as f64;
            let eta = per_step * (info.steps - info.step) as f64;
            let previews: Vec<RgbImage> = units
                .iter()
                .enumerate()
                .filter(|(_, unit)| unit.job == job)
                .filter_map(|(index, _)| info.preview(index).ok()?.into_iter().next())
                .collect();
            let preview = preview_jpeg(&previews, jobs[job].grid);
            progress(Progress {
                job_id: jobs[job].job_id,
                step: info.step as u32,
                steps: info.steps as u32,
                eta_ms: (eta * 1000.0) as u64,
                preview,
            });
        }
    }
}

/// A JPEG of the previews: a 2×2 grid for grid jobs, else the one image. Latent previews
/// have one pixel per latent cell (a 512×512 image previews at 64×64), so they are
/// enlarged to [`PREVIEW_SIDE`] on their longer side for display.
fn preview_jpeg(previews: &[RgbImage], as_grid: bool) -> Option<Vec<u8>> {
    let image = if as_grid && previews.len() == 4 {
        grid(previews).ok()?
    } else {
        previews.first()?.clone()
    };
    let (width, height) = image.dimensions();
    let longer = width.max(height).max(1);
    let image = if longer < PREVIEW_SIDE {
        let scale = f64::from(PREVIEW_SIDE) / f64::from(longer);
        let size = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
        image::imageops::resize(
            &image,
            size(width),
            size(height),
            image::imageops::FilterType::Triangle,
        )
    } else {
        image
    };
    jpeg_within(&image, PREVIEW_BYTES).ok()
}

fn encode(
    model: &StableDiffusion,
    job: &RenderJob,
    images: Vec<RgbImage>,
) -> Result<Rendered, Error> {
    let mut encoded = Vec::with_capacity(images.len());
    for (request, image) in job.requests.iter().zip(&images) {
        let parameters = parameters_text(model, request, request.seed);
        encoded.push(RenderedImage {
            png: png_with_parameters(image, &parameters)?,
            width: image.width(),
            height: image.height(),
            seed: request.seed,
        });
    }
    let grid_png = match (job.grid, job.requests.first()) {
        (true, Some(first)) => {
            let parameters = parameters_text(model, first, first.seed);
            Some(png_with_parameters(&grid(&images)?, &parameters)?)
        }
        _ => None,
    };
    Ok(Rendered {
        images: encoded,
        grid_png,
        gpu_ms: 0,
        final_prompt: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(images: usize, seed: u64) -> RenderJob {
        RenderJob {
            job_id: Uuid::new_v4(),
            requests: (0..images)
                .map(|i| {
                    let mut request = Request::new("a lighthouse");
                    request.seed = seed + i as u64;
                    request
                })
                .collect(),
            grid: images == 4,
            expand: false,
            control: Arc::new(Control::default()),
        }
    }

    /// An engine with room for `room` images per call, drawing each image's seed into
    /// its first pixel.
    fn engine(room: usize, calls: &mut Vec<usize>) -> Box<Generate<'_>> {
        Box::new(
            move |requests: &[Request], _: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>| {
                calls.push(requests.len());
                if requests.len() > room {
                    return Err(Error::Torch(tch::TchError::Torch(
                        "CUDA out of memory. Tried to allocate 2.00 GiB".into(),
                    )));
                }
                Ok(requests
                    .iter()
                    .map(|r| Output {
                        images: vec![RgbImage::from_pixel(1, 1, image::Rgb([r.seed as u8, 0, 0]))],
                        seeds: vec![r.seed],
                        prompt_tokens: 2,
                    })
                    .collect())
            },
        )
    }

    fn seeds(result: &UnitsResult) -> Vec<u8> {
        match result {
            UnitsResult::Images(images) => images.iter().map(|i| i.get_pixel(0, 0)[0]).collect(),
            _ => panic!("no images"),
        }
    }

    #[test]
    fn out_of_memory_splits_down_and_keeps_order() {
        let jobs = vec![job(4, 10), job(4, 20)];
        let mut calls = Vec::new();
        let mut generate = engine(3, &mut calls);
        let (results, stats) = render_units(&jobs, &|_| Ok(1), &mut generate, &mut |_| {});
        drop(generate);
        assert_eq!(seeds(&results[0]), vec![10, 11, 12, 13]);
        assert_eq!(seeds(&results[1]), vec![20, 21, 22, 23]);
        assert_eq!(calls, vec![8, 4, 2, 2, 4, 2, 2]);
        assert_eq!(stats.calls, 7);
    }

    #[test]
    fn a_single_image_that_does_not_fit_fails_its_job_only() {
        let mut big = job(1, 5);
        big.requests[0].width = 1024;
        let jobs = vec![job(1, 1), big];
        let mut calls = Vec::new();
        let mut generate =
            |requests: &[Request], on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>| {
                if requests.iter().any(|r| r.width == 1024) {
                    return Err(Error::Torch(tch::TchError::Torch("out of memory".into())));
                }
                engine(8, &mut calls)(requests, on_step)
            };
        let (results, _) = render_units(&jobs, &|_| Ok(1), &mut generate, &mut |_| {});
        assert_eq!(seeds(&results[0]), vec![1]);
        match &results[1] {
            UnitsResult::Failed { message, retryable } => {
                assert!(message.contains("1024×512"), "{message}");
                assert!(!retryable);
            }
            _ => panic!("the oversized job should fail"),
        }
    }

    #[test]
    fn a_refused_request_fails_only_its_job() {
        let mut bad = job(4, 70);
        bad.requests[2].guidance = f64::NAN;
        let jobs = vec![job(4, 1), bad];
        let mut calls = Vec::new();
        let mut generate = engine(16, &mut calls);
        let check = |request: &Request| {
            if request.guidance.is_nan() {
                Err(Error::InvalidRequest(
                    "guidance must be between 0 and 100".into(),
                ))
            } else {
                Ok(1)
            }
        };
        let (results, _) = render_units(&jobs, &check, &mut generate, &mut |_| {});
        drop(generate);
        assert_eq!(seeds(&results[0]), vec![1, 2, 3, 4]);
        assert!(
            matches!(&results[1], UnitsResult::Failed { retryable: false, message } if message.contains("guidance"))
        );
        assert_eq!(
            calls,
            vec![4],
            "the bad job's other images are not rendered"
        );
    }

    #[test]
    fn a_job_finished_before_shutdown_keeps_its_images() {
        let jobs = vec![job(4, 1)];
        let mut calls = Vec::new();
        let control = jobs[0].control.clone();
        let mut generate =
            |requests: &[Request], on_step: &mut dyn FnMut(&StepInfo) -> ControlFlow<()>| {
                let out = engine(16, &mut calls)(requests, on_step);
                control.stop(Stop::Shutdown);
                out
            };
        let (results, _) = render_units(&jobs, &|_| Ok(1), &mut generate, &mut |_| {});
        assert_eq!(seeds(&results[0]), vec![1, 2, 3, 4]);
    }

    #[test]
    fn stopped_jobs_are_not_rendered() {
        let jobs = vec![job(4, 1), job(4, 9)];
        jobs[1].control.stop(Stop::Cancelled);
        let mut calls = Vec::new();
        let mut generate = engine(8, &mut calls);
        let (results, _) = render_units(&jobs, &|_| Ok(1), &mut generate, &mut |_| {});
        drop(generate);
        assert_eq!(seeds(&results[0]), vec![1, 2, 3, 4]);
        assert!(matches!(results[1], UnitsResult::Stopped));
        assert_eq!(calls, vec![4]);
    }

    #[test]
    fn requests_that_cannot_share_a_batch_are_grouped_apart() {
        let mut other = job(4, 30);
        for request in &mut other.requests {
            request.steps = 12;
        }
        let jobs = vec![job(4, 1), other, job(4, 50)];
        let mut calls = Vec::new();
        let mut generate = engine(16, &mut calls);
        let (results, _) = render_units(&jobs, &|_| Ok(1), &mut generate, &mut |_| {});
        drop(generate);
        assert_eq!(seeds(&results[2]), vec![50, 51, 52, 53]);
        calls.sort();
        assert_eq!(calls, vec![4, 8]);
    }
}
