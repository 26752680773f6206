"""The networks in bfloat16 against float32: how much faster, and what changes?

    OMP_NUM_THREADS=2 python benchmarks/bench_precision.py --sizes 1024 3000

The bundled demo model predicts the bundled sample cells tiled to each size
twice, with ``network_precision="float32"`` and ``"bfloat16"``
(``torch.autocast``; every output is float32), and the two are compared:

- seconds of each network (CAMs, IRNet) with each format;
- the largest change of the CAMs (stride-4, each divided by its maximum),
  the boundary map and the displacement field (grid units);
- instances found by each; the share of the float32 instances that the
  bfloat16 run finds again (the same class and IoU ≥ 0.5); pixels agreeing
  on foreground / background;
- mAP^r at IoU 0.5 of each against the tiled ground truth (the scorer of
  ``bench_quality.py``).

``--training`` times training steps instead (``TrainParams.amp`` off and on:
bfloat16 mixed precision, float32 weights and losses): the CAM network at
output stride 16 and 8 and IRNet, EfficientNet-Lite0 with its ImageNet
weights, batches of 16 crops of 256² from synthetic cells, the mean of a few
steps after one warm-up step each (data loading included), with the mean
loss of all steps as a check that both runs train alike.

bfloat16 only gains on devices with bfloat16 matrix units (Intel CPUs with
AMX, NVIDIA GPUs from Ampere on); elsewhere it runs but is not faster. The
first line says whether this machine's CPU has them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _refound(a, b) -> tuple[int, int]:
    """(instances of ``a`` matched in ``b`` with the same class at IoU ≥ 0.5, instances of ``a``)."""
    from napari_irnet.evaluation.overlap import label_map_iou

    iou, ids_a, ids_b = label_map_iou(a.labels, b.labels)
    if iou.size == 0:
        return 0, len(ids_a)
    cls_a = {r["id"]: r["class_id"] for r in a.records}
    cls_b = {r["id"]: r["class_id"] for r in b.records}
    best = iou.argmax(axis=1)
    found = sum(iou[i, j] >= 0.5 and cls_a[int(ids_a[i])] == cls_b[int(ids_b[j])] for i, j in enumerate(best))
    return int(found), len(ids_a)


def row(size: int, model) -> str:
    from bench_quality import Scorer
    from bench_scale import tiled_sample_item

    from napari_irnet.pipeline.inference import NetworkOutputs, compute_cams, compute_irnet
    from napari_irnet.pipeline.predict import postprocess

    image, item = tiled_sample_item(size, model.classes)
    runs = {}
    for precision in ("float32", "bfloat16"):
        params = model.params.replace(network_precision=precision)
        t0 = time.perf_counter()
        cam = compute_cams(model.cam, image, item.class_ids, params, "cpu")
        t1 = time.perf_counter()
        irn = compute_irnet(model.irn, image, params, "cpu")
        t2 = time.perf_counter()
        outputs = NetworkOutputs(image.shape[:2], cam, irn)
        pred = postprocess(outputs, params, image, "cpu", seeds=False)
        scorer = Scorer(len(model.classes))
        scorer.add(item, pred.semantic, pred.instances)
        runs[precision] = (t1 - t0, t2 - t1, outputs, pred, 100 * scorer.result()["mAP"][0.5])
    (c32, i32, o32, p32, ap32), (c16, i16, o16, p16, ap16) = runs["float32"], runs["bfloat16"]
    diff = lambda a, b: float((a - b).abs().max())  # noqa: E731
    found, total = _refound(p32.instances, p16.instances)
    fg = float(np.mean((p32.instances.labels > 0) == (p16.instances.labels > 0)))
    return (
        f"| {size}² | {c32:.1f} / {c16:.1f} | {i32:.1f} / {i16:.1f} | {(c32 + i32) / (c16 + i16):.2f}× | "
        f"{diff(o32.cam.strided, o16.cam.strided):.3f} | {diff(o32.irn.boundary, o16.irn.boundary):.3f} | "
        f"{diff(o32.irn.displacement, o16.irn.displacement):.2f} | {total} / {len(p16.instances.records)} | "
        f"{100 * found / max(total, 1):.1f} % | {100 * fg:.2f} % | {ap32:.2f} / {ap16:.2f} |"
    )


def training_rows(steps: int) -> list[str]:
    """Seconds per training step with ``amp`` off and on (see the module docstring)."""
    import torch

    from napari_irnet.models.checkpoint import new_model
    from napari_irnet.params import TrainParams
    from napari_irnet.synthetic import CLASS_NAMES, make_dataset
    from napari_irnet.training.cam import train_cam
    from napari_irnet.training.datasets import LabelledImage
    from napari_irnet.training.irn import train_irn

    samples = make_dataset(16 * (steps + 1), shape=(256, 256), seed=3)
    items = [LabelledImage(s.name, s.image, [CLASS_NAMES.index(c) for c in s.labels]) for s in samples]
    seeds = [s.semantic for s in samples]  # the true class maps as seeds: only the time matters here

    def per_step(loop) -> tuple[float, float]:
        times, losses = [], []
        for rec in loop:
            times.append(time.perf_counter())
            losses.append(rec["loss"])
        return float(np.mean(np.diff(times))), float(np.mean(losses))  # the first step's time (warm-up) is left out

    rows = []
    for network, stride in (("CAM network", 16), ("CAM network", 8), ("IRNet", 16)):
        seconds = {}
        for amp in (False, True):
            torch.manual_seed(0)
            model = new_model(list(CLASS_NAMES), "efficientnet_lite0", "imagenet", cam_output_stride=stride)
            tp = TrainParams(cam_epochs=1, irn_epochs=1, cam_batch_size=16, irn_batch_size=16, cam_crop_size=256,
                             irn_crop_size=256, cam_resize_long=(256, 256), amp=amp, seed=0)  # fmt: skip
            loop = train_cam(model, items, tp, "cpu") if network != "IRNet" else train_irn(model, items, seeds, tp, "cpu")
            seconds[amp] = per_step(loop)
        (s32, l32), (s16, l16) = seconds[False], seconds[True]
        rows.append(f"| {network} | {stride} | {s32:.2f} / {s16:.2f} | {s32 / s16:.2f}x | {l32:.3f} / {l16:.3f} |")
    return rows


def main(argv=None) -> None:
    import torch

    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.pipeline.inference import bfloat16_units

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 3000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--training", action="store_true", help="time training steps with TrainParams.amp off and on instead")
    ap.add_argument("--steps", type=int, default=3, help="--training: timed steps per row (after one warm-up step)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    units = "has" if bfloat16_units(torch.device("cpu")) else "lacks"
    print(f"torch {torch.__version__}, {args.threads} threads; this CPU {units} bfloat16 matrix units (AMX)\n")
    if args.training:
        print("| network | output stride | s per step, float32 / bfloat16 | speed-up | mean loss float32 / bfloat16 |")
        print("|---|--:|---|--:|---|", flush=True)
        for line in training_rows(args.steps):
            print(line, flush=True)
        return
    model = load_checkpoint(ROOT / "napari_irnet" / "data" / "demo_model.pt")
    print("| image | CAM s float32 / bfloat16 | IRNet s float32 / bfloat16 | networks speed-up | CAM max change | boundary max change "
          "| displacement max change (cells) | instances float32 / bfloat16 | float32 instances found again | foreground pixels agreeing "
          "| mAP^r 0.5 float32 / bfloat16 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for size in args.sizes:
        print(row(size, model), flush=True)


if __name__ == "__main__":
    main()
