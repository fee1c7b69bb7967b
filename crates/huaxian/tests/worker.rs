//! `huaxian worker` as a process: killed with SIGKILL mid-render, stopped with SIGTERM,
//! and refusing bad configuration with a message that says what to change.

mod common;

use std::time::{Duration, Instant};

use common::{caps, exit_code, signal, Deployment};
use huaxian_queue::{JobResult, Outcome};
use huaxian_store::JobState;
use sqlx::PgPool;

#[sqlx::test(migrations = "../../migrations")]
async fn killed_mid_render_the_job_is_finished_once_by_another_worker(pool: PgPool) {
    let deployment = Deployment::new(pool.clone()).await;
    let mut first = deployment.worker("w-first", 30.0, 3.0);
    let job = deployment.submit(200, 1).await;
    deployment.rendering(job).await;
    signal(&first, libc::SIGKILL);
    first.wait().await.unwrap();

    let mut second = deployment.worker("w-second", 30.0, 3.0);
    let row = deployment.wait_for_state(job, JobState::Succeeded).await;
    assert_eq!(row.worker_id.as_deref(), Some("w-second"));
    assert_eq!(row.attempt, 2);

    let results: Vec<JobResult> = deployment
        .results()
        .await
        .into_iter()
        .filter(|r| r.job_id == job)
        .collect();
    assert_eq!(results.len(), 1, "exactly one result event");
    assert_eq!(results[0].outcome, Outcome::Succeeded);

    let settles: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM quota_ledger WHERE job_id = $1 AND reason = 'settle'",
    )
    .bind(job)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(settles, 1, "charged once");

    let images = deployment.dispatcher.store().images(job).await.unwrap();
    assert_eq!(images.len(), 4);
    let mut referenced: Vec<String> = images.into_iter().map(|i| i.blob_key).collect();
    referenced.extend(row.grid_key);
    for key in &referenced {
        assert!(
            key.starts_with(&format!("jobs/{job}/2/")),
            "{key} is not attempt 2's"
        );
        assert!(
            deployment.blob_dir().join(key).is_file(),
            "{key} is missing"
        );
    }

    signal(&second, libc::SIGTERM);
    assert_eq!(exit_code(&mut second, Duration::from_secs(30)).await, 0);
    deployment.flush().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn sigterm_finishes_the_job_in_hand_then_exits_zero(pool: PgPool) {
    let deployment = Deployment::new(pool.clone()).await;
    let mut worker = deployment.worker("w-term", 60.0, 30.0);
    let job = deployment.submit(60, 1).await;
    deployment.rendering(job).await;
    signal(&worker, libc::SIGTERM);
    assert_eq!(exit_code(&mut worker, Duration::from_secs(60)).await, 0);

    let row = deployment.dispatcher.store().job(job).await.unwrap();
    assert_eq!(
        row.state,
        JobState::Succeeded,
        "finished within the grace period"
    );
    let workers = deployment.dispatcher.store().workers().await.unwrap();
    assert!(workers.is_empty(), "the worker unregistered");
    deployment.flush().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn sigterm_past_the_grace_period_gives_the_job_back(pool: PgPool) {
    let deployment = Deployment::new(pool.clone()).await;
    let mut worker = deployment.worker("w-impatient", 0.0, 30.0);
    let job = deployment.submit(400, 1).await;
    deployment.rendering(job).await;
    let stopped = Instant::now();
    signal(&worker, libc::SIGTERM);
    assert_eq!(exit_code(&mut worker, Duration::from_secs(30)).await, 0);
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "stopped between two steps"
    );

    let row = deployment.dispatcher.store().job(job).await.unwrap();
    assert_eq!(row.state, JobState::Queued, "given back, not lost");
    assert!(deployment
        .dispatcher
        .store()
        .images(job)
        .await
        .unwrap()
        .is_empty());
    let max_attempts: i32 = sqlx::query_scalar("SELECT max_attempts FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        max_attempts,
        caps().max_attempts + 1,
        "the release costs no attempt"
    );

    // Another worker picks it up and finishes it.
    let mut next = deployment.worker("w-next", 30.0, 30.0);
    deployment.wait_for_state(job, JobState::Succeeded).await;
    signal(&next, libc::SIGTERM);
    assert_eq!(exit_code(&mut next, Duration::from_secs(30)).await, 0);
    deployment.flush().await;
}

#[test]
fn bad_configuration_says_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_huaxian"))
            .args(["worker", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_huaxian"))
        .args(["worker", "--config", "/nonexistent/huaxian.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/huaxian.toml"), "{stderr}");

    let stderr = run("[database]\nurl = \"postgres://u:hunter2@127.0.0.1:1/x\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n[worker]\ndevice = \"tpu\"\n");
    assert!(stderr.contains("unknown device `tpu`"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "a secret reached the output: {stderr}"
    );

    let stderr = run("[database]\nurl = \"postgres://u:hunter2@127.0.0.1:1/x\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n[worker]\nmax_batch = \"many\"\n");
    assert!(stderr.contains("max_batch"), "{stderr}");

    let stderr = run("[database]\nurl = \"postgres://u:hunter2@127.0.0.1:1/x\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n[worker]\n");
    assert!(stderr.contains("no models configured"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "a secret reached the output: {stderr}"
    );
}
