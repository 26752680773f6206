"""Command line: ``napari-irnet train-cam | train-irn | predict | evaluate | finetune | import-reference | init | status | export``.

Parameter options are generated from :class:`~napari_irnet.params.Params`
and :class:`~napari_irnet.params.TrainParams`: the field ``beta`` is
``--beta``, ``seed_fg_threshold`` is ``--seed-fg-threshold``, and so on, the
same names the Python API and the napari widgets use.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

_PARAM_HELP = "pipeline parameters (defaults: the checkpoint's, else the paper's)"


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _bool_option(text: str) -> bool:
    """A bool option's value: true/false, yes/no, on/off or 1/0 (any case); anything else is an error."""
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise argparse.ArgumentTypeError(f"expected true or false (or yes/no, on/off, 1/0), not {text!r}")


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, title: str, skip=()) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, type=_bool_option, default=None, metavar="BOOL", help=f"true or false (default {str(default).lower()})")
        elif isinstance(default, tuple):
            kind = type(default[0])
            group.add_argument(flag, dest=f.name, type=kind, nargs="+", default=None, help=f"(default {' '.join(map(str, default))})")
        else:
            group.add_argument(flag, dest=f.name, type=type(default), default=None, help=f"(default {default})")


def _overrides(args: argparse.Namespace, cls) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def _with_overrides(base, args: argparse.Namespace):
    """A copy of a ``Params`` or ``TrainParams`` with the options given on the command line."""
    return dataclasses.replace(base, **_overrides(args, type(base)))


def add_max_pixels_option(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels``: larger images are refused before they are decoded."""
    from ..io.files import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images of more than N pixels, before decoding them (default {DEFAULT_MAX_PIXELS:,}: 8192 x 8192; 0: no limit)")  # fmt: skip


def _load_dataset(images_dir: Path, labels_file: Path, classes: list[str] | None = None, max_pixels: int | None = None):
    """Training items from an image folder and a labels file."""
    from ..io.files import DEFAULT_MAX_PIXELS, read_image, read_labels
    from ..training.loop import LabelledImage

    labels = read_labels(labels_file, images_dir, classes=classes)
    if labels.unlabelled:
        print(f"note: {len(labels.unlabelled)} image(s) in {images_dir} have no labels and are not used", file=sys.stderr)
    items = []
    for name, names in labels.image_labels.items():
        image = read_image(images_dir / name, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        items.append(LabelledImage(Path(name).stem, image, [labels.classes.index(c) for c in names]))
    return labels.classes, items


def _save_result(model, out: Path, resume: Path | None = None) -> int:
    """Save the trained ``model`` to ``out`` from rank 0; returns the exit code.

    The resume file, if any, is deleted only once the model is safely written.
    When ``out`` cannot be written (disk full, folder gone or read-only), the
    model goes to a fallback file instead, the message says where, and the
    exit code is 2: the training is never lost to a failed write.
    """
    from ..io.files import OutputError
    from ..models.checkpoint import save_checkpoint
    from ..training.distributed import barrier, is_main

    code = 0
    if is_main():
        try:
            save_checkpoint(model, out)
            print(f"saved {out}")
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
            if _save_elsewhere(model, out) is None and resume is not None and resume.is_file():
                print(f"the training state is kept in {resume}: run the same command again once {out} "
                      "can be written (it resumes at the end and only saves)", file=sys.stderr)  # fmt: skip
                resume = None
        if resume is not None:
            resume.unlink(missing_ok=True)
    barrier()
    return code


def _save_elsewhere(model, out: Path) -> Path | None:
    """Save ``model`` to the user data folder's ``unsaved/``, else the temporary folder; say where."""
    import datetime
    import tempfile

    from ..io.files import OutputError
    from ..models.checkpoint import save_checkpoint
    from ..store.folder import user_data_dir

    name = f"{out.stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}{out.suffix or '.pt'}"
    for folder in (user_data_dir() / "unsaved", Path(tempfile.gettempdir())):
        try:
            path = save_checkpoint(model, folder / name)
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(f"the trained model was saved to {path} instead: move it where you want it", file=sys.stderr)
        return path
    print("error: the trained model could not be saved anywhere", file=sys.stderr)
    return None


def _check_outputs(*paths: Path) -> None:
    """Fail now, not after training, when an output file cannot be written."""
    from ..io.files import check_writable

    for path in paths:
        check_writable(path)


def cmd_train_cam(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_checkpoint, new_model
    from ..params import Params, TrainParams
    from ..training.loop import train_cam
    from .progress import track_training

    _check_outputs(args.out)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
        model.params = _with_overrides(model.params, args)
        model.train_params = _with_overrides(model.train_params, args)
        classes, items = _load_dataset(args.images, args.labels, model.classes, args.max_pixels)
    else:
        params, train_params = Params(**_overrides(args, Params)), TrainParams(**_overrides(args, TrainParams))
        classes, items = _load_dataset(args.images, args.labels, max_pixels=args.max_pixels)
        weights = None if args.weights == "none" else args.weights
        import torch

        # new layers start from the training seed: reproducible, and equal in every torchrun process
        torch.manual_seed(train_params.seed)
        model = new_model(classes, args.backbone, weights)
        model.params, model.train_params = params, train_params
    print(f"training the CAM network ({model.backbone}) on {len(items)} images, classes {classes}")
    track_training(train_cam(model, items, device=args.device), "CAM")
    return _save_result(model, args.out)


def cmd_train_irn(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_checkpoint, new_irnet
    from ..training.loop import make_seeds, train_irn
    from .progress import progress_iter, track_training

    _check_outputs(args.out)
    model = load_checkpoint(args.checkpoint)
    model.require("cam", task="train-irn")
    model.params = _with_overrides(model.params, args)
    model.train_params = _with_overrides(model.train_params, args)
    _, items = _load_dataset(args.images, args.labels, model.classes, args.max_pixels)
    import torch

    torch.manual_seed(model.train_params.seed)  # new heads: reproducible, equal in every torchrun process
    model.displacement_head = args.displacement_head
    model.irn = new_irnet(model, args.irn_backbone)
    seeds = [None] * len(items)
    for i, seed in progress_iter(make_seeds(model, items, device=args.device), len(items), "seeds"):
        seeds[i] = seed
    print(f"training IRNet on {len(items)} images")
    track_training(train_irn(model, items, seeds, device=args.device), "IRNet")
    return _save_result(model, args.out)


def _predict_inputs(args: argparse.Namespace, model) -> tuple[list[tuple[str, Path]], object]:
    """(name, path) of every image to predict, and the labels (None without --labels)."""
    from ..io.files import list_images, read_labels

    if args.labels:
        labels = read_labels(args.labels, args.images, classes=model.classes)
        return [(name, args.images / name) for name in labels.image_labels], labels
    return [(p.name, p) for p in list_images(args.images)], None


def _check_legend(out: Path, classes: list[str]) -> None:
    """Refuse a folder holding predictions for other classes (or another order): one classes.json speaks for all."""
    from ..io.files import CLASS_LEGEND, InputError, read_class_legend

    legend = out / CLASS_LEGEND
    if legend.exists() and read_class_legend(legend) != list(classes):
        raise InputError(
            f"{legend}: the predictions in this folder are for the classes {read_class_legend(legend)}, "
            f"the checkpoint's are {list(classes)}; predict into another folder"
        )


#: images of at least this many pixels show a progress bar of their walks
LARGE_IMAGE = 2048 * 2048


def cmd_predict(args: argparse.Namespace) -> int:
    from ..io.files import InputError, output_stems, read_image, write_class_legend, write_instance_tiff, write_instances_json, write_semantic_png
    from ..models.checkpoint import load_checkpoint
    from ..pipeline.predict import predict, predict_classes
    from ..training.distributed import barrier, is_main, shard
    from .progress import StepBars, progress_iter

    if args.out.resolve() == args.images.resolve():
        raise InputError(f"{args.out}: is the image folder; write the predictions to another folder (they would be read as images)")
    model = load_checkpoint(args.checkpoint)
    model.require("cam", "irn")  # before anything is written
    params = _with_overrides(model.params, args)
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
            _, pred = predict(model, image, names, params, args.device, progress=bars)
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate_folder, format_table
    from ..io.files import json_ready, write_json

    results = evaluate_folder(
        args.predictions, args.ground_truth, classes=args.classes, gt_format=args.gt_format, only_predicted=args.only_predicted
    )
    for message in results["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    print(format_table(results), end="")
    if args.out is not None:
        write_json(args.out, json_ready(results))
        print(f"wrote {args.out}")
    return 0


def _add_evaluate_parser(sub) -> None:
    from ..evaluation.evaluate import GT_FORMATS

    p = sub.add_parser("evaluate", help="score predictions (instance mAP^r, semantic mIoU) against ground truth")
    p.add_argument("--predictions", type=Path, required=True, help="folder written by predict (<name>_instances.tif/.json, <name>_semantic.png)")
    p.add_argument("--ground-truth", type=Path, required=True, help="VOC folder (SegmentationObject/, SegmentationClass/), label folder (inst/ [sem/, instances.json]) or COCO .json")
    p.add_argument("--gt-format", default="auto", choices=GT_FORMATS, help="ground-truth layout (default: auto, from what the path holds)")
    p.add_argument("--classes", nargs="+", help="the ground truth's class names in the order of its class values 1, 2, ... (default: from the ground truth; VOC: the 20 VOC classes); the predictions' order comes from their classes.json")
    p.add_argument("--only-predicted", action="store_true", help="score only the images that have predictions (default: a ground-truth image without one counts as empty, with a warning)")
    p.add_argument("--out", type=Path, help="write every number as JSON here (NaN as null)")
    p.set_defaults(func=cmd_evaluate)


def cmd_import_reference(args: argparse.Namespace) -> int:
    from ..models.checkpoint import VOC_CLASSES, import_reference, save_checkpoint

    if args.cam is None and args.irn is None:
        print("error: give --cam, --irn or both (the reference's res50_cam.pth, res50_irn.pth)", file=sys.stderr)
        return 2
    _check_outputs(args.out)
    classes = args.classes or list(VOC_CLASSES)
    model = import_reference(args.cam, args.irn, classes)
    save_checkpoint(model, args.out)
    print(f"saved {args.out} (preset 'reference')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..params import DISPLACEMENT_HEADS, Params, TrainParams

    ap = argparse.ArgumentParser(prog="napari-irnet", description="Instance masks from image-level labels (IRNet).")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p, need_labels=True):
        p.add_argument("--images", type=Path, required=True, help="folder of images")
        p.add_argument("--labels", type=Path, required=need_labels, help="image-level labels: CSV (image,classes with ';') or JSON")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
        add_max_pixels_option(p)

    p = sub.add_parser("train-cam", help="train the CAM classifier from image-level labels")
    common(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--checkpoint", type=Path, help="continue from this checkpoint")
    p.add_argument("--backbone", default="resnet50", choices=("resnet50", "resnet18", "tiny", "efficientnet_lite0"))
    p.add_argument("--weights", default="imagenet", help="imagenet | none | PATH of torchvision-layout weights (default imagenet)")
    _add_dataclass_options(p, TrainParams, "training parameters")
    _add_dataclass_options(p, Params, _PARAM_HELP)
    p.set_defaults(func=cmd_train_cam)

    p = sub.add_parser("train-irn", help="train IRNet on relations mined from the CAMs")
    common(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint with a trained CAM network")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--irn-backbone", default="imagenet", help="IRNet's frozen backbone: imagenet | cam (copy the CAM backbone) | none | PATH (default imagenet)")
    p.add_argument("--displacement-head", default="reference", choices=DISPLACEMENT_HEADS,
                   help="IRNet's last displacement layers: reference (1x1, loads the reference's weights) or "
                        "context (dilated 3x3, for objects a few grid cells across such as nuclei); default reference")
    _add_dataclass_options(p, TrainParams, "training parameters")
    _add_dataclass_options(p, Params, _PARAM_HELP)
    p.set_defaults(func=cmd_train_irn)

    p = sub.add_parser("predict", help="instances and semantic labels for a folder of images")
    common(p, need_labels=False)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_dataclass_options(p, Params, _PARAM_HELP)
    p.set_defaults(func=cmd_predict)

    _add_evaluate_parser(sub)

    p = sub.add_parser("import-reference", help="convert reference-implementation weights (res50_cam.pth, res50_irn.pth)")
    p.add_argument("--cam", type=Path, help="res50_cam.pth")
    p.add_argument("--irn", type=Path, help="res50_irn.pth")
    p.add_argument("--classes", nargs="+", help="class names in the classifier's order (default: the 20 VOC classes)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_import_reference)
    from .project import add_project_commands
    add_project_commands(sub)
    from .finetune import add_finetune_command

    add_finetune_command(sub)
    return ap


def _option_text(name: str, value: Any) -> str:
    """A parameter as it is written on the command line: ``--cam-resize-long 56 72``, ``--use-crf false``."""
    if isinstance(value, (tuple, list)):
        value = " ".join(map(str, value))
    elif isinstance(value, bool):
        value = str(value).lower()
    return f"--{name.replace('_', '-')} {value}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    args = build_parser().parse_args(argv)
    from ..io.files import InputError, OutputError
    from ..models.checkpoint import CheckpointError
    from ..params import ParamError
    from ..pipeline.inference import DeviceError, resolve_device
    from ..training.distributed import init_from_env, shutdown

    try:
        if hasattr(args, "device"):
            args.device = init_from_env(args.device)
            resolve_device(args.device)  # an unknown or absent device fails now, not after loading
        return args.func(args)
    except DeviceError as exc:
        print(f"error: --device {args.device}: {exc}", file=sys.stderr)
        return 2
    except ParamError as exc:
        print(f"error: {_option_text(exc.name, exc.value)}: must be {exc.allowed}", file=sys.stderr)
        return 2
    except (InputError, OutputError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # any other file problem: name the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
