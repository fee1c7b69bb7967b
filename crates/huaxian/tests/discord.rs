//! The gateway end to end: a loopback Discord, the real Postgres and Redis, the gateway in
//! this process and `huaxian worker` processes on the tiny fixture model.

mod common;

use std::time::{Duration, Instant};

use common::bot::{custom_id, decoded, job_of, user, Bot, ADMIN, CHANNEL, GUILD, WAIT};
use common::{exit_code, signal};
use huaxian_discord_loopback::{Loopback, Slash, User};
use huaxian_store::JobState;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Every request that edited or posted a message, as (route, status, time).
fn edits(discord: &Loopback, token: &str) -> Vec<(String, u16, Instant, Value, usize)> {
    discord
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(token) && r.method == "PATCH")
        .map(|r| (r.route(), r.status, r.at, r.body.clone(), r.files.len()))
        .collect()
}

#[sqlx::test(migrations = "../../migrations")]
async fn imagine_progress_grid_and_every_button(pool: PgPool) {
    let bot = Bot::new(pool).await;
    let mut worker = bot.worker();
    let ada = user(101);

    // 1. /imagine: deferred at once, then the waiting message, progress with previews, and
    //    the grid with both rows of buttons.
    let asked = Instant::now();
    let imagine = bot
        .imagine(&ada, "a lighthouse at dusk --seed 5 --steps 400")
        .await;
    let callbacks = imagine.callbacks(&bot.discord);
    let first = bot
        .discord
        .wait_for(WAIT, "the first response", |state| {
            let i = state.interaction(imagine.id)?;
            i.response_type.map(|t| (t, i.dispatched_at))
        })
        .await;
    assert_eq!(first.0, 5, "a deferred response first: {callbacks:?}");
    assert!(asked.elapsed() < Duration::from_secs(30));
    bot.discord
        .wait_for(WAIT, "the waiting message", |state| {
            let message = state.original(imagine.id)?;
            message.content.contains("Waiting to start").then_some(())
        })
        .await;
    let grid_message = bot.result(&imagine).await;
    let grid = decoded(&grid_message);
    assert_eq!((grid.width(), grid.height()), (128, 128), "2×2 of 64×64");
    assert!(grid_message.content.contains("a lighthouse at dusk"));
    assert!(grid_message.content.contains("<@101>"));
    assert!(grid_message.content.contains("(seed 5)"));
    let ids = grid_message.custom_ids();
    assert_eq!(grid_message.components.len(), 2, "two rows");
    assert_eq!(ids.len(), 9, "U1–U4, 🔄, V1–V4: {ids:?}");

    let patches = edits(&bot.discord, &imagine.token);
    let progress: Vec<_> = patches
        .iter()
        .filter(|p| p.3["content"].as_str().unwrap_or_default().contains('%'))
        .collect();
    assert!(!progress.is_empty(), "progress edits: {patches:?}");
    assert!(
        progress.iter().any(|p| p.4 == 1),
        "progress carries a preview image"
    );
    for pair in progress.windows(2) {
        assert!(
            pair[1].2 - pair[0].2 >= Duration::from_millis(2900),
            "at most one progress edit per 3 s"
        );
    }
    let grid_job = job_of(&grid_message);

    // 2. U2: image 2 of the grid as its own message, the same pixels as the quadrant.
    let u2 = bot
        .discord
        .click(&ada, grid_message.id, &custom_id(&grid_message, "U2"))
        .await;
    let single = bot.result(&u2).await;
    let image = decoded(&single).to_rgb8();
    assert_eq!((image.width(), image.height()), (64, 64));
    let quadrant = image::imageops::crop_imm(&grid.to_rgb8(), 64, 0, 64, 64).to_image();
    assert_eq!(image, quadrant, "U2 is the grid's second image");
    assert!(single.content.contains("Image #2"));
    assert_eq!(single.custom_ids().len(), 4, "Upscale and Vary buttons");

    // Upscale (Subtle): the single image at twice the size.
    let upscale = bot
        .discord
        .click(&ada, single.id, &custom_id(&single, "Upscale (Subtle)"))
        .await;
    let upscaled = decoded(&bot.result(&upscale).await);
    assert_eq!((upscaled.width(), upscaled.height()), (128, 128));

    // V3: a new grid after image 3.
    let v3 = bot
        .discord
        .click(&ada, grid_message.id, &custom_id(&grid_message, "V3"))
        .await;
    let varied = bot.result(&v3).await;
    assert_eq!(decoded(&varied).width(), 128);
    assert!(varied.content.contains("Variations"));

    // 🔄: the same prompt with a new seed.
    let reroll = bot
        .discord
        .click(&ada, grid_message.id, &custom_id(&grid_message, "🔄"))
        .await;
    let rerolled = bot.result(&reroll).await;
    assert!(
        !rerolled.content.contains("(seed 5)"),
        "{}",
        rerolled.content
    );
    let reroll_job = job_of(&rerolled);
    assert_ne!(reroll_job, grid_job);

    // 3. The same button clicked 20 times at once makes one job. Anyone may click: this is
    //    another user, whose quota and per-minute budget it uses.
    let before = bot.jobs().await;
    let v1 = custom_id(&grid_message, "V1");
    let grace = user(102);
    let clicks = (0..20).map(|_| bot.discord.click(&grace, grid_message.id, &v1));
    let clicks = futures_join(clicks).await;
    // Each click is either the one that queued (its message shows the job) or refused with
    // an ephemeral follow-up.
    let mut refused = 0;
    for click in &clicks {
        let text = bot
            .discord
            .wait_for(WAIT, "each click settled", |state| {
                let i = state.interaction(click.id)?;
                if let Some(message) = state.original(click.id) {
                    if message.content.contains("Variations") {
                        return Some(String::new());
                    }
                }
                i.followups
                    .iter()
                    .filter_map(|m| state.message(*m))
                    .find(|m| m.flags & 64 != 0)
                    .map(|m| m.content.clone())
            })
            .await;
        if text.contains("already queued") {
            refused += 1;
        }
    }
    assert_eq!(refused, 19, "the other nineteen are told it is queued");
    let made: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE parent_id = $1 AND action = 'vary_subtle:0'",
    )
    .bind(grid_job)
    .fetch_one(bot.deployment.dispatcher.store().pool())
    .await
    .unwrap();
    assert_eq!(made, 1, "twenty clicks, one job");
    assert_eq!(bot.jobs().await, before + 1);

    signal(&worker, libc::SIGTERM);
    assert_eq!(exit_code(&mut worker, Duration::from_secs(120)).await, 0);
    let mut bot = bot;
    bot.stop_gateway().await;
    bot.deployment.flush().await;
}

/// Waits for all futures, in order.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.collect();
    let mut out = Vec::new();
    // Polled together: each `click` only sends an event, so order does not matter.
    for output in futures_util::future::join_all(handles).await {
        out.push(output);
    }
    out
}

#[sqlx::test(migrations = "../../migrations")]
async fn late_large_and_rate_limited_results_are_still_delivered(pool: PgPool) {
    let bot = Bot::new(pool).await;
    let mut worker = bot.worker();
    let ada = user(202);

    // 4. A job that outlives its token: the result goes to the channel, replying to the
    //    original message. The worker is held (SIGSTOP) until the token has expired, so
    //    the render cannot beat it however fast the machine.
    bot.discord.set_token_lifetime(Duration::from_secs(2));
    bot.worker_live().await;
    signal(&worker, libc::SIGSTOP);
    let late = bot.imagine(&ada, "a slow harbour --seed 9").await;
    let original = bot
        .discord
        .wait_for(WAIT, "the waiting message", |state| {
            state
                .original(late.id)
                .filter(|m| !m.deferred)
                .map(|m| m.id)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&worker, libc::SIGCONT);
    let posted = bot
        .discord
        .wait_for(WAIT, "a channel message with the result", |state| {
            state
                .messages(CHANNEL)
                .into_iter()
                .find(|m| !m.by_webhook && !m.attachments.is_empty())
                .cloned()
        })
        .await;
    assert_eq!(posted.reference, Some(original), "a reply to the original");
    assert_eq!(decoded(&posted).width(), 128);
    assert_eq!(
        posted.components.len(),
        2,
        "buttons on the channel message too"
    );
    bot.discord.set_token_lifetime(Duration::from_secs(15 * 60));

    // 5. An oversized result is re-encoded under the limit the interaction reports.
    bot.discord.set_attachment_limit(3_000);
    let large = bot.imagine(&ada, "a detailed city --seed 3").await;
    let message = bot.result(&large).await;
    let attachment = &message.attachments[0];
    assert!(
        attachment.bytes.len() <= 3_000,
        "{}",
        attachment.bytes.len()
    );
    assert!(
        attachment.filename.ends_with(".jpg"),
        "{}",
        attachment.filename
    );
    assert!(message.content.contains("attachment limit"));
    decoded(&message);
    bot.discord.set_attachment_limit(10 << 20);

    // 6. A 429 on the result's edit: serenity waits Retry-After and retries.
    bot.discord
        .inject_rate_limit("PATCH /webhooks/", 1, Duration::from_secs(1), false);
    let limited = bot.imagine(&ada, "a quiet field --seed 4").await;
    bot.result(&limited).await;
    let patches = edits(&bot.discord, &limited.token);
    let throttled = patches.iter().position(|p| p.1 == 429);
    let throttled = throttled.expect("the injected 429 was met");
    let retried = patches[throttled + 1..]
        .iter()
        .find(|p| p.1 == 200)
        .expect("a retry after the 429");
    assert!(retried.2 - patches[throttled].2 >= Duration::from_millis(900));

    signal(&worker, libc::SIGTERM);
    assert_eq!(exit_code(&mut worker, Duration::from_secs(120)).await, 0);
    let mut bot = bot;
    bot.stop_gateway().await;
    bot.deployment.flush().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn refusals_are_ephemeral_and_make_no_job(pool: PgPool) {
    let mut bot = Bot::new(pool).await;
    let ada = user(303);
    let store = bot.deployment.dispatcher.store().clone();

    // 7. A bad prompt names the token.
    let bad = bot.imagine(&ada, "a cat --ar 0:1").await;
    let text = bot.refusal(&bad).await;
    assert!(text.contains("--ar 0:1"), "{text}");

    // A banned word names the word, and the attempt is logged for admins.
    store.ban_word(GUILD as i64, "forbidden").await.unwrap();
    let banned = bot.imagine(&ada, "a Forbidden castle").await;
    let text = bot.refusal(&banned).await;
    assert!(text.contains("forbidden"), "{text}");
    let audit = store.audit_log(303).await.unwrap();
    assert!(audit.iter().any(|(_, action, _)| action == "banned_word"));

    // Exhausted quota says when it resets.
    store.grant(ADMIN as i64, 303, -100_000_000).await.unwrap();
    let broke = bot.imagine(&ada, "a castle").await;
    let text = bot.refusal(&broke).await;
    assert!(text.contains("resets"), "{text}");

    // /admin by a non-admin: refused server-side, even with the command visible.
    let admin = Slash::new(ada.clone(), Some(GUILD), CHANNEL, "admin")
        .options(json!([{ "name": "queue", "type": 1, "options": [] }]));
    let interaction = bot.discord.slash(admin).await;
    let text = bot.refusal(&interaction).await;
    assert!(text.contains("admins"), "{text}");
    assert_eq!(bot.jobs().await, 0, "no job was made");

    // An admin's /admin queue answers privately.
    let boss = User::new(ADMIN, "boss");
    let admin = Slash::new(boss.clone(), Some(GUILD), CHANNEL, "admin")
        .options(json!([{ "name": "queue", "type": 1, "options": [] }]));
    let interaction = bot.discord.slash(admin).await;
    let report = bot
        .discord
        .wait_for(WAIT, "the queue report", |state| {
            state
                .original(interaction.id)
                .filter(|m| m.content.contains("Workers online"))
                .cloned()
        })
        .await;
    assert_ne!(report.flags & 64, 0, "ephemeral");

    // Autocomplete offers the configured models.
    let typed = json!([{ "name": "prompt", "type": 3, "value": "x" },
                       { "name": "model", "type": 3, "value": "ti", "focused": true }]);
    let auto = bot
        .discord
        .autocomplete(&ada, Some(GUILD), CHANNEL, "imagine", typed)
        .await;
    let choices = bot
        .discord
        .wait_for(WAIT, "autocomplete choices", |state| {
            let answered = state.interaction(auto.id)?;
            (answered.response_type == Some(8)).then_some(())?;
            answered.response_data.as_ref()?["choices"]
                .as_array()
                .cloned()
        })
        .await;
    assert_eq!(choices[0]["value"], "tiny");

    // Operators see it: ready, and the refusals and acknowledgements counted.
    assert_eq!(bot.get("/readyz").await.0, 200);
    assert_eq!(bot.get("/healthz").await.0, 200);
    let (status, metrics) = bot.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"huaxian_gateway_interactions_total{command="imagine",outcome="refused"} 3"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("huaxian_gateway_ack_seconds_count"),
        "{metrics}"
    );
    assert!(!metrics.contains(bot.discord.bot_token()));
    for gauge in [
        "huaxian_gateway_queue_depth",
        "huaxian_gateway_queue_oldest_seconds",
        "huaxian_gateway_job_wait_seconds",
        "huaxian_gateway_workers_alive",
        "huaxian_gateway_refunds_last_hour",
    ] {
        assert!(metrics.contains(gauge), "{gauge} missing from {metrics}");
    }

    bot.stop_gateway().await;
    bot.deployment.flush().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_restarted_gateway_delivers_once_and_old_buttons_work(pool: PgPool) {
    let mut bot = Bot::new(pool).await;
    let mut worker = bot.worker();
    let ada = user(404);

    let first = bot.imagine(&ada, "a red kite --seed 1").await;
    let done = bot.result(&first).await;

    // 8. Restart the gateway while a job renders.
    let slow = bot.imagine(&ada, "a long river --seed 2 --steps 160").await;
    bot.discord
        .wait_for(WAIT, "the slow job queued", |state| {
            state
                .original(slow.id)
                .filter(|m| m.content.contains("Waiting") || m.content.contains('%'))
                .map(|_| ())
        })
        .await;
    bot.stop_gateway().await;
    let running: Uuid =
        sqlx::query_scalar("SELECT id FROM jobs WHERE spec->>'raw' LIKE 'a long river%'")
            .fetch_one(bot.deployment.dispatcher.store().pool())
            .await
            .unwrap();
    bot.deployment
        .wait_for_state(running, JobState::Succeeded)
        .await;
    bot.start_gateway().await;
    let result = bot.result(&slow).await;
    assert!(result.content.contains("a long river"));
    // Delivered once: one edit with the grid, no channel message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with_grid = edits(&bot.discord, &slow.token)
        .into_iter()
        .filter(|p| p.1 == 200 && p.4 == 1 && !p.3["content"].as_str().unwrap_or("").contains('%'))
        .count();
    assert_eq!(with_grid, 1, "the result was shown once");
    assert!(bot.discord.messages(CHANNEL).iter().all(|m| m.by_webhook));

    // A button on a message from before the restart still works.
    let click = bot
        .discord
        .click(&ada, done.id, &custom_id(&done, "U1"))
        .await;
    let single = bot.result(&click).await;
    assert_eq!(decoded(&single).width(), 64);

    signal(&worker, libc::SIGTERM);
    assert_eq!(exit_code(&mut worker, Duration::from_secs(120)).await, 0);
    bot.stop_gateway().await;
    bot.deployment.flush().await;
}
