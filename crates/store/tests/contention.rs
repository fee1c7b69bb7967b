//! Idempotency and caps under concurrent requests.

mod common;

use chrono::Duration;
use common::{assert_ledger, caps, job, store};
use huaxian_store::{Caps, Refusal, Start, StoreError};
use sqlx::PgPool;

#[sqlx::test(migrations = "../../migrations")]
async fn same_interaction_makes_one_job(pool: PgPool) {
    let store = store(pool.clone(), caps());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(
            async move { store.enqueue(&job(1, 4242)).await },
        ));
    }

    let mut ids = Vec::new();
    let mut created = 0;
    for task in tasks {
        let enqueued = task.await.unwrap().unwrap();
        created += usize::from(enqueued.created);
        ids.push(enqueued.ticket.job_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn queue_caps_hold_under_contention(pool: PgPool) {
    let caps = Caps {
        queued_per_user: 10,
        queued_per_guild: 25,
        ..caps()
    };
    let store = store(pool.clone(), caps);

    let mut tasks = Vec::new();
    for n in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.enqueue(&job(1, n)).await }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(enqueued) => accepted += usize::from(enqueued.created),
            Err(StoreError::Refused(Refusal::UserQueueFull(_))) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 10);

    // Five users of one guild, 10 requests each, racing for a guild cap of 25.
    let mut tasks = Vec::new();
    for user in 10..15 {
        for n in 0..10 {
            let store = store.clone();
            let mut request = job(user, 1000 + user * 100 + n);
            request.guild_id = Some(77);
            tasks.push(tokio::spawn(async move { store.enqueue(&request).await }));
        }
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(enqueued) => accepted += usize::from(enqueued.created),
            Err(StoreError::Refused(Refusal::GuildQueueFull(_))) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 25);
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn running_cap_holds_under_contention(pool: PgPool) {
    let store = store(pool.clone(), caps());
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(store.enqueue(&job(1, n)).await.unwrap().ticket.job_id);
    }

    let mut tasks = Vec::new();
    for (n, id) in ids.into_iter().enumerate() {
        let store = store.clone();
        let worker = format!("w{n}");
        tasks.push(tokio::spawn(async move {
            store.start(id, &worker, Duration::seconds(30)).await
        }));
    }
    let mut started = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Start::Started { .. } => started += 1,
            Start::Busy => {}
            Start::Gone => panic!("a queued job was gone"),
        }
    }
    assert_eq!(started, 3);
}

#[sqlx::test(migrations = "../../migrations")]
async fn rate_limit_and_daily_images(pool: PgPool) {
    let store = store(
        pool.clone(),
        Caps {
            commands_per_minute: 3,
            ..caps()
        },
    );
    for n in 0..3 {
        store.enqueue(&job(1, n)).await.unwrap();
    }
    let refused = store.enqueue(&job(1, 3)).await.unwrap_err();
    assert!(matches!(
        refused,
        StoreError::Refused(Refusal::RateLimited(3))
    ));

    let store = store_with_daily(pool, 8);
    store.enqueue(&job(2, 10)).await.unwrap();
    store.enqueue(&job(2, 11)).await.unwrap();
    let refused = store.enqueue(&job(2, 12)).await.unwrap_err();
    assert!(refused.to_string().contains("resets at"), "{refused}");
}

fn store_with_daily(pool: PgPool, daily_images: i64) -> huaxian_store::Store {
    store(
        pool,
        Caps {
            daily_images,
            ..caps()
        },
    )
}

#[sqlx::test(migrations = "../../migrations")]
async fn button_returns_the_live_job(pool: PgPool) {
    let store = store(pool.clone(), caps());
    let parent = store.enqueue(&job(1, 1)).await.unwrap().ticket.job_id;
    let mut upscale = job(1, 2);
    upscale.parent = Some((parent, "upscale:2".into()));
    upscale.image_index = Some(2);
    let first = store.enqueue(&upscale).await.unwrap();
    assert!(first.created);

    // The same button, pressed again (a new interaction), while the first is live.
    upscale.interaction_id = 3;
    let again = store.enqueue(&upscale).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.ticket.job_id, first.ticket.job_id);

    // Another user pressing it gets their own job.
    let mut other = upscale.clone();
    other.user_id = 2;
    other.interaction_id = 4;
    assert!(store.enqueue(&other).await.unwrap().created);

    // Once the first has ended, the button makes a new job.
    assert!(store.cancel(first.ticket.job_id, 1).await.unwrap());
    upscale.interaction_id = 5;
    assert!(store.enqueue(&upscale).await.unwrap().created);
    assert_ledger(&pool).await;
}
