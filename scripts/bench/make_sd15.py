"""Builds Stable Diffusion 1.5's exact architecture with random weights, fp16 on disk.

The folder is what `huaxian generate` and diffusers both load in the engine benchmark: the
UNet, VAE and CLIP ViT-L/14 text encoder with SD 1.5's configs, the real CLIP tokenizer from
the test fixtures, and SD 1.5's scheduler config. No weights are downloaded.

    python scripts/bench/make_sd15.py OUT_DIR
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests/fixtures/models/sd1/tokenizer"


def main(out: Path) -> None:
    if (out / "model_index.json").exists():
        print(f"{out} exists; reusing it")
        return
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)

    # UNet2DConditionModel's defaults are SD 1.5's UNet, save the head count and sample size.
    unet = UNet2DConditionModel(sample_size=64, attention_head_dim=8, cross_attention_dim=768)
    unet.half().save_pretrained(out / "unet", variant="fp16")
    del unet

    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    vae.half().save_pretrained(out / "vae", variant="fp16")
    del vae

    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    )
    text.half().save_pretrained(out / "text_encoder", variant="fp16")
    del text

    shutil.copytree(TOKENIZER, out / "tokenizer", dirs_exist_ok=True)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler/scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "PNDMScheduler",
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "num_train_timesteps": 1000,
                "set_alpha_to_one": False,
                "skip_prk_steps": True,
                "steps_offset": 1,
                "clip_sample": False,
            }
        )
    )
    (out / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "feature_extractor": [None, None],
                "safety_checker": [None, None],
                "requires_safety_checker": False,
                "scheduler": ["diffusers", "PNDMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
