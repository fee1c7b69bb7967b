//! The `/imagine` prompt language: Midjourney-style text with trailing parameters, parsed
//! into validated [`JobSpec`]s. Pure functions only: no I/O, clock or randomness.
//!
//! # The language
//!
//! ```text
//! a {red, blue} car::2 city at night::0.5 --ar 16:9 --no text, watermark --chaos 20
//! ```
//!
//! **Permutations.** `{a, b}` makes one prompt per alternative; several groups make their
//! cartesian product (the first group varying slowest) and groups may nest. Alternatives are
//! trimmed and may be empty. Expansion happens before anything else is read, so braces may
//! hold parameters: `--ar {1:1, 16:9}`. `\{`, `\}` and `\,` are literal characters.
//!
//! **Parameters.** The prompt text ends at the first word that is a flag: `--name`, or a long
//! dash `—name` / en dash `–name` as phones type them. Flag names are case-insensitive. Each
//! flag takes one value, except `--no` and `--negative`, which take the words up to the next
//! flag, and `--expand`, which may stand alone. Any other word after the parameters is an
//! error. A flag may be given once, except `--no`, whose items accumulate.
//!
//! | flag | value | effect |
//! |---|---|---|
//! | `--ar`, `--aspect` | `W:H`, whole numbers, at most [`Limits::max_aspect`] either way | size, see [`aspect_size`] |
//! | `--seed` | 0–4294967295 | seed of the first image; absent: the caller picks one |
//! | `--no` | `a, b, …` | each item joins the negative prompt |
//! | `--negative` | text | the negative prompt, before the `--no` items |
//! | `--chaos`, `--c` | 0–100 (default 0) | per-image guidance spread, see [`image_guidance`] |
//! | `--stylize`, `--s` | 0–1000 (default 100) | guidance scale, see [`stylize_guidance`] |
//! | `--quality`, `--q` | .25, .5, 1, 2 (default 1) | steps, see [`quality_steps`] |
//! | `--steps` | 1–[`Limits::max_steps`] | steps, directly; not with `--quality` |
//! | `--stop` | 10–100 (default 100) | percent of steps run before decoding, see [`stop_steps`] |
//! | `--sampler` | a name in [`Limits::samplers`] | sampler (case-insensitive, `-` = `_`) |
//! | `--model` | a name in [`Limits::models`] | model (case-insensitive) |
//! | `--expand` | alone, `on` or `off` | a text model continues the prompt before rendering; only when [`Limits::expansion`] |
//! | `--repeat`, `--r` | 1–[`Limits::max_repeat`] | that many jobs of the prompt |
//!
//! **Multi-prompts.** `::` splits the prompt text into parts; a number right after `::` is
//! the weight of the part before it (`hot dog::1.5 food::-0.5`), 1 when absent. Weights lie
//! in −100..=100 and must add up to a positive total.
//!
//! **Jobs.** Each permutation makes `--repeat` jobs; all of them together may not exceed
//! [`Limits::max_jobs`]. Jobs of a repeat with an explicit seed `s` get seeds `s`, `s + 4`,
//! `s + 8`, … (wrapping), so their grids differ; permutations keep the same seed, so they
//! can be compared.
//!
//! **Text.** Prompt text is trimmed and runs of whitespace collapse to one space. The prompt
//! may not be empty and neither it nor the negative prompt may exceed
//! [`Limits::max_prompt_chars`].
//!
//! Every refusal is a [`PromptError`] whose message names the token, its position and what
//! is allowed.

mod error;
mod expand;
mod lexer;
mod limits;
mod mapping;
mod multiprompt;
mod params;
mod spec;

pub use error::PromptError;
pub use limits::Limits;
pub use mapping::{
    aspect_size, image_guidance, quality_steps, stop_steps, stylize_guidance, GRID_IMAGES,
    MAX_CHAOS_SPREAD, QUALITIES, SIZE_STEP,
};
pub use spec::{JobSpec, PromptPart};

use expand::Template;
use lexer::{collapse, locate, text, words, Located};

/// The `--stylize` used when none is given, as in Midjourney.
pub const DEFAULT_STYLIZE: u16 = 100;

/// Permutations over the job cap still worth expanding, to count their repeats exactly for
/// the error message.
const COUNTABLE_PERMUTATIONS: u64 = 1000;

/// Characters worth expanding for the same purpose.
const COUNTABLE_CHARS: u64 = 1 << 20;

/// Parses an `/imagine` prompt into one spec per job: each permutation, `--repeat` times, in
/// order. Seeds are `None` unless `--seed` was given; fill them with [`JobSpec::fill_seed`].
pub fn parse(input: &str, limits: &Limits) -> Result<Vec<JobSpec>, PromptError> {
    let chars = locate(input);
    let template = Template::parse(&chars)?;
    let permutations = template.count();
    let max = limits.max_jobs;
    let countable = permutations <= u64::from(max)
        || (permutations <= COUNTABLE_PERMUTATIONS
            && permutations.saturating_mul(chars.len() as u64) <= COUNTABLE_CHARS);
    if !countable {
        return Err(PromptError::TooManyJobs {
            jobs: permutations,
            at_least: true,
            max,
        });
    }

    let prompts = template
        .expand()
        .iter()
        .map(|prompt| parse_prompt(prompt, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let jobs: u64 = prompts.iter().map(|(_, repeat)| u64::from(*repeat)).sum();
    if jobs > u64::from(max) {
        return Err(PromptError::TooManyJobs {
            jobs,
            at_least: false,
            max,
        });
    }

    let mut specs = Vec::new();
    for (spec, repeat) in prompts {
        for index in 0..repeat {
            let offset = index.wrapping_mul(GRID_IMAGES.into());
            let seed = spec.seed.map(|seed| seed.wrapping_add(offset));
            specs.push(JobSpec {
                seed,
                ..spec.clone()
            });
        }
    }
    Ok(specs)
}

/// One expanded prompt's spec and its repeat count.
fn parse_prompt(chars: &[Located], limits: &Limits) -> Result<(JobSpec, u32), PromptError> {
    let words = words(chars);
    let first_flag = words.iter().position(|word| word.flag_name().is_some());
    let (prompt_end, params) = match first_flag.and_then(|index| words.get(index..)) {
        Some(flags @ [first, ..]) => (first.start, params::parse(flags, limits)?),
        _ => (chars.len(), params::Params::default()),
    };

    let prompt = multiprompt::parse(chars.get(..prompt_end).unwrap_or_default())?;
    if prompt.is_empty() {
        return Err(PromptError::EmptyPrompt);
    }

    let mut negative: Vec<String> = params.negative.into_iter().collect();
    negative.extend(params.no);
    let negative = negative.join(", ");
    let aspect = params.aspect.unwrap_or((1, 1));
    let (width, height) = aspect_size(aspect, (limits.native_width, limits.native_height));
    let quality = params.quality.unwrap_or(1.0);
    let steps = params
        .steps
        .unwrap_or_else(|| quality_steps(limits.base_steps, quality).min(limits.max_steps))
        .max(1);
    let stylize = params.stylize.unwrap_or(limits.default_stylize);
    let spec = JobSpec {
        prompt,
        negative,
        width,
        height,
        aspect,
        seed: params.seed,
        steps,
        stop_percent: params.stop.unwrap_or(100),
        guidance: stylize_guidance(stylize),
        stylize,
        chaos: params.chaos.unwrap_or(0),
        quality,
        sampler: params
            .sampler
            .unwrap_or_else(|| limits.default_sampler.clone()),
        model: params.model.unwrap_or_else(|| limits.default_model.clone()),
        raw: collapse(&text(chars)),
        expand: params.expand,
    };

    let max = limits.max_prompt_chars;
    let chars = spec.positive_text().chars().count();
    if chars > max {
        return Err(PromptError::PromptTooLong { chars, max });
    }
    let chars = spec.negative.chars().count();
    if chars > max {
        return Err(PromptError::NegativeTooLong { chars, max });
    }
    Ok((spec, params.repeat.unwrap_or(1)))
}
