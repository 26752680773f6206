"""`make demo`: the main job end to end on the bundled sample data.

1. Trains the CAM network and IRNet from image-level labels only, on synthetic
   images from the project's generator (the tiny CPU backbone, from scratch).
2. Predicts instances and semantic labels for the bundled images in
   ``sample_data/cells`` and writes them (label TIFF, semantic PNG, JSON).
3. Compares them with the ground truth and prints a table.
4. Shows every stage in napari; with ``--screenshot`` (used under Xvfb when
   there is no display) saves a screenshot of the viewer and exits.

The trained checkpoint is kept in ``demo_output/model.pt`` and reused by the
next run (``--retrain`` trains again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_SAMPLES = Path(__file__).resolve().parent.parent / "sample_data" / "cells"
#: the checkpoint shipped in the package (made from a demo run, see docs/make_demo_checkpoint.py)
BUNDLED_MODEL = Path(__file__).resolve().parent / "data" / "demo_model.pt"
RECIPE_VERSION = 2
#: synthetic cells of the demo: 256 px images, objects 2.5 times the generator's base size, so
#: that a cell spans several cells of IRNet's stride-4 grid (smaller cells merge in the displacement field)
DEMO_SHAPE = (256, 256)
DEMO_SCALE = 2.5


def demo_train_params():
    from .core.params import TrainParams

    # From scratch on 256 px images: ordinary SGD momentum and a lower rate than
    # the reference's ImageNet fine-tuning recipe.
    return TrainParams(
        cam_epochs=15, cam_batch_size=8, cam_learning_rate=0.05, cam_crop_size=256, cam_resize_long=(230, 281),
        irn_epochs=20, irn_batch_size=8, irn_learning_rate=0.05, irn_crop_size=256, irn_rescale=(0.9, 1.1),
        momentum=0.9,
    )  # fmt: skip


def demo_params():
    from .core.params import Params

    # cells are small: keep fragments down to 0.1% of the image; a higher instance
    # background level than the paper's 0.25 (chosen on held-out synthetic images:
    # mAP^r 0.5 0.21 against 0.20, 0.25 0.60 against 0.52)
    return Params(cam_scales=(1.0, 0.5, 1.5), min_fragment_fraction=0.001, instance_bg_threshold=0.4)


def train(out: Path, n_images: int = 48, device: str = "auto"):
    """Train both networks on synthetic images; returns the model."""
    from ._cli_progress import progress_iter, track_training
    from .core.checkpoint import new_irnet, new_model, save_checkpoint
    from .core.synthetic import CLASS_NAMES, make_dataset
    from .core.training import LabelledImage, make_seeds, train_cam, train_irn

    samples = make_dataset(n_images, shape=DEMO_SHAPE, seed=1, prefix="train", scale=DEMO_SCALE)
    items = [LabelledImage(s.name, s.image, [CLASS_NAMES.index(c) for c in s.labels]) for s in samples]
    model = new_model(list(CLASS_NAMES), "tiny")
    model.train_params, model.params = demo_train_params(), demo_params()
    model.history.append({"stage": "demo", "recipe_version": RECIPE_VERSION})
    track_training(train_cam(model, items, device=device), "train CAM")
    seeds = [s for _, s in progress_iter(make_seeds(model, items, device=device), len(items), "seeds")]
    model.irn = new_irnet(model, "cam")
    track_training(train_irn(model, items, seeds, device=device), "train IRNet")
    save_checkpoint(model, out)
    return model


def _recipe_ok(model) -> bool:
    return any(h.get("recipe_version") == RECIPE_VERSION for h in model.history)


def run(samples_dir: Path, out: Path, retrain: bool = False, device: str = "auto"):
    """Train (or reuse) the demo model, predict the samples, write and score them."""
    from .core.checkpoint import CheckpointError, load_checkpoint
    from .core.io import read_image, read_label_image, read_labels, write_class_legend, write_instance_tiff, write_instances_json, write_semantic_png
    from .core.pipeline import predict

    ckpt = out / "model.pt"
    model = None
    for candidate in () if retrain else (ckpt, BUNDLED_MODEL):
        if not candidate.is_file():
            continue
        try:
            model = load_checkpoint(candidate)
        except CheckpointError as exc:
            print(f"not using {candidate}: {exc}")
            continue
        if _recipe_ok(model):
            print(f"using {candidate} (--retrain to train a new one, a few minutes on 2 CPU cores)")
            break
        model = None
    if model is None:
        model = train(ckpt, device=device)
    labels = read_labels(samples_dir / "labels.csv", samples_dir / "images", classes=model.classes)
    pred_dir = out / "predictions"
    write_class_legend(pred_dir, model.classes)  # the semantic maps are in the model's class order
    gt_classes = read_labels(samples_dir / "labels.json").classes
    to_model = np.array([0] + [model.classes.index(c) + 1 for c in gt_classes])  # ground truth's value -> model's
    results = []
    print(f"\n{'image':<12} {'classes':<22} {'GT inst':>7} {'pred':>5} {'matched@0.5':>11} {'sem. IoU':>8}")
    for name, names in labels.image_labels.items():
        image = read_image(samples_dir / "images" / name)
        outputs, pred = predict(model, image, names, device=device)
        stem = Path(name).stem
        write_instance_tiff(pred_dir / f"{stem}_instances.tif", pred.instances.labels)
        write_semantic_png(pred_dir / f"{stem}_semantic.png", pred.semantic.astype(np.uint8))
        write_instances_json(pred_dir / f"{stem}_instances.json", [{**r, "class": model.classes[r["class_id"]]} for r in pred.instances.records])
        gt = read_label_image(samples_dir / "inst" / name)
        sem = to_model[read_label_image(samples_dir / "sem" / name)]
        matched = _matched(gt, pred.instances.labels)
        fg_iou = _mean_iou(sem, pred.semantic, len(model.classes) + 1)
        n_gt = int(gt.max())
        print(f"{stem:<12} {';'.join(names):<22} {n_gt:>7} {len(pred.instances.records):>5} {matched:>11} {fg_iou:>8.3f}")
        results.append((stem, image, outputs, pred, gt))
    print(f"\nresults in {pred_dir.resolve()}")
    return model, results


def _matched(gt: np.ndarray, pred: np.ndarray) -> int:
    """Ground-truth instances overlapped by a prediction with IoU > 0.5."""
    count = 0
    for g in range(1, int(gt.max()) + 1):
        gm = gt == g
        for p in np.unique(pred[gm]):
            if p and (pm := pred == p).any() and (gm & pm).sum() / (gm | pm).sum() > 0.5:
                count += 1
                break
    return count


def _mean_iou(gt: np.ndarray, pred: np.ndarray, n: int) -> float:
    ious = [((gt == k) & (pred == k)).sum() / u for k in range(n) if (u := ((gt == k) | (pred == k)).sum())]
    return float(np.mean(ious))


def show(model, results, out: Path, screenshot: bool) -> None:
    import napari

    from ._napari.layers import prediction_layers

    stem, image, outputs, pred, gt = results[min(2, len(results) - 1)]
    viewer = napari.Viewer(title="napari-irnet demo", show=True)
    viewer.add_image(image, name=stem, rgb=True)
    viewer.add_labels(gt, name="ground truth", visible=False)
    for data, kwargs, kind in prediction_layers(stem, outputs, pred, model.classes):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    viewer.reset_view()
    if screenshot:
        from qtpy.QtWidgets import QApplication

        viewer.window.resize(1400, 900)
        for _ in range(20):
            QApplication.processEvents()
        viewer.reset_view()
        path = out / "demo_screenshot.png"
        viewer.screenshot(str(path), canvas_only=False)
        print(f"screenshot: {path.resolve()}")
        viewer.close()
    else:
        napari.run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=Path, default=REPO_SAMPLES, help="sample folder (images/, inst/, sem/, labels.csv)")
    ap.add_argument("--out", type=Path, default=Path("demo_output"))
    ap.add_argument("--retrain", action="store_true", help="train again even if demo_output/model.pt exists")
    ap.add_argument("--device", default="auto")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--screenshot", action="store_true", help="render under the current (virtual) display, save a screenshot and exit")
    mode.add_argument("--no-viewer", action="store_true", help="write results only")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model, results = run(args.samples, args.out, args.retrain, args.device)
    if not args.no_viewer:
        show(model, results, args.out, args.screenshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
