//! `--expand` in the worker: a GPT-2 continues the prompt on the render thread, before the
//! text encoder sees it, and the expansion is cut at a word boundary so the prompt still
//! fits the text encoder's first 75-token window.

use huaxian_engine::pipeline::Request;
use huaxian_engine::textgen::{Decoding, Expander, Strategy};
use huaxian_engine::StableDiffusion;
use tch::Device;

use crate::settings::ExpanderSettings;

/// Tokens one window of the CLIP text encoder takes (77 less bos and eos).
pub const ENCODER_TOKENS: usize = 75;

/// A loaded expander with its decoding settings.
pub struct PromptExpander {
    expander: Expander,
    decoding: Decoding,
}

impl PromptExpander {
    pub fn load(settings: &ExpanderSettings, device: Device) -> anyhow::Result<Self> {
        let expander = Expander::load(&settings.path, device)?;
        let allowed = match &settings.allow_words {
            Some(path) => Some(expander.allow_words_file(path)?),
            None => None,
        };
        let decoding = Decoding {
            max_new_tokens: settings.max_new_tokens,
            strategy: Strategy::Sample {
                top_k: Some(settings.top_k),
                top_p: Some(settings.top_p),
                temperature: settings.temperature,
                seed: 0,
            },
            stop_at_end: true,
            stop_at_newline: true,
            allowed,
        };
        Ok(Self { expander, decoding })
    }

    /// Expands the prompt of every request of a job the same way (seeded by `seed`, so a
    /// retry writes the same words) and returns the prompt as it will be rendered.
    pub fn apply(
        &self,
        model: &StableDiffusion,
        requests: &mut [Request],
        seed: u64,
    ) -> Result<String, String> {
        let Some(first) = requests.first() else {
            return Err("the job has nothing to render".into());
        };
        // A multi-prompt is continued from its last part.
        let base = match first.parts.last() {
            Some((text, _)) => text.clone(),
            None => first.prompt.clone(),
        };
        let mut decoding = self.decoding.clone();
        if let Strategy::Sample { seed: s, .. } = &mut decoding.strategy {
            *s = seed;
        }
        let expansion = self
            .expander
            .expand(&base, &decoding)
            .map_err(|e| format!("prompt expansion failed: {e}"))?;
        let count = |text: &str| {
            model
                .tokenizer
                .encode_chunked(text, 1)
                .map(|chunks| chunks.tokens)
                .unwrap_or(usize::MAX)
        };
        let added = fit_words(&base, &expansion.added, ENCODER_TOKENS, count);
        let expanded = join(&base, &added);
        for request in requests.iter_mut() {
            match request.parts.last_mut() {
                Some((text, _)) => {
                    *text = expanded.clone();
                    request.prompt = join(&request.prompt, &added);
                }
                None => request.prompt = expanded.clone(),
            }
        }
        Ok(requests[0].prompt.clone())
    }
}

/// The longest run of `added`'s first words that keeps `base` + them within `budget`
/// tokens by `count`; the user's own words are never cut.
pub fn fit_words(base: &str, added: &str, budget: usize, count: impl Fn(&str) -> usize) -> String {
    let mut words: Vec<&str> = added.split_whitespace().collect();
    while !words.is_empty() && count(&join(base, &words.join(" "))) > budget {
        words.pop();
    }
    words.join(" ")
}

fn join(base: &str, added: &str) -> String {
    if added.is_empty() {
        base.to_string()
    } else if added.starts_with(|c: char| c.is_ascii_punctuation()) {
        format!("{base}{added}")
    } else {
        format!("{base} {added}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_a_word_boundary_and_keeps_the_users_words() {
        let words = |text: &str| text.split_whitespace().count();
        assert_eq!(
            fit_words("a cat", "soft light, golden hour", 5, words),
            "soft light, golden"
        );
        assert_eq!(fit_words("a cat", "soft light", 10, words), "soft light");
        assert_eq!(fit_words("one two three", "more", 2, words), "");
        assert_eq!(join("a cat", ", soft"), "a cat, soft");
        assert_eq!(join("a cat", "soft"), "a cat soft");
    }
}
