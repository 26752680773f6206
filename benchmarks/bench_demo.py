"""The demo model: train it from image-level labels, choose its post-processing, score it on held-out images.

    python benchmarks/bench_demo.py --recipe quick   # the model shipped in the package, and what `--retrain` trains

1. Trains the CAM network and IRNet with :func:`napari_irnet.demo.train` on
   the recipe's synthetic training images (image-level labels only), cached
   as ``model.pt`` in ``--out`` (default ``bench_output/demo/<recipe>``).
2. Runs both networks on ``--n-val`` validation images (generator seed
   :data:`~napari_irnet.demo.VALIDATION_SEED`) and ``--n-test`` test images
   (:data:`~napari_irnet.demo.TEST_SEED`); none is a training image or one of
   the six samples.
3. Chooses the post-processing parameters (:data:`GRID`) by the mean of
   mAP^r 0.5 and 0.7 on the validation images only, and writes ``model_chosen.pt`` with them (what
   ``docs/make_demo_checkpoint.py`` bundles).
4. Scores the test images with the chosen and with the recipe's parameters
   (the same scorer as ``bench_quality.py``) and prints the tables.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_oracles as bo  # noqa: E402
import bench_quality as bq  # noqa: E402

#: post-processing searched on the validation images
GRID = {
    "cluster_threshold": (1.0, 1.5, 2.5),
    "instance_bg_threshold": (0.25, 0.4, 0.55),
    "semantic_bg_threshold": (0.25, 0.4),
}  # fmt: skip


def outputs_of(model, items, params, device, out: Path, key: str) -> dict:
    """CAMs and IRNet outputs of ``items`` (cached in ``out``) as bench_oracles' sources."""
    timings: dict = {}
    return {
        "cams_weak": bq.get_cams(model, items, params, device, out / f"cams_{key}.pt", timings, key),
        "irn_weak": bq.get_irn_outputs(model, items, params, device, out / f"irn_{key}.pt", timings, key),
    }


def score(items, sources, params, classes, device) -> dict:
    """The weak pipeline's scores on ``items`` with ``params``."""
    variant = [bo.VARIANTS[0]]
    results, clusters = bo.evaluate(items, sources, variant, params, classes, device)
    r = results[variant[0].name]
    r["centres_per_image"] = clusters[variant[0].name]
    return r


def score_grid(items, sources, params_list, classes, device) -> list[dict]:
    """The weak pipeline's scores for every ``Params`` of ``params_list``, one StageCache per image.

    The cache recomputes only the stages a parameter change touches, so
    thresholds after the walk cost little; ordering the list by the walk's
    inputs (cluster threshold first) keeps the walks few.
    """
    from napari_irnet.pipeline.cache import StageCache
    from napari_irnet.pipeline.inference import CAMOutput, IRNetOutput, NetworkOutputs

    scorers = [bq.Scorer(len(classes)) for _ in params_list]
    for it in items:
        strided, high = (t.float() for t in sources["cams_weak"][it.name])
        boundary, disp = (t.float() for t in sources["irn_weak"][it.name])
        outputs = NetworkOutputs(it.image.shape[:2], CAMOutput(np.asarray(it.class_ids), strided, high), IRNetOutput(boundary, disp))
        cache = StageCache(outputs, params_list[0], None, device)
        for scorer, params in zip(scorers, params_list):
            pred = cache.update(params)
            scorer.add(it, pred.semantic, pred.instances)
    return [s.result() for s in scorers]


def choose(items, sources, base, classes, device, grid: dict) -> tuple:
    """The grid point with the best mean of mAP^r 0.5 and 0.7 on ``items`` (ties: mIoU); returns (params, rows)."""
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    results = score_grid(items, sources, [base.replace(**p) for p in points], classes, device)
    for p, r in zip(points, results):
        bo._log(f"validation {p}: mAP^r 0.5 {r['mAP'][0.5]:.3f}, 0.7 {r['mAP'][0.7]:.3f}, mIoU {r['mIoU']:.3f}")
    rows = list(zip(points, results))
    best = max(rows, key=lambda row: (round(row[1]["mAP"][0.5] + row[1]["mAP"][0.7], 6), row[1]["mIoU"]))
    return base.replace(**best[0]), rows


def seed_diagnostics(model, n: int, device) -> dict:
    """bench_quality's seed quality of the first ``n`` training images (the seeds IRNet learnt from)."""
    from napari_irnet import demo
    from napari_irnet.pipeline.inference import compute_cams
    from napari_irnet.pipeline.stages import seeds_from_cams

    recipe = demo.training_recipe(model)
    items = bo.synthetic_items(min(n, recipe["n_images"]), recipe["seed"], "train", demo.DEMO_SHAPE, demo.DEMO_SCALE)
    p = model.params
    seeds = []
    for it in items:
        cams = compute_cams(model.cam, it.image, it.class_ids, p, device)
        seeds.append(seeds_from_cams(cams.high_res, it.class_ids, p.seed_fg_threshold, p.seed_bg_threshold, it.image, p.use_crf))
    return bq.seed_quality(items, seeds)


def line(name: str, r: dict) -> str:
    maps = " | ".join(bq._f(r["mAP"][t]) for t in (0.25, 0.5, 0.7))
    return f"| {name} | {bq._f(r['mIoU'])} | {maps} | {r['centres_per_image']:.1f} | {sum(r['n_pred'])} / {sum(r['n_gt'])} |"


def main(argv=None) -> int:
    from napari_irnet import demo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=sorted(demo.RECIPES), default="quick")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--n-val", type=int, default=48)
    ap.add_argument("--n-test", type=int, default=96)
    ap.add_argument("--seed-fg-threshold", type=float, help="the seeds of IRNet's training (default: the recipe's Params)")
    ap.add_argument("--cam-scales", type=float, nargs="+", help="CAM scales of the seeds and of inference (default: the recipe's Params)")
    ap.add_argument("--no-crf", action="store_true", help="seeds without any refinement (use_crf false)")
    ap.add_argument("--cam-from", type=Path, help="reuse this model's CAM network (train IRNet only), e.g. to compare seeds with and without the CRF")
    ap.add_argument("--tag", default="", help="suffix of the output folder")
    ap.add_argument("--no-grid", action="store_true", help="score with the recipe's parameters only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from napari_irnet.models.checkpoint import load_checkpoint, save_checkpoint
    from napari_irnet.pipeline.inference import resolve_device

    device = resolve_device(args.device)
    recipe = demo.RECIPES[args.recipe]
    params = demo.demo_params()
    if args.seed_fg_threshold is not None:
        params = params.replace(seed_fg_threshold=args.seed_fg_threshold)
    if args.cam_scales:
        params = params.replace(cam_scales=tuple(args.cam_scales))
    if args.no_crf:
        params = params.replace(use_crf=False)
    tag = ("" if args.seed_fg_threshold is None else f"_fg{args.seed_fg_threshold:g}") + (f"_{args.tag}" if args.tag else "")
    out = args.out or ROOT / "bench_output" / "demo" / f"{args.recipe}{tag}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = out / "model.pt"
    if path.is_file():
        bo._log(f"reusing {path}")
        model = load_checkpoint(path)
    else:
        cam_from = load_checkpoint(args.cam_from) if args.cam_from else None
        model = demo.train(path, recipe, str(device), params, cam_from)
    minutes = sum(h.get("seconds", 0) for h in model.history) / 60
    bo._log(f"model: {recipe.n_images} training images, trained in {minutes:.1f} min")
    bo._log("seeds of 24 training images: " + ", ".join(f"{k} {v:.3f}" for k, v in seed_diagnostics(model, 24, device).items()))
    shape, scale = demo.DEMO_SHAPE, demo.DEMO_SCALE
    val = bo.synthetic_items(args.n_val, demo.VALIDATION_SEED, "val", shape, scale)
    test = bo.synthetic_items(args.n_test, demo.TEST_SEED, "test", shape, scale)
    classes = list(model.classes)
    test_src = outputs_of(model, test, model.params, device, out, f"test_{args.n_test}")
    rows = [line("recipe's parameters", score(test, test_src, model.params, classes, device))]
    chosen = model.params
    if not args.no_grid:
        val_src = outputs_of(model, val, model.params, device, out, f"val_{args.n_val}")
        chosen, _ = choose(val, val_src, model.params, classes, device, GRID)
        rows.append(line("chosen on validation: " + ", ".join(f"{k} {getattr(chosen, k):g}" for k in GRID), score(test, test_src, chosen, classes, device)))
        model.params = chosen
        model.history.append({"stage": "demo_params", "chosen_on": f"{args.n_val} validation images, seed {demo.VALIDATION_SEED}",
                              **{k: getattr(chosen, k) for k in GRID}})  # fmt: skip
        save_checkpoint(model, out / "model_chosen.pt")
    head = f"**demo model, recipe {args.recipe}: {len(test)} held-out test images ({sum(len(it.gt_labels) for it in test)} cells)**"
    text = "\n".join([head, "", "| post-processing | mIoU | mAP^r 0.25 | mAP^r 0.5 | mAP^r 0.7 | centres per image | instances (pred / GT) |",
                      "|---|--:|--:|--:|--:|--:|--:|", *rows]) + "\n"  # fmt: skip
    print()
    print(text)
    (out / "tables.md").write_text(text)
    bo._log(f"wrote {out / 'tables.md'} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
