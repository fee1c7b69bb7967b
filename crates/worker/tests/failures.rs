//! Cancellation, progress, bad input and lost leases, with a worker in-process.

mod common;

use std::time::{Duration, Instant};

use common::{spec, Harness};
use huaxian_queue::Outcome;
use huaxian_store::{JobKind, JobState};
use sqlx::PgPool;

/// Sum of the user's ledger and their cached balance.
async fn ledger(pool: &PgPool, user: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT COALESCE(SUM(delta_ms), 0)::BIGINT FROM quota_ledger WHERE user_id = $1), \
                (SELECT fast_balance_ms FROM users WHERE id = $1)",
    )
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn progress_then_cancel_stops_refunds_and_keeps_serving(pool: PgPool) {
    let harness = Harness::new(pool.clone()).await;
    let (stop, worker, metrics) = harness.spawn_worker(harness.settings("w-cancel", 1)).await;

    let mut long = spec("a long render", Some(3));
    long.steps = 400;
    let job = harness.submit(harness.imagine(5, long)).await;

    // Progress arrives with a small JPEG preview of the grid.
    let started = Instant::now();
    let mut after = "0".to_string();
    let mut events = Vec::new();
    let mut reader = harness.dispatcher.event_reader().await.unwrap();
    while events.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress in 60 s"
        );
        let (read, last) = reader
            .read_progress(&after, 10, Duration::from_millis(500))
            .await
            .unwrap();
        after = last;
        events.extend(read.into_iter().filter(|p| p.job_id == job));
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        events.len() as f64 <= elapsed + 1.0,
        "{} events in {elapsed:.1} s: more than one per second",
        events.len()
    );
    assert!(events[1].step > events[0].step);
    assert_eq!(events[0].steps, 400);
    assert!(events[0].eta_ms > 0);
    let preview = events[0].preview.as_ref().expect("a preview");
    assert!(preview.len() <= 64 * 1024);
    let preview = image::load_from_memory(preview).unwrap();
    assert_eq!(
        (preview.width(), preview.height()),
        (256, 256),
        "a grid preview, enlarged for display"
    );

    // Cancel mid-render: the worker stops within a second or two, nothing is charged.
    let cancelled_at = Instant::now();
    assert!(harness.dispatcher.cancel(job, 5).await.unwrap());
    let row = harness.store().job(job).await.unwrap();
    assert_eq!(row.state, JobState::Cancelled);
    assert_eq!(row.cost_ms, Some(0));
    let (sum, balance) = ledger(&pool, 5).await;
    assert_eq!(sum, balance, "ledger equals balance");
    assert_eq!(
        balance,
        common::caps().fast_ms_per_period,
        "reservation refunded in full"
    );

    // The worker goes on: a short job after the cancelled one succeeds.
    let next = harness
        .submit(harness.imagine(5, spec("after", Some(1))))
        .await;
    let result = harness.result(next).await;
    assert_eq!(result.outcome, Outcome::Succeeded);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(20),
        "the cancelled render was not stopped early: {:?}",
        cancelled_at.elapsed()
    );
    assert!(harness.store().images(job).await.unwrap().is_empty());
    let outcomes: Vec<(&str, u64)> = ["cancelled", "lease_lost", "succeeded", "failed"]
        .into_iter()
        .map(|o| (o, metrics.jobs.with_label_values(&[o]).get()))
        .collect();
    assert_eq!(
        metrics.jobs.with_label_values(&["cancelled"]).get(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        metrics.jobs.with_label_values(&["succeeded"]).get(),
        1,
        "{outcomes:?}"
    );

    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    harness.flush().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_input_fails_the_job_and_the_worker_keeps_serving(pool: PgPool) {
    let harness = Harness::new(pool.clone()).await;
    let (stop, worker, metrics) = harness.spawn_worker(harness.settings("w-bad", 4)).await;

    // A job for a model this worker does not have is never claimed by it.
    let mut other_model = spec("elsewhere", Some(1));
    other_model.model = "sdxl".into();
    let stranger = harness.submit(harness.imagine(6, other_model)).await;

    // A blend whose second input is not an image fails with a reason naming it.
    harness
        .blobs
        .put("uploads/bad/0.png", tiny_png())
        .await
        .unwrap();
    harness
        .blobs
        .put("uploads/bad/1.png", b"\x89PNG\r\n\x1a\nnot really".to_vec())
        .await
        .unwrap();
    let inputs = vec![
        "uploads/bad/0.png".to_string(),
        "uploads/bad/1.png".to_string(),
    ];
    let corrupt = harness
        .submit(harness.new_job(6, JobKind::Blend, spec("", Some(2)), None, inputs))
        .await;
    let result = harness.result(corrupt).await;
    assert_eq!(result.outcome, Outcome::Failed);
    let error = result.error.unwrap();
    assert!(error.contains("input image 2"), "{error}");
    let row = harness.store().job(corrupt).await.unwrap();
    assert_eq!(row.state, JobState::Failed);
    assert_eq!(row.attempt, 1, "a bad input is not retried");
    let (sum, balance) = ledger(&pool, 6).await;
    assert_eq!(sum, balance);

    // An input that is missing from the blob store fails the same way.
    let missing = harness
        .submit(harness.new_job(
            6,
            JobKind::Blend,
            spec("", Some(2)),
            None,
            vec!["uploads/bad/0.png".into(), "uploads/gone.png".into()],
        ))
        .await;
    let result = harness.result(missing).await;
    assert!(result.error.unwrap().contains("no longer stored"));

    // --expand on a worker without an expander fails with a reason, not a silent no-op.
    let mut wants_expansion = spec("a cat", Some(4));
    wants_expansion.expand = Some(true);
    let unexpanded = harness.submit(harness.imagine(6, wants_expansion)).await;
    let result = harness.result(unexpanded).await;
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(result.error.unwrap().contains("[worker.expander]"));

    let fine = harness
        .submit(harness.imagine(6, spec("fine", Some(4))))
        .await;
    assert_eq!(harness.result(fine).await.outcome, Outcome::Succeeded);
    let row = harness.store().job(stranger).await.unwrap();
    assert_eq!(row.state, JobState::Queued);
    assert_eq!(row.attempt, 0, "never claimed");
    let counts: Vec<(String, u64)> = ["failed", "retried", "succeeded", "lease_lost"]
        .iter()
        .map(|o| (o.to_string(), metrics.jobs.with_label_values(&[o]).get()))
        .collect();
    assert_eq!(
        metrics.jobs.with_label_values(&["failed"]).get(),
        3,
        "{counts:?}"
    );

    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    harness.flush().await;
}

fn tiny_png() -> Vec<u8> {
    let image = image::RgbImage::from_pixel(32, 32, image::Rgb([10, 200, 30]));
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_lost_lease_stops_the_render_and_discards_its_output(pool: PgPool) {
    let harness = Harness::new(pool.clone()).await;
    let mut settings = harness.settings("w-fenced", 1);
    settings.lease_s = 1.5;
    // This worker must not take its own job back: the test plays the other worker.
    settings.reconcile_s = 3600.0;
    let (stop, worker, metrics) = harness.spawn_worker(settings).await;

    let mut long = spec("a long render", Some(8));
    long.steps = 400;
    let job = harness.submit(harness.imagine(9, long)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.store().job(job).await.unwrap().state != JobState::Running {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another party takes the job over, as the reconciler does when a lease runs out.
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
    let report = harness.dispatcher.reconcile().await.unwrap();
    assert_eq!(report.retried, 1);

    // The worker's next renewal is refused: it stops and writes nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.lease_losses.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker never noticed its lease was lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = harness.store().job(job).await.unwrap();
    assert_ne!(row.state, JobState::Succeeded);
    assert!(harness.store().images(job).await.unwrap().is_empty());
    let written = harness.blobs.list(&format!("jobs/{job}")).await.unwrap();
    assert!(written.is_empty(), "the stale attempt stored {written:?}");

    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    harness.flush().await;
}
