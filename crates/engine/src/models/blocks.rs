//! Building blocks shared by the UNet and the VAE: resnets, resampling, attention.

use tch::Tensor;

use crate::nn::{attention, Conv2d, GroupNorm, LayerNorm, Linear};
use crate::weights::WeightPath;
use crate::Result;

/// diffusers' `ResnetBlock2D`: two 3×3 convs with group norms, an optional timestep
/// embedding added between them, and a 1×1 shortcut when the width changes.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn load(
        w: &WeightPath,
        inputs: i64,
        outputs: i64,
        time_dim: Option<i64>,
        groups: i64,
        eps: f64,
    ) -> Result<Self> {
        let time_proj = match time_dim {
            Some(t) => Some(Linear::load(&w.at("time_emb_proj"), t, outputs, true)?),
            None => None,
        };
        // Older VAE exports name the shortcut `nin_shortcut`; diffusers renamed it.
        let shortcut = if inputs == outputs {
            None
        } else {
            Some(Conv2d::load(
                &w.at("conv_shortcut"),
                inputs,
                outputs,
                1,
                1,
                0,
            )?)
        };
        Ok(ResnetBlock {
            norm1: GroupNorm::load(&w.at("norm1"), groups, inputs, eps)?,
            conv1: Conv2d::load(&w.at("conv1"), inputs, outputs, 3, 1, 1)?,
            time_proj,
            norm2: GroupNorm::load(&w.at("norm2"), groups, outputs, eps)?,
            conv2: Conv2d::load(&w.at("conv2"), outputs, outputs, 3, 1, 1)?,
            shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(temb)) = (&self.time_proj, temb) {
            h += proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.shortcut {
            Some(shortcut) => shortcut.forward(x) + h,
            None => x + h,
        }
    }
}

/// A strided 3×3 conv that halves the resolution. `padding` 1 in the UNet; 0 in the VAE,
/// which pads asymmetrically (right and bottom only) first.
pub struct Downsample {
    conv: Conv2d,
    asymmetric: bool,
}

impl Downsample {
    pub fn load(w: &WeightPath, channels: i64, padding: i64) -> Result<Self> {
        Ok(Downsample {
            conv: Conv2d::load(w, channels, channels, 3, 2, padding)?,
            asymmetric: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.asymmetric {
            self.conv.forward(&x.pad([0, 1, 0, 1], "constant", 0.0))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour 2× upsampling followed by a 3×3 conv.
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn load(w: &WeightPath, channels: i64) -> Result<Self> {
        Ok(Upsample {
            conv: Conv2d::load(w, channels, channels, 3, 1, 1)?,
        })
    }

    /// Upsamples to `size` when given (odd sizes), else doubles.
    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let (h, w) = match size {
            Some(s) => s,
            None => (x.size()[2] * 2, x.size()[3] * 2),
        };
        self.conv.forward(&x.upsample_nearest2d([h, w], None, None))
    }
}

/// The shape of a [`SpatialTransformer`].
pub struct TransformerShape {
    pub channels: i64,
    pub heads: i64,
    pub depth: usize,
    pub context: i64,
    pub groups: i64,
    pub linear_projection: bool,
}

/// diffusers' `Transformer2DModel` for continuous input: norm, project in, transformer
/// blocks attending to themselves and to the text, project out, add the input.
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
    heads: i64,
}

enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    geglu: Linear,
    ff_out: Linear,
}

struct CrossAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl CrossAttention {
    fn load(w: &WeightPath, dim: i64, context: i64) -> Result<Self> {
        Ok(CrossAttention {
            q: Linear::load_maybe_bias(&w.at("to_q"), dim, dim)?,
            k: Linear::load_maybe_bias(&w.at("to_k"), context, dim)?,
            v: Linear::load_maybe_bias(&w.at("to_v"), context, dim)?,
            out: Linear::load(&w.at("to_out.0"), dim, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, heads: i64) -> Tensor {
        let h = attention(
            &self.q.forward(x),
            &self.k.forward(context),
            &self.v.forward(context),
            heads,
            false,
        );
        self.out.forward(&h)
    }
}

impl SpatialTransformer {
    pub fn load(w: &WeightPath, shape: &TransformerShape) -> Result<Self> {
        let c = shape.channels;
        let projection = |w: &WeightPath, i: i64, o: i64| -> Result<Projection> {
            Ok(if shape.linear_projection {
                Projection::Linear(Linear::load(w, i, o, true)?)
            } else {
                Projection::Conv(Conv2d::load(w, i, o, 1, 1, 0)?)
            })
        };
        let mut blocks = Vec::with_capacity(shape.depth);
        for i in 0..shape.depth {
            let b = w.at("transformer_blocks").at(i);
            blocks.push(TransformerBlock {
                norm1: LayerNorm::load(&b.at("norm1"), c, 1e-5)?,
                attn1: CrossAttention::load(&b.at("attn1"), c, c)?,
                norm2: LayerNorm::load(&b.at("norm2"), c, 1e-5)?,
                attn2: CrossAttention::load(&b.at("attn2"), c, shape.context)?,
                norm3: LayerNorm::load(&b.at("norm3"), c, 1e-5)?,
                geglu: Linear::load(&b.at("ff.net.0.proj"), c, c * 8, true)?,
                ff_out: Linear::load(&b.at("ff.net.2"), c * 4, c, true)?,
            });
        }
        Ok(SpatialTransformer {
            norm: GroupNorm::load(&w.at("norm"), shape.groups, c, 1e-6)?,
            proj_in: projection(&w.at("proj_in"), c, c)?,
            blocks,
            proj_out: projection(&w.at("proj_out"), c, c)?,
            heads: shape.heads,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let to_tokens = |t: Tensor| t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        let to_image = |t: Tensor| t.reshape([b, h, w, c]).permute([0, 3, 1, 2]).contiguous();

        let normed = self.norm.forward(x);
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)),
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, self.heads);
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(tokens)),
            Projection::Linear(linear) => to_image(linear.forward(&tokens)),
        };
        out + x
    }
}

impl TransformerBlock {
    fn forward(&self, x: &Tensor, context: &Tensor, heads: i64) -> Tensor {
        let n = self.norm1.forward(x);
        let x = x + self.attn1.forward(&n, &n, heads);
        let x = &x + self.attn2.forward(&self.norm2.forward(&x), context, heads);

        // GEGLU (Shazeer 2020): half the projection gates the other half through GELU.
        let projected = self.geglu.forward(&self.norm3.forward(&x));
        let halves = projected.chunk(2, -1);
        let gated = &halves[0] * halves[1].gelu("none");
        x + self.ff_out.forward(&gated)
    }
}
