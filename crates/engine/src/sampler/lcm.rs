//! LCM: Luo et al. 2023, "Latent Consistency Models: Synthesizing High-Resolution Images with
//! Few-Step Inference", multistep consistency sampling, as diffusers' `LCMScheduler`.

use tch::Tensor;

use super::config::{Class, PredictionType, SchedulerConfig};
use super::schedule::{alphas_cumprod, at, linspace};
use super::{lincomb, Solver, Stepped};
use crate::{Error, Result};

/// The consistency model's data standard deviation (the paper's sigma_data).
const SIGMA_DATA: f64 = 0.5;

pub(crate) struct Lcm {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    prediction: PredictionType,
    clip_range: Option<f64>,
    timestep_scaling: f64,
}

impl Lcm {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        config.refuse_thresholding()?;
        let prediction = config.prediction_type()?;
        let alphas_cumprod = alphas_cumprod(config, Class::Lcm)?;

        let train_steps = config.num_train_timesteps();
        let original_steps = config.original_inference_steps.unwrap_or(50);
        if original_steps == 0 || original_steps > train_steps {
            return Err(config.bad(format!(
                "original_inference_steps {original_steps} must be between 1 and \
                 num_train_timesteps ({train_steps})"
            )));
        }
        if steps > original_steps {
            return Err(Error::InvalidRequest(format!(
                "lcm takes at most {original_steps} steps with this model (its \
                 original_inference_steps); got {steps}"
            )));
        }

        // The distillation schedule: every k-th training step, ending at k - 1.
        let k = (train_steps / original_steps) as i64;
        let origin: Vec<i64> = (1..=original_steps as i64)
            .rev()
            .map(|i| i * k - 1)
            .collect();
        let timesteps: Vec<f64> = linspace(0.0, origin.len() as f64, steps, false)
            .into_iter()
            .map(|i| origin[i.floor() as usize] as f64)
            .collect();
        if let Some(&t) = timesteps
            .iter()
            .find(|&&t| at(&alphas_cumprod, t as i64).is_none())
        {
            return Err(config.bad(format!(
                "timestep {t} is outside the {}-step noise schedule (trained_betas too short?)",
                alphas_cumprod.len()
            )));
        }

        Ok(Lcm {
            alphas_cumprod,
            timesteps,
            prediction,
            clip_range: config.clip_range(Class::Lcm),
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0),
        })
    }

    fn alpha(&self, timestep: f64) -> f64 {
        at(&self.alphas_cumprod, timestep as i64).map_or(1.0, f64::from)
    }
}

impl Solver for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Stepped> {
        let timestep = self.timesteps[step];
        let is_last = step + 1 == self.timesteps.len();
        let alpha = self.alpha(timestep);
        let beta = 1.0 - alpha;

        // Boundary-condition scalings: c_skip -> 1 and c_out -> 0 as t -> 0.
        let scaled = timestep * self.timestep_scaling;
        let c_skip = SIGMA_DATA.powi(2) / (scaled * scaled + SIGMA_DATA.powi(2));
        let c_out = scaled / (scaled * scaled + SIGMA_DATA.powi(2)).sqrt();

        let predicted = match self.prediction {
            PredictionType::Epsilon => sample
                .f_sub(&model_output.f_mul_scalar(beta.sqrt())?)?
                .f_div_scalar(alpha.sqrt())?,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => {
                lincomb(alpha.sqrt(), sample, -beta.sqrt(), model_output)?
            }
        };
        let predicted = match self.clip_range {
            Some(range) => predicted.f_clamp(-range, range)?,
            None => predicted,
        };
        let denoised = lincomb(c_out, &predicted, c_skip, sample)?;

        let prev_sample = if is_last {
            denoised.shallow_clone()
        } else {
            let alpha_prev = self.alpha(self.timesteps[step + 1]);
            lincomb(
                alpha_prev.sqrt(),
                &denoised,
                (1.0 - alpha_prev).sqrt(),
                &noise()?,
            )?
        };
        Ok(Stepped {
            prev_sample,
            denoised,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Tensor {
        let Some(&timestep) = self.timesteps.get(step) else {
            return original.shallow_clone();
        };
        let alpha = self.alpha(timestep);
        original * alpha.sqrt() + noise * (1.0 - alpha).sqrt()
    }
}
