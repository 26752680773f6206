"""Stage oracles: where the weak pipeline loses its quality.

    python benchmarks/bench_oracles.py --dataset synthetic [--checkpoint FILE]
    python benchmarks/bench_oracles.py --dataset consep    [--quality-dir DIR]

Every row of the table runs the same post-processing and the same scoring
(:class:`bench_quality.Scorer`, PASCAL VOC mAP^r and mIoU) with the ground
truth swapped into some stages and the weak pipeline's outputs everywhere
else:

- **CAMs**: ``weak`` (the CAM network trained from image-level labels),
  ``masks`` (the CAM network trained per pixel from the class maps, the
  upper bound's, when there is one) or ``GT`` (the true class maps as CAMs:
  1 inside the class, 0 elsewhere, area-averaged on the stride-4 grid);
- **IRNet trained from**: ``weak seeds`` (the CAM seeds), ``GT seeds`` (the
  true class map as the seed map: what IRNet learns from perfect CAMs) or
  ``GT instances`` (the upper bound's relations,
  :func:`~napari_irnet.training.targets.relation_labels`);
- **boundary**: IRNet's, or ``GT`` (a one-cell line on every edge of the
  true instance map on the stride-4 grid, see :func:`thin_boundary`);
- **centres**: from IRNet's displacement field, ``GT field`` (the ideal
  field :func:`~napari_irnet.training.targets.displacement_target`) or
  ``GT centroids`` (the true instance centres given as edited centre points:
  every pixel goes to the centre nearest to where IRNet's field takes it).

Synthetic cells: the weak model is ``--checkpoint`` (default: the bundled
demo model); its training images are regenerated with the demo's recipe and
the IRNets of the training-side oracles are trained here with its
``TrainParams`` (cached in ``--out``). The scored images are new draws of
the generator (``--eval-seed``), never the training images nor the six
samples.

CoNSeP: the weak and upper-bound networks, their CAMs and IRNet outputs come
from ``bench_quality.py``'s cache (``--quality-dir``, default
``bench_output/quality/consep_512``: run ``bench_quality.py --dataset consep``
first; ``--train-only`` trains the IRNet from the true seeds as soon as its
``cam.pt`` exists); only the IRNet from the true seeds is trained here, with
the same budget, and cached there as ``irn_gtseeds.pt``; the per-image
outputs and the tables go to its ``oracles/`` folder. Without ``cam_full.pt``
the row of the upper bound's CAMs is left out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402

OPTIONS = ("cams", "irn", "boundary", "centres")


@dataclass(frozen=True)
class Variant:
    """One row: which stage gets the ground truth."""

    name: str
    cams: str = "weak"  # weak | masks | gt
    irn: str = "weak"  # weak | gtseeds | full
    boundary: str = "net"  # net | gt
    centres: str = "net"  # net | gt_field | gt_centroids


VARIANTS = (
    Variant("weak pipeline"),
    Variant("GT CAMs", cams="gt"),
    Variant("GT boundary", boundary="gt"),
    Variant("GT displacement field", centres="gt_field"),
    Variant("GT centroids", centres="gt_centroids"),
    Variant("GT boundary + GT field", boundary="gt", centres="gt_field"),
    Variant("GT CAMs + GT centroids", cams="gt", centres="gt_centroids"),
    Variant("GT CAMs + GT boundary + GT field", cams="gt", boundary="gt", centres="gt_field"),
    Variant("IRNet from GT seeds", irn="gtseeds"),
    Variant("GT CAMs, IRNet from GT seeds (perfect CAMs)", cams="gt", irn="gtseeds"),
    Variant("IRNet from GT instances", irn="full"),
    Variant("GT CAMs, IRNet from GT instances", cams="gt", irn="full"),
    Variant("(c) CAM from masks, IRNet from GT instances", cams="masks", irn="full"),
)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------- oracles


def gt_cams(item) -> tuple:
    """The true class maps of ``item``'s classes as CAMs: (strided (C, h, w), high_res (C, H, W)) float32 tensors."""
    import torch
    import torch.nn.functional as F

    from napari_irnet.pipeline.inference import strided_size

    inst = item.gt_inst_work
    sem = np.zeros(inst.shape, np.int64)
    for iid, c in item.gt_labels.items():
        sem[inst == iid] = c + 1
    high = torch.from_numpy(np.stack([sem == c + 1 for c in item.class_ids]).astype(np.float32)).reshape(-1, *inst.shape)
    h, w = strided_size(inst.shape, 4)
    padded = F.pad(high[None], [0, 4 * w - inst.shape[1], 0, 4 * h - inst.shape[0]])
    strided = F.avg_pool2d(padded, 4)[0]
    strided = strided / (strided.amax(dim=(1, 2), keepdim=True) + 1e-5)
    return strided, high


def gt_irn(item, grid_shape) -> tuple:
    """The ideal boundary map and displacement field on IRNet's grid (cropped or padded to ``grid_shape``)."""
    import torch

    from napari_irnet.training.targets import displacement_target, to_grid

    h, w = grid_shape
    boundary = np.zeros((h, w), np.float32)
    b = thin_boundary(to_grid(item.gt_inst_work)).astype(np.float32)
    boundary[: b.shape[0], : b.shape[1]] = b[:h, :w]
    disp = np.zeros((2, h, w), np.float32)
    d, _ = displacement_target(item.gt_inst_work)
    disp[:, : d.shape[1], : d.shape[2]] = d[:, :h, :w]
    return torch.from_numpy(boundary), torch.from_numpy(disp)


def thin_boundary(grid: np.ndarray) -> np.ndarray:
    """Cells whose right or lower neighbour has another label: one cell on each edge.

    :func:`~napari_irnet.training.targets.boundary_target` marks both sides of an
    edge (two cells, 8 px at stride 4); the walk starts from CAM x (1 -
    boundary), so a thick line would erase a ring of every small object, a
    loss made by the oracle, not by the method.
    """
    b = np.zeros(grid.shape, bool)
    b[:, :-1] |= grid[:, :-1] != grid[:, 1:]
    b[:-1, :] |= grid[:-1, :] != grid[1:, :]
    return b


def gt_centre_points(item) -> np.ndarray:
    """Centroids (y, x) of the true instances in working-size pixels: (K, 2)."""
    from skimage.measure import regionprops

    return np.array([r.centroid for r in regionprops(item.gt_inst_work.astype(np.int32))], np.float64).reshape(-1, 2)


def gt_seed_map(item) -> np.ndarray:
    """The true class map as a seed map (0 background, class + 1): the seeds of a perfect CAM."""
    from napari_irnet.training.targets import class_map_target

    return class_map_target(item.gt_inst_work, item.gt_labels)


# ----------------------------------------------------------------- evaluation


def evaluate(items, sources: dict, variants, params, classes, device) -> tuple[dict, dict]:
    """Scores and mean cluster counts of every variant; ``sources`` maps 'cams_<kind>'/'irn_<kind>' to per-image outputs."""
    from napari_irnet.pipeline.cache import StageCache
    from napari_irnet.pipeline.inference import CAMOutput, IRNetOutput, NetworkOutputs

    scorers = {v.name: bq.Scorer(len(classes)) for v in variants}
    clusters = {v.name: [] for v in variants}
    t0 = time.perf_counter()
    for n, it in enumerate(items, 1):
        ids = np.asarray(it.class_ids, np.int64)
        h, w = it.image.shape[:2]
        gt_c = gt_cams(it)
        for v in variants:
            strided, high = gt_c if v.cams == "gt" else (t.float() for t in sources[f"cams_{v.cams}"][it.name])
            boundary, disp = (t.float() for t in sources[f"irn_{v.irn}"][it.name])
            gt_b, gt_d = gt_irn(it, boundary.shape)
            boundary = gt_b if v.boundary == "gt" else boundary
            disp = gt_d if v.centres == "gt_field" else disp
            net_out = NetworkOutputs((h, w), CAMOutput(ids, strided, high), IRNetOutput(boundary, disp))
            points = gt_centre_points(it) if v.centres == "gt_centroids" else None
            if points is not None and not len(points):
                points = None
            pred = StageCache(net_out, params, None, device).update(centre_points=points)
            scorers[v.name].add(it, pred.semantic, pred.instances)
            clusters[v.name].append(int(pred.clusters.max()) + 1)
        if n % 10 == 0:
            _log(f"evaluated {n}/{len(items)} ({time.perf_counter() - t0:.0f} s)")
    results = {name: s.result() for name, s in scorers.items()}
    return results, {name: float(np.mean(c)) for name, c in clusters.items()}


def table(results: dict, clusters: dict, variants, n_gt_per_image: float) -> str:
    head = "| variant | CAMs | IRNet from | boundary | centres | mIoU | mAP^r 0.25 | mAP^r 0.5 | mAP^r 0.7 | centres per image |"
    lines = [head, "|---|---|---|---|---|--:|--:|--:|--:|--:|"]
    label = {"weak": "weak", "masks": "masks", "gt": "**GT**", "gtseeds": "**GT seeds**", "full": "**GT instances**",
             "net": "IRNet", "gt_field": "**GT field**", "gt_centroids": "**GT centroids**"}  # fmt: skip
    for v in variants:
        if v.name not in results:
            continue
        r = results[v.name]
        irn = "weak seeds" if v.irn == "weak" else label[v.irn]
        boundary = "**GT**" if v.boundary == "gt" else "IRNet"
        cells = [v.name, label[v.cams], irn, boundary, label[v.centres], bq._f(r["mIoU"])]
        cells += [bq._f(r["mAP"][t]) for t in (0.25, 0.5, 0.7)]
        cells.append(f"{clusters[v.name]:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n(ground-truth instances per image: {n_gt_per_image:.1f})")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ training


def train_oracle_irn(weak, data, labels, path: Path, instances: bool, device, label: str):
    """IRNet trained like the weak one (its TrainParams, backbone source) but from ``labels``; cached in ``path``."""
    import copy

    from napari_irnet.models.checkpoint import load_checkpoint, new_irnet, save_checkpoint
    from napari_irnet.training.irn import train_irn

    if path.is_file():
        _log(f"reusing {path}")
        return load_checkpoint(path)
    model = copy.copy(weak)
    model.history = list(weak.history)
    source = "cam" if weak.backbone_init == "none" else "imagenet"
    model.irn = new_irnet(model, source)
    t0 = time.perf_counter()
    bq._run_loop(train_irn(model, data, labels, device=device, instances=instances), f"IRNet {label}")
    model.history.append({"stage": f"oracle_irn_{label}", "minutes": (time.perf_counter() - t0) / 60})
    save_checkpoint(model, path)
    return model


# ------------------------------------------------------------------- data sets


def synthetic_items(n: int, seed: int, prefix: str, shape, scale: float):
    """Synthetic samples as :class:`bench_quality.Item` (working size = image size)."""
    from napari_irnet.synthetic import CLASS_NAMES, make_dataset

    items = []
    for s in make_dataset(n, shape=shape, seed=seed, prefix=prefix, scale=scale):
        labels = {iid: CLASS_NAMES.index(c) for iid, c in s.instance_classes.items()}
        inst = s.instances.astype(np.int32)
        class_ids = sorted(set(labels.values()))
        it = bq.Item(s.name, s.image, class_ids, inst, labels, s.semantic.astype(np.int64), np.zeros(inst.shape, bool))
        it.gt_inst_work = inst
        items.append(it)
    return items


def run_synthetic(args, device) -> tuple:
    from napari_irnet import demo
    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.training.datasets import LabelledImage

    model = load_checkpoint(args.checkpoint)
    params = model.params
    recipe = demo.training_recipe(model)
    out = args.out or ROOT / "bench_output" / "oracles" / f"synthetic_{args.checkpoint.stem}"
    out.mkdir(parents=True, exist_ok=True)
    train = synthetic_items(recipe["n_images"], recipe["seed"], "train", demo.DEMO_SHAPE, demo.DEMO_SCALE)
    test = synthetic_items(args.n_eval, args.eval_seed, "eval", demo.DEMO_SHAPE, demo.DEMO_SCALE)
    _log(f"synthetic: {len(train)} training images (recipe {recipe}), {len(test)} scored images (seed {args.eval_seed})")
    data = [LabelledImage(it.name, it.image, it.class_ids) for it in train]
    nets = {"weak": model}
    if "gtseeds" in args.needs:
        nets["gtseeds"] = train_oracle_irn(model, data, [gt_seed_map(it) for it in train], out / "irn_gtseeds.pt", False, device, "gtseeds")
    if "full" in args.needs:
        from napari_irnet.training.targets import relation_labels

        nets["full"] = train_oracle_irn(model, data, [relation_labels(it.gt_inst_work) for it in train], out / "irn_full.pt", True, device, "full")
    sources, timings = {}, {}
    cams = bq.get_cams(model, test, params, device, out / f"cams_eval_{args.eval_seed}_{args.n_eval}.pt", timings, "eval")
    sources["cams_weak"] = cams
    for key, net in nets.items():
        sources[f"irn_{key}"] = bq.get_irn_outputs(net, test, params, device, out / f"irn_{key}_eval_{args.eval_seed}_{args.n_eval}.pt", timings, key)
    return list(model.classes), test, sources, params, out


def run_consep(args, device) -> tuple:
    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.training.datasets import LabelledImage

    qdir = args.quality_dir or ROOT / "bench_output" / "quality" / "consep_512"
    data_dir = args.data or ROOT.parent / "shared" / "data" / "consep"
    if not data_dir.is_dir():
        raise SystemExit(0)
    classes, train = bq.load_consep(data_dir, "train", 512)
    _, test = bq.load_consep(data_dir, "test", 512, args.test_limit)
    data = [LabelledImage(it.name, it.image, it.class_ids) for it in train]
    _log(f"consep: {len(train)} training patches, {len(test)} test patches")
    if args.train_only:  # the oracle IRNet needs only the CAM network's settings: train it while bench_quality runs
        template = _consep_template(qdir)
        train_oracle_irn(template, data, [gt_seed_map(it) for it in train], qdir / "irn_gtseeds.pt", False, device, "gtseeds")
        raise SystemExit(0)
    for name in ("irn_weak.pt", "irn_full.pt"):
        if not (qdir / name).is_file():
            raise SystemExit(f"{qdir / name} is missing: run benchmarks/bench_quality.py --dataset consep first")
    weak = load_checkpoint(qdir / "irn_weak.pt")
    params = weak.params
    if weak.classes != classes:
        raise SystemExit(f"{qdir / 'irn_weak.pt'}: classes {weak.classes}, the data's {classes}")
    nets = {"weak": weak, "full": load_checkpoint(qdir / "irn_full.pt")}
    if "gtseeds" in args.needs:
        nets["gtseeds"] = train_oracle_irn(weak, data, [gt_seed_map(it) for it in train], qdir / "irn_gtseeds.pt", False, device, "gtseeds")
    cam_key = "_".join(f"{s:g}" for s in params.cam_scales)
    timings: dict = {}
    cache = qdir / "oracles"  # its own per-image caches: bench_quality may be writing its own at the same time
    cache.mkdir(parents=True, exist_ok=True)
    n = f"{len(test)}"
    sources = {"cams_weak": bq.get_cams(weak, test, params, device, cache / f"cams_test_{cam_key}_{n}.pt", timings, "test")}
    if (qdir / "cam_full.pt").is_file():
        cam_full = load_checkpoint(qdir / "cam_full.pt")
        sources["cams_masks"] = bq.get_cams(cam_full, test, params, device, cache / f"cams_full_test_{cam_key}_{n}.pt", timings, "full_test")
    for key, net in nets.items():
        sources[f"irn_{key}"] = bq.get_irn_outputs(net, test, params, device, cache / f"irn_{key}_test_{n}.pt", timings, f"{key}_test")
    return classes, test, sources, params, cache


def _consep_template(qdir: Path):
    """bench_quality's weak CoNSeP model as far as it exists (``cam.pt`` with its default budgets and Params)."""
    from napari_irnet.models.checkpoint import load_checkpoint

    qargs = bq.parse_args(["--dataset", "consep"])
    model = load_checkpoint(qdir / "cam.pt")
    model.train_params, model.params = bq.train_params(qargs), bq.make_params(qargs)
    return model


def consep_seed_quality(args) -> None:
    """Seed quality of every 8th CoNSeP training patch from bench_quality's cached CAMs: no refinement,
    the segment vote and (when pydensecrf is installed) the dense CRF, at foreground thresholds 0.3 and 0.5."""
    import torch

    import napari_irnet.pipeline.stages as pp

    qdir = args.quality_dir or ROOT / "bench_output" / "quality" / "consep_512"
    _, train = bq.load_consep(args.data or ROOT.parent / "shared" / "data" / "consep", "train", 512)
    items = train[::8]
    cams = torch.load(qdir / "cams_train_1.pt", weights_only=True)
    crf = pp._dense_crf(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.int64), 1) is not None
    dense = pp._dense_crf
    for fg in (0.3, 0.5):
        for how in ("none", "segment vote", "dense CRF"):
            if how == "dense CRF" and not crf:
                continue
            pp._dense_crf = dense if how == "dense CRF" else (lambda image, labels, n: None)
            t0 = time.perf_counter()
            seeds = [pp.seeds_from_cams(cams[it.name][1].float(), it.class_ids, fg, 0.05, it.image, how != "none") for it in items]
            q = bq.seed_quality(items, seeds)
            _log(f"{how}, fg {fg}: {(time.perf_counter() - t0) / len(items):.2f} s per patch, " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))
    pp._dense_crf = dense


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("synthetic", "consep"), default="synthetic")
    ap.add_argument("--checkpoint", type=Path, help="synthetic: the weak model (default: the bundled demo model)")
    ap.add_argument("--n-eval", type=int, default=48, help="synthetic: images to score")
    ap.add_argument("--eval-seed", type=int, default=7, help="synthetic: generator seed of the scored images")
    ap.add_argument("--quality-dir", type=Path, help="consep: bench_quality.py's cache folder")
    ap.add_argument("--data", type=Path, help="consep: data folder")
    ap.add_argument("--test-limit", type=int, default=0, help="consep: score only the first N test patches")
    ap.add_argument("--out", type=Path, help="results folder")
    ap.add_argument("--variants", nargs="+", help="names of the rows to run (default: all)")
    ap.add_argument("--cluster-threshold", type=float, help="override the checkpoint's Params")
    ap.add_argument("--instance-bg-threshold", type=float, help="override the checkpoint's Params")
    ap.add_argument("--seed-quality", action="store_true", help="consep: the seeds' quality with each refinement, then stop")
    ap.add_argument("--train-only", action="store_true", help="consep: train the IRNet from the true seeds and stop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if args.checkpoint is None:
        from napari_irnet.demo import BUNDLED_MODEL

        args.checkpoint = BUNDLED_MODEL
    args.variants_run = [v for v in VARIANTS if not args.variants or v.name in args.variants]
    args.needs = {v.irn for v in args.variants_run} | ({"full"} if any(v.cams == "masks" for v in args.variants_run) else set())
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dataset == "consep" and not (args.data or ROOT.parent / "shared" / "data" / "consep").is_dir():
        print("skipped: no CoNSeP data (see the shared data README)")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from napari_irnet.io.files import json_ready, write_json
    from napari_irnet.pipeline.inference import resolve_device

    device = resolve_device(args.device)
    if args.seed_quality:
        consep_seed_quality(args)
        return 0
    t0 = time.perf_counter()
    classes, items, sources, params, out = (run_synthetic if args.dataset == "synthetic" else run_consep)(args, device)
    changes = {k: getattr(args, k) for k in ("cluster_threshold", "instance_bg_threshold") if getattr(args, k) is not None}
    params = params.replace(**changes) if changes else params
    variants = [v for v in args.variants_run if v.cams != "masks" or "cams_masks" in sources]
    results, clusters = evaluate(items, sources, variants, params, classes, device)
    n_gt = float(np.mean([len(it.gt_labels) for it in items]))
    text = table(results, clusters, variants, n_gt)
    print()
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    record = {"dataset": args.dataset, "classes": classes, "params": params.to_dict(), "n_images": len(items),
              "variants": [v.__dict__ for v in variants], "results": results, "clusters": clusters,
              "minutes": (time.perf_counter() - t0) / 60, "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    write_json(out / f"oracles{tag}.json", json_ready(record))
    (out / f"oracles{tag}.md").write_text(text)
    _log(f"wrote {out / f'oracles{tag}.md'} ({record['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
