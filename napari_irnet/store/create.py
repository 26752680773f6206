"""A project folder made (:func:`create_project`), opened and upgraded (:func:`open_project`).

A project written by an older napari-irnet is upgraded when it is opened,
one format version at a time (the old manifest is kept as
``project.json.v<N>.bak``); one written by a newer version is refused.
The folder's layout is described in :mod:`napari_irnet.store.project`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..io.files import MAX_NAMES_SHOWN, InputError, OutputError, atomic_write, name_list, write_json
from ..io.images import DEFAULT_MAX_PIXELS, check_pixels, image_size, list_images, read_image
from ..io.labels import ImageLabels, read_labels
from ..params import Params
from .items import ImageEntry
from .project import IMAGE_TABLE, LOCK_FILE, MANIFEST, Project, ProjectError, read_store_json, store_path, timestamp

__all__ = ["FORMAT_VERSION", "PROJECT_FORMAT", "create_project", "open_project"]

PROJECT_FORMAT = "napari-irnet-project"
#: the project layout this version writes; older ones are upgraded on opening
FORMAT_VERSION = 1
#: upgrade steps: ``_UPGRADES[v](root, manifest)`` turns a format-``v`` project
#: into format ``v + 1`` and returns the new manifest (without writing it).
#: Steps must be idempotent: a step interrupted part way is run again.
_UPGRADES: dict[int, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {}


def create_project(
    root: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    labels: str | os.PathLike[str] | ImageLabels | None = None,
    *,
    classes: Sequence[str] | None = None,
    params: Params | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    channels: Sequence[int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    include_unlabelled: bool = False,
    skip_bad_images: bool = False,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Project:
    """Make a new project folder from an image folder and image-level labels.

    Parameters
    ----------
    root
        The project folder: must not exist, or be empty.
    image_dir
        The folder of images (referenced, not copied; stored relative to
        the project so the two can move together).
    labels
        A labels file (CSV or JSON, see :func:`~napari_irnet.io.labels.read_labels`)
        or ImageLabels. ``None``: every image in the folder, without labels
        (``classes`` is then required).
    classes
        The project's classes in index order; default: those of the labels.
        Any other class in the labels is an error.
    params
        Pipeline parameters (default: the paper's).
    checkpoint
        A checkpoint to use for prediction (its classes are checked by the
        caller or at prediction time).
    channels
        Channel choice for every image (see :func:`~napari_irnet.io.images.read_image`).
    max_pixels
        Larger images are refused.
    include_unlabelled
        Also add images in the folder that the labels file does not list,
        without labels (the classifier will pick their classes).
    skip_bad_images
        Leave out unreadable or too large images (each reported through
        ``on_warning``) instead of failing.
    progress
        Wraps the per-image check loop, e.g. ``lambda it, n: tqdm(it, total=n)``.
    on_warning
        Receives notes (unlabelled images, skipped images).

    Raises
    ------
    InputError
        Bad labels file, unknown class, listed images missing, unreadable
        images (all of them named) unless ``skip_bad_images``.
    ProjectError
        ``root`` exists and is not empty.
    OutputError
        The project could not be written.
    """
    warn = on_warning or (lambda msg: None)
    root, image_dir = Path(root), Path(image_dir)
    _check_new_folder(root)
    table = _labels_table(labels, image_dir, classes)
    project_classes = _project_classes(classes, table, labels)
    wanted = _wanted_images(table, labels, image_dir, include_unlabelled, warn)
    chosen = tuple(int(c) for c in channels) if channels is not None else None
    entries = _image_entries(wanted, image_dir, chosen, max_pixels, progress, skip_bad_images, warn)
    manifest: dict[str, Any] = {
        "format": PROJECT_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": timestamp(),
        "modified": timestamp(),
        "classes": project_classes,
        "params": (params or Params()).to_dict(),
        "checkpoint": None,
        "image_dir": store_path(image_dir, root),
        "channels": None if chosen is None else list(chosen),
        "max_pixels": int(max_pixels),
    }
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{root}: cannot create the project folder ({exc.strerror or exc})") from exc
    project = Project(root, manifest, entries)
    if checkpoint is not None:
        p = Path(checkpoint)
        if not p.is_file():
            raise ProjectError(f"{p}: checkpoint file not found")
        manifest["checkpoint"] = {"path": store_path(p, root)}
    # the image table first, the manifest last: a folder without a manifest is
    # not a project, so an interrupted creation is simply not one
    project.write_image_table()
    project.write_manifest()
    return project


def _check_new_folder(root: Path) -> None:
    """A project goes into a new folder, an empty one, or what an interrupted init left (no manifest yet)."""
    if root.exists():
        leftovers = {IMAGE_TABLE, LOCK_FILE}
        if not root.is_dir() or any(
            p.name not in leftovers and not p.name.startswith(".") for p in root.iterdir()
        ):
            raise ProjectError(f"{root}: exists and is not an empty folder; choose a new project folder")


def _labels_table(labels, image_dir: Path, classes: Sequence[str] | None) -> ImageLabels:
    """The image-level labels (read from the file, or given), with the folder's unlabelled images."""
    if isinstance(labels, ImageLabels):
        table = labels
        if not table.unlabelled and image_dir.is_dir():
            listed = set(table.image_labels)
            table.unlabelled = [p.name for p in list_images(image_dir) if p.name not in listed]
        return table
    if labels is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported by _wanted_images
            return read_labels(labels, image_dir, classes=classes)
    if not classes:
        raise ValueError("without a labels file the project's classes must be given")
    return ImageLabels(list(classes), {}, [p.name for p in list_images(image_dir)])


def _project_classes(classes: Sequence[str] | None, table: ImageLabels, labels) -> list[str]:
    """The project's classes in index order (given, else the labels'), each label one of them."""
    project_classes = list(classes) if classes is not None else list(table.classes)
    if not project_classes:
        raise InputError(f"{labels}: the labels name no class at all; give the classes explicitly")
    if len(set(project_classes)) != len(project_classes):
        raise ValueError(f"classes listed twice: {project_classes}")
    if len(project_classes) > 254:
        raise ValueError(f"at most 254 classes are supported, got {len(project_classes)}")
    for name, names in table.image_labels.items():
        unknown = [c for c in names if c not in project_classes]
        if unknown:
            raise InputError(f"{labels}: image {name!r}: unknown class {unknown[0]!r}; classes: {name_list(project_classes, 50)}")
    return project_classes


def _wanted_images(table: ImageLabels, labels, image_dir: Path, include_unlabelled: bool, warn) -> list[tuple[str, list[str] | None]]:
    """(name, labels) of the images to add: the labelled ones, and the unlabelled ones when asked (said either way)."""
    wanted: list[tuple[str, list[str] | None]] = list(table.image_labels.items())
    if table.unlabelled:
        if include_unlabelled:
            wanted += [(n, None) for n in table.unlabelled]
            warn(f"{len(table.unlabelled)} image(s) without labels added; the classifier will pick their classes: {name_list(table.unlabelled)}")
        else:
            warn(
                f"{len(table.unlabelled)} image(s) in {image_dir} have no labels and are left out "
                f"(include them with include_unlabelled / --include-unlabelled): {name_list(table.unlabelled)}"
            )
    for name, _ in wanted:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            raise InputError(f"{labels}: image name {name!r} must be a path inside {image_dir}")
    return wanted


def _image_entries(wanted, image_dir: Path, chosen, max_pixels: int, progress, skip_bad_images: bool, warn) -> list[ImageEntry]:
    """Every wanted image read whole (which catches truncated files), as an entry with its size; the bad ones named."""
    entries: list[ImageEntry] = []
    bad: list[str] = []
    loop: Iterable[tuple[str, list[str] | None]] = wanted
    if progress is not None:
        loop = progress(wanted, len(wanted))
    for name, names in loop:
        path = image_dir / name
        try:
            size = image_size(path)
            check_pixels(path, size, max_pixels, hint="raise the limit (init --max-pixels)")
            image = read_image(path, chosen, max_pixels=max_pixels)  # decodes it all: catches truncated files
            entries.append(ImageEntry(name, names, int(image.shape[0]), int(image.shape[1])))
            del image
        except InputError as exc:
            bad.append(str(exc))
    if bad:
        if not skip_bad_images:
            shown = "\n  ".join(bad[:MAX_NAMES_SHOWN])
            more = f"\n  ... and {len(bad) - MAX_NAMES_SHOWN} more" if len(bad) > MAX_NAMES_SHOWN else ""
            raise InputError(
                f"{len(bad)} image(s) cannot be used (leave them out with skip_bad_images / --skip-bad-images):\n  {shown}{more}"
            )
        for msg in bad:
            warn(f"left out: {msg}")
    if not entries:
        raise InputError(f"{image_dir}: no usable images")
    return entries


def open_project(root: str | os.PathLike[str]) -> Project:
    """Open a project folder, upgrading an older format version in place.

    Raises
    ------
    ProjectError
        Not a project folder, a damaged manifest or image table, or a
        format version this napari-irnet cannot read (the message says why).
    """
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ProjectError(f"{root}: project folder not found")
    if not path.is_file():
        raise ProjectError(f"{root}: not a napari-irnet project (no {MANIFEST}; create one with `napari-irnet init`)")
    manifest = read_store_json(path, "project manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != PROJECT_FORMAT:
        raise ProjectError(f"{path}: not a napari-irnet project manifest ('format' is not {PROJECT_FORMAT!r})")
    manifest = _upgrade(root, manifest)
    for key in ("classes", "params", "image_dir"):
        if key not in manifest:
            raise ProjectError(f"{path}: manifest lacks {key!r}")
    try:
        Params.from_dict(manifest["params"])
    except (TypeError, ValueError) as exc:
        raise ProjectError(f"{path}: bad parameters ({exc})") from exc
    table = read_store_json(root / IMAGE_TABLE, "image table")
    if not isinstance(table, dict) or not isinstance(table.get("images"), list):
        raise ProjectError(f"{root / IMAGE_TABLE}: not an image table (expected {{'images': [...]}})")
    images = []
    for i, e in enumerate(table["images"]):
        try:
            images.append(ImageEntry(str(e["name"]), None if e["labels"] is None else list(e["labels"]), int(e["height"]), int(e["width"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProjectError(f"{root / IMAGE_TABLE}: entry {i} is malformed ({exc!r})") from exc
    return Project(root, manifest, images)


def _upgrade(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a project of an older format, upgraded step by step (the old manifest kept as a backup)."""
    path = root / MANIFEST
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProjectError(f"{path}: 'format_version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ProjectError(
            f"{path}: project format version {version} was written by a newer napari-irnet; "
            f"this one reads versions up to {FORMAT_VERSION}: upgrade napari-irnet to open it"
        )
    while version < FORMAT_VERSION:
        step = _UPGRADES.get(version)
        if step is None:
            raise ProjectError(
                f"{path}: project format version {version} cannot be upgraded to {FORMAT_VERSION} "
                "by this napari-irnet (no upgrade step from it); open it with the napari-irnet "
                "that made it and export the masks"
            )
        backup = root / f"{MANIFEST}.v{version}.bak"
        if not backup.exists():
            atomic_write(backup, lambda tmp, src=path: shutil.copyfile(src, tmp))
        manifest = step(root, dict(manifest))
        version += 1
        manifest["format_version"] = version
        manifest["modified"] = timestamp()
        write_json(path, manifest)  # the version moves on only once the step is done
    return manifest
