//! What a single-file checkpoint does not carry: the CLIP vocabulary and the scheduler
//! config its family was trained with.
//!
//! The vocabulary is OpenAI's CLIP BPE (MIT licensed), the same file the `open_clip_torch`
//! wheel ships. SD 1.x and 2.x share it; they differ in the padding token.

use std::io::Read;

use crate::sampler::SchedulerConfig;
use crate::single_file::Family;
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};

const BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

/// The merges CLIP uses: the file's first line is a header, and only the first
/// 49152 - 256 - 2 merges are in the vocabulary.
const MERGES: usize = 49152 - 256 - 2;

const SD1_SCHEDULER: &str = r#"{"_class_name": "PNDMScheduler", "beta_start": 0.00085,
  "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
  "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "clip_sample": false}"#;

const SD2_SCHEDULER: &str = r#"{"_class_name": "DDIMScheduler", "beta_start": 0.00085,
  "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
  "set_alpha_to_one": false, "steps_offset": 1, "clip_sample": false,
  "prediction_type": "v_prediction"}"#;

/// The tokenizer and scheduler config of `family`, as the official releases ship them. SD 2.x
/// defaults to v-prediction (the 768-pixel 2.0 and 2.1 models); an epsilon-predicting 2.x
/// base model needs a config folder.
pub fn tokenizer_and_scheduler(family: Family) -> Result<(ClipTokenizer, SchedulerConfig)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(BPE_GZ)
        .read_to_string(&mut text)
        .map_err(|e| Error::InvalidRequest(format!("bundled CLIP vocabulary is corrupt: {e}")))?;
    let merges: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .take(MERGES)
        .filter_map(|line| {
            let (a, b) = line.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        })
        .collect();

    let symbols = byte_symbols();
    let mut vocab: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
    vocab.extend(symbols.iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());

    let pad = match family {
        Family::Sd1 => "<|endoftext|>",
        Family::Sd2 => "!",
    };
    let tokenizer = ClipTokenizer::from_vocab(vocab, merges, pad)?;
    let scheduler_json = match family {
        Family::Sd1 => SD1_SCHEDULER,
        Family::Sd2 => SD2_SCHEDULER,
    };
    let scheduler = SchedulerConfig::from_json(scheduler_json)
        .map_err(|e| Error::InvalidRequest(format!("bundled scheduler config: {e}")))?;
    Ok((tokenizer, scheduler))
}

/// GPT-2's reversible byte → printable character table, in CLIP's vocabulary order: the
/// printable bytes keep their own character, the rest map to 256 onwards.
fn byte_symbols() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut order: Vec<(u32, char)> = (0u32..256)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from_u32(b).unwrap_or('?')))
        .collect();
    let mut next = 256u32;
    for b in 0u32..256 {
        if !printable(b) {
            order.push((b, char::from_u32(next).unwrap_or('?')));
            next += 1;
        }
    }
    order.into_iter().map(|(_, c)| c).collect()
}
