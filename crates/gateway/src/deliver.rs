//! Showing jobs in Discord: progress edits while they render, and the result once they end.
//!
//! Results are read from the results stream with a consumer group and acknowledged only
//! once shown (or given up on after repeated failures), so a gateway that dies mid-delivery
//! shows them after its restart. Progress is best effort: at most one edit per message per
//! `progress_edit_s`, skipped while an edit of the same message is in flight, and never
//! after the result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huaxian_queue::{EventReader, JobResult, Outcome, Progress};
use huaxian_store::{JobKind, StoreError};
use serenity::all::{
    Builder, ChannelId, CreateActionRow, CreateAllowedMentions, CreateAttachment,
    CreateInteractionResponseFollowup, CreateMessage, EditInteractionResponse, MessageId,
    MessageReference, UserId,
};
use serenity::http::Http;
use tokio::sync::watch;
use tracing::{info, warn};
use uuid::Uuid;

use crate::fit::{fit, Fitted};
use crate::note::{self, Note};
use crate::reply::{clip, count_error, token_dead, transient};
use crate::{buttons, App};

/// The consumer group of gateways on the results stream.
pub const GROUP: &str = "gateway";

/// Largest image blob read back for a result.
const MAX_RESULT_BYTES: u64 = 128 << 20;

/// Tries before a result that cannot be shown is given up (and logged as an error).
const MAX_TRIES: u32 = 8;

/// How long a result waits for its job's note (the "Waiting…" message being shown) before
/// it goes to the channel instead.
const NOTE_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// Discord's default upload limit, for notes that recorded none.
const DEFAULT_ATTACHMENT_LIMIT: u64 = 10 << 20;

/// Per job: a lock held while its message is being edited, and whether its result was
/// shown (after which progress edits stop).
#[derive(Default)]
pub struct Editing {
    jobs: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<bool>>>>,
}

impl Editing {
    fn lock_for(&self, job: Uuid) -> Arc<tokio::sync::Mutex<bool>> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() > 10_000 {
            jobs.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        jobs.entry(job).or_default().clone()
    }
}

enum Delivered {
    /// Shown (by which path), or dropped for good: acknowledge it.
    Done(&'static str),
    /// Not yet; try again after a pause.
    Later(String),
}

/// Reads results and shows them until `shutdown`.
pub async fn results(app: Arc<App>, http: Arc<Http>, mut shutdown: watch::Receiver<bool>) {
    let consumer = app.settings.gateway.consumer_name();
    let mut postponed: HashMap<String, (Instant, u32)> = HashMap::new();
    let mut reader = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Webhook routes need the application id, which READY brings.
        if !app.ready.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = tokio::time::timeout(Duration::from_millis(200), shutdown.changed()).await;
            continue;
        }
        let Some(reader) = connected(&app, &mut reader).await else {
            continue;
        };
        let deliveries = match reader
            .read_results(GROUP, &consumer, 16, Duration::from_secs(1))
            .await
        {
            Ok(deliveries) => deliveries,
            Err(error) => {
                warn!(%error, "results not readable; retrying");
                let _ = tokio::time::timeout(Duration::from_secs(1), shutdown.changed()).await;
                continue;
            }
        };

        let mut waiting = true;
        for delivery in deliveries {
            if *shutdown.borrow() {
                return;
            }
            let tries = match postponed.get(&delivery.entry_id) {
                Some((next, _)) if Instant::now() < *next => continue,
                Some((_, tries)) => *tries,
                None => 0,
            };
            waiting = false;
            let started = Instant::now();
            let outcome = deliver(&app, &http, &delivery.result).await;
            let job = delivery.result.job_id;
            let path = match outcome {
                Delivered::Done(path) => path,
                Delivered::Later(reason) if tries + 1 < MAX_TRIES => {
                    let pause = Duration::from_millis(500 << tries.min(6));
                    warn!(%job, %reason, tries = tries + 1, "result not shown yet; will retry");
                    postponed.insert(delivery.entry_id, (Instant::now() + pause, tries + 1));
                    continue;
                }
                Delivered::Later(reason) => {
                    tracing::error!(%job, %reason, "result could not be shown; giving up");
                    "failed"
                }
            };
            postponed.remove(&delivery.entry_id);
            app.metrics.deliveries.with_label_values(&[path]).inc();
            app.metrics
                .delivery_seconds
                .observe(started.elapsed().as_secs_f64());
            if let Err(error) = app.dispatcher.ack_result(GROUP, &delivery.entry_id).await {
                warn!(%job, %error, "result shown but not acknowledged; it may show twice");
            }
            let _ = app.dispatcher.drop_note(job).await;
        }
        if waiting {
            // Only postponed results in hand: do not spin on them.
            let _ = tokio::time::timeout(Duration::from_millis(250), shutdown.changed()).await;
        }
    }
}

async fn deliver(app: &App, http: &Http, result: &JobResult) -> Delivered {
    let job = match app.dispatcher.store().job(result.job_id).await {
        Ok(job) => job,
        Err(StoreError::NoSuchJob(_)) => return Delivered::Done("dropped"),
        Err(error) => return Delivered::Later(error.to_string()),
    };
    let note = match note::get(app, job.id).await {
        Ok(note) => note,
        Err(error) => return Delivered::Later(error.to_string()),
    };
    if note.is_none() && chrono::Utc::now() - job.queued_at < NOTE_GRACE {
        return Delivered::Later("its message is not shown yet".into());
    }
    let title = note
        .as_ref()
        .map(|n| n.title.clone())
        .unwrap_or_else(|| format!("**{}** - <@{}>", clip(&job.spec.raw, 1200), job.user_id));
    let limit = note
        .as_ref()
        .map(|n| n.attachment_limit)
        .filter(|l| *l > 0)
        .unwrap_or(DEFAULT_ATTACHMENT_LIMIT);

    let mut shown = Shown {
        content: String::new(),
        file: None,
        rows: Vec::new(),
        user_id: job.user_id as u64,
    };
    match result.outcome {
        Outcome::Failed => {
            let reason = result.error.as_deref().unwrap_or("no reason was given");
            let refund = if job.reserved_ms > 0 {
                " Your fast time for it was refunded."
            } else {
                ""
            };
            shown.content = format!("{title}\n❌ Failed: {reason}.{refund}");
        }
        Outcome::Succeeded => {
            let (key, stem) = match (&result.grid_key, result.images.first()) {
                (Some(grid), _) => (grid.clone(), "grid"),
                (None, Some(image)) => (image.blob_key.clone(), "image"),
                (None, None) => return Delivered::Done("dropped"),
            };
            let png = match app.blobs.get(&key, MAX_RESULT_BYTES).await {
                Ok(png) => png,
                Err(error) => return Delivered::Later(format!("reading {key}: {error}")),
            };
            let short = job.id.simple().to_string();
            let stem = format!("{stem}_{}", &short[..8]);
            let mut content = title.clone();
            if let Some(seed) = result.images.first().map(|i| i.seed) {
                content.push_str(&format!(" (seed {seed})"));
            }
            if let Some(expanded) = &job.final_prompt {
                content.push_str(&format!("\nPrompt as rendered: {}", clip(expanded, 500)));
            }
            match fit(png, &stem, limit) {
                Ok(fitted) => {
                    if let Some(change) = &fitted.change {
                        content.push_str(&format!("\n(The image was {change}.)"));
                    }
                    shown.file = Some(fitted);
                }
                Err(error) => {
                    content.push_str(&format!("\n(The image could not be attached: {error}.)"))
                }
            }
            shown.content = content;
            shown.rows = match job.kind {
                JobKind::Upscale => buttons::image_rows(job.id),
                _ => buttons::grid_rows(job.id),
            };
        }
    }

    // No progress edit may land after the result.
    let lock = app.editing.lock_for(job.id);
    let mut finished = lock.lock().await;
    let delivered = show(app, http, note.as_ref(), job.channel_id as u64, &shown).await;
    if matches!(delivered, Delivered::Done(_)) {
        *finished = true;
        info!(job = %job.id, outcome = ?result.outcome, "result shown");
    }
    delivered
}

/// A message to show for a job.
struct Shown {
    content: String,
    file: Option<Fitted>,
    rows: Vec<CreateActionRow>,
    user_id: u64,
}

impl Shown {
    fn mentions(&self) -> CreateAllowedMentions {
        CreateAllowedMentions::new().users([UserId::new(self.user_id.max(1))])
    }

    fn attachment(&self) -> Option<CreateAttachment> {
        self.file
            .as_ref()
            .map(|f| CreateAttachment::bytes(f.bytes.clone(), f.filename.clone()))
    }
}

/// Edits the job's message while its token lives; otherwise, or when Discord refuses the
/// token, posts to the channel replying to the message.
async fn show(
    app: &App,
    http: &Http,
    note: Option<&Note>,
    channel: u64,
    shown: &Shown,
) -> Delivered {
    if let Some(note) = note.filter(|n| n.token_alive(app)) {
        match edit(http, note, shown).await {
            Ok(()) => return Delivered::Done("edit"),
            // Discord took the edit; only its echo of the message could not be read.
            Err(serenity::Error::Json(error)) => {
                warn!(%error, "the edited message could not be read back");
                return Delivered::Done("edit");
            }
            Err(error) => {
                count_error(app, &error);
                if transient(&error) && !token_dead(&error) {
                    return Delivered::Later(error.to_string());
                }
                warn!(%error, "the interaction's message could not be edited; posting to the channel");
            }
        }
    }

    let channel = ChannelId::new(note.map(|n| n.channel_id).unwrap_or(channel).max(1));
    let reply_to = note.and_then(|n| n.message_id);
    let mut message = CreateMessage::new()
        .content(clip(&shown.content, 2000))
        .components(shown.rows.clone())
        .allowed_mentions(shown.mentions());
    if let Some(file) = shown.attachment() {
        message = message.add_file(file);
    }
    if let Some(id) = reply_to {
        // A reply to a deleted message still posts, just without the reference.
        let mut reference = MessageReference::from((channel, MessageId::new(id.max(1))));
        reference.fail_if_not_exists = Some(false);
        message = message.reference_message(reference);
    }
    match channel.send_message(http, message).await {
        Ok(_) => Delivered::Done("channel"),
        Err(error) => {
            count_error(app, &error);
            Delivered::Later(error.to_string())
        }
    }
}

async fn edit(http: &Http, note: &Note, shown: &Shown) -> Result<(), serenity::Error> {
    let content = clip(&shown.content, 2000);
    match (note.followup, note.message_id) {
        (true, Some(id)) => {
            let mut followup = CreateInteractionResponseFollowup::new()
                .content(content)
                .components(shown.rows.clone())
                .allowed_mentions(shown.mentions());
            if let Some(file) = shown.attachment() {
                followup = followup.add_file(file);
            }
            followup
                .execute(http, (Some(MessageId::new(id.max(1))), &note.token))
                .await?;
        }
        _ => {
            let mut edit = EditInteractionResponse::new()
                .content(content)
                .components(shown.rows.clone())
                .allowed_mentions(shown.mentions())
                .clear_attachments();
            if let Some(file) = shown.attachment() {
                edit = edit.new_attachment(file);
            }
            edit.execute(http, &note.token).await?;
        }
    }
    Ok(())
}

/// Follows progress events and edits the jobs' messages until `shutdown`.
pub async fn progress(app: Arc<App>, http: Arc<Http>, shutdown: watch::Receiver<bool>) {
    let every = app.settings.gateway.progress_every();
    // When each job's message was last edited: set as an edit starts, so no second one is
    // started meanwhile, and again when it is done, so the spacing holds between the edits
    // as Discord receives them, however long one took.
    let last_edit: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let mut after = "$".to_string();
    let mut reader = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(reader) = connected(&app, &mut reader).await else {
            continue;
        };
        let events = match reader
            .read_progress(&after, 200, Duration::from_secs(1))
            .await
        {
            Ok((events, last)) => {
                after = last;
                events
            }
            Err(error) => {
                warn!(%error, "progress not readable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // The newest event of each job is the one worth showing.
        let mut newest: HashMap<Uuid, Progress> = HashMap::new();
        for event in events {
            newest.insert(event.job_id, event);
        }
        let mut edited = last_edit.lock().unwrap_or_else(|e| e.into_inner());
        for (job, event) in newest {
            if edited.get(&job).is_some_and(|at| at.elapsed() < every) {
                continue;
            }
            let before = edited.insert(job, Instant::now());
            let (app, http, last_edit) = (app.clone(), http.clone(), last_edit.clone());
            tokio::spawn(async move {
                let sent = progress_edit(&app, &http, event).await;
                let mut edited = last_edit.lock().unwrap_or_else(|e| e.into_inner());
                if sent {
                    edited.insert(job, Instant::now());
                } else if let Some(before) = before {
                    // Nothing reached Discord: the spacing counts from the edit before.
                    edited.insert(job, before);
                } else {
                    edited.remove(&job);
                }
            });
        }
        edited.retain(|_, at| at.elapsed() < Duration::from_secs(3600));
    }
}

/// The loop's event reader, opened on first use; `None` after a pause when Redis cannot be
/// reached, so the loop can check for shutdown and try again.
async fn connected<'a>(
    app: &App,
    reader: &'a mut Option<EventReader>,
) -> Option<&'a mut EventReader> {
    if reader.is_none() {
        match app.dispatcher.event_reader().await {
            Ok(opened) => *reader = Some(opened),
            Err(error) => {
                warn!(%error, "events not readable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    reader.as_mut()
}

/// Edits the job's message to show `event`; false when it sent nothing to Discord.
async fn progress_edit(app: &App, http: &Http, event: Progress) -> bool {
    let lock = app.editing.lock_for(event.job_id);
    // Skip rather than queue behind an edit in flight: a newer event will come.
    let Ok(finished) = lock.try_lock() else {
        return false;
    };
    if *finished {
        return false;
    }
    let Ok(Some(note)) = note::get(app, event.job_id).await else {
        return false;
    };
    // With several gateway processes, the one that showed the job edits its progress, so
    // the 3-second spacing holds; any of them delivers the result.
    if !note.token_alive(app) || !note.owned_by(&app.settings.gateway.consumer_name()) {
        return false;
    }
    let percent = (u64::from(event.step) * 100) / u64::from(event.steps.max(1));
    let shown = Shown {
        content: format!("{} ({percent}%)", note.title),
        file: event.preview.map(|bytes| Fitted {
            bytes,
            filename: "preview.jpg".into(),
            change: None,
        }),
        rows: Vec::new(),
        user_id: note.user_id,
    };
    if let Err(error) = edit(http, &note, &shown).await {
        count_error(app, &error);
        tracing::debug!(job = %event.job_id, %error, "progress edit dropped");
    }
    true
}
