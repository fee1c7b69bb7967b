//! The KL autoencoder of latent diffusion (Rombach et al. 2022), laid out as diffusers'
//! `AutoencoderKL`. Encodes images to latents and decodes them back, optionally in tiles.

use serde::Deserialize;
use tch::Tensor;

use super::blocks::{Downsample, ResnetBlock, Upsample};
use crate::nn::{attention, Conv2d, GroupNorm, Linear};
use crate::weights::{WeightPath, Weights};
use crate::{Error, Result};

/// `vae/config.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    /// Image channels.
    #[serde(default = "three")]
    pub in_channels: i64,
    #[serde(default = "three")]
    pub out_channels: i64,
    /// Channels of each level; the latent is `2^(levels-1)` times smaller than the image.
    pub block_out_channels: Vec<i64>,
    /// Resnets per encoder level (the decoder has one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: i64,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    /// Latents are multiplied by this before the UNet sees them.
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    /// Run in f32 even when the rest of the model runs in f16 (SD's VAE overflows in f16).
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// Block types, only checked: SD uses the plain encoder and decoder blocks.
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
}

fn three() -> i64 {
    3
}
fn one() -> usize {
    1
}
fn four() -> i64 {
    4
}
fn thirty_two() -> i64 {
    32
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    /// How many pixels one latent cell covers along each axis.
    pub fn downscale_factor(&self) -> i64 {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}

/// The single-head self-attention in the VAE's middle block.
struct MidAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl MidAttention {
    fn load(w: &WeightPath, channels: i64, groups: i64) -> Result<Self> {
        // diffusers before 0.14 named these query/key/value/proj_attn.
        let name = |new: &'static str, old: &'static str| {
            if w.contains(&format!("{new}.weight")) {
                w.at(new)
            } else {
                w.at(old)
            }
        };
        Ok(MidAttention {
            norm: GroupNorm::load(&name("group_norm", "group_norm"), groups, channels, 1e-6)?,
            q: Linear::load(&name("to_q", "query"), channels, channels, true)?,
            k: Linear::load(&name("to_k", "key"), channels, channels, true)?,
            v: Linear::load(&name("to_v", "value"), channels, channels, true)?,
            out: Linear::load(&name("to_out.0", "proj_attn"), channels, channels, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let tokens = self.norm.forward(x).view([b, c, h * w]).transpose(1, 2);
        let out = attention(
            &self.q.forward(&tokens),
            &self.k.forward(&tokens),
            &self.v.forward(&tokens),
            1,
            false,
        );
        let out = self.out.forward(&out).transpose(1, 2).reshape([b, c, h, w]);
        out + x
    }
}

struct MidBlock {
    first: ResnetBlock,
    attention: Option<MidAttention>,
    second: ResnetBlock,
}

impl MidBlock {
    fn load(w: &WeightPath, c: &VaeConfig, channels: i64) -> Result<Self> {
        let g = c.norm_num_groups;
        Ok(MidBlock {
            first: ResnetBlock::load(&w.at("resnets.0"), channels, channels, None, g, 1e-6)?,
            attention: if c.mid_block_add_attention {
                Some(MidAttention::load(&w.at("attentions.0"), channels, g)?)
            } else {
                None
            },
            second: ResnetBlock::load(&w.at("resnets.1"), channels, channels, None, g, 1e-6)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.first.forward(x, None);
        let x = match &self.attention {
            Some(a) => a.forward(&x),
            None => x,
        };
        self.second.forward(&x, None)
    }
}

struct Level {
    resnets: Vec<ResnetBlock>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

/// The autoencoder.
pub struct Vae {
    config: VaeConfig,
    enc_conv_in: Conv2d,
    enc_levels: Vec<Level>,
    enc_mid: MidBlock,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_levels: Vec<Level>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
}

impl Vae {
    pub fn load(config: VaeConfig, weights: &Weights) -> Result<Self> {
        let channels = config.block_out_channels.clone();
        let levels = channels.len();
        if levels == 0 {
            return Err(Error::bad_model(
                weights.origin(),
                "vae block_out_channels is empty",
            ));
        }
        for kind in config.down_block_types.iter().chain(&config.up_block_types) {
            if kind != "DownEncoderBlock2D" && kind != "UpDecoderBlock2D" {
                return Err(Error::bad_model(
                    weights.origin(),
                    format!("vae block type `{kind}` is not supported"),
                ));
            }
        }
        let w = weights.root();
        let g = config.norm_num_groups;
        let latent = config.latent_channels;
        let top = channels[levels - 1];

        let enc = w.at("encoder");
        let enc_conv_in =
            Conv2d::load(&enc.at("conv_in"), config.in_channels, channels[0], 3, 1, 1)?;
        let mut enc_levels = Vec::with_capacity(levels);
        let mut width = channels[0];
        for (i, &out) in channels.iter().enumerate() {
            let b = enc.at("down_blocks").at(i);
            let mut resnets = Vec::new();
            for j in 0..config.layers_per_block {
                let inputs = if j == 0 { width } else { out };
                resnets.push(ResnetBlock::load(
                    &b.at("resnets").at(j),
                    inputs,
                    out,
                    None,
                    g,
                    1e-6,
                )?);
            }
            let down = if i + 1 < levels {
                Some(Downsample::load(&b.at("downsamplers.0.conv"), out, 0)?)
            } else {
                None
            };
            enc_levels.push(Level {
                resnets,
                down,
                up: None,
            });
            width = out;
        }
        let enc_mid = MidBlock::load(&enc.at("mid_block"), &config, top)?;
        let enc_norm_out = GroupNorm::load(&enc.at("conv_norm_out"), g, top, 1e-6)?;
        let enc_conv_out = Conv2d::load(&enc.at("conv_out"), top, 2 * latent, 3, 1, 1)?;

        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::load(
                &w.at("quant_conv"),
                2 * latent,
                2 * latent,
                1,
                1,
                0,
            )?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::load(
                &w.at("post_quant_conv"),
                latent,
                latent,
                1,
                1,
                0,
            )?)
        } else {
            None
        };

        let dec = w.at("decoder");
        let dec_conv_in = Conv2d::load(&dec.at("conv_in"), latent, top, 3, 1, 1)?;
        let dec_mid = MidBlock::load(&dec.at("mid_block"), &config, top)?;
        let mut dec_levels = Vec::with_capacity(levels);
        let mut width = top;
        for (i, &out) in channels.iter().rev().enumerate() {
            let b = dec.at("up_blocks").at(i);
            let mut resnets = Vec::new();
            for j in 0..config.layers_per_block + 1 {
                let inputs = if j == 0 { width } else { out };
                resnets.push(ResnetBlock::load(
                    &b.at("resnets").at(j),
                    inputs,
                    out,
                    None,
                    g,
                    1e-6,
                )?);
            }
            let up = if i + 1 < levels {
                Some(Upsample::load(&b.at("upsamplers.0.conv"), out)?)
            } else {
                None
            };
            dec_levels.push(Level {
                resnets,
                down: None,
                up,
            });
            width = out;
        }
        let dec_norm_out = GroupNorm::load(&dec.at("conv_norm_out"), g, channels[0], 1e-6)?;
        let dec_conv_out = Conv2d::load(
            &dec.at("conv_out"),
            channels[0],
            config.out_channels,
            3,
            1,
            1,
        )?;

        Ok(Vae {
            config,
            enc_conv_in,
            enc_levels,
            enc_mid,
            enc_norm_out,
            enc_conv_out,
            quant_conv,
            post_quant_conv,
            dec_conv_in,
            dec_mid,
            dec_levels,
            dec_norm_out,
            dec_conv_out,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Encodes images in `[-1, 1]`, `[b, 3, h, w]`, into the mean and log-variance of the
    /// latent distribution, each `[b, latent, h/f, w/f]` (unscaled).
    pub fn encode(&self, images: &Tensor) -> (Tensor, Tensor) {
        let mut x = self.enc_conv_in.forward(images);
        for level in &self.enc_levels {
            for resnet in &level.resnets {
                x = resnet.forward(&x, None);
            }
            if let Some(down) = &level.down {
                x = down.forward(&x);
            }
        }
        let x = self.enc_mid.forward(&x);
        let x = self
            .enc_conv_out
            .forward(&self.enc_norm_out.forward(&x).silu());
        let x = match &self.quant_conv {
            Some(conv) => conv.forward(&x),
            None => x,
        };
        let halves = x.chunk(2, 1);
        (halves[0].shallow_clone(), halves[1].clamp(-30.0, 20.0))
    }

    /// Decodes unscaled latents into images in roughly `[-1, 1]`.
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        let x = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents),
            None => latents.shallow_clone(),
        };
        let mut x = self.dec_mid.forward(&self.dec_conv_in.forward(&x));
        for level in &self.dec_levels {
            for resnet in &level.resnets {
                x = resnet.forward(&x, None);
            }
            if let Some(up) = &level.up {
                x = up.forward(&x, None);
            }
        }
        self.dec_conv_out
            .forward(&self.dec_norm_out.forward(&x).silu())
    }

    /// Decodes in overlapping tiles of `tile` latent cells, blending the seams linearly, so a
    /// large image needs memory for one tile at a time. Small inputs decode in one piece.
    pub fn decode_tiled(&self, latents: &Tensor, tile: i64, overlap: i64) -> Tensor {
        let (_, _, h, w) = latents.size4().unwrap_or((0, 0, 0, 0));
        if h <= tile && w <= tile {
            return self.decode(latents);
        }
        let f = self.config.downscale_factor();
        let stride = (tile - overlap).max(1);
        let rows: Vec<i64> = tile_starts(h, tile, stride);
        let cols: Vec<i64> = tile_starts(w, tile, stride);
        let device = latents.device();
        let kind = latents.kind();
        let sum = Tensor::zeros(
            [latents.size()[0], self.config.out_channels, h * f, w * f],
            (kind, device),
        );
        let weight = Tensor::zeros([1, 1, h * f, w * f], (kind, device));
        for &y in &rows {
            for &x in &cols {
                let th = tile.min(h - y);
                let tw = tile.min(w - x);
                let part = latents.narrow(2, y, th).narrow(3, x, tw);
                let decoded = self.decode(&part);
                let mask = blend_mask(th * f, tw * f, overlap * f, y > 0, x > 0, kind, device);
                let mut region = sum.narrow(2, y * f, th * f).narrow(3, x * f, tw * f);
                region += &decoded * &mask;
                let mut wregion = weight.narrow(2, y * f, th * f).narrow(3, x * f, tw * f);
                wregion += &mask;
            }
        }
        sum / weight.clamp_min(1e-6)
    }
}

fn tile_starts(len: i64, tile: i64, stride: i64) -> Vec<i64> {
    let mut starts = vec![0];
    while starts.last().copied().unwrap_or(0) + tile < len {
        let next = (starts.last().copied().unwrap_or(0) + stride).min(len - tile);
        starts.push(next);
    }
    starts
}

/// A weight mask rising linearly over the overlap on the sides shared with earlier tiles.
fn blend_mask(
    h: i64,
    w: i64,
    overlap: i64,
    top: bool,
    left: bool,
    kind: tch::Kind,
    device: tch::Device,
) -> Tensor {
    let ramp = |len: i64, on: bool| {
        let ones = Tensor::ones([len], (kind, device));
        if !on || overlap <= 0 {
            return ones;
        }
        let n = overlap.min(len);
        let rise = (Tensor::arange(n, (kind, device)) + 1.0) / (n as f64 + 1.0);
        Tensor::cat(&[rise, ones.narrow(0, 0, len - n)], 0)
    };
    let rows = ramp(h, top).view([1, 1, h, 1]);
    let cols = ramp(w, left).view([1, 1, 1, w]);
    rows * cols
}
