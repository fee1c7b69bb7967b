//! Euler: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
//! Models", Algorithm 2 with no churn, as diffusers' `EulerDiscreteScheduler`; and Euler
//! ancestral, which steps down to a lower sigma and adds fresh noise back up
//! (k-diffusion's `sample_euler_ancestral`), as `EulerAncestralDiscreteScheduler`.

use tch::Tensor;

use super::config::{Class, FinalSigmas, PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{
    alphas_cumprod, exponential_sigmas, interp_on_index, karras_sigmas, linspace,
    log_linear_sigmas, log_sigma_table, sigma_table, sigma_to_t, trailing,
};
use super::{Solver, Stepped};
use crate::Result;

/// How the inference sigmas are placed between the largest and the smallest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SigmaSpacing {
    /// The training sigma at each inference timestep.
    Interpolated,
    Karras,
    Exponential,
}

pub(crate) struct Euler {
    ancestral: bool,
    timesteps: Vec<f64>,
    /// One more than the timesteps (more with log-linear interpolation); the last is the sigma
    /// the final step lands on.
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    prediction: PredictionType,
}

impl Euler {
    /// `force_karras` is diffusers' `from_config(config, use_karras_sigmas=True)`.
    pub(crate) fn new(
        config: &SchedulerConfig,
        steps: usize,
        ancestral: bool,
        force_karras: bool,
    ) -> Result<Self> {
        let class = if ancestral {
            Class::EulerAncestral
        } else {
            Class::EulerDiscrete
        };
        let prediction = config.prediction_type()?;
        if ancestral && prediction == PredictionType::Sample {
            return Err(config.bad(
                "euler_a does not support prediction_type \"sample\" (diffusers does not implement it)",
            ));
        }

        let mut alphas_cumprod = alphas_cumprod(config, class)?;
        if config.rescale_betas_zero_snr() {
            // diffusers nudges the zero terminal alpha up so the largest sigma stays finite.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let table = sigma_table(&alphas_cumprod);
        let log_table = log_sigma_table(&table);

        let spacing = config.timestep_spacing(class)?;
        let float_timesteps = float_timesteps(
            spacing,
            config.num_train_timesteps(),
            steps,
            config.steps_offset(),
        );
        let options = if ancestral {
            EulerOptions::default()
        } else {
            EulerOptions::from_config(config, force_karras)?
        };

        let mut sigmas: Vec<f64> = if options.log_linear {
            let largest = log_table[log_table.len() - 1];
            log_linear_sigmas(largest, log_table[0], steps + 1)?
        } else {
            float_timesteps
                .iter()
                .map(|&t| interp_on_index(t as f64, &table))
                .collect()
        };
        let mut timesteps: Vec<f64> = float_timesteps.iter().map(|&t| t as f64).collect();
        if options.spacing != SigmaSpacing::Interpolated {
            let sigma_min = config.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = config.sigma_max.unwrap_or(sigmas[0]);
            sigmas = match options.spacing {
                SigmaSpacing::Karras => karras_sigmas(sigma_min, sigma_max, steps),
                _ => exponential_sigmas(sigma_min, sigma_max, steps),
            };
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_table)).collect();
        }

        let final_sigma = match options.final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => table[0],
        };
        let sigmas: Vec<f32> = sigmas
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(final_sigma))
            .collect();
        let timesteps: Vec<f64> = if options.continuous && prediction == PredictionType::VPrediction
        {
            sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| (0.25 * s.ln()) as f64)
                .collect()
        } else {
            timesteps.iter().map(|&t| t as f32 as f64).collect()
        };

        let max_sigma = sigmas.iter().copied().fold(f32::MIN, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };

        Ok(Euler {
            ancestral,
            timesteps,
            sigmas,
            init_noise_sigma: init_noise_sigma as f64,
            prediction,
        })
    }

    fn sigma(&self, index: usize) -> f64 {
        self.sigmas.get(index).map_or(0.0, |&s| s as f64)
    }
}

/// The options only `EulerDiscreteScheduler` knows; the ancestral class has none of them.
struct EulerOptions {
    log_linear: bool,
    spacing: SigmaSpacing,
    final_sigmas: FinalSigmas,
    continuous: bool,
}

impl Default for EulerOptions {
    fn default() -> Self {
        EulerOptions {
            log_linear: false,
            spacing: SigmaSpacing::Interpolated,
            final_sigmas: FinalSigmas::Zero,
            continuous: false,
        }
    }
}

impl EulerOptions {
    fn from_config(config: &SchedulerConfig, force_karras: bool) -> Result<Self> {
        let karras = force_karras || config.use_karras_sigmas == Some(true);
        let exponential = config.use_exponential_sigmas == Some(true);
        let beta = config.use_beta_sigmas == Some(true);
        if [karras, exponential, beta].iter().filter(|&&b| b).count() > 1 {
            return Err(config.bad(
                "only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas can be set",
            ));
        }
        if beta {
            return Err(config.bad("use_beta_sigmas is not supported"));
        }

        let log_linear = match config.interpolation_type.as_deref().unwrap_or("linear") {
            "linear" => false,
            "log_linear" => true,
            other => {
                return Err(config.bad(format!(
                    "interpolation_type {other:?} is not supported; expected linear or log_linear"
                )))
            }
        };
        let spacing = if karras {
            SigmaSpacing::Karras
        } else if exponential {
            SigmaSpacing::Exponential
        } else {
            SigmaSpacing::Interpolated
        };
        Ok(EulerOptions {
            log_linear,
            spacing,
            final_sigmas: config.final_sigmas()?,
            continuous: config.timestep_type.as_deref() == Some("continuous"),
        })
    }
}

/// Euler's inference timesteps: float32, unrounded for linspace spacing.
fn float_timesteps(
    spacing: TimestepSpacing,
    train_steps: usize,
    steps: usize,
    steps_offset: i64,
) -> Vec<f32> {
    match spacing {
        TimestepSpacing::Linspace => linspace(0.0, (train_steps - 1) as f64, steps, true)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train_steps / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f32 + steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => trailing(train_steps as f64, train_steps, steps)
            .into_iter()
            .map(|t| t as f32)
            .collect(),
    }
}

impl Solver for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Tensor {
        let sigma = self.sigma(step);
        sample / (sigma * sigma + 1.0).sqrt()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Stepped> {
        let sigma = self.sigma(step);
        let sigma_next = self.sigma(step + 1);

        let denoised = match self.prediction {
            PredictionType::Epsilon => sample.f_sub(&model_output.f_mul_scalar(sigma)?)?,
            PredictionType::VPrediction => {
                let scale = sigma * sigma + 1.0;
                model_output
                    .f_mul_scalar(-sigma / scale.sqrt())?
                    .f_add(&sample.f_div_scalar(scale)?)?
            }
            PredictionType::Sample => model_output.shallow_clone(),
        };
        let derivative = sample.f_sub(&denoised)?.f_div_scalar(sigma)?;

        let prev_sample = if self.ancestral {
            let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
                / (sigma * sigma))
                .max(0.0)
                .sqrt();
            let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up)
                .max(0.0)
                .sqrt();
            let drift = sample.f_add(&derivative.f_mul_scalar(sigma_down - sigma)?)?;
            drift.f_add(&noise()?.f_mul_scalar(sigma_up)?)?
        } else {
            sample.f_add(&derivative.f_mul_scalar(sigma_next - sigma)?)?
        };
        Ok(Stepped {
            prev_sample,
            denoised,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Tensor {
        original + noise * self.sigma(step)
    }
}
