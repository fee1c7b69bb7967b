//! Where a job's progress and result are shown, kept in Redis beside the job so any gateway
//! process can deliver them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::App;

/// Notes outlive the interaction token, because a late result still replies to the
/// message; a day is longer than any job waits.
const KEPT: Duration = Duration::from_secs(24 * 3600);

/// The message that shows a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// The interaction token: it edits the message until it expires. Never logged.
    pub token: String,
    /// When the interaction arrived, in Unix milliseconds; the token expires 15 minutes on.
    pub received_ms: i64,
    /// The message, once known.
    pub message_id: Option<u64>,
    /// Whether the message is a follow-up of the interaction (the second and later jobs of
    /// a `--repeat`) rather than its original response.
    pub followup: bool,
    pub channel_id: u64,
    pub user_id: u64,
    /// Largest upload the interaction allows, in bytes.
    pub attachment_limit: u64,
    /// The job as the message describes it: prompt and parameters, already shortened.
    pub title: String,
    /// The gateway process that showed the message (its consumer name); it alone edits
    /// progress. Empty: any.
    #[serde(default)]
    pub owner: String,
}

impl Note {
    /// Whether the gateway process named `consumer` edits this job's progress.
    pub fn owned_by(&self, consumer: &str) -> bool {
        self.owner.is_empty() || self.owner == consumer
    }

    /// Whether the token can still edit the message, with the configured margin.
    pub fn token_alive(&self, app: &App) -> bool {
        let age_ms = chrono::Utc::now().timestamp_millis() - self.received_ms;
        age_ms >= 0 && (age_ms as u128) < app.settings.gateway.token_lifetime().as_millis()
    }
}

/// Stores the note of `job`.
pub async fn put(app: &App, job: Uuid, note: &Note) -> anyhow::Result<()> {
    let text = serde_json::to_string(note)?;
    app.dispatcher.put_note(job, &text, KEPT).await?;
    Ok(())
}

/// The note of `job`, if a gateway wrote one.
pub async fn get(app: &App, job: Uuid) -> anyhow::Result<Option<Note>> {
    let Some(text) = app.dispatcher.note(job).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_str(&text).ok())
}
