//! DPM-Solver++: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
//! Probabilistic Models", multistep form (orders 1 to 3, midpoint or Heun second-order
//! correction, and the SDE variant), as diffusers' `DPMSolverMultistepScheduler`. The
//! original DPM-Solver (Lu et al. 2022, NeurIPS) comes along as `algorithm_type = "dpmsolver"`.

use tch::Tensor;

use super::config::{Class, FinalSigmas, PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{
    alphas_cumprod, exponential_sigmas, interp_on_index, karras_sigmas, lambda_table, linspace,
    log_sigma_table, sigma_table, sigma_to_t, trailing,
};
use super::{lincomb, Solver, Stepped};
use crate::Result;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// Solves for the noise prediction.
    DpmSolver,
    /// Solves for the data prediction (the "++" of DPM-Solver++).
    DpmSolverPp,
    SdeDpmSolver,
    SdeDpmSolverPp,
}

impl Algorithm {
    fn predicts_data(self) -> bool {
        matches!(self, Algorithm::DpmSolverPp | Algorithm::SdeDpmSolverPp)
    }

    fn is_sde(self) -> bool {
        matches!(self, Algorithm::SdeDpmSolver | Algorithm::SdeDpmSolverPp)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SigmaSpacing {
    Interpolated,
    Karras,
    LuLambdas,
    Exponential,
}

/// What a named sampler forces on top of the model's config, as diffusers'
/// `from_config(config, **overrides)`.
#[derive(Clone, Copy, Default)]
pub(crate) struct DpmOverrides {
    pub karras: bool,
    pub sde: bool,
}

pub(crate) struct Dpm {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: PredictionType,
    algorithm: Algorithm,
    solver_type: SolverType,
    solver_order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    /// The converted model outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Tensor>,
    lower_order_nums: usize,
}

impl Dpm {
    pub(crate) fn new(
        config: &SchedulerConfig,
        steps: usize,
        overrides: DpmOverrides,
    ) -> Result<Self> {
        config.refuse_thresholding()?;
        let prediction = config.prediction_type()?;
        let algorithm = if overrides.sde {
            Algorithm::SdeDpmSolverPp
        } else {
            parse_algorithm(config)?
        };
        let solver_type = parse_solver_type(config)?;
        let final_sigmas = config.final_sigmas()?;
        if !algorithm.predicts_data() && final_sigmas == FinalSigmas::Zero {
            return Err(config.bad(
                "final_sigmas_type \"zero\" needs algorithm_type dpmsolver++ or sde-dpmsolver++; \
                 set final_sigmas_type to \"sigma_min\"",
            ));
        }
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            return Err(config.bad(format!(
                "solver_order {solver_order} is not supported; expected 1, 2 or 3"
            )));
        }
        if solver_order == 3 && algorithm == Algorithm::SdeDpmSolver {
            return Err(config.bad("algorithm_type sde-dpmsolver has no third-order solver"));
        }
        if matches!(
            config.variance_type.as_deref(),
            Some("learned") | Some("learned_range")
        ) {
            return Err(config.bad("variance_type learned is not supported"));
        }
        if config.use_flow_sigmas == Some(true) {
            return Err(config.bad("use_flow_sigmas is not supported"));
        }
        let spacing = sigma_spacing(config, overrides.karras)?;

        let mut alphas_cumprod = alphas_cumprod(config, Class::DpmSolverMultistep)?;
        if config.rescale_betas_zero_snr() {
            // diffusers nudges the zero terminal alpha up so the largest sigma stays finite.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let table = sigma_table(&alphas_cumprod);
        let log_table = log_sigma_table(&table);
        let smallest = table[0] as f64;
        let largest = table[table.len() - 1] as f64;

        let train_steps = config.num_train_timesteps();
        let last_timestep = train_steps as i64 - clipped_steps(config, &alphas_cumprod)?;
        let mut timesteps = integer_timesteps(
            config.timestep_spacing(Class::DpmSolverMultistep)?,
            train_steps,
            last_timestep,
            steps,
            config.steps_offset(),
        );

        // diffusers rounds timesteps fitted to Karras or Lu sigmas, except on the cosine
        // schedule, and then truncates every timestep to an integer.
        let cosine = config.beta_schedule.as_deref() == Some("squaredcos_cap_v2");
        let fitted = |sigmas: &[f64], round: bool| -> Vec<i64> {
            sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_table);
                    (if round && !cosine {
                        t.round_ties_even()
                    } else {
                        t
                    }) as i64
                })
                .collect()
        };
        let sigma_min = config.sigma_min.unwrap_or(smallest);
        let sigma_max = config.sigma_max.unwrap_or(largest);
        let sigmas: Vec<f64> = match spacing {
            SigmaSpacing::Interpolated => timesteps
                .iter()
                .map(|&t| interp_on_index(t as f64, &table))
                .collect(),
            SigmaSpacing::Karras => {
                let sigmas = karras_sigmas(sigma_min, sigma_max, steps);
                timesteps = fitted(&sigmas, true);
                sigmas
            }
            SigmaSpacing::LuLambdas => {
                let lambda_min = log_table[0] as f64;
                let lambda_max = log_table[log_table.len() - 1] as f64;
                let sigmas: Vec<f64> = linspace(0.0, 1.0, steps, true)
                    .into_iter()
                    .map(|ramp| (lambda_max + ramp * (lambda_min - lambda_max)).exp())
                    .collect();
                timesteps = fitted(&sigmas, true);
                sigmas
            }
            SigmaSpacing::Exponential => {
                let sigmas = exponential_sigmas(sigma_min, sigma_max, steps);
                timesteps = fitted(&sigmas, false);
                sigmas
            }
        };

        let final_sigma = match final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => table[0],
        };
        let sigmas = sigmas
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(final_sigma))
            .collect();

        Ok(Dpm {
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            sigmas,
            prediction,
            algorithm,
            solver_type,
            solver_order,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            final_sigma_zero: final_sigmas == FinalSigmas::Zero,
            model_outputs: Vec::with_capacity(solver_order),
            lower_order_nums: 0,
        })
    }

    /// `(alpha_t, sigma_t)` of the variance-preserving process at table sigma `index`.
    fn alpha_sigma(&self, index: usize) -> (f64, f64) {
        let sigma = self.sigmas.get(index).map_or(0.0, |&s| s as f64);
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }

    fn lambda(&self, index: usize) -> f64 {
        let (alpha, sigma) = self.alpha_sigma(index);
        alpha.ln() - sigma.ln()
    }

    /// The model output turned into what the solver integrates (the data prediction for "++",
    /// the noise otherwise), and the data prediction for previews.
    fn convert(&self, model_output: &Tensor, step: usize, sample: &Tensor) -> Result<Converted> {
        let (alpha, sigma) = self.alpha_sigma(step);
        let data = match self.prediction {
            PredictionType::Epsilon => sample
                .f_sub(&model_output.f_mul_scalar(sigma)?)?
                .f_div_scalar(alpha)?,
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => lincomb(alpha, sample, -sigma, model_output)?,
        };
        if self.algorithm.predicts_data() {
            return Ok(Converted {
                solved: data.shallow_clone(),
                data,
            });
        }
        let noise = match self.prediction {
            PredictionType::Epsilon => model_output.shallow_clone(),
            PredictionType::Sample => sample
                .f_sub(&model_output.f_mul_scalar(alpha)?)?
                .f_div_scalar(sigma)?,
            PredictionType::VPrediction => lincomb(alpha, model_output, sigma, sample)?,
        };
        Ok(Converted {
            solved: noise,
            data,
        })
    }

    fn first_order(&self, step: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step + 1);
        let (alpha_s, sigma_s) = self.alpha_sigma(step);
        let h = self.lambda(step + 1) - self.lambda(step);
        let m = &self.model_outputs[self.model_outputs.len() - 1];

        let (x, d0, z) = match self.algorithm {
            Algorithm::DpmSolverPp => (sigma_t / sigma_s, -(alpha_t * ((-h).exp() - 1.0)), 0.0),
            Algorithm::DpmSolver => (alpha_t / alpha_s, -(sigma_t * (h.exp() - 1.0)), 0.0),
            Algorithm::SdeDpmSolverPp => (
                sigma_t / sigma_s * (-h).exp(),
                alpha_t * (1.0 - (-2.0 * h).exp()),
                sigma_t * (1.0 - (-2.0 * h).exp()).sqrt(),
            ),
            Algorithm::SdeDpmSolver => (
                alpha_t / alpha_s,
                -2.0 * (sigma_t * (h.exp() - 1.0)),
                sigma_t * ((2.0 * h).exp() - 1.0).sqrt(),
            ),
        };
        with_noise(lincomb(x, sample, d0, m)?, z, noise)
    }

    fn second_order(&self, step: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step + 1);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(step);
        let lambda_s0 = self.lambda(step);
        let h = self.lambda(step + 1) - lambda_s0;
        let r0 = (lambda_s0 - self.lambda(step - 1)) / h;
        let len = self.model_outputs.len();
        let (m0, m1) = (&self.model_outputs[len - 1], &self.model_outputs[len - 2]);

        let e_minus = (-h).exp() - 1.0;
        let e_plus = h.exp() - 1.0;
        let e_sde = 1.0 - (-2.0 * h).exp();
        let heun = self.solver_type == SolverType::Heun;
        // (coefficient of sample, of D0, of D1, of noise); D1 = (m0 - m1) / r0.
        let (x, d0, d1, z) = match self.algorithm {
            Algorithm::DpmSolverPp => (
                sigma_t / sigma_s0,
                -(alpha_t * e_minus),
                if heun {
                    alpha_t * (e_minus / h + 1.0)
                } else {
                    -0.5 * (alpha_t * e_minus)
                },
                0.0,
            ),
            Algorithm::DpmSolver => (
                alpha_t / alpha_s0,
                -(sigma_t * e_plus),
                if heun {
                    -(sigma_t * (e_plus / h - 1.0))
                } else {
                    -0.5 * (sigma_t * e_plus)
                },
                0.0,
            ),
            Algorithm::SdeDpmSolverPp => (
                sigma_t / sigma_s0 * (-h).exp(),
                alpha_t * e_sde,
                if heun {
                    alpha_t * (e_sde / (-2.0 * h) + 1.0)
                } else {
                    0.5 * (alpha_t * e_sde)
                },
                sigma_t * e_sde.sqrt(),
            ),
            Algorithm::SdeDpmSolver => (
                alpha_t / alpha_s0,
                -2.0 * (sigma_t * e_plus),
                if heun {
                    -2.0 * (sigma_t * (e_plus / h - 1.0))
                } else {
                    -(sigma_t * e_plus)
                },
                sigma_t * ((2.0 * h).exp() - 1.0).sqrt(),
            ),
        };
        let d1_tensor = m0.f_sub(m1)?.f_div_scalar(r0)?;
        let x_t = lincomb(x, sample, d0, m0)?.f_add(&d1_tensor.f_mul_scalar(d1)?)?;
        with_noise(x_t, z, noise)
    }

    fn third_order(&self, step: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step + 1);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(step);
        let lambda_s0 = self.lambda(step);
        let lambda_s1 = self.lambda(step - 1);
        let h = self.lambda(step + 1) - lambda_s0;
        let r0 = (lambda_s0 - lambda_s1) / h;
        let r1 = (lambda_s1 - self.lambda(step - 2)) / h;
        let len = self.model_outputs.len();
        let m0 = &self.model_outputs[len - 1];
        let m1 = &self.model_outputs[len - 2];
        let m2 = &self.model_outputs[len - 3];

        let d1_0 = m0.f_sub(m1)?.f_div_scalar(r0)?;
        let d1_1 = m1.f_sub(m2)?.f_div_scalar(r1)?;
        let spread = d1_0.f_sub(&d1_1)?;
        let d1 = d1_0.f_add(&spread.f_mul_scalar(r0 / (r0 + r1))?)?;
        let d2 = spread.f_div_scalar(r0 + r1)?;

        let e_minus = (-h).exp() - 1.0;
        let e_plus = h.exp() - 1.0;
        let e_sde = 1.0 - (-2.0 * h).exp();
        // (coefficient of sample, of D0, of D1, of D2, of noise).
        let (x, c0, c1, c2, z) = match self.algorithm {
            Algorithm::DpmSolverPp => (
                sigma_t / sigma_s0,
                -(alpha_t * e_minus),
                alpha_t * (e_minus / h + 1.0),
                -(alpha_t * ((e_minus + h) / (h * h) - 0.5)),
                0.0,
            ),
            Algorithm::DpmSolver => (
                alpha_t / alpha_s0,
                -(sigma_t * e_plus),
                -(sigma_t * (e_plus / h - 1.0)),
                -(sigma_t * ((e_plus - h) / (h * h) - 0.5)),
                0.0,
            ),
            Algorithm::SdeDpmSolverPp | Algorithm::SdeDpmSolver => (
                sigma_t / sigma_s0 * (-h).exp(),
                alpha_t * e_sde,
                alpha_t * (e_sde / (-2.0 * h) + 1.0),
                alpha_t * ((e_sde - 2.0 * h) / (2.0 * h).powi(2) - 0.5),
                sigma_t * e_sde.sqrt(),
            ),
        };
        let x_t = lincomb(x, sample, c0, m0)?
            .f_add(&d1.f_mul_scalar(c1)?)?
            .f_add(&d2.f_mul_scalar(c2)?)?;
        with_noise(x_t, z, noise)
    }
}

struct Converted {
    solved: Tensor,
    data: Tensor,
}

fn with_noise(x_t: Tensor, scale: f64, noise: Option<&Tensor>) -> Result<Tensor> {
    match noise {
        Some(noise) => Ok(x_t.f_add(&noise.f_mul_scalar(scale)?)?),
        None => Ok(x_t),
    }
}

fn parse_algorithm(config: &SchedulerConfig) -> Result<Algorithm> {
    match config.algorithm_type.as_deref().unwrap_or("dpmsolver++") {
        // diffusers maps DEIS configs onto DPM-Solver++.
        "dpmsolver++" | "deis" => Ok(Algorithm::DpmSolverPp),
        "dpmsolver" => Ok(Algorithm::DpmSolver),
        "sde-dpmsolver++" => Ok(Algorithm::SdeDpmSolverPp),
        "sde-dpmsolver" => Ok(Algorithm::SdeDpmSolver),
        other => Err(config.bad(format!(
            "algorithm_type {other:?} is not supported; expected dpmsolver++, dpmsolver, \
             sde-dpmsolver++ or sde-dpmsolver"
        ))),
    }
}

fn parse_solver_type(config: &SchedulerConfig) -> Result<SolverType> {
    match config.solver_type.as_deref().unwrap_or("midpoint") {
        // diffusers maps the UniPC and DEIS solver types onto midpoint.
        "midpoint" | "logrho" | "bh1" | "bh2" => Ok(SolverType::Midpoint),
        "heun" => Ok(SolverType::Heun),
        other => Err(config.bad(format!(
            "solver_type {other:?} is not supported; expected midpoint or heun"
        ))),
    }
}

fn sigma_spacing(config: &SchedulerConfig, force_karras: bool) -> Result<SigmaSpacing> {
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
    Ok(if karras {
        SigmaSpacing::Karras
    } else if config.use_lu_lambdas == Some(true) {
        SigmaSpacing::LuLambdas
    } else if exponential {
        SigmaSpacing::Exponential
    } else {
        SigmaSpacing::Interpolated
    })
}

/// How many of the noisiest training steps `lambda_min_clipped` cuts off.
fn clipped_steps(config: &SchedulerConfig, alphas_cumprod: &[f32]) -> Result<i64> {
    let threshold = config.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY);
    let mut lambdas = lambda_table(alphas_cumprod)?;
    lambdas.reverse();
    Ok(lambdas.partition_point(|&l| (l as f64) < threshold) as i64)
}

/// DPM-Solver's timesteps: `steps + 1` points with the last (t = 0) dropped, except for
/// trailing spacing.
fn integer_timesteps(
    spacing: TimestepSpacing,
    train_steps: usize,
    last_timestep: i64,
    steps: usize,
    steps_offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => linspace(0.0, (last_timestep - 1) as f64, steps + 1, true)
            .into_iter()
            .rev()
            .take(steps)
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = last_timestep.div_euclid(steps as i64 + 1);
            (1..=steps as i64)
                .rev()
                .map(|i| i * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => trailing(last_timestep as f64, train_steps, steps),
    }
}

impl Solver for Dpm {
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
        let len = self.timesteps.len();
        let short = self.lower_order_final && len < 15;
        let lower_order_final =
            step == len - 1 && (self.euler_at_final || short || self.final_sigma_zero);
        let lower_order_second = step + 2 == len && short;

        let converted = self.convert(model_output, step, sample)?;
        if self.model_outputs.len() == self.solver_order {
            drop(self.model_outputs.remove(0));
        }
        self.model_outputs.push(converted.solved);

        let noise = if self.algorithm.is_sde() {
            Some(noise()?)
        } else {
            None
        };
        let noise = noise.as_ref();

        let prev_sample =
            if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
                self.first_order(step, sample, noise)?
            } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
                self.second_order(step, sample, noise)?
            } else {
                self.third_order(step, sample, noise)?
            };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(Stepped {
            prev_sample,
            denoised: converted.data,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Tensor {
        let (alpha, sigma) = self.alpha_sigma(step.min(self.timesteps.len()));
        original * alpha + noise * sigma
    }
}
