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
    /// Reads a stored name; the schema's CHECK allows only these.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "imagine" => Self::Imagine,
            "upscale" => Self::Upscale,
            "variation" => Self::Variation,
            "reroll" => Self::Reroll,
            "blend" => Self::Blend,
            _ => return None,
        })
    }

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

/// A button pressed under a result, as stored in `jobs.action` and carried in Discord
/// `custom_id`s. Image indexes are 0–3 (U1 is image 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// U1–U4: image `i` of a grid as its own image, no rendering.
    Upscale(u8),
    /// 2× the image by image-to-image at low strength: the same picture, sharper.
    UpscaleSubtle(u8),
    /// 2× at a higher strength: new detail.
    UpscaleCreative(u8),
    /// V1–V4 and Vary (Subtle): a new grid close to image `i`.
    VarySubtle(u8),
    /// Vary (Strong): a new grid loosely after image `i`.
    VaryStrong(u8),
    /// 🔄: the parent's prompt again with a new seed.
    Reroll,
}

impl Action {
    /// The stored form: `upscale:2`, `upscale_subtle:0`, `vary_strong:3`, `reroll`.
    pub fn key(self) -> String {
        let (name, index) = match self {
            Self::Upscale(i) => ("upscale", i),
            Self::UpscaleSubtle(i) => ("upscale_subtle", i),
            Self::UpscaleCreative(i) => ("upscale_creative", i),
            Self::VarySubtle(i) => ("vary_subtle", i),
            Self::VaryStrong(i) => ("vary_strong", i),
            Self::Reroll => return "reroll".into(),
        };
        format!("{name}:{index}")
    }

    /// Reads the stored form; `None` for anything else, including indexes past 3.
    pub fn parse(key: &str) -> Option<Self> {
        if key == "reroll" {
            return Some(Self::Reroll);
        }
        let (name, index) = key.split_once(':')?;
        let index: u8 = index.parse().ok().filter(|i| *i < 4)?;
        Some(match name {
            "upscale" => Self::Upscale(index),
            "upscale_subtle" => Self::UpscaleSubtle(index),
            "upscale_creative" => Self::UpscaleCreative(index),
            "vary_subtle" => Self::VarySubtle(index),
            "vary_strong" => Self::VaryStrong(index),
            _ => return None,
        })
    }

    /// The kind of job the button makes.
    pub fn kind(self) -> JobKind {
        match self {
            Self::Upscale(_) | Self::UpscaleSubtle(_) | Self::UpscaleCreative(_) => {
                JobKind::Upscale
            }
            Self::VarySubtle(_) | Self::VaryStrong(_) => JobKind::Variation,
            Self::Reroll => JobKind::Reroll,
        }
    }

    /// The parent's image the button refers to; `None` for a reroll.
    pub fn image_index(self) -> Option<u8> {
        match self {
            Self::Upscale(i)
            | Self::UpscaleSubtle(i)
            | Self::UpscaleCreative(i)
            | Self::VarySubtle(i)
            | Self::VaryStrong(i) => Some(i),
            Self::Reroll => None,
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
    /// Blob keys of the images the job starts from (blend inputs, image prompts), in order.
    pub inputs: Vec<String>,
    /// Discord interaction id; with `part`, it makes at most one job.
    pub interaction_id: i64,
    /// Which of the interaction's jobs this is (`--repeat` and permutations make several),
    /// from 0.
    pub part: i16,
    pub user_id: i64,
    pub guild_id: Option<i64>,
    pub channel_id: i64,
}

impl NewJob {
    /// An `imagine` grid (4 images) on the fast lane, outside any guild, with no parent and
    /// no input images; set the fields that differ.
    pub fn imagine(spec: JobSpec, user_id: i64, interaction_id: i64, channel_id: i64) -> Self {
        NewJob {
            kind: JobKind::Imagine,
            spec,
            lane: Lane::Fast,
            images: 4,
            estimate_ms: 1000,
            parent: None,
            image_index: None,
            inputs: Vec::new(),
            interaction_id,
            part: 0,
            user_id,
            guild_id: None,
            channel_id,
        }
    }
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

/// An image a finished job stored, as readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
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
    pub kind: JobKind,
    /// The job whose image this one starts from (upscale, variation, reroll).
    pub parent_id: Option<Uuid>,
    /// The parent's image the button referred to.
    pub image_index: Option<i16>,
    /// The button pressed on the parent, in [`Action::key`]'s form.
    pub action: Option<String>,
    /// Blob keys of the images the job starts from.
    pub inputs: Vec<String>,
    /// Blob key of the finished grid, for grid jobs that succeeded.
    pub grid_key: Option<String>,
    /// The prompt as rendered, when a text model expanded it.
    pub final_prompt: Option<String>,
    pub guild_id: Option<i64>,
    pub channel_id: i64,
    pub interaction_id: i64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip() {
        for index in 0..4 {
            for action in [
                Action::Upscale(index),
                Action::UpscaleSubtle(index),
                Action::UpscaleCreative(index),
                Action::VarySubtle(index),
                Action::VaryStrong(index),
            ] {
                assert_eq!(Action::parse(&action.key()), Some(action));
                assert_eq!(action.image_index(), Some(index));
            }
        }
        assert_eq!(Action::parse("reroll"), Some(Action::Reroll));
        assert_eq!(Action::parse("upscale:4"), None);
        assert_eq!(Action::parse("upscale:-1"), None);
        assert_eq!(Action::parse("zoom:1"), None);
        assert_eq!(Action::VaryStrong(1).kind(), JobKind::Variation);
    }
}
