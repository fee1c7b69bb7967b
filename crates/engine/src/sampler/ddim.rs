//! DDIM: Song et al. 2020, "Denoising Diffusion Implicit Models", deterministic (eta = 0), as
//! diffusers' `DDIMScheduler`.

use tch::Tensor;

use super::config::{Class, PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{alphas_cumprod, at, linspace, trailing};
use super::{lincomb, Solver, Stepped};
use crate::{Error, Result};

pub(crate) struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// diffusers steps back by `num_train_timesteps // steps` whatever the spacing, so with
    /// linspace or trailing spacing the "previous" timestep is not the next one run.
    stride: i64,
    prediction: PredictionType,
    clip_range: Option<f64>,
}

impl Ddim {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        config.refuse_thresholding()?;
        let prediction = config.prediction_type()?;
        let clip_range = config.clip_range(Class::Ddim);
        let alphas_cumprod = alphas_cumprod(config, Class::Ddim)?;
        let final_alpha_cumprod = if config.set_alpha_to_one() {
            1.0
        } else {
            alphas_cumprod[0]
        };

        let train_steps = config.num_train_timesteps();
        let spacing = config.timestep_spacing(Class::Ddim)?;
        let timesteps = integer_timesteps(spacing, train_steps, steps, config.steps_offset());
        if let Some(&t) = timesteps
            .iter()
            .find(|&&t| at(&alphas_cumprod, t).is_none())
        {
            return Err(Error::InvalidRequest(format!(
                "ddim with {steps} steps reaches timestep {t}, outside the model's {}-step noise \
                 schedule (check steps_offset in the scheduler config)",
                alphas_cumprod.len()
            )));
        }

        Ok(Ddim {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            stride: (train_steps / steps) as i64,
            prediction,
            clip_range,
        })
    }

    fn alpha_at(&self, step: usize) -> f64 {
        self.timesteps
            .get(step)
            .and_then(|&t| at(&self.alphas_cumprod, t as i64))
            .map_or(1.0, f64::from)
    }
}

/// DDIM's inference timesteps, rounded to integers half-to-even as numpy rounds.
fn integer_timesteps(
    spacing: TimestepSpacing,
    train_steps: usize,
    steps: usize,
    steps_offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => linspace(0.0, (train_steps - 1) as f64, steps, true)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (train_steps / steps) as i64;
            (0..steps as i64)
                .rev()
                .map(|i| i * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => trailing(train_steps as f64, train_steps, steps),
    }
}

impl Solver for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _noise: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Stepped> {
        let timestep = self.timesteps[step] as i64;
        let previous = timestep - self.stride;
        let alpha = self.alpha_at(step);
        let alpha_prev = match at(&self.alphas_cumprod, previous) {
            Some(a) if previous >= 0 => a as f64,
            _ => self.final_alpha_cumprod as f64,
        };
        let beta = 1.0 - alpha;

        let (denoised, epsilon) = match self.prediction {
            PredictionType::Epsilon => (
                sample
                    .f_sub(&model_output.f_mul_scalar(beta.sqrt())?)?
                    .f_div_scalar(alpha.sqrt())?,
                model_output.shallow_clone(),
            ),
            PredictionType::Sample => (
                model_output.shallow_clone(),
                sample
                    .f_sub(&model_output.f_mul_scalar(alpha.sqrt())?)?
                    .f_div_scalar(beta.sqrt())?,
            ),
            PredictionType::VPrediction => (
                lincomb(alpha.sqrt(), sample, -beta.sqrt(), model_output)?,
                lincomb(alpha.sqrt(), model_output, beta.sqrt(), sample)?,
            ),
        };
        let denoised = match self.clip_range {
            Some(range) => denoised.f_clamp(-range, range)?,
            None => denoised,
        };

        let prev_sample = lincomb(
            alpha_prev.sqrt(),
            &denoised,
            (1.0 - alpha_prev).sqrt(),
            &epsilon,
        )?;
        Ok(Stepped {
            prev_sample,
            denoised,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Tensor {
        if step >= self.timesteps.len() {
            return original.shallow_clone();
        }
        let alpha = self.alpha_at(step);
        original * alpha.sqrt() + noise * (1.0 - alpha).sqrt()
    }
}
