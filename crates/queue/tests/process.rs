//! Worker processes killed (SIGKILL) or paused (SIGSTOP) while holding a job.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use common::{caps, config, database_url, dispatcher, flush, job, redis_url};
use huaxian_store::{JobState, Lane};
use sqlx::PgPool;

struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    fn spawn(database_url: &str, prefix: &str, id: &str, lease_ms: u64, hold_ms: u64) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_queue-test-worker"))
            .args(["--database-url", database_url, "--redis-url", &redis_url()])
            .args(["--prefix", prefix, "--worker", id])
            .args([
                "--lease-ms",
                &lease_ms.to_string(),
                "--hold-ms",
                &hold_ms.to_string(),
            ])
            .args(["--renew-ms", "100", "--measured-ms", "700"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next line the worker prints other than a successful renewal.
    async fn next(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
                .await
                .expect("worker silent for 20 s")
                .unwrap()
                .expect("worker exited");
            if line != "renew ok" {
                return line;
            }
        }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("worker already reaped");
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(rc, 0);
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn killed_worker_job_completes_once_elsewhere(pool: PgPool) {
    let config = config();
    let prefix = config.prefix.clone();
    let dispatcher = dispatcher(pool.clone(), caps(), config).await;
    let id = dispatcher
        .submit(&job(1, 1, Lane::Fast))
        .await
        .unwrap()
        .ticket
        .job_id;
    let url = database_url(&pool).await;

    let mut first = Worker::spawn(&url, &prefix, "w1", 500, 60_000);
    let claimed = first.next().await;
    assert_eq!(claimed, format!("claimed {id} 1"));
    first.signal(libc::SIGKILL);
    first.child.wait().await.unwrap();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let report = dispatcher.reconcile().await.unwrap();
    assert_eq!(report.retried, 1);

    let mut second = Worker::spawn(&url, &prefix, "w2", 5000, 0);
    let lines = [second.next().await, second.next().await];
    assert_eq!(
        lines,
        [format!("claimed {id} 2"), "complete ok".to_string()]
    );
    second.child.wait().await.unwrap();

    let stored = dispatcher.store().job(id).await.unwrap();
    assert_eq!(stored.state, JobState::Succeeded);
    assert_eq!(stored.cost_ms, Some(700));
    let settles: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM quota_ledger WHERE job_id = $1 AND reason = 'settle'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(settles, 1);
    let balance = dispatcher.store().balance(1).await.unwrap();
    assert_eq!(balance.balance_ms, balance.ledger_ms);
    assert_eq!(balance.balance_ms, caps().fast_ms_per_period - 700);
    flush(&prefix).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn paused_worker_is_fenced_out_after_resuming(pool: PgPool) {
    let config = config();
    let prefix = config.prefix.clone();
    let dispatcher = dispatcher(pool.clone(), caps(), config).await;
    let id = dispatcher
        .submit(&job(1, 1, Lane::Fast))
        .await
        .unwrap()
        .ticket
        .job_id;
    let url = database_url(&pool).await;

    let mut first = Worker::spawn(&url, &prefix, "w1", 500, 1500);
    let claimed = first.next().await;
    assert_eq!(claimed, format!("claimed {id} 1"));
    first.signal(libc::SIGSTOP);

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(dispatcher.reconcile().await.unwrap().retried, 1);
    let mut second = Worker::spawn(&url, &prefix, "w2", 5000, 0);
    let lines = [second.next().await, second.next().await];
    assert_eq!(
        lines,
        [format!("claimed {id} 2"), "complete ok".to_string()]
    );
    second.child.wait().await.unwrap();

    first.signal(libc::SIGCONT);
    let mut rest = Vec::new();
    while let Some(line) = first.lines.next_line().await.unwrap() {
        rest.push(line);
    }
    first.child.wait().await.unwrap();
    assert!(rest.contains(&"renew stale".to_string()), "{rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("complete stale"));

    let stored = dispatcher.store().job(id).await.unwrap();
    assert_eq!((stored.state, stored.attempt), (JobState::Succeeded, 2));
    assert_eq!(stored.worker_id.as_deref(), Some("w2"));
    let settles: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM quota_ledger WHERE job_id = $1 AND reason = 'settle'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(settles, 1);
    flush(&prefix).await;
}
