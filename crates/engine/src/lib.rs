//! huaxian's diffusion engine: Stable Diffusion 1.x and 2.x on libtorch.
//!
//! The engine knows tensors and model files, nothing of Discord, Redis or Postgres. Its entry
//! points are [`StableDiffusion::load`] and the pipelines in [`pipeline`].

mod bundled;
pub mod cpu;
pub mod error;
pub mod image_io;
pub mod model;
pub mod models;
mod nn;
pub mod pipeline;
pub mod rng;
pub mod sampler;
pub mod single_file;
pub mod textgen;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
pub use model::{parse_device_and_dtype, LoadOptions, StableDiffusion};
pub use sampler::{Sampler, SamplerKind, SchedulerConfig};
