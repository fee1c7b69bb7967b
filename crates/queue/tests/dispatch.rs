//! Claiming: fairness between users, lanes, compatibility, batches, caps, retries, position.

mod common;

use std::time::Duration;

use common::{caps, config, dispatcher, job, worker};
use huaxian_queue::{Claimed, Config, Dispatcher, WorkerSpec};
use huaxian_store::{Caps, Failure, JobState, Lane};
use sqlx::PgPool;

async fn claim_one(dispatcher: &Dispatcher, spec: &WorkerSpec) -> Option<Claimed> {
    let mut claimed = dispatcher.claim(spec).await.unwrap();
    assert!(claimed.len() <= 1);
    claimed.pop()
}

#[sqlx::test(migrations = "../../migrations")]
async fn newcomer_starts_within_one_free_slot(pool: PgPool) {
    let dispatcher = dispatcher(pool, caps(), config()).await;
    for n in 0..100 {
        dispatcher.submit(&job(1, n, Lane::Fast)).await.unwrap();
    }
    let single = dispatcher.submit(&job(2, 1000, Lane::Fast)).await.unwrap();

    let spec = worker("w1");
    let first = claim_one(&dispatcher, &spec).await.unwrap();
    let second = claim_one(&dispatcher, &spec).await.unwrap();
    assert_eq!(first.ticket.user_id, 1);
    assert_eq!(second.ticket.job_id, single.ticket.job_id);
    common::flush(dispatcher.prefix()).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn relax_yields_to_fast_but_never_starves(pool: PgPool) {
    let config = Config {
        relax_every: 4,
        ..config()
    };
    let dispatcher = dispatcher(pool, caps(), config).await;
    for n in 0..20 {
        dispatcher.submit(&job(1, n, Lane::Fast)).await.unwrap();
    }
    for n in 0..5 {
        dispatcher
            .submit(&job(2, 100 + n, Lane::Relax))
            .await
            .unwrap();
    }

    let spec = worker("w1");
    let mut lanes = Vec::new();
    for _ in 0..12 {
        lanes.push(claim_one(&dispatcher, &spec).await.unwrap().ticket.lane);
    }
    let relax = lanes.iter().filter(|lane| **lane == Lane::Relax).count();
    assert_eq!(lanes[0], Lane::Fast);
    assert_eq!(relax, 3, "one relax claim in every 4: {lanes:?}");
    common::flush(dispatcher.prefix()).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn workers_claim_only_what_they_can_run(pool: PgPool) {
    let dispatcher = dispatcher(pool, caps(), config()).await;
    let mut big = job(1, 1, Lane::Fast);
    big.spec = common::spec("sdxl", 1024, 30);
    let big = dispatcher.submit(&big).await.unwrap().ticket.job_id;

    assert!(dispatcher.claim(&worker("sd15")).await.unwrap().is_empty());
    let small = WorkerSpec {
        model: "sdxl".into(),
        max_pixels: 512 * 512,
        ..worker("small")
    };
    assert!(dispatcher.claim(&small).await.unwrap().is_empty());
    let large = WorkerSpec {
        max_pixels: 1024 * 1024,
        ..small
    };
    let claimed = dispatcher.claim(&large).await.unwrap();
    assert_eq!(claimed[0].ticket.job_id, big);
    common::flush(dispatcher.prefix()).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn batch_claims_share_model_size_sampler_and_steps(pool: PgPool) {
    let dispatcher = dispatcher(pool, caps(), config()).await;
    for user in 1..=3 {
        dispatcher
            .submit(&job(user, user, Lane::Fast))
            .await
            .unwrap();
    }
    let mut other = job(4, 4, Lane::Fast);
    other.spec.steps = 40;
    dispatcher.submit(&other).await.unwrap();

    let spec = WorkerSpec {
        max_batch: 4,
        ..worker("w1")
    };
    let batch = dispatcher.claim(&spec).await.unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch
        .iter()
        .all(|c| c.ticket.batch_key == batch[0].ticket.batch_key));
    assert_eq!(dispatcher.claim(&spec).await.unwrap().len(), 1);
    common::flush(dispatcher.prefix()).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn running_cap_keeps_the_entry_waiting(pool: PgPool) {
    let caps = Caps {
        running_per_user: 1,
        ..caps()
    };
    let dispatcher = dispatcher(pool, caps, config()).await;
    dispatcher.submit(&job(1, 1, Lane::Fast)).await.unwrap();
    let second = dispatcher.submit(&job(1, 2, Lane::Fast)).await.unwrap();

    let spec = worker("w1");
    let first = claim_one(&dispatcher, &spec).await.unwrap();
    assert!(claim_one(&dispatcher, &spec).await.is_none());
    dispatcher.complete("w1", &first, 10, &[]).await.unwrap();
    let next = claim_one(&dispatcher, &spec).await.unwrap();
    assert_eq!(next.ticket.job_id, second.ticket.job_id);
    common::flush(dispatcher.prefix()).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn retries_back_off_then_fail_with_refund(pool: PgPool) {
    let caps = Caps {
        max_attempts: 2,
        retry_backoff: chrono::Duration::milliseconds(300),
        fast_ms_per_period: 10_000,
        ..caps()
    };
    let dispatcher = dispatcher(pool, caps, config()).await;
    let id = dispatcher
        .submit(&job(1, 1, Lane::Fast))
        .await
        .unwrap()
        .ticket
        .job_id;

    let spec = worker("w1");
    let first = claim_one(&dispatcher, &spec).await.unwrap();
    let retry = dispatcher
        .fail("w1", &first, "cuda error", true)
        .await
        .unwrap();
    assert!(matches!(retry, Failure::Retry(_)));
    assert!(
        claim_one(&dispatcher, &spec).await.is_none(),
        "claimed inside the backoff"
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = claim_one(&dispatcher, &spec).await.unwrap();
    assert_eq!(second.attempt, 2);
    let failure = dispatcher
        .fail("w1", &second, "cuda error", true)
        .await
        .unwrap();
    let Failure::Failed { error, .. } = failure else {
        panic!("expected failure");
    };
    assert!(error.contains("cuda error"));
    let store = dispatcher.store();
    assert_eq!(store.job(id).await.unwrap().state, JobState::Failed);
    assert_eq!(store.balance(1).await.unwrap().balance_ms, 10_000);
    common::flush(dispatcher.prefix()).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn position_and_eta_follow_round_robin(pool: PgPool) {
    let dispatcher = dispatcher(pool, caps(), config()).await;
    let mut mine = Vec::new();
    for n in 0..5 {
        mine.push(
            dispatcher
                .submit(&job(1, n, Lane::Fast))
                .await
                .unwrap()
                .ticket,
        );
    }
    let theirs = dispatcher
        .submit(&job(2, 10, Lane::Fast))
        .await
        .unwrap()
        .ticket;
    let relax = dispatcher
        .submit(&job(3, 11, Lane::Relax))
        .await
        .unwrap()
        .ticket;

    let position = |ticket| dispatcher.position(ticket);
    assert_eq!(position(&mine[0]).await.unwrap().unwrap().ahead, 0);
    assert_eq!(position(&theirs).await.unwrap().unwrap().ahead, 1);
    assert_eq!(position(&mine[2]).await.unwrap().unwrap().ahead, 3);
    assert_eq!(position(&relax).await.unwrap().unwrap().ahead, 3);

    let spec = worker("w1");
    let claimed = claim_one(&dispatcher, &spec).await.unwrap();
    dispatcher.complete("w1", &claimed, 10, &[]).await.unwrap();
    assert!(position(&mine[0]).await.unwrap().is_none());
    let eta = position(&mine[1]).await.unwrap().unwrap().eta;
    assert!(
        eta < Duration::from_secs(5),
        "ETA from recent runs: {eta:?}"
    );
    common::flush(dispatcher.prefix()).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_submits_each_get_their_own_answer(pool: PgPool) {
    let caps = Caps {
        queued_per_user: 5,
        ..caps()
    };
    let dispatcher = dispatcher(pool.clone(), caps, config()).await;
    // Submitted together, these share transactions; every caller must still get the
    // answer for its own job: 40 distinct jobs of 4 users (5 each fit), and every
    // interaction submitted twice.
    let mut tasks = Vec::new();
    for n in 0..80i64 {
        let dispatcher = dispatcher.clone();
        let interaction = n % 40;
        tasks.push(tokio::spawn(async move {
            let outcome = dispatcher
                .submit(&job(interaction % 4, interaction, Lane::Fast))
                .await;
            (interaction, outcome)
        }));
    }
    let mut by_interaction: std::collections::HashMap<i64, Vec<uuid::Uuid>> = Default::default();
    let mut refused = 0;
    for task in tasks {
        let (interaction, outcome) = task.await.unwrap();
        match outcome {
            Ok(enqueued) => {
                assert_eq!(enqueued.ticket.user_id, interaction % 4);
                by_interaction
                    .entry(interaction)
                    .or_default()
                    .push(enqueued.ticket.job_id);
            }
            Err(error) => {
                assert!(error.to_string().contains("jobs queued"), "{error}");
                refused += 1;
            }
        }
    }
    for ids in by_interaction.values() {
        assert!(
            ids.windows(2).all(|w| w[0] == w[1]),
            "one job per interaction"
        );
    }
    assert_eq!(by_interaction.len(), 20, "5 jobs for each of 4 users");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 20);
    assert!(refused >= 20);
    // Every accepted job has its dispatch entry: all 20 can be claimed.
    let spec = WorkerSpec {
        max_batch: 64,
        ..worker("w1")
    };
    let mut claimed = 0;
    loop {
        let got = dispatcher.claim(&spec).await.unwrap();
        if got.is_empty() {
            break;
        }
        claimed += got.len();
    }
    assert_eq!(claimed, 20);
    common::flush(dispatcher.prefix()).await;
}
