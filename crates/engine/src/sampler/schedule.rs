//! Noise schedules and the numpy arithmetic diffusers builds them with.
//!
//! diffusers computes the training tables (`betas`, `alphas_cumprod`) with float32 torch ops
//! and the inference schedules with float64 numpy, casting back to float32 at set points.
//! Integer timesteps must come out identical, so the tables are built with the same libtorch
//! ops on the CPU and the numpy helpers below follow numpy's own formulas (`linspace`,
//! `arange`, `interp`, round-half-to-even) rather than the textbook ones.

use tch::{Device, Kind, Tensor};

use super::config::{BetaSchedule, Class, SchedulerConfig};
use crate::Result;

const CPU_F32: (Kind, Device) = (Kind::Float, Device::Cpu);

/// `alphas_cumprod` of the training schedule, in float32 as diffusers holds it.
pub(crate) fn alphas_cumprod(config: &SchedulerConfig, class: Class) -> Result<Vec<f32>> {
    let steps = config.num_train_timesteps();
    let betas = match &config.trained_betas {
        Some(trained) => {
            let trained: Vec<f32> = trained.iter().map(|&b| b as f32).collect();
            Tensor::f_from_slice(&trained)?
        }
        None => {
            let start = config.beta_start(class);
            let end = config.beta_end(class);
            match config.beta_schedule(class)? {
                BetaSchedule::Linear => Tensor::f_linspace(start, end, steps as i64, CPU_F32)?,
                BetaSchedule::ScaledLinear => {
                    Tensor::f_linspace(start.powf(0.5), end.powf(0.5), steps as i64, CPU_F32)?
                        .f_pow_tensor_scalar(2)?
                }
                BetaSchedule::SquaredCosCapV2 => Tensor::f_from_slice(&cosine_betas(steps))?,
            }
        }
    };
    if betas.numel() < 2 {
        return Err(config.bad("the noise schedule needs at least 2 training steps"));
    }

    let betas = if config.rescale_betas_zero_snr() {
        rescale_zero_terminal_snr(&betas)?
    } else {
        betas
    };

    let alphas_cumprod = betas.f_rsub_scalar(1.0)?.f_cumprod(0, Kind::Float)?;
    Ok(Vec::<f32>::try_from(&alphas_cumprod)?)
}

/// The cosine schedule of Nichol and Dhariwal 2021, betas capped at 0.999.
fn cosine_betas(steps: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..steps)
        .map(|i| {
            let t1 = i as f64 / steps as f64;
            let t2 = (i + 1) as f64 / steps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps Are Flawed",
/// Algorithm 1: shift and scale `sqrt(alphas_cumprod)` so the last step has zero SNR.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Result<Tensor> {
    let alphas_bar_sqrt = betas
        .f_rsub_scalar(1.0)?
        .f_cumprod(0, Kind::Float)?
        .f_sqrt()?;
    let len = alphas_bar_sqrt.size()[0];
    let first = alphas_bar_sqrt.f_get(0)?;
    let last = alphas_bar_sqrt.f_get(len - 1)?;

    let scale = first.f_div(&first.f_sub(&last)?)?;
    let alphas_bar = alphas_bar_sqrt
        .f_sub(&last)?
        .f_mul(&scale)?
        .f_pow_tensor_scalar(2)?;

    let ratios = alphas_bar
        .f_narrow(0, 1, len - 1)?
        .f_div(&alphas_bar.f_narrow(0, 0, len - 1)?)?;
    let alphas = Tensor::f_cat(&[alphas_bar.f_narrow(0, 0, 1)?, ratios], 0)?;
    Ok(alphas.f_rsub_scalar(1.0)?)
}

/// The sigma of each training step, `sqrt((1 - alphas_cumprod) / alphas_cumprod)`, in float32.
pub(crate) fn sigma_table(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `log` of the sigma table; numpy takes it in float32.
pub(crate) fn log_sigma_table(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| (s as f64).ln() as f32).collect()
}

/// Looks a timestep up the way Python indexes: `-1` is the last entry. diffusers' trailing
/// spacing produces a `-1` timestep for some step counts, and its tables are then read from
/// the end.
pub(crate) fn at(table: &[f32], timestep: i64) -> Option<f32> {
    let len = table.len() as i64;
    let index = if timestep < 0 {
        len + timestep
    } else {
        timestep
    };
    (0..len).contains(&index).then(|| table[index as usize])
}

/// `numpy.linspace` in float64.
pub(crate) fn linspace(start: f64, stop: f64, num: usize, endpoint: bool) -> Vec<f64> {
    let div = if endpoint { num.saturating_sub(1) } else { num };
    let delta = stop - start;
    let mut values: Vec<f64> = if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            (0..num)
                .map(|i| i as f64 / div as f64 * delta + start)
                .collect()
        } else {
            (0..num).map(|i| i as f64 * step + start).collect()
        }
    } else {
        (0..num).map(|i| i as f64 * delta + start).collect()
    };
    if endpoint && num > 1 {
        values[num - 1] = stop;
    }
    values
}

/// `numpy.arange` with a float step: the length is `ceil((stop - start) / step)` and the
/// entries are `start + i * d`, where `d` is re-derived from the first two entries.
/// diffusers' "trailing" spacing: `steps` timesteps counting down from `start` in strides of
/// `train_steps / steps`, rounded half to even, minus one.
pub(crate) fn trailing(start: f64, train_steps: usize, steps: usize) -> Vec<i64> {
    let ratio = train_steps as f64 / steps as f64;
    arange(start, 0.0, -ratio)
        .into_iter()
        .map(|t| t.round_ties_even() as i64 - 1)
        .collect()
}

pub(crate) fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `numpy.interp(x, arange(len(table)), table)`.
pub(crate) fn interp_on_index(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x.is_nan() {
        return x;
    }
    if x < 0.0 {
        return table[0] as f64;
    }
    if x >= last as f64 {
        return table[last] as f64;
    }
    let j = x.floor() as usize;
    let low = table[j] as f64;
    if x == j as f64 {
        return low;
    }
    let slope = table[j + 1] as f64 - low;
    slope * (x - j as f64) + low
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma, linearly
/// interpolated in the table, equals `log(sigma)`.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // numpy takes the first argmax of a running count of table entries at or below
    // log_sigma: the last such entry for a monotonic table, or 0 when there is none.
    let mut count = 0usize;
    let mut best = (0usize, 0usize);
    for (i, &l) in log_sigmas.iter().enumerate() {
        if log_sigma - l as f64 >= 0.0 {
            count += 1;
        }
        if count > best.1 {
            best = (i, count);
        }
    }
    let low_index = best.0.min(log_sigmas.len() - 2);
    let high_index = low_index + 1;
    let low = log_sigmas[low_index] as f64;
    let high = log_sigmas[high_index] as f64;

    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_index as f64 + w * high_index as f64
}

/// Karras et al. 2022, eq. 5 with rho = 7: sigmas evenly spaced in `sigma^(1/rho)`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, steps, true)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// Sigmas evenly spaced in `log(sigma)`.
pub(crate) fn exponential_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    linspace(sigma_max.ln(), sigma_min.ln(), steps, true)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// torch's float32 `linspace(log_start, log_end, steps).exp()`, which diffusers' Euler uses
/// for `interpolation_type = "log_linear"`.
pub(crate) fn log_linear_sigmas(log_start: f32, log_end: f32, steps: usize) -> Result<Vec<f64>> {
    let sigmas =
        Tensor::f_linspace(log_start as f64, log_end as f64, steps as i64, CPU_F32)?.f_exp()?;
    Ok(Vec::<f32>::try_from(&sigmas)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// `log(alpha_t) - log(sigma_t)` per training step, in float32 torch arithmetic, as the
/// DPM-Solver clipping threshold is compared against it.
pub(crate) fn lambda_table(alphas_cumprod: &[f32]) -> Result<Vec<f32>> {
    let alphas_cumprod = Tensor::f_from_slice(alphas_cumprod)?;
    let alpha = alphas_cumprod.f_sqrt()?;
    let sigma = alphas_cumprod.f_rsub_scalar(1.0)?.f_sqrt()?;
    let lambda = alpha.f_log()?.f_sub(&sigma.f_log()?)?;
    Ok(Vec::<f32>::try_from(&lambda)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_matches_numpy_length_quirk() {
        // numpy.arange(1000, 0, -1000 / 61) has 62 entries, the last one just below zero.
        let values = arange(1000.0, 0.0, -1000.0 / 61.0);
        assert_eq!(values.len(), 62);
        assert!(values[61].abs() < 1e-9);
    }

    #[test]
    fn linspace_ends_exactly() {
        let values = linspace(0.0, 999.0, 7, true);
        assert_eq!(values[0], 0.0);
        assert_eq!(values[6], 999.0);
        assert_eq!(linspace(0.0, 1.0, 1, true), vec![0.0]);
    }

    #[test]
    fn interp_hits_table_entries() {
        let table = [1.0f32, 2.0, 4.0];
        assert_eq!(interp_on_index(1.0, &table), 2.0);
        assert_eq!(interp_on_index(1.5, &table), 3.0);
        assert_eq!(interp_on_index(-1.0, &table), 1.0);
        assert_eq!(interp_on_index(9.0, &table), 4.0);
    }
}
