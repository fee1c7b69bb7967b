//! Handing a batch to the render thread: the prompt expansion first, then the render, with
//! progress forwarded to Redis and the shutdown grace period enforced from outside.

use std::sync::Arc;

use huaxian_engine::StableDiffusion;
use huaxian_queue::Progress;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::{Models, Worker, PROGRESS_BACKLOG};
use crate::control::{Control, Stop};
use crate::render::{render_batch, RenderJob, RenderOutcome, Rendered};

impl Worker {
    /// Runs the render jobs on the blocking pool; on shutdown, stops them once the grace
    /// period is over.
    pub(super) async fn render(
        &self,
        model: &str,
        renders: Vec<(usize, RenderJob)>,
        mut shutdown: watch::Receiver<bool>,
    ) -> (
        Vec<(usize, Result<Rendered, (String, bool)>)>,
        Option<crate::render::BatchStats>,
    ) {
        if renders.is_empty() {
            return (Vec::new(), None);
        }
        let (progress_tx, mut progress_rx) = mpsc::channel::<Progress>(PROGRESS_BACKLOG);
        let publisher = {
            let dispatcher = self.dispatcher.clone();
            tokio::spawn(async move {
                while let Some(progress) = progress_rx.recv().await {
                    if let Err(error) = dispatcher.publish_progress(&progress).await {
                        debug!(job = %progress.job_id, %error, "progress event dropped");
                    }
                }
            })
        };

        let (indexes, renders): (Vec<usize>, Vec<RenderJob>) = renders.into_iter().unzip();
        let controls: Vec<Arc<Control>> = renders.iter().map(|r| r.control.clone()).collect();
        let name = model.to_string();
        let renderer = self.renderer.clone();
        let mut handle = Box::pin(renderer.run(move |models| {
            let model = models
                .diffusion
                .get(&name)
                .ok_or_else(|| format!("model `{name}` is not loaded on this worker"))?;
            let mut send = |progress: Progress| {
                // A full backlog means Redis is slow: drop this event, a newer one follows.
                let _ = progress_tx.try_send(progress);
            };
            let mut renders = renders;
            let prompts: Vec<Result<Option<String>, String>> = renders
                .iter_mut()
                .map(|job| expand(models, model, job))
                .collect();
            let (ready, refused): (Vec<_>, Vec<_>) = renders
                .into_iter()
                .zip(prompts)
                .enumerate()
                .partition(|(_, (_, prompt))| prompt.is_ok());
            let (indexes, ready): (Vec<usize>, Vec<(RenderJob, _)>) = ready.into_iter().unzip();
            let (ready, prompts): (Vec<RenderJob>, Vec<_>) = ready.into_iter().unzip();
            let (outcomes, stats) = render_batch(model, &ready, &mut send);
            let mut merged: Vec<(usize, RenderOutcome)> = indexes
                .into_iter()
                .zip(outcomes.into_iter().zip(prompts))
                .map(|(index, (mut outcome, prompt))| {
                    if let RenderOutcome::Done(rendered) = &mut outcome {
                        rendered.final_prompt = prompt.ok().flatten();
                    }
                    (index, outcome)
                })
                .collect();
            for (index, (_, prompt)) in refused {
                let message = prompt.err().unwrap_or_default();
                merged.push((
                    index,
                    RenderOutcome::Failed {
                        message,
                        retryable: false,
                    },
                ));
            }
            merged.sort_by_key(|(index, _)| *index);
            let outcomes: Vec<RenderOutcome> = merged.into_iter().map(|(_, o)| o).collect();
            Ok::<_, String>((outcomes, stats))
        }));

        let grace = self.settings.grace();
        let stop_after_grace = async {
            let _ = shutdown.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        };
        let joined = tokio::select! {
            joined = &mut handle => joined,
            _ = stop_after_grace => {
                warn!(jobs = controls.len(), "grace period over; stopping the render");
                for control in &controls {
                    control.stop(Stop::Shutdown);
                }
                handle.await
            }
        };
        let _ = publisher.await;

        let (outcomes, stats) = match joined {
            Ok(Ok(done)) => done,
            Ok(Err(message)) => {
                error!(%message, "render could not start");
                let failed = indexes
                    .iter()
                    .map(|_| RenderOutcome::Failed {
                        message: message.clone(),
                        retryable: true,
                    })
                    .collect();
                (failed, Default::default())
            }
            Err(crash) => {
                error!(error = %crash, "render crashed");
                let failed = indexes
                    .iter()
                    .map(|_| RenderOutcome::Failed {
                        message: "the worker crashed while rendering".into(),
                        retryable: true,
                    })
                    .collect();
                (failed, Default::default())
            }
        };
        info!(
            jobs = indexes.len(),
            seconds = format!("{:.2}", stats.seconds),
            engine_calls = stats.calls,
            "batch rendered"
        );
        let results = indexes
            .into_iter()
            .zip(outcomes)
            .map(|(index, outcome)| {
                let result = match outcome {
                    RenderOutcome::Done(rendered) => Ok(rendered),
                    RenderOutcome::Failed { message, retryable } => Err((message, retryable)),
                    // The caller reads why from the job's control.
                    RenderOutcome::Stopped => Err(("stopped".into(), true)),
                };
                (index, result)
            })
            .collect();
        (results, Some(stats))
    }
}

/// Expands a job's prompt when it asked for `--expand`; the prompt as rendered, or why the
/// job cannot run.
fn expand(
    models: &Models,
    model: &StableDiffusion,
    job: &mut RenderJob,
) -> Result<Option<String>, String> {
    if !job.expand {
        return Ok(None);
    }
    let Some(expander) = &models.expander else {
        return Err(
            "the prompt asks for --expand, but this worker has no expander model \
                    configured ([worker.expander])"
                .into(),
        );
    };
    let seed = job.requests.first().map_or(0, |r| r.seed);
    expander.apply(model, &mut job.requests, seed).map(Some)
}
