//! The networks of Stable Diffusion, each loaded from its diffusers `config.json` and weights.

pub mod blocks;
pub mod clip;
pub mod config;
pub mod gpt2;
pub mod unet;
pub mod vae;
