//! What the process tests share: a deployment of its own (a `#[sqlx::test]` database, a
//! Redis key prefix, a blob folder), `huaxian worker` processes started on it, and for the
//! Discord tests the gateway against a loopback Discord ([`bot`]). Each test binary uses
//! only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod bot;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use huaxian_prompt::JobSpec;
use huaxian_queue::{Config, Dispatcher, JobResult};
use huaxian_store::{Caps, JobState, NewJob, Store};
use huaxian_testkit::{database_url, redis_url};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn caps() -> Caps {
    Caps {
        retry_backoff: chrono::Duration::zero(),
        ..Caps::default()
    }
}

pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub database_url: String,
    pub dispatcher: Dispatcher,
}

impl Deployment {
    pub async fn new(pool: PgPool) -> Self {
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

    pub fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// Writes a configuration for worker `id` and starts `huaxian worker` on it. A short
    /// lease lets a killed worker's job come back quickly.
    pub fn worker(&self, id: &str, grace_s: f64, lease_s: f64) -> Child {
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
            // Several workers share two cores here; one compute thread each keeps them from
            // spinning against each other.
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    pub async fn submit(&self, steps: u32, interaction_id: i64) -> Uuid {
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
    pub async fn rendering(&self, job: Uuid) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut after = "0".to_string();
        let mut reader = self.dispatcher.event_reader().await.unwrap();
        loop {
            if Instant::now() >= deadline {
                panic!("job {job} never started rendering\n{}", self.logs());
            }
            let (events, last) = reader
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
    pub async fn results(&self) -> Vec<JobResult> {
        let mut all = Vec::new();
        let mut reader = self.dispatcher.event_reader().await.unwrap();
        loop {
            let deliveries = reader
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

    pub async fn wait_for_state(&self, job: Uuid, state: JobState) -> huaxian_store::Job {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let row = self.dispatcher.store().job(job).await.unwrap();
            if row.state == state {
                return row;
            }
            if Instant::now() >= deadline {
                panic!("job {job} stuck in {:?}\n{}", row.state, self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every worker's log, for the message of a failing test.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!("--- {}\n{}\n", path.display(), tail.join("\n")));
        }
        out
    }

    pub async fn flush(&self) {
        huaxian_testkit::flush(&self.prefix).await;
    }
}

pub fn signal(child: &Child, signal: i32) {
    let pid = child.id().expect("worker already reaped");
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

pub async fn exit_code(child: &mut Child, within: Duration) -> i32 {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("worker did not exit in time")
        .unwrap();
    status.code().unwrap_or(-1)
}
