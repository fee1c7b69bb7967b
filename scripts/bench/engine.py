"""Engine benchmark: `huaxian generate` against diffusers on the same weights.

Both run as whole processes, from load to written files, on the same SD 1.5-architecture
random weights (fp16 on disk), prompt, seeds, sampler (DDIM), steps and guidance (7), with the
same thread count. Prints wall time and peak RSS side by side, and the ratios against the
targets (huaxian at most 0.9x diffusers' time and 0.8x its memory on CPU).

    python scripts/bench/engine.py            # CPU: 256x256, 4 images, 10 steps
    python scripts/bench/engine.py --gpu      # CUDA fp16: 512x512, 4 images, 30 steps
    python scripts/bench/engine.py --stock-mkl  # also huaxian with MKL's own kernel choice

huaxian lets MKL pick its matrix kernels by CPU features, where MKL alone picks by vendor
(see crates/engine/src/cpu.rs); `--stock-mkl` adds a row without that, to show its share.
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
    parser.add_argument("--stock-mkl", action="store_true",
                        help="also time huaxian with MKL choosing kernels by CPU vendor")
    args = parser.parse_args()

    subprocess.run([sys.executable, str(ROOT / "scripts/bench/make_sd15.py"), args.model], check=True)
    if args.gpu:
        device, dtype, size, count, steps = "cuda", "f16", 512, 4, 30
    else:
        device, dtype, size, count, steps = "cpu", "f32", 256, 4, 10
    if args.stock_mkl and args.gpu:
        sys.exit("--stock-mkl compares CPU kernels; leave it out with --gpu")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.pop("HUAXIAN_MKL_STOCK_DISPATCH", None)
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

    # Shared machines drift: alternate the sides and report medians, with every run printed
    # so the spread is visible.
    sides = [("huaxian", ours_argv, env), ("diffusers", theirs_argv, env)]
    if args.stock_mkl:
        stock_env = dict(env, HUAXIAN_MKL_STOCK_DISPATCH="1")
        sides.append(("huaxian (stock MKL)", ours_argv, stock_env))
    runs = {label: [] for label, _, _ in sides}
    for i in range(args.runs):
        for label, argv, side_env in sides:
            runs[label].append(run(label, argv, side_env))
        print(f"run {i + 1}: " + ", ".join(
            f"{label} {r[-1][0]:.1f} s {r[-1][1]:.2f} GiB" for label, r in runs.items()),
            flush=True)
    medians = {label: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
               for label, rs in runs.items()}
    ours, theirs = medians["huaxian"], medians["diffusers"]

    target_time, target_rss = (0.8, None) if args.gpu else (0.9, 0.8)
    print()
    print(f"setting: {device} {dtype}, {size}x{size}, {count} images, {steps} DDIM steps, "
          f"CFG 7, {args.threads} threads")
    print(f"medians of {args.runs} alternating runs")
    print(f"{'':20} {'wall s':>8} {'peak RSS GiB':>13}")
    for label, (wall, rss) in medians.items():
        print(f"{label:20} {wall:8.1f} {rss:13.2f}")
    time_ratio, rss_ratio = ours[0] / theirs[0], ours[1] / theirs[1]
    print(f"{'huaxian / diffusers':20} {time_ratio:8.2f} {rss_ratio:13.2f}")
    verdict = "met" if time_ratio <= target_time else "MISSED"
    print(f"time target <= {target_time}x: {verdict}")
    if target_rss is not None:
        verdict = "met" if rss_ratio <= target_rss else "MISSED"
        print(f"memory target <= {target_rss}x: {verdict}")


if __name__ == "__main__":
    main()
