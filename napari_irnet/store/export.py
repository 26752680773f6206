"""Exporting a project's masks for training elsewhere, and reading them back.

Three formats:

- COCO instance JSON (:func:`export_coco`): ``images``, ``annotations``
  with RLE masks (pycocotools), ``categories`` (id = project class index + 1);
  annotations made by the model carry their ``score``. With ``results=True``
  also a COCO *results* list (what ``COCO.loadRes`` reads) for evaluation.
- Label images (:func:`export_label_images`): per image an instance map
  (``instances/<stem>.tif`` or ``.png``, 16-bit; TIFF switches to 32-bit
  above 65535 instances), a class map (``semantic/<stem>.tif`` / ``.png``,
  class index + 1) and the instance records (``instances/<stem>.json``).
- PASCAL VOC (:func:`export_voc`): ``SegmentationObject/<stem>.png`` and
  ``SegmentationClass/<stem>.png`` (palette PNGs with the VOC colour map),
  ``ImageSets/Segmentation/<split>.txt``, ``JPEGImages/<stem>.jpg`` and
  ``class_names.txt``.

Instance ids are renumbered 1..K in the order of the stored ids in every
format, so all exports of an image agree. In VOC's ``SegmentationClass`` the
class of every object is its instance's class (VOC requires the two images
to agree); COCO and label images carry the stored class map as it is.

Exporting again into the same folder replaces the earlier export: the
files it wrote and this one does not (images no longer in the chosen
states) are removed, as listed in the folder's ``.napari-irnet-export.json``;
nothing else is. A folder that holds other files is refused.

Which images: by default those an annotator has finished (``accepted``
and ``corrected``); ``states`` chooses others. Which masks: ``source``
``"current"`` (the correction if any, else the model's result),
``"result"`` (the model's, e.g. to evaluate it against corrections) or
``"correction"``.

The ``import_*`` functions read each format back (used by the round-trip
tests, and handy for checking an export).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..annotation.masks import IMAGE_STATES, Masks
from ..io.files import InputError, OutputError, atomic_write
from ..io.images import read_label_image
from ..io.results import output_stems, write_class_legend, write_instance_tiff, write_instances_json, write_semantic_png
from .project import Project, timestamp

__all__ = [
    "DEFAULT_STATES",
    "ExportSummary",
    "ImportedImage",
    "export_coco",
    "export_label_images",
    "export_voc",
    "import_coco",
    "import_label_images",
    "import_voc",
]

#: states exported unless told otherwise: what an annotator has finished
DEFAULT_STATES: tuple[str, ...] = ("accepted", "corrected")


class ExportError(ValueError):
    """A project cannot be exported as asked; the message names the image."""


@dataclass
class ExportSummary:
    """What an export wrote."""

    out: Path
    images: int = 0
    instances: int = 0
    #: images left out, by state (not in ``states``) or for lack of masks
    left_out: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


@dataclass
class ImportedImage:
    """One image read back from an export: sequential instance ids 1..K."""

    instances: np.ndarray
    classes: dict[int, str]
    semantic: np.ndarray | None = None
    scores: dict[int, float] = field(default_factory=dict)


# --------------------------------------------------------------------------
# choosing images


def _selected(
    project: Project, states: Sequence[str], source: str, summary: ExportSummary
) -> list[tuple[str, str, int]]:
    """(name, state, instance count) of every image to export, from the stored states alone."""
    bad = [s for s in states if s not in IMAGE_STATES]
    if bad:
        raise ValueError(f"unknown state {bad[0]!r}; states are {', '.join(IMAGE_STATES)}")
    if source not in ("current", "result", "correction"):
        raise ValueError(f"source must be 'current', 'result' or 'correction', got {source!r}")
    chosen = []
    for name, st in project.states().items():
        if st.state not in states:
            summary.left_out[st.state] = summary.left_out.get(st.state, 0) + 1
            continue
        info = {"current": st.correction or st.result, "result": st.result, "correction": st.correction}[source]
        if not info:
            key = f"{st.state} without {source if source != 'current' else 'masks'}"
            summary.left_out[key] = summary.left_out.get(key, 0) + 1
            continue
        chosen.append((name, st.state, int(info.get("instances", 0))))
    return chosen


def _load(project: Project, name: str, source: str) -> Masks:
    masks = project.load_masks(name, source)
    if masks is None:  # changed since the selection
        raise ExportError(f"{name}: its {source} masks disappeared during the export")
    return _sequential(masks)


def _sequential(masks: Masks) -> Masks:
    """Renumber instance ids 1..K in the order of the stored ids."""
    records = sorted(masks.records, key=lambda r: int(r["id"]))
    top = int(masks.labels.max(initial=0))
    lut = np.zeros(top + 1, np.int32)
    out = []
    for k, rec in enumerate(records, start=1):
        old = int(rec["id"])
        if old <= top:
            lut[old] = k
        out.append({**rec, "id": k})
    return dataclasses.replace(masks, labels=lut[masks.labels], records=out)


#: the list of files an export wrote, kept in its folder so that the next export there removes
#: what it does not write again (images no longer exported), and nothing else
EXPORT_LIST = ".napari-irnet-export.json"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: cannot write the export (it is a file, not a folder)")


def _previous_export(out: Path) -> list[str]:
    """Check an export folder; return the files the previous export into it wrote (relative paths).

    Raises
    ------
    OutputError
        ``out`` is a file.
    ExportError
        ``out`` holds files but no export list: they are not an earlier
        export's, and an export into it could mix with them.
    """
    _check_out(out)
    listing = out / EXPORT_LIST
    if listing.is_file():
        try:
            files = json.loads(listing.read_text(encoding="utf-8"))["files"]
            return [str(f) for f in files]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{listing}: not a readable export list ({exc}); export into a new folder") from exc
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ExportError(
            f"{out}: the folder holds files that no napari-irnet export wrote (no {EXPORT_LIST}); "
            "export into a new or empty folder, so that nothing stale mixes with the export"
        )
    return []


def _finish(out: Path, previous: list[str], written: Sequence[Path]) -> None:
    """Remove the files of the previous export that this one did not write again; record this one's."""
    root = out.resolve()
    now = sorted({Path(os.path.relpath(Path(p).resolve(), root)).as_posix() for p in written})
    for rel in sorted(set(previous) - set(now)):
        path = out / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or path.is_symlink() or not path.is_file():
            continue  # only plain files inside the folder, as an export writes them
        try:
            path.unlink()
            if path.parent != out and not any(path.parent.iterdir()):
                path.parent.rmdir()
        except OSError:
            pass
    _write_text(out / EXPORT_LIST, json.dumps({"written": timestamp(), "files": now}, indent=1) + "\n")


# --------------------------------------------------------------------------
# COCO


def _coco_annotations(masks: Masks, image_id: int, classes: list[str], first_id: int, with_score: bool):
    from scipy import ndimage

    from ..io.coco import encode_mask

    anns = []
    slices = ndimage.find_objects(masks.labels)
    h, w = masks.labels.shape
    for rec in masks.records:
        sl = slices[rec["id"] - 1] if rec["id"] - 1 < len(slices) else None
        if sl is None:
            continue
        full = np.zeros((h, w), np.uint8, order="F")
        full[sl] = masks.labels[sl] == rec["id"]
        rle, area, bbox = encode_mask(full)
        ann = {
            "id": first_id + len(anns),
            "image_id": image_id,
            "category_id": classes.index(rec["class"]) + 1,
            "segmentation": rle,
            "area": area,
            "bbox": bbox,
            "iscrowd": 0,
        }
        if with_score:
            ann["score"] = float(rec["score"])
        anns.append(ann)
    return anns


def export_coco(
    project: Project,
    out: str | os.PathLike[str],
    states: Sequence[str] = DEFAULT_STATES,
    source: str = "current",
    results: bool = False,
) -> ExportSummary:
    """Write ``<out>/instances.json`` (COCO instance segmentation, RLE masks).

    Images are numbered 1..N in project order (``file_name`` is the name in
    the project's image folder, ``napari_irnet_state`` the image's state);
    categories 1..C are the project classes. Annotations that come from the
    model (source ``result``) carry its ``score``. With ``results=True``,
    ``<out>/results.json`` also holds the same masks as a COCO results list
    with scores (``COCO.loadRes``), for ``COCOeval``.

    Raises
    ------
    OutputError
        The files could not be written (nothing half-written is left).
    """
    out = Path(out)
    previous = _previous_export(out)
    summary = ExportSummary(out)
    classes = project.classes
    images, annotations = [], []
    for image_id, (name, state, _count) in enumerate(_selected(project, states, source, summary), start=1):
        masks = _load(project, name, source)
        h, w = masks.labels.shape
        images.append({"id": image_id, "file_name": name, "height": h, "width": w, "napari_irnet_state": state})
        annotations += _coco_annotations(masks, image_id, classes, len(annotations) + 1, masks.source == "result")
        summary.images += 1
    summary.instances = len(annotations)
    data = {
        "info": {
            "description": f"napari-irnet export of {project.root.name}",
            "date_created": timestamp(),
            "image_dir": str(project.image_dir),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c, "supercategory": "object"} for i, c in enumerate(classes)],
    }
    summary.files.append(_write_text(out / "instances.json", json.dumps(data)))
    if results:
        dets = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "segmentation": a["segmentation"],
                "score": float(a.get("score", 1.0)),
            }
            for a in annotations
        ]
        summary.files.append(_write_text(out / "results.json", json.dumps(dets)))
    _finish(out, previous, summary.files)
    return summary


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def import_coco(path: str | os.PathLike[str]) -> dict[str, ImportedImage]:
    """Read a COCO instance file back: ``file_name`` -> instances painted in annotation order.

    Raises
    ------
    InputError
        Missing or malformed file (pycocotools' own error is quoted).
    """
    from pycocotools.coco import COCO

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: COCO file not found")
    try:
        import contextlib
        import io as _io

        with contextlib.redirect_stdout(_io.StringIO()):  # COCO() prints progress
            coco = COCO(str(p))
    except Exception as exc:
        raise InputError(f"{p}: not a readable COCO instance file ({type(exc).__name__}: {exc})") from exc
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    out: dict[str, ImportedImage] = {}
    for img in coco.loadImgs(sorted(coco.getImgIds())):
        h, w = img["height"], img["width"]
        instances = np.zeros((h, w), np.int32)
        classes, scores = {}, {}
        for k, ann in enumerate(coco.loadAnns(sorted(coco.getAnnIds(imgIds=[img["id"]]))), start=1):
            mask = coco.annToMask(ann).astype(bool)
            instances[mask & (instances == 0)] = k
            classes[k] = names[ann["category_id"]]
            if "score" in ann:
                scores[k] = float(ann["score"])
        out[img["file_name"]] = ImportedImage(instances, classes, None, scores)
    return out


# --------------------------------------------------------------------------
# label images


def _write_png16(path: Path, array: np.ndarray) -> Path:
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def export_label_images(
    project: Project,
    out: str | os.PathLike[str],
    formats: Sequence[str] = ("tif", "png"),
    states: Sequence[str] = DEFAULT_STATES,
    source: str = "current",
) -> ExportSummary:
    """Write label images: ``<out>/<fmt>/instances/<stem>.<fmt>`` and ``.../semantic/<stem>.<fmt>``.

    ``formats`` holds ``"tif"`` (tifffile, zlib) and/or ``"png"`` (16-bit
    instance PNG, palette class PNG). Next to each instance image,
    ``<stem>.json`` lists its instances (id, class, score, bbox, area);
    ``<out>/<fmt>/classes.json`` maps class index + 1 to names.

    Raises
    ------
    ExportError
        More than 65535 instances in one image for PNG.
    OutputError
        A file could not be written.
    """
    out = Path(out)
    _check_out(out)
    unknown = [f for f in formats if f not in ("tif", "png")]
    if unknown:
        raise ValueError(f"unknown label image format {unknown[0]!r}; use 'tif' or 'png'")
    previous = {fmt: _previous_export(out / fmt) for fmt in formats}
    summary = ExportSummary(out)
    selected = _selected(project, states, source, summary)
    stems = output_stems([n for n, _, _ in selected])
    classes = project.classes
    for fmt in formats:
        summary.files.append(write_class_legend(out / fmt, classes))
    for name, _state, _count in selected:
        masks = _load(project, name, source)
        stem = stems[name]
        for fmt in formats:
            inst_path = out / fmt / "instances" / f"{stem}.{fmt}"
            sem_path = out / fmt / "semantic" / f"{stem}.{fmt}"
            if fmt == "tif":
                write_instance_tiff(inst_path, masks.labels)
                atomic_write(sem_path, lambda tmp, sem=masks.semantic: tifffile.imwrite(tmp, sem, compression="zlib", photometric="minisblack"))
            else:
                if len(masks.records) > 65535:
                    raise ExportError(f"{name}: {len(masks.records)} instances do not fit a 16-bit PNG; export TIFF instead")
                _write_png16(inst_path, masks.labels)
                write_semantic_png(sem_path, masks.semantic)
            json_path = write_instances_json(out / fmt / "instances" / f"{stem}.json", masks.records)
            summary.files += [inst_path, sem_path, json_path]
        summary.images += 1
        summary.instances += len(masks.records)
    for fmt in formats:
        _finish(out / fmt, previous[fmt], [p for p in summary.files if Path(p).is_relative_to(out / fmt)])
    return summary


def import_label_images(folder: str | os.PathLike[str]) -> dict[str, ImportedImage]:
    """Read ``export_label_images`` output of one format folder (``<out>/tif`` or ``<out>/png``)."""
    folder = Path(folder)
    legend_path = folder / "classes.json"
    if not legend_path.is_file():
        raise InputError(f"{legend_path}: not found (is {folder} a label image export?)")
    from ..io.results import read_instances_json

    out: dict[str, ImportedImage] = {}
    for inst_path in sorted((folder / "instances").iterdir()):
        if inst_path.suffix == ".json" or inst_path.name.startswith("."):
            continue
        stem = inst_path.stem
        instances = read_label_image(inst_path)
        semantic = read_label_image(folder / "semantic" / inst_path.name)
        records = read_instances_json(folder / "instances" / f"{stem}.json")
        out[stem] = ImportedImage(
            instances, {int(r["id"]): r["class"] for r in records}, semantic, {int(r["id"]): float(r["score"]) for r in records}
        )
    return out


# --------------------------------------------------------------------------
# PASCAL VOC


def _write_palette_png(path: Path, array: np.ndarray) -> Path:
    return write_semantic_png(path, array.astype(np.uint8), palette=True)


def export_voc(
    project: Project,
    out: str | os.PathLike[str],
    states: Sequence[str] = DEFAULT_STATES,
    source: str = "current",
    split: str = "trainval",
    copy_images: bool = True,
) -> ExportSummary:
    """Write a PASCAL VOC style segmentation folder under ``out``.

    ``SegmentationObject/<stem>.png``: instance index 1..K (at most 254,
    255 is VOC's "void"); ``SegmentationClass/<stem>.png``: class index + 1
    of every object's class; both palette PNGs with the VOC colour map.
    ``ImageSets/Segmentation/<split>.txt`` lists the stems,
    ``JPEGImages/<stem>.jpg`` holds the images (quality 95; as the project
    reads them, channels chosen) unless ``copy_images`` is False, and
    ``class_names.txt`` the names, ``background`` first.

    Raises
    ------
    ExportError
        An image with more than 254 instances (named, before anything is written).
    OutputError
        A file could not be written.
    """
    out = Path(out)
    previous = _previous_export(out)
    summary = ExportSummary(out)
    selected = []
    for name, _state, count in _selected(project, states, source, summary):
        if count > 254:
            raise ExportError(
                f"{name}: {count} instances do not fit VOC's 8-bit SegmentationObject "
                "(at most 254); export COCO or label TIFFs instead"
            )
        selected.append(name)
    stems = output_stems(selected)
    classes = project.classes
    for name in selected:
        masks = _load(project, name, source)
        if len(masks.records) > 254:
            raise ExportError(f"{name}: {len(masks.records)} instances do not fit VOC's SegmentationObject (at most 254)")
        stem = stems[name]
        lut = np.zeros(len(masks.records) + 1, np.uint8)
        for rec in masks.records:
            lut[rec["id"]] = classes.index(rec["class"]) + 1
        summary.files.append(_write_palette_png(out / "SegmentationObject" / f"{stem}.png", masks.labels))
        summary.files.append(_write_palette_png(out / "SegmentationClass" / f"{stem}.png", lut[masks.labels]))
        if copy_images:
            image = Image.fromarray(project.read_image(name))
            summary.files.append(
                atomic_write(out / "JPEGImages" / f"{stem}.jpg", lambda tmp, image=image: image.save(tmp, format="JPEG", quality=95))
            )
        summary.images += 1
        summary.instances += len(masks.records)
    listing = "".join(f"{stems[n]}\n" for n in selected)
    summary.files.append(_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", listing))
    summary.files.append(_write_text(out / "class_names.txt", "".join(f"{c}\n" for c in ["background", *classes])))
    _finish(out, previous, summary.files)
    return summary


def import_voc(folder: str | os.PathLike[str], split: str = "trainval") -> dict[str, ImportedImage]:
    """Read ``export_voc`` output back: stem -> instances, their classes, class map."""
    folder = Path(folder)
    names_path = folder / "class_names.txt"
    if not names_path.is_file():
        raise InputError(f"{names_path}: not found (is {folder} a VOC export?)")
    names = names_path.read_text(encoding="utf-8").splitlines()
    listing = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    stems = [s for s in listing.read_text(encoding="utf-8").splitlines() if s]
    out: dict[str, ImportedImage] = {}
    for stem in stems:
        objects = read_label_image(folder / "SegmentationObject" / f"{stem}.png")
        classes_map = read_label_image(folder / "SegmentationClass" / f"{stem}.png")
        classes = {}
        for k in np.unique(objects):
            if k in (0, 255):
                continue
            values = np.unique(classes_map[objects == k])
            if len(values) != 1:
                raise InputError(f"{folder}: {stem}: object {k} has pixels of several classes {values.tolist()}")
            classes[int(k)] = names[int(values[0])]
        out[stem] = ImportedImage(objects, classes, classes_map)
    return out
