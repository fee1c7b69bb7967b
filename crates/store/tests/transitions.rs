//! Every job transition, with stale attempts rejected and terminal states final.

mod common;

use chrono::Duration;
use common::{assert_ledger, caps, job, ledger_rows, store};
use huaxian_store::{Failure, JobState, Start, StoreError};
use sqlx::PgPool;

const LEASE: Duration = Duration::seconds(30);

fn attempt_of(start: Start) -> i32 {
    match start {
        Start::Started { attempt, .. } => attempt,
        other => panic!("expected a start, got {other:?}"),
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn success_path_fences_stale_attempts(pool: PgPool) {
    let store = store(pool.clone(), caps());
    let id = store.enqueue(&job(1, 100)).await.unwrap().ticket.job_id;
    assert_eq!(store.job(id).await.unwrap().state, JobState::Queued);

    let attempt = attempt_of(store.start(id, "w1", LEASE).await.unwrap());
    assert_eq!(attempt, 1);
    assert_eq!(store.start(id, "w2", LEASE).await.unwrap(), Start::Gone);
    store.renew(id, attempt, "w1", LEASE).await.unwrap();
    assert!(matches!(
        store.renew(id, 0, "w1", LEASE).await,
        Err(StoreError::Stale(_))
    ));
    assert!(matches!(
        store.renew(id, attempt, "w2", LEASE).await,
        Err(StoreError::Stale(_))
    ));
    assert!(matches!(
        store.complete(id, 0, "w1", 500, &[]).await,
        Err(StoreError::Stale(_))
    ));

    let done = store.complete(id, attempt, "w1", 500, &[]).await.unwrap();
    assert_eq!(done.cost_ms, 500);
    assert_eq!(store.job(id).await.unwrap().state, JobState::Succeeded);

    // Terminal: nothing moves it again.
    assert!(matches!(
        store.complete(id, attempt, "w1", 500, &[]).await,
        Err(StoreError::Stale(_))
    ));
    assert!(matches!(
        store.fail(id, attempt, "w1", "boom", true).await,
        Err(StoreError::Stale(_))
    ));
    assert!(!store.cancel(id, 1).await.unwrap());
    assert_eq!(store.start(id, "w1", LEASE).await.unwrap(), Start::Gone);
    assert_eq!(ledger_rows(&pool, id, "settle").await, 1);
    assert_eq!(
        store.balance(1).await.unwrap().balance_ms,
        caps().fast_ms_per_period - 500
    );
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn retries_then_fails_and_refunds(pool: PgPool) {
    let caps = huaxian_store::Caps {
        max_attempts: 2,
        ..caps()
    };
    let store = store(pool.clone(), caps.clone());
    let id = store.enqueue(&job(1, 100)).await.unwrap().ticket.job_id;

    let first = attempt_of(store.start(id, "w1", LEASE).await.unwrap());
    let retry = store
        .fail(id, first, "w1", "out of memory", true)
        .await
        .unwrap();
    assert!(matches!(retry, Failure::Retry(ref t) if t.job_id == id));
    assert_eq!(store.job(id).await.unwrap().state, JobState::Queued);

    let second = attempt_of(store.start(id, "w2", LEASE).await.unwrap());
    assert_eq!(second, 2);
    assert!(matches!(
        store.fail(id, first, "w1", "late", true).await,
        Err(StoreError::Stale(_))
    ));
    match store
        .fail(id, second, "w2", "out of memory", true)
        .await
        .unwrap()
    {
        Failure::Failed { error, .. } => assert!(error.contains("2 attempt"), "{error}"),
        other => panic!("expected failure, got {other:?}"),
    }

    let stored = store.job(id).await.unwrap();
    assert_eq!(stored.state, JobState::Failed);
    assert_eq!(
        store.balance(1).await.unwrap().balance_ms,
        caps.fast_ms_per_period
    );
    assert_eq!(ledger_rows(&pool, id, "refund").await, 1);
    assert!(!store.cancel(id, 1).await.unwrap());
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn permanent_failure_fails_at_once(pool: PgPool) {
    let store = store(pool.clone(), caps());
    let id = store.enqueue(&job(1, 100)).await.unwrap().ticket.job_id;
    let attempt = attempt_of(store.start(id, "w1", LEASE).await.unwrap());
    let failure = store
        .fail(id, attempt, "w1", "bad spec", false)
        .await
        .unwrap();
    assert!(matches!(failure, Failure::Failed { .. }));
    assert_eq!(store.job(id).await.unwrap().state, JobState::Failed);
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn cancel_refunds_and_fences_the_worker(pool: PgPool) {
    let store = store(pool.clone(), caps());
    let queued = store.enqueue(&job(1, 100)).await.unwrap().ticket.job_id;
    let running = store.enqueue(&job(1, 101)).await.unwrap().ticket.job_id;
    let attempt = attempt_of(store.start(running, "w1", LEASE).await.unwrap());

    assert!(matches!(
        store.cancel(queued, 2).await,
        Err(StoreError::NoSuchJob(_))
    ));
    assert!(store.cancel(queued, 1).await.unwrap());
    assert!(store.cancel(running, 1).await.unwrap());
    assert!(!store.cancel(running, 1).await.unwrap());
    assert_eq!(store.start(queued, "w1", LEASE).await.unwrap(), Start::Gone);
    assert!(matches!(
        store.complete(running, attempt, "w1", 100, &[]).await,
        Err(StoreError::Stale(_))
    ));
    assert_eq!(store.job(running).await.unwrap().state, JobState::Cancelled);
    assert_eq!(
        store.balance(1).await.unwrap().balance_ms,
        caps().fast_ms_per_period
    );
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn expired_lease_moves_the_job_on(pool: PgPool) {
    let store = store(pool.clone(), caps());
    let id = store.enqueue(&job(1, 100)).await.unwrap().ticket.job_id;
    let first = attempt_of(
        store
            .start(id, "w1", Duration::milliseconds(50))
            .await
            .unwrap(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;

    let expired = store.expire_leases(10).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert!(matches!(expired[0].failure, Failure::Retry(_)));
    assert!(store.expire_leases(10).await.unwrap().is_empty());

    let second = attempt_of(store.start(id, "w2", LEASE).await.unwrap());
    assert!(matches!(
        store.renew(id, first, "w1", LEASE).await,
        Err(StoreError::Stale(_))
    ));
    assert!(matches!(
        store.complete(id, first, "w1", 700, &[]).await,
        Err(StoreError::Stale(_))
    ));
    store.complete(id, second, "w2", 700, &[]).await.unwrap();
    assert_eq!(ledger_rows(&pool, id, "settle").await, 1);
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn retry_waits_for_its_backoff(pool: PgPool) {
    let caps = huaxian_store::Caps {
        retry_backoff: Duration::seconds(60),
        ..caps()
    };
    let store = store(pool.clone(), caps);
    let id = store.enqueue(&job(1, 100)).await.unwrap().ticket.job_id;
    let attempt = attempt_of(store.start(id, "w1", LEASE).await.unwrap());
    match store
        .fail(id, attempt, "w1", "transient", true)
        .await
        .unwrap()
    {
        Failure::Retry(ticket) => assert!(ticket.ready_at.is_some()),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert_eq!(store.start(id, "w2", LEASE).await.unwrap(), Start::Gone);
}

#[sqlx::test(migrations = "../../migrations")]
async fn batches_start_and_complete_each_job_on_its_own(pool: PgPool) {
    let store = store(
        pool.clone(),
        huaxian_store::Caps {
            running_per_user: 2,
            ..caps()
        },
    );
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(store.enqueue(&job(1, n)).await.unwrap().ticket.job_id);
    }

    let starts = store.start_batch(&ids, "w1", LEASE).await.unwrap();
    let started: Vec<_> = starts
        .iter()
        .filter(|(_, start)| matches!(start, Start::Started { .. }))
        .collect();
    assert_eq!(started.len(), 2, "running cap of 2 within one batch");
    assert!(starts.iter().any(|(_, start)| *start == Start::Busy));

    let finished: Vec<huaxian_store::Finished> = started
        .iter()
        .enumerate()
        .map(|(n, (id, _))| huaxian_store::Finished {
            job_id: *id,
            // The second report names a stale attempt.
            attempt: if n == 0 { 1 } else { 7 },
            measured_ms: 300,
            images: Vec::new(),
            grid_key: None,
            final_prompt: None,
        })
        .collect();
    let outcomes = store.complete_batch("w1", &finished).await.unwrap();
    assert!(outcomes[0].is_ok());
    assert!(matches!(outcomes[1], Err(StoreError::Stale(_))));
    assert_eq!(
        store.job(started[0].0).await.unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(
        store.job(started[1].0).await.unwrap().state,
        JobState::Running
    );
    assert_ledger(&pool).await;
}
