//! `/admin`: the operators' commands, allowed to configured users and roles and to members
//! with Administrator or Manage Server, checked on the server for every call.

use huaxian_store::Lane;
use serenity::all::{CommandInteraction, ResolvedOption, ResolvedValue};
use serenity::http::Http;
use serenity::model::Permissions;
use tracing::warn;
use uuid::Uuid;

use crate::reply::{clip, Pending};
use crate::submit::WORKER_SILENCE_S;
use crate::App;

/// Whether the interaction's user may run `/admin`: a configured admin user, a member with
/// a configured admin role, or a member Discord says has Administrator or Manage Server in
/// this guild. Decided here, on the server, whatever the command's registered permissions.
pub fn is_admin(app: &App, command: &CommandInteraction) -> bool {
    let discord = &app.settings.discord;
    if discord.admin_users.contains(&command.user.id.get()) {
        return true;
    }
    let Some(member) = &command.member else {
        return false;
    };
    if member
        .roles
        .iter()
        .any(|role| discord.admin_roles.contains(&role.get()))
    {
        return true;
    }
    member.permissions.is_some_and(|p| {
        p.contains(Permissions::ADMINISTRATOR) || p.contains(Permissions::MANAGE_GUILD)
    })
}

/// `/admin …`.
pub async fn admin(app: &App, http: &Http, command: &CommandInteraction, pending: &Pending) {
    if !is_admin(app, command) {
        warn!("/admin refused: not an admin");
        app.metrics
            .interactions
            .with_label_values(&["admin", "refused"])
            .inc();
        return pending
            .private(
                app,
                http,
                "/admin is for this server's huaxian admins (configured users or roles, or \
                 members with Manage Server).",
            )
            .await;
    }
    if !pending.defer(app, http, true).await {
        return;
    }
    let options = command.data.options();
    let Some(first) = options.first() else {
        return pending.answer(app, http, "Choose a subcommand.").await;
    };
    let actor = pending.user_id as i64;
    let store = app.dispatcher.store();
    let text = match (first.name, &first.value) {
        ("queue", _) => queue_report(app).await,
        ("quota", ResolvedValue::SubCommandGroup(sub)) => match sub.first() {
            Some(ResolvedOption {
                name: "grant",
                value: ResolvedValue::SubCommand(args),
                ..
            }) => match (user_arg(args), int_arg(args, "seconds")) {
                (Some(user), Some(seconds)) => {
                    match store.grant(actor, user, seconds.saturating_mul(1000)).await {
                        Ok(balance) => format!(
                            "<@{user}> now has {:.0} s of fast time.",
                            balance as f64 / 1000.0
                        ),
                        Err(error) => format!("Not granted: {error}"),
                    }
                }
                _ => "Give a user and a number of seconds.".into(),
            },
            Some(ResolvedOption {
                name: "reset",
                value: ResolvedValue::SubCommand(args),
                ..
            }) => match user_arg(args) {
                Some(user) => match store.reset_quota(actor, user).await {
                    Ok(balance) => format!(
                        "<@{user}>'s fast time was reset to {:.0} s.",
                        balance as f64 / 1000.0
                    ),
                    Err(error) => format!("Not reset: {error}"),
                },
                None => "Give a user.".into(),
            },
            _ => "Use /admin quota grant or /admin quota reset.".into(),
        },
        ("ban" | "unban", ResolvedValue::SubCommand(args)) => match user_arg(args) {
            Some(user) => {
                let banned = first.name == "ban";
                match store.set_banned(actor, user, banned).await {
                    Ok(()) if banned => format!("<@{user}> can no longer make images."),
                    Ok(()) => format!("<@{user}> can make images again."),
                    Err(error) => format!("Not changed: {error}"),
                }
            }
            None => "Give a user.".into(),
        },
        ("cancel", ResolvedValue::SubCommand(args)) => {
            let job = args.iter().find_map(|o| match (o.name, &o.value) {
                ("job", ResolvedValue::String(id)) => Uuid::parse_str(id.trim()).ok(),
                _ => None,
            });
            match job {
                None => "Give the job's id (a UUID, as /info and the logs show it).".into(),
                Some(job) => admin_cancel(app, actor, job).await,
            }
        }
        ("banned-words", ResolvedValue::SubCommandGroup(sub)) => match pending.guild_id {
            None => "Banned words belong to a server; run this in one.".into(),
            Some(guild) => banned_words(app, guild as i64, sub).await,
        },
        _ => "Unknown subcommand; the bot's commands may be out of date.".into(),
    };
    pending.answer(app, http, &text).await;
}

async fn admin_cancel(app: &App, actor: i64, job: Uuid) -> String {
    let store = app.dispatcher.store();
    let Ok(row) = store.job(job).await else {
        return format!("No job `{job}`.");
    };
    match app.dispatcher.cancel(job, row.user_id).await {
        Ok(cancelled) => {
            let detail = serde_json::json!({ "job": job.to_string(), "cancelled": cancelled });
            if let Err(error) = store
                .record_audit(
                    Some(actor),
                    row.user_id,
                    row.guild_id,
                    "admin_cancel",
                    detail,
                )
                .await
            {
                warn!(%error, "admin cancel not audited");
            }
            if cancelled {
                format!(
                    "Job `{job}` of <@{}> was cancelled and refunded.",
                    row.user_id
                )
            } else {
                format!("Job `{job}` had already ended.")
            }
        }
        Err(error) => format!("Not cancelled: {error}"),
    }
}

async fn banned_words(app: &App, guild: i64, sub: &[ResolvedOption<'_>]) -> String {
    let store = app.dispatcher.store();
    let Some(option) = sub.first() else {
        return "Use add, remove or list.".into();
    };
    let word = match &option.value {
        ResolvedValue::SubCommand(args) => args.iter().find_map(|o| match o.value {
            ResolvedValue::String(w) => Some(w.trim().to_string()),
            _ => None,
        }),
        _ => None,
    };
    match (option.name, word) {
        ("add", Some(word)) if !word.is_empty() => match store.ban_word(guild, &word).await {
            Ok(()) => format!("Prompts here may no longer contain “{word}”."),
            Err(error) => format!("Not added: {error}"),
        },
        ("remove", Some(word)) => match store.unban_word(guild, &word).await {
            Ok(true) => format!("“{word}” is allowed again."),
            Ok(false) => format!("“{word}” was not banned."),
            Err(error) => format!("Not removed: {error}"),
        },
        ("list", _) => match store.banned_words(guild).await {
            Ok(words) if words.is_empty() => "No words are banned here.".into(),
            Ok(words) => clip(&format!("Banned here: {}", words.join(", ")), 1900),
            Err(error) => format!("Unavailable: {error}"),
        },
        _ => "Give a word.".into(),
    }
}

/// `/admin queue`: depth per lane, running, workers, latency and failures.
async fn queue_report(app: &App) -> String {
    let store = app.dispatcher.store();
    let silence = chrono::Duration::seconds(WORKER_SILENCE_S);
    let (Ok(stats), Ok(workers)) = (store.queue_stats().await, store.live_workers(silence).await)
    else {
        return "Queue statistics are unavailable right now.".into();
    };
    let secs = |v: Option<f64>| v.map_or("–".to_string(), |s| format!("{s:.1} s"));
    let mut lines = vec!["**Queue**".to_string()];
    for lane in [Lane::Fast, Lane::Relax] {
        let depth = stats.queued.iter().find(|d| d.lane == lane);
        lines.push(format!(
            "{}: {} waiting (oldest {:.0} s)",
            lane.as_str(),
            depth.map_or(0, |d| d.jobs),
            depth.map_or(0.0, |d| d.oldest_s)
        ));
    }
    lines.push(format!("running: {}", stats.running));
    lines.push(format!(
        "last hour: wait p50 {} / p95 {}, run p50 {} / p95 {}; {} succeeded, {} failed, {} cancelled",
        secs(stats.wait_p50_s),
        secs(stats.wait_p95_s),
        secs(stats.run_p50_s),
        secs(stats.run_p95_s),
        stats.succeeded_last_hour,
        stats.failed_last_hour,
        stats.cancelled_last_hour
    ));
    lines.push(format!("**Workers online: {}**", workers.len()));
    for worker in workers.iter().take(20) {
        lines.push(format!(
            "`{}` on {}: {}",
            worker.id,
            worker.device,
            worker.models.join(", ")
        ));
    }
    clip(&lines.join("\n"), 1900)
}

fn user_arg(args: &[ResolvedOption<'_>]) -> Option<i64> {
    args.iter().find_map(|o| match o.value {
        ResolvedValue::User(user, _) => Some(user.id.get() as i64),
        _ => None,
    })
}

fn int_arg(args: &[ResolvedOption<'_>], name: &str) -> Option<i64> {
    args.iter().find_map(|o| match o.value {
        ResolvedValue::Integer(v) if o.name == name => Some(v),
        _ => None,
    })
}
