"""Prediction time and memory from 512² to 8192² at a constant density of objects.

    python benchmarks/bench_scale.py [--sizes 512 1024 2048 4096 8192] [--threads 2]
                                     [--device cpu] [--busy]

The image is the bundled sample cells (``sample_data/cells``, six 256² images
with 31 cells: about one cell per 100×100 pixels) tiled to each size, and the
model the bundled demo checkpoint with its own parameters, as a new user
would run them. Every size runs in a fresh process, so that its peak
resident set size (RSS) is its own.

Printed per size: instances found, the instance walk's planes (walked /
classes × clusters) and window cells (sum of the window areas over the grid
cells), seconds per stage, the seconds per megapixel of everything after the
networks, the whole prediction (wall clock, and the processor time of all
its threads, which other processes on a shared machine disturb less), and
the peak RSS.

The stages are those of ``napari-irnet predict`` (no seeds: no file holds
them); ``--seeds`` times the seeds stage as well, which the plugin computes
for its seeds layer (with the bundled model's refinement by a vote in image
segments).

``--repeat N`` runs every size N times (each in a fresh process) and
prints the run of the shortest total, with the range of the post-processing
seconds per megapixel over the N runs: on a shared machine a disturbed run
can take half as long again.

``--busy`` runs every size a second time while another process keeps one
core busy with the same kind of work (many small torch operations), as on a
shared machine or beside napari's own threads.

``bench_walk_agreement.py`` compares the local instance walk with the
global one on these images and on CoNSeP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT / "sample_data" / "cells"


def tiled_sample(size: int):
    """The six sample images (and their instances and classes) tiled to ``size`` × ``size``.

    Returns (image (S, S, 3) uint8, instances (S, S) int32, {instance id: class name}).
    """
    import numpy as np

    from napari_irnet.io.images import read_image, read_label_image

    names = sorted(p.stem for p in (SAMPLES / "images").glob("*.png"))
    table = json.loads((SAMPLES / "instances.json").read_text())
    images = [read_image(SAMPLES / "images" / f"{n}.png") for n in names]
    insts = [np.asarray(read_label_image(SAMPLES / "inst" / f"{n}.png"), np.int64) for n in names]
    th, tw = images[0].shape[:2]
    rows, cols = -(-size // th), -(-size // tw)
    image = np.zeros((rows * th, cols * tw, 3), np.uint8)
    inst = np.zeros((rows * th, cols * tw), np.int32)
    labels: dict[int, str] = {}
    next_id = 1
    for r in range(rows):
        for c in range(cols):
            i = (r * cols + c + r) % len(names)  # shift every row so that tiles do not line up in columns
            ys, xs = slice(r * th, (r + 1) * th), slice(c * tw, (c + 1) * tw)
            image[ys, xs] = images[i]
            src = insts[i]
            for old in np.unique(src[src > 0]):
                inst[ys, xs][src == old] = next_id
                labels[next_id] = table[names[i]][str(old)]
                next_id += 1
    return image[:size, :size], inst[:size, :size], labels


def tiled_sample_item(size: int, classes: list[str]):
    """:func:`tiled_sample` as ``(image, item)``: an item of ``bench_quality``'s scorer, class ids from ``classes``."""
    import numpy as np
    from bench_quality import _make_item

    image, gt, gt_classes = tiled_sample(size)
    table = {i: classes.index(c) + 1 for i, c in gt_classes.items()}
    sem = np.zeros_like(gt)
    for i, c in table.items():
        sem[gt == i] = c
    return image, _make_item(f"cells_{size}", image, gt, sem, table, sorted({c - 1 for c in table.values()}), size)


def _cpu_seconds() -> float:
    """Processor time of this process so far (user + system, every thread): what the work cost,
    less affected than the wall time by other processes on a shared machine."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(size: int, device: str, method: str = "auto", with_seeds: bool = False) -> dict:
    """Predict one tiled image, timing every stage; returns a dict of numbers."""
    import numpy as np
    import torch

    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.pipeline.inference import compute_cams, compute_irnet
    from napari_irnet.pipeline.instance_walk import instance_walk_argmax
    from napari_irnet.pipeline.random_walk import apply_transition, transition_weights
    from napari_irnet.pipeline.stages import assign_from_argmax, cluster_centroids, find_centroids, seeds_from_cams, semantic_from_argmax, upsampled_argmax

    model = load_checkpoint(ROOT / "napari_irnet" / "data" / "demo_model.pt")
    p = model.params.replace(instance_walk=method)
    image, _, _ = tiled_sample(size)
    ids = model.class_ids(model.classes)
    times: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - t
        return out

    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    cam = timed("CAM", lambda: compute_cams(model.cam, image, ids, p, device))
    irn = timed("IRNet", lambda: compute_irnet(model.irn, image, p, device))
    t1 = time.perf_counter()
    if with_seeds:
        timed("seeds", lambda: seeds_from_cams(cam.high_res, ids, p.seed_fg_threshold, p.seed_bg_threshold, image, p.use_crf))
    centroids = timed("centroids", lambda: find_centroids(irn.displacement, p.centroid_steps))
    clusters = timed("clusters", lambda: cluster_centroids(centroids, irn.displacement, p.cluster_threshold))
    dev = torch.device(device)
    boundary = irn.boundary.to(dev)
    weights = timed("weights", lambda: transition_weights(boundary, p.radius, p.beta))
    H, W = image.shape[:2]
    argmax, plan = timed(
        "instance walk",
        lambda: instance_walk_argmax(
            cam.strided.to(dev), boundary, clusters, (H, W), beta=p.beta, steps=p.walk_steps,
            radius=p.radius, tolerance=p.walk_tolerance, method=p.instance_walk, weights=weights,
        ),
    )  # fmt: skip
    k = int(clusters.max()) + 1
    inst = timed("instances", lambda: assign_from_argmax(argmax, np.repeat(ids, k), (H, W), p.instance_bg_threshold, p.min_fragment_fraction))

    def semantic():
        walked = apply_transition(cam.strided.to(dev) * (1 - boundary), weights, p.walk_steps, p.radius)
        return semantic_from_argmax(upsampled_argmax(walked, (H, W)), ids, (H, W), p.semantic_bg_threshold)

    timed("semantic walk", semantic)
    t2 = time.perf_counter()
    return {
        "size": size,
        "method": plan.method,
        "instances": len(inst.records),
        "planes_walked": len({w.plane for w in plan.windows}) if plan.method == "local" else plan.planes,
        "planes": plan.planes,
        "window_cells": (plan.window_cells if plan.method == "local" else plan.global_cells) / plan.grid_cells,
        "rounds": plan.rounds,
        "times": times,
        "networks_s": t1 - t0,
        "post_s": t2 - t1,
        "total_s": t2 - t0,
        "cpu_s": _cpu_seconds() - cpu0,
        "peak_rss_mb": _rss_mb(),
    }


def _child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    print(json.dumps(run_one(args.size, args.device, args.method, args.seeds)))


def _spawn(size: int, args, method: str = "auto") -> dict:
    cmd = [sys.executable, __file__, "--child", "--size", str(size), "--threads", str(args.threads), "--device", args.device, "--method", method] + (["--seeds"] if args.seeds else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"size": size, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best_of(size: int, args) -> dict:
    """The run of ``size`` with the shortest total of ``args.repeat`` runs, with the range of their s/MP."""
    runs = [_spawn(size, args) for _ in range(max(1, args.repeat))]
    done = [r for r in runs if "error" not in r]
    if not done:
        return runs[0]
    best = dict(min(done, key=lambda r: r["total_s"]))
    per_mp = [r["post_s"] / (size**2 / 1e6) for r in done]
    best["post_s_per_mp_range"] = (min(per_mp), max(per_mp))
    best["runs"] = len(done)
    return best


def _busy_process() -> subprocess.Popen:
    """Another process keeping one core busy with many small torch operations."""
    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "a = torch.rand(64, 64)\n"
        "while True:\n"
        "    a = (a @ a).clamp_(0, 1) + 0.001\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


STAGES = ("CAM", "IRNet", "seeds", "centroids", "clusters", "weights", "instance walk", "instances", "semantic walk")


def _table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    head = ["image", "instances", "planes walked", "window cells / grid"] + list(STAGES) + ["post-processing s/MP", "total s", "CPU s", "peak RSS GB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if "error" in r:
            print(f"| {r['size']}² | failed: {r['error']} |")
            continue
        mp = r["size"] ** 2 / 1e6
        cells = [f"{r['size']}²", str(r["instances"]), f"{r['planes_walked']} / {r['planes']}", f"{r['window_cells']:.2f}"]
        cells += [f"{r['times'][s]:.2f}" if s in r["times"] else "–" for s in STAGES]
        spread = r.get("post_s_per_mp_range")
        per_mp = f"{r['post_s'] / mp:.2f}" + (f" ({spread[0]:.2f}–{spread[1]:.2f})" if spread and r.get("runs", 1) > 1 else "")
        cells += [per_mp, f"{r['total_s']:.1f}", f"{r['cpu_s']:.0f}", f"{r['peak_rss_mb'] / 1024:.2f}"]
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size; the shortest is printed")
    ap.add_argument("--busy", action="store_true", help="also run every size beside a busy process")
    ap.add_argument("--seeds", action="store_true", help="also time the seeds stage (the plugin's seeds layer)")
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return
    load = os.getloadavg()[0]
    print(f"torch threads {args.threads}, device {args.device}, load average before: {load:.2f}")
    rows = [_best_of(s, args) for s in args.sizes]
    best = f", best of {args.repeat} (range of the post-processing s/MP)" if args.repeat > 1 else ""
    _table(rows, f"Alone (instance_walk auto; the machine's load average was {load:.2f} before{best}):")
    result = {"idle": rows}
    if args.busy:
        busy = _busy_process()
        try:
            result["busy"] = [_best_of(s, args) for s in args.sizes]
        finally:
            busy.kill()
        _table(result["busy"], "Beside a process that keeps one core busy:")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
