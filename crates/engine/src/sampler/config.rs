//! A model's `scheduler/scheduler_config.json`, read the way diffusers' `from_config` reads it.
//!
//! The file is often written for another scheduler class than the one a user picks (SD 1.5
//! ships a PNDM config). Each sampler takes the keys its diffusers class knows and that
//! class's own default for every key the file lacks, so the fields here are all optional and
//! the defaults live in the accessors, keyed by [`Class`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::{Error, Result};

/// The diffusers scheduler class a sampler reproduces; defaults differ between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Ddim,
    EulerDiscrete,
    EulerAncestral,
    DpmSolverMultistep,
    Lcm,
}

/// What the UNet predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise that was added (SD 1.x, SD 2.x base).
    Epsilon,
    /// The velocity `alpha * noise - sigma * x0` (SD 2.x 768).
    VPrediction,
    /// The clean sample itself.
    Sample,
}

impl PredictionType {
    /// The name diffusers writes in `prediction_type`.
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
}

impl std::fmt::Display for PredictionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredCosCapV2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// The scheduler settings of a model. Every field is optional: a missing one takes the
/// default of the diffusers class the chosen sampler reproduces. Keys no sampler knows are
/// ignored.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    #[serde(deserialize_with = "lenient_f64")]
    pub beta_start: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<i64>,
    #[serde(deserialize_with = "null_is_false")]
    pub set_alpha_to_one: Option<bool>,
    #[serde(deserialize_with = "null_is_false")]
    pub clip_sample: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub clip_sample_range: Option<f64>,
    #[serde(deserialize_with = "null_is_false")]
    pub thresholding: Option<bool>,
    #[serde(deserialize_with = "null_is_false")]
    pub rescale_betas_zero_snr: Option<bool>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub final_sigmas_type: Option<String>,
    #[serde(deserialize_with = "null_is_false")]
    pub use_karras_sigmas: Option<bool>,
    #[serde(deserialize_with = "null_is_false")]
    pub use_exponential_sigmas: Option<bool>,
    #[serde(deserialize_with = "null_is_false")]
    pub use_beta_sigmas: Option<bool>,
    #[serde(deserialize_with = "null_is_false")]
    pub use_lu_lambdas: Option<bool>,
    #[serde(deserialize_with = "null_is_false")]
    pub use_flow_sigmas: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub sigma_min: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    pub sigma_max: Option<f64>,
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    #[serde(deserialize_with = "null_is_false")]
    pub lower_order_final: Option<bool>,
    #[serde(deserialize_with = "null_is_false")]
    pub euler_at_final: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub lambda_min_clipped: Option<f64>,
    pub variance_type: Option<String>,
    pub original_inference_steps: Option<usize>,
    #[serde(deserialize_with = "lenient_f64")]
    pub timestep_scaling: Option<f64>,
    #[serde(skip)]
    source: Option<PathBuf>,
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`; a file that is not valid JSON, or holds a value of the
    /// wrong type, is a `BadConfig` error naming the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config =
            Self::from_json(&text).map_err(|e| Error::bad_config(path, e.to_string()))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses the text of a `scheduler_config.json`. Python's `json` writes `-Infinity`,
    /// `Infinity` and `NaN` (diffusers does for `lambda_min_clipped`), which JSON proper lacks;
    /// they are accepted here. Keys listed in `_use_default_values` are dropped, as diffusers
    /// drops them, so that the chosen class's defaults apply.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let mut value: serde_json::Value = serde_json::from_str(&quote_non_finite(text))?;
        if let Some(map) = value.as_object_mut() {
            if let Some(serde_json::Value::Array(defaulted)) = map.remove("_use_default_values") {
                for key in defaulted.iter().filter_map(|k| k.as_str()) {
                    map.remove(key);
                }
            }
        }
        serde_json::from_value(value)
    }

    /// The file this config was read from, for error messages.
    pub fn source(&self) -> &Path {
        self.source
            .as_deref()
            .unwrap_or(Path::new("scheduler_config.json"))
    }

    /// What the model predicts. Every diffusers scheduler defaults to epsilon.
    pub fn prediction_type(&self) -> Result<PredictionType> {
        match self.prediction_type.as_deref() {
            None | Some("epsilon") => Ok(PredictionType::Epsilon),
            Some("v_prediction") => Ok(PredictionType::VPrediction),
            Some("sample") | Some("original_sample") => Ok(PredictionType::Sample),
            Some(other) => Err(self.bad(format!(
                "prediction_type {other:?} is not supported; expected epsilon, v_prediction or sample"
            ))),
        }
    }

    pub(crate) fn bad(&self, message: impl Into<String>) -> Error {
        Error::bad_config(self.source(), message)
    }

    pub(crate) fn num_train_timesteps(&self) -> usize {
        self.num_train_timesteps.unwrap_or(1000)
    }

    pub(crate) fn beta_start(&self, class: Class) -> f64 {
        let default = if class == Class::Lcm { 0.00085 } else { 0.0001 };
        self.beta_start.unwrap_or(default)
    }

    pub(crate) fn beta_end(&self, class: Class) -> f64 {
        let default = if class == Class::Lcm { 0.012 } else { 0.02 };
        self.beta_end.unwrap_or(default)
    }

    pub(crate) fn beta_schedule(&self, class: Class) -> Result<BetaSchedule> {
        let default = if class == Class::Lcm {
            "scaled_linear"
        } else {
            "linear"
        };
        match self.beta_schedule.as_deref().unwrap_or(default) {
            "linear" => Ok(BetaSchedule::Linear),
            "scaled_linear" => Ok(BetaSchedule::ScaledLinear),
            "squaredcos_cap_v2" => Ok(BetaSchedule::SquaredCosCapV2),
            other => Err(self.bad(format!(
                "beta_schedule {other:?} is not supported; expected linear, scaled_linear or squaredcos_cap_v2"
            ))),
        }
    }

    pub(crate) fn timestep_spacing(&self, class: Class) -> Result<TimestepSpacing> {
        let default = match class {
            Class::Ddim | Class::Lcm => "leading",
            _ => "linspace",
        };
        match self.timestep_spacing.as_deref().unwrap_or(default) {
            "linspace" => Ok(TimestepSpacing::Linspace),
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            other => Err(self.bad(format!(
                "timestep_spacing {other:?} is not supported; expected linspace, leading or trailing"
            ))),
        }
    }

    pub(crate) fn final_sigmas(&self) -> Result<FinalSigmas> {
        match self.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => Ok(FinalSigmas::Zero),
            "sigma_min" => Ok(FinalSigmas::SigmaMin),
            other => Err(self.bad(format!(
                "final_sigmas_type {other:?} is not supported; expected zero or sigma_min"
            ))),
        }
    }

    pub(crate) fn steps_offset(&self) -> i64 {
        self.steps_offset.unwrap_or(0)
    }

    pub(crate) fn rescale_betas_zero_snr(&self) -> bool {
        self.rescale_betas_zero_snr.unwrap_or(false)
    }

    pub(crate) fn set_alpha_to_one(&self) -> bool {
        self.set_alpha_to_one.unwrap_or(true)
    }

    /// The clip range applied to the predicted clean sample, if clipping is on.
    pub(crate) fn clip_range(&self, class: Class) -> Option<f64> {
        let default = class == Class::Ddim;
        self.clip_sample
            .unwrap_or(default)
            .then(|| self.clip_sample_range.unwrap_or(1.0))
    }

    /// Dynamic thresholding (Imagen) is meant for pixel-space models; we refuse it.
    pub(crate) fn refuse_thresholding(&self) -> Result<()> {
        if self.thresholding == Some(true) {
            return Err(self.bad(
                "thresholding is not supported (it is meant for pixel-space models); set it to false",
            ));
        }
        Ok(())
    }
}

/// An explicit `null` reaches the diffusers class as `None`, which it treats as false; only
/// a missing key takes the class default.
fn null_is_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    Ok(Some(
        Option::<bool>::deserialize(deserializer)?.unwrap_or(false),
    ))
}

/// Accepts a number, or one of the strings `quote_non_finite` makes of Python's non-finite
/// floats.
fn lenient_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Finite(f64),
        Named(String),
    }

    match Option::<Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Number::Finite(x)) => Ok(Some(x)),
        Some(Number::Named(name)) => match name.as_str() {
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            "NaN" => Ok(Some(f64::NAN)),
            _ => Err(serde::de::Error::custom(format!(
                "expected a number, found {name:?}"
            ))),
        },
    }
}

/// Wraps the bare tokens `Infinity`, `-Infinity` and `NaN` outside strings in quotes.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_floats_parse() {
        let config =
            SchedulerConfig::from_json(r#"{"lambda_min_clipped": -Infinity, "x": "NaN-ish"}"#)
                .unwrap();
        assert_eq!(config.lambda_min_clipped, Some(f64::NEG_INFINITY));
    }

    #[test]
    fn null_flags_are_false() {
        let config = SchedulerConfig::from_json(r#"{"clip_sample": null}"#).unwrap();
        assert_eq!(config.clip_range(Class::Ddim), None);
        assert_eq!(
            SchedulerConfig::default().clip_range(Class::Ddim),
            Some(1.0)
        );
    }

    #[test]
    fn defaulted_keys_are_dropped() {
        let config = SchedulerConfig::from_json(
            r#"{"timestep_spacing": "leading", "steps_offset": 1, "_use_default_values": ["timestep_spacing"]}"#,
        )
        .unwrap();
        assert_eq!(config.timestep_spacing, None);
        assert_eq!(config.steps_offset, Some(1));
    }
}
