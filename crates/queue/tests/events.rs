//! The event streams: results read by a consumer group until acknowledged, progress read
//! from a point on, and readers that wait without holding up the dispatcher.

mod common;

use std::time::{Duration, Instant};

use common::{caps, config, dispatcher, job};
use huaxian_queue::{JobResult, Outcome, Progress};
use huaxian_store::Lane;
use sqlx::PgPool;
use uuid::Uuid;

fn result(job_id: Uuid) -> JobResult {
    JobResult {
        job_id,
        user_id: 7,
        outcome: Outcome::Succeeded,
        error: None,
        grid_key: Some(format!("grids/{job_id}.png")),
        images: Vec::new(),
        prompt: "a lighthouse".into(),
        cost_ms: 1200,
    }
}

fn progress(job_id: Uuid, step: u32) -> Progress {
    Progress {
        job_id,
        step,
        steps: 20,
        eta_ms: 900,
        preview: Some(vec![0xff, 0xd8, step as u8]),
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn results_are_read_again_until_acknowledged(pool: PgPool) {
    let dispatcher = dispatcher(pool, caps(), config()).await;
    let mut reader = dispatcher.event_reader().await.unwrap();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    dispatcher.publish_result(&result(first)).await.unwrap();
    dispatcher.publish_result(&result(second)).await.unwrap();

    let wait = Duration::from_millis(200);
    let read = reader.read_results("g", "c1", 10, wait).await.unwrap();
    let ids: Vec<Uuid> = read.iter().map(|d| d.result.job_id).collect();
    assert_eq!(ids, [first, second]);
    assert_eq!(read[0].result, result(first));

    // Unacknowledged: the same consumer, as after a restart, reads both again.
    dispatcher.ack_result("g", &read[0].entry_id).await.unwrap();
    let mut restarted = dispatcher.event_reader().await.unwrap();
    let again = restarted.read_results("g", "c1", 10, wait).await.unwrap();
    let ids: Vec<Uuid> = again.iter().map(|d| d.result.job_id).collect();
    assert_eq!(ids, [second], "the acknowledged one is gone");

    dispatcher
        .ack_result("g", &again[0].entry_id)
        .await
        .unwrap();
    let none = restarted.read_results("g", "c1", 10, wait).await.unwrap();
    assert!(none.is_empty());
}

#[sqlx::test(migrations = "../../migrations")]
async fn progress_is_read_from_a_point_on_with_its_preview(pool: PgPool) {
    let dispatcher = dispatcher(pool, caps(), config()).await;
    let mut reader = dispatcher.event_reader().await.unwrap();
    let job = Uuid::new_v4();
    dispatcher
        .publish_progress(&progress(job, 1))
        .await
        .unwrap();

    let wait = Duration::from_millis(200);
    let (all, after) = reader.read_progress("0", 10, wait).await.unwrap();
    assert_eq!(all, [progress(job, 1)]);
    assert_eq!(all[0].preview.as_deref(), Some(&[0xff, 0xd8, 1][..]));

    dispatcher
        .publish_progress(&progress(job, 5))
        .await
        .unwrap();
    let (newer, after) = reader.read_progress(&after, 10, wait).await.unwrap();
    assert_eq!(newer, [progress(job, 5)], "only what came after");
    let (none, _) = reader.read_progress(&after, 10, wait).await.unwrap();
    assert!(none.is_empty());
}

/// Redis answers nothing else on a connection while a read waits on it, so a waiting reader
/// must not share the dispatcher's connection: submits and notes go on meanwhile.
#[sqlx::test(migrations = "../../migrations")]
async fn a_waiting_reader_does_not_hold_up_the_dispatcher(pool: PgPool) {
    let dispatcher = dispatcher(pool, caps(), config()).await;
    let mut results = dispatcher.event_reader().await.unwrap();
    let mut progress = dispatcher.event_reader().await.unwrap();
    let wait = Duration::from_secs(4);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let read = results.read_results("g", "c", 10, wait).await.unwrap();
        (read, started.elapsed())
    });
    let also_waiting =
        tokio::spawn(async move { progress.read_progress("$", 10, wait).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let enqueued = dispatcher.submit(&job(1, 1, Lane::Fast)).await.unwrap();
    let id = enqueued.ticket.job_id;
    dispatcher
        .put_note(id, "{}", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(dispatcher.note(id).await.unwrap().as_deref(), Some("{}"));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the dispatcher waited {took:?} behind the readers"
    );

    // The reader still gets what is published while it waits.
    dispatcher.publish_result(&result(id)).await.unwrap();
    let (read, waited) = waiting.await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].result.job_id, id);
    assert!(waited < wait, "woken by the result, not by the timeout");
    also_waiting.abort();
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_unreachable_redis_is_named_at_once(pool: PgPool) {
    let store = huaxian_store::Store::from_pool(pool, caps());
    let connected =
        huaxian_queue::Dispatcher::connect(store, "redis://127.0.0.1:1", config()).await;
    let Err(error) = connected else {
        panic!("connected to a closed port");
    };
    let error = error.to_string();
    assert!(
        error.contains("cannot connect to Redis at 127.0.0.1:1"),
        "{error}"
    );
}
