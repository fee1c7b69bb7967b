//! huaxian's diffusion engine: Stable Diffusion 1.x and 2.x on libtorch.
//!
//! The engine knows tensors and model files, nothing of Discord, Redis or Postgres. Its entry
//! points are [`StableDiffusion::load`] and the pipelines in [`pipeline`].

mod bundled;
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

/// Tunes glibc's allocator for libtorch's pattern of large, short-lived CPU buffers.
///
/// By default glibc serves every allocation above a threshold with a fresh `mmap` and returns
/// it on free, so each step of a render page-faults its activations in again (measured here:
/// a seventh of the denoising time and a quarter of the VAE decode on CPU). Raising the mmap
/// and trim thresholds keeps freed buffers in the heap for the next step. Call once at start,
/// before any tensor exists. A no-op on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before threads start.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
