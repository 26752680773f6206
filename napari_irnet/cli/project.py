"""Project commands of the command line: ``init``, ``predict --project``, ``status``, ``export``.

Added to the parser of :mod:`napari_irnet.cli` by :func:`add_project_commands`.
The work is done by :mod:`napari_irnet.store.project`,
:mod:`napari_irnet.store.batch` and :mod:`napari_irnet.store.export`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from .options import PARAM_HELP, add_dataclass_options, overrides, with_overrides

_EXPORT_FORMATS = ("coco", "tif", "png", "voc")


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def _image_progress(desc: str):
    from .progress import progress_iter

    return lambda it, n: progress_iter(it, n, desc)


# ---------------------------------------------------------------- init


def cmd_init(args: argparse.Namespace) -> int:
    from ..io.labels import read_labels
    from ..models.checkpoint import load_checkpoint
    from ..params import Params
    from ..store.create import create_project

    model = load_checkpoint(args.checkpoint) if args.checkpoint else None
    if model is not None:
        model.require("cam", "irn", task="predicting the project")
    labels = None
    if args.labels:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unlabelled images are reported by create_project
            labels = read_labels(args.labels, args.images, classes=args.classes)
    elif not args.classes:
        print("error: give --labels, or --classes for a project of unlabelled images", file=sys.stderr)
        return 2
    classes = list(args.classes) if args.classes else list(labels.classes)
    if model is not None:
        unknown = [c for c in classes if c not in model.classes]
        if unknown:
            from ..models.torch_files import CheckpointError

            raise CheckpointError(
                f"{args.checkpoint}: trained for classes {model.classes}, which lack {unknown} "
                f"(classes of {args.labels or '--classes'})"
            )
    params = with_overrides(model.params if model is not None else Params(), args, classes)
    project = create_project(
        args.project,
        args.images,
        labels,
        classes=classes,
        params=params,
        checkpoint=args.checkpoint,
        channels=args.channels,
        max_pixels=args.max_pixels,
        include_unlabelled=args.include_unlabelled,
        skip_bad_images=args.skip_bad_images,
        progress=_image_progress("check images"),
        on_warning=_note,
    )
    print(f"created project {project.root}: {len(project.images)} images, classes {project.classes}")
    if project.checkpoint_path is None:
        print("next: napari-irnet predict --project", project.root, "--checkpoint CHECKPOINT")
    else:
        print("next: napari-irnet predict --project", project.root)
    return 0


# ---------------------------------------------------------------- predict --project


def cmd_predict_project(args: argparse.Namespace) -> int:
    from ..params import Params
    from ..store.batch import ProjectPrediction
    from ..store.create import open_project
    from .progress import Progress

    project = open_project(args.project)
    given = overrides(args, Params)
    params = with_overrides(project.params, args, project.classes) if given else None
    run = ProjectPrediction(
        project, checkpoint=args.checkpoint, params=params, device=args.device, force=args.force, limit=args.limit
    )
    total_images = len(project.images)
    limited = f"; predicting {len(run)} (--limit)" if len(run) < run.needed else ""
    print(f"{run.needed} of {total_images} images need prediction ({run.checkpoint_path.name}){limited}")
    done = failed = skipped = 0
    failures: list[str] = []
    start = time.perf_counter()
    try:
        with Progress(len(run), "predict", "image") as bar:
            for event in run:
                if event.status == "predicted":
                    done += 1
                elif event.status == "failed":
                    failed += 1
                    failures.append(event.error or event.name)
                else:
                    skipped += 1
                bar.update(1, **({"failed": failed} if failed else {}))
    except KeyboardInterrupt:
        print(f"stopped after {done} images; run the same command again to resume", file=sys.stderr)
        raise
    if params is not None:
        print(f"parameters saved in the project: {', '.join(f'{k}={v}' for k, v in sorted(given.items()))}")
    seconds = time.perf_counter() - start
    rate = f" ({done / seconds:.2f} images/s)" if done and seconds > 0 else ""
    print(f"predicted {done} images in {seconds:.1f} s{rate}")
    if skipped:
        print(f"{skipped} images were corrected or accepted meanwhile and kept as they are")
    if failures:
        print(f"{failed} images failed and stay 'new' (a later run retries them):", file=sys.stderr)
        for msg in failures[:20]:
            print(f"  {msg}", file=sys.stderr)
        if len(failures) > 20:
            print(f"  ... and {len(failures) - 20} more (napari-irnet status --project {project.root} --list)", file=sys.stderr)
        return 2
    return 0


def _extend_predict(subparsers) -> None:
    """Give the existing ``predict`` command a ``--project`` mode."""
    parser = subparsers.choices.get("predict")
    if parser is None:
        return
    parser.add_argument("--project", type=Path, help="predict every image of this project that needs it (resumable); --images, --labels and --out are then not used")
    parser.add_argument("--force", action="store_true", help="with --project: also re-predict up-to-date proposals")
    parser.add_argument("--limit", type=int, help="with --project: predict at most this many images")
    # --images, --out and --checkpoint are required only without --project
    required = []
    for action in parser._actions:  # argparse has no public way to relax 'required'
        if action.dest in ("images", "out", "checkpoint") and action.required:
            action.required = False
            required.append(action)
    folder_mode = parser.get_default("func")

    def dispatch(args: argparse.Namespace) -> int:
        if args.project is not None:
            if args.images is not None or args.out is not None or args.labels is not None:
                parser.error("--project predicts the project's own images: leave out --images, --labels and --out")
            return cmd_predict_project(args)
        missing = [a.option_strings[0] for a in required if getattr(args, a.dest) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)} (or give --project)")
        return folder_mode(args)

    parser.set_defaults(func=dispatch)


# ---------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    from ..annotation.masks import IMAGE_STATES
    from ..store.create import open_project

    project = open_project(args.project)
    states = project.states()
    ckpt = project.checkpoint_path
    key = project.model_key() if ckpt is not None else None
    counts = dict.fromkeys(IMAGE_STATES, 0)
    for st in states.values():
        counts[st.state] += 1
    pending = [n for n, st in states.items() if project.needs_prediction(n, key, st)]
    failed = {n: st.error["message"] for n, st in states.items() if st.error and st.state == "new"}
    changed = [n for n, st in states.items() if st.image_changed]
    if args.json:
        data = {
            "project": str(project.root),
            "format_version": project.manifest["format_version"],
            "classes": project.classes,
            "checkpoint": None if ckpt is None else str(ckpt),
            "checkpoint_found": bool(ckpt and ckpt.is_file()),
            "images": len(states),
            "states": counts,
            "need_prediction": len(pending),
            "failed": failed,
            "image_changed": changed,
        }
        if args.list:
            data["items"] = {
                n: {"state": st.state, "instances": (st.correction or st.result or {}).get("instances"), "error": (st.error or {}).get("message")}
                for n, st in states.items()
            }
        print(json.dumps(data, indent=1))
        return 0
    print(f"project     {project.root} (format {project.manifest['format_version']})")
    print(f"images      {project.image_dir} ({len(states)})")
    print(f"classes     {', '.join(project.classes)}")
    if ckpt is None:
        print("checkpoint  none set (predict --checkpoint PATH)")
    else:
        print(f"checkpoint  {ckpt}{'' if ckpt.is_file() else '  (MISSING)'}")
    print()
    width = max(len(s) for s in IMAGE_STATES)
    for s in IMAGE_STATES:
        print(f"  {s:<{width}}  {counts[s]:>7}")
    print(f"  {'total':<{width}}  {len(states):>7}")
    print()
    print(f"need prediction: {len(pending)}" + ("" if key or not pending else " (new images; no usable checkpoint)"))
    if changed:
        print(f"image changed since its masks were made: {len(changed)} (new again; the earlier masks are kept)")
        for n in changed[: 10 if not args.list else None]:
            print(f"  {project.image_path(n)}")
    if failed:
        print(f"failed on the last try: {len(failed)}")
        for msg in list(failed.values())[: 10 if not args.list else None]:
            print(f"  {msg}")
    if args.list:
        print()
        for n, st in states.items():
            part = st.correction or st.result
            inst = "" if not part else f"{part.get('instances', '?')} instances"
            stale = " (stale)" if st.state == "proposed" and n in pending else ""
            stale += " (image changed)" if st.image_changed else ""
            print(f"{st.state:<{width}}  {n}  {inst}{stale}")
    return 0


# ---------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from ..store.create import open_project
    from ..store.export import export_coco, export_label_images, export_voc

    project = open_project(args.project)
    states = tuple(args.states)
    summaries = []
    formats = list(dict.fromkeys(args.format))
    for fmt in formats:
        out = args.out / fmt
        if fmt == "coco":
            summaries.append((fmt, export_coco(project, out, states, args.source, results=args.coco_results)))
        elif fmt == "voc":
            summaries.append((fmt, export_voc(project, out, states, args.source, copy_images=not args.no_images)))
        else:
            summaries.append((fmt, export_label_images(project, args.out, (fmt,), states, args.source)))
    for fmt, s in summaries:
        print(f"{fmt:<5} {s.images} images, {s.instances} instances -> {args.out / fmt}")
    left = summaries[0][1].left_out if summaries else {}
    if left:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(left.items()))
        print(f"left out: {parts} (choose with --states {' '.join(('new', 'proposed', 'corrected', 'accepted'))})")
    if summaries and summaries[0][1].images == 0:
        print("nothing exported: no image is in the chosen states", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- parser


def add_project_commands(subparsers) -> None:
    """Add ``init``, ``status`` and ``export``, and ``predict --project``, to the CLI."""
    from ..annotation.masks import IMAGE_STATES
    from ..io.images import DEFAULT_MAX_PIXELS
    from ..params import Params

    p = subparsers.add_parser("init", help="create a project from an image folder and image-level labels")
    p.add_argument("--project", type=Path, required=True, help="the project folder to create (new or empty)")
    p.add_argument("--images", type=Path, required=True, help="folder of images (referenced, not copied)")
    p.add_argument("--labels", type=Path, help="image-level labels: CSV (image,classes with ';') or JSON")
    p.add_argument("--classes", nargs="+", help="the class names in index order (default: those of the labels)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to predict with (must know every class)")
    p.add_argument("--channels", type=int, nargs="+", help="channels of multi-channel images: one (gray) or three (r g b) indices")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--include-unlabelled", action="store_true", help="also add images without labels (the classifier picks their classes)")
    p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable images instead of stopping")
    add_dataclass_options(p, Params, PARAM_HELP)
    p.set_defaults(func=cmd_init)

    _extend_predict(subparsers)

    p = subparsers.add_parser("status", help="how many images of a project are new, proposed, corrected, accepted")
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--list", action="store_true", help="also list every image with its state")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("export", help="export a project's masks: COCO JSON, label TIFF/PNG, PASCAL VOC")
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder; each format goes to OUT/<format>/")
    p.add_argument("--format", nargs="+", choices=_EXPORT_FORMATS, default=["coco"], help="one or more of coco, tif, png, voc (default coco)")
    p.add_argument("--states", nargs="+", choices=IMAGE_STATES, default=["accepted", "corrected"], help="images in these states (default: accepted corrected)")
    p.add_argument("--source", choices=("current", "result", "correction"), default="current", help="whose masks: current (the correction, else the model's), result (the model's) or correction (default current)")
    p.add_argument("--coco-results", action="store_true", help="also write OUT/coco/results.json, a COCO results list with scores")
    p.add_argument("--no-images", action="store_true", help="VOC: do not write JPEGImages")
    p.set_defaults(func=cmd_export)
