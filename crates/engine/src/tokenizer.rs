//! The CLIP byte-level BPE tokenizer, giving the same ids as Hugging Face's `CLIPTokenizer`.
//!
//! Real Stable Diffusion repositories ship either `tokenizer.json` or the older
//! `vocab.json` + `merges.txt` pair. For the pair we assemble the same pipeline that
//! transformers builds: NFC, whitespace runs collapsed to one space, lowercase; CLIP's word
//! pattern; byte-level mapping; BPE with a `</w>` end-of-word suffix.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeBuilder, BPE};
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

/// CLIP's word pattern: special tokens, English contractions, letter runs, single digits, and
/// runs of everything else that is not whitespace.
const WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// Token ids for one prompt, split into the fixed-length windows the text encoder takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunks {
    /// Each window is `[bos] + up to 75 tokens + [eos] + padding`, `max_length` long.
    pub windows: Vec<Vec<u32>>,
    /// Tokens in the prompt, without bos and eos.
    pub tokens: usize,
}

/// A CLIP tokenizer with its special tokens and window length.
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` from `dir` if present, else `vocab.json` and `merges.txt`.
    /// Special tokens come from `special_tokens_map.json` or `tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json)
                .map_err(|e| Error::bad_model(&json, format!("cannot read tokenizer: {e}")))?
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            for file in [&vocab, &merges] {
                if !file.is_file() {
                    return Err(Error::bad_model(
                        dir,
                        "tokenizer folder has neither tokenizer.json nor vocab.json + merges.txt",
                    ));
                }
            }
            build_from_vocab(&vocab, &merges)?
        };

        let specials = SpecialTokens::read(dir)?;
        let id = |token: &str, file: &Path| {
            inner.token_to_id(token).ok_or_else(|| {
                Error::bad_model(
                    file,
                    format!("special token `{token}` is not in the vocabulary"),
                )
            })
        };
        let origin = dir.to_path_buf();
        Ok(ClipTokenizer {
            bos: id(&specials.bos, &origin)?,
            eos: id(&specials.eos, &origin)?,
            pad: id(&specials.pad, &origin)?,
            max_length: specials.max_length,
            inner,
        })
    }

    /// A tokenizer from an in-memory vocabulary (ids in order) and merges.
    pub fn from_vocab(
        vocab: Vec<String>,
        merges: Vec<(String, String)>,
        pad: &str,
    ) -> Result<Self> {
        let ids: tokenizers::models::bpe::Vocab = vocab
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let bad = |e: String| Error::InvalidRequest(format!("CLIP vocabulary: {e}"));
        let model = clip_bpe(BPE::builder().vocab_and_merges(ids, merges))
            .map_err(|e| bad(e.to_string()))?;
        let mut inner = clip_pipeline(model).map_err(bad)?;
        // transformers registers the pad token as special, so SD 2.x's `!` pad is split out of
        // prompts like the others; matching that keeps ids equal to a diffusers folder's.
        inner.add_special_tokens(&[AddedToken::from(pad, true)]);
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| bad(format!("`{token}` is not in the vocabulary")))
        };
        Ok(ClipTokenizer {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(pad)?,
            max_length: 77,
            inner,
        })
    }

    /// The window length, 77 for every SD release.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The prompt's token ids without bos, eos or padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The ids diffusers feeds the encoder: bos, the first `max_length - 2` tokens, eos, then
    /// padding to `max_length`. Longer prompts are cut.
    pub fn encode_truncated(&self, text: &str) -> Result<Vec<u32>> {
        let tokens = self.encode(text)?;
        Ok(self.window(&tokens[..tokens.len().min(self.max_length - 2)]))
    }

    /// Splits the prompt into as many windows as it needs, the way AUTOMATIC1111's web UI
    /// does: each window holds 75 tokens between its own bos and eos, and the encoder's
    /// outputs for the windows are concatenated. `min_windows` pads with empty windows, so a
    /// negative prompt can match its prompt's length.
    pub fn encode_chunked(&self, text: &str, min_windows: usize) -> Result<Chunks> {
        let tokens = self.encode(text)?;
        let per_window = self.max_length - 2;
        let mut windows: Vec<Vec<u32>> =
            tokens.chunks(per_window).map(|c| self.window(c)).collect();
        while windows.len() < min_windows.max(1) {
            windows.push(self.window(&[]));
        }
        Ok(Chunks {
            windows,
            tokens: tokens.len(),
        })
    }

    fn window(&self, tokens: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(tokens);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }
}

fn build_from_vocab(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
    let (vocab_s, merges_s) = (path_str(vocab)?, path_str(merges)?);
    let model = clip_bpe(BPE::from_file(&vocab_s, &merges_s))
        .map_err(|e| Error::bad_model(vocab, format!("cannot build BPE: {e}")))?;
    clip_pipeline(model).map_err(|e| Error::bad_model(vocab, e))
}

fn clip_bpe(builder: BpeBuilder) -> tokenizers::Result<BPE> {
    builder
        .unk_token(EOS.to_string())
        .end_of_word_suffix("</w>".to_string())
        .continuing_subword_prefix(String::new())
        .build()
}

/// Wraps a CLIP BPE model in transformers' normalizer and pre-tokenizer.
fn clip_pipeline(model: BPE) -> std::result::Result<Tokenizer, String> {
    let mut tokenizer = Tokenizer::new(model);
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| format!("cannot build tokenizer: {e}");
    let collapse = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".to_string()),
        " ",
    )
    .map_err(bad)?;
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        collapse.into(),
        Lowercase.into(),
    ])));
    let words = Split::new(
        SplitPattern::Regex(WORD_PATTERN.to_string()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(bad)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        words.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.add_special_tokens(&[AddedToken::from(BOS, true), AddedToken::from(EOS, true)]);
    Ok(tokenizer)
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::bad_model(path, "path is not valid UTF-8"))
}

struct SpecialTokens {
    bos: String,
    eos: String,
    pad: String,
    max_length: usize,
}

impl SpecialTokens {
    /// Reads the special tokens the way transformers does: `tokenizer_config.json`, with
    /// `special_tokens_map.json` taking precedence where both name one.
    fn read(dir: &Path) -> Result<Self> {
        let mut tokens = SpecialTokens {
            bos: BOS.to_string(),
            eos: EOS.to_string(),
            pad: EOS.to_string(),
            max_length: 77,
        };
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path: PathBuf = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::bad_config(&path, format!("not valid JSON: {e}")))?;
            let token = |key: &str| match json.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            };
            if let Some(t) = token("bos_token") {
                tokens.bos = t;
            }
            if let Some(t) = token("eos_token") {
                tokens.eos = t;
            }
            if let Some(t) = token("pad_token") {
                tokens.pad = t;
            }
            // transformers writes a huge sentinel when no limit was set.
            if let Some(n) = json.get("model_max_length").and_then(|n| n.as_u64()) {
                if (3..=4096).contains(&n) {
                    tokens.max_length = n as usize;
                }
            }
        }
        Ok(tokens)
    }
}
