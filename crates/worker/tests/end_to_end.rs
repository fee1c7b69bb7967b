//! A worker in-process against the real Postgres and Redis, the tiny fixture model and a
//! blob folder: every job kind from enqueue to stored images and a result event.

mod common;

use common::{decode, max_difference, png, spec, Harness};
use huaxian_engine::image_io::{png_parameters, quadrant};
use huaxian_queue::Outcome;
use huaxian_service::BlobStore;
use huaxian_store::{Action, JobKind, JobState};
use sqlx::PgPool;

#[sqlx::test(migrations = "../../migrations")]
async fn every_job_kind_end_to_end(pool: PgPool) {
    let harness = Harness::new(pool.clone()).await;
    let mut settings = harness.settings("w-e2e", 4);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    settings.metrics_addr = Some(([127, 0, 0, 1], port).into());
    let (stop, worker, _) = harness.spawn_worker(settings).await;

    // imagine: four images and the grid, with their settings in the PNGs.
    let grid_job = harness
        .submit(harness.imagine(1, spec("a red lighthouse", Some(42))))
        .await;
    let result = harness.result(grid_job).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.error);
    assert_eq!(result.images.len(), 4);
    let seeds: Vec<i64> = result.images.iter().map(|i| i.seed).collect();
    assert_eq!(seeds, vec![42, 43, 44, 45]);
    let grid_key = result.grid_key.clone().expect("a grid");
    let grid = decode(&png(&harness.blobs, &grid_key).await);
    assert_eq!(grid.dimensions(), (128, 128));
    for image in &result.images {
        assert_eq!((image.width, image.height), (64, 64));
        let bytes = png(&harness.blobs, &image.blob_key).await;
        let parameters = png_parameters(&bytes).expect("parameters chunk");
        assert!(
            parameters.starts_with("a red lighthouse\nNegative prompt: blurry"),
            "{parameters}"
        );
        assert!(
            parameters.contains(&format!("Seed: {}", image.seed)),
            "{parameters}"
        );
        assert!(
            parameters.contains("Steps: 4, Sampler: DDIM"),
            "{parameters}"
        );
        assert!(parameters.contains("Size: 64x64"), "{parameters}");
    }
    let job = harness.store().job(grid_job).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.grid_key.as_deref(), Some(grid_key.as_str()));
    let stored = harness.store().images(grid_job).await.unwrap();
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().all(|image| image.bytes > 0));
    assert!(result.cost_ms > 0 && Some(result.cost_ms) == job.cost_ms);

    // U2: image 2 of the grid as its own image, the same pixels as quadrant 2, no rendering.
    let upscale = harness
        .submit(harness.button(
            2,
            grid_job,
            Action::Upscale(1),
            spec("a red lighthouse", Some(42)),
        ))
        .await;
    let result = harness.result(upscale).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.error);
    assert_eq!(result.images.len(), 1);
    assert!(result.grid_key.is_none());
    assert_eq!(result.images[0].seed, 43);
    assert_eq!(result.cost_ms, 0, "a copy uses no GPU time");
    let own = decode(&png(&harness.blobs, &result.images[0].blob_key).await);
    assert_eq!(own, quadrant(&grid, 1).unwrap());
    assert_ne!(
        result.images[0].blob_key, stored[1].blob_key,
        "a new image of its own"
    );

    // Upscale (Subtle): twice the size by image-to-image, close to the source.
    let mut doubled = spec("a red lighthouse", Some(42));
    doubled.width = 128;
    doubled.height = 128;
    let subtle = harness
        .submit(harness.button(2, grid_job, Action::UpscaleSubtle(1), doubled))
        .await;
    let result = harness.result(subtle).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.error);
    assert_eq!(
        (result.images[0].width, result.images[0].height),
        (128, 128)
    );
    let parameters =
        png_parameters(&png(&harness.blobs, &result.images[0].blob_key).await).unwrap();
    assert!(
        parameters.contains("Denoising strength: 0.25"),
        "{parameters}"
    );

    // Vary (Strong) of image 3: a new grid with new seeds, different from the parent.
    let vary = harness
        .submit(harness.button(
            3,
            grid_job,
            Action::VaryStrong(2),
            spec("a red lighthouse", None),
        ))
        .await;
    let result = harness.result(vary).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.error);
    assert_eq!(result.images.len(), 4);
    assert!(result.images.iter().all(|i| !(42..=45).contains(&i.seed)));
    let varied = decode(&png(&harness.blobs, &result.images[0].blob_key).await);
    let source = decode(&png(&harness.blobs, &stored[2].blob_key).await);
    assert!(max_difference(&varied, &source) > 0);
    let parameters =
        png_parameters(&png(&harness.blobs, &result.images[0].blob_key).await).unwrap();
    assert!(
        parameters.contains("Denoising strength: 0.7"),
        "{parameters}"
    );

    // Reroll: the same prompt with a new seed.
    let reroll = harness
        .submit(harness.button(1, grid_job, Action::Reroll, spec("a red lighthouse", None)))
        .await;
    let result = harness.result(reroll).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.error);
    assert_ne!(result.images[0].seed, 42);
    let rerolled = decode(&png(&harness.blobs, result.grid_key.as_deref().unwrap()).await);
    assert!(max_difference(&rerolled, &grid) > 0);

    // Blend: two inputs from the blob store into one grid.
    let inputs = upload_inputs(&harness.blobs).await;
    let blend_spec = spec("", Some(9));
    let blend = harness
        .submit(harness.new_job(4, JobKind::Blend, blend_spec, None, inputs))
        .await;
    let result = harness.result(blend).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.error);
    assert_eq!(result.images.len(), 4);
    let parameters =
        png_parameters(&png(&harness.blobs, &result.images[0].blob_key).await).unwrap();
    assert!(parameters.contains("Blend: 2 images"), "{parameters}");

    // Metrics and health over HTTP, as Prometheus and an orchestrator read them.
    let metrics = http_get(port, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("huaxian_worker_jobs_total{outcome=\"succeeded\",worker=\"w-e2e\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("huaxian_worker_images_total{worker=\"w-e2e\"} 18"),
        "{metrics}"
    );
    assert!(
        metrics.contains("huaxian_worker_step_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("huaxian_worker_model_load_seconds{model=\"tiny\""),
        "{metrics}"
    );
    let health = http_get(port, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let live = harness
        .store()
        .live_workers(chrono::Duration::seconds(10))
        .await
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].models, vec!["tiny".to_string()]);

    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let workers = harness.store().workers().await.unwrap();
    assert!(
        workers.iter().all(|w| w.id != "w-e2e"),
        "a stopped worker unregisters"
    );
    harness.flush().await;
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Two 96×80 images, one red-ish and one blue-ish, as a user would upload.
async fn upload_inputs(blobs: &BlobStore) -> Vec<String> {
    let mut keys = Vec::new();
    for (n, colour) in [[200u8, 40, 30], [20, 60, 220]].into_iter().enumerate() {
        let image = image::RgbImage::from_fn(96, 80, |x, y| {
            image::Rgb([
                colour[0].wrapping_add(x as u8),
                colour[1],
                colour[2].wrapping_add(y as u8),
            ])
        });
        let mut bytes = Vec::new();
        image
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        let key = format!("uploads/test/{n}.png");
        blobs.put(&key, bytes).await.unwrap();
        keys.push(key);
    }
    keys
}

#[sqlx::test(migrations = "../../migrations")]
async fn batched_jobs_equal_the_same_jobs_alone(pool: PgPool) {
    let harness = Harness::new(pool.clone()).await;
    let prompts = ["a lighthouse at dusk", "a cat in a hat"];

    // Both queued before the worker starts, so one claim takes both as one batch.
    let mut batched = Vec::new();
    for (n, prompt) in prompts.iter().enumerate() {
        let mut job_spec = spec(prompt, Some(100 + n as u32 * 10));
        job_spec.chaos = 50;
        batched.push(
            harness
                .submit(harness.imagine(10 + n as i64, job_spec))
                .await,
        );
    }
    let (stop, worker, _) = harness.spawn_worker(harness.settings("w-batch", 2)).await;
    let mut batched_grids = Vec::new();
    for job in &batched {
        let result = harness.result(*job).await;
        assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.error);
        batched_grids.push(decode(
            &png(&harness.blobs, result.grid_key.as_deref().unwrap()).await,
        ));
    }
    let hist = worker_batch_sizes(&pool, &batched).await;
    assert_eq!(hist, 1, "both jobs ran on one worker attempt each");
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    // The same jobs again, on a worker that takes one at a time.
    let (stop, worker, _) = harness.spawn_worker(harness.settings("w-alone", 1)).await;
    for (n, prompt) in prompts.iter().enumerate() {
        let mut job_spec = spec(prompt, Some(100 + n as u32 * 10));
        job_spec.chaos = 50;
        let job = harness
            .submit(harness.imagine(20 + n as i64, job_spec))
            .await;
        let result = harness.result(job).await;
        let alone = decode(&png(&harness.blobs, result.grid_key.as_deref().unwrap()).await);
        let difference = max_difference(&alone, &batched_grids[n]);
        assert!(
            difference <= 3,
            "job {n}: batched differs from alone by {difference} levels"
        );
    }
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    harness.flush().await;
}

/// How many distinct running_at instants the jobs had: 1 when they started in one claim.
async fn worker_batch_sizes(pool: &PgPool, jobs: &[uuid::Uuid]) -> i64 {
    sqlx::query_scalar("SELECT COUNT(DISTINCT running_at) FROM jobs WHERE id = ANY($1)")
        .bind(jobs)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn expand_continues_the_prompt_and_records_it(pool: PgPool) {
    let harness = Harness::new(pool.clone()).await;
    let expander = huaxian_worker::ExpanderSettings {
        path: common::fixtures().join("models/gpt2"),
        max_new_tokens: 12,
        top_k: 50,
        top_p: 0.95,
        temperature: 1.0,
        allow_words: None,
    };
    let load = move || {
        let mut models = common::models();
        models.expander = Some(huaxian_worker::expand::PromptExpander::load(
            &expander,
            tch::Device::Cpu,
        )?);
        Ok(models)
    };
    let (stop, worker, _) = harness
        .spawn_worker_with(harness.settings("w-expand", 4), load)
        .await;

    let mut asked = spec("a lighthouse at dusk", Some(5));
    asked.expand = Some(true);
    let job = harness.submit(harness.imagine(1, asked.clone())).await;
    let result = harness.result(job).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{:?}", result.error);
    assert!(
        result.prompt.starts_with("a lighthouse at dusk"),
        "{}",
        result.prompt
    );
    assert!(
        result.prompt.len() > "a lighthouse at dusk".len(),
        "nothing was added"
    );
    let row = harness.store().job(job).await.unwrap();
    assert_eq!(row.final_prompt.as_deref(), Some(result.prompt.as_str()));
    let bytes = png(&harness.blobs, &result.images[0].blob_key).await;
    let parameters = png_parameters(&bytes).unwrap();
    assert!(
        parameters.starts_with(&format!("{}\n", result.prompt)),
        "{parameters}"
    );

    // The same seed expands the same way; without --expand nothing is added.
    let again = harness.submit(harness.imagine(2, asked)).await;
    assert_eq!(harness.result(again).await.prompt, result.prompt);
    let plain = harness
        .submit(harness.imagine(3, spec("a lighthouse at dusk", Some(5))))
        .await;
    let plain = harness.result(plain).await;
    assert_eq!(plain.prompt, "a lighthouse at dusk");
    assert!(harness
        .store()
        .job(plain.job_id)
        .await
        .unwrap()
        .final_prompt
        .is_none());

    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    harness.flush().await;
}
