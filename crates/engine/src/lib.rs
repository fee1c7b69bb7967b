//! huaxian's diffusion engine: Stable Diffusion 1.x and 2.x on libtorch.
//!
//! The engine knows tensors and model files, nothing of Discord, Redis or Postgres.

pub mod error;
pub mod sampler;

pub use error::{Error, Result};
