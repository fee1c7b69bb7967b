//! The conditional UNet of latent diffusion (Rombach et al. 2022, "High-Resolution Image
//! Synthesis with Latent Diffusion Models"), laid out as diffusers' `UNet2DConditionModel`.
//!
//! Every timestep is per sample: the UNet takes a `[batch]` tensor of timesteps, so jobs at
//! different points of their schedules can share one batch.

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::blocks::{Downsample, ResnetBlock, SpatialTransformer, TransformerShape, Upsample};
use super::config::PerBlock;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::Weights;
use crate::{Error, Result};

/// `unet/config.json`, the fields Stable Diffusion 1.x and 2.x use.
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: i64,
    /// Latent channels out.
    #[serde(default = "four")]
    pub out_channels: i64,
    /// Channels of each resolution level, from the top down.
    pub block_out_channels: Vec<i64>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "two_per_block")]
    pub layers_per_block: PerBlock<usize>,
    /// `CrossAttnDownBlock2D` or `DownBlock2D`, one per level.
    pub down_block_types: Vec<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D`, one per level, from the bottom up.
    pub up_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn` for every SD release; `null` removes the middle block.
    #[serde(default = "mid_block")]
    pub mid_block_type: Option<String>,
    /// Width of the text embeddings the UNet attends to.
    pub cross_attention_dim: i64,
    /// Despite the name, the number of attention heads in SD configs (a diffusers legacy);
    /// used when `num_attention_heads` is absent.
    #[serde(default)]
    pub attention_head_dim: Option<PerBlock<i64>>,
    /// Attention heads per level, in newer configs.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<i64>>,
    /// Transformer layers inside each attention block.
    #[serde(default = "one_layer")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Groups of every group norm.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    /// Epsilon of the resnet and output group norms.
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// Linear instead of 1×1 conv projections around the transformers (SD 2.x).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Order of the sinusoidal timestep embedding halves.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Shift of the timestep embedding frequencies.
    #[serde(default)]
    pub freq_shift: f64,
    /// Scales `[-1, 1]` input to the centre; false for SD.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Only `positional` is used by SD.
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    /// Conditioning that SD never uses; refused when present.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default)]
    pub only_cross_attention: Option<PerBlock<bool>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub upcast_attention: Option<bool>,
}

fn four() -> i64 {
    4
}
fn two_per_block() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn one_layer() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".to_string())
}
fn thirty_two() -> i64 {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl UNetConfig {
    /// Refuses features of later architectures (SDXL's added embeddings, class labels) so a
    /// wrong model fails at load time with a reason rather than with a shape error.
    fn check(&self) -> std::result::Result<(), String> {
        let blocks = self.block_out_channels.len();
        if blocks == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            return Err("down_block_types and up_block_types need one entry per level".into());
        }
        if let Some(t) = &self.class_embed_type {
            return Err(format!("class_embed_type `{t}` is not supported"));
        }
        if let Some(t) = &self.addition_embed_type {
            return Err(format!(
                "addition_embed_type `{t}` (SDXL and later) is not supported; huaxian runs SD 1.x and 2.x"
            ));
        }
        if self.time_cond_proj_dim.is_some() {
            return Err("time_cond_proj_dim (guidance-embedded LCM UNets) is not supported".into());
        }
        if self.dual_cross_attention {
            return Err("dual_cross_attention is not supported".into());
        }
        if matches!(&self.only_cross_attention, Some(PerBlock::One(true)))
            || matches!(&self.only_cross_attention, Some(PerBlock::Each(v)) if v.iter().any(|&b| b))
        {
            return Err("only_cross_attention is not supported".into());
        }
        if matches!(self.resnet_time_scale_shift.as_deref(), Some(s) if s != "default") {
            return Err("resnet_time_scale_shift other than `default` is not supported".into());
        }
        if matches!(self.time_embedding_type.as_deref(), Some(t) if t != "positional") {
            return Err("time_embedding_type other than `positional` is not supported".into());
        }
        Ok(())
    }

    fn heads(&self) -> Result<Vec<i64>> {
        let blocks = self.block_out_channels.len();
        match (&self.num_attention_heads, &self.attention_head_dim) {
            (Some(h), _) | (None, Some(h)) => h.expand(blocks, "num_attention_heads"),
            (None, None) => Ok(vec![8; blocks]),
        }
    }
}

enum DownBlock {
    Plain {
        resnets: Vec<ResnetBlock>,
        down: Option<Downsample>,
    },
    CrossAttn {
        resnets: Vec<ResnetBlock>,
        attentions: Vec<SpatialTransformer>,
        down: Option<Downsample>,
    },
}

struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    up: Option<Upsample>,
}

struct MidBlock {
    first: ResnetBlock,
    rest: Vec<(SpatialTransformer, ResnetBlock)>,
}

/// The denoising UNet.
pub struct UNet {
    config: UNetConfig,
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    pub fn load(config: UNetConfig, weights: &Weights) -> Result<Self> {
        config
            .check()
            .map_err(|m| Error::bad_model(weights.origin(), format!("unet config: {m}")))?;
        let w = weights.root();
        let channels = &config.block_out_channels;
        let blocks = channels.len();
        let heads = config.heads()?;
        let layers = config.layers_per_block.expand(blocks, "layers_per_block")?;
        let depth = config
            .transformer_layers_per_block
            .expand(blocks, "transformer_layers_per_block")?;
        let groups = config.norm_num_groups;
        let eps = config.norm_eps;
        let time_dim = channels[0] * 4;
        let transformer = |level: usize, width: i64| TransformerShape {
            channels: width,
            heads: heads[level],
            depth: depth[level],
            context: config.cross_attention_dim,
            groups,
            linear_projection: config.use_linear_projection,
        };

        let conv_in = Conv2d::load(&w.at("conv_in"), config.in_channels, channels[0], 3, 1, 1)?;
        let time_linear_1 = Linear::load(
            &w.at("time_embedding.linear_1"),
            channels[0],
            time_dim,
            true,
        )?;
        let time_linear_2 =
            Linear::load(&w.at("time_embedding.linear_2"), time_dim, time_dim, true)?;

        let mut down = Vec::with_capacity(blocks);
        let mut width = channels[0];
        for (level, kind) in config.down_block_types.iter().enumerate() {
            let b = w.at("down_blocks").at(level);
            let out = channels[level];
            let last = level + 1 == blocks;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers[level] {
                let inputs = if j == 0 { width } else { out };
                resnets.push(ResnetBlock::load(
                    &b.at("resnets").at(j),
                    inputs,
                    out,
                    Some(time_dim),
                    groups,
                    eps,
                )?);
                if kind == "CrossAttnDownBlock2D" {
                    attentions.push(SpatialTransformer::load(
                        &b.at("attentions").at(j),
                        &transformer(level, out),
                    )?);
                }
            }
            let down_sampler = if last {
                None
            } else {
                Some(Downsample::load(&b.at("downsamplers.0.conv"), out, 1)?)
            };
            down.push(match kind.as_str() {
                "CrossAttnDownBlock2D" => DownBlock::CrossAttn {
                    resnets,
                    attentions,
                    down: down_sampler,
                },
                "DownBlock2D" => DownBlock::Plain {
                    resnets,
                    down: down_sampler,
                },
                other => return Err(unsupported_block(weights, other)),
            });
            width = out;
        }

        let mid = match config.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {
                let b = w.at("mid_block");
                let c = channels[blocks - 1];
                let first =
                    ResnetBlock::load(&b.at("resnets.0"), c, c, Some(time_dim), groups, eps)?;
                // SD's middle block is one resnet, then one (attention, resnet) pair.
                let rest = vec![(
                    SpatialTransformer::load(&b.at("attentions.0"), &transformer(blocks - 1, c))?,
                    ResnetBlock::load(&b.at("resnets.1"), c, c, Some(time_dim), groups, eps)?,
                )];
                Some(MidBlock { first, rest })
            }
            None => None,
            Some(other) => return Err(unsupported_block(weights, other)),
        };

        // Up blocks walk the levels bottom-up; each resnet also takes the skip connection of
        // the matching down-block output, so input widths follow diffusers' bookkeeping.
        let reversed: Vec<i64> = channels.iter().rev().copied().collect();
        let reversed_heads: Vec<usize> = (0..blocks).rev().collect();
        let up_layers: Vec<usize> = layers.iter().rev().map(|l| l + 1).collect();
        let mut up = Vec::with_capacity(blocks);
        let mut previous = reversed[0];
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let b = w.at("up_blocks").at(i);
            let out = reversed[i];
            let skip_in = reversed[(i + 1).min(blocks - 1)];
            let last = i + 1 == blocks;
            let level = reversed_heads[i];
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..up_layers[i] {
                let skip = if j + 1 == up_layers[i] { skip_in } else { out };
                let inputs = if j == 0 { previous } else { out };
                resnets.push(ResnetBlock::load(
                    &b.at("resnets").at(j),
                    inputs + skip,
                    out,
                    Some(time_dim),
                    groups,
                    eps,
                )?);
                match kind.as_str() {
                    "CrossAttnUpBlock2D" => attentions.push(SpatialTransformer::load(
                        &b.at("attentions").at(j),
                        &transformer(level, out),
                    )?),
                    "UpBlock2D" => {}
                    other => return Err(unsupported_block(weights, other)),
                }
            }
            let up_sampler = if last {
                None
            } else {
                Some(Upsample::load(&b.at("upsamplers.0.conv"), out)?)
            };
            up.push(UpBlock {
                resnets,
                attentions,
                up: up_sampler,
            });
            previous = out;
        }

        let norm_out = GroupNorm::load(&w.at("conv_norm_out"), groups, channels[0], eps)?;
        let conv_out = Conv2d::load(&w.at("conv_out"), channels[0], config.out_channels, 3, 1, 1)?;

        Ok(UNet {
            config,
            conv_in,
            time_linear_1,
            time_linear_2,
            down,
            mid,
            up,
            norm_out,
            conv_out,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Predicts noise (or v) for `sample` `[b, c, h, w]` at `timesteps` `[b]`, attending to
    /// `context` `[b, tokens, width]`.
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor) -> Tensor {
        let kind = sample.kind();
        let temb = timestep_embedding(
            timesteps,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )
        .to_kind(kind);
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb).silu());

        let sample = if self.config.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample.shallow_clone()
        };
        let mut x = self.conv_in.forward(&sample);
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down {
            match block {
                DownBlock::Plain { resnets, down } => {
                    for resnet in resnets {
                        x = resnet.forward(&x, Some(&temb));
                        skips.push(x.shallow_clone());
                    }
                    if let Some(down) = down {
                        x = down.forward(&x);
                        skips.push(x.shallow_clone());
                    }
                }
                DownBlock::CrossAttn {
                    resnets,
                    attentions,
                    down,
                } => {
                    for (resnet, attn) in resnets.iter().zip(attentions) {
                        x = resnet.forward(&x, Some(&temb));
                        x = attn.forward(&x, context);
                        skips.push(x.shallow_clone());
                    }
                    if let Some(down) = down {
                        x = down.forward(&x);
                        skips.push(x.shallow_clone());
                    }
                }
            }
        }

        if let Some(mid) = &self.mid {
            x = mid.first.forward(&x, Some(&temb));
            for (attn, resnet) in &mid.rest {
                x = attn.forward(&x, context);
                x = resnet.forward(&x, Some(&temb));
            }
        }

        for block in &self.up {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().unwrap_or_else(|| x.shallow_clone());
                x = resnet.forward(&Tensor::cat(&[&x, &skip], 1), Some(&temb));
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(&x, context);
                }
            }
            if let Some(up) = &block.up {
                // Odd latent sizes: upsample to the size of the skip that comes next rather
                // than blindly doubling.
                let target = skips.last().map(|s| (s.size()[2], s.size()[3]));
                x = up.forward(&x, target);
            }
        }

        let x = self.norm_out.forward(&x).silu();
        self.conv_out.forward(&x)
    }
}

fn unsupported_block(weights: &Weights, kind: &str) -> Error {
    Error::bad_model(
        weights.origin(),
        format!("unet block type `{kind}` is not supported (SD 1.x/2.x blocks only)"),
    )
}

/// Sinusoidal embedding of (possibly fractional) timesteps, as in "Attention Is All You Need",
/// with diffusers' `flip_sin_to_cos` and `downscale_freq_shift` conventions.
pub fn timestep_embedding(timesteps: &Tensor, dim: i64, flip: bool, shift: f64) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent =
        Tensor::arange(half, (Kind::Float, device)) * (-(10000f64.ln())) / (half as f64 - shift);
    let freqs = exponent.exp();
    let args = timesteps.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let (first, second) = if flip {
        (args.cos(), args.sin())
    } else {
        (args.sin(), args.cos())
    };
    let emb = Tensor::cat(&[first, second], 1);
    if dim % 2 == 1 {
        emb.pad([0, 1, 0, 0], "constant", 0.0)
    } else {
        emb
    }
}
