//! What the deployment allows and what it uses when a parameter is absent.

use serde::{Deserialize, Serialize};

/// Bounds and defaults the parser applies. They come from the server's configuration and
/// the model in use; [`Limits::default`] matches Stable Diffusion 1.5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Width in pixels the model was trained at; with `native_height` it sets the pixel count.
    pub native_width: u32,
    /// Height in pixels the model was trained at.
    pub native_height: u32,
    /// Sampling steps at `--quality 1`.
    pub base_steps: u32,
    /// Most steps a job may run, whether from `--steps` or from `--quality`.
    pub max_steps: u32,
    /// Sampler names `--sampler` accepts (matched case-insensitively, `-` as `_`).
    pub samplers: Vec<String>,
    /// Sampler used without `--sampler`.
    pub default_sampler: String,
    /// Model names `--model` accepts (matched case-insensitively).
    pub models: Vec<String>,
    /// Model used without `--model`.
    pub default_model: String,
    /// `--stylize` used when the prompt gives none (a user's `/settings` default).
    pub default_stylize: u16,
    /// Largest `--repeat`.
    pub max_repeat: u32,
    /// Most jobs one prompt may make: permutations × repeat.
    pub max_jobs: u32,
    /// Longest prompt text, and longest negative prompt, in characters.
    pub max_prompt_chars: usize,
    /// Widest aspect ratio either way: 4.0 allows 4:1 through 1:4.
    pub max_aspect: f64,
    /// Whether an expander model is configured, so `--expand` can be honoured.
    pub expansion: bool,
}

impl Default for Limits {
    fn default() -> Self {
        let samplers = [
            "ddim",
            "euler",
            "euler_a",
            "euler_karras",
            "dpmpp_2m",
            "dpmpp_2m_karras",
            "dpmpp_2m_sde",
            "dpmpp_2m_sde_karras",
            "lcm",
        ];
        Self {
            native_width: 512,
            native_height: 512,
            base_steps: 30,
            max_steps: 150,
            samplers: samplers.iter().map(|name| name.to_string()).collect(),
            default_sampler: "euler_a".to_string(),
            models: vec!["sd15".to_string()],
            default_model: "sd15".to_string(),
            default_stylize: crate::DEFAULT_STYLIZE,
            max_repeat: 4,
            max_jobs: 10,
            max_prompt_chars: 1000,
            max_aspect: 4.0,
            expansion: false,
        }
    }
}
