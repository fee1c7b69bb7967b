//! The few layers every model here is built from, loaded by name with their shapes checked.

use tch::Tensor;

use crate::weights::WeightPath;
use crate::Result;

/// A fully connected layer, `y = x Wᵀ + b`.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &WeightPath, inputs: i64, outputs: i64, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.get("weight", &[outputs, inputs])?,
            bias: if bias {
                Some(w.get("bias", &[outputs])?)
            } else {
                None
            },
        })
    }

    /// Loads a layer whose bias is optional in the file (some exporters drop zero biases).
    pub fn load_maybe_bias(w: &WeightPath, inputs: i64, outputs: i64) -> Result<Self> {
        let bias = w.contains("bias");
        Linear::load(w, inputs, outputs, bias)
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let bias = self.bias.as_ref().map(|b| widen(b, x));
        x.linear(&widen(&self.weight, x), bias.as_ref())
    }
}

/// A 2-D convolution with square kernel, equal stride and padding on both axes.
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn load(
        w: &WeightPath,
        inputs: i64,
        outputs: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self> {
        Ok(Conv2d {
            weight: w.get("weight", &[outputs, inputs, kernel, kernel])?,
            bias: w.get("bias", &[outputs])?,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &widen(&self.weight, x),
            Some(&widen(&self.bias, x)),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// Group normalisation over `groups` groups of channels, with a learned affine.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn load(w: &WeightPath, groups: i64, channels: i64, eps: f64) -> Result<Self> {
        if groups <= 0 || channels % groups != 0 {
            return Err(crate::Error::bad_model(
                w.origin(),
                format!(
                    "`{}`: {channels} channels cannot be split into {groups} norm groups; check \
                     norm_num_groups in config.json",
                    w.prefix()
                ),
            ));
        }
        Ok(GroupNorm {
            weight: w.get("weight", &[channels])?,
            bias: w.get("bias", &[channels])?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(
            self.groups,
            Some(&widen(&self.weight, x)),
            Some(&widen(&self.bias, x)),
            self.eps,
            true,
        )
    }
}

/// Layer normalisation over the last axis.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    size: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn load(w: &WeightPath, size: i64, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.get("weight", &[size])?,
            bias: w.get("bias", &[size])?,
            size,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.size],
            Some(&widen(&self.weight, x)),
            Some(&widen(&self.bias, x)),
            self.eps,
            true,
        )
    }
}

/// `weight` in the dtype of `x`: a no-op unless the weight is kept in half precision (see
/// [`crate::weights::Weights::keeping_half`]).
pub fn widen(weight: &Tensor, x: &Tensor) -> Tensor {
    if weight.kind() == x.kind() {
        weight.shallow_clone()
    } else {
        weight.to_kind(x.kind())
    }
}

/// Multi-head attention through libtorch's fused `scaled_dot_product_attention`.
///
/// `q`, `k`, `v` are `[batch, tokens, heads * head_dim]`; the result has the same layout.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, causal: bool) -> Tensor {
    let (batch, q_len, width) = q.size3().unwrap_or((0, 0, 0));
    let kv_len = k.size()[1];
    let head_dim = width / heads;
    let split = |t: &Tensor, len: i64| t.view([batch, len, heads, head_dim]).transpose(1, 2);
    let out = Tensor::scaled_dot_product_attention(
        &split(q, q_len),
        &split(k, kv_len),
        &split(v, kv_len),
        None::<Tensor>,
        0.0,
        causal,
        None,
        false,
    );
    out.transpose(1, 2).reshape([batch, q_len, width])
}
