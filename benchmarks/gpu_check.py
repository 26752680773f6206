"""One check of everything that runs on a GPU: tests, timings and CPU/CUDA agreement.

    bash benchmarks/gpu_check.sh            # on the GPU machine, about 5-8 minutes on one H100
    python benchmarks/gpu_check.py --device cpu --sizes 512   # a dry run anywhere

Needs only what the GPU machines hold (torch, torchvision, numpy, scipy,
scikit-image, tifffile, Pillow): no napari, no Qt, no downloads. Prints
markdown tables:

1. walk timings: the semantic walk (3 classes over the whole grid) and the
   local instance walk on the tiled sample cells with the demo model's
   outputs, per size;
2. full prediction per size (networks and every stage after them, as
   ``bench_scale.py`` does), seconds and seconds per megapixel;
3. fine-tuning steps per second (the demo model on 16 synthetic images with
   their true instances as corrections);
4. CPU/CUDA agreement at the smallest sizes: network outputs (max abs diff)
   and instance maps (share of pixels with the same assignment).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def walk_rows(device: str, sizes: list[int]) -> list[str]:

    from bench_scale import tiled_sample

    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.pipeline.inference import compute_cams, compute_irnet
    from napari_irnet.pipeline.instance_walk import instance_walk_argmax
    from napari_irnet.pipeline.random_walk import random_walk, transition_weights
    from napari_irnet.pipeline.stages import cluster_centroids, find_centroids

    model = load_checkpoint(ROOT / "napari_irnet" / "data" / "demo_model.pt")
    p = model.params
    ids = model.class_ids(model.classes)
    rows = []
    for size in sizes:
        image, _, _ = tiled_sample(size)
        cam = compute_cams(model.cam, image, ids, p, device)
        irn = compute_irnet(model.irn, image, p, device)
        clusters = cluster_centroids(find_centroids(irn.displacement, p.centroid_steps), irn.displacement, p.cluster_threshold)
        strided, boundary = cam.strided.to(device), irn.boundary.to(device)
        _sync(device)
        t = time.perf_counter()
        random_walk(strided, boundary, p.beta, p.walk_steps, p.radius)
        _sync(device)
        semantic = time.perf_counter() - t
        weights = transition_weights(boundary, p.radius, p.beta)
        t = time.perf_counter()
        _, plan = instance_walk_argmax(strided, boundary, clusters, image.shape[:2], beta=p.beta, steps=p.walk_steps,
                                       radius=p.radius, tolerance=p.walk_tolerance, method="local", weights=weights)  # fmt: skip
        _sync(device)
        local = time.perf_counter() - t
        rows.append(f"| {size}² | {int(clusters.max()) + 1} | {semantic:.2f} | {local:.2f} | {plan.window_cells / plan.grid_cells:.2f} |")
    return ["| image | clusters | semantic walk s | local instance walk s | window cells / grid |", "|---|---|---|---|---|"] + rows


def prediction_rows(device: str, sizes: list[int]) -> list[str]:
    from bench_scale import run_one

    # the model's own parameters: network_precision "auto", bfloat16 on GPUs from Ampere on
    rows = ["| image | instances | networks s | post-processing s | total s | post-processing s/MP |", "|---|---|---|---|---|---|"]
    for size in sizes:
        r = run_one(size, device)
        mp = size * size / 1e6
        rows.append(f"| {size}² | {r['instances']} | {r['networks_s']:.2f} | {r['post_s']:.2f} | {r['total_s']:.2f} | {r['post_s'] / mp:.2f} |")
    return rows


def finetune_rate(device: str, steps: int = 40) -> str:
    from napari_irnet.demo import DEMO_SCALE, DEMO_SHAPE
    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.synthetic import make_dataset
    from napari_irnet.training.datasets import LabelledImage
    from napari_irnet.training.finetune import finetune
    from napari_irnet.training.finetune_data import finetune_labels

    model = load_checkpoint(ROOT / "napari_irnet" / "data" / "demo_model.pt")
    samples = make_dataset(16, shape=DEMO_SHAPE, seed=777, scale=DEMO_SCALE)
    items = [LabelledImage(s.name, s.image, [model.classes.index(c) for c in s.labels]) for s in samples]
    corrections = [s.instances for s in samples]
    labels, strong = [None] * len(items), [False] * len(items)
    for i, lab, is_strong in finetune_labels(model, items, corrections, params=model.params, device=device):
        labels[i], strong[i] = lab, is_strong
    tp = model.train_params
    tp = type(tp).from_dict({**tp.to_dict(), "finetune_epochs": max(1, steps * tp.irn_batch_size // (4 * len(items)))})
    t = time.perf_counter()
    records = list(finetune(model, items, labels, strong, tp, device))
    _sync(device)
    elapsed = time.perf_counter() - t
    return f"{len(records)} steps in {elapsed:.1f} s: {len(records) / elapsed:.2f} steps/s (batch {tp.irn_batch_size}, crops {tp.irn_crop_size} px)"


def agreement_rows(device: str, size: int) -> list[str]:
    import numpy as np
    from bench_scale import tiled_sample

    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.pipeline.predict import predict

    model = load_checkpoint(ROOT / "napari_irnet" / "data" / "demo_model.pt")
    image, _, _ = tiled_sample(size)
    params = model.params.replace(network_precision="float32")  # the same arithmetic on both; bfloat16 has its own benchmark
    out_c, pred_c = predict(model, image, model.classes, params, "cpu")
    out_g, pred_g = predict(model, image, model.classes, params, device)
    diff = lambda a, b: float((a.float() - b.float()).abs().max())  # noqa: E731
    inst = float(np.mean((pred_c.instances.labels > 0) == (pred_g.instances.labels > 0)))
    sem = float(np.mean(pred_c.semantic == pred_g.semantic))
    return [
        "| image | CAM max abs diff | boundary max abs diff | displacement max abs diff | instances cpu / device | foreground pixels equal | semantic pixels equal |",
        "|---|---|---|---|---|---|---|",
        f"| {size}² | {diff(out_c.cam.strided, out_g.cam.strided):.2e} | {diff(out_c.irn.boundary, out_g.irn.boundary):.2e} | "
        f"{diff(out_c.irn.displacement, out_g.irn.displacement):.2e} | {len(pred_c.instances.records)} / {len(pred_g.instances.records)} | "
        f"{100 * inst:.3f} % | {100 * sem:.3f} % |",
    ]


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--agreement-size", type=int, default=1024)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu for a dry run)")
        return
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, device {args.device} ({name})\n")
    for title, fn in (
        ("Walks", lambda: walk_rows(args.device, args.sizes)),
        ("Full prediction (demo model, tiled sample cells)", lambda: prediction_rows(args.device, args.sizes)),
        ("CPU / device agreement", lambda: agreement_rows(args.device, args.agreement_size)),
    ):
        t = time.perf_counter()
        print(f"## {title}\n")
        print("\n".join(fn()))
        print(f"\n({time.perf_counter() - t:.0f} s)\n", flush=True)
    print(f"## Fine-tuning\n\n{finetune_rate(args.device)}\n", flush=True)


if __name__ == "__main__":
    main()
