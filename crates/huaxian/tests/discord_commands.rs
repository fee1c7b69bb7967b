//! The gateway's commands end to end, beyond the grid and its buttons: `/settings` menus,
//! `/fast`, `/relax`, `/info`, `/cancel`, `/admin`, `/blend`, and `/imagine` with
//! `--repeat`, an image, or a model no worker has loaded. A loopback Discord, the real
//! Postgres and Redis, the gateway in this process and, where images are made, a
//! `huaxian worker` process on the tiny fixture model.

mod common;

use common::bot::{
    admin, decoded, job_of, menu, png, user, Bot, CHANNEL, GUILD, MODEL, UNLOADED_MODEL, WAIT,
};
use common::{exit_code, signal};
use huaxian_discord_loopback::{Interaction, Message, Slash, User};
use huaxian_store::{JobKind, JobState, Lane};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Discord's Manage Server permission bit.
const MANAGE_GUILD: u64 = 0x20;

/// `/admin <sub> user:<target>` with any further arguments.
fn admin_user_options(sub: &str, target: u64, more: Value) -> Value {
    let mut args = vec![json!({ "name": "user", "type": 6, "value": target.to_string() })];
    args.extend(more.as_array().cloned().unwrap_or_default());
    json!([{ "name": sub, "type": 1, "options": args }])
}

/// `/admin quota grant user:<target> seconds:<seconds>`.
fn grant_options(target: u64, seconds: i64) -> Value {
    json!([{ "name": "quota", "type": 2, "options": [{
        "name": "grant", "type": 1, "options": [
            { "name": "user", "type": 6, "value": target.to_string() },
            { "name": "seconds", "type": 4, "value": seconds },
        ],
    }]}])
}

/// `/admin banned-words <sub> [word:<word>]`.
fn words_options(sub: &str, word: Option<&str>) -> Value {
    let args = match word {
        Some(word) => json!([{ "name": "word", "type": 3, "value": word }]),
        None => json!([]),
    };
    json!([{ "name": "banned-words", "type": 2, "options": [
        { "name": sub, "type": 1, "options": args },
    ]}])
}

/// `/admin cancel job:<id>`.
fn admin_cancel_options(job: Uuid) -> Value {
    json!([{ "name": "cancel", "type": 1, "options": [
        { "name": "job", "type": 3, "value": job.to_string() },
    ]}])
}

/// Waits until the `/imagine` shows its job waiting in the queue.
async fn waiting(bot: &Bot, interaction: &Interaction) -> Message {
    let id = interaction.id;
    bot.discord
        .wait_for(WAIT, "the waiting message", |state| {
            state
                .original(id)
                .filter(|m| m.content.contains("Waiting to start"))
                .cloned()
        })
        .await
}

/// Waits until a component interaction was answered by updating its message (callback
/// type 7), and returns the message as updated.
async fn updated(bot: &Bot, interaction: &Interaction) -> Message {
    let id = interaction.id;
    let message_id = interaction.message_id.expect("a component interaction");
    bot.discord
        .wait_for(WAIT, "the menu's message updated", |state| {
            (state.interaction(id)?.response_type == Some(7)).then_some(())?;
            state.message(message_id).cloned()
        })
        .await
}

/// The values of a select menu's options marked as chosen.
fn chosen(menu: &Value) -> Vec<String> {
    menu["options"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["default"] == true)
        .filter_map(|o| o["value"].as_str().map(str::to_owned))
        .collect()
}

/// Rows of the quota ledger for `job` with `reason`.
async fn ledger_rows(bot: &Bot, job: Uuid, reason: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM quota_ledger WHERE job_id = $1 AND reason = $2")
        .bind(job)
        .bind(reason)
        .fetch_one(bot.store().pool())
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn settings_menus_store_the_defaults_imagine_uses(pool: PgPool) {
    let bot = Bot::new(pool).await;
    let ada = user(501);

    // The menus come in a message only the user sees, showing the service's defaults.
    let asked = bot.slash(&ada, "settings", json!([])).await;
    let shown = bot.answer(&asked).await;
    assert_eq!(
        shown.custom_ids(),
        [
            "hx-set:model",
            "hx-set:sampler",
            "hx-set:stylize",
            "hx-set:lane",
            "hx-set:expand"
        ]
    );
    assert!(shown.content.contains("Model: `tiny`"), "{}", shown.content);
    assert_eq!(chosen(&menu(&shown, "hx-set:model")), [MODEL]);
    assert_eq!(chosen(&menu(&shown, "hx-set:lane")), ["fast"]);

    // Each choice is stored and updates the same private message in place.
    let choices = [
        (
            "model",
            UNLOADED_MODEL,
            format!("Model: `{UNLOADED_MODEL}`"),
        ),
        ("sampler", "euler", "Sampler: `euler`".to_string()),
        ("stylize", "250", "Stylize: `250`".to_string()),
        ("lane", "relax", "Lane: `relax`".to_string()),
    ];
    for (setting, value, shows) in &choices {
        let custom_id = format!("hx-set:{setting}");
        let chose = bot
            .discord
            .select(&ada, shown.id, &custom_id, &[value])
            .await;
        let message = updated(&bot, &chose).await;
        assert!(
            message.content.contains(shows.as_str()),
            "{}",
            message.content
        );
        assert_eq!(chosen(&menu(&message, &custom_id)), [*value]);
        assert_ne!(message.flags & 64, 0, "still private");
        assert!(chose.followups(&bot.discord).is_empty(), "no refusal");
    }
    let stored = bot.store().settings(501).await.unwrap();
    assert_eq!(stored.default_model.as_deref(), Some(UNLOADED_MODEL));
    assert_eq!(stored.sampler.as_deref(), Some("euler"));
    assert_eq!(stored.stylize, Some(250));
    assert_eq!(stored.lane, Some(Lane::Relax));

    // A prompt without parameters takes them. No worker is live, so any configured model
    // is accepted and the job waits.
    let imagine = bot.imagine(&ada, "a quiet pond").await;
    let message = waiting(&bot, &imagine).await;
    assert!(message.content.contains("(relax)"), "{}", message.content);
    let jobs = bot.jobs_of(501).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.spec.sampler, "euler");
    assert_eq!(job.spec.stylize, 250);
    assert_eq!(job.spec.model, UNLOADED_MODEL);
    assert_eq!(job.lane, Lane::Relax);
    assert_eq!(job.reserved_ms, 0, "relax reserves no fast time");

    // The prompt's own parameters still win.
    let own = bot
        .imagine(&ada, "a loud pond --sampler ddim --stylize 50")
        .await;
    waiting(&bot, &own).await;
    let job = bot.jobs_of(501).await.pop().unwrap();
    assert_eq!((job.spec.sampler.as_str(), job.spec.stylize), ("ddim", 50));

    bot.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn fast_relax_and_info_answer_privately(pool: PgPool) {
    let bot = Bot::new(pool).await;
    let ada = user(502);

    let relax = bot.slash(&ada, "relax", json!([])).await;
    let answer = bot.answer(&relax).await;
    assert!(answer.content.contains("Relax mode"), "{}", answer.content);
    let lane = bot.store().settings(502).await.unwrap().lane;
    assert_eq!(lane, Some(Lane::Relax));

    let fast = bot.slash(&ada, "fast", json!([])).await;
    let answer = bot.answer(&fast).await;
    assert!(answer.content.contains("Fast mode"), "{}", answer.content);
    let lane = bot.store().settings(502).await.unwrap().lane;
    assert_eq!(lane, Some(Lane::Fast));

    // No worker runs, so the job stays queued, first in line.
    let queued = bot.imagine(&ada, "a paper boat --seed 3").await;
    waiting(&bot, &queued).await;
    let job = bot.jobs_of(502).await.remove(0);
    assert_eq!(job.state, JobState::Queued);

    let info = bot.slash(&ada, "info", json!([])).await;
    let answer = bot.answer(&info).await;
    assert_eq!(answer.embeds.len(), 1, "{answer:?}");
    let fields: Vec<(String, String)> = answer.embeds[0]["fields"]
        .as_array()
        .expect("embed fields")
        .iter()
        .map(|f| {
            let text = |key: &str| f[key].as_str().unwrap_or_default().to_string();
            (text("name"), text("value"))
        })
        .collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no field {name:?} in {fields:?}"))
    };
    let balance = bot.store().balance(502).await.unwrap();
    let left = field("Fast time left");
    assert_eq!(
        left,
        format!("{:.0} s", balance.balance_ms as f64 / 1000.0),
        "the balance after the job's reservation"
    );
    let resets = field("Resets");
    assert_eq!(resets, format!("<t:{}:R>", balance.resets_at.timestamp()));
    assert_eq!(field("Lane"), "fast");
    let jobs = field("Running and queued jobs");
    let short = &job.id.simple().to_string()[..8];
    assert!(jobs.contains(short), "{jobs}");
    assert!(jobs.contains("a paper boat"), "{jobs}");
    assert!(jobs.contains("position 1"), "{jobs}");

    bot.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn cancel_lists_queued_jobs_and_refunds_the_chosen_one(pool: PgPool) {
    let bot = Bot::new(pool).await;
    let ada = user(503);
    let grace = user(504);

    let imagine = bot.imagine(&ada, "a tin robot").await;
    waiting(&bot, &imagine).await;
    let job = bot.jobs_of(503).await.remove(0);
    assert!(job.reserved_ms > 0, "a fast job reserves time");

    // Someone without jobs is told so.
    let nothing = bot.slash(&grace, "cancel", json!([])).await;
    let answer = bot.answer(&nothing).await;
    assert!(
        answer.content.contains("no queued or running jobs"),
        "{}",
        answer.content
    );

    // The menu lists the job by its prompt.
    let asked = bot.slash(&ada, "cancel", json!([])).await;
    let shown = bot.answer(&asked).await;
    let options = menu(&shown, "hx-cancel")["options"].clone();
    assert_eq!(options.as_array().map(Vec::len), Some(1), "{options}");
    assert_eq!(options[0]["value"], job.id.to_string());
    let label = options[0]["label"].as_str().unwrap_or_default();
    assert!(label.contains("queued: a tin robot"), "{label}");

    // A choice that is not the chooser's job cancels nothing and leaves the menu alone.
    // Discord shows an ephemeral menu to its user only; the store checks the owner anyway.
    let forged = bot
        .discord
        .select(&grace, shown.id, "hx-cancel", &[&job.id.to_string()])
        .await;
    let text = bot.refusal(&forged).await;
    assert!(text.contains("not yours"), "{text}");
    let row = bot.store().job(job.id).await.unwrap();
    assert_eq!(row.state, JobState::Queued);
    let kept = bot.discord.message(shown.id).unwrap();
    assert_eq!(
        kept.custom_ids(),
        ["hx-cancel"],
        "the owner's menu still works"
    );

    // The owner's choice cancels it and refunds the reservation.
    let chose = bot
        .discord
        .select(&ada, shown.id, "hx-cancel", &[&job.id.to_string()])
        .await;
    let message = updated(&bot, &chose).await;
    assert!(
        message.content.contains("was cancelled"),
        "{}",
        message.content
    );
    assert!(message.components.is_empty(), "the menu is gone");
    let row = bot.store().job(job.id).await.unwrap();
    assert_eq!(row.state, JobState::Cancelled);
    assert_eq!(ledger_rows(&bot, job.id, "refund").await, 1);
    let balance = bot.store().balance(503).await.unwrap();
    assert_eq!(balance.balance_ms, balance.ledger_ms);

    // /admin cancel: refused to a member, done for an admin, whoever owns the job.
    let second = bot.imagine(&ada, "a second robot").await;
    waiting(&bot, &second).await;
    let job = bot.jobs_of(503).await.pop().unwrap();
    assert_eq!(job.state, JobState::Queued);
    let refused = bot
        .slash(&grace, "admin", admin_cancel_options(job.id))
        .await;
    let text = bot.refusal(&refused).await;
    assert!(text.contains("admins"), "{text}");
    assert_eq!(
        bot.store().job(job.id).await.unwrap().state,
        JobState::Queued
    );

    let by_admin = bot
        .slash(&admin(), "admin", admin_cancel_options(job.id))
        .await;
    let answer = bot.answer(&by_admin).await;
    assert!(
        answer.content.contains("was cancelled and refunded"),
        "{}",
        answer.content
    );
    assert_eq!(
        bot.store().job(job.id).await.unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(ledger_rows(&bot, job.id, "refund").await, 1);
    let audit = bot.store().audit_log(503).await.unwrap();
    assert!(audit.iter().any(|(_, action, _)| action == "admin_cancel"));

    bot.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn admin_grants_bans_and_bans_words(pool: PgPool) {
    let bot = Bot::new(pool).await;
    let ada = user(505);
    let plain = user(507);
    let manager = User {
        permissions: MANAGE_GUILD,
        ..User::new(506, "manager")
    };

    // quota grant moves the balance by the seconds given.
    let before = bot.store().balance(505).await.unwrap().balance_ms;
    let grant = bot.slash(&admin(), "admin", grant_options(505, 120)).await;
    let answer = bot.answer(&grant).await;
    assert!(
        answer.content.contains("<@505> now has"),
        "{}",
        answer.content
    );
    let after = bot.store().balance(505).await.unwrap().balance_ms;
    assert_eq!(after, before + 120_000);

    // A plain member is refused and nothing changes.
    let refused = bot.slash(&plain, "admin", grant_options(505, 120)).await;
    let text = bot.refusal(&refused).await;
    assert!(text.contains("admins"), "{text}");
    assert_eq!(bot.store().balance(505).await.unwrap().balance_ms, after);

    // A ban stops /imagine with a private refusal and no job.
    let ban = bot
        .slash(&admin(), "admin", admin_user_options("ban", 505, json!([])))
        .await;
    let answer = bot.answer(&ban).await;
    assert!(
        answer.content.contains("can no longer make images"),
        "{}",
        answer.content
    );
    let banned = bot.imagine(&ada, "a castle").await;
    let text = bot.refusal(&banned).await;
    assert!(text.contains("banned"), "{text}");
    assert_eq!(bot.jobs().await, 0);

    // Manage Server is enough to run /admin without being configured.
    let unban = bot
        .slash(
            &manager,
            "admin",
            admin_user_options("unban", 505, json!([])),
        )
        .await;
    let answer = bot.answer(&unban).await;
    assert!(
        answer.content.contains("can make images again"),
        "{}",
        answer.content
    );
    let again = bot.imagine(&ada, "a castle").await;
    waiting(&bot, &again).await;
    assert_eq!(bot.jobs().await, 1);

    // Banned words: add, list, refused in a prompt, remove.
    let words = |sub: &'static str, word: Option<&'static str>| {
        let bot = &bot;
        async move {
            let asked = bot.slash(&admin(), "admin", words_options(sub, word)).await;
            bot.answer(&asked).await.content
        }
    };
    let added = words("add", Some("kraken")).await;
    assert!(added.contains("no longer contain “kraken”"), "{added}");
    let listed = words("list", None).await;
    assert_eq!(listed, "Banned here: kraken");
    let refused = bot.imagine(&ada, "a Kraken at sea").await;
    let text = bot.refusal(&refused).await;
    assert!(text.contains("kraken"), "{text}");
    let removed = words("remove", Some("kraken")).await;
    assert!(removed.contains("allowed again"), "{removed}");
    let listed = words("list", None).await;
    assert_eq!(listed, "No words are banned here.");
    let allowed = bot.imagine(&ada, "a kraken at sea").await;
    waiting(&bot, &allowed).await;
    assert_eq!(bot.jobs().await, 2);

    bot.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn blend_makes_a_grid_from_two_images_and_refuses_bad_input(pool: PgPool) {
    let bot = Bot::new(pool).await;
    let mut worker = bot.worker();
    let ada = user(508);
    let blend = |files: &[(&str, Vec<u8>)]| {
        let options: Vec<Value> = files
            .iter()
            .enumerate()
            .map(|(i, (name, _))| json!({ "name": format!("image{}", i + 1), "type": 11, "value": name }))
            .collect();
        let mut command =
            Slash::new(ada.clone(), Some(GUILD), CHANNEL, "blend").options(Value::Array(options));
        for (name, bytes) in files {
            command = command.attach(name, bytes.clone());
        }
        bot.discord.slash(command)
    };

    let one = blend(&[("a.png", png(64, 64))]).await;
    let text = bot.refusal(&one).await;
    assert!(text.contains("2 to 5 images"), "{text}");

    let text_file = blend(&[("a.png", png(64, 64)), ("notes.txt", b"hello".to_vec())]).await;
    let text = bot.refusal(&text_file).await;
    assert!(text.contains("`notes.txt`"), "{text}");
    assert_eq!(bot.jobs().await, 0, "refusals make no job");

    let two = blend(&[("a.png", png(64, 64)), ("b.png", png(48, 80))]).await;
    let message = bot.result(&two).await;
    let grid = decoded(&message);
    assert_eq!((grid.width(), grid.height()), (128, 128), "2×2 of 64×64");
    assert!(
        message.content.contains("Blend of 2 images"),
        "{}",
        message.content
    );
    let job = bot.store().job(job_of(&message)).await.unwrap();
    assert_eq!(job.kind, JobKind::Blend);
    assert_eq!(job.inputs.len(), 2);

    signal(&worker, libc::SIGTERM);
    assert_eq!(
        exit_code(&mut worker, std::time::Duration::from_secs(120)).await,
        0
    );
    bot.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn imagine_repeats_starts_from_an_image_and_refuses_an_unloaded_model(pool: PgPool) {
    let bot = Bot::new(pool).await;
    let mut worker = bot.worker();
    bot.worker_live().await;
    let ada = user(509);

    // A configured model no live worker has loaded would wait forever: refused by name.
    let prompt = format!("a fox --model {UNLOADED_MODEL}");
    let unloaded = bot.imagine(&ada, &prompt).await;
    let text = bot.refusal(&unloaded).await;
    assert!(text.contains(&format!("`{UNLOADED_MODEL}`")), "{text}");
    assert!(text.contains(MODEL), "names the models online: {text}");
    assert_eq!(bot.jobs().await, 0);

    // --repeat 2: two jobs, the second in a follow-up, each with its own grid.
    let repeat = bot
        .imagine(&ada, "a lantern --repeat 2 --steps 4 --seed 7")
        .await;
    let first = bot.result(&repeat).await;
    let id = repeat.id;
    let second = bot
        .discord
        .wait_for(WAIT, "the second grid in a follow-up", |state| {
            let followup = *state.interaction(id)?.followups.first()?;
            let message = state.message(followup)?;
            (!message.attachments.is_empty() && !message.components.is_empty())
                .then(|| message.clone())
        })
        .await;
    assert!(first.content.contains("(seed 7)"), "{}", first.content);
    assert!(second.content.contains("(seed 11)"), "{}", second.content);
    assert_eq!(second.flags & 64, 0, "a public follow-up");
    assert_ne!(job_of(&first), job_of(&second));
    for message in [&first, &second] {
        assert_eq!(decoded(message).width(), 128);
    }
    assert_eq!(bot.jobs().await, 2);

    // image: starts from the attachment, stored as the job's one input.
    let options = json!([
        { "name": "prompt", "type": 3, "value": "a warm room --steps 4" },
        { "name": "image", "type": 11, "value": "start.png" },
    ]);
    let command = Slash::new(ada.clone(), Some(GUILD), CHANNEL, "imagine")
        .options(options)
        .attach("start.png", png(64, 64));
    let from_image = bot.discord.slash(command).await;
    let message = bot.result(&from_image).await;
    assert_eq!(decoded(&message).width(), 128);
    let job = bot.store().job(job_of(&message)).await.unwrap();
    assert_eq!(job.inputs.len(), 1, "{:?}", job.inputs);
    let stored = bot.deployment.blob_dir().join(&job.inputs[0]);
    assert!(stored.is_file(), "{} was stored", stored.display());

    // Several image prompts (image, image2): both stored, in order, and blended.
    let options = json!([
        { "name": "prompt", "type": 3, "value": "a warm room --steps 4" },
        { "name": "image2", "type": 11, "value": "second.png" },
        { "name": "image", "type": 11, "value": "first.png" },
    ]);
    let command = Slash::new(ada.clone(), Some(GUILD), CHANNEL, "imagine")
        .options(options)
        .attach("first.png", png(64, 64))
        .attach("second.png", png(96, 64));
    let from_images = bot.discord.slash(command).await;
    let message = bot.result(&from_images).await;
    assert_eq!(decoded(&message).width(), 128);
    let job = bot.store().job(job_of(&message)).await.unwrap();
    assert_eq!(job.inputs.len(), 2, "{:?}", job.inputs);
    let first = image::open(bot.deployment.blob_dir().join(&job.inputs[0])).unwrap();
    assert_eq!(first.width(), 64, "`image` comes first");

    signal(&worker, libc::SIGTERM);
    assert_eq!(
        exit_code(&mut worker, std::time::Duration::from_secs(120)).await,
        0
    );
    bot.finish().await;
}
