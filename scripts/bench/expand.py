#!/usr/bin/env python
"""Prompt-expander benchmark: greedy decoding speed of `huaxian expand` against transformers
on the same GPT-2-small-sized random weights, CPU, one process each.

Usage:  .venv/bin/python scripts/bench/expand.py [--tokens 128] [--runs 3] [--huaxian BIN]

Builds GPT-2 small's architecture (768 wide, 12 layers, 12 heads, 50257 tokens, 1024
positions) with seeded random weights in bench-out/gpt2-small (the tokenizer is the tiny
fixture's: token ids are what is timed, not words). Each side loads the model, then times
only its own decoding of --tokens greedy tokens after the same prompt, with the KV cache,
no early stop, on 2 threads. Runs alternate; the medians are printed side by side.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a lighthouse at dusk, soft light"


def build(folder: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if (folder / "model.safetensors").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(ROOT / "tests/fixtures/models/gpt2" / name, folder / name)


TRANSFORMERS = r"""
import sys, time, torch
from transformers import AutoTokenizer, GPT2LMHeadModel
torch.set_num_threads(2)
folder, tokens, prompt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = GPT2LMHeadModel.from_pretrained(folder).eval()
ids = AutoTokenizer.from_pretrained(folder)(prompt, return_tensors="pt").input_ids
with torch.no_grad():
    started = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                         use_cache=True, eos_token_id=None, pad_token_id=0)
    seconds = time.perf_counter() - started
print(f"{out.shape[1] - ids.shape[1]} tokens in {seconds:.3f} s")
"""


def run_transformers(folder: Path, tokens: int) -> float:
    out = subprocess.run([sys.executable, "-c", TRANSFORMERS, str(folder), str(tokens), PROMPT],
                         check=True, capture_output=True, text=True).stdout
    count, seconds = re.search(r"(\d+) tokens in ([\d.]+) s", out).groups()
    assert int(count) == tokens, out
    return float(seconds)


def run_huaxian(binary: str, folder: Path, tokens: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    err = subprocess.run([binary, "expand", "--model", str(folder), "--prompt", PROMPT,
                          "--greedy", "--no-stop", "--max-new-tokens", str(tokens), "--timing"],
                         check=True, capture_output=True, text=True, env=env).stderr
    count, seconds = re.search(r"(\d+) tokens in ([\d.]+) s", err).groups()
    assert int(count) == tokens, err
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--huaxian", default=str(ROOT / "target/release/huaxian"))
    parser.add_argument("--folder", default=str(ROOT / "bench-out/gpt2-small"))
    args = parser.parse_args()
    folder = Path(args.folder)
    build(folder)

    ours, theirs = [], []
    for run in range(args.runs):
        theirs.append(run_transformers(folder, args.tokens))
        ours.append(run_huaxian(args.huaxian, folder, args.tokens))
        print(f"run {run + 1}: huaxian {args.tokens / ours[-1]:.1f} tokens/s, "
              f"transformers {args.tokens / theirs[-1]:.1f} tokens/s")
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    ratio = ours_s / theirs_s
    print()
    print("| figure | huaxian | transformers | huaxian / transformers | target |")
    print("|---|---|---|---|---|")
    print(f"| greedy decoding, {args.tokens} tokens (median of {args.runs}) | {ours_s:.2f} s "
          f"({args.tokens / ours_s:.1f} tokens/s) | {theirs_s:.2f} s "
          f"({args.tokens / theirs_s:.1f} tokens/s) | {ratio:.2f} | <= 1.00 "
          f"{'met' if ratio <= 1.0 else 'not met'} |")


if __name__ == "__main__":
    main()
