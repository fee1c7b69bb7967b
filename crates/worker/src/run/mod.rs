//! The worker's life: register, claim, render, store, report; heartbeats, leases and
//! reconciliation beside it; a graceful stop on SIGTERM.
//!
//! One batch is in hand at a time, since one device renders one batch at a time. While it
//! renders, a watcher renews the leases of its jobs and polls for cancellations; either can
//! stop a job between two steps. What a stopped job produced is discarded: a cancelled job
//! was refunded by whoever cancelled it, a job whose lease was lost belongs to someone else
//! now, and a job stopped by shutdown is given back to the queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use huaxian_engine::{LoadOptions, StableDiffusion};
use huaxian_queue::{Claimed, Config, DispatchError, Dispatcher, WorkerSpec};
use huaxian_service::BlobStore;
use huaxian_store::{Job, NewImage};
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};
use uuid::Uuid;

mod leases;
mod rendering;
mod report;

use leases::{heartbeat, watch_jobs};
pub use report::attempt_folder;

use crate::control::{Control, Stop};
use crate::expand::PromptExpander;
use crate::metrics::MemorySource;
use crate::metrics::Metrics;
use crate::plan::{plan, Work};
use crate::render::{RenderJob, Rendered, RenderedImage};
use crate::renderer::Renderer;
use crate::settings::{Settings, WorkerSettings};

/// How often the watcher asks whether jobs in hand were cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// Progress events waiting to be published; more are dropped, as progress may be.
const PROGRESS_BACKLOG: usize = 64;

/// What a worker keeps resident on its render thread: the diffusion models by the name
/// jobs use, and the expander behind `--expand`, if configured.
#[derive(Default)]
pub struct Models {
    pub diffusion: HashMap<String, StableDiffusion>,
    pub expander: Option<PromptExpander>,
}

impl Models {
    /// One diffusion model under `name`, no expander.
    pub fn one(name: &str, model: StableDiffusion) -> Self {
        Self {
            diffusion: [(name.to_string(), model)].into(),
            expander: None,
        }
    }
}

/// A running worker's handles.
pub struct Worker {
    id: String,
    settings: WorkerSettings,
    dispatcher: Dispatcher,
    blobs: BlobStore,
    renderer: Renderer,
    names: Vec<String>,
    /// The device the models run on, in words.
    device: String,
    /// Whether the render thread has an expander for `--expand`.
    has_expander: bool,
    /// The CUDA device the models run on, if any, for the memory gauge.
    cuda: Option<usize>,
    metrics: Arc<Metrics>,
    max_input_bytes: u64,
    /// Unix milliseconds of the last heartbeat that reached Postgres.
    alive_at: Arc<AtomicI64>,
}

impl Worker {
    /// Connects to Postgres, Redis and the blob store, and loads every configured model.
    pub async fn start(settings: Settings, options: LoadOptions) -> anyhow::Result<Self> {
        let worker = &settings.worker;
        if worker.models.is_empty() {
            anyhow::bail!(
                "no models configured: add a [[worker.models]] section with a name and a path"
            );
        }
        let store = settings.database.connect(settings.caps.caps()).await?;
        let config = Config {
            prefix: settings.redis.prefix.clone(),
            lease: worker.lease(),
            ..Config::default()
        };
        let redis_url = settings.redis.url.reveal().context("[redis] url")?;
        let dispatcher = Dispatcher::connect(store, &redis_url, config)
            .await
            .context("connecting to Redis ([redis] url)")?;
        let blobs = BlobStore::open(&settings.blob.url)?;

        let configured = worker.models.clone();
        let expander = worker.expander.clone();
        let load = move || {
            let mut models = Models::default();
            for model in &configured {
                let options = LoadOptions {
                    config_dir: model.config_dir.clone(),
                    ..options.clone()
                };
                let loaded = StableDiffusion::load(&model.path, &options)
                    .with_context(|| format!("loading model `{}`", model.name))?;
                models.diffusion.insert(model.name.clone(), loaded);
            }
            if let Some(settings) = &expander {
                models.expander = Some(
                    PromptExpander::load(settings, options.device).with_context(|| {
                        format!("loading the expander at {}", settings.path.display())
                    })?,
                );
            }
            Ok(models)
        };
        Self::new(
            worker.clone(),
            dispatcher,
            blobs,
            load,
            settings.blob.max_input_bytes,
        )
        .await
    }

    /// A worker over connections the caller made and the models `load` makes on the
    /// render thread (tests, benchmarks).
    pub async fn new<F>(
        settings: WorkerSettings,
        dispatcher: Dispatcher,
        blobs: BlobStore,
        load: F,
        max_input_bytes: u64,
    ) -> anyhow::Result<Self>
    where
        F: FnOnce() -> anyhow::Result<Models> + Send + 'static,
    {
        let id = settings.worker_id();
        let metrics = Arc::new(Metrics::new(&id)?);
        let (renderer, resident) = Renderer::start(load).await?;
        let loaded = resident.models;
        for model in &loaded {
            metrics
                .model_load_seconds
                .with_label_values(&[&model.name])
                .set(model.load_seconds);
        }
        Ok(Self {
            id,
            settings,
            dispatcher,
            blobs,
            renderer,
            names: loaded.iter().map(|model| model.name.clone()).collect(),
            device: loaded
                .first()
                .map(|model| model.device.clone())
                .unwrap_or_default(),
            has_expander: resident.expander,
            cuda: loaded.first().and_then(|model| model.cuda),
            metrics,
            max_input_bytes,
            alive_at: Arc::new(AtomicI64::new(0)),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves jobs until `shutdown` turns true, then finishes or gives back what it holds
    /// within the grace period, unregisters, and returns.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let store = self.dispatcher.store().clone();
        store
            .register_worker(&huaxian_store::Worker {
                id: self.id.clone(),
                models: self.names.clone(),
                device: self.device.clone(),
                max_pixels: self.settings.max_pixels,
                max_batch: self.settings.max_batch as i32,
                heartbeat_at: chrono::Utc::now(),
            })
            .await
            .context("registering the worker")?;
        self.alive_at
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
        info!(worker = %self.id, models = ?self.names, "worker registered");

        let mut background = Vec::new();
        background.push(tokio::spawn(heartbeat(
            store.clone(),
            self.id.clone(),
            self.settings.heartbeat(),
            self.alive_at.clone(),
            self.metrics.clone(),
            MemorySource::for_device(self.cuda),
        )));
        let reconciler = self.dispatcher.clone();
        let every = self.settings.reconcile();
        background.push(tokio::spawn(async move {
            reconciler.reconcile_every(every).await
        }));
        if let Some(addr) = self.settings.metrics_addr {
            let alive_at = self.alive_at.clone();
            let silence = self.settings.heartbeat().as_millis() as i64 * 3;
            let health: huaxian_service::Health = Arc::new(move || {
                let since =
                    chrono::Utc::now().timestamp_millis() - alive_at.load(Ordering::Relaxed);
                if since <= silence.max(1000) {
                    Ok(())
                } else {
                    Err(format!("no heartbeat reached Postgres for {} ms", since))
                }
            });
            let (bound, task) =
                huaxian_service::serve(addr, self.metrics.registry.clone(), health).await?;
            info!(%bound, "metrics and health on /metrics and /healthz");
            background.push(task);
        }

        let mut shutdown = shutdown;
        let mut next_model = 0;
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            match self.claim(&mut next_model).await {
                Ok(Some((model, claimed))) => {
                    backoff = Duration::from_millis(100);
                    self.process(&model, claimed, shutdown.clone()).await;
                }
                Ok(None) => {
                    let idle = Duration::from_millis(self.settings.idle_poll_ms.max(1));
                    tokio::select! {
                        _ = tokio::time::sleep(idle) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(error) => {
                    warn!(%error, retry_in_ms = backoff.as_millis() as u64, "claim failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }

        info!(worker = %self.id, "shutting down");
        for task in background {
            task.abort();
        }
        if let Err(error) = store.remove_worker(&self.id).await {
            warn!(%error, "worker not unregistered; admins will see it go silent");
        }
        Ok(())
    }

    /// Claims a batch for the next model that has work, taking the models in turn.
    async fn claim(
        &self,
        next_model: &mut usize,
    ) -> Result<Option<(String, Vec<Claimed>)>, DispatchError> {
        for offset in 0..self.names.len() {
            let name = &self.names[(*next_model + offset) % self.names.len()];
            let spec = WorkerSpec {
                id: self.id.clone(),
                model: name.clone(),
                max_pixels: self.settings.max_pixels,
                max_batch: self.settings.max_batch.max(1),
            };
            let claimed = self.dispatcher.claim(&spec).await?;
            if !claimed.is_empty() {
                *next_model = (*next_model + offset + 1) % self.names.len();
                return Ok(Some((name.clone(), claimed)));
            }
        }
        Ok(None)
    }

    /// Renders and reports one claimed batch.
    async fn process(&self, model: &str, claimed: Vec<Claimed>, shutdown: watch::Receiver<bool>) {
        let controls: Vec<Arc<Control>> = claimed
            .iter()
            .map(|_| Arc::new(Control::default()))
            .collect();
        self.metrics.busy.set(claimed.len() as i64);
        self.metrics.batch_size.observe(claimed.len() as f64);
        let watcher = tokio::spawn(watch_jobs(
            self.dispatcher.clone(),
            self.id.clone(),
            claimed.clone(),
            controls.clone(),
            self.settings.lease(),
        ));

        let ids: Vec<Uuid> = claimed.iter().map(|c| c.ticket.job_id).collect();
        let jobs = match self.dispatcher.store().jobs(&ids).await {
            Ok(jobs) => jobs,
            Err(error) => {
                // Without the rows nothing can be rendered; the leases run out and the
                // reconciler hands the jobs to whoever can read them.
                error!(%error, jobs = ids.len(), "cannot read claimed jobs; giving them back");
                watcher.abort();
                for claim in &claimed {
                    if let Err(error) = self.dispatcher.release(&self.id, claim).await {
                        warn!(job = %claim.ticket.job_id, %error, "not released; its lease will run out");
                    }
                }
                self.metrics.busy.set(0);
                return;
            }
        };

        // Turn each job into work; jobs that cannot be planned fail here.
        let mut copies = Vec::new();
        let mut renders = Vec::new();
        let mut held = Vec::new();
        for (index, job) in jobs.iter().enumerate() {
            let span =
                info_span!("job", job_id = %job.id, user = job.user_id, kind = job.kind.as_str());
            let planned = plan(
                job,
                self.dispatcher.store(),
                &self.blobs,
                &self.settings.strengths,
                self.max_input_bytes,
            )
            .instrument(span.clone())
            .await;
            match planned {
                Ok(Work::Copy {
                    png,
                    width,
                    height,
                    seed,
                }) => copies.push((index, png, width, height, seed)),
                Ok(Work::Render { requests, grid }) => renders.push((
                    index,
                    RenderJob {
                        job_id: job.id,
                        requests,
                        grid,
                        expand: self.wants_expansion(job).await,
                        control: controls[index].clone(),
                    },
                )),
                Err(error) => {
                    let _entered = span.enter();
                    warn!(%error, retryable = error.retryable, "job cannot be rendered");
                    held.push((index, Err((error.message, error.retryable))));
                }
            }
        }

        debug!(jobs = jobs.len(), "batch planned");
        let (outcomes, stats) = self.render(model, renders, shutdown).await;
        for (index, outcome) in outcomes {
            held.push((index, outcome));
        }
        for (index, png, width, height, seed) in copies {
            let copied = Rendered {
                images: vec![RenderedImage {
                    png,
                    width: width.max(0) as u32,
                    height: height.max(0) as u32,
                    seed: seed.max(0) as u64,
                }],
                grid_png: None,
                gpu_ms: 0,
                final_prompt: None,
            };
            held.push((index, Ok(copied)));
        }
        if let Some(stats) = &stats {
            for seconds in &stats.step_seconds {
                self.metrics.step_seconds.observe(*seconds);
            }
        }

        // Store what finished, then settle everything in one transaction.
        let mut finished: Vec<(usize, Rendered, Vec<NewImage>, Option<String>)> = Vec::new();
        let mut images_made = 0usize;
        for (index, outcome) in held {
            let job = &jobs[index];
            let claim = &claimed[index];
            // A job whose images were all made before the grace period ran out is kept.
            let finished_anyway = matches!(
                (controls[index].stopped(), &outcome),
                (Some(Stop::Shutdown), Ok(_))
            );
            if let Some(stop) = controls[index].stopped().filter(|_| !finished_anyway) {
                self.stopped(job, claim, stop).await;
                continue;
            }
            match outcome {
                Ok(rendered) => match self.store_images(job, claim, &rendered).await {
                    Ok((images, grid_key)) => {
                        // Copies (U1–U4) cost no rendering; the rate counts rendered images.
                        if rendered.gpu_ms > 0 {
                            images_made += images.len();
                        }
                        finished.push((index, rendered, images, grid_key));
                    }
                    Err(error) => {
                        warn!(job = %job.id, %error, "images not stored; retrying the job later");
                        self.failed(
                            job,
                            claim,
                            &format!("the images could not be stored: {error}"),
                            true,
                        )
                        .await;
                    }
                },
                Err((message, retryable)) => self.failed(job, claim, &message, retryable).await,
            }
        }
        if let Some(stats) = &stats {
            if stats.seconds > 0.0 && images_made > 0 {
                self.metrics
                    .images_per_second
                    .set(images_made as f64 / stats.seconds);
            }
        }
        debug!(images = images_made, "images stored");
        self.complete(&jobs, &claimed, finished).await;
        debug!("batch reported");
        watcher.abort();
        self.metrics.busy.set(0);
    }

    /// Whether the job's prompt is expanded: as the prompt says, else as the user's
    /// `/settings` default says, a preference honoured only where an expander exists.
    async fn wants_expansion(&self, job: &Job) -> bool {
        match job.spec.expand {
            Some(asked) => asked,
            None if self.has_expander => matches!(
                self.dispatcher.store().settings(job.user_id).await,
                Ok(settings) if settings.expand == Some(true)
            ),
            None => false,
        }
    }
}
