#!/usr/bin/env bash
# Device check for a lent CUDA machine (PyTorch 2.11.0+cu130 in /opt/torch/.venv, no
# internet). Run there from the repo root, carrying `target/release/huaxian` (built here)
# and `.whl` (diffusers, transformers and their pure-Python needs as wheels, see
# /work/.library/device/README.md). It:
#   1. checks the binary really sees CUDA (libtorch_cuda linked, not dropped by --as-needed);
#   2. renders the tiny SD 1.x fixture on CPU and CUDA and compares them (a seed must give the
#      same image on both);
#   3. runs the GPU engine benchmark (fp16, 512x512, 4 images, 30 DDIM steps) against
#      diffusers on SD 1.5-sized random weights generated on the machine;
#   4. runs the worker's batching benchmark on the same weights (8 jobs x 4 images, batched
#      against one at a time; target >= 1.5x), which needs no Postgres or Redis with --direct.
# The release binaries carry line tables and exceed what a run may carry; strip copies first:
#   strip -o dist/huaxian target/release/huaxian
#   strip -o dist/worker-bench target/release/worker-bench
# and set BIN=dist/huaxian WORKER_BENCH=dist/worker-bench.
set -euo pipefail
PY=/opt/torch/.venv/bin/python
TORCH_LIB=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib)
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
BIN=${BIN:-target/release/huaxian}
WORKER_BENCH=${WORKER_BENCH:-target/release/worker-bench}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"

echo "== 1. CUDA visible to the binary"
"$BIN" generate --model tests/fixtures/models/sd1 --prompt probe --steps 1 --width 64 \
    --height 64 --count 1 --device cuda --out "$OUT/probe"

echo "== 2. CPU and CUDA agree on a seed"
for device in cpu cuda; do
    "$BIN" generate --model tests/fixtures/models/sd1 --prompt "a watercolor fox" --seed 7 \
        --steps 8 --sampler euler_a --width 64 --height 64 --count 4 --device "$device" \
        --out "$OUT/$device"
done
"$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
out = Path(sys.argv[1])
for i in range(4):
    a = np.asarray(Image.open(out / "cpu" / f"image-{i}.png"), dtype=np.int16)
    b = np.asarray(Image.open(out / "cuda" / f"image-{i}.png"), dtype=np.int16)
    d = np.abs(a - b)
    print(f"image {i}: mean {d.mean():.3f} max {d.max()} levels")
PY

echo "== 3. GPU benchmark"
"$PY" scripts/bench/engine.py --gpu --huaxian "$BIN" --model /tmp/sd15-random

echo "== 4. Worker batching on the GPU"
"$WORKER_BENCH" --direct --device cuda --dtype f16 --model /tmp/sd15-random --size 512 \
    --steps 30 --jobs 8 --runs 3 --target 1.5
