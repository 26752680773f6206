"""``predict``: instances and semantic labels for a folder of images (``--project``: see :mod:`napari_irnet.cli.project`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import PARAM_HELP, add_dataclass_options, add_image_options, with_overrides

__all__ = ["LARGE_IMAGE", "add_predict_command", "cmd_predict"]


def _predict_inputs(args: argparse.Namespace, model) -> tuple[list[tuple[str, Path]], object]:
    """(name, path) of every image to predict, and the labels (None without --labels)."""
    from ..io.images import list_images
    from ..io.labels import read_labels

    if args.labels:
        labels = read_labels(args.labels, args.images, classes=model.classes)
        return [(name, args.images / name) for name in labels.image_labels], labels
    return [(p.name, p) for p in list_images(args.images)], None


def _check_legend(out: Path, classes: list[str]) -> None:
    """Refuse a folder holding predictions for other classes (or another order): one classes.json speaks for all."""
    from ..io.files import InputError
    from ..io.results import CLASS_LEGEND, read_class_legend

    legend = out / CLASS_LEGEND
    if legend.exists() and read_class_legend(legend) != list(classes):
        raise InputError(
            f"{legend}: the predictions in this folder are for the classes {read_class_legend(legend)}, "
            f"the checkpoint's are {list(classes)}; predict into another folder"
        )


#: images of at least this many pixels show a progress bar of their walks
LARGE_IMAGE = 2048 * 2048


def cmd_predict(args: argparse.Namespace) -> int:
    from ..io.files import InputError
    from ..io.images import read_image
    from ..io.results import output_stems, write_class_legend, write_instance_tiff, write_instances_json, write_semantic_png
    from ..models.checkpoint import load_checkpoint
    from ..pipeline.predict import predict, predict_classes
    from ..training.distributed import barrier, is_main, shard
    from .progress import StepBars, progress_iter

    if args.out.resolve() == args.images.resolve():
        raise InputError(f"{args.out}: is the image folder; write the predictions to another folder (they would be read as images)")
    model = load_checkpoint(args.checkpoint)
    model.require("cam", "irn")  # before anything is written
    params = with_overrides(model.params, args, model.classes)
    inputs, labels = _predict_inputs(args, model)
    # one set of files per image: a.png and a.jpg, or sub/a.png and a.png, must not overwrite each other
    stems = output_stems([name for name, _ in inputs])
    renamed = [f"{name} -> {stems[name]}_*" for name, _ in inputs if stems[name] != Path(name).stem]
    if renamed and is_main():
        print(f"note: the files of these images are named apart (names that share a stem, or in sub-folders): {', '.join(renamed[:10])}", file=sys.stderr)
    if is_main():
        # the semantic maps hold the model's class index + 1: say which class each value is
        _check_legend(args.out, model.classes)
        write_class_legend(args.out, model.classes)  # makes the folder
    total = len(inputs)
    mine = shard(inputs)  # under torchrun: every world-size-th image
    for name, path in progress_iter(mine, len(mine), "predict"):
        image = read_image(path, max_pixels=args.max_pixels)
        names = labels.image_labels[name] if labels else predict_classes(model, image, device=args.device)
        bars = StepBars(name) if image.shape[0] * image.shape[1] >= LARGE_IMAGE else None  # the walks of large images
        try:
            _, pred = predict(model, image, names, params, args.device, progress=bars, seeds=False)  # no file holds the seeds
        finally:
            if bars is not None:
                bars.close()
        stem = stems[name]
        write_instance_tiff(args.out / f"{stem}_instances.tif", pred.instances.labels)
        write_semantic_png(args.out / f"{stem}_semantic.png", pred.semantic.astype("uint8"))
        records = [{**r, "class": model.classes[r["class_id"]]} for r in pred.instances.records]
        write_instances_json(args.out / f"{stem}_instances.json", records)
    barrier()
    if is_main():
        print(f"wrote {total} predictions to {args.out}")
    return 0


def add_predict_command(sub) -> None:
    """Register ``predict`` on the CLI's sub-parsers."""
    from ..params import Params

    p = sub.add_parser("predict", help="instances and semantic labels for a folder of images")
    add_image_options(p, need_labels=False)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_dataclass_options(p, Params, PARAM_HELP)
    p.set_defaults(func=cmd_predict)
