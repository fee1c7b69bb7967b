//! Several jobs accepted in one transaction: each gets its own answer, and batches that
//! share users and guilds never deadlock or pass a cap together.

mod common;

use common::{assert_ledger, caps, job, store};
use huaxian_store::{Caps, Lane, NewJob, Refusal, StoreError};
use sqlx::PgPool;

#[sqlx::test(migrations = "../../migrations")]
async fn each_job_of_a_batch_gets_its_own_answer(pool: PgPool) {
    let caps = Caps {
        queued_per_user: 2,
        ..caps()
    };
    let store = store(pool.clone(), caps);
    store.set_banned(1, 9, true).await.unwrap();
    store.ban_word(70, "forbidden").await.unwrap();
    let mut worded = NewJob {
        guild_id: Some(70),
        ..job(3, 304)
    };
    worded.spec.raw = "A FORBIDDEN car".into();
    let relax = NewJob {
        lane: Lane::Relax,
        ..job(4, 401)
    };

    let batch = vec![
        job(1, 101),
        job(1, 102),
        // The user's third queued job passes the cap of 2: the two before it in this batch
        // count.
        job(1, 103),
        // The same interaction again, within the batch: the job it already made.
        job(1, 101),
        job(9, 901),
        worded,
        relax,
        NewJob {
            guild_id: Some(70),
            ..job(3, 305)
        },
    ];
    let outcomes = store.enqueue_batch(&batch).await.unwrap();
    assert_eq!(outcomes.len(), batch.len());

    let first = outcomes[0].as_ref().unwrap();
    assert!(first.created);
    assert!(outcomes[1].as_ref().unwrap().created);
    assert!(matches!(
        outcomes[2],
        Err(StoreError::Refused(Refusal::UserQueueFull(2)))
    ));
    let again = outcomes[3].as_ref().unwrap();
    assert!(!again.created);
    assert_eq!(again.ticket.job_id, first.ticket.job_id);
    assert!(matches!(
        outcomes[4],
        Err(StoreError::Refused(Refusal::Banned))
    ));
    match &outcomes[5] {
        Err(StoreError::Refused(Refusal::BannedWord(word))) => assert_eq!(word, "forbidden"),
        other => panic!("expected the banned word, got {other:?}"),
    }
    let relaxed = outcomes[6].as_ref().unwrap();
    assert!(relaxed.created);
    assert_eq!(relaxed.ticket.lane, Lane::Relax);
    assert!(outcomes[7].as_ref().unwrap().created);

    // Refused jobs wrote nothing: four rows, and only fast jobs reserved time.
    let (jobs, reserves): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM jobs), \
                (SELECT COUNT(*) FROM quota_ledger WHERE reason = 'reserve')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((jobs, reserves), (4, 3));
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_empty_batch_writes_nothing(pool: PgPool) {
    let store = store(pool.clone(), caps());
    assert!(store.enqueue_batch(&[]).await.unwrap().is_empty());
}

#[sqlx::test(migrations = "../../migrations")]
async fn batches_sharing_users_and_guilds_neither_deadlock_nor_pass_caps(pool: PgPool) {
    let caps = Caps {
        queued_per_user: 7,
        queued_per_guild: 30,
        ..caps()
    };
    let store = store(pool.clone(), caps);
    // Twenty batches of six jobs; each names the same five users and three guilds in a
    // different order, so batches that locked in the order given would wait on each other
    // in a cycle.
    let mut tasks = Vec::new();
    for b in 0..20i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let batch: Vec<NewJob> = (0..6i64)
                .map(|k| {
                    let user = (b * 7 + k * 3) % 5;
                    let guild = 100 + (b + k * 2) % 3;
                    NewJob {
                        guild_id: Some(guild),
                        ..job(user, b * 100 + k)
                    }
                })
                .collect();
            store.enqueue_batch(&batch).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        for outcome in task.await.unwrap().expect("no batch fails") {
            match outcome {
                Ok(enqueued) => created += usize::from(enqueued.created),
                Err(StoreError::Refused(
                    Refusal::UserQueueFull(_) | Refusal::GuildQueueFull(_),
                )) => {}
                Err(other) => panic!("unexpected {other}"),
            }
        }
    }
    let worst_user: i64 = sqlx::query_scalar(
        "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM jobs GROUP BY user_id) c",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let worst_guild: i64 = sqlx::query_scalar(
        "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM jobs GROUP BY guild_id) c",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(worst_user <= 7, "a user has {worst_user} queued jobs");
    assert!(worst_guild <= 30, "a guild has {worst_guild} queued jobs");
    // 5 users × 7 = 35 jobs fit under the user cap; the guild caps allow 90.
    assert_eq!(created, 35);
    assert_ledger(&pool).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_late_request_never_rolls_a_user_back_a_period(pool: PgPool) {
    let store = store(pool.clone(), caps());
    store.enqueue(&job(1, 1)).await.unwrap();
    // Another process, whose clock already reads the next period, rolled the user into it
    // while this one waited for the lock.
    sqlx::query("UPDATE users SET quota_period = quota_period + interval '30 days' WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    store.enqueue(&job(1, 2)).await.unwrap();
    let (grants, expiries): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE reason = 'period_grant'), \
                COUNT(*) FILTER (WHERE reason = 'period_expire') FROM quota_ledger",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((grants, expiries), (1, 0));
    assert_ledger(&pool).await;
}

/// One job of `user` for `huaxian_enqueue`'s JSON argument.
fn job_args(user: i64, interaction: i64, parent: Option<uuid::Uuid>) -> serde_json::Value {
    serde_json::json!({
        "item": 0, "id": uuid::Uuid::new_v4(), "kind": if parent.is_some() { "upscale" } else { "imagine" },
        "parent_id": parent, "image_index": parent.map(|_| 1), "action": parent.map(|_| "upscale:1"),
        "spec": {}, "model": "sd15", "lane": "fast", "pixels": 262144, "batch_key": "k",
        "images": 1, "estimate_ms": 1000, "interaction_id": interaction, "part": 0,
        "user_id": user, "guild_id": null, "channel_id": 1, "inputs": [], "prompt_lower": "a",
    })
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_stale_completion_does_not_block_an_upscale_of_its_finished_job(pool: PgPool) {
    let store = store(pool.clone(), caps());
    let lease = chrono::Duration::seconds(30);
    let finish = |job_id, attempt| huaxian_store::Finished {
        job_id,
        attempt,
        measured_ms: 500,
        images: Vec::new(),
        grid_key: None,
        final_prompt: None,
    };
    // P: user 5's finished grid. Q: user 3's job, running on worker w.
    let p = store.enqueue(&job(5, 1)).await.unwrap().ticket.job_id;
    store.start(p, "w", lease).await.unwrap();
    store.complete_batch("w", &[finish(p, 1)]).await.unwrap();
    let q = store.enqueue(&job(3, 2)).await.unwrap().ticket.job_id;
    store.start(q, "w", lease).await.unwrap();

    // An enqueue for user 3 holds the user's lock in an open transaction...
    let mut enqueue = pool.begin().await.unwrap();
    let call = "SELECT outcome FROM huaxian_enqueue($1, 3, 1000, 1000, 100000, 1000, \
                date_trunc('month', now()), 3600000, date_trunc('day', now()))";
    let first: String = sqlx::query_scalar(call)
        .bind(serde_json::json!([job_args(3, 10, None)]))
        .fetch_one(&mut *enqueue)
        .await
        .unwrap();
    assert_eq!(first, "created");
    // ...while a stale report naming P (finished) and Q locks both jobs and waits for user 3.
    let completing = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .complete_batch("w", &[finish(p, 1), finish(q, 1)])
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The enqueue goes on to insert an upscale of P, whose foreign key reads P's row: it
    // must not wait for the completion, which waits for it.
    let second: String = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sqlx::query_scalar(call)
            .bind(serde_json::json!([job_args(3, 11, Some(p))]))
            .fetch_one(&mut *enqueue),
    )
    .await
    .expect("the enqueue is not blocked")
    .expect("no deadlock");
    assert_eq!(second, "created");
    enqueue.commit().await.unwrap();

    let outcomes = completing.await.unwrap().unwrap();
    assert!(matches!(outcomes[0], Err(StoreError::Stale(_))));
    assert!(outcomes[1].is_ok());
    assert_ledger(&pool).await;
}
