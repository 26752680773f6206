"""Time and peak memory of the random walk: stencil/gather against dense.

The reference implementation (jiwoon-ahn/irn, ``propagate_to_edge``) builds a
dense ``N × N`` transition matrix (``N`` = grid cells) and squares it
``log2(steps)`` times; :mod:`napari_irnet.pipeline.random_walk` applies the 69-
neighbour stencil ``steps`` times instead.  This script runs every case in a
fresh subprocess (so that peak memories do not mix) and prints a markdown
table.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_random_walk.py --threads 2
    python benchmarks/bench_random_walk.py --device cuda

CPU memory is the peak resident set size of the case's process
(``getrusage(...).ru_maxrss``) and its increase over the process before the
walk (after importing torch and making the inputs); CUDA memory is
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GRIDS = (64, 128, 256, 512)
CHANNELS = (1, 40)
STRIDE = 4  # image pixels per grid cell


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: KiB units)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _inputs(grid: int, channels: int, device: str, dtype):
    """Synthetic boundary (rings of cells) and smooth maps, deterministic."""
    import torch

    g = torch.Generator().manual_seed(grid * 1000 + channels)
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    boundary = torch.zeros(grid, grid)
    maps = torch.zeros(channels, grid, grid)
    n_cells = max(4, (grid // 24) ** 2)
    centres = torch.rand(n_cells, 2, generator=g) * grid
    radii = 4 + torch.rand(n_cells, generator=g) * 8
    for i in range(n_cells):
        dist = ((yy - centres[i, 0]) ** 2 + (xx - centres[i, 1]) ** 2).sqrt()
        boundary = torch.maximum(boundary, torch.exp(-((dist - radii[i]) ** 2)))
        maps[i % channels] += torch.exp(-((dist / radii[i]) ** 2))
    return maps.to(device, dtype), boundary.to(device, dtype)


def run_case(args: argparse.Namespace) -> dict:
    """One measurement in this process; returns a JSON-able dict."""
    import torch

    from napari_irnet.pipeline.random_walk import random_walk, random_walk_dense

    torch.set_num_threads(args.threads)
    dtype = torch.float32
    x, boundary = _inputs(args.grid, args.channels, args.device, dtype)
    # warm-up on a tiny grid: kernel selection/JIT, thread pools
    small_x, small_b = _inputs(16, args.channels, args.device, dtype)
    random_walk(small_x, small_b, steps=4, method=args.method)
    if args.kind == "dense":
        random_walk_dense(small_x, small_b, steps=4)

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _peak_rss_mb()
    sync()
    start = time.perf_counter()
    if args.kind == "dense":
        out = random_walk_dense(x, boundary, steps=args.steps)
    else:
        out = random_walk(x, boundary, steps=args.steps, method=args.method)
    sync()
    seconds = time.perf_counter() - start
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mb()
    result = {"seconds": seconds, "peak_mb": peak, "delta_mb": peak - base}
    if args.kind == "dense":  # agreement of the two formulations (float32)
        ours = random_walk(x, boundary, steps=args.steps, method=args.method)
        result["rel_diff"] = float((ours - out).abs().max() / out.abs().max())
    return result


def _spawn(grid: int, channels: int, kind: str, opts: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--case",
        f"--grid={grid}",
        f"--channels={channels}",
        f"--kind={kind}",
        f"--steps={opts.steps}",
        f"--device={opts.device}",
        f"--threads={opts.threads}",
        f"--method={opts.method}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), MKL_NUM_THREADS=str(opts.threads))
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=opts.timeout)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _dense_size_gb(grid: int) -> float:
    n = grid * grid
    return n * n * 4 / 1e9


def _fmt(result: dict) -> tuple[str, str]:
    if "error" in result:
        return f"error: {result['error'][:60]}", ""
    time_s = f"{result['seconds']:.3f} s"
    mem = f"{result['peak_mb']:.0f} MB (+{result['delta_mb']:.0f})"
    return time_s, mem


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--grids", type=int, nargs="+", default=list(GRIDS))
    parser.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS))
    parser.add_argument("--method", default="auto", choices=["auto", "stencil", "gather"])
    parser.add_argument(
        "--dense-max-gb", type=float, default=0.5,
        help="run the dense formulation only where one N×N float32 matrix is at most this",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1800)
    # internal: run one case in this process
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="walk", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        args.channels = args.channels[0] if isinstance(args.channels, list) else args.channels
        print(json.dumps(run_case(args)))
        return

    import torch

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"Random walk, {args.steps} steps, float32, radius 5, beta 10 ({device_name}, "
          f"torch {torch.__version__}, method={args.method})\n")  # fmt: skip
    mem_label = "peak GPU memory" if args.device == "cuda" else "peak RSS (Δ during walk)"
    print(f"| grid (image) | C | walk time | walk {mem_label} | dense time | dense {mem_label} | max rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for grid in args.grids:
        for channels in args.channels:
            walk = _spawn(grid, channels, "walk", args)
            walk_time, walk_mem = _fmt(walk)
            size = _dense_size_gb(grid)
            if size <= args.dense_max_gb:
                dense = _spawn(grid, channels, "dense", args)
                dense_time, dense_mem = _fmt(dense)
                diff = f"{dense['rel_diff']:.1e}" if "rel_diff" in dense else ""
            else:
                dense_time, dense_mem, diff = f"skipped (N×N = {size:.2f} GB)", "", ""
            image = grid * STRIDE
            print(
                f"| {grid}² ({image}²) | {channels} | {walk_time} | {walk_mem} "
                f"| {dense_time} | {dense_mem} | {diff} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
