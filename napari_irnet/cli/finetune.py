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
end), and an interrupted run resumes from ``<out>.resume``, which is kept
until the result is written (when ``--out`` cannot be written at the end, the
result goes to a fallback file and the message says where).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .common import check_outputs, load_dataset, save_result
from .options import PARAM_HELP, add_dataclass_options, add_max_pixels_option, with_overrides

#: label images of a correction, and the instance records beside them: ``predict``'s layout, plain
#: label images, and the label-image export's (``export --format tif|png``: ``instances/<stem>.tif|png``
#: with ``instances/<stem>.json``; or its ``instances`` folder itself)
_LABEL_NAMES = (
    ("{stem}_instances.tif", "{stem}_instances.json"),
    ("instances/{stem}.tif", "instances/{stem}.json"),
    ("instances/{stem}.png", "instances/{stem}.json"),
    ("{stem}.tif", "{stem}.json"),
    ("{stem}.tiff", "{stem}.json"),
    ("{stem}.png", "{stem}.json"),
)


def _stems(image_file: str) -> list[str]:
    """The stems an image's files may have: plain, with sub-folders joined by ``__``, or suffixed (see ``output_stems``)."""
    plain = Path(image_file).with_suffix("").as_posix().replace("/", "__")
    return list(dict.fromkeys([plain, Path(image_file).stem, image_file.replace("/", "__").replace(".", "_")]))


def _label_correction(folder: Path, image_file: str, image: np.ndarray) -> tuple[np.ndarray, dict[int, str] | None, Path] | None:
    from ..io.files import InputError
    from ..io.images import read_label_image
    from ..io.results import read_instances_json

    for stem in _stems(image_file):
        for label_name, records_name in _LABEL_NAMES:
            path = folder / label_name.format(stem=stem)
            if not path.is_file():
                continue
            labels = read_label_image(path)
            if labels.shape != image.shape[:2]:
                raise InputError(f"{path}: label image is {labels.shape}, its image {image_file} is {image.shape[:2]}")
            records = folder / records_name.format(stem=stem)
            if records.is_file():
                table = {int(r["id"]): str(r["class"]) for r in read_instances_json(records)}
                return labels, table, records
            legacy = folder / f"{stem}_instances.json"  # predict's records beside a plain label image
            if legacy.is_file():
                return labels, {int(r["id"]): str(r["class"]) for r in read_instances_json(legacy)}, legacy
            return labels, None, path
    return None


class FoundCorrection(NamedTuple):
    """A corrected instance map found for one image (see :func:`find_correction`)."""

    #: (H, W) instance ids
    labels: np.ndarray
    #: {instance id: class name}, None when nothing says them
    classes: dict[int, str] | None
    #: (H, W) bool: pixels the annotator cleared (background in the targets); the plugin's folders only
    background: np.ndarray | None
    #: the file the classes come from (or the label image, when none does)
    source: Path


def find_correction(folder: Path, image_file: str, image: np.ndarray) -> FoundCorrection | None:
    """The corrected instance map of one image in ``folder``, with its classes and annotator background, or None.
    """
    from ..store.folder import STATE_FILE, load_corrections

    plugin_folder = folder / image_file
    if plugin_folder.is_dir():
        stored = load_corrections(plugin_folder, image)
        if stored is not None and stored.state in ("corrected", "accepted"):
            return FoundCorrection(stored.labels, stored.instance_classes, stored.background, plugin_folder / STATE_FILE)
        return None
    found = _label_correction(folder, image_file, image)
    return None if found is None else FoundCorrection(found[0], found[1], None, found[2])


def _check_classes(table: dict[int, str] | None, classes: list[str], where: Path, checkpoint: Path) -> None:
    """A correction's instance classes must all be the model's: an unknown one is an error, never dropped."""
    from ..io.files import InputError

    for iid, name in (table or {}).items():
        if name not in classes:
            raise InputError(
                f"{where}: instance {iid} has class {name!r}, which the checkpoint {checkpoint} does not know "
                f"(its classes: {', '.join(classes)})"
            )


def _folder_inputs(args: argparse.Namespace, model):
    """Training images, corrections, class tables, annotator backgrounds and the tables' files, from --images/--labels/--corrections."""
    from ..io.files import InputError
    from ..io.labels import read_labels

    _, items = load_dataset(args.images, args.labels, model.classes, args.max_pixels)
    folder = args.corrections or args.images / "napari-irnet"
    if not folder.is_dir():
        raise InputError(f"{folder}: corrections folder not found")
    files = list(read_labels(args.labels, args.images, classes=model.classes).image_labels)
    found = [find_correction(folder, name, item.image) for name, item in zip(files, items)]
    for f in found:
        if f is not None:
            _check_classes(f.classes, model.classes, f.source, args.checkpoint)
    if not any(f is not None for f in found):
        raise InputError(f"{folder}: no corrected or accepted instance map for any of the {len(items)} images")
    columns = [[getattr(f, name) if f else None for f in found] for name in ("labels", "classes", "background", "source")]
    return (items, *columns)


def _project_inputs(args: argparse.Namespace, model):
    """The same from a project: its corrected and accepted images, and (unless --corrected-only) its labelled others."""
    from ..io.files import InputError
    from ..store.create import open_project
    from ..store.project import ITEMS, item_folder_name
    from ..training.datasets import LabelledImage

    project = open_project(args.project)
    items, corrections, tables, backgrounds, sources = [], [], [], [], []
    for name, st in project.states().items():
        labels = project.entry(name).labels
        corrected = st.state in ("corrected", "accepted") and st.correction is not None
        if not corrected and (args.corrected_only or labels is None):
            continue  # an uncorrected image trains on its image-level labels only
        masks = table = where = None
        if corrected:
            masks = project.load_masks(name, "correction")
            where = project.root / ITEMS / item_folder_name(name) / f"correction-{int(st.correction['rev']):06d}" / "instances.json"
            table = {int(r["id"]): str(r["class"]) for r in masks.records}
            _check_classes(table, model.classes, where, args.checkpoint)
        names = labels if labels is not None else sorted(set(table.values()), key=model.classes.index)
        unknown = [c for c in names if c not in model.classes]
        if unknown:
            raise InputError(f"{project.root / 'images.json'}: image {name!r} is labelled {unknown[0]!r}, which the checkpoint {args.checkpoint} does not know")
        items.append(LabelledImage(Path(name).stem, project.read_image(name), [model.classes.index(c) for c in names]))
        corrections.append(masks.labels if masks is not None else None)
        tables.append(table)
        backgrounds.append(masks.background if masks is not None else None)
        sources.append(where)
    if not any(c is not None for c in corrections):
        raise InputError(f"{project.root}: no corrected or accepted image to fine-tune from ({_counts(project)})")
    return items, corrections, tables, backgrounds, sources


def _counts(project) -> str:
    return ", ".join(f"{n} {state}" for state, n in project.counts().items())


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..io.files import InputError, OutputError
    from ..models.checkpoint import load_checkpoint
    from ..training.field_check import describe_reset
    from ..training.finetune import finetune
    from ..training.finetune_data import correction_class_maps, finetune_labels
    from .progress import progress_iter, track_training

    resume = args.out.with_name(args.out.name + ".resume")
    if args.out.resolve() == args.checkpoint.resolve():
        raise OutputError(f"{args.out}: is the input checkpoint, which finetune never changes; give another --out")
    check_outputs(args.out, resume)
    model = load_checkpoint(args.checkpoint)
    model.require("irn", task="fine-tuning")
    model.params = with_overrides(model.params, args, model.classes)
    model.train_params = with_overrides(model.train_params, args)
    if args.project is not None:
        if args.images is not None or args.labels is not None or args.corrections is not None:
            raise InputError(f"{args.project}: --project fine-tunes from the project's own images and corrections: leave out --images, --labels and --corrections")
        items, corrections, tables, backgrounds, sources = _project_inputs(args, model)
    else:
        if args.images is None or args.labels is None:
            raise InputError("finetune needs --images and --labels (or --project)")
        items, corrections, tables, backgrounds, sources = _folder_inputs(args, model)
    class_maps = correction_class_maps(corrections, tables, model.classes, background=backgrounds)
    n_strong = sum(c is not None for c in corrections)
    unclassed = [str(src) for c, t, src in zip(corrections, tables, sources) if c is not None and not t]
    if unclassed and model.train_params.finetune_cam:
        print(f"note: {len(unclassed)} corrected image(s) name no instance classes, so the CAM network does not learn "
              f"from them (give <stem>_instances.json or instances/<stem>.json beside the label image): {', '.join(unclassed[:5])}",
              file=sys.stderr)  # fmt: skip
    if args.corrected_only:
        keep = [i for i, c in enumerate(corrections) if c is not None]
        items, corrections, class_maps = [items[i] for i in keep], [corrections[i] for i in keep], [class_maps[i] for i in keep]
        backgrounds = [backgrounds[i] for i in keep]
    n_maps = sum(m is not None for m in class_maps) if model.train_params.finetune_cam else 0
    print(f"fine-tuning IRNet on {n_strong} corrected and {len(items) - n_strong} weakly labelled images"
          + (f", the CAM network on the class maps of {n_maps}" if n_maps else ""))  # fmt: skip
    labels, strong = [None] * len(items), [False] * len(items)
    gen = finetune_labels(model, items, corrections, params=model.params, device=args.device, background=backgrounds)
    for i, lab, is_strong in progress_iter(gen, len(items), "labels"):
        labels[i], strong[i] = lab, is_strong
    track_training(finetune(model, items, labels, strong, device=args.device, resume_file=resume, class_maps=class_maps), "fine-tune")
    note = describe_reset(model.history[-1])
    if note:
        print(note)
    code = save_result(model, args.out, resume)  # the resume file goes once the result is written
    if code == 0:
        print(f"({args.checkpoint} unchanged)")
    return code


def add_finetune_command(sub) -> None:
    """Register ``finetune`` on the CLI's sub-parsers."""
    from ..params import Params, TrainParams

    p = sub.add_parser("finetune", help="fine-tune IRNet from corrected instance maps (human in the loop)")
    p.add_argument("--checkpoint", type=Path, required=True, help="trained checkpoint to start from (not modified)")
    p.add_argument("--project", type=Path, help="fine-tune from this project's corrected and accepted images (and its other labelled ones, unless --corrected-only); instead of --images, --labels and --corrections")
    p.add_argument("--images", type=Path, help="folder of images (without --project)")
    p.add_argument("--labels", type=Path, help="image-level labels: CSV (image,classes with ';') or JSON (without --project)")
    p.add_argument("--corrections", type=Path, help="corrected instance maps: the plugin's per-image folders, label images with <stem>_instances.json, or a label-image export (export --format tif|png: OUT/tif) (default: <images>/napari-irnet, the plugin's)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--corrected-only", action="store_true",
                   help="train on the corrected images only (default: the uncorrected ones too, with their weak labels)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    add_max_pixels_option(p)
    add_dataclass_options(p, TrainParams, "training parameters (finetune-epochs, finetune-learning-rate, correction-weight, ...)")
    add_dataclass_options(p, Params, PARAM_HELP)
    p.set_defaults(func=cmd_finetune)
