"""The diffusers side of the engine benchmark: one whole process, load to written files.

    python scripts/bench/diffusers_generate.py MODEL OUT DEVICE DTYPE SIZE COUNT STEPS
"""

import sys
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

model, out, device, dtype, size, count, steps = sys.argv[1:8]
size, count, steps = int(size), int(count), int(steps)
dtype = {"f32": torch.float32, "f16": torch.float16}[dtype]

pipe = StableDiffusionPipeline.from_pretrained(
    model, torch_dtype=dtype, variant="fp16", safety_checker=None, requires_safety_checker=False
)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe = pipe.to(device)
pipe.set_progress_bar_config(disable=True)
generators = [torch.Generator("cpu").manual_seed(1234 + i) for i in range(count)]
images = pipe(
    "a lighthouse on a cliff at dusk, oil painting",
    negative_prompt="blurry",
    width=size,
    height=size,
    num_inference_steps=steps,
    guidance_scale=7.0,
    num_images_per_prompt=count,
    generator=generators,
).images
Path(out).mkdir(parents=True, exist_ok=True)
for i, image in enumerate(images):
    image.save(Path(out) / f"image-{i}.png")
