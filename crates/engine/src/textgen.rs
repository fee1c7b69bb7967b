//! Prompt expansion: a GPT-2 continues the user's prompt with descriptive words, as
//! Fooocus-style expanders do, before the text encoder sees it.
//!
//! ```no_run
//! use huaxian_engine::textgen::{Decoding, Expander};
//!
//! let expander = Expander::load("models/expander".as_ref(), tch::Device::Cpu)?;
//! let options = Decoding { max_new_tokens: 40, ..Decoding::default() };
//! let expanded = expander.expand("a lighthouse at dusk", &options)?;
//! println!("{}", expanded.text);
//! # Ok::<(), huaxian_engine::Error>(())
//! ```
//!
//! Decoding is greedy or top-k/top-p sampling with a seed (the same seed gives the same
//! words on any device: the draws are made on the CPU from the logits). It stops at
//! end-of-text, at a newline, or after `max_new_tokens`, and can be held to the tokens of a
//! word list.

use std::collections::BTreeSet;
use std::path::Path;

use tch::{Device, Kind, Tensor};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::BPE;
use tokenizers::Tokenizer;

use crate::models::config::read_json;
use crate::models::gpt2::{Gpt2, Gpt2Config};
use crate::pipeline::guarded;
use crate::weights::{refuse_pickle, Weights};
use crate::{Error, Result};

/// GPT-2's end-of-text token.
const END_OF_TEXT: &str = "<|endoftext|>";

/// How to choose each next token.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// The most likely token.
    Greedy,
    /// A draw from the tokens left by `top_k` and `top_p`, after dividing the logits by
    /// `temperature`.
    Sample {
        top_k: Option<usize>,
        top_p: Option<f64>,
        temperature: f64,
        seed: u64,
    },
}

/// Decoding options.
#[derive(Clone, Debug)]
pub struct Decoding {
    pub max_new_tokens: usize,
    pub strategy: Strategy,
    /// Stop at end-of-text.
    pub stop_at_end: bool,
    /// Stop at a token that holds a newline (the newline is not kept).
    pub stop_at_newline: bool,
    /// Only these token ids may be generated (see [`Expander::allow_words`]).
    pub allowed: Option<BTreeSet<u32>>,
}

impl Default for Decoding {
    fn default() -> Self {
        Self {
            max_new_tokens: 40,
            strategy: Strategy::Greedy,
            stop_at_end: true,
            stop_at_newline: true,
            allowed: None,
        }
    }
}

/// What an expansion produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Expansion {
    /// The prompt followed by the generated words.
    pub text: String,
    /// The generated words alone.
    pub added: String,
    /// Token ids generated.
    pub ids: Vec<u32>,
}

/// A GPT-2 and its tokenizer, loaded from a transformers folder.
pub struct Expander {
    model: Gpt2,
    tokenizer: Tokenizer,
    end_of_text: Option<u32>,
    /// Tokens whose text contains a newline.
    newlines: BTreeSet<u32>,
}

impl Expander {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` (or `vocab.json` +
    /// `merges.txt`) from `dir`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::bad_model(
                &config_path,
                "missing: a GPT-2 folder needs config.json, model.safetensors and a tokenizer",
            ));
        }
        let config: Gpt2Config = read_json(&config_path)?;
        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            for pickle in ["pytorch_model.bin", "model.ckpt"] {
                let path = dir.join(pickle);
                if path.is_file() {
                    refuse_pickle(&path)?;
                }
            }
            return Err(Error::bad_model(&weights_path, "missing"));
        }
        let weights = Weights::open(&weights_path, Kind::Float, device)?;
        let model = Gpt2::load(config, &weights)?;
        let tokenizer = load_tokenizer(dir)?;

        let vocab = tokenizer.get_vocab_size(true) as i64;
        if vocab > model.config().vocab_size {
            return Err(Error::bad_model(
                dir,
                format!(
                    "the tokenizer has {vocab} tokens but the model only {}",
                    model.config().vocab_size
                ),
            ));
        }
        let end_of_text = tokenizer
            .token_to_id(END_OF_TEXT)
            .or(model.config().eos_token_id);
        let newlines = (0..vocab as u32)
            .filter(|&id| {
                tokenizer
                    .decode(&[id], false)
                    .is_ok_and(|text| text.contains('\n'))
            })
            .collect();
        Ok(Self {
            model,
            tokenizer,
            end_of_text,
            newlines,
        })
    }

    pub fn model(&self) -> &Gpt2 {
        &self.model
    }

    /// Token ids of `text`, as transformers' GPT-2 tokenizer gives them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize the prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::InvalidRequest(format!("cannot decode tokens: {e}")))
    }

    /// The token ids that spell the words of `list` (one word or phrase per line; blank
    /// lines and lines starting with `#` are skipped), with and without a leading space,
    /// plus `,` and end-of-text so an expansion can still separate words and stop.
    pub fn allow_words(&self, list: &str) -> Result<BTreeSet<u32>> {
        let mut allowed = BTreeSet::new();
        for word in list
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
        {
            allowed.extend(self.encode(word)?);
            allowed.extend(self.encode(&format!(" {word}"))?);
        }
        allowed.extend(self.encode(",")?);
        allowed.extend(self.end_of_text);
        Ok(allowed)
    }

    /// Reads a word list for [`Expander::allow_words`] from a file.
    pub fn allow_words_file(&self, path: &Path) -> Result<BTreeSet<u32>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let allowed = self.allow_words(&text)?;
        if allowed.len() <= 2 {
            return Err(Error::bad_config(path, "the word list has no words"));
        }
        Ok(allowed)
    }

    /// Continues `prompt`.
    pub fn expand(&self, prompt: &str, options: &Decoding) -> Result<Expansion> {
        let ids = self.encode(prompt)?;
        if ids.is_empty() {
            return Err(Error::InvalidRequest("there is no prompt to expand".into()));
        }
        let generated = self.generate(&ids, options)?;
        let added = self.decode(&generated)?;
        let added = added.trim().to_string();
        let text = if added.is_empty() {
            prompt.to_string()
        } else if added.starts_with(|c: char| c.is_ascii_punctuation()) {
            format!("{prompt}{added}")
        } else {
            format!("{prompt} {added}")
        };
        Ok(Expansion {
            text,
            added,
            ids: generated,
        })
    }

    /// The ids generated after `prompt`, under `options`, with the KV cache.
    pub fn generate(&self, prompt: &[u32], options: &Decoding) -> Result<Vec<u32>> {
        guarded(|| {
            let room = self.model.config().n_positions as usize;
            let budget = options
                .max_new_tokens
                .min(room.saturating_sub(prompt.len()));
            let mut rng = match options.strategy {
                Strategy::Sample { seed, .. } => Some(SplitMix64(seed)),
                Strategy::Greedy => None,
            };
            let mut cache = self.model.cache();
            let mut logits = self.model.forward(prompt, &mut cache)?;
            let mut generated = Vec::new();
            while generated.len() < budget {
                let last = logits.select(1, -1).squeeze_dim(0).to_device(Device::Cpu);
                let mut scores: Vec<f32> = Vec::<f32>::try_from(&last)?;
                if let Some(allowed) = &options.allowed {
                    for (id, score) in scores.iter_mut().enumerate() {
                        if !allowed.contains(&(id as u32)) {
                            *score = f32::NEG_INFINITY;
                        }
                    }
                }
                let next = match (&options.strategy, rng.as_mut()) {
                    (
                        Strategy::Sample {
                            top_k,
                            top_p,
                            temperature,
                            ..
                        },
                        Some(rng),
                    ) => sample(&scores, *top_k, *top_p, *temperature, rng),
                    _ => argmax(&scores),
                };
                let Some(next) = next else { break };
                if options.stop_at_end && Some(next) == self.end_of_text {
                    break;
                }
                if options.stop_at_newline && self.newlines.contains(&next) {
                    break;
                }
                generated.push(next);
                if generated.len() < budget {
                    logits = self.model.forward(&[next], &mut cache)?;
                }
            }
            Ok(generated)
        })
    }

    /// Logits `[tokens, vocab]` of a whole sequence, without a cache (for tests and checks).
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        guarded(|| {
            Ok(self
                .model
                .forward(ids, &mut self.model.cache())?
                .squeeze_dim(0))
        })
    }
}

fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return Tokenizer::from_file(&json)
            .map_err(|e| Error::bad_model(&json, format!("cannot read tokenizer: {e}")));
    }
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    for file in [&vocab, &merges] {
        if !file.is_file() {
            return Err(Error::bad_model(
                file,
                "missing: a GPT-2 folder needs tokenizer.json, or vocab.json and merges.txt",
            ));
        }
    }
    let text = |p: &Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| Error::bad_model(p, "path is not UTF-8"))
    };
    let bpe = BPE::from_file(&text(&vocab)?, &text(&merges)?)
        .build()
        .map_err(|e| Error::bad_model(&vocab, format!("cannot build BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
    Ok(tokenizer)
}

fn argmax(scores: &[f32]) -> Option<u32> {
    scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(id, _)| id as u32)
}

/// A draw from the softmax of `scores / temperature`, limited to the `top_k` best tokens
/// and the smallest set whose probability reaches `top_p`.
fn sample(
    scores: &[f32],
    top_k: Option<usize>,
    top_p: Option<f64>,
    temperature: f64,
    rng: &mut SplitMix64,
) -> Option<u32> {
    let temperature = if temperature.is_finite() && temperature > 0.0 {
        temperature
    } else {
        1.0
    };
    let mut ranked: Vec<(u32, f64)> = scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .map(|(id, &s)| (id as u32, f64::from(s) / temperature))
        .collect();
    if ranked.is_empty() {
        return None;
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = top_k.filter(|k| *k > 0) {
        ranked.truncate(k);
    }
    let best = ranked[0].1;
    let mut probabilities: Vec<f64> = ranked.iter().map(|(_, s)| (s - best).exp()).collect();
    let total: f64 = probabilities.iter().sum();
    probabilities.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = top_p.filter(|p| *p > 0.0 && *p < 1.0) {
        let mut mass = 0.0;
        let keep = probabilities
            .iter()
            .position(|q| {
                mass += q;
                mass >= p
            })
            .map_or(probabilities.len(), |last| last + 1);
        ranked.truncate(keep);
        probabilities.truncate(keep);
        let total: f64 = probabilities.iter().sum();
        probabilities.iter_mut().for_each(|q| *q /= total);
    }
    let mut draw = rng.next_f64();
    for ((id, _), q) in ranked.iter().zip(&probabilities) {
        if draw < *q {
            return Some(*id);
        }
        draw -= q;
    }
    ranked.last().map(|(id, _)| *id)
}

/// SplitMix64 (Steele et al. 2014): small, fast and fully determined by its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_respects_top_k_and_top_p() {
        let scores = [0.0f32, 5.0, 4.9, -1.0, f32::NEG_INFINITY];
        let mut rng = SplitMix64(3);
        for _ in 0..200 {
            let id = sample(&scores, Some(2), None, 1.0, &mut rng).unwrap();
            assert!(id == 1 || id == 2, "{id}");
            let id = sample(&scores, None, Some(0.3), 1.0, &mut rng).unwrap();
            assert_eq!(id, 1, "top-p 0.3 keeps only the best token here");
        }
        assert_eq!(argmax(&scores), Some(1));
        assert_eq!(
            sample(&[f32::NEG_INFINITY; 3], None, None, 1.0, &mut rng),
            None
        );
    }
}
