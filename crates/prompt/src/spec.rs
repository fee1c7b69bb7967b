//! The validated result of a prompt: one spec per job.

use serde::{Deserialize, Serialize};

use crate::mapping::{image_guidance, stop_steps, GRID_IMAGES};

/// One part of a multi-prompt (`text::weight`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptPart {
    /// The part's text, trimmed, whitespace collapsed.
    pub text: String,
    /// Its weight; 1 when none was given. May be negative; the parts' total is positive.
    pub weight: f64,
}

/// Everything a worker needs to render one job: a 2×2 grid. Other crates store it as JSON,
/// so renaming a field breaks jobs already stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The prompt's parts and weights; a prompt without `::` is one part of weight 1.
    pub prompt: Vec<PromptPart>,
    /// Negative prompt: `--negative` text, then each `--no` item, joined by ", ".
    pub negative: String,
    /// Image width in pixels, a multiple of 64.
    pub width: u32,
    /// Image height in pixels, a multiple of 64.
    pub height: u32,
    /// The aspect ratio asked for, in lowest terms; (1, 1) without `--ar`.
    pub aspect: (u32, u32),
    /// Seed of the grid's first image (image `i` uses `seed + i`); `None` until the caller
    /// picks one with [`JobSpec::fill_seed`].
    pub seed: Option<u32>,
    /// Sampling steps of the schedule.
    pub steps: u32,
    /// Percent of `steps` to run before decoding (`--stop`); 100 runs them all.
    pub stop_percent: u8,
    /// Base classifier-free guidance scale, from `--stylize`.
    pub guidance: f64,
    /// The `--stylize` value, 0–1000 (default 100).
    pub stylize: u16,
    /// The `--chaos` value, 0–100 (default 0).
    pub chaos: u8,
    /// The `--quality` value: 0.25, 0.5, 1 or 2 (default 1).
    pub quality: f32,
    /// Sampler name, as spelled in the limits.
    pub sampler: String,
    /// Model name, as spelled in the limits.
    pub model: String,
    /// This job's prompt after brace expansion, whitespace collapsed, parameters included:
    /// what to show the user.
    pub raw: String,
    /// Whether a text model continues the prompt before rendering (`--expand`); `None`
    /// when not given, for the caller to fill from the user's default.
    #[serde(default)]
    pub expand: Option<bool>,
}

impl JobSpec {
    /// A spec of one prompt part with the language's defaults and no parameters: 512×512,
    /// 30 steps, `euler_a`, `--stylize 100` (guidance 7), no chaos, seed left open. For
    /// jobs that do not come from typed text (`/blend`, buttons) and for tests; set the
    /// fields that differ.
    pub fn new(prompt: &str, model: &str) -> Self {
        let text: String = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
        JobSpec {
            prompt: vec![PromptPart {
                text: text.clone(),
                weight: 1.0,
            }],
            negative: String::new(),
            width: 512,
            height: 512,
            aspect: (1, 1),
            seed: None,
            steps: 30,
            stop_percent: 100,
            guidance: crate::stylize_guidance(crate::DEFAULT_STYLIZE),
            stylize: crate::DEFAULT_STYLIZE,
            chaos: 0,
            quality: 1.0,
            sampler: "euler_a".into(),
            model: model.into(),
            raw: text,
            expand: None,
        }
    }

    /// The prompt parts for display, in the language's own syntax (`a::2 b`), which parses
    /// back to the same parts. A single part of weight 1 is its bare text.
    pub fn positive_text(&self) -> String {
        let last = self.prompt.len().saturating_sub(1);
        let shown: Vec<String> = self
            .prompt
            .iter()
            .enumerate()
            .map(|(index, part)| {
                if index == last && part.weight == 1.0 {
                    part.text.clone()
                } else {
                    format!("{}::{}", part.text, part.weight)
                }
            })
            .collect();
        shown.join(" ")
    }

    /// The seed this job renders with: its own, or else `random`, which it then keeps so the
    /// seed can be reported.
    pub fn fill_seed(&mut self, random: u32) -> u32 {
        *self.seed.get_or_insert(random)
    }

    /// Guidance scale of each image of the grid, spread by chaos (see
    /// [`image_guidance`](crate::image_guidance)).
    pub fn image_guidances(&self) -> [f64; GRID_IMAGES as usize] {
        [0, 1, 2, 3].map(|index| image_guidance(self.guidance, self.chaos, index))
    }

    /// Steps to run before decoding, from `steps` and `stop_percent`.
    pub fn steps_to_run(&self) -> u32 {
        stop_steps(self.steps, self.stop_percent)
    }
}
