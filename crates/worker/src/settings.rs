//! The worker's configuration: the `[worker]` section beside the shared `[database]`,
//! `[redis]`, `[blob]` and `[caps]` sections of the service's TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use huaxian_service::BlobSettings;
use huaxian_service::{CapsSettings, DatabaseSettings, RedisSettings};
use serde::{Deserialize, Serialize};

/// Everything `huaxian worker` reads.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    #[serde(default)]
    pub blob: BlobSettings,
    #[serde(default)]
    pub caps: CapsSettings,
    pub worker: WorkerSettings,
}

/// `[[worker.models]]`: one model the worker loads at start and keeps resident.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ModelSettings {
    /// The name jobs ask for (`--model`).
    pub name: String,
    /// A diffusers folder or a single-file `.safetensors` checkpoint.
    pub path: PathBuf,
    /// For single files: a diffusers folder whose configs and scheduler to use.
    #[serde(default)]
    pub config_dir: Option<PathBuf>,
}

/// `[worker]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// This worker's id, unique in the deployment; defaults to `<hostname>-<pid>`.
    pub id: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    pub models: Vec<ModelSettings>,
    /// Largest image the worker renders, in pixels (width × height).
    pub max_pixels: i64,
    /// Most jobs it takes in one claim and renders as one batch.
    pub max_batch: u32,
    /// Seconds a claim holds a job unless renewed.
    pub lease_s: f64,
    /// Seconds a SIGTERM leaves the jobs in hand to finish before they are given back.
    pub grace_s: f64,
    /// Seconds between heartbeats.
    pub heartbeat_s: f64,
    /// Seconds between reconcile passes (taking back expired leases, redispatching).
    pub reconcile_s: f64,
    /// Milliseconds to wait before claiming again when nothing was waiting.
    pub idle_poll_ms: u64,
    /// Where to serve `/metrics` and `/healthz`; none when absent.
    pub metrics_addr: Option<SocketAddr>,
    /// Image-to-image strengths of the buttons.
    pub strengths: Strengths,
    /// The text model behind `--expand`; without one, jobs that ask for it fail.
    pub expander: Option<ExpanderSettings>,
}

/// `[worker.expander]`: a GPT-2 that continues prompts before rendering.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExpanderSettings {
    /// A transformers GPT-2 folder: config.json, model.safetensors, tokenizer.
    pub path: PathBuf,
    /// Most tokens it adds.
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling: the `top_k` likeliest tokens, then the smallest set reaching `top_p`.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// A word list (one word or phrase per line) the expansion is held to.
    #[serde(default)]
    pub allow_words: Option<PathBuf>,
}

fn default_new_tokens() -> usize {
    40
}

fn default_top_k() -> usize {
    50
}

fn default_top_p() -> f64 {
    0.95
}

fn default_temperature() -> f64 {
    1.0
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            id: None,
            device: "cpu".into(),
            dtype: "f32".into(),
            models: Vec::new(),
            max_pixels: 1024 * 1024,
            max_batch: 4,
            lease_s: 30.0,
            grace_s: 60.0,
            heartbeat_s: 5.0,
            reconcile_s: 5.0,
            idle_poll_ms: 250,
            metrics_addr: None,
            strengths: Strengths::default(),
            expander: None,
        }
    }
}

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        seconds(self.lease_s, 1.0)
    }

    pub fn grace(&self) -> Duration {
        seconds(self.grace_s, 0.0)
    }

    pub fn heartbeat(&self) -> Duration {
        seconds(self.heartbeat_s, 0.1)
    }

    pub fn reconcile(&self) -> Duration {
        seconds(self.reconcile_s, 0.1)
    }

    /// The configured id, or `<hostname>-<pid>`.
    pub fn worker_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// How far each image-to-image job moves from its source: 0 keeps it, 1 ignores it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Strengths {
    pub vary_subtle: f64,
    pub vary_strong: f64,
    pub upscale_subtle: f64,
    pub upscale_creative: f64,
    /// Blends start from the blended latents of their inputs.
    pub blend: f64,
    /// `/imagine` with an image attachment starts from it.
    pub image_prompt: f64,
}

impl Default for Strengths {
    fn default() -> Self {
        Self {
            vary_subtle: 0.35,
            vary_strong: 0.7,
            upscale_subtle: 0.25,
            upscale_creative: 0.45,
            blend: 0.8,
            image_prompt: 0.7,
        }
    }
}

fn seconds(value: f64, at_least: f64) -> Duration {
    Duration::from_secs_f64(if value.is_finite() {
        value.max(at_least)
    } else {
        at_least
    })
}
