//! Samplers (diffusers calls them schedulers): the loop that turns noise into latents, one
//! UNet call per step.
//!
//! Each sampler reproduces one diffusers scheduler built with `Class.from_config(config)` from
//! the model's `scheduler/scheduler_config.json`, step for step, so that a seed gives the same
//! image here as in diffusers. The methods and their papers are cited in each file: DDIM in
//! `ddim.rs`, Euler and Euler ancestral in `euler.rs`, DPM-Solver++ in `dpm.rs`, LCM in
//! `lcm.rs`.

mod config;
mod ddim;
mod dpm;
mod euler;
mod lcm;
mod schedule;

use std::str::FromStr;

use tch::Tensor;

pub use config::{PredictionType, SchedulerConfig};

use crate::{Error, Result};

/// A sampler as users name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    Ddim,
    Euler,
    EulerA,
    EulerKarras,
    Dpmpp2m,
    Dpmpp2mKarras,
    Dpmpp2mSde,
    Dpmpp2mSdeKarras,
    Lcm,
}

const ALL: &[SamplerKind] = &[
    SamplerKind::Ddim,
    SamplerKind::Euler,
    SamplerKind::EulerA,
    SamplerKind::EulerKarras,
    SamplerKind::Dpmpp2m,
    SamplerKind::Dpmpp2mKarras,
    SamplerKind::Dpmpp2mSde,
    SamplerKind::Dpmpp2mSdeKarras,
    SamplerKind::Lcm,
];

impl SamplerKind {
    /// The name users type: `"ddim"`, `"euler_a"`, `"dpmpp_2m_karras"`, ...
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerA => "euler_a",
            SamplerKind::EulerKarras => "euler_karras",
            SamplerKind::Dpmpp2m => "dpmpp_2m",
            SamplerKind::Dpmpp2mKarras => "dpmpp_2m_karras",
            SamplerKind::Dpmpp2mSde => "dpmpp_2m_sde",
            SamplerKind::Dpmpp2mSdeKarras => "dpmpp_2m_sde_karras",
            SamplerKind::Lcm => "lcm",
        }
    }

    /// The name AUTOMATIC1111's web UI shows, which is what image metadata usually carries.
    pub fn a1111_name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Euler => "Euler",
            SamplerKind::EulerA => "Euler a",
            SamplerKind::EulerKarras => "Euler Karras",
            SamplerKind::Dpmpp2m => "DPM++ 2M",
            SamplerKind::Dpmpp2mKarras => "DPM++ 2M Karras",
            SamplerKind::Dpmpp2mSde => "DPM++ 2M SDE",
            SamplerKind::Dpmpp2mSdeKarras => "DPM++ 2M SDE Karras",
            SamplerKind::Lcm => "LCM",
        }
    }

    pub fn all() -> &'static [SamplerKind] {
        ALL
    }

    /// Whether `step` asks for fresh noise; the caller then keeps a generator per image.
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            SamplerKind::EulerA
                | SamplerKind::Dpmpp2mSde
                | SamplerKind::Dpmpp2mSdeKarras
                | SamplerKind::Lcm
        )
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = Error;

    /// Takes our names, or A1111's in any case.
    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        ALL.iter()
            .copied()
            .find(|kind| kind.name() == text || kind.a1111_name().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                let names: Vec<&str> = ALL.iter().map(|kind| kind.name()).collect();
                Error::InvalidRequest(format!(
                    "unknown sampler {text:?}; choose one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// What one step of a method yields.
pub(crate) struct Stepped {
    prev_sample: Tensor,
    /// The model's estimate of the clean latents.
    denoised: Tensor,
}

/// One sampling method with its schedule for a fixed number of steps. `step` indexes the
/// timesteps and is always in range; the caller checks.
pub(crate) trait Solver: Send {
    fn timesteps(&self) -> &[f64];
    /// The scale of the starting noise; 1 for samplers that work on the noised latents.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The UNet's input at `step`; samplers in sigma space rescale it.
    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Tensor {
        sample.shallow_clone()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Stepped>;
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Tensor;
}

/// `a * x + b * y`.
pub(crate) fn lincomb(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    Ok(x.f_mul_scalar(a)?.f_add(&y.f_mul_scalar(b)?)?)
}

/// A sampler set up for one run of `steps` steps. It keeps the multistep history, so each
/// image (or batch) denoised together needs its own.
pub struct Sampler {
    kind: SamplerKind,
    steps: usize,
    solver: Box<dyn Solver>,
    begin_index: Option<usize>,
    next_step: Option<usize>,
    denoised: Option<Tensor>,
}

impl Sampler {
    /// Builds the schedule for `steps` steps. Fails with `InvalidRequest` for 0 steps or more
    /// than the model was trained with, and with `BadConfig` for config values the sampler
    /// cannot honour.
    pub fn new(kind: SamplerKind, config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let train_steps = config.num_train_timesteps();
        if steps == 0 || steps > train_steps {
            return Err(Error::InvalidRequest(format!(
                "steps must be between 1 and {train_steps}; got {steps}"
            )));
        }

        let solver: Box<dyn Solver> = match kind {
            SamplerKind::Ddim => Box::new(ddim::Ddim::new(config, steps)?),
            SamplerKind::Euler => Box::new(euler::Euler::new(config, steps, false, false)?),
            SamplerKind::EulerKarras => Box::new(euler::Euler::new(config, steps, false, true)?),
            SamplerKind::EulerA => Box::new(euler::Euler::new(config, steps, true, false)?),
            SamplerKind::Dpmpp2m | SamplerKind::Dpmpp2mKarras => {
                let overrides = dpm::DpmOverrides {
                    karras: kind == SamplerKind::Dpmpp2mKarras,
                    sde: false,
                };
                Box::new(dpm::Dpm::new(config, steps, overrides)?)
            }
            SamplerKind::Dpmpp2mSde | SamplerKind::Dpmpp2mSdeKarras => {
                let overrides = dpm::DpmOverrides {
                    karras: kind == SamplerKind::Dpmpp2mSdeKarras,
                    sde: true,
                };
                Box::new(dpm::Dpm::new(config, steps, overrides)?)
            }
            SamplerKind::Lcm => Box::new(lcm::Lcm::new(config, steps)?),
        };
        Ok(Sampler {
            kind,
            steps,
            solver,
            begin_index: None,
            next_step: None,
            denoised: None,
        })
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The timestep fed to the UNet at each step, in order (diffusers' `scheduler.timesteps`).
    /// For some step counts with trailing spacing diffusers produces one more timestep than
    /// steps asked for, ending at -1; so does this.
    pub fn timesteps(&self) -> &[f64] {
        self.solver.timesteps()
    }

    /// The scale of the initial noise for text-to-image.
    pub fn init_noise_sigma(&self) -> f64 {
        self.solver.init_noise_sigma()
    }

    /// UNet calls per step; 1 for every sampler here.
    pub fn order(&self) -> usize {
        1
    }

    /// The first step to run for img2img at `strength` (clamped to 0..=1), as
    /// `StableDiffusionImg2ImgPipeline.get_timesteps`. Equal to `timesteps().len()` when the
    /// strength leaves no step to run.
    pub fn begin_index_for_strength(&self, strength: f64) -> usize {
        let strength = if strength.is_nan() {
            0.0
        } else {
            strength.clamp(0.0, 1.0)
        };
        let init_timestep = ((self.steps as f64 * strength) as usize).min(self.steps);
        let start = (self.steps - init_timestep) * self.order();
        start.min(self.timesteps().len())
    }

    /// Makes `index` the first step to run (diffusers' `set_begin_index`).
    pub fn set_begin_index(&mut self, index: usize) {
        self.begin_index = Some(index);
    }

    /// Scales the latents before the UNet sees them at `step`.
    pub fn scale_model_input(&self, sample: &Tensor, step: usize) -> Tensor {
        self.solver.scale_model_input(sample, step)
    }

    /// One denoising step from `timesteps()[step]` to the next. `noise` is called once when
    /// the sampler needs fresh noise at this step, exactly when diffusers draws it. Steps must
    /// run in order, from the begin index (if one was set) to the end.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let len = self.timesteps().len();
        if step >= len {
            return Err(Error::InvalidRequest(format!(
                "step {step} is past the last of {len} steps"
            )));
        }
        let expected = self.next_step.or(self.begin_index);
        if let Some(expected) = expected.filter(|&e| e != step) {
            return Err(Error::InvalidRequest(format!(
                "{} steps must run in order: expected step {expected}, got {step}",
                self.kind
            )));
        }

        let stepped = self.solver.step(model_output, step, sample, noise)?;
        self.next_step = Some(step + 1);
        self.denoised = Some(stepped.denoised);
        Ok(stepped.prev_sample)
    }

    /// The model's estimate of the clean latents at the last step, for previews; `None`
    /// before the first step.
    pub fn denoised(&self) -> Option<&Tensor> {
        self.denoised.as_ref()
    }

    /// Noises clean latents to the level of `timesteps()[step]`, for img2img (diffusers'
    /// `add_noise` at the begin index). A `step` past the end leaves the latents clean.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Tensor {
        self.solver.add_noise(original, noise, step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &kind in SamplerKind::all() {
            assert_eq!(kind.name().parse::<SamplerKind>().unwrap(), kind);
            assert_eq!(kind.a1111_name().parse::<SamplerKind>().unwrap(), kind);
        }
    }
}
