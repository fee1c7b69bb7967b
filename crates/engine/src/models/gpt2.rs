//! GPT-2 (Radford et al. 2019), the causal language model behind prompt expansion, laid out
//! as transformers' `GPT2LMHeadModel` so tensor paths are the checkpoint's keys:
//! `wte`, `wpe`, `h.{i}.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`,
//! `ln_f`, with an optional `transformer.` prefix. The LM head is tied to `wte` unless the
//! file carries `lm_head.weight`.
//!
//! GPT-2's projections are "Conv1D" layers: their weights are stored `[inputs, outputs]`,
//! the transpose of a linear layer's.

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::nn::{widen, LayerNorm};
use crate::weights::{WeightPath, Weights};
use crate::{Error, Result};

/// The hyperparameters of `config.json`, with transformers' defaults.
#[derive(Clone, Debug, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: i64,
    /// Longest sequence the position embeddings cover.
    #[serde(default = "default_positions")]
    pub n_positions: i64,
    /// Width of the residual stream.
    #[serde(default = "default_embd")]
    pub n_embd: i64,
    #[serde(default = "default_layers")]
    pub n_layer: i64,
    #[serde(default = "default_heads")]
    pub n_head: i64,
    /// Width of the MLP; 4 × `n_embd` when absent.
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Divide attention scores by √head_dim (always true in released GPT-2s).
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    /// Also divide layer `i`'s attention scores by `i + 1`.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn default_positions() -> i64 {
    1024
}
fn default_embd() -> i64 {
    768
}
fn default_layers() -> i64 {
    12
}
fn default_heads() -> i64 {
    12
}
fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn yes() -> bool {
    true
}

#[derive(Clone, Copy)]
enum Activation {
    GeluTanh,
    Gelu,
    Relu,
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::Gelu,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            _ => return None,
        })
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::GeluTanh => x.gelu("tanh"),
            Self::Gelu => x.gelu("none"),
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

/// A projection stored `[inputs, outputs]`.
struct Conv1d {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1d {
    fn load(w: &WeightPath, inputs: i64, outputs: i64) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[inputs, outputs])?,
            bias: w.get("bias", &[outputs])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let weight = widen(&self.weight, x);
        let bias = widen(&self.bias, x);
        x.matmul(&weight) + bias
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1d,
    attn_proj: Conv1d,
    ln_2: LayerNorm,
    c_fc: Conv1d,
    mlp_proj: Conv1d,
    /// Extra divisor of the attention scores (`scale_attn_by_inverse_layer_idx`).
    score_divisor: f64,
}

/// Keys and values of every layer for the tokens seen so far, so each new token costs one
/// position instead of the whole sequence.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Tokens the cache holds.
    pub fn len(&self) -> i64 {
        match self.layers.first() {
            Some(Some((k, _))) => k.size()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A loaded GPT-2 with its LM head.
pub struct Gpt2 {
    config: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Option<Tensor>,
    activation: Activation,
}

impl Gpt2 {
    /// Loads the weights named by transformers, checking every shape against `config`.
    pub fn load(config: Gpt2Config, weights: &Weights) -> Result<Self> {
        let origin = weights.origin();
        let bad = |m: String| Error::bad_config(&origin, m);
        let activation = Activation::parse(&config.activation_function).ok_or_else(|| {
            bad(format!(
                "activation_function `{}` is not supported: use gelu_new, gelu, relu or silu",
                config.activation_function
            ))
        })?;
        let sizes = [
            ("vocab_size", config.vocab_size),
            ("n_positions", config.n_positions),
            ("n_embd", config.n_embd),
            ("n_layer", config.n_layer),
            ("n_head", config.n_head),
            ("n_inner", config.n_inner.unwrap_or(1)),
        ];
        if let Some((name, value)) = sizes.iter().find(|(_, value)| *value <= 0) {
            return Err(bad(format!("{name} must be positive, got {value}")));
        }
        if config.n_embd % config.n_head != 0 {
            return Err(bad(format!(
                "n_embd {} is not a multiple of n_head {}",
                config.n_embd, config.n_head
            )));
        }
        let root = weights.root();
        let base = if weights.contains("transformer.wte.weight") {
            root.at("transformer")
        } else {
            root
        };
        let width = config.n_embd;
        let inner = config.n_inner.unwrap_or(4 * width);
        let eps = config.layer_norm_epsilon;

        let mut blocks = Vec::with_capacity(config.n_layer as usize);
        for i in 0..config.n_layer {
            let h = base.at("h").at(i);
            blocks.push(Block {
                ln_1: LayerNorm::load(&h.at("ln_1"), width, eps)?,
                c_attn: Conv1d::load(&h.at("attn").at("c_attn"), width, 3 * width)?,
                attn_proj: Conv1d::load(&h.at("attn").at("c_proj"), width, width)?,
                ln_2: LayerNorm::load(&h.at("ln_2"), width, eps)?,
                c_fc: Conv1d::load(&h.at("mlp").at("c_fc"), width, inner)?,
                mlp_proj: Conv1d::load(&h.at("mlp").at("c_proj"), inner, width)?,
                score_divisor: if config.scale_attn_by_inverse_layer_idx {
                    (i + 1) as f64
                } else {
                    1.0
                },
            });
        }
        let lm_head = if !config.tie_word_embeddings || weights.contains("lm_head.weight") {
            Some(
                weights
                    .root()
                    .get("lm_head.weight", &[config.vocab_size, width])?,
            )
        } else {
            None
        };
        Ok(Self {
            wte: base.get("wte.weight", &[config.vocab_size, width])?,
            wpe: base.get("wpe.weight", &[config.n_positions, width])?,
            ln_f: LayerNorm::load(&base.at("ln_f"), width, eps)?,
            blocks,
            lm_head,
            activation,
            config,
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// An empty cache for [`Gpt2::forward`].
    pub fn cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.blocks.len()).map(|_| None).collect(),
        }
    }

    /// Logits `[1, tokens, vocab]` (f32) for `ids` following what `cache` holds, which is
    /// extended with them. Errors when the sequence would pass `n_positions`.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let past = cache.len();
        let new = ids.len() as i64;
        if new == 0 {
            return Err(Error::InvalidRequest("no tokens to run".into()));
        }
        if past + new > self.config.n_positions {
            return Err(Error::InvalidRequest(format!(
                "{} tokens exceed the model's {} positions",
                past + new,
                self.config.n_positions
            )));
        }
        if let Some(&id) = ids
            .iter()
            .find(|&&id| i64::from(id) >= self.config.vocab_size)
        {
            return Err(Error::InvalidRequest(format!(
                "token id {id} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let _no_grad = tch::no_grad_guard();
        let device = self.wte.device();
        let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        let ids = Tensor::from_slice(&ids).to_device(device).unsqueeze(0);
        let positions = Tensor::arange_start(past, past + new, (Kind::Int64, device)).unsqueeze(0);
        let mut x = Tensor::embedding(&self.wte, &ids, -1, false, false)
            + Tensor::embedding(&self.wpe, &positions, -1, false, false);

        let heads = self.config.n_head;
        let head_dim = self.config.n_embd / heads;
        let split = |t: &Tensor| t.view([1, -1, heads, head_dim]).transpose(1, 2);
        // New tokens attend to every cached token and causally among themselves.
        let mask = (past > 0 && new > 1)
            .then(|| Tensor::ones([new, past + new], (Kind::Bool, device)).tril(past));
        for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let h = block.ln_1.forward(&x);
            let qkv = block.c_attn.forward(&h).split(self.config.n_embd, -1);
            let (q, k, v) = (split(&qkv[0]), split(&qkv[1]), split(&qkv[2]));
            let (k, v) = match slot.take() {
                Some((past_k, past_v)) => {
                    (Tensor::cat(&[past_k, k], 2), Tensor::cat(&[past_v, v], 2))
                }
                None => (k, v),
            };
            let scale = if self.config.scale_attn_weights {
                1.0 / (head_dim as f64).sqrt()
            } else {
                1.0
            } / block.score_divisor;
            let attended = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                mask.as_ref(),
                0.0,
                past == 0 && new > 1,
                Some(scale),
                false,
            );
            *slot = Some((k, v));
            let attended = attended
                .transpose(1, 2)
                .reshape([1, new, self.config.n_embd]);
            x += block.attn_proj.forward(&attended);
            let h = block.ln_2.forward(&x);
            x = &x
                + block
                    .mlp_proj
                    .forward(&self.activation.apply(&block.c_fc.forward(&h)));
        }
        let x = self.ln_f.forward(&x);
        let head = self.lm_head.as_ref().unwrap_or(&self.wte);
        Ok(x.matmul(&widen(head, &x).tr()).to_kind(Kind::Float))
    }
}
