//! Shared test set-up: the tiny fixture model, a blob folder, the test's own database and
//! Redis key prefix, and a worker running in-process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use huaxian_engine::{LoadOptions, StableDiffusion};
use huaxian_prompt::JobSpec;
use huaxian_queue::{Config, Dispatcher, EventReader, JobResult};
use huaxian_service::BlobStore;
use huaxian_store::{Action, Caps, JobKind, NewJob, Store};
use huaxian_worker::{Models, Worker, WorkerSettings};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

pub const MODEL: &str = "tiny";

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub use huaxian_testkit::redis_url;

pub fn load_model() -> StableDiffusion {
    StableDiffusion::load(&fixtures().join("models/sd1"), &LoadOptions::default()).unwrap()
}

pub fn models() -> Models {
    Models::one(MODEL, load_model())
}

pub fn caps() -> Caps {
    Caps {
        running_per_user: 100,
        queued_per_user: 100,
        commands_per_minute: 10_000,
        daily_images: 100_000,
        fast_ms_per_period: 100_000_000,
        retry_backoff: chrono::Duration::zero(),
        ..Caps::default()
    }
}

/// A dispatcher on the test's database with its own key prefix, and a blob folder.
pub struct Harness {
    pub dispatcher: Dispatcher,
    pub blobs: BlobStore,
    pub blob_dir: tempfile::TempDir,
    next_interaction: std::sync::atomic::AtomicI64,
    /// Results read while waiting for another job's.
    seen: std::sync::Mutex<std::collections::HashMap<Uuid, JobResult>>,
    results: tokio::sync::Mutex<EventReader>,
}

impl Harness {
    pub async fn new(pool: PgPool) -> Self {
        Self::with_lease(pool, Duration::from_secs(10)).await
    }

    pub async fn with_lease(pool: PgPool, lease: Duration) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let config = Config {
            prefix: format!("test-{}", Uuid::new_v4().simple()),
            lease,
            reconcile_grace: Duration::ZERO,
            ..Config::default()
        };
        let dispatcher = Dispatcher::connect(Store::from_pool(pool, caps()), &redis_url(), config)
            .await
            .unwrap();
        let blob_dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(blob_dir.path().to_str().unwrap()).unwrap();
        let results = dispatcher.event_reader().await.unwrap().into();
        Self {
            dispatcher,
            blobs,
            blob_dir,
            next_interaction: 1.into(),
            seen: Default::default(),
            results,
        }
    }

    pub fn store(&self) -> &Store {
        self.dispatcher.store()
    }

    pub fn settings(&self, id: &str, max_batch: u32) -> WorkerSettings {
        WorkerSettings {
            id: Some(id.into()),
            max_batch,
            lease_s: self.lease_s(),
            grace_s: 30.0,
            heartbeat_s: 1.0,
            reconcile_s: 0.5,
            idle_poll_ms: 20,
            ..WorkerSettings::default()
        }
    }

    fn lease_s(&self) -> f64 {
        10.0
    }

    /// Starts a worker with the tiny model; stop it with the returned sender.
    pub async fn spawn_worker(
        &self,
        settings: WorkerSettings,
    ) -> (
        watch::Sender<bool>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
        std::sync::Arc<huaxian_worker::metrics::Metrics>,
    ) {
        self.spawn_worker_with(settings, || Ok(models())).await
    }

    /// Starts a worker with the models `load` makes.
    pub async fn spawn_worker_with(
        &self,
        settings: WorkerSettings,
        load: impl FnOnce() -> anyhow::Result<Models> + Send + 'static,
    ) -> (
        watch::Sender<bool>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
        std::sync::Arc<huaxian_worker::metrics::Metrics>,
    ) {
        let worker = Worker::new(
            settings,
            self.dispatcher.clone(),
            self.blobs.clone(),
            load,
            25 << 20,
        )
        .await
        .unwrap();
        let metrics = worker.metrics().clone();
        let (stop, shutdown) = watch::channel(false);
        (stop, tokio::spawn(worker.run(shutdown)), metrics)
    }

    pub async fn submit(&self, job: NewJob) -> Uuid {
        self.dispatcher.submit(&job).await.unwrap().ticket.job_id
    }

    /// An `imagine` job of the tiny model for `user`.
    pub fn imagine(&self, user: i64, spec: JobSpec) -> NewJob {
        self.new_job(user, JobKind::Imagine, spec, None, Vec::new())
    }

    /// A job made by a button on `parent`.
    pub fn button(&self, user: i64, parent: Uuid, action: Action, spec: JobSpec) -> NewJob {
        self.new_job(
            user,
            action.kind(),
            spec,
            Some((parent, action)),
            Vec::new(),
        )
    }

    pub fn new_job(
        &self,
        user: i64,
        kind: JobKind,
        spec: JobSpec,
        parent: Option<(Uuid, Action)>,
        inputs: Vec<String>,
    ) -> NewJob {
        let interaction_id = self
            .next_interaction
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        NewJob {
            kind,
            images: if kind == JobKind::Upscale { 1 } else { 4 },
            estimate_ms: 5_000,
            image_index: parent
                .and_then(|(_, action)| action.image_index())
                .map(i16::from),
            parent: parent.map(|(id, action)| (id, action.key())),
            inputs,
            ..NewJob::imagine(spec, user, interaction_id, 7)
        }
    }

    /// Waits for the result of `job`, acknowledging every result read on the way.
    pub async fn result(&self, job: Uuid) -> JobResult {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(result) = self.seen.lock().unwrap().remove(&job) {
                return result;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no result for {job} in 120 s"
            );
            let deliveries = self
                .results
                .lock()
                .await
                .read_results("tests", "t", 16, Duration::from_millis(500))
                .await
                .unwrap();
            for delivery in deliveries {
                self.dispatcher
                    .ack_result("tests", &delivery.entry_id)
                    .await
                    .unwrap();
                let mut seen = self.seen.lock().unwrap();
                assert!(
                    seen.insert(delivery.result.job_id, delivery.result)
                        .is_none(),
                    "two results for one job"
                );
            }
        }
    }

    /// Deletes every Redis key of the test.
    pub async fn flush(&self) {
        huaxian_testkit::flush(self.dispatcher.prefix()).await;
    }
}

/// A spec of the tiny model: 64×64, 4 DDIM steps, seed `seed`.
pub fn spec(prompt: &str, seed: Option<u32>) -> JobSpec {
    JobSpec {
        negative: "blurry".into(),
        width: 64,
        height: 64,
        seed,
        steps: 4,
        sampler: "ddim".into(),
        ..JobSpec::new(prompt, MODEL)
    }
}

/// Largest difference of one channel between two images of the same size.
pub fn max_difference(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

pub async fn png(blobs: &BlobStore, key: &str) -> Vec<u8> {
    blobs.get(key, 1 << 30).await.unwrap()
}

pub fn decode(png: &[u8]) -> image::RgbImage {
    image::load_from_memory(png).unwrap().to_rgb8()
}
