//! Redis losing its data mid-load: the reconciler restores dispatch from Postgres and
//! duplicate entries are dropped at claim.

mod common;

use std::collections::HashSet;

use common::{caps, config, dispatcher, flush, job, worker};
use huaxian_store::{JobState, Lane};
use sqlx::PgPool;

#[sqlx::test(migrations = "../../migrations")]
async fn flush_mid_load_loses_no_job_and_runs_none_twice(pool: PgPool) {
    let config = config();
    let prefix = config.prefix.clone();
    let dispatcher = dispatcher(pool.clone(), caps(), config).await;
    let mut tickets = Vec::new();
    for n in 0..40 {
        let user = n % 4;
        tickets.push(
            dispatcher
                .submit(&job(user, n, Lane::Fast))
                .await
                .unwrap()
                .ticket,
        );
    }

    let spec = worker("w1");
    let mut done = HashSet::new();
    let mut held = Vec::new();
    for _ in 0..10 {
        let claimed = dispatcher.claim(&spec).await.unwrap().pop().unwrap();
        done.insert(claimed.ticket.job_id);
        dispatcher.complete("w1", &claimed, 10, &[]).await.unwrap();
    }
    held.push(dispatcher.claim(&spec).await.unwrap().pop().unwrap());

    flush(&prefix).await;
    assert!(dispatcher.claim(&spec).await.unwrap().is_empty());

    let report = dispatcher.reconcile().await.unwrap();
    assert_eq!(report.redispatched, 29);
    assert_eq!(dispatcher.reconcile().await.unwrap().redispatched, 0);

    // Stale duplicates: entries for every job, finished and running ones included.
    flush(&prefix).await;
    for ticket in &tickets {
        dispatcher.push(ticket).await.unwrap();
    }
    dispatcher.complete("w1", &held[0], 10, &[]).await.unwrap();
    done.insert(held[0].ticket.job_id);

    loop {
        let claimed = dispatcher.claim(&spec).await.unwrap();
        let Some(claimed) = claimed.into_iter().next() else {
            break;
        };
        assert!(done.insert(claimed.ticket.job_id), "a job ran twice");
        dispatcher.complete("w1", &claimed, 10, &[]).await.unwrap();
    }
    assert_eq!(done.len(), 40);

    let succeeded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let settles: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM quota_ledger WHERE reason = 'settle'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((succeeded, settles), (40, 40));
    for ticket in &tickets {
        let stored = dispatcher.store().job(ticket.job_id).await.unwrap();
        assert_eq!((stored.state, stored.attempt), (JobState::Succeeded, 1));
    }
    flush(&prefix).await;
}
