"""Engine benchmark: `huaxian generate` against diffusers on the same weights.

Both run as whole processes, from load to written files, on the same SD 1.5-architecture
random weights (fp16 on disk), prompt, seeds, sampler (DDIM), steps and guidance (7), with the
same thread count. Prints wall time and peak RSS side by side, and the ratios against the
targets (huaxian at most 0.9x diffusers' time and 0.8x its memory on CPU).

    python scripts/bench/engine.py            # CPU: 256x256, 4 images, 10 steps
    python scripts/bench/engine.py --gpu      # CUDA fp16: 512x512, 4 images, 30 steps
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(label, argv, env):
    """Runs argv as a child; returns (wall seconds, peak RSS in GiB). Each child is measured
    from a fresh fork via wait4's rusage, so one run's peak never leaks into another's."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if status != 0:
        sys.exit(f"{label} failed with status {status}")
    return wall, usage.ru_maxrss / (1024 * 1024)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--model", default=str(ROOT / "bench-out/sd15-random"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--huaxian", default=str(ROOT / "target/release/huaxian"))
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of each side, alternating; the median is reported")
    args = parser.parse_args()

    subprocess.run([sys.executable, str(ROOT / "scripts/bench/make_sd15.py"), args.model], check=True)
    if args.gpu:
        device, dtype, size, count, steps = "cuda", "f16", 512, 4, 30
    else:
        device, dtype, size, count, steps = "cpu", "f32", 256, 4, 10
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out = ROOT / "bench-out"

    ours_argv = [
        args.huaxian, "generate", "--model", args.model, "--prompt",
        "a lighthouse on a cliff at dusk, oil painting", "--negative", "blurry",
        "--seed", "1234", "--steps", str(steps), "--sampler", "ddim", "--guidance", "7",
        "--width", str(size), "--height", str(size), "--count", str(count),
        "--device", device, "--dtype", dtype, "--out", str(out / "huaxian")]
    theirs_argv = [
        sys.executable, str(ROOT / "scripts/bench/diffusers_generate.py"), args.model,
        str(out / "diffusers"), device, dtype, str(size), str(count), str(steps)]

    # Shared machines drift: alternate the two sides and report medians, with every run
    # printed so the spread is visible.
    ours_runs, theirs_runs = [], []
    for i in range(args.runs):
        ours_runs.append(run("huaxian", ours_argv, env))
        theirs_runs.append(run("diffusers", theirs_argv, env))
        print(f"run {i + 1}: huaxian {ours_runs[-1][0]:.1f} s {ours_runs[-1][1]:.2f} GiB, "
              f"diffusers {theirs_runs[-1][0]:.1f} s {theirs_runs[-1][1]:.2f} GiB", flush=True)
    ours = (statistics.median(r[0] for r in ours_runs), statistics.median(r[1] for r in ours_runs))
    theirs = (statistics.median(r[0] for r in theirs_runs),
              statistics.median(r[1] for r in theirs_runs))

    target_time, target_rss = (0.8, None) if args.gpu else (0.9, 0.8)
    print()
    print(f"setting: {device} {dtype}, {size}x{size}, {count} images, {steps} DDIM steps, "
          f"CFG 7, {args.threads} threads")
    print(f"medians of {args.runs} alternating runs")
    print(f"{'':10} {'wall s':>8} {'peak RSS GiB':>13}")
    print(f"{'huaxian':10} {ours[0]:8.1f} {ours[1]:13.2f}")
    print(f"{'diffusers':10} {theirs[0]:8.1f} {theirs[1]:13.2f}")
    time_ratio, rss_ratio = ours[0] / theirs[0], ours[1] / theirs[1]
    print(f"{'ratio':10} {time_ratio:8.2f} {rss_ratio:13.2f}")
    verdict = "met" if time_ratio <= target_time else "MISSED"
    print(f"time target <= {target_time}x: {verdict}")
    if target_rss is not None:
        verdict = "met" if rss_ratio <= target_rss else "MISSED"
        print(f"memory target <= {target_rss}x: {verdict}")


if __name__ == "__main__":
    main()
