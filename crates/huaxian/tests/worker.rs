//! `huaxian worker` as a process: killed with SIGKILL mid-render, stopped with SIGTERM,
//! and refusing bad configuration with a message that says what to change.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use huaxian_prompt::JobSpec;
use huaxian_queue::{Config, Dispatcher, JobResult, Outcome};
use huaxian_store::{Caps, JobState, NewJob, Store};
use huaxian_testkit::{database_url, redis_url};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn caps() -> Caps {
    Caps {
        retry_backoff: chrono::Duration::zero(),
        ..Caps::default()
    }
}

struct Deployment {
    dir: tempfile::TempDir,
    prefix: String,
    database_url: String,
    dispatcher: Dispatcher,
}

impl Deployment {
    async fn new(pool: PgPool) -> Self {
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        let database_url = database_url(&pool).await;
        let config = Config {
            prefix: prefix.clone(),
            ..Config::default()
        };
        let dispatcher = Dispatcher::connect(Store::from_pool(pool, caps()), &redis_url(), config)
            .await
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            prefix,
            database_url,
            dispatcher,
        }
    }

    fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// Writes a configuration for worker `id` and starts `huaxian worker` on it. A short
    /// lease lets a killed worker's job come back quickly.
    fn worker(&self, id: &str, grace_s: f64, lease_s: f64) -> Child {
        let config = self.dir.path().join(format!("{id}.toml"));
        let text = format!(
            r#"
[database]
url = "{database}"
max_connections = 4

[redis]
url = "{redis}"
prefix = "{prefix}"

[blob]
url = "{blobs}"

[caps]
retry_backoff_s = 0

[worker]
id = "{id}"
max_batch = 1
lease_s = {lease_s}
grace_s = {grace_s}
heartbeat_s = 1
reconcile_s = 0.5
idle_poll_ms = 50

[[worker.models]]
name = "tiny"
path = "{model}"
"#,
            database = self.database_url,
            redis = redis_url(),
            prefix = self.prefix,
            blobs = self.blob_dir().display(),
            model = fixtures().join("models/sd1").display(),
        );
        std::fs::write(&config, text).unwrap();
        // The worker's log goes to a file beside its configuration, kept for a failing run.
        let log = std::fs::File::create(self.dir.path().join(format!("{id}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_huaxian"))
            .args(["worker", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    async fn submit(&self, steps: u32, interaction_id: i64) -> Uuid {
        let spec = JobSpec {
            width: 64,
            height: 64,
            seed: Some(11),
            steps,
            ..JobSpec::new("a harbour at night", "tiny")
        };
        let job = NewJob {
            estimate_ms: 10_000,
            ..NewJob::imagine(spec, 77, interaction_id, 1)
        };
        self.dispatcher.submit(&job).await.unwrap().ticket.job_id
    }

    /// Waits until the job has sent progress: it is rendering.
    async fn rendering(&self, job: Uuid) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut after = "0".to_string();
        loop {
            assert!(
                Instant::now() < deadline,
                "job {job} never started rendering"
            );
            let (events, last) = self
                .dispatcher
                .read_progress(&after, 50, Duration::from_millis(500))
                .await
                .unwrap();
            after = last;
            if events.iter().any(|p| p.job_id == job) {
                return;
            }
        }
    }

    /// Every result event on the stream so far, acknowledged.
    async fn results(&self) -> Vec<JobResult> {
        let mut all = Vec::new();
        loop {
            let deliveries = self
                .dispatcher
                .read_results("tests", "t", 100, Duration::from_millis(200))
                .await
                .unwrap();
            if deliveries.is_empty() {
                return all;
            }
            for delivery in deliveries {
                self.dispatcher
                    .ack_result("tests", &delivery.entry_id)
                    .await
                    .unwrap();
                all.push(delivery.result);
            }
        }
    }

    async fn wait_for_state(&self, job: Uuid, state: JobState) -> huaxian_store::Job {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let row = self.dispatcher.store().job(job).await.unwrap();
            if row.state == state {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} stuck in {:?}",
                row.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn flush(&self) {
        huaxian_testkit::flush(&self.prefix).await;
    }
}

fn signal(child: &Child, signal: i32) {
    let pid = child.id().expect("worker already reaped");
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

async fn exit_code(child: &mut Child, within: Duration) -> i32 {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("worker did not exit in time")
        .unwrap();
    status.code().unwrap_or(-1)
}

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
