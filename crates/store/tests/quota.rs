//! The fast-lane quota: reservations, settlement, refusals and admin overrides.

mod common;

use chrono::Duration;
use common::{assert_ledger, caps, job, ledger_rows, store};
use huaxian_store::{Caps, Lane, Refusal, Start, StoreError};
use sqlx::PgPool;

#[sqlx::test(migrations = "../../migrations")]
async fn exhausted_quota_says_when_it_resets(pool: PgPool) {
    let caps = Caps {
        fast_ms_per_period: 2500,
        period: Duration::days(7),
        ..caps()
    };
    let store = store(pool.clone(), caps);
    store.enqueue(&job(1, 1)).await.unwrap();
    store.enqueue(&job(1, 2)).await.unwrap();

    let refused = store.enqueue(&job(1, 3)).await.unwrap_err();
    let StoreError::Refused(Refusal::QuotaExhausted {
        left_ms,
        needed_ms,
        resets_at,
    }) = &refused
    else {
        panic!("expected quota refusal, got {refused}");
    };
    assert_eq!((*left_ms, *needed_ms), (500, 1000));
    assert_eq!(*resets_at, store.balance(1).await.unwrap().resets_at);
    assert!(*resets_at > chrono::Utc::now());
    let message = refused.to_string();
    assert!(
        message.contains("resets at") && message.contains("relax"),
        "{message}"
    );

    // Relax needs no balance.
    let mut relax = job(1, 4);
    relax.lane = Lane::Relax;
    assert!(store.enqueue(&relax).await.unwrap().created);
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn settle_charges_what_was_measured(pool: PgPool) {
    let caps = Caps {
        fast_ms_per_period: 3000,
        ..caps()
    };
    let store = store(pool.clone(), caps);
    let lease = Duration::seconds(30);

    let cheap = store.enqueue(&job(1, 1)).await.unwrap().ticket.job_id;
    let Start::Started { attempt, .. } = store.start(cheap, "w", lease).await.unwrap() else {
        panic!("not started");
    };
    assert_eq!(
        store
            .complete(cheap, attempt, "w", 400, &[])
            .await
            .unwrap()
            .cost_ms,
        400
    );
    assert_eq!(store.balance(1).await.unwrap().balance_ms, 2600);

    // Running far over the estimate charges only what is left: never negative.
    let dear = store.enqueue(&job(1, 2)).await.unwrap().ticket.job_id;
    let Start::Started { attempt, .. } = store.start(dear, "w", lease).await.unwrap() else {
        panic!("not started");
    };
    assert_eq!(
        store
            .complete(dear, attempt, "w", 99_000, &[])
            .await
            .unwrap()
            .cost_ms,
        2600
    );
    let balance = store.balance(1).await.unwrap();
    assert_eq!((balance.balance_ms, balance.ledger_ms), (0, 0));
    assert_eq!(ledger_rows(&pool, dear, "settle").await, 1);
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn admin_grant_reset_and_ban(pool: PgPool) {
    let caps = Caps {
        fast_ms_per_period: 1500,
        ..caps()
    };
    let store = store(pool.clone(), caps);
    store.enqueue(&job(1, 1)).await.unwrap();
    assert_eq!(store.grant(9, 1, 10_000).await.unwrap(), 10_500);
    assert_eq!(store.grant(9, 1, -50_000).await.unwrap(), 0);
    assert_eq!(store.reset_quota(9, 1).await.unwrap(), 1500);

    store.set_banned(9, 1, true).await.unwrap();
    let refused = store.enqueue(&job(1, 2)).await.unwrap_err();
    assert!(matches!(refused, StoreError::Refused(Refusal::Banned)));
    store.set_banned(9, 1, false).await.unwrap();
    store.enqueue(&job(1, 3)).await.unwrap();

    let audits: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE actor_id = 9")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audits, 5);
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn banned_words_refused_per_guild(pool: PgPool) {
    let store = store(pool.clone(), caps());
    store.ban_word(5, "Car").await.unwrap();
    let mut request = job(1, 1);
    request.guild_id = Some(5);
    let refused = store.enqueue(&request).await.unwrap_err();
    assert!(matches!(refused, StoreError::Refused(Refusal::BannedWord(ref w)) if w == "car"));
    request.guild_id = Some(6);
    assert!(store.enqueue(&request).await.unwrap().created);
}

#[sqlx::test(migrations = "../../migrations")]
async fn settings_and_workers_round_trip(pool: PgPool) {
    let store = store(pool, caps());
    let settings = huaxian_store::UserSettings {
        default_model: Some("sdxl".into()),
        stylize: Some(250),
        lane: Some(Lane::Relax),
        sampler: Some("ddim".into()),
        expand: Some(true),
    };
    store.set_settings(1, &settings).await.unwrap();
    assert_eq!(store.settings(1).await.unwrap(), settings);

    let worker = huaxian_store::Worker {
        id: "gpu-0".into(),
        models: vec!["sd15".into()],
        device: "H200".into(),
        max_pixels: 1024 * 1024,
        max_batch: 4,
        heartbeat_at: chrono::Utc::now(),
    };
    store.register_worker(&worker).await.unwrap();
    store.worker_heartbeat("gpu-0").await.unwrap();
    let listed = store.workers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].models, worker.models);
}
