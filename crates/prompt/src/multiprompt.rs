//! Multi-prompts: `hot dog::1.5 food::-0.5` splits the prompt at `::` into weighted parts.

use crate::error::PromptError;
use crate::lexer::{collapse, text, Located};
use crate::spec::PromptPart;

/// Largest weight magnitude; keeps the engine's weighted conditioning finite and sane.
pub(crate) const MAX_WEIGHT: f64 = 100.0;

/// Splits prompt text into parts. A `::` ends a part; a number written right after it
/// (`-`, digits, optional `.` and digits, then whitespace or the end) is that part's weight,
/// otherwise the weight is 1, as it is for the text after the last `::`. Parts with no text
/// and no weight are dropped, so the result is empty when the prompt is.
pub(crate) fn parse(chars: &[Located]) -> Result<Vec<PromptPart>, PromptError> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut position = 0;
    while let Some(located) = chars.get(position) {
        let separator = located.ch == ':' && chars.get(position + 1).is_some_and(|c| c.ch == ':');
        if !separator {
            current.push(*located);
            position += 1;
            continue;
        }

        position += 2;
        let part = collapse(&text(&current));
        current.clear();
        let rest = chars.get(position..).unwrap_or_default();
        let length = weight_length(rest);
        if length == 0 {
            if !part.is_empty() {
                parts.push(PromptPart {
                    text: part,
                    weight: 1.0,
                });
            }
            continue;
        }

        let number = text(rest.get(..length).unwrap_or_default());
        let token = format!("::{number}");
        let offset = located.offset;
        let weight: f64 = number.parse().map_err(|_| PromptError::InvalidWeight {
            token: token.clone(),
            offset,
        })?;
        if !weight.is_finite() || weight.abs() > MAX_WEIGHT {
            return Err(PromptError::InvalidWeight { token, offset });
        }
        if part.is_empty() {
            return Err(PromptError::WeightWithoutText { token, offset });
        }
        parts.push(PromptPart { text: part, weight });
        position += length;
    }

    let part = collapse(&text(&current));
    if !part.is_empty() {
        parts.push(PromptPart {
            text: part,
            weight: 1.0,
        });
    }

    let total: f64 = parts.iter().map(|part| part.weight).sum();
    if !parts.is_empty() && total <= 0.0 {
        return Err(PromptError::NonPositiveWeights { total });
    }
    Ok(parts)
}

/// Length of the weight at the start of `chars`, or 0 when they do not start with one.
fn weight_length(chars: &[Located]) -> usize {
    let mut length = usize::from(chars.first().is_some_and(|c| c.ch == '-'));
    let mut digits = 0;
    let mut dot = false;
    while let Some(located) = chars.get(length) {
        match located.ch {
            '0'..='9' => digits += 1,
            '.' if !dot => dot = true,
            _ => break,
        }
        length += 1;
    }

    let ends = chars.get(length).is_none_or(|c| c.ch.is_whitespace());
    if digits > 0 && ends {
        length
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::locate;

    fn parts(input: &str) -> Result<Vec<(String, f64)>, PromptError> {
        let parts = parse(&locate(input))?;
        Ok(parts.into_iter().map(|p| (p.text, p.weight)).collect())
    }

    fn expected(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    #[test]
    fn plain_prompt_is_one_part() {
        assert_eq!(
            parts("  a   red car ").unwrap(),
            expected(&[("a red car", 1.0)])
        );
        assert_eq!(parts("   ").unwrap(), expected(&[]));
    }

    #[test]
    fn weights_follow_their_part() {
        assert_eq!(
            parts("text::2 other text::0.5").unwrap(),
            expected(&[("text", 2.0), ("other text", 0.5)])
        );
        assert_eq!(
            parts("hot dog::1.5 food::-0.5").unwrap(),
            expected(&[("hot dog", 1.5), ("food", -0.5)])
        );
        assert_eq!(
            parts("a::.5 b").unwrap(),
            expected(&[("a", 0.5), ("b", 1.0)])
        );
        assert_eq!(parts("a::3.").unwrap(), expected(&[("a", 3.0)]));
    }

    #[test]
    fn missing_weight_is_one() {
        assert_eq!(
            parts("space::ship").unwrap(),
            expected(&[("space", 1.0), ("ship", 1.0)])
        );
        assert_eq!(
            parts("a:: b::").unwrap(),
            expected(&[("a", 1.0), ("b", 1.0)])
        );
        assert_eq!(
            parts("a::2x").unwrap(),
            expected(&[("a", 1.0), ("2x", 1.0)])
        );
        assert_eq!(parts("12:30 pm").unwrap(), expected(&[("12:30 pm", 1.0)]));
    }

    #[test]
    fn total_must_be_positive() {
        assert_eq!(
            parts("a::1 b::-1").unwrap_err(),
            PromptError::NonPositiveWeights { total: 0.0 }
        );
        assert_eq!(
            parts("a::-2").unwrap_err(),
            PromptError::NonPositiveWeights { total: -2.0 }
        );
        assert!(parts("a::2 b::-1").is_ok());
    }

    #[test]
    fn weight_errors_name_the_token() {
        assert_eq!(
            parts("a::1000").unwrap_err(),
            PromptError::InvalidWeight {
                token: "::1000".to_string(),
                offset: 1
            }
        );
        assert_eq!(
            parts("x ::2 b").unwrap(),
            expected(&[("x", 2.0), ("b", 1.0)])
        );
        assert_eq!(
            parts("::2 b").unwrap_err(),
            PromptError::WeightWithoutText {
                token: "::2".to_string(),
                offset: 0
            }
        );
        assert_eq!(parts("a::-").unwrap(), expected(&[("a", 1.0), ("-", 1.0)]));
    }
}
