//! The commands around a user's jobs: `/settings`, `/info`, `/fast`, `/relax`, `/cancel`,
//! and model-name autocomplete. All of them answer ephemerally.

use std::sync::Arc;
use std::time::Duration;

use huaxian_queue::DispatchError;
use huaxian_store::{JobState, Lane, StoreError, UserSettings};
use serenity::all::{
    CommandInteraction, ComponentInteraction, ComponentInteractionDataKind, CreateActionRow,
    CreateAutocompleteResponse, CreateEmbed, CreateInteractionResponse,
    CreateInteractionResponseMessage, CreateSelectMenu, CreateSelectMenuKind,
    CreateSelectMenuOption, EditInteractionResponse,
};
use serenity::http::Http;
use tokio::sync::watch;
use tracing::{info, warn};
use uuid::Uuid;

use crate::reply::{clip, Pending};
use crate::submit::WORKER_SILENCE_S;
use crate::App;

/// Prefix of the `/settings` menus' ids: `hx-set:<setting>`.
pub const SETTING_PREFIX: &str = "hx-set:";

/// Id of the `/cancel` menu.
pub const CANCEL_ID: &str = "hx-cancel";

/// Stylize values offered in `/settings`.
const STYLIZES: [i16; 7] = [0, 50, 100, 250, 500, 750, 1000];

/// `/settings`: the user's defaults as menus; choosing stores the choice.
pub async fn settings(app: &App, http: &Http, pending: &Pending) {
    if !pending.defer(app, http, true).await {
        return;
    }
    let Some(current) = load_settings(app, http, pending).await else {
        return;
    };
    let edit = EditInteractionResponse::new()
        .content(settings_text(app, &current))
        .components(settings_rows(app, &current));
    let _ = pending.edit(app, http, edit).await;
}

/// A `/settings` menu was used.
pub async fn change_setting(
    app: &App,
    http: &Http,
    component: &ComponentInteraction,
    pending: &Pending,
    setting: &str,
) {
    let ComponentInteractionDataKind::StringSelect { values } = &component.data.kind else {
        return pending
            .private(
                app,
                http,
                "That control is out of date; run /settings again.",
            )
            .await;
    };
    let Some(value) = values.first() else {
        return pending.private(app, http, "Nothing was chosen.").await;
    };
    let store = app.dispatcher.store();
    let user = pending.user_id as i64;
    let Ok(mut current) = store.settings(user).await else {
        return pending
            .private(
                app,
                http,
                "Settings are unavailable right now; try again in a minute.",
            )
            .await;
    };
    let limits = &app.settings.prompt;
    let known = |names: &[String]| names.iter().any(|n| n == value);
    match setting {
        "model" if known(&limits.models) => current.default_model = Some(value.clone()),
        "sampler" if known(&limits.samplers) => current.sampler = Some(value.clone()),
        "stylize" => match value.parse::<i16>() {
            Ok(stylize) if (0..=1000).contains(&stylize) => current.stylize = Some(stylize),
            _ => return pending.private(app, http, "Stylize must be 0–1000.").await,
        },
        "lane" => current.lane = Some(Lane::parse(value)),
        "expand" => current.expand = Some(value == "on"),
        _ => {
            return pending
                .private(
                    app,
                    http,
                    "That option is no longer offered; run /settings again.",
                )
                .await
        }
    }
    if store.set_settings(user, &current).await.is_err() {
        return pending
            .private(
                app,
                http,
                "Settings are unavailable right now; try again in a minute.",
            )
            .await;
    }
    info!(setting, "user setting changed");
    let message = CreateInteractionResponseMessage::new()
        .content(settings_text(app, &current))
        .components(settings_rows(app, &current));
    let _ = pending
        .ack(app, http, CreateInteractionResponse::UpdateMessage(message))
        .await;
}

fn settings_text(app: &App, current: &UserSettings) -> String {
    let limits = &app.settings.prompt;
    format!(
        "**Your defaults** (a prompt's own parameters always win)\n\
         Model: `{}` · Sampler: `{}` · Stylize: `{}` · Lane: `{}` · Expand: `{}`",
        current
            .default_model
            .as_deref()
            .unwrap_or(&limits.default_model),
        current
            .sampler
            .as_deref()
            .unwrap_or(&limits.default_sampler),
        current
            .stylize
            .map(|s| s as u16)
            .unwrap_or(limits.default_stylize),
        current.lane.unwrap_or(Lane::Fast).as_str(),
        if current.expand.unwrap_or(false) {
            "on"
        } else {
            "off"
        },
    )
}

fn settings_rows(app: &App, current: &UserSettings) -> Vec<CreateActionRow> {
    let limits = &app.settings.prompt;
    let menu = |id: &str, placeholder: &str, options: Vec<(String, String, bool)>| {
        let options = options
            .into_iter()
            .take(25)
            .map(|(label, value, chosen)| {
                CreateSelectMenuOption::new(clip(&label, 100), clip(&value, 100))
                    .default_selection(chosen)
            })
            .collect();
        CreateActionRow::SelectMenu(
            CreateSelectMenu::new(
                format!("{SETTING_PREFIX}{id}"),
                CreateSelectMenuKind::String { options },
            )
            .placeholder(placeholder),
        )
    };
    let model = current
        .default_model
        .as_deref()
        .unwrap_or(&limits.default_model);
    let sampler = current
        .sampler
        .as_deref()
        .unwrap_or(&limits.default_sampler);
    let stylize = current.stylize.unwrap_or(limits.default_stylize as i16);
    let lane = current.lane.unwrap_or(Lane::Fast);
    let expand = current.expand.unwrap_or(false);
    vec![
        menu(
            "model",
            "Model",
            limits
                .models
                .iter()
                .map(|m| (format!("Model: {m}"), m.clone(), m == model))
                .collect(),
        ),
        menu(
            "sampler",
            "Sampler",
            limits
                .samplers
                .iter()
                .map(|s| (format!("Sampler: {s}"), s.clone(), s == sampler))
                .collect(),
        ),
        menu(
            "stylize",
            "Stylize",
            STYLIZES
                .iter()
                .map(|s| (format!("Stylize: {s}"), s.to_string(), *s == stylize))
                .collect(),
        ),
        menu(
            "lane",
            "Lane",
            [Lane::Fast, Lane::Relax]
                .into_iter()
                .map(|l| {
                    (
                        format!("Lane: {}", l.as_str()),
                        l.as_str().into(),
                        l == lane,
                    )
                })
                .collect(),
        ),
        menu(
            "expand",
            "Prompt expansion",
            [("on", true), ("off", false)]
                .into_iter()
                .map(|(v, on)| (format!("Expand prompts: {v}"), v.into(), on == expand))
                .collect(),
        ),
    ]
}

/// `/fast` and `/relax`.
pub async fn lane(app: &App, http: &Http, pending: &Pending) {
    if !pending.defer(app, http, true).await {
        return;
    }
    let Some(mut current) = load_settings(app, http, pending).await else {
        return;
    };
    let lane = if pending.what == "relax" {
        Lane::Relax
    } else {
        Lane::Fast
    };
    current.lane = Some(lane);
    if app
        .dispatcher
        .store()
        .set_settings(pending.user_id as i64, &current)
        .await
        .is_err()
    {
        return pending
            .answer(
                app,
                http,
                "Settings are unavailable right now; try again in a minute.",
            )
            .await;
    }
    let text = match lane {
        Lane::Fast => "Fast mode: your jobs go first and use your fast GPU time.",
        Lane::Relax => "Relax mode: your jobs are free and wait behind fast jobs.",
    };
    pending.answer(app, http, text).await;
}

/// `/info`: quota, lane, and the user's live jobs with position and ETA.
pub async fn info(app: &App, http: &Http, pending: &Pending) {
    if !pending.defer(app, http, true).await {
        return;
    }
    let store = app.dispatcher.store();
    let user = pending.user_id as i64;
    let (Ok(balance), Ok(settings), Ok(jobs)) = (
        store.balance(user).await,
        store.settings(user).await,
        store.live_jobs(user).await,
    ) else {
        return pending
            .answer(
                app,
                http,
                "Your information is unavailable right now; try again in a minute.",
            )
            .await;
    };
    let mut lines = Vec::new();
    for job in &jobs {
        let prompt = clip(&job.spec.raw, 60);
        let line = match job.state {
            JobState::Running => format!("▶ `{}` {prompt} — rendering", short(job.id)),
            _ => {
                // The queue finds a job by its whole entry, size and batch key included,
                // so the ticket comes from the store as it was enqueued.
                let position = match store.ticket(job.id).await {
                    Ok(ticket) => app.dispatcher.position(&ticket).await.ok().flatten(),
                    Err(_) => None,
                };
                match position {
                    Some(p) => format!(
                        "⏳ `{}` {prompt} — position {}, about {} s",
                        short(job.id),
                        p.ahead + 1,
                        p.eta.as_secs().max(1)
                    ),
                    None => format!("⏳ `{}` {prompt} — waiting", short(job.id)),
                }
            }
        };
        lines.push(line);
    }
    let jobs_text = if lines.is_empty() {
        "none".to_string()
    } else {
        clip(&lines.join("\n"), 1000)
    };
    let embed = CreateEmbed::new()
        .title("Your huaxian account")
        .field(
            "Fast time left",
            format!("{:.0} s", balance.balance_ms as f64 / 1000.0),
            true,
        )
        .field(
            "Resets",
            format!("<t:{}:R>", balance.resets_at.timestamp()),
            true,
        )
        .field("Lane", settings.lane.unwrap_or(Lane::Fast).as_str(), true)
        .field("Running and queued jobs", jobs_text, false);
    let _ = pending
        .edit(app, http, EditInteractionResponse::new().embed(embed))
        .await;
}

/// `/cancel`: a menu of the user's live jobs.
pub async fn cancel_menu(app: &App, http: &Http, pending: &Pending) {
    if !pending.defer(app, http, true).await {
        return;
    }
    let Ok(jobs) = app
        .dispatcher
        .store()
        .live_jobs(pending.user_id as i64)
        .await
    else {
        return pending
            .answer(
                app,
                http,
                "Your jobs are unavailable right now; try again in a minute.",
            )
            .await;
    };
    if jobs.is_empty() {
        return pending
            .answer(app, http, "You have no queued or running jobs.")
            .await;
    }
    let options = jobs
        .iter()
        .take(25)
        .map(|job| {
            let state = if job.state == JobState::Running {
                "running"
            } else {
                "queued"
            };
            CreateSelectMenuOption::new(
                clip(&format!("{state}: {}", job.spec.raw), 100),
                job.id.to_string(),
            )
        })
        .collect();
    let menu = CreateSelectMenu::new(CANCEL_ID, CreateSelectMenuKind::String { options })
        .placeholder("Job to cancel");
    let edit = EditInteractionResponse::new()
        .content("Which job should be cancelled? Fast time it reserved is refunded.")
        .components(vec![CreateActionRow::SelectMenu(menu)]);
    let _ = pending.edit(app, http, edit).await;
}

/// A job was chosen in the `/cancel` menu.
pub async fn cancel_chosen(
    app: &App,
    http: &Http,
    component: &ComponentInteraction,
    pending: &Pending,
) {
    let chosen = match &component.data.kind {
        ComponentInteractionDataKind::StringSelect { values } => {
            values.first().and_then(|v| Uuid::parse_str(v).ok())
        }
        _ => None,
    };
    let Some(job) = chosen else {
        return pending
            .private(app, http, "That menu is out of date; run /cancel again.")
            .await;
    };
    // Only the job's owner: the store matches the job and the user together. Anyone else
    // is answered privately, and the menu stays as it was for its owner.
    let text = match app.dispatcher.cancel(job, pending.user_id as i64).await {
        Ok(true) => format!(
            "Job `{}` was cancelled and its fast time refunded.",
            short(job)
        ),
        Ok(false) => format!("Job `{}` had already ended.", short(job)),
        Err(DispatchError::Store(StoreError::NoSuchJob(_))) => {
            let text = "That job is not yours, or no longer exists; run /cancel to see yours.";
            return pending.private(app, http, text).await;
        }
        Err(error) => {
            warn!(%job, %error, "cancel failed");
            let text = "Cancelling is unavailable right now; try again in a minute.";
            return pending.private(app, http, text).await;
        }
    };
    let message = CreateInteractionResponseMessage::new()
        .content(text)
        .components(Vec::new());
    let _ = pending
        .ack(app, http, CreateInteractionResponse::UpdateMessage(message))
        .await;
}

/// Model names for the `model` option, filtered by what was typed.
pub async fn autocomplete(app: &App, http: &Http, command: &CommandInteraction) {
    let typed = command
        .data
        .autocomplete()
        .map(|option| option.value.to_lowercase())
        .unwrap_or_default();
    let mut response = CreateAutocompleteResponse::new();
    for model in app
        .settings
        .prompt
        .models
        .iter()
        .filter(|m| m.to_lowercase().contains(&typed))
        .take(25)
    {
        response = response.add_string_choice(model, model);
    }
    let sent = CreateInteractionResponse::Autocomplete(response);
    if let Err(error) = command.create_response(http, sent).await {
        crate::reply::count_error(app, &error);
    }
}

async fn load_settings(app: &App, http: &Http, pending: &Pending) -> Option<UserSettings> {
    match app
        .dispatcher
        .store()
        .settings(pending.user_id as i64)
        .await
    {
        Ok(settings) => Some(settings),
        Err(_) => {
            pending
                .answer(
                    app,
                    http,
                    "Settings are unavailable right now; try again in a minute.",
                )
                .await;
            None
        }
    }
}

fn short(job: Uuid) -> String {
    job.simple().to_string()[..8].to_string()
}

/// Samples the queue from the store into the metrics every 15 s until `shutdown`: depth and
/// oldest age per lane, the last hour's wait and run quantiles, live workers, refunds.
pub async fn sample_queue(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let silence = chrono::Duration::seconds(WORKER_SILENCE_S);
    loop {
        let store = app.dispatcher.store();
        if let Ok(stats) = store.queue_stats().await {
            let metrics = &app.metrics;
            for lane in [Lane::Fast, Lane::Relax] {
                let depth = stats.queued.iter().find(|d| d.lane == lane);
                let name = [lane.as_str()];
                metrics
                    .queue_depth
                    .with_label_values(&name)
                    .set(depth.map_or(0, |d| d.jobs));
                metrics
                    .queue_oldest
                    .with_label_values(&name)
                    .set(depth.map_or(0.0, |d| d.oldest_s));
            }
            for (quantile, wait, run) in [
                ("0.5", stats.wait_p50_s, stats.run_p50_s),
                ("0.95", stats.wait_p95_s, stats.run_p95_s),
            ] {
                let label = [quantile];
                metrics
                    .wait_seconds
                    .with_label_values(&label)
                    .set(wait.unwrap_or(0.0));
                metrics
                    .run_seconds
                    .with_label_values(&label)
                    .set(run.unwrap_or(0.0));
            }
            metrics.refunds_last_hour.set(stats.refunds_last_hour);
        }
        if let Ok(workers) = store.live_workers(silence).await {
            app.metrics.workers_alive.set(workers.len() as i64);
        }
        if tokio::time::timeout(Duration::from_secs(15), shutdown.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}
