"""Quality benchmark on real data: IRNet against weak baselines and a fully supervised upper bound.

    python benchmarks/bench_quality.py --dataset consep   [options]
    python benchmarks/bench_quality.py --dataset coco_voc [options]

Data: ``../shared/data/<dataset>`` relative to the repository root (see that
folder's README), or ``--data DIR``. Without it the benchmark prints why and
exits with status 0 (a skip).

What it does, caching every expensive result in ``--out`` (default
``bench_output/quality/<dataset>``, ignored by git), so that tables, baselines
and post-processing parameters can be re-run without retraining:

1. trains the CAM classifier on the training images with their image-level
   labels only (``cam.pt``);
2. computes the CAMs of every evaluated image (``cams_<split>.pt``) and the
   seeds of the training images (``seeds.npz``);
3. trains IRNet on relations mined from those seeds (``irn_weak.pt``) and, for
   the upper bound, the same networks from the ground truth: IRNet from the
   instances through :func:`napari_irnet.training.targets.relation_labels`
   (``irn_full.pt``; ``irn_full_c<w>.pt`` with ``--centroid-loss-weight w``),
   and the CAM network per pixel from the class maps
   (:func:`napari_irnet.training.cam.train_cam_from_masks`, ``cam_full.pt``,
   its CAMs ``cams_full_<split>.pt``), with the same budgets;
4. runs both IRNets on the evaluated images (``irn_<model>_<split>.pt``);
5. scores, per split, with the PASCAL VOC protocol of
   :mod:`napari_irnet.evaluation.metrics`:

   - ``CAM``: the CAM class map (argmax against ``cam_eval_threshold``), mIoU;
   - ``(a) CAM + CC``: that map's connected components as instances;
   - ``(b) CAM + RW + CC``: the CAMs propagated by the random walk over IRNet's
     boundaries (no displacement), then connected components;
   - ``IRNet``: the full pipeline (displacement clusters, instance walk);
   - ``(c) upper bound``: the full pipeline with both networks trained from masks.

6. prints markdown tables, writes ``results.json``, ``tables.md`` and a figure
   (``figure_<dataset>.png``; ``--figure-dir`` copies it elsewhere).

Images of the evaluated splits are processed with their ground-truth
image-level labels (as the reference implementation makes its pseudo labels);
nothing else of the ground truth reaches the weak pipeline.

``--device cuda`` runs training and inference on a GPU when there is one.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

THRESHOLDS = (0.25, 0.5, 0.7, 0.75)
METHODS = ("CAM", "(a) CAM + CC", "(b) CAM + RW + CC", "IRNet", "(c) upper bound")


# --------------------------------------------------------------------------- data


@dataclass
class Item:
    """One image: the network input (working size) and the ground truth (original size)."""

    name: str
    image: np.ndarray  # (h, w, 3) uint8, working size
    class_ids: list[int]  # image-level labels, 0-based
    gt_inst: np.ndarray  # (H, W) instance ids, original size, 0 = none/ignored
    gt_labels: dict[int, int]  # instance id -> 0-based class
    gt_sem: np.ndarray  # (H, W) class + 1, 255 ignore
    ignore: np.ndarray  # (H, W) bool
    gt_inst_work: np.ndarray = field(default=None)  # (h, w) instances at working size

    @property
    def shape(self) -> tuple[int, int]:
        return self.gt_inst.shape

    def semantic_work(self) -> np.ndarray:
        """(h, w) int64 class + 1 of the instances at working size, 0 elsewhere."""
        sem = np.zeros(self.gt_inst_work.shape, np.int64)
        for iid, c in self.gt_labels.items():
            sem[self.gt_inst_work == iid] = c + 1
        return sem


def _resize(array: np.ndarray, shape_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    if array.shape[:2] == tuple(shape_hw):
        return array
    if nearest:
        img = Image.fromarray(np.asarray(array, np.int32), mode="I")
        return np.asarray(img.resize((shape_hw[1], shape_hw[0]), Image.NEAREST)).astype(array.dtype)
    return np.asarray(Image.fromarray(array).resize((shape_hw[1], shape_hw[0]), Image.BICUBIC))


def _working_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    if not long_side or max(shape) == long_side:
        return tuple(shape)
    s = long_side / max(shape)
    return (max(1, round(shape[0] * s)), max(1, round(shape[1] * s)))


def _majority_class(inst: np.ndarray, sem: np.ndarray, iid: int) -> int:
    values = sem[(inst == iid) & (sem != 255) & (sem != 0)]
    return int(np.bincount(values).argmax()) if values.size else 0


def _make_item(name, image, inst, sem, table, class_ids, long_side) -> Item:
    ignore = sem == 255
    labels = {}
    for iid in (int(v) for v in np.unique(inst) if v):
        value = table.get(iid) or _majority_class(inst, sem, iid)
        if value:
            labels[iid] = value - 1
        else:  # no class: an ignore region
            ignore |= inst == iid
    inst = np.where(ignore, 0, inst)
    work = _working_shape(image.shape[:2], long_side)
    item = Item(name, _resize(image, work, False), class_ids, inst, labels, sem, ignore)
    item.gt_inst_work = _resize(inst, work, True)
    return item


def load_consep(root: Path, split: str, long_side: int, limit: int = 0) -> tuple[list[str], list[Item]]:
    from napari_irnet.io.images import read_image, read_label_image

    meta = json.loads((root / "META.json").read_text())
    classes = [meta["classes"][k] for k in sorted(meta["classes"], key=int)]
    folder = root / split
    table = json.loads((folder / "instances.json").read_text())
    names = sorted(p.stem for p in (folder / "images").glob("*.jpg"))
    if limit:
        names = names[:limit]
    items = []
    for name in names:
        inst = read_label_image(folder / "inst" / f"{name}.png")
        sem = read_label_image(folder / "sem" / f"{name}.png")
        t = {int(k): int(v) for k, v in table.get(name, {}).items()}
        class_ids = sorted({v - 1 for v in t.values()})
        items.append(_make_item(name, read_image(folder / "images" / f"{name}.jpg"), inst, sem, t, class_ids, long_side))
    return classes, items


def load_coco_voc(root: Path, long_side: int, limit: int = 0) -> tuple[list[str], list[Item]]:
    from napari_irnet.io.images import read_image, read_label_image

    meta = json.loads((root / "image_level_labels.json").read_text())
    classes = [c for c in meta["classes"] if c != "background"]
    names = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    if limit:
        names = names[:limit]
    items = []
    for name in names:
        obj = read_label_image(root / "SegmentationObject" / f"{name}.png")
        sem = read_label_image(root / "SegmentationClass" / f"{name}.png")
        border = obj == 255
        sem = np.where(border, 255, sem)
        obj = np.where(border, 0, obj)
        class_ids = sorted(classes.index(c) for c in meta["image_labels"][name])
        items.append(_make_item(name, read_image(root / "JPEGImages" / f"{name}.jpg"), obj, sem, {}, class_ids, long_side))
    return classes, items


# ----------------------------------------------------------------------- training


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run_loop(gen, label: str, every: int = 10) -> list[dict]:
    history, t0 = [], time.perf_counter()
    for rec in gen:
        history.append({k: v for k, v in rec.items() if isinstance(v, (int, float, str))})
        if rec["step"] % every == 0 or rec["step"] == rec["max_step"]:
            parts = " ".join(f"{k} {rec[k]:.3f}" for k in ("loss", "pos", "neg", "dp_fg", "dp_bg", "dp_centroid", "cam_loss") if k in rec)
            _log(f"{label} step {rec['step']}/{rec['max_step']} {parts} ({time.perf_counter() - t0:.0f} s)")
    return history


def train_params(args):
    from napari_irnet.params import TrainParams

    return TrainParams(
        cam_epochs=args.cam_epochs, cam_batch_size=args.batch_size, cam_learning_rate=args.cam_lr,
        cam_crop_size=args.crop, cam_resize_long=tuple(args.cam_resize_long),
        irn_epochs=args.irn_epochs, irn_batch_size=args.batch_size, irn_learning_rate=args.irn_lr,
        irn_crop_size=args.crop, irn_rescale=tuple(args.irn_rescale), train_radius=args.train_radius,
        momentum=args.momentum, centroid_loss_weight=args.centroid_loss_weight, amp=args.amp == "true", seed=args.seed,
    )  # fmt: skip


def get_cam_model(args, classes, items, out: Path, timings: dict, from_masks: bool = False):
    """The weak CAM network (``cam.pt``), or with ``from_masks`` the one trained per pixel from the class maps (``cam_full.pt``)."""
    from napari_irnet.models.checkpoint import load_checkpoint, new_model, save_checkpoint
    from napari_irnet.training.cam import train_cam, train_cam_from_masks
    from napari_irnet.training.datasets import LabelledImage
    from napari_irnet.training.targets import class_map_target

    key = "cam_full" if from_masks else "cam"
    path = out / f"{key}.pt"
    if path.is_file() and not args.retrain_cam:
        _log(f"reusing {path}")
        model = load_checkpoint(path)
        if model.classes != list(classes):  # the scores compare class indices with the ground truth's values
            raise SystemExit(f"{path}: trained for the classes {model.classes}, the data's are {classes} (in this order); --retrain-cam")
        if model.cam_output_stride != args.cam_output_stride:
            raise SystemExit(f"{path}: a CAM network at output stride {model.cam_output_stride}, not {args.cam_output_stride}; --retrain-cam or another --out")
        return model
    weights = None if args.weights == "none" else args.weights
    model = new_model(classes, args.backbone, weights, cam_output_stride=args.cam_output_stride)
    model.train_params = train_params(args)
    data = [LabelledImage(it.name, it.image, it.class_ids) for it in items]
    t0 = time.perf_counter()
    if from_masks:
        maps = [class_map_target(it.gt_inst_work, it.gt_labels) for it in items]
        history = _run_loop(train_cam_from_masks(model, data, maps, device=args.device), "CAM from masks")
    else:
        history = _run_loop(train_cam(model, data, device=args.device), "CAM")
    timings[f"train_{key}_min"] = (time.perf_counter() - t0) / 60
    model.history.append({"stage": f"bench_{key}", "losses": [h["loss"] for h in history], "minutes": timings[f"train_{key}_min"]})
    save_checkpoint(model, path)
    return model


def _cached_per_image(items, path: Path, compute, timings: dict, key: str, label: str) -> dict:
    """{name: compute(item)} of every item, kept in ``path`` (torch) and completed when items are missing."""
    import torch

    cache = torch.load(path, weights_only=True) if path.is_file() else {}
    todo = [it for it in items if it.name not in cache]
    if todo:
        t0 = time.perf_counter()
        for n, it in enumerate(todo, 1):
            cache[it.name] = compute(it)
            if n % 50 == 0:
                _log(f"{label}: {n}/{len(todo)}")
        timings[key] = (time.perf_counter() - t0) / 60
        torch.save(cache, path)
    return cache


def get_cams(model, items, params, device, path: Path, timings: dict, key: str) -> dict:
    """{name: (strided fp16, high_res fp16)} of every item, cached."""
    from napari_irnet.pipeline.inference import compute_cams

    def compute(it):
        cam = compute_cams(model.cam, it.image, it.class_ids, params, device)
        return cam.strided.half(), cam.high_res.half()

    return _cached_per_image(items, path, compute, timings, f"cams_{key}_min", f"CAMs {key}")


def get_seeds(items, cams, params, classes, path: Path) -> list[np.ndarray]:
    from napari_irnet.pipeline.stages import seeds_from_cams

    if path.is_file():
        data = np.load(path)
        if all(it.name in data for it in items):
            return [data[it.name] for it in items]
    seeds = []
    for it in items:
        fg = params.seed_fg_thresholds([classes[c] for c in it.class_ids])
        seeds.append(seeds_from_cams(cams[it.name][1].float(), it.class_ids, fg, params.seed_bg_threshold, it.image, params.use_crf))
    np.savez_compressed(path, **{it.name: s for it, s in zip(items, seeds)})
    return seeds


def get_irn_model(args, cam_model, items, labels, path: Path, label: str, timings: dict, instances: bool = False):
    from napari_irnet.models.checkpoint import load_checkpoint, new_irnet, save_checkpoint
    from napari_irnet.training.datasets import LabelledImage
    from napari_irnet.training.irn import train_irn

    if path.is_file() and not args.retrain_irn:
        _log(f"reusing {path}")
        return load_checkpoint(path)
    model = copy.copy(cam_model)
    model.history = list(cam_model.history)
    model.train_params = train_params(args)
    model.displacement_head = args.displacement_head
    source = args.irn_backbone or ("cam" if args.weights == "none" else args.weights)
    model.irn = new_irnet(model, source)
    data = [LabelledImage(it.name, it.image, it.class_ids) for it in items]
    t0 = time.perf_counter()
    history = _run_loop(train_irn(model, data, labels, device=args.device, instances=instances), f"IRNet {label}")
    timings[f"train_irn_{label}_min"] = (time.perf_counter() - t0) / 60
    keys = ("loss", "pos", "neg", "dp_fg", "dp_bg", "dp_centroid")
    losses = {k: [h[k] for h in history] for k in keys if history and k in history[0]}
    model.history.append({"stage": f"bench_irn_{label}", "losses": losses, "minutes": timings[f"train_irn_{label}_min"]})
    save_checkpoint(model, path)
    return model


def get_irn_outputs(model, items, params, device, path: Path, timings: dict, key: str) -> dict:
    """{name: (boundary (h, w), displacement (2, h, w))}, cached."""
    from napari_irnet.pipeline.inference import compute_irnet

    def compute(it):
        out = compute_irnet(model.irn, it.image, params, device)
        return out.boundary, out.displacement

    return _cached_per_image(items, path, compute, timings, f"irn_{key}_min", f"IRNet outputs {key}")


# --------------------------------------------------------------------- evaluation


class Scorer:
    """Instance AP (VOC protocol) and semantic confusion of one method on one split."""

    def __init__(self, num_classes: int, instances: bool = True):
        from napari_irnet.evaluation.metrics import APAccumulator

        self.k = num_classes
        self.acc = APAccumulator(THRESHOLDS, num_classes=num_classes) if instances else None
        self.confusion = np.zeros((num_classes + 1, num_classes + 1), np.int64)

    def add(self, item: Item, semantic: np.ndarray, instances=None) -> None:
        from napari_irnet.evaluation.metrics import semantic_confusion
        from napari_irnet.evaluation.overlap import label_map_iou

        H, W = item.shape
        self.confusion += semantic_confusion(_resize(semantic, (H, W), True), item.gt_sem, self.k + 1, 255)
        if self.acc is None:
            return
        labels = _resize(instances.labels, (H, W), True)
        iou, pred_ids, gt_ids = label_map_iou(labels, item.gt_inst, item.ignore)
        rec = {r["id"]: r for r in instances.records}
        present = [int(i) for i in pred_ids]
        self.acc.add_iou(
            iou,
            [rec[i]["class_id"] for i in present],
            [rec[i]["score"] for i in present],
            [item.gt_labels[int(g)] for g in gt_ids],
        )

    def result(self) -> dict:
        from napari_irnet.evaluation.metrics import semantic_miou

        miou, iou = semantic_miou(self.confusion)
        out = {"mIoU": miou, "IoU": [float(v) for v in iou]}
        if self.acc is not None:
            res = self.acc.result()
            out["mAP"] = {t: res[t]["mAP"] for t in THRESHOLDS}
            out["AP"] = {t: [float(v) for v in res[t]["AP"]] for t in THRESHOLDS}
            out["n_gt"] = [int(v) for v in res[THRESHOLDS[0]]["n_pos"]]
            out["n_pred"] = [int(v) for v in res[THRESHOLDS[0]]["n_pred"]]
        return out


def evaluate_split(
    items, cams, irn_weak, irn_full, params, device, classes, keep_for_figure=(), cams_full=None, baselines=True
) -> tuple[dict, dict, dict]:
    """Scores of every method on one split, diagnostics, and the stage outputs of the figure images.

    ``cams_full``: the upper bound's CAMs (default: ``cams``); ``baselines=False``
    skips (a) and (b).
    """
    from napari_irnet.pipeline.cache import StageCache
    from napari_irnet.pipeline.inference import CAMOutput, IRNetOutput, NetworkOutputs
    from napari_irnet.pipeline.stages import cam_class_map, instances_from_class_map, propagate, semantic_from_argmax, upsampled_argmax
    from napari_irnet.training.targets import boundary_target, displacement_target

    k = len(classes)
    wanted = [m for m in METHODS if (m != "(c) upper bound" or irn_full is not None) and (baselines or m[:3] not in ("(a)", "(b)"))]
    scorers = {m: Scorer(k, instances=m != "CAM") for m in wanted}
    cams_full = cams if cams_full is None else cams_full
    diag = {"disp_err_weak": [], "disp_err_full": [], "clusters_weak": [], "clusters_full": [], "clusters_oracle": [], "gt_instances": [],
            "boundary_on_edges_weak": [], "boundary_inside_weak": [], "boundary_on_edges_full": [], "boundary_inside_full": [],
            "seconds_per_image": []}  # fmt: skip
    figure = {}
    for n, it in enumerate(items, 1):
        t0 = time.perf_counter()
        ids = np.asarray(it.class_ids, np.int64)
        strided, high = (t.float() for t in cams[it.name])
        h, w = it.image.shape[:2]
        cam_map = cam_class_map(high, ids, params.cam_eval_threshold)
        scorers["CAM"].add(it, cam_map)
        cam_score = np.zeros((h, w), np.float32)
        if len(ids):
            arg = np.argmax(np.concatenate([np.full((1, h, w), params.cam_eval_threshold, np.float32), high.numpy()]), 0)
            cam_score = np.where(arg > 0, np.take_along_axis(high.numpy(), np.maximum(arg - 1, 0)[None], 0)[0], 0)
        if baselines:
            scorers["(a) CAM + CC"].add(it, cam_map, instances_from_class_map(cam_map, cam_score, params.min_fragment_fraction))
        keep = {}
        for tag, outputs in (("weak", irn_weak), ("full", irn_full)):
            if outputs is None:
                continue
            boundary, disp = outputs[it.name]
            s4, hr = (strided, high) if tag == "weak" else (t.float() for t in cams_full[it.name])
            net_out = NetworkOutputs((h, w), CAMOutput(ids, s4, hr), IRNetOutput(boundary, disp))
            pred = StageCache(net_out, params, None, device).update()
            method = "IRNet" if tag == "weak" else "(c) upper bound"
            scorers[method].add(it, pred.semantic, pred.instances)
            if tag == "weak" and baselines:
                # (b): the same semantic walk, then connected components
                walked = propagate(strided.to(device), boundary.to(device), params.beta, params.walk_steps, params.radius)
                argmax = upsampled_argmax(walked, (h, w)) if walked.shape[0] else None
                sem = semantic_from_argmax(argmax, ids, (h, w), params.semantic_bg_threshold)
                score = np.zeros((h, w), np.float32)
                if argmax is not None:
                    score = (argmax[0] / max(float(argmax[2]), 1e-12)).cpu().numpy()
                scorers["(b) CAM + RW + CC"].add(it, sem, instances_from_class_map(sem, score, params.min_fragment_fraction))
                keep["rw_cc"] = instances_from_class_map(sem, score, params.min_fragment_fraction).labels
            # diagnostics on the stride-4 grid against targets from the GT instances
            target, valid = displacement_target(it.gt_inst_work)
            gh, gw = target.shape[1:]
            d = disp.numpy()[:, :gh, :gw]
            if valid.any():
                diag[f"disp_err_{tag}"].append(float(np.abs(d - target)[:, valid].sum(0).mean()))
            edges = boundary_target(it.gt_inst_work)
            b = boundary.numpy()[:gh, :gw]
            if edges.any():
                diag[f"boundary_on_edges_{tag}"].append(float(b[edges].mean()))
            inside = valid & ~edges
            if inside.any():
                diag[f"boundary_inside_{tag}"].append(float(b[inside].mean()))
            diag[f"clusters_{tag}"].append(int(pred.clusters.max()) + 1)
            keep[tag] = pred
            keep[f"boundary_{tag}"], keep[f"disp_{tag}"] = boundary.numpy(), disp.numpy()
        diag["gt_instances"].append(len(it.gt_labels))
        diag["clusters_oracle"].append(oracle_clusters(it.gt_inst_work, params))
        diag["seconds_per_image"].append(time.perf_counter() - t0)
        if it.name in keep_for_figure and baselines:
            figure[it.name] = {"item": it, "cam": high.numpy(), "cam_cc": instances_from_class_map(cam_map, cam_score, params.min_fragment_fraction).labels, **keep}
        if n % 25 == 0:
            _log(f"evaluated {n}/{len(items)}")
    results = {m: s.result() for m, s in scorers.items()}
    summary = {key: (float(np.mean(v)) if v else None) for key, v in diag.items()}
    return results, summary, figure


def oracle_clusters(instances: np.ndarray, params) -> int:
    """Centres found by the clustering from the ideal displacement field of ``instances``.

    The field is :func:`~napari_irnet.training.targets.displacement_target` inside
    the instances and zero elsewhere (what IRNet is trained to predict); its
    cluster count is the most the post-processing can find at this image scale
    and ``cluster_threshold``.
    """
    from napari_irnet.pipeline.stages import cluster_centroids, find_centroids
    from napari_irnet.training.targets import displacement_target

    target, valid = displacement_target(instances)
    field = np.where(valid[None], target, 0).astype(np.float32)
    return int(cluster_centroids(find_centroids(field, params.centroid_steps), field, params.cluster_threshold).max()) + 1


FIT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def fit_seed_thresholds(items, cams, classes) -> tuple[dict[str, float], list[str]]:
    """Per-class foreground seed thresholds chosen on training images with their masks.

    For each class and each threshold of :data:`FIT_THRESHOLDS`, the
    unrefined seeds of that class (pixels where its CAM is the highest of the
    image's CAMs and above the threshold) are compared with the class's
    nuclei: the threshold with the best F1 is kept. A class whose seeds at
    that threshold are no more precise than the share of its pixels in the
    images labelled with it (no better than chance) gets 1.0: no foreground
    seeds. Returns the thresholds and a table (lines).
    """
    n_t = len(FIT_THRESHOLDS)
    seeded = np.zeros((len(classes), n_t))
    hit = np.zeros((len(classes), n_t))
    truth = np.zeros(len(classes))
    area = np.zeros(len(classes))
    for it in (it for it in items if it.class_ids):
        hr = cams[it.name][1].float().numpy()
        sem = it.semantic_work()
        winner = hr.argmax(axis=0)
        for k, c in enumerate(it.class_ids):
            mine = sem == c + 1
            truth[c] += mine.sum()
            area[c] += sem.size
            for j, t in enumerate(FIT_THRESHOLDS):
                s = (winner == k) & (hr[k] > t)
                seeded[c, j] += s.sum()
                hit[c, j] += (s & mine).sum()
    chosen, lines = {}, ["| class | share of its images | threshold | seed precision | nuclei covered | F1 |", "|---|--:|--:|--:|--:|--:|"]
    for c, name in enumerate(classes):
        if not area[c]:
            continue
        precision = hit[c] / np.maximum(seeded[c], 1)
        recall = hit[c] / max(truth[c], 1)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        base = truth[c] / area[c]
        j = int(np.argmax(f1))
        if precision[j] <= base:
            chosen[name] = 1.0
            lines.append(f"| {name} | {base:.3f} | none (at {FIT_THRESHOLDS[j]:g}: precision {precision[j]:.3f}) | – | – | – |")
        else:
            chosen[name] = FIT_THRESHOLDS[j]
            lines.append(f"| {name} | {base:.3f} | {FIT_THRESHOLDS[j]:g} | {precision[j]:.3f} | {recall[j]:.2f} | {f1[j]:.3f} |")
    return chosen, lines


def seed_quality(items, seeds) -> dict:
    """How good the CAM seeds are against the ground truth (training images, working size)."""
    fg_correct = fg_total = gt_fg = gt_fg_seeded = bg_total = bg_correct = ignore = total = 0
    for it, s in zip(items, seeds):
        sem = it.semantic_work()
        fg = (s != 0) & (s != 255)
        fg_total += int(fg.sum())
        fg_correct += int((fg & (s == sem)).sum())
        gt_fg += int((sem > 0).sum())
        gt_fg_seeded += int(((sem > 0) & fg).sum())
        bg = s == 0
        bg_total += int(bg.sum())
        bg_correct += int((bg & (sem == 0)).sum())
        ignore += int((s == 255).sum())
        total += s.size
    return {
        "fg_seed_precision": fg_correct / max(fg_total, 1),
        "gt_fg_covered_by_fg_seeds": gt_fg_seeded / max(gt_fg, 1),
        "bg_seed_precision": bg_correct / max(bg_total, 1),
        "fraction_fg_seeds": fg_total / total,
        "fraction_bg_seeds": bg_total / total,
        "fraction_ignored": ignore / total,
    }


# ------------------------------------------------------------------------ figures


def _palette_colours(labels: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(3)
    colours = rng.integers(60, 256, (int(labels.max()) + 1, 3)).astype(np.uint8)
    colours[0] = 0
    return colours[labels]


def _heat(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> a black-red-yellow-white ramp (uint8 RGB)."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 0], [200, 0, 0], [255, 200, 0], [255, 255, 255]], np.float64)
    pos = v * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    frac = pos - lo
    return (stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac).astype(np.uint8)


def _flow(disp: np.ndarray, scale: float) -> np.ndarray:
    """Displacement (2, h, w) -> colour wheel: hue = direction, brightness = length."""
    from PIL import Image

    dy, dx = disp
    hue = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * 255).astype(np.uint8)
    val = (np.clip(np.hypot(dy, dx) / scale, 0, 1) * 255).astype(np.uint8)
    hsv = np.stack([hue, np.full_like(hue, 255), val], -1)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def _overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    col = _palette_colours(labels).astype(np.float64)
    out = image.astype(np.float64) * 0.35 + col * 0.65
    out[labels == 0] = image[labels == 0] * 0.6
    return out.astype(np.uint8)


def make_figure(figure: dict, path: Path, panel: int = 220) -> None:
    from PIL import Image, ImageDraw

    titles = ["image", "ground truth", "CAM (max over classes)", "boundary (IRNet)", "displacement (IRNet)",
              "(a) CAM + CC", "(b) CAM + RW + CC", "IRNet instances", "(c) upper bound"]  # fmt: skip
    rows = []
    for f in figure.values():
        it = f["item"]
        h, w = it.image.shape[:2]
        cam = f["cam"].max(0) if f["cam"].shape[0] else np.zeros((h, w))
        up = lambda a: _resize(a, (h, w), True)  # noqa: E731
        tiles = [
            it.image,
            _overlay(it.image, it.gt_inst_work),
            _heat(cam),
            _heat(np.kron(f["boundary_weak"], np.ones((4, 4)))[:h, :w]),
            np.kron(_flow(f["disp_weak"], 8.0), np.ones((4, 4, 1), np.uint8))[:h, :w],
            _overlay(it.image, f["cam_cc"]),
            _overlay(it.image, f["rw_cc"]),
            _overlay(it.image, up(f["weak"].instances.labels)),
        ]
        if "full" in f:
            tiles.append(_overlay(it.image, up(f["full"].instances.labels)))
        s = panel / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rows.append([Image.fromarray(np.ascontiguousarray(t, np.uint8)).resize(size, Image.NEAREST) for t in tiles])
    if not rows:
        return
    n_cols = max(len(r) for r in rows)
    heads = 16
    cell_h = max(r[0].size[1] for r in rows)
    canvas = Image.new("RGB", (n_cols * (panel + 4), heads + len(rows) * (cell_h + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for c in range(n_cols):
        draw.text((c * (panel + 4) + 2, 2), titles[c], fill="black")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(tile, (c * (panel + 4), heads + r * (cell_h + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


# ------------------------------------------------------------------------- tables


def _f(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def table(results: dict, title: str) -> str:
    head = "| method | mIoU | mAP^r 0.25 | mAP^r 0.5 | mAP^r 0.7 | mAP^r 0.75 | instances (pred / GT) |"
    lines = [f"**{title}**", "", head, "|---|--:|--:|--:|--:|--:|--:|"]
    for m in METHODS:
        if m not in results:
            continue
        r = results[m]
        maps = [_f(r["mAP"][t]) if "mAP" in r else "–" for t in THRESHOLDS]
        count = f"{sum(r['n_pred'])} / {sum(r['n_gt'])}" if "n_pred" in r else ""
        lines.append(f"| {m} | {_f(r['mIoU'])} | " + " | ".join(maps) + f" | {count} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main

DEFAULTS = {
    # CoNSeP: 256 px patches upscaled 2x (nuclei of ~17 px become ~34 px, about
    # 8 cells of IRNet's stride-4 grid across; at their own size even the
    # ground-truth displacement field finds 2 centres per patch instead of 66,
    # see "oracle" in the diagnostics), single-scale CAMs, a lower cluster
    # threshold (the nuclei's displacements are short), fragments kept down to
    # 0.05% of the patch (33 px of the original)
    "consep": dict(long_side=512, crop=256, cam_resize_long=(448, 640), cam_scales=(1.0,), min_fragment=0.0005,
                   cam_epochs=3, irn_epochs=8, batch_size=16, cluster_threshold=1.5),  # fmt: skip
    # coco_voc: photos resized to 320 px on the long side, the reference's multi-scale CAM minus scale 2
    "coco_voc": dict(long_side=320, crop=320, cam_resize_long=(240, 400), cam_scales=(1.0, 0.5, 1.5), min_fragment=0.01,
                     cam_epochs=8, irn_epochs=6, batch_size=8, cluster_threshold=2.5),  # fmt: skip
}


def parse_args(argv=None):
    from napari_irnet.cli.options import class_value
    from napari_irnet.params import CAM_OUTPUT_STRIDES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DEFAULTS), default="consep")
    ap.add_argument("--data", type=Path, help="data folder (default: ../shared/data/<dataset> from the repository root)")
    ap.add_argument("--out", type=Path, help="cache and results folder (default: bench_output/quality/<dataset>_<long side>)")
    ap.add_argument("--figure-dir", type=Path, help="also copy the figure PNG here (e.g. docs/images)")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0 | resnet50 | resnet18 | tiny")
    ap.add_argument("--weights", default="imagenet", help="imagenet | none | PATH")
    ap.add_argument("--irn-backbone", help="IRNet's frozen backbone: imagenet | cam | none (default: imagenet, or cam without weights)")
    ap.add_argument("--long-side", type=int, help="resize images to this long side for the networks (0: as they are)")
    ap.add_argument("--crop", type=int, help="training crop size")
    ap.add_argument("--cam-resize-long", type=int, nargs=2)
    ap.add_argument("--cam-epochs", type=int)
    ap.add_argument("--irn-epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--cam-lr", type=float, default=0.01)
    ap.add_argument("--irn-lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (the reference's effective value is 1e-4)")
    ap.add_argument("--irn-rescale", type=float, nargs=2, default=(0.75, 1.25))
    ap.add_argument("--train-radius", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="training seed (TrainParams.seed); other than 0, the IRNets are cached as irn_*_seed<N>.pt (cached CAM networks are reused)")
    ap.add_argument("--amp", choices=("true", "false"), default="true",
                    help="bfloat16 mixed precision in training where the device has bfloat16 units (TrainParams.amp)")
    ap.add_argument("--centroid-loss-weight", type=float, default=0.0,
                    help="the upper bound's IRNet also regresses the displacement to the centroids (TrainParams)")
    ap.add_argument("--displacement-head", default="reference",
                    help="IRNet's last displacement layers: reference (1x1) | context (dilated 3x3); cached as irn_*_context.pt")
    ap.add_argument("--cam-output-stride", type=int, choices=CAM_OUTPUT_STRIDES, default=16,
                    help="the CAM networks' output stride (new_model's cam_output_stride; 8: the backbone's stride-16 stage made stride 1; its own cache folder)")
    ap.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (0: all)")
    ap.add_argument("--train-eval-every", type=int, default=1, help="score the pseudo labels of every N-th training image")
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--no-upper-bound", action="store_true")
    ap.add_argument("--weak-checkpoint", type=Path, help="evaluate this IRNet checkpoint as the weak IRNet instead of training one")
    ap.add_argument("--full-checkpoint", type=Path, help="the same for the upper bound")
    ap.add_argument("--retrain-cam", action="store_true", help="train again (implies new CAMs, seeds and IRNets)")
    ap.add_argument("--retrain-irn", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure-images", type=int, default=3)
    g = ap.add_argument_group("post-processing (Params; defaults: the reference's unless the data set's defaults say otherwise)")
    g.add_argument("--cam-scales", type=float, nargs="+")
    g.add_argument("--cam-eval-threshold", type=float)
    g.add_argument("--seed-fg-threshold", type=float)
    g.add_argument("--seed-bg-threshold", type=float)
    g.add_argument("--seed-class-thresholds", nargs="+", type=class_value, metavar="CLASS=T", help="foreground seed thresholds of single classes (Params.seed_class_thresholds)")
    g.add_argument("--fit-seed-thresholds", type=int, metavar="N", default=0,
                   help="choose Params.seed_class_thresholds on every N-th training image with its masks (best F1 per class; none for a class no better than chance)")
    g.add_argument("--instance-bg-threshold", type=float)
    g.add_argument("--semantic-bg-threshold", type=float)
    g.add_argument("--cluster-threshold", type=float)
    g.add_argument("--min-fragment", type=float)
    g.add_argument("--beta", type=float)
    g.add_argument("--walk-steps", type=int)
    g.add_argument("--tag", default="", help="suffix of results/tables files (post-processing variants)")
    args = ap.parse_args(argv)
    d = DEFAULTS[args.dataset]
    for key in ("long_side", "crop", "cam_resize_long", "cam_epochs", "irn_epochs", "batch_size", "cam_scales", "min_fragment",
                "cluster_threshold"):
        if getattr(args, key) is None:
            setattr(args, key, d[key])
    if args.retrain_cam:
        args.retrain_irn = True
    return args


def make_params(args):
    """The post-processing :class:`~napari_irnet.params.Params` of a run (data set defaults, then options)."""
    from napari_irnet.params import Params

    keys = ("cam_eval_threshold", "seed_fg_threshold", "seed_bg_threshold", "instance_bg_threshold",
            "semantic_bg_threshold", "beta", "walk_steps")  # fmt: skip
    return Params(
        cam_scales=tuple(args.cam_scales),
        seed_class_thresholds=dict(args.seed_class_thresholds or ()),
        min_fragment_fraction=args.min_fragment,
        cluster_threshold=args.cluster_threshold,
        **{k: getattr(args, k) for k in keys if getattr(args, k) is not None},
    )


def _head_suffix(args) -> str:
    return "" if args.displacement_head == "reference" else f"_{args.displacement_head}"


def _class_thresholds_suffix(params) -> str:
    """``_cls`` and the per-class seed thresholds, for the cache's names (empty without them)."""
    items = sorted(params.seed_class_thresholds.items())
    return "_cls" + "".join(f"_{name[:4]}{t:g}" for name, t in items) if items else ""


def weak_irn_name(args, params) -> str:
    """Name of the weak IRNet in the cache (``irn_<name>.pt``): with the seed thresholds when they are not the reference's."""
    default_seeds = (params.seed_fg_threshold, params.seed_bg_threshold) == (0.30, 0.05)
    name = "weak" if default_seeds else f"weak_fg{params.seed_fg_threshold:g}_bg{params.seed_bg_threshold:g}"
    return name + _class_thresholds_suffix(params) + _head_suffix(args) + (f"_seed{args.seed}" if args.seed else "")


def full_irn_name(args) -> str:
    """Name of the upper bound's IRNet in the cache (``irn_<name>.pt``)."""
    name = f"full_c{args.centroid_loss_weight:g}" if args.centroid_loss_weight else "full"
    return name + _head_suffix(args) + (f"_seed{args.seed}" if args.seed else "")


def output_dir(args) -> Path:
    """The cache and results folder: ``--out``, or one per data set and working size."""
    stride = "" if args.cam_output_stride == 16 else f"_s{args.cam_output_stride}"
    return args.out or ROOT / "bench_output" / "quality" / f"{args.dataset}_{args.long_side}{stride}"


def main(argv=None) -> int:
    args = parse_args(argv)
    data = args.data or ROOT.parent / "shared" / "data" / args.dataset
    if not data.is_dir():
        print(f"skipped: no data at {data} (see the shared data README; the benchmark needs the real data set)")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from napari_irnet.io.files import json_ready, write_json
    from napari_irnet.pipeline.inference import resolve_device
    from napari_irnet.training.targets import relation_labels

    device = resolve_device(args.device)
    out = output_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    t_start = time.perf_counter()
    if args.dataset == "consep":
        classes, train = load_consep(data, "train", args.long_side, args.train_limit)
        _, test = load_consep(data, "test", args.long_side, args.test_limit)
        splits = {"test": test, "train (pseudo labels)": train[:: args.train_eval_every]}
    else:
        classes, train = load_coco_voc(data, args.long_side, args.train_limit)
        test = []
        splits = {"train (pseudo labels)": train[:: args.train_eval_every]}
    _log(f"{args.dataset}: {len(train)} training images, {len(test)} test images, classes {classes}")
    params = make_params(args)
    if args.retrain_cam:
        for f in out.glob("cams_*.pt"):
            f.unlink()
        (out / "seeds.npz").unlink(missing_ok=True)
    if args.retrain_irn:
        for f in list(out.glob("irn_*_test.pt")) + list(out.glob("irn_*_train.pt")):
            f.unlink()

    # 1-2: CAM network, CAMs, seeds
    cam_model = get_cam_model(args, classes, train, out, timings)
    cam_model.params = params
    cam_key = "_".join(f"{s:g}" for s in params.cam_scales)
    cams = {}
    for split_items, key in ((train, "train"), (test, "test")):
        if split_items:
            cams.update(get_cams(cam_model, split_items, params, device, out / f"cams_{key}_{cam_key}.pt", timings, key))
    if args.fit_seed_thresholds:
        fitted, lines = fit_seed_thresholds(train[:: args.fit_seed_thresholds], cams, classes)
        print("\n".join([f"seed thresholds fitted on every {args.fit_seed_thresholds}-th training image:", *lines]))
        params = params.replace(seed_class_thresholds=fitted)
        cam_model.params = params
    seed_name = f"seeds_{cam_key}_{params.seed_fg_threshold:g}_{params.seed_bg_threshold:g}{_class_thresholds_suffix(params)}.npz"
    seeds = get_seeds(train, cams, params, classes, out / seed_name)
    sq = seed_quality(train, seeds)
    _log("seeds: " + ", ".join(f"{k} {v:.3f}" for k, v in sq.items()))

    # 3: IRNet from seeds, and from the GT instances (upper bound)
    weak_name = weak_irn_name(args, params)
    from napari_irnet.models.checkpoint import load_checkpoint

    if args.weak_checkpoint:
        weak, weak_name = load_checkpoint(args.weak_checkpoint), args.weak_checkpoint.stem.removeprefix("irn_")
    else:
        weak = get_irn_model(args, cam_model, train, seeds, out / f"irn_{weak_name}.pt", "weak", timings)
    full, full_name = None, "full"
    if args.full_checkpoint:
        full, full_name = load_checkpoint(args.full_checkpoint), args.full_checkpoint.stem.removeprefix("irn_")
    elif not args.no_upper_bound:
        full_labels = [relation_labels(it.gt_inst_work) for it in train]
        full_name = full_irn_name(args)
        full = get_irn_model(args, cam_model, train, full_labels, out / f"irn_{full_name}.pt", "full", timings, instances=True)
    cams_full = {}
    if full is not None:
        cam_full = get_cam_model(args, classes, train, out, timings, from_masks=True)
        for split_items, key in ((train[:: args.train_eval_every], "train"), (test, "test")):
            if split_items:
                cams_full.update(get_cams(cam_full, split_items, params, device, out / f"cams_full_{key}_{cam_key}.pt", timings, f"full_{key}"))

    # 4-5: outputs and scores
    all_results, all_diag, figure = {}, {}, {}
    for split, items in splits.items():
        key = "test" if split == "test" else "train"
        irn_weak = get_irn_outputs(weak, items, params, device, out / f"irn_{weak_name}_{key}.pt", timings, f"weak_{key}")
        irn_full = get_irn_outputs(full, items, params, device, out / f"irn_{full_name}_{key}.pt", timings, f"full_{key}") if full else None
        chosen = sorted(items, key=lambda it: -len(it.gt_labels))[: args.figure_images] if not figure else []
        t0 = time.perf_counter()
        res, diag, fig = evaluate_split(items, cams, irn_weak, irn_full, params, device, classes, {it.name for it in chosen}, cams_full or None)
        timings[f"evaluate_{key}_min"] = (time.perf_counter() - t0) / 60
        figure.update(fig)
        all_results[split], all_diag[split] = res, diag
        print()
        print(table(res, f"{args.dataset}, {split}: {len(items)} images"))
        print("diagnostics: " + ", ".join(f"{k} {v:.3f}" for k, v in diag.items() if v is not None))
    timings["total_min"] = (time.perf_counter() - t_start) / 60

    tag = f"_{args.tag}" if args.tag else ""
    fig_path = out / f"figure_{args.dataset}{tag}.png"
    make_figure(figure, fig_path)
    if args.figure_dir:
        args.figure_dir.mkdir(parents=True, exist_ok=True)
        (args.figure_dir / fig_path.name).write_bytes(fig_path.read_bytes())
    histories = {h["stage"]: h for h in weak.history + (full.history if full else []) if str(h.get("stage", "")).startswith("bench_")}
    record = {
        "dataset": args.dataset,
        "classes": classes,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "params": params.to_dict(),
        "train_params": weak.train_params.to_dict(),
        "device": str(device),
        "threads": args.threads,
        "n_train": len(train),
        "n_test": len(test),
        "seed_quality": sq,
        "results": all_results,
        "diagnostics": all_diag,
        "timings_min": timings,
        "training_history": histories,
    }
    write_json(out / f"results{tag}.json", json_ready(record))
    tables = "\n".join(table(r, f"{args.dataset}, {s}") for s, r in all_results.items())
    (out / f"tables{tag}.md").write_text(tables)
    _log(f"wrote {out / f'results{tag}.json'}, {out / f'tables{tag}.md'}, {fig_path}; timings (min): "
         + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
