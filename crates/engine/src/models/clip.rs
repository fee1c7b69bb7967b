//! The CLIP text encoder (Radford et al. 2021, "Learning Transferable Visual Models From
//! Natural Language Supervision"), laid out as transformers' `CLIPTextModel`.

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::nn::{attention, LayerNorm, Linear};
use crate::weights::{WeightPath, Weights};
use crate::{Error, Result};

/// `text_encoder/config.json`, the fields the encoder uses.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: i64,
    /// Width of the token embeddings and of every layer.
    pub hidden_size: i64,
    /// Width of the MLP inside each layer.
    pub intermediate_size: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Longest sequence, 77 for every Stable Diffusion release.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// `quick_gelu` (OpenAI CLIP, SD 1.x) or `gelu` (OpenCLIP, SD 2.x).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_positions() -> i64 {
    77
}
fn default_act() -> String {
    "quick_gelu".to_string()
}
fn default_eps() -> f64 {
    1e-5
}

#[derive(Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
}

struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The text encoder: token ids in, one embedding per token out.
pub struct ClipTextEncoder {
    config: ClipConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    activation: Activation,
    compute_kind: Kind,
}

impl ClipTextEncoder {
    pub fn load(config: ClipConfig, weights: &Weights) -> Result<Self> {
        let activation = match config.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            other => {
                return Err(Error::bad_model(
                    weights.origin(),
                    format!("text encoder activation `{other}` is not supported"),
                ))
            }
        };
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err(Error::bad_model(
                weights.origin(),
                "text encoder hidden_size is not a multiple of num_attention_heads",
            ));
        }

        // transformers has always saved `text_model.*`; some converters strip the prefix.
        let root = if weights.contains("text_model.final_layer_norm.weight") {
            weights.root().at("text_model")
        } else {
            weights.root()
        };
        let d = config.hidden_size;
        let embeddings = root.at("embeddings");
        let token_embedding = embeddings
            .at("token_embedding")
            .get("weight", &[config.vocab_size, d])?;
        let position_embedding = embeddings
            .at("position_embedding")
            .get("weight", &[config.max_position_embeddings, d])?;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            layers.push(Layer::load(&root.at("encoder.layers").at(i), &config)?);
        }
        let final_norm = LayerNorm::load(&root.at("final_layer_norm"), d, config.layer_norm_eps)?;

        Ok(ClipTextEncoder {
            config,
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            activation,
            compute_kind: weights.kind(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Encodes `[batch, tokens]` int64 ids into `[batch, tokens, hidden]`.
    ///
    /// `skip` drops that many final layers before the final layer norm, the way diffusers'
    /// `clip_skip` does (0 uses every layer).
    pub fn forward(&self, ids: &Tensor, skip: usize) -> Result<Tensor> {
        let (_, len) = ids.size2()?;
        if len > self.config.max_position_embeddings {
            return Err(Error::InvalidRequest(format!(
                "{len} tokens exceed the text encoder's {} positions",
                self.config.max_position_embeddings
            )));
        }
        if skip >= self.layers.len() {
            return Err(Error::InvalidRequest(format!(
                "clip skip {skip} leaves no layer of the text encoder's {}",
                self.layers.len()
            )));
        }

        let positions = self.position_embedding.narrow(0, 0, len);
        let tokens = Tensor::embedding(&self.token_embedding, ids, -1, false, false);
        let mut x = (tokens + positions).to_kind(self.compute_kind);
        for layer in &self.layers[..self.layers.len() - skip] {
            x = layer.forward(&x, self.config.num_attention_heads, self.activation);
        }
        Ok(self.final_norm.forward(&x))
    }
}

impl Layer {
    fn load(w: &WeightPath, c: &ClipConfig) -> Result<Self> {
        let d = c.hidden_size;
        let eps = c.layer_norm_eps;
        let attn = w.at("self_attn");
        Ok(Layer {
            norm1: LayerNorm::load(&w.at("layer_norm1"), d, eps)?,
            q: Linear::load(&attn.at("q_proj"), d, d, true)?,
            k: Linear::load(&attn.at("k_proj"), d, d, true)?,
            v: Linear::load(&attn.at("v_proj"), d, d, true)?,
            out: Linear::load(&attn.at("out_proj"), d, d, true)?,
            norm2: LayerNorm::load(&w.at("layer_norm2"), d, eps)?,
            fc1: Linear::load(&w.at("mlp.fc1"), d, c.intermediate_size, true)?,
            fc2: Linear::load(&w.at("mlp.fc2"), c.intermediate_size, d, true)?,
        })
    }

    fn forward(&self, x: &Tensor, heads: i64, activation: Activation) -> Tensor {
        let h = self.norm1.forward(x);
        let h = attention(
            &self.q.forward(&h),
            &self.k.forward(&h),
            &self.v.forward(&h),
            heads,
            true,
        );
        let x = x + self.out.forward(&h);

        let h = self.fc1.forward(&self.norm2.forward(&x));
        let h = match activation {
            // OpenAI's CLIP approximation of GELU: x·σ(1.702x).
            Activation::QuickGelu => &h * (&h * 1.702).sigmoid(),
            Activation::Gelu => h.gelu("none"),
            Activation::GeluTanh => h.gelu("tanh"),
        };
        x + self.fc2.forward(&h)
    }
}

/// Token ids as the `[1, len]` int64 tensor the encoder takes.
pub fn ids_tensor(ids: &[u32], device: tch::Device) -> Tensor {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&ids)
        .to_kind(Kind::Int64)
        .unsqueeze(0)
        .to_device(device)
}
