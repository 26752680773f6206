"""A scripted annotator: how many operations does fixing an image take, with and without click to add?

    python benchmarks/bench_annotator.py [--images 30] [--finetune 5 20] [--finetune-steps 200] [--threads 1]

The annotator corrects the proposals of the bundled demo model on held-out
synthetic images (``napari_irnet.synthetic``, seeds other than the
bundled sample's and the demo model's training images) until every
ground-truth object has an instance of its class with IoU >= ``--iou``
(0.5, the mAP^r 0.5 criterion) and no other instance is left, using the
public operations of :class:`napari_irnet.annotation.session.AnnotationSession`
that the IRNet panel calls:

1. keep every proposal that matches an object (one to one, the best IoU first);
2. delete the others (false positives, merged objects, fragments) in one go;
3. give kept instances of the wrong class their class;
4. click to add each missed object (a Shift+click at its innermost free
   pixel, after setting the class menu when it shows another class); when
   the new mask misses the object (IoU under the criterion) undo it and
   paint the object, the last resort;
5. accept the image.

Operations are what a person does: a click (pick, Shift+click), a key or
button (delete, set class, undo, accept), a change of the class menu, and
painting one object counted as three (new id, drawing its outline with the
brush, filling it: napari's fill of a closed contour). Painting every
object from scratch is 3 per object plus the acceptance. Wall time is the
time of the session's operations (the annotator's waiting), the networks'
run per image apart.

Rows: painting from scratch; the weak proposals with deletion and painting
only (no click to add); the weak proposals with click to add; the same after
fine-tuning the demo model on the annotator's own corrections (the final
maps, their annotator background included) of 5 and 20 more synthetic
images, with the project's fine-tuning (:func:`napari_irnet.training.finetune.finetune`,
the corrected images only, ``--finetune-steps`` steps). Prints a markdown
table and writes ``bench_output/annotator/results.json``.

The operations differ a lot from image to image (the number of objects, how
many touch), so the fine-tuned rows are compared with the weak proposals on
the same images: the mean per-image difference and its standard error.
Ten images were too few to tell differences of half an operation apart.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from napari_irnet.annotation.edits import EditError  # noqa: E402
from napari_irnet.annotation.session import AnnotationSession  # noqa: E402

#: operations to paint one object: a new id, its outline with the brush, the fill
PAINT_OPS = 3
HELD_OUT_SEED, POOL_SEED = 100, 300  # the sample is seed 7, the demo model's training images seed 1


@dataclass
class Tally:
    """What the annotator did on one image."""

    ops: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    objects: int = 0
    matched_at_start: int = 0
    adds: int = 0
    adds_kept: int = 0

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _iou_table(labels: np.ndarray, truth: np.ndarray) -> dict[tuple[int, int], float]:
    """IoU of every overlapping (instance, object) pair."""
    both = (labels > 0) & (truth > 0)
    if not both.any():
        return {}
    pairs, inter = np.unique(np.stack([labels[both], truth[both]]), axis=1, return_counts=True)
    la = np.bincount(labels.ravel())
    ta = np.bincount(truth.ravel())
    return {(int(i), int(g)): n / (la[i] + ta[g] - n) for (i, g), n in zip(pairs.T, inter)}


def match(labels: np.ndarray, truth: np.ndarray, iou: float) -> dict[int, int]:
    """Object id -> instance id, one to one, the best IoU first, IoU >= ``iou``."""
    out: dict[int, int] = {}
    used: set[int] = set()
    for (i, g), v in sorted(_iou_table(labels, truth).items(), key=lambda kv: -kv[1]):
        if v >= iou and g not in out and i not in used:
            out[g] = i
            used.add(i)
    return out


def _click_point(mask: np.ndarray, free: np.ndarray) -> tuple[int, int] | None:
    """The object's pixel farthest from its border among the free ones (where a person would click)."""
    inside = mask & free
    if not inside.any():
        return None
    dist = distance_transform_edt(mask)
    dist[~inside] = -1
    return tuple(int(v) for v in np.unravel_index(np.argmax(dist), dist.shape))


class Annotator:
    """Corrects one session to the ground truth with the panel's operations, counting them."""

    def __init__(self, session: AnnotationSession, truth: np.ndarray, classes: dict[int, str], iou: float, click_to_add: bool = True):
        self.s, self.truth, self.classes, self.iou, self.click = session, truth, classes, iou, click_to_add
        self.menu = session.default_class
        self.tally = Tally(objects=len(classes))

    def _menu(self, cls: str) -> None:
        if self.menu != cls:
            self.tally.ops["class menu"] += 1
            self.menu = cls

    def _timed(self, func, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            self.tally.seconds += time.perf_counter() - t0

    def run(self, outputs, params, model_classes) -> Tally:
        kept = match(self.s.labels, self.truth, self.iou)
        self.tally.matched_at_start = len(kept)
        extra = [i for i in self.s.instance_ids() if i not in kept.values()]
        if extra:
            self.tally.ops["delete"] += len(extra) + 1  # a pick each, one key
            self._timed(self.s.delete, extra)
        self._fix_classes(kept)
        for g in sorted((g for g in self.classes if g not in kept), key=lambda g: self.classes[g]):
            self._add(g, outputs, params, model_classes)
        self.tally.ops["accept"] += 1
        self._timed(self.s.accept)
        return self.tally

    def _fix_classes(self, kept: dict[int, int]) -> None:
        wrong: dict[str, list[int]] = {}
        for g, i in kept.items():
            if self.s.info(i).class_name != self.classes[g]:
                wrong.setdefault(self.classes[g], []).append(i)
        for cls, ids in wrong.items():
            self._menu(cls)
            self.tally.ops["set class"] += len(ids) + 1
            self._timed(self.s.set_class, ids, cls)

    def _add(self, g: int, outputs, params, model_classes) -> None:
        mask, cls = self.truth == g, self.classes[g]
        point = _click_point(mask, self.s.labels == 0) if self.click else None
        if point is not None:
            self._menu(cls)
            self.tally.ops["click to add"] += 1
            self.tally.adds += 1
            try:
                label = self._timed(self.s.add_at, point, outputs, params, cls, model_classes)
            except EditError:
                label = None
            if label is not None:
                new = self.s.labels == label
                if (new & mask).sum() / (new | mask).sum() >= self.iou:
                    self.tally.adds_kept += 1
                    return
                self.tally.ops["undo"] += 1
                self._timed(self.s.undo)
        self._menu(cls)
        self.tally.ops["paint"] += PAINT_OPS
        self._timed(self.s.paint, mask, None, cls)


def check(session: AnnotationSession, truth: np.ndarray, classes: dict[int, str], iou: float) -> tuple[int, int]:
    """(objects matched with their class, instances left over) after the annotation."""
    m = match(session.labels, truth, iou)
    good = sum(1 for g, i in m.items() if session.info(i).class_name == classes[g])
    return good, len(session.instance_ids()) - len(m)


# ---------------------------------------------------------------------------


def annotate_images(model, samples, iou: float, click_to_add: bool = True, keep: bool = False):
    """Run the networks and the annotator on every sample; returns (tallies, network seconds, final sessions)."""
    from napari_irnet.pipeline.cache import StageCache
    from napari_irnet.pipeline.predict import run_networks

    tallies, net_seconds, sessions = [], [], []
    for s in samples:
        t0 = time.perf_counter()
        outputs = run_networks(model, s.image, model.class_ids(list(s.labels)), model.params, "cpu")
        pred = StageCache(outputs, model.params, s.image).update()
        net_seconds.append(time.perf_counter() - t0)
        session = AnnotationSession.from_prediction(pred, model.classes, list(s.labels))
        truth = s.instances.astype(np.int32)
        tally = Annotator(session, truth, dict(s.instance_classes), iou, click_to_add).run(outputs, model.params, model.classes)
        good, left = check(session, truth, dict(s.instance_classes), iou)
        if good != tally.objects or left:
            print(f"warning: {s.name}: {good}/{tally.objects} objects matched, {left} instances left", file=sys.stderr)
        tallies.append(tally)
        if keep:
            sessions.append(session)
    return tallies, net_seconds, sessions


def paint_from_scratch(samples) -> list[Tally]:
    """Every object painted (3 operations each) on an empty map, then accepted."""
    out = []
    for s in samples:
        truth = s.instances.astype(np.int32)
        session = AnnotationSession(np.zeros_like(truth), classes=list(s.labels))
        tally = Tally(objects=len(s.instance_classes))
        t0 = time.perf_counter()
        for g, cls in s.instance_classes.items():
            session.paint(truth == g, None, cls)
        session.accept()
        tally.seconds = time.perf_counter() - t0
        tally.ops["paint"] = PAINT_OPS * tally.objects
        tally.ops["accept"] = 1
        out.append(tally)
    return out


def finetuned(model, samples, sessions, n: int, steps: int, **train_overrides):
    """A copy of ``model`` fine-tuned on the first ``n`` corrected images (their final maps and annotator background).

    ``train_overrides``: ``TrainParams`` fields to change from the model's (e.g. ``finetune_learning_rate``).
    """
    from napari_irnet.training.datasets import LabelledImage
    from napari_irnet.training.finetune import finetune
    from napari_irnet.training.finetune_data import correction_class_maps, finetune_labels

    m = copy.deepcopy(model)
    items = [LabelledImage(s.name, s.image, [m.classes.index(c) for c in s.labels]) for s in samples[:n]]
    corrections = [se.labels.copy() for se in sessions[:n]]
    tables = [{i: se.info(i).class_name for i in se.instance_ids()} for se in sessions[:n]]
    backgrounds = [se.background.copy() for se in sessions[:n]]
    tp = dataclasses.replace(m.train_params, **train_overrides)
    per_epoch = max(1, (n * tp.correction_weight) // tp.irn_batch_size)
    tp = dataclasses.replace(tp, finetune_epochs=max(1, math.ceil(steps / per_epoch)))
    labels, strong = [None] * n, [False] * n
    for i, lab, is_strong in finetune_labels(m, items, corrections, params=m.params, device="cpu", background=backgrounds):
        labels[i], strong[i] = lab, is_strong
    maps = correction_class_maps(corrections, tables, m.classes, background=backgrounds)
    t0 = time.perf_counter()
    done = 0
    for record in finetune(m, items, labels, strong, tp, "cpu", class_maps=maps):
        done = record["step"]
    return m, done, time.perf_counter() - t0


def summarise(name: str, tallies: list[Tally], net: list[float] | None = None) -> dict:
    ops = Counter()
    for t in tallies:
        ops.update(t.ops)
    n = len(tallies)
    adds = sum(t.adds for t in tallies)
    return {
        "row": name,
        "ops_per_image": sum(t.total for t in tallies) / n,
        "ops_of_each_image": [t.total for t in tallies],
        "objects_per_image": sum(t.objects for t in tallies) / n,
        "matched_at_start": sum(t.matched_at_start for t in tallies) / max(1, sum(t.objects for t in tallies)),
        "click_to_add_kept": (sum(t.adds_kept for t in tallies) / adds) if adds else None,
        "ops_by_kind_per_image": {k: v / n for k, v in sorted(ops.items())},
        "seconds_per_image": sum(t.seconds for t in tallies) / n,
        "network_seconds_per_image": (sum(net) / n) if net else None,
    }


def paired_difference(ops: list[int], reference: list[int]) -> tuple[float, float]:
    """Mean and standard error of the per-image differences ``ops - reference`` (the same images)."""
    d = np.asarray(ops, np.float64) - np.asarray(reference, np.float64)
    if d.size < 2:
        return float(d.mean()) if d.size else 0.0, float("nan")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def print_table(rows: list[dict], reference: int = 2) -> None:
    """The markdown table; every row after ``rows[reference]`` also gets its paired difference with it."""
    base = rows[0]["ops_per_image"]
    print("| proposals | operations / image | vs painting | vs the weak proposals (per image, ± s.e.) | proposals kept | click to add kept | operations by kind / image | annotator s / image | networks s / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in r["ops_by_kind_per_image"].items())
        kept = "–" if r["row"].startswith("paint") else f"{100 * r['matched_at_start']:.0f}%"
        clicks = "–" if r["click_to_add_kept"] is None else f"{100 * r['click_to_add_kept']:.0f}%"
        net = "–" if r["network_seconds_per_image"] is None else f"{r['network_seconds_per_image']:.2f}"
        diff = "–"
        if i > reference:
            mean, err = paired_difference(r["ops_of_each_image"], rows[reference]["ops_of_each_image"])
            diff = f"{mean:+.2f} ± {err:.2f}"
        print(f"| {r['row']} | {r['ops_per_image']:.1f} | {r['ops_per_image'] / base:.2f} | {diff} | {kept} | {clicks} | {kinds} | {r['seconds_per_image']:.2f} | {net} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=30, help="held-out images to correct (default 30)")
    p.add_argument("--finetune", type=int, nargs="*", default=[5, 20], help="corrected images to fine-tune on (default 5 20)")
    p.add_argument("--finetune-steps", type=int, default=200, help="fine-tuning steps per run (default 200)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU an instance needs to count as the object (default 0.5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--checkpoint", type=Path, default=None, help="model to start from (default: the bundled demo model)")
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tuning learning rate (default: the model's finetune_learning_rate)")
    p.add_argument("--finetune-cam", choices=("true", "false"), default=None, help="fine-tune the CAM network too (default: the model's finetune_cam)")
    p.add_argument("--out", type=Path, default=Path("bench_output/annotator"))
    args = p.parse_args(argv)

    import torch

    from napari_irnet.demo import DEMO_SCALE, DEMO_SHAPE
    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.synthetic import make_dataset

    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or HERE.parent / "napari_irnet" / "data" / "demo_model.pt"
    model = load_checkpoint(ckpt)
    model.params = model.params.replace(use_crf=False)
    held = make_dataset(args.images, shape=DEMO_SHAPE, seed=HELD_OUT_SEED, prefix="held", scale=DEMO_SCALE)
    rows = [summarise("paint every object from scratch", paint_from_scratch(held))]
    tallies, net, _ = annotate_images(model, held, args.iou, click_to_add=False)
    rows.append(summarise("weak (demo model), delete and paint only", tallies, net))
    tallies, net, _ = annotate_images(model, held, args.iou)
    rows.append(summarise("weak (demo model), with click to add", tallies, net))
    runs = []
    overrides = {}
    if args.finetune_lr is not None:
        overrides["finetune_learning_rate"] = args.finetune_lr
    if args.finetune_cam is not None:
        overrides["finetune_cam"] = args.finetune_cam == "true"
    if args.finetune:
        pool = make_dataset(max(args.finetune), shape=DEMO_SHAPE, seed=POOL_SEED, prefix="pool", scale=DEMO_SCALE)
        _, _, sessions = annotate_images(model, pool, args.iou, keep=True)  # the annotator's corrections of the pool
        for n in args.finetune:
            tuned, steps, seconds = finetuned(model, pool, sessions, n, args.finetune_steps, **overrides)
            reset = tuned.history[-1].get("displacement_reset")
            runs.append({"corrected_images": n, "steps": steps, "seconds": seconds, "displacement_reset": reset, **overrides})
            print(f"fine-tuned on {n} corrected images: {steps} steps in {seconds:.0f} s (displacement branch reset: {reset})", file=sys.stderr)
            tallies, net, _ = annotate_images(tuned, held, args.iou)
            rows.append(summarise(f"fine-tuned on {n} corrected, with click to add", tallies, net))
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"images": args.images, "iou": args.iou, "threads": args.threads, "checkpoint": str(ckpt), "finetune": runs, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
