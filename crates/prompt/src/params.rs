//! The `--name value` parameters that follow the prompt text.

use crate::error::PromptError;
use crate::lexer::{collapse, Word};
use crate::limits::Limits;
use crate::mapping::QUALITIES;

/// A parameter of the language, whatever name it was typed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    Aspect,
    Seed,
    No,
    Negative,
    Chaos,
    Stylize,
    Quality,
    Stop,
    Steps,
    Sampler,
    Model,
    Expand,
    Repeat,
}

/// Each parameter with its names, the first being the one shown to users.
const FLAGS: [(Flag, &[&str]); 13] = [
    (Flag::Aspect, &["ar", "aspect"]),
    (Flag::Seed, &["seed"]),
    (Flag::No, &["no"]),
    (Flag::Negative, &["negative"]),
    (Flag::Chaos, &["chaos", "c"]),
    (Flag::Stylize, &["stylize", "s"]),
    (Flag::Quality, &["quality", "q"]),
    (Flag::Stop, &["stop"]),
    (Flag::Steps, &["steps"]),
    (Flag::Sampler, &["sampler"]),
    (Flag::Model, &["model"]),
    (Flag::Expand, &["expand"]),
    (Flag::Repeat, &["repeat", "r"]),
];

/// The parameters for error messages: `--ar (--aspect), --seed, …`.
pub(crate) fn flag_list() -> String {
    let shown: Vec<String> = FLAGS
        .iter()
        .map(|(_, names)| {
            let mut names = names.iter().map(|name| format!("--{name}"));
            let main = names.next().unwrap_or_default();
            let aliases: Vec<String> = names.collect();
            if aliases.is_empty() {
                main
            } else {
                format!("{main} ({})", aliases.join(", "))
            }
        })
        .collect();
    shown.join(", ")
}

fn lookup(name: &str) -> Option<Flag> {
    FLAGS
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map(|(flag, _)| *flag)
}

/// What the value of `flag` must be, as the end of an error message.
fn expected(flag: Flag, limits: &Limits) -> String {
    match flag {
        Flag::Aspect => format!(
            "aspect ratio must be whole numbers W:H from 1:{0} to {0}:1, e.g. 16:9",
            limits.max_aspect
        ),
        Flag::Seed => format!("seed must be a whole number from 0 to {}", u32::MAX),
        Flag::No => "list what to leave out, separated by commas, e.g. --no text, watermark".into(),
        Flag::Negative => "give text to steer away from, e.g. --negative blurry".into(),
        Flag::Chaos => "chaos must be a whole number from 0 to 100".into(),
        Flag::Stylize => "stylize must be a whole number from 0 to 1000".into(),
        Flag::Quality => "quality must be one of .25, .5, 1 or 2".into(),
        Flag::Stop => "stop must be a whole number from 10 to 100".into(),
        Flag::Steps => format!(
            "steps must be a whole number from 1 to {}",
            limits.max_steps
        ),
        Flag::Sampler => format!("sampler must be one of {}", limits.samplers.join(", ")),
        Flag::Model => format!("model must be one of {}", limits.models.join(", ")),
        Flag::Expand if !limits.expansion => "prompt expansion is not set up on this server; \
             remove --expand (an admin can configure an expander model)"
            .into(),
        Flag::Expand => "write --expand alone, or --expand on / --expand off".into(),
        Flag::Repeat => format!(
            "repeat must be a whole number from 1 to {}",
            limits.max_repeat
        ),
    }
}

/// The parameters of one prompt, each `None` when not given.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Params {
    /// `--ar`, in lowest terms.
    pub aspect: Option<(u32, u32)>,
    /// `--seed`.
    pub seed: Option<u32>,
    /// The items of every `--no`, in order, without repeats.
    pub no: Vec<String>,
    /// `--negative`, whitespace collapsed.
    pub negative: Option<String>,
    /// `--chaos`.
    pub chaos: Option<u8>,
    /// `--stylize`.
    pub stylize: Option<u16>,
    /// `--quality`.
    pub quality: Option<f32>,
    /// `--stop`.
    pub stop: Option<u8>,
    /// `--steps`.
    pub steps: Option<u32>,
    /// `--sampler`, as spelled in the limits.
    pub sampler: Option<String>,
    /// `--model`, as spelled in the limits.
    pub model: Option<String>,
    /// `--expand`: on, off, or `None` for the user's default.
    pub expand: Option<bool>,
    /// `--repeat`.
    pub repeat: Option<u32>,
}

/// Reads parameters from `words`, the first of which is a flag.
pub(crate) fn parse(words: &[Word], limits: &Limits) -> Result<Params, PromptError> {
    let mut params = Params::default();
    let mut given: Vec<(Flag, String)> = Vec::new();
    let mut rest = words;
    while let Some((word, after)) = rest.split_first() {
        let values_end = after
            .iter()
            .position(|word| word.flag_name().is_some())
            .unwrap_or(after.len());
        let (values, next) = after.split_at(values_end);
        rest = next;

        let flag = word
            .flag_name()
            .and_then(|name| lookup(&name))
            .ok_or_else(|| PromptError::UnknownFlag {
                token: word.text.clone(),
                offset: word.offset,
            })?;
        if flag != Flag::No && given.iter().any(|(seen, _)| *seen == flag) {
            return Err(PromptError::DuplicateFlag {
                token: word.text.clone(),
                offset: word.offset,
            });
        }

        let token = values
            .iter()
            .fold(word.text.clone(), |token, value| token + " " + &value.text);
        let conflict = match flag {
            Flag::Steps => Some(Flag::Quality),
            Flag::Quality => Some(Flag::Steps),
            _ => None,
        };
        if let Some((_, other)) = given.iter().find(|(seen, _)| Some(*seen) == conflict) {
            return Err(PromptError::ConflictingFlags {
                token,
                offset: word.offset,
                other: other.clone(),
                reason: "both set the step count; use one".into(),
            });
        }

        let value = match (flag, values) {
            // A switch: `--expand` alone means on.
            (Flag::Expand, []) => "on".to_string(),
            (_, []) => {
                return Err(PromptError::MissingValue {
                    token,
                    offset: word.offset,
                    expected: expected(flag, limits),
                })
            }
            (Flag::No | Flag::Negative, _) => {
                let joined: Vec<&str> = values.iter().map(|word| word.text.as_str()).collect();
                joined.join(" ")
            }
            (_, [value]) => value.text.clone(),
            (_, [_, stray, ..]) => {
                return Err(PromptError::TextAfterParameters {
                    token: stray.text.clone(),
                    offset: stray.offset,
                    flag: word.text.clone(),
                })
            }
        };
        let invalid = || PromptError::InvalidValue {
            token: token.clone(),
            offset: word.offset,
            expected: expected(flag, limits),
        };
        params.set(flag, &value, limits).ok_or_else(invalid)?;
        given.push((flag, token));
    }
    Ok(params)
}

impl Params {
    /// Stores `value` for `flag`, or `None` when the value is not valid for it.
    fn set(&mut self, flag: Flag, value: &str, limits: &Limits) -> Option<()> {
        match flag {
            Flag::Aspect => self.aspect = Some(aspect(value, limits.max_aspect)?),
            Flag::Seed => self.seed = Some(narrow(whole(value, 0, u32::MAX.into())?)?),
            Flag::No => {
                let items: Vec<String> = value
                    .split(',')
                    .map(collapse)
                    .filter(|item| !item.is_empty())
                    .collect();
                if items.is_empty() {
                    return None;
                }
                for item in items {
                    if !self.no.contains(&item) {
                        self.no.push(item);
                    }
                }
            }
            Flag::Negative => self.negative = Some(collapse(value)),
            Flag::Chaos => self.chaos = Some(narrow(whole(value, 0, 100)?)?),
            Flag::Stylize => self.stylize = Some(narrow(whole(value, 0, 1000)?)?),
            Flag::Quality => {
                let quality: f32 = value.parse().ok()?;
                self.quality = Some(*QUALITIES.iter().find(|q| **q == quality)?);
            }
            Flag::Stop => self.stop = Some(narrow(whole(value, 10, 100)?)?),
            Flag::Steps => self.steps = Some(narrow(whole(value, 1, limits.max_steps.into())?)?),
            Flag::Sampler => self.sampler = Some(choose(value, &limits.samplers)?),
            Flag::Model => self.model = Some(choose(value, &limits.models)?),
            Flag::Expand => {
                let on = match value.to_lowercase().as_str() {
                    "on" | "yes" | "true" => true,
                    "off" | "no" | "false" => false,
                    _ => return None,
                };
                if on && !limits.expansion {
                    return None;
                }
                self.expand = Some(on);
            }
            Flag::Repeat => self.repeat = Some(narrow(whole(value, 1, limits.max_repeat.into())?)?),
        }
        Some(())
    }
}

/// `text` as a whole number in `min..=max`; only ASCII digits are accepted.
fn whole(text: &str, min: u64, max: u64) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let number: u64 = text.parse().ok()?;
    (min..=max).contains(&number).then_some(number)
}

fn narrow<T: TryFrom<u64>>(number: u64) -> Option<T> {
    T::try_from(number).ok()
}

/// `W:H` in lowest terms, when both are positive whole numbers within `max_aspect` either way.
fn aspect(text: &str, max_aspect: f64) -> Option<(u32, u32)> {
    let (width, height) = text.split_once(':')?;
    let width: u32 = narrow(whole(width, 1, u32::MAX.into())?)?;
    let height: u32 = narrow(whole(height, 1, u32::MAX.into())?)?;
    let ratio = f64::from(width) / f64::from(height);
    if ratio > max_aspect || ratio.recip() > max_aspect {
        return None;
    }

    let divisor = gcd(width, height);
    Some((width / divisor, height / divisor))
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// The name in `names` that `text` means, ignoring case and treating `-` as `_`.
fn choose(text: &str, names: &[String]) -> Option<String> {
    let normal = |name: &str| name.to_lowercase().replace('-', "_");
    let wanted = normal(text);
    names.iter().find(|name| normal(name) == wanted).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_only() {
        assert_eq!(whole("42", 0, 100), Some(42));
        assert_eq!(whole("007", 0, 100), Some(7));
        assert_eq!(whole("101", 0, 100), None);
        assert_eq!(whole("-1", 0, 100), None);
        assert_eq!(whole("+1", 0, 100), None);
        assert_eq!(whole("1.5", 0, 100), None);
        assert_eq!(whole("", 0, 100), None);
        assert_eq!(whole("99999999999999999999999", 0, u64::MAX), None);
    }

    #[test]
    fn aspect_reduces_and_bounds() {
        assert_eq!(aspect("16:9", 4.0), Some((16, 9)));
        assert_eq!(aspect("32:18", 4.0), Some((16, 9)));
        assert_eq!(aspect("4:1", 4.0), Some((4, 1)));
        assert_eq!(aspect("1:4", 4.0), Some((1, 4)));
        assert_eq!(aspect("5:1", 4.0), None);
        assert_eq!(aspect("1:5", 4.0), None);
        assert_eq!(aspect("0:1", 4.0), None);
        assert_eq!(aspect("16x9", 4.0), None);
        assert_eq!(aspect("1.5:1", 4.0), None);
        assert_eq!(aspect("16:9:1", 4.0), None);
    }

    #[test]
    fn names_match_loosely() {
        let names = vec!["euler_a".to_string(), "DDIM".to_string()];
        assert_eq!(choose("EULER-A", &names).as_deref(), Some("euler_a"));
        assert_eq!(choose("ddim", &names).as_deref(), Some("DDIM"));
        assert_eq!(choose("euler", &names), None);
    }

    #[test]
    fn flag_list_shows_aliases() {
        let list = flag_list();
        assert!(list.starts_with("--ar (--aspect), --seed, --no,"));
        assert!(list.contains("--stylize (--s)"));
        assert!(list.ends_with("--repeat (--r)"));
    }
}
