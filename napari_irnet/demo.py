"""`make demo`: the main job end to end on the bundled sample data.

1. Uses the bundled demo model (EfficientNet-Lite0 with ImageNet weights,
   trained from image-level labels only on synthetic images from the
   project's generator, see ``benchmarks/bench_demo.py``), or with
   ``--retrain`` trains one with the shorter ``quick`` recipe.
2. Predicts instances and semantic labels for the bundled images in
   ``sample_data/cells`` and writes them (label TIFF, semantic PNG, JSON).
3. Compares them with the ground truth: a line per image, then mAP^r and
   mIoU (``napari-irnet evaluate``'s table).
4. Shows every stage in napari; with ``--screenshot`` (used under Xvfb when
   there is no display) saves a screenshot of the viewer and exits.

A model trained with ``--retrain`` is kept in ``demo_output/model.pt`` and
reused by the next run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_SAMPLES = Path(__file__).resolve().parent.parent / "sample_data" / "cells"
#: the checkpoint shipped in the package (made by benchmarks/bench_demo.py and docs/make_demo_checkpoint.py)
BUNDLED_MODEL = Path(__file__).resolve().parent / "data" / "demo_model.pt"
RECIPE_VERSION = 3
#: synthetic cells of the demo: 256 px images, objects 2.5 times the generator's base size, so
#: that a cell spans several cells of IRNet's stride-4 grid (smaller cells merge in the displacement field)
DEMO_SHAPE = (256, 256)
DEMO_SCALE = 2.5
#: generator seeds: training images, validation images (post-processing chosen on them) and the
#: held-out test images of the benchmarks; the six samples use 2026
TRAIN_SEED, VALIDATION_SEED, TEST_SEED = 1, 5, 7


@dataclass(frozen=True)
class Recipe:
    """How a demo model is trained, from image-level labels only."""

    name: str
    backbone: str
    weights: str | None
    n_images: int
    train: dict
    #: mAP^r at IoU 0.5 this recipe scored on held-out synthetic images (BENCHMARKS.md), for the message
    expected: str
    #: training time on 2 CPU cores, for the message
    minutes: str


RECIPES = {
    # the bundled model and `--retrain` (benchmarks/bench_demo.py --recipe quick, then Params chosen on
    # validation images): ImageNet EfficientNet-Lite0, 96 images, 48 CAM steps and 72 IRNet steps of 16
    "quick": Recipe(
        "quick", "efficientnet_lite0", "imagenet", 96,
        dict(cam_epochs=8, cam_batch_size=16, cam_learning_rate=0.01, cam_crop_size=256, cam_resize_long=(230, 281),
             irn_epochs=12, irn_batch_size=16, irn_learning_rate=0.05, irn_crop_size=256, irn_rescale=(0.9, 1.1), momentum=0.9),
        "mAP^r 0.5 about 0.80 with these Params, 0.85 with the bundled model's",
        "5 to 30 minutes (about 5 where the CPU has bfloat16 units)",
    ),
}  # fmt: skip


def demo_params():
    """Post-processing of the demo (the recipe's; benchmarks/bench_demo.py chooses the bundled model's on validation images)."""
    from .params import Params

    # CAMs of the image at twice its size (stride 8 of the image instead of 16): they follow the cells
    # closely enough for seeds (BENCHMARKS.md, "The demo model"); fragments kept down to 0.1% of the image
    return Params(cam_scales=(2.0,), min_fragment_fraction=0.001, instance_bg_threshold=0.4)


def training_recipe(model) -> dict:
    """How a demo model's training images were drawn: ``{"n_images", "seed"}`` (from its history)."""
    for h in model.history:
        if h.get("stage") == "demo":
            return {"n_images": int(h.get("n_images", 48)), "seed": int(h.get("seed", TRAIN_SEED))}
    return {"n_images": 48, "seed": TRAIN_SEED}


def training_images(n_images: int, seed: int = TRAIN_SEED):
    """The demo's training images with their image-level labels (:class:`~napari_irnet.training.loop.LabelledImage`)."""
    from .synthetic import CLASS_NAMES, make_dataset
    from .training.datasets import LabelledImage

    samples = make_dataset(n_images, shape=DEMO_SHAPE, seed=seed, prefix="train", scale=DEMO_SCALE)
    return [LabelledImage(s.name, s.image, [CLASS_NAMES.index(c) for c in s.labels]) for s in samples]


def train(out: Path, recipe: Recipe | str = "quick", device: str = "auto", params=None, cam_from=None):
    """Train both networks on synthetic images from their image-level labels; saves and returns the model.

    ``cam_from``: a model whose trained CAM network is reused (only IRNet is
    trained, on seeds from those CAMs), e.g. to compare seed settings.
    """
    from .cli.progress import progress_iter, track_training
    from .models.checkpoint import new_irnet, new_model, save_checkpoint
    from .params import TrainParams
    from .synthetic import CLASS_NAMES
    from .training.cam import train_cam
    from .training.irn import make_seeds, train_irn

    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    items = training_images(recipe.n_images)
    model = new_model(list(CLASS_NAMES), recipe.backbone, recipe.weights)
    model.train_params, model.params = TrainParams(**recipe.train), params or demo_params()
    model.history.append({"stage": "demo", "recipe_version": RECIPE_VERSION, "recipe": recipe.name,
                          "n_images": recipe.n_images, "seed": TRAIN_SEED})  # fmt: skip
    if cam_from is None:
        track_training(train_cam(model, items, device=device), "train CAM")
    else:
        model.cam = cam_from.cam
        model.history += [h for h in cam_from.history if h.get("stage") == "cam"]
    seeds = [s for _, s in progress_iter(make_seeds(model, items, device=device), len(items), "seeds")]
    model.irn = new_irnet(model, "cam" if recipe.weights is None else recipe.weights)
    track_training(train_irn(model, items, seeds, device=device), "train IRNet")
    save_checkpoint(model, out)
    return model


def _recipe_ok(model) -> bool:
    return any(h.get("recipe_version") == RECIPE_VERSION for h in model.history)


def run(samples_dir: Path, out: Path, retrain: bool = False, device: str = "auto"):
    """Train (or reuse) the demo model, predict the samples, write and score them."""
    from .io.images import read_image, read_label_image
    from .io.labels import read_labels
    from .io.results import write_class_legend, write_instance_tiff, write_instances_json, write_semantic_png
    from .pipeline.predict import predict

    model = _load_or_train(out / "model.pt", retrain, device)
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
    print()
    print(_score_table(pred_dir, samples_dir))
    print(f"results in {pred_dir.resolve()}")
    return model, results


def _load_or_train(ckpt: Path, retrain: bool, device: str):
    """The demo model: ``ckpt`` from an earlier ``--retrain``, else the bundled one; trained (quick recipe) when neither loads."""
    from .models.checkpoint import load_checkpoint
    from .models.torch_files import CheckpointError

    for candidate in () if retrain else (ckpt, BUNDLED_MODEL):
        if not candidate.is_file():
            continue
        try:
            model = load_checkpoint(candidate)
        except CheckpointError as exc:
            print(f"not using {candidate}: {exc}")
            continue
        if _recipe_ok(model):
            print(f"using {candidate} (--retrain trains a new one with the quick recipe, {RECIPES['quick'].minutes} on 2 CPU cores)")
            return model
    quick = RECIPES["quick"]
    print(f"training the demo model from image-level labels ({quick.n_images} synthetic images, {quick.minutes} on 2 CPU cores; "
          f"expected on held-out images: {quick.expected})")  # fmt: skip
    return train(ckpt, quick, device)


def _score_table(pred_dir: Path, samples_dir: Path) -> str:
    """mAP^r (VOC protocol) and mIoU of the written predictions against the samples' ground truth."""
    from .evaluation.evaluate import evaluate_folder, format_table

    return format_table(evaluate_folder(pred_dir, samples_dir, gt_format="labels"))


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
    ap.add_argument("--retrain", action="store_true",
                    help=f"train the quick recipe ({RECIPES['quick'].minutes} on 2 CPU cores) instead of using the bundled model")
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
