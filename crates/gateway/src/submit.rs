//! Turning `/imagine`, `/blend` and button clicks into queued jobs, and showing each job's
//! message ("Waiting to start…") with the note that lets any gateway deliver its result.

use huaxian_prompt::{JobSpec, Limits};
use huaxian_queue::DispatchError;
use huaxian_store::{
    Action, Job, JobKind, JobState, Lane, NewJob, Refusal, StoreError, UserSettings,
};
use serenity::all::{
    Attachment, Builder, CommandInteraction, CreateAllowedMentions,
    CreateInteractionResponseFollowup, EditInteractionResponse, ResolvedValue, UserId,
};
use serenity::http::Http;
use tracing::{info, warn};
use uuid::Uuid;

use crate::note::{self, Note};
use crate::reply::{clip, count_error, Pending};
use crate::{inputs, App};

/// Workers that have not heartbeaten for this long do not count as serving a model.
pub const WORKER_SILENCE_S: i64 = 30;

/// Discord's default upload limit, for interactions that report none.
const DEFAULT_ATTACHMENT_LIMIT: u64 = 10 << 20;

/// `/imagine prompt: [image:] [model:] [image2: … image5:]`.
pub async fn imagine(app: &App, http: &Http, command: &CommandInteraction, pending: &Pending) {
    if !pending.defer(app, http, false).await {
        return;
    }
    let mut prompt = String::new();
    let mut model = None;
    // Image prompts by option name, so `image`, `image2`, … keep their order.
    let mut images: Vec<(&str, Attachment)> = Vec::new();
    for option in command.data.options() {
        match (option.name, option.value) {
            ("prompt", ResolvedValue::String(text)) => prompt = text.to_string(),
            ("model", ResolvedValue::String(name)) => model = Some(name.to_string()),
            (name, ResolvedValue::Attachment(attachment)) if name.starts_with("image") => {
                images.push((name, attachment.clone()))
            }
            _ => {}
        }
    }
    images.sort_by_key(|(name, _)| *name);
    let images: Vec<Attachment> = images.into_iter().map(|(_, image)| image).collect();
    if let Some(model) = model {
        prompt = format!("{prompt} --model {model}");
    }

    let Some(settings) = user_settings(app, http, pending).await else {
        return;
    };
    let limits = limits_for(&app.settings.prompt, &settings);
    let specs = match huaxian_prompt::parse(&prompt, &limits) {
        Ok(specs) => specs,
        Err(error) => {
            let text = format!("Your prompt was not accepted: {error}");
            return pending.refuse(app, http, &text).await;
        }
    };
    for spec in &specs {
        if let Err(text) = model_served(app, &spec.model).await {
            return pending.refuse(app, http, &text).await;
        }
    }
    let inputs = match inputs::store(app, pending, &images).await {
        Ok(keys) => keys,
        Err(text) => return pending.refuse(app, http, &text).await,
    };

    let lane = settings.lane.unwrap_or(Lane::Fast);
    let jobs = specs
        .into_iter()
        .enumerate()
        .map(|(part, spec)| NewJob {
            kind: JobKind::Imagine,
            lane,
            images: 4,
            estimate_ms: estimate_ms(app, &spec, 4),
            inputs: inputs.clone(),
            part: part as i16,
            ..new_job(pending, spec)
        })
        .collect();
    queue(app, http, pending, jobs).await;
}

/// `/blend image1: image2: [image3–5:] [dimensions:]`.
pub async fn blend(app: &App, http: &Http, command: &CommandInteraction, pending: &Pending) {
    if !pending.defer(app, http, false).await {
        return;
    }
    let mut images: Vec<(String, Attachment)> = Vec::new();
    let mut aspect = (1, 1);
    for option in command.data.options() {
        match option.value {
            ResolvedValue::Attachment(attachment) => {
                images.push((option.name.to_string(), attachment.clone()))
            }
            ResolvedValue::String(dimensions) => {
                aspect = match dimensions {
                    "2:3" => (2, 3),
                    "3:2" => (3, 2),
                    _ => (1, 1),
                }
            }
            _ => {}
        }
    }
    images.sort_by(|a, b| a.0.cmp(&b.0));
    if !(2..=5).contains(&images.len()) {
        let given = match images.len() {
            1 => "only 1 was given".to_string(),
            n => format!("{n} were given"),
        };
        let text = format!(
            "/blend takes 2 to 5 images; {given}. Attach each to its own option: image1, \
             image2 and so on."
        );
        return pending.refuse(app, http, &text).await;
    }
    let Some(settings) = user_settings(app, http, pending).await else {
        return;
    };
    let limits = limits_for(&app.settings.prompt, &settings);
    let (width, height) =
        huaxian_prompt::aspect_size(aspect, (limits.native_width, limits.native_height));
    let spec = JobSpec {
        width,
        height,
        aspect,
        steps: limits.base_steps.min(limits.max_steps),
        sampler: limits.default_sampler.clone(),
        stylize: limits.default_stylize,
        guidance: huaxian_prompt::stylize_guidance(limits.default_stylize),
        ..JobSpec::new("", &limits.default_model)
    };
    if let Err(text) = model_served(app, &spec.model).await {
        return pending.refuse(app, http, &text).await;
    }
    let attachments: Vec<Attachment> = images.into_iter().map(|(_, a)| a).collect();
    let inputs = match inputs::store(app, pending, &attachments).await {
        Ok(keys) => keys,
        Err(text) => return pending.refuse(app, http, &text).await,
    };
    let job = NewJob {
        kind: JobKind::Blend,
        lane: settings.lane.unwrap_or(Lane::Fast),
        estimate_ms: estimate_ms(app, &spec, 4),
        inputs,
        ..new_job(pending, spec)
    };
    queue(app, http, pending, vec![job]).await;
}

/// A button under a result: U1–U4, 🔄, V1–V4, Upscale and Vary. Anyone may click; the job
/// runs under the clicker's quota, and a second click while its job is live makes none.
pub async fn button(app: &App, http: &Http, pending: &Pending, action: Action, parent: Uuid) {
    if !pending.defer(app, http, false).await {
        return;
    }
    let parent = match app.dispatcher.store().job(parent).await {
        Ok(job) => job,
        Err(StoreError::NoSuchJob(_)) => {
            let text = "That image's job no longer exists, so its buttons do nothing.";
            return pending.refuse(app, http, text).await;
        }
        Err(error) => return unavailable(app, http, pending, &error.to_string()).await,
    };
    if parent.state != JobState::Succeeded {
        let text = "That job has not finished successfully, so it has no images to use yet.";
        return pending.refuse(app, http, text).await;
    }
    let Some(settings) = user_settings(app, http, pending).await else {
        return;
    };
    let spec = match button_spec(&parent, action, max_pixels(app).await) {
        Ok(spec) => spec,
        Err(text) => return pending.refuse(app, http, &text).await,
    };
    let images = if action.kind() == JobKind::Upscale {
        1
    } else {
        4
    };
    // U1–U4 copies an image: no rendering, nothing reserved.
    let estimate = match action {
        Action::Upscale(_) => 0,
        _ => estimate_ms(app, &spec, images),
    };
    let job = NewJob {
        kind: action.kind(),
        lane: settings.lane.unwrap_or(Lane::Fast),
        images: images as i32,
        estimate_ms: estimate,
        parent: Some((parent.id, action.key())),
        image_index: action.image_index().map(i16::from),
        ..new_job(pending, spec)
    };
    queue(app, http, pending, vec![job]).await;
}

/// A job of `spec` for the interaction's user, guild and channel; set the fields that
/// differ.
fn new_job(pending: &Pending, spec: JobSpec) -> NewJob {
    NewJob {
        guild_id: pending.guild_id.map(|g| g as i64),
        ..NewJob::imagine(
            spec,
            pending.user_id as i64,
            pending.id.get() as i64,
            pending.channel_id as i64,
        )
    }
}

/// The spec of the job a button makes from its parent.
pub fn button_spec(parent: &Job, action: Action, max_pixels: i64) -> Result<JobSpec, String> {
    let mut spec = parent.spec.clone();
    match action {
        // The same image: its own seed is kept by the worker, which copies it.
        Action::Upscale(_) => {}
        Action::UpscaleSubtle(_) | Action::UpscaleCreative(_) => {
            spec.width = spec.width.saturating_mul(2);
            spec.height = spec.height.saturating_mul(2);
            let pixels = i64::from(spec.width) * i64::from(spec.height);
            if pixels > max_pixels {
                return Err(format!(
                    "An upscale of this image would be {}×{}, larger than the workers render \
                     ({max_pixels} pixels at most). Upscale an image that has not been \
                     upscaled yet.",
                    spec.width, spec.height
                ));
            }
            spec.seed = None;
        }
        Action::VarySubtle(_) | Action::VaryStrong(_) | Action::Reroll => {
            // A grid made from an upscaled image goes back to the grid's size.
            if upscaled(parent) {
                spec.width = (spec.width / 2).max(huaxian_prompt::SIZE_STEP);
                spec.height = (spec.height / 2).max(huaxian_prompt::SIZE_STEP);
            }
            spec.seed = None;
        }
    }
    Ok(spec)
}

fn upscaled(job: &Job) -> bool {
    matches!(
        job.action.as_deref().and_then(Action::parse),
        Some(Action::UpscaleSubtle(_) | Action::UpscaleCreative(_))
    )
}

/// The prompt limits with the user's defaults in place of the service's.
pub fn limits_for(base: &Limits, settings: &UserSettings) -> Limits {
    let mut limits = base.clone();
    let known = |names: &[String], wanted: &Option<String>| {
        let wanted = wanted.as_deref()?;
        names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(wanted))
            .cloned()
    };
    if let Some(model) = known(&limits.models, &settings.default_model) {
        limits.default_model = model;
    }
    if let Some(sampler) = known(&limits.samplers, &settings.sampler) {
        limits.default_sampler = sampler;
    }
    if let Some(stylize) = settings.stylize {
        limits.default_stylize = stylize.clamp(0, 1000) as u16;
    }
    limits
}

/// Fast-lane milliseconds to reserve for a job of `images` images of `spec`.
fn estimate_ms(app: &App, spec: &JobSpec, images: u32) -> i64 {
    let megapixels = f64::from(spec.width) * f64::from(spec.height) / 1e6;
    let steps = f64::from(spec.steps_to_run());
    let ms = app.settings.gateway.ms_per_megapixel_step * megapixels * steps * f64::from(images);
    ms.clamp(1.0, 3_600_000.0).ceil() as i64
}

/// Refuses a model no live worker has loaded, while some worker is live: the job would
/// wait forever. With no worker online at all, the job waits for one.
async fn model_served(app: &App, model: &str) -> Result<(), String> {
    let silence = chrono::Duration::seconds(WORKER_SILENCE_S);
    let Ok(workers) = app.dispatcher.store().live_workers(silence).await else {
        return Ok(());
    };
    if workers.is_empty() || workers.iter().any(|w| w.models.iter().any(|m| m == model)) {
        return Ok(());
    }
    let mut online: Vec<&str> = workers
        .iter()
        .flat_map(|w| w.models.iter().map(String::as_str))
        .collect();
    online.sort_unstable();
    online.dedup();
    Err(format!(
        "The model `{model}` is not loaded by any worker right now. Models online: {}. \
         Pick one with --model or /settings.",
        online.join(", ")
    ))
}

/// The largest image a live worker renders; a generous default when none is live.
async fn max_pixels(app: &App) -> i64 {
    let silence = chrono::Duration::seconds(WORKER_SILENCE_S);
    match app.dispatcher.store().live_workers(silence).await {
        Ok(workers) if !workers.is_empty() => {
            workers.iter().map(|w| w.max_pixels).max().unwrap_or(0)
        }
        _ => 2048 * 2048,
    }
}

async fn user_settings(app: &App, http: &Http, pending: &Pending) -> Option<UserSettings> {
    match app
        .dispatcher
        .store()
        .settings(pending.user_id as i64)
        .await
    {
        Ok(settings) => Some(settings),
        Err(error) => {
            unavailable(app, http, pending, &error.to_string()).await;
            None
        }
    }
}

async fn unavailable(app: &App, http: &Http, pending: &Pending, detail: &str) {
    warn!(error = detail, "queue unavailable");
    let text = "The queue is unavailable right now, so nothing was queued. Try again in a \
                minute; if it lasts, tell the server's admins.";
    pending.refuse(app, http, text).await;
}

/// Queues `jobs` (one interaction's), then shows each: the first in the interaction's
/// response, the others as follow-ups. A refusal of the first job refuses the interaction;
/// a later refusal stops there and says how many were queued.
async fn queue(app: &App, http: &Http, pending: &Pending, jobs: Vec<NewJob>) {
    let total = jobs.len();
    let mut queued = Vec::new();
    let mut stopped = None;
    for job in jobs {
        match app.dispatcher.submit(&job).await {
            Ok(enqueued) if !enqueued.created && job.parent.is_some() => {
                let text = "That button's job is already queued or running; its result will \
                            appear here.";
                return pending.refuse(app, http, text).await;
            }
            Ok(enqueued) => queued.push((enqueued.ticket, job)),
            Err(DispatchError::Store(StoreError::Refused(refusal))) => {
                if let Refusal::BannedWord(word) = &refusal {
                    let detail = serde_json::json!({ "word": word, "prompt": job.spec.raw });
                    let store = app.dispatcher.store();
                    let logged = store
                        .record_audit(None, job.user_id, job.guild_id, "banned_word", detail)
                        .await;
                    if let Err(error) = logged {
                        warn!(%error, "banned-word attempt not logged");
                    }
                }
                stopped = Some(refusal.to_string());
                break;
            }
            Err(error) => {
                if queued.is_empty() {
                    return unavailable(app, http, pending, &error.to_string()).await;
                }
                stopped = Some("the queue became unavailable".to_string());
                break;
            }
        }
    }
    if queued.is_empty() {
        let text = stopped.unwrap_or_else(|| "Nothing to queue.".into());
        return pending.refuse(app, http, &capitalized(&text)).await;
    }

    let limit = match pending.attachment_limit {
        0 => DEFAULT_ATTACHMENT_LIMIT,
        limit => limit,
    };
    for (part, (ticket, job)) in queued.iter().enumerate() {
        let title = title(job);
        let waiting = match app.dispatcher.position(ticket).await {
            Ok(Some(position)) => format!(
                "Waiting to start… (position {}, about {} s)",
                position.ahead + 1,
                position.eta.as_secs().max(1)
            ),
            _ => "Waiting to start…".to_string(),
        };
        let content = clip(&format!("{title} ({waiting})"), 2000);
        let mentions = CreateAllowedMentions::new().users([UserId::new(pending.user_id)]);
        let shown = if part == 0 {
            let edit = EditInteractionResponse::new()
                .content(content)
                .allowed_mentions(mentions);
            pending.edit(app, http, edit).await
        } else {
            let followup = CreateInteractionResponseFollowup::new()
                .content(content)
                .allowed_mentions(mentions);
            let sent = followup.execute(http, (None, &pending.token)).await;
            if let Err(error) = &sent {
                count_error(app, error);
            }
            sent
        };
        let message_id = match shown {
            Ok(message) => Some(message.id.get()),
            Err(error) => {
                warn!(job = %ticket.job_id, %error, "waiting message not shown");
                None
            }
        };
        let job_note = Note {
            token: pending.token.clone(),
            received_ms: pending.received_ms,
            message_id,
            followup: part > 0,
            channel_id: pending.channel_id,
            user_id: pending.user_id,
            attachment_limit: limit,
            title,
            owner: app.settings.gateway.consumer_name(),
        };
        if let Err(error) = note::put(app, ticket.job_id, &job_note).await {
            warn!(job = %ticket.job_id, %error, "note not kept; the result goes to the channel");
        }
        info!(job = %ticket.job_id, kind = job.kind.as_str(), lane = job.lane.as_str(), "job queued");
    }
    app.metrics
        .interactions
        .with_label_values(&[pending.what, "queued"])
        .inc();
    if let Some(reason) = stopped {
        let text = format!(
            "{} of {total} jobs were queued; the rest were not: {reason}",
            queued.len()
        );
        let followup = CreateInteractionResponseFollowup::new()
            .content(clip(&text, 2000))
            .ephemeral(true);
        if let Err(error) = followup.execute(http, (None, &pending.token)).await {
            count_error(app, &error);
        }
    }
}

/// How a job's messages name it: the prompt in bold, what kind of job, and whose.
pub fn title(job: &NewJob) -> String {
    let prompt = if job.spec.raw.is_empty() {
        "blend".to_string()
    } else {
        clip(&job.spec.raw.replace('*', "\\*"), 1200)
    };
    let what = match job.parent.as_ref().and_then(|(_, key)| Action::parse(key)) {
        Some(Action::Upscale(i)) => format!(" - Image #{}", i + 1),
        Some(Action::UpscaleSubtle(_)) => " - Upscaled (Subtle)".to_string(),
        Some(Action::UpscaleCreative(_)) => " - Upscaled (Creative)".to_string(),
        Some(Action::VarySubtle(_)) => " - Variations (Subtle)".to_string(),
        Some(Action::VaryStrong(_)) => " - Variations (Strong)".to_string(),
        Some(Action::Reroll) => " - Reroll".to_string(),
        None if job.kind == JobKind::Blend => format!(" - Blend of {} images", job.inputs.len()),
        None => String::new(),
    };
    let lane = match job.lane {
        Lane::Fast => "fast",
        Lane::Relax => "relax",
    };
    format!("**{prompt}**{what} - <@{}> ({lane})", job.user_id)
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(width: u32, action: Option<Action>) -> Job {
        let mut spec = JobSpec::new("a fox", "sd15");
        spec.width = width;
        spec.height = width;
        spec.seed = Some(7);
        Job {
            id: Uuid::new_v4(),
            kind: JobKind::Imagine,
            parent_id: None,
            image_index: None,
            action: action.map(Action::key),
            inputs: Vec::new(),
            grid_key: None,
            final_prompt: None,
            guild_id: None,
            channel_id: 1,
            interaction_id: 1,
            state: JobState::Succeeded,
            attempt: 1,
            lane: Lane::Fast,
            model: "sd15".into(),
            user_id: 1,
            worker_id: None,
            error: None,
            reserved_ms: 0,
            cost_ms: None,
            spec,
            queued_at: chrono::Utc::now(),
            running_at: None,
        }
    }

    #[test]
    fn buttons_make_the_specs_users_expect() {
        let grid = job(512, None);
        let u2 = button_spec(&grid, Action::Upscale(1), 1 << 20).unwrap();
        assert_eq!((u2.width, u2.seed), (512, Some(7)));
        let subtle = button_spec(&grid, Action::UpscaleSubtle(0), 1 << 20).unwrap();
        assert_eq!(
            (subtle.width, subtle.height, subtle.seed),
            (1024, 1024, None)
        );
        let reroll = button_spec(&grid, Action::Reroll, 1 << 20).unwrap();
        assert_eq!((reroll.width, reroll.seed), (512, None));

        let upscaled = job(1024, Some(Action::UpscaleSubtle(0)));
        let vary = button_spec(&upscaled, Action::VaryStrong(0), 1 << 20).unwrap();
        assert_eq!(vary.width, 512, "variations go back to the grid's size");
        let again = button_spec(&upscaled, Action::UpscaleCreative(0), 1 << 20).unwrap_err();
        assert!(again.contains("2048×2048"), "{again}");
    }

    #[test]
    fn user_defaults_apply_only_when_known() {
        let base = Limits::default();
        let settings = UserSettings {
            default_model: Some("nope".into()),
            stylize: Some(250),
            sampler: Some("DDIM".into()),
            ..UserSettings::default()
        };
        let limits = limits_for(&base, &settings);
        assert_eq!(limits.default_model, base.default_model);
        assert_eq!(limits.default_sampler, "ddim");
        assert_eq!(limits.default_stylize, 250);
        let spec = &huaxian_prompt::parse("a fox", &limits).unwrap()[0];
        assert_eq!(spec.stylize, 250);
    }
}
