"""Per-stage time of a full prediction at several image sizes.

    python benchmarks/bench_pipeline.py [--backbone resnet50] [--sizes 256 512 1024 2048]
                                        [--device cpu|cuda] [--threads 2] [--classes 3] [--instances 12]

Networks run with random weights (their cost does not depend on the weights).
The post-processing needs a realistic number of clusters, which a random
network does not give, so the displacement field is replaced by one that
points at ``--instances`` centres (each pixel to its nearest), and the CAMs
of ``--classes`` classes come from the CAM network as usual. The walk then
propagates classes x clusters channels, as on a real image with that many
instances. Prints a markdown table; times in seconds (median of ``--repeat``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _field(h: int, w: int, n: int, seed: int = 0):
    """A displacement field (2, h, w) towards ``n`` random centres (the shape a trained IRNet's takes)."""
    import numpy as np
    import torch

    from napari_irnet.synthetic import centre_field

    centres = np.random.default_rng(seed).uniform([0, 0], [h - 1, w - 1], size=(n, 2))
    return torch.from_numpy(centre_field((h, w), centres)[0])


def bench(size: tuple[int, int], args) -> dict[str, float]:
    import numpy as np
    import torch

    from napari_irnet.models.checkpoint import new_model
    from napari_irnet.params import Params
    from napari_irnet.pipeline.inference import NetworkOutputs, compute_cams, compute_irnet, resolve_device
    from napari_irnet.pipeline.predict import walk_instances
    from napari_irnet.pipeline.stages import assign_instances, cluster_centroids, find_centroids, propagate, seeds_from_cams, semantic_from_walk

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    model = new_model([f"c{i}" for i in range(20)], args.backbone)
    params = Params(use_crf=False, cam_scales=tuple(args.cam_scales))
    image = (np.random.default_rng(0).random(size + (3,)) * 255).astype(np.uint8)
    ids = list(range(args.classes))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {}

    def timed(name, fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    for _ in range(args.repeat):
        cam = timed("CAM", lambda: compute_cams(model.cam, image, ids, params, dev))
        irn = timed("IRNet forward", lambda: compute_irnet(model.irn, image, params, dev))
        irn.displacement = _field(*irn.boundary.shape, args.instances)
        outputs = NetworkOutputs(size, cam, irn)
        timed("seeds", lambda: seeds_from_cams(cam.high_res, ids, 0.3, 0.05, image, False))
        cen = timed("centroids + clusters", lambda: (lambda c: (c, cluster_centroids(c, irn.displacement, 2.5)))(find_centroids(irn.displacement, 300)))
        clusters = cen[1]
        k = int(clusters.max()) + 1
        walk = timed("walk instances", lambda: walk_instances(outputs, clusters, params, dev))
        timed("instances", lambda w=walk: assign_instances(w, np.repeat(ids, k), size, 0.25, 0.01))
        sem = timed("walk semantic", lambda: propagate(cam.strided.to(dev), irn.boundary.to(dev), 10, 256, 5))
        timed("semantic", lambda s=sem: semantic_from_walk(s, ids, size, 0.25))
        del walk, sem
    out = {k: statistics.median(v) for k, v in times.items()}
    out["_channels"] = args.classes * k
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--sizes", nargs="+", default=["375x500", "256", "512", "1024", "2048"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--instances", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--cam-scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0])
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    bench((96, 96), args)  # warm-up: first-call library initialisation is not counted
    rows = []
    for s in args.sizes:
        h, w = (int(v) for v in s.split("x")) if "x" in s else (int(s), int(s))
        t = bench((h, w), args)
        channels = t.pop("_channels")
        rows.append((f"{h}x{w} ({channels} ch)", t))
        print(f"{h}x{w}: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()) + f", total {sum(t.values()):.2f}s", file=sys.stderr, flush=True)
    stages = list(rows[0][1])
    short = stages
    print(f"\nbackbone {args.backbone}, device {args.device}, {args.threads} threads, CAM scales {args.cam_scales} + flips, {args.classes} classes, {args.instances} instances\n")
    print("| image (walk channels) | " + " | ".join(short) + " | total |")
    print("|---" * (len(stages) + 2) + "|")
    for name, t in rows:
        print(f"| {name} | " + " | ".join(f"{t.get(st, float('nan')):.2f}" for st in stages) + f" | {sum(t.values()):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
