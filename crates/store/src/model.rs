//! Rows and requests.

use chrono::{DateTime, Utc};
use huaxian_prompt::JobSpec;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Imagine,
    Upscale,
    Variation,
    Reroll,
    Blend,
}

impl JobKind {
    /// The name stored in `jobs.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Imagine => "imagine",
            Self::Upscale => "upscale",
            Self::Variation => "variation",
            Self::Reroll => "reroll",
            Self::Blend => "blend",
        }
    }
}

/// Where a job waits: fast spends quota and goes first; relax is free and yields to fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Fast,
    Relax,
}

impl Lane {
    /// The name stored in `jobs.lane` and used in queue keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Relax => "relax",
        }
    }

    /// Reads a stored name; anything but `relax` is fast, as the schema allows only the two.
    pub fn parse(name: &str) -> Self {
        if name == "relax" {
            Self::Relax
        } else {
            Self::Fast
        }
    }
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Reads a stored name; the schema's CHECK allows only these.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// A request for a job, as the gateway makes it.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub kind: JobKind,
    pub spec: JobSpec,
    pub lane: Lane,
    /// Images the job makes (4 for a grid, 1 for an upscale); counts against the daily cap.
    pub images: i32,
    /// Estimated GPU time, reserved from the fast quota at enqueue.
    pub estimate_ms: i64,
    /// The parent job and the button pressed on it, for upscale, variation and reroll.
    pub parent: Option<(Uuid, String)>,
    /// The image of the parent the button refers to.
    pub image_index: Option<i16>,
    /// Discord interaction id; one interaction makes at most one job.
    pub interaction_id: i64,
    pub user_id: i64,
    pub guild_id: Option<i64>,
    pub channel_id: i64,
}

/// What the dispatcher needs to route a job to a worker; derived from the job row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub job_id: Uuid,
    pub user_id: i64,
    pub lane: Lane,
    pub model: String,
    pub pixels: i64,
    pub batch_key: String,
    /// Not to be started before this time (a retry's backoff); `None`: now.
    pub ready_at: Option<DateTime<Utc>>,
}

/// Result of an enqueue that was not refused.
#[derive(Clone, Debug)]
pub struct Enqueued {
    pub ticket: Ticket,
    /// False when the interaction or button already had a job, which is returned instead.
    pub created: bool,
}

/// One image a finished job produced.
#[derive(Clone, Debug)]
pub struct NewImage {
    pub index: i16,
    pub blob_key: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
    pub seed: i64,
}

/// A job row, as readers see it.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub state: JobState,
    pub attempt: i32,
    pub lane: Lane,
    pub model: String,
    pub user_id: i64,
    pub worker_id: Option<String>,
    pub error: Option<String>,
    pub reserved_ms: i64,
    pub cost_ms: Option<i64>,
    pub spec: JobSpec,
    pub queued_at: DateTime<Utc>,
    pub running_at: Option<DateTime<Utc>>,
}

/// The key under which jobs may share a batch: same model, sampler, steps and size.
pub(crate) fn batch_key(spec: &JobSpec) -> String {
    format!(
        "{}:{}:{}:{}x{}",
        spec.model, spec.sampler, spec.steps, spec.width, spec.height
    )
}
