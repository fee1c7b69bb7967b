//! Single-file checkpoints in the original CompVis/Stability layout.
//!
//! Such a file holds the UNet under `model.diffusion_model.`, the VAE under
//! `first_stage_model.` and the text encoder under `cond_stage_model.`: OpenAI CLIP in
//! transformers layout for SD 1.x, OpenCLIP with fused qkv for SD 2.x. Rather than copy the
//! file into a second layout, we compute, for every diffusers name, where its tensor lives, and
//! let [`Weights`] serve the diffusers names from the original ones.

use std::collections::HashMap;

use crate::models::clip::ClipConfig;
use crate::models::unet::UNetConfig;
use crate::models::vae::VaeConfig;
use crate::weights::{SafetensorsFile, Source};
use crate::{Error, Result};

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP_1X: &str = "cond_stage_model.transformer.";
const CLIP_2X: &str = "cond_stage_model.model.";

/// Which family a checkpoint belongs to, detected from its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// OpenAI CLIP ViT-L text encoder, 768-wide cross-attention.
    Sd1,
    /// OpenCLIP ViT-H text encoder, 1024-wide cross-attention, linear projections.
    Sd2,
}

/// Detects SD 1.x vs 2.x from the text encoder's layout and the cross-attention width.
pub fn detect_family(file: &SafetensorsFile) -> Result<Family> {
    if file.contains(&format!(
        "{CLIP_2X}transformer.resblocks.0.attn.in_proj_weight"
    )) {
        return Ok(Family::Sd2);
    }
    let clip_1x = format!("{CLIP_1X}text_model.final_layer_norm.weight");
    if file.contains(&clip_1x) {
        return Ok(Family::Sd1);
    }
    if !file.contains(&format!("{UNET}conv_in.weight"))
        && !file.contains(&format!("{UNET}input_blocks.0.0.weight"))
    {
        return Err(Error::bad_model(
            file.path(),
            "not a Stable Diffusion checkpoint: no `model.diffusion_model.*` tensors",
        ));
    }
    Err(Error::bad_model(
        file.path(),
        "the checkpoint has no text encoder (`cond_stage_model.*`); pass a diffusers folder \
         instead, or a checkpoint that includes one",
    ))
}

/// The UNet's level structure read off the original key names.
struct UNetLayout {
    levels: usize,
    layers: usize,
    channels: Vec<i64>,
    attention: Vec<bool>,
}

fn unet_layout(file: &SafetensorsFile) -> Result<UNetLayout> {
    let names = file.names();
    let mut downsamplers: Vec<usize> = names
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(&format!("{UNET}input_blocks."))?;
            let (index, tail) = rest.split_once('.')?;
            (tail == "0.op.weight")
                .then(|| index.parse().ok())
                .flatten()
        })
        .collect();
    downsamplers.sort_unstable();
    let Some(&first) = downsamplers.first() else {
        return Err(Error::bad_model(
            file.path(),
            "cannot read the UNet layout: no `input_blocks.N.0.op` downsamplers",
        ));
    };
    let layers = first - 1;
    let levels = downsamplers.len() + 1;
    let mut channels = Vec::new();
    let mut attention = Vec::new();
    for level in 0..levels {
        let n = 1 + level * (layers + 1);
        let key = format!("{UNET}input_blocks.{n}.0.out_layers.3.weight");
        let shape = file
            .shape(&key)
            .ok_or_else(|| Error::bad_model(file.path(), format!("tensor `{key}` is missing")))?;
        channels.push(shape[0]);
        attention.push(file.contains(&format!("{UNET}input_blocks.{n}.1.proj_in.weight")));
    }
    Ok(UNetLayout {
        levels,
        layers,
        channels,
        attention,
    })
}

/// Configs for a checkpoint with no config folder, from its shapes and the family's
/// published hyperparameters (heads of 64 channels for SD 2.x, 8 heads for SD 1.x).
pub fn infer_configs(
    file: &SafetensorsFile,
    family: Family,
) -> Result<(UNetConfig, VaeConfig, ClipConfig)> {
    let layout = unet_layout(file)?;
    let missing = |k: &str| Error::bad_model(file.path(), format!("tensor `{k}` is missing"));
    let shape = |k: String| file.shape(&k).ok_or_else(|| missing(&k));

    let attn_level = layout.attention.iter().position(|&a| a).unwrap_or(0);
    let n = 1 + attn_level * (layout.layers + 1);
    let context = shape(format!(
        "{UNET}input_blocks.{n}.1.transformer_blocks.0.attn2.to_k.weight"
    ))?[1];
    let linear = shape(format!("{UNET}input_blocks.{n}.1.proj_in.weight"))?.len() == 2;
    let heads: Vec<i64> = match family {
        Family::Sd1 => vec![8; layout.levels],
        Family::Sd2 => layout.channels.iter().map(|c| (c / 64).max(1)).collect(),
    };
    let down: Vec<String> = layout
        .attention
        .iter()
        .map(|&a| {
            if a {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
            .to_string()
        })
        .collect();
    let up: Vec<String> = layout
        .attention
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" }.to_string())
        .collect();
    let unet: UNetConfig = serde_json::from_value(serde_json::json!({
        "in_channels": shape(format!("{UNET}input_blocks.0.0.weight"))?[1],
        "out_channels": shape(format!("{UNET}out.2.weight"))?[0],
        "block_out_channels": layout.channels,
        "layers_per_block": layout.layers,
        "down_block_types": down,
        "up_block_types": up,
        "cross_attention_dim": context,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "norm_num_groups": norm_groups(&layout.channels),
    }))
    .map_err(|e| Error::bad_model(file.path(), format!("cannot infer the UNet config: {e}")))?;

    let mut vae_channels = Vec::new();
    while let Some(s) = file.shape(&format!(
        "{VAE}encoder.down.{}.block.0.conv1.weight",
        vae_channels.len()
    )) {
        vae_channels.push(s[0]);
    }
    let mut vae_layers = 0;
    while file.contains(&format!(
        "{VAE}encoder.down.0.block.{vae_layers}.conv1.weight"
    )) {
        vae_layers += 1;
    }
    let latent = shape(format!("{VAE}decoder.conv_in.weight"))?[1];
    let vae: VaeConfig = serde_json::from_value(serde_json::json!({
        "block_out_channels": vae_channels,
        "layers_per_block": vae_layers,
        "latent_channels": latent,
        "norm_num_groups": norm_groups(&vae_channels),
    }))
    .map_err(|e| Error::bad_model(file.path(), format!("cannot infer the VAE config: {e}")))?;

    let clip = match family {
        Family::Sd1 => {
            let p = format!("{CLIP_1X}text_model.");
            let embed = shape(format!("{p}embeddings.token_embedding.weight"))?;
            let mut layers = 0;
            while file.contains(&format!("{p}encoder.layers.{layers}.layer_norm1.weight")) {
                layers += 1;
            }
            ClipConfig {
                vocab_size: embed[0],
                hidden_size: embed[1],
                intermediate_size: shape(format!("{p}encoder.layers.0.mlp.fc1.weight"))?[0],
                num_attention_heads: (embed[1] / 64).max(1),
                num_hidden_layers: layers,
                max_position_embeddings: shape(format!("{p}embeddings.position_embedding.weight"))?
                    [0],
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
            }
        }
        Family::Sd2 => {
            let embed = shape(format!("{CLIP_2X}token_embedding.weight"))?;
            let mut layers: usize = 0;
            while file.contains(&format!(
                "{CLIP_2X}transformer.resblocks.{layers}.ln_1.weight"
            )) {
                layers += 1;
            }
            ClipConfig {
                vocab_size: embed[0],
                hidden_size: embed[1],
                intermediate_size: shape(format!(
                    "{CLIP_2X}transformer.resblocks.0.mlp.c_fc.weight"
                ))?[0],
                num_attention_heads: (embed[1] / 64).max(1),
                // SD 2.x conditions on the penultimate layer: the last one is never loaded.
                num_hidden_layers: layers.saturating_sub(1),
                max_position_embeddings: shape(format!("{CLIP_2X}positional_embedding"))?[0],
                hidden_act: "gelu".into(),
                layer_norm_eps: 1e-5,
            }
        }
    };
    Ok((unet, vae, clip))
}

/// Every SD release normalises in 32 groups; smaller test models can't, so take the largest
/// group count up to 32 that divides every level.
fn norm_groups(channels: &[i64]) -> i64 {
    fn gcd(a: i64, b: i64) -> i64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    channels.iter().fold(32, |g, &c| gcd(g, c)).max(1)
}

/// Diffusers UNet names served from the original layout.
pub fn unet_aliases(
    file: &SafetensorsFile,
    config: &UNetConfig,
) -> Result<HashMap<String, Source>> {
    let layout = unet_layout(file)?;
    let blocks = config.block_out_channels.len();
    let layers = config.layers_per_block.expand(blocks, "layers_per_block")?;
    if layout.levels != blocks || layers.iter().any(|&l| l != layout.layers) {
        return Err(Error::bad_model(
            file.path(),
            format!(
                "the checkpoint's UNet has {} levels of {} resnets, the config {blocks} levels of {:?}",
                layout.levels, layout.layers, layers
            ),
        ));
    }
    let per = layout.layers;
    let mut map: Vec<(String, String)> = vec![
        ("time_embed.0".into(), "time_embedding.linear_1".into()),
        ("time_embed.2".into(), "time_embedding.linear_2".into()),
        ("input_blocks.0.0".into(), "conv_in".into()),
        ("out.0".into(), "conv_norm_out".into()),
        ("out.2".into(), "conv_out".into()),
        ("middle_block.0".into(), "mid_block.resnets.0".into()),
        ("middle_block.1".into(), "mid_block.attentions.0".into()),
        ("middle_block.2".into(), "mid_block.resnets.1".into()),
    ];
    for level in 0..blocks {
        for j in 0..per {
            let n = 1 + level * (per + 1) + j;
            map.push((
                format!("input_blocks.{n}.0"),
                format!("down_blocks.{level}.resnets.{j}"),
            ));
            map.push((
                format!("input_blocks.{n}.1"),
                format!("down_blocks.{level}.attentions.{j}"),
            ));
        }
        if level + 1 < blocks {
            let n = 1 + level * (per + 1) + per;
            map.push((
                format!("input_blocks.{n}.0.op"),
                format!("down_blocks.{level}.downsamplers.0.conv"),
            ));
        }
    }
    for level in 0..blocks {
        let has_attention = config.up_block_types[level] == "CrossAttnUpBlock2D";
        for j in 0..=per {
            let n = level * (per + 1) + j;
            map.push((
                format!("output_blocks.{n}.0"),
                format!("up_blocks.{level}.resnets.{j}"),
            ));
            if has_attention {
                map.push((
                    format!("output_blocks.{n}.1"),
                    format!("up_blocks.{level}.attentions.{j}"),
                ));
            }
            if j == per && level + 1 < blocks {
                let at = if has_attention { 2 } else { 1 };
                map.push((
                    format!("output_blocks.{n}.{at}.conv"),
                    format!("up_blocks.{level}.upsamplers.0.conv"),
                ));
            }
        }
    }
    let renames = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ];

    let mut aliases = HashMap::new();
    for name in file.names() {
        let Some(rest) = name.strip_prefix(UNET) else {
            continue;
        };
        let Some((old, new)) = map
            .iter()
            .filter(|(old, _)| rest.starts_with(&format!("{old}.")))
            .max_by_key(|(old, _)| old.len())
        else {
            continue;
        };
        let mut tail = rest[old.len() + 1..].to_string();
        for (from, to) in renames {
            if let Some(t) = tail.strip_prefix(from) {
                tail = format!("{to}{t}");
            }
        }
        aliases.insert(format!("{new}.{tail}"), Source::Renamed(name.clone()));
    }
    Ok(aliases)
}

/// Diffusers VAE names served from the original layout.
pub fn vae_aliases(file: &SafetensorsFile, config: &VaeConfig) -> HashMap<String, Source> {
    let levels = config.block_out_channels.len();
    let mut aliases = HashMap::new();
    for name in file.names() {
        let Some(rest) = name.strip_prefix(VAE) else {
            continue;
        };
        let Some(new) = vae_name(rest, levels) else {
            continue;
        };
        let conv_as_linear = rest.contains("mid.attn_1.")
            && [".q.weight", ".k.weight", ".v.weight", ".proj_out.weight"]
                .iter()
                .any(|s| rest.ends_with(s));
        let source = if conv_as_linear {
            Source::ConvAsLinear(name.clone())
        } else {
            Source::Renamed(name.clone())
        };
        aliases.insert(new, source);
    }
    aliases
}

fn vae_name(rest: &str, levels: usize) -> Option<String> {
    let (part, tail) = rest.split_once('.')?;
    if part == "quant_conv" || part == "post_quant_conv" {
        return Some(rest.to_string());
    }
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let pieces: Vec<&str> = tail.split('.').collect();
    let mapped: String = match pieces.as_slice() {
        ["conv_in", ..] | ["conv_out", ..] => tail.to_string(),
        ["norm_out", rest @ ..] => format!("conv_norm_out.{}", rest.join(".")),
        ["mid", block, rest @ ..] => {
            let head = match *block {
                "block_1" => "mid_block.resnets.0".to_string(),
                "block_2" => "mid_block.resnets.1".to_string(),
                "attn_1" => "mid_block.attentions.0".to_string(),
                _ => return None,
            };
            let rest = resnet_or_attention_tail(rest);
            format!("{head}.{rest}")
        }
        ["down", i, "block", j, rest @ ..] => {
            format!(
                "down_blocks.{i}.resnets.{j}.{}",
                resnet_or_attention_tail(rest)
            )
        }
        ["down", i, "downsample", "conv", rest @ ..] => {
            format!("down_blocks.{i}.downsamplers.0.conv.{}", rest.join("."))
        }
        ["up", i, kind, rest @ ..] => {
            // The original decoder numbers its levels bottom-up, diffusers top-down.
            let level: usize = i.parse().ok()?;
            let ours = levels.checked_sub(level + 1)?;
            match (*kind, rest) {
                ("block", [j, rest @ ..]) => {
                    format!(
                        "up_blocks.{ours}.resnets.{j}.{}",
                        resnet_or_attention_tail(rest)
                    )
                }
                ("upsample", ["conv", rest @ ..]) => {
                    format!("up_blocks.{ours}.upsamplers.0.conv.{}", rest.join("."))
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!("{part}.{mapped}"))
}

fn resnet_or_attention_tail(rest: &[&str]) -> String {
    let joined = rest.join(".");
    let renames = [
        ("nin_shortcut", "conv_shortcut"),
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ];
    for (from, to) in renames {
        if let Some(t) = joined.strip_prefix(from) {
            return format!("{to}{t}");
        }
    }
    joined
}

/// Diffusers text-encoder names served from the original layout.
pub fn clip_aliases(file: &SafetensorsFile, family: Family) -> HashMap<String, Source> {
    let mut aliases = HashMap::new();
    match family {
        Family::Sd1 => {
            for name in file.names() {
                if let Some(rest) = name.strip_prefix(CLIP_1X) {
                    aliases.insert(rest.to_string(), Source::Renamed(name.clone()));
                }
            }
        }
        Family::Sd2 => {
            let p = CLIP_2X;
            let t = "text_model.";
            let renamed = |a: &mut HashMap<String, Source>, new: String, old: String| {
                a.insert(new, Source::Renamed(old));
            };
            renamed(
                &mut aliases,
                format!("{t}embeddings.token_embedding.weight"),
                format!("{p}token_embedding.weight"),
            );
            renamed(
                &mut aliases,
                format!("{t}embeddings.position_embedding.weight"),
                format!("{p}positional_embedding"),
            );
            for param in ["weight", "bias"] {
                renamed(
                    &mut aliases,
                    format!("{t}final_layer_norm.{param}"),
                    format!("{p}ln_final.{param}"),
                );
            }
            let mut i = 0;
            while file.contains(&format!("{p}transformer.resblocks.{i}.ln_1.weight")) {
                let old = format!("{p}transformer.resblocks.{i}.");
                let new = format!("{t}encoder.layers.{i}.");
                for param in ["weight", "bias"] {
                    for (o, n) in [
                        ("ln_1", "layer_norm1"),
                        ("ln_2", "layer_norm2"),
                        ("attn.out_proj", "self_attn.out_proj"),
                        ("mlp.c_fc", "mlp.fc1"),
                        ("mlp.c_proj", "mlp.fc2"),
                    ] {
                        renamed(
                            &mut aliases,
                            format!("{new}{n}.{param}"),
                            format!("{old}{o}.{param}"),
                        );
                    }
                    for (index, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                        aliases.insert(
                            format!("{new}self_attn.{proj}.{param}"),
                            Source::Chunk {
                                name: format!("{old}attn.in_proj_{param}"),
                                index: index as i64,
                                parts: 3,
                            },
                        );
                    }
                }
                i += 1;
            }
        }
    }
    aliases
}
