"""``napari-irnet finetune``: fine-tune IRNet from corrected instance maps.

Corrections are found per image (by the image's file name) in ``--corrections
DIR``, in either layout:

* the plugin's per-image folders, ``DIR/<image file name>/instances.tif`` with
  ``corrections.json`` (used when its state is ``corrected`` or
  ``accepted``); ``DIR`` defaults to ``<images>/napari-irnet``, where the
  plugin keeps them;
* plain label images, ``DIR/<stem>.tif|.tiff|.png`` or
  ``DIR/<stem>_instances.tif`` (as ``predict`` and ``export`` write them),
  with the instances' classes from ``DIR/<stem>_instances.json`` (records
  with ``id`` and ``class``, as ``predict`` writes them) when there is one.

Images without a correction keep the weak labels from the CAMs, or are left
out with ``--corrected-only`` (the Fine-tune panel's "uncorrected folder
images too" unticked; on CoNSeP, where the weak labels are poor, it
scored higher, see BENCHMARKS.md). The classes
of corrected instances also train the CAM network per pixel
(``--finetune-cam``, on by default). The input
checkpoint is never written: the result goes to ``--out`` (atomically, at the
end), and an interrupted run resumes from ``<out>.resume``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_LABEL_NAMES = ("{stem}.tif", "{stem}.tiff", "{stem}.png", "{stem}_instances.tif")


def find_correction(
    folder: Path, image_file: str, image: np.ndarray
) -> tuple[np.ndarray, dict[int, str] | None, np.ndarray | None] | None:
    """The corrected instance map of one image in ``folder``, its instances' classes and its annotator background, or None.

    The classes are ``{instance id: class name}``, None when nothing says them;
    the annotator background (pixels a person cleared: background in the
    targets) comes with the plugin's folders, else it is None.
    """
    from .core.corrections import load_corrections
    from .core.io import InputError, read_instances_json, read_label_image

    plugin_folder = folder / image_file
    if plugin_folder.is_dir():
        stored = load_corrections(plugin_folder, image)
        if stored is not None and stored.state in ("corrected", "accepted"):
            return stored.labels, stored.instance_classes, stored.background
        return None
    stem = Path(image_file).stem
    for pattern in _LABEL_NAMES:
        path = folder / pattern.format(stem=stem)
        if path.is_file():
            labels = read_label_image(path)
            if labels.shape != image.shape[:2]:
                raise InputError(f"{path}: label image is {labels.shape}, its image {image_file} is {image.shape[:2]}")
            records = folder / f"{stem}_instances.json"
            table = {int(r["id"]): str(r["class"]) for r in read_instances_json(records)} if records.is_file() else None
            return labels, table, None
    return None


def cmd_finetune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .cli import _load_dataset, _progress, _with_overrides
    from .core.checkpoint import load_checkpoint, save_checkpoint
    from .core.finetune import correction_class_maps, describe_reset, finetune, finetune_labels
    from .core.io import InputError, read_labels

    model = load_checkpoint(args.checkpoint)
    model.params = _with_overrides(model.params, args)
    model.train_params = _with_overrides(model.train_params, args)
    _, items = _load_dataset(args.images, args.labels, model.classes)
    folder = args.corrections or args.images / "napari-irnet"
    if not folder.is_dir():
        raise InputError(f"{folder}: corrections folder not found")
    files = list(read_labels(args.labels, args.images, classes=model.classes).image_labels)
    found = [find_correction(folder, name, item.image) for name, item in zip(files, items)]
    corrections = [f[0] if f is not None else None for f in found]
    backgrounds = [f[2] if f is not None else None for f in found]
    class_maps = correction_class_maps(corrections, [f[1] if f is not None else None for f in found], model.classes, background=backgrounds)
    n_strong = sum(c is not None for c in corrections)
    if n_strong == 0:
        raise InputError(f"{folder}: no corrected or accepted instance map for any of the {len(items)} images")
    if args.corrected_only:
        keep = [i for i, c in enumerate(corrections) if c is not None]
        items, corrections, class_maps = [items[i] for i in keep], [corrections[i] for i in keep], [class_maps[i] for i in keep]
        backgrounds = [backgrounds[i] for i in keep]
    n_maps = sum(m is not None for m in class_maps) if model.train_params.finetune_cam else 0
    print(f"fine-tuning IRNet on {n_strong} corrected and {len(items) - n_strong} weakly labelled images"
          + (f", the CAM network on the class maps of {n_maps}" if n_maps else ""))  # fmt: skip
    labels, strong = [None] * len(items), [False] * len(items)
    gen = finetune_labels(model, items, corrections, params=model.params, device=args.device, background=backgrounds)
    for i, lab, is_strong in tqdm(gen, total=len(items), desc="labels", disable=None):
        labels[i], strong[i] = lab, is_strong
    resume = args.out.with_name(args.out.name + ".resume")
    _progress(finetune(model, items, labels, strong, device=args.device, resume_file=resume, class_maps=class_maps), "fine-tune")
    note = describe_reset(model.history[-1])
    if note:
        print(note)
    save_checkpoint(model, args.out)
    print(f"saved {args.out} ({args.checkpoint} unchanged)")
    return 0


def add_finetune_command(sub) -> None:
    """Register ``finetune`` on the CLI's sub-parsers."""
    from .cli import _PARAM_HELP, _add_dataclass_options
    from .core.params import Params, TrainParams

    p = sub.add_parser("finetune", help="fine-tune IRNet from corrected instance maps (human in the loop)")
    p.add_argument("--checkpoint", type=Path, required=True, help="trained checkpoint to start from (not modified)")
    p.add_argument("--images", type=Path, required=True, help="folder of images")
    p.add_argument("--labels", type=Path, required=True, help="image-level labels: CSV (image,classes with ';') or JSON")
    p.add_argument("--corrections", type=Path, help="corrected instance maps (default: <images>/napari-irnet, the plugin's)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--corrected-only", action="store_true",
                   help="train on the corrected images only (default: the uncorrected ones too, with their weak labels)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    _add_dataclass_options(p, TrainParams, "training parameters (finetune-epochs, finetune-learning-rate, correction-weight, ...)")
    _add_dataclass_options(p, Params, _PARAM_HELP)
    p.set_defaults(func=cmd_finetune)


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["finetune", *sys.argv[1:]]))
