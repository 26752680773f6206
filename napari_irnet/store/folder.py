"""Per-image corrections on disk: the corrected instance map and its state.

Each image gets a folder of its own:

- an image read from a file ``<dir>/<name>``: ``<dir>/napari-irnet/<name>/``
  (the corrections travel with the image folder);
- an image without a file (sample data, arrays from scripts): a folder named
  after a fingerprint of its pixels under the user data folder,
  ``<data>/corrections/<fingerprint>/`` (renaming the layer changes nothing;
  a folder of an older version, ``<name>-<fingerprint>``, is still found);
  ``<data>`` is ``$NAPARI_IRNET_DATA_DIR`` when set, else the platform's user
  data folder.

Inside a project, the project is the image's one store instead; both are
behind one store interface (:mod:`napari_irnet.store.image_store`:
:class:`~napari_irnet.store.image_store.FolderStore` for this folder).
What is stored and loaded is :class:`~napari_irnet.annotation.masks.Masks`.

The folder holds up to three files, each written atomically (temporary
file, then rename): ``instances.tif`` (uint16/uint32 instance ids),
``background.png`` (the annotator background: pixels a person cleared, 1;
absent when there are none) and ``corrections.json``::

    {"format": "napari-irnet-corrections", "version": 1,
     "image": {"name": ..., "shape": [H, W], "fingerprint": ..., "data_fingerprint": ...},
     "state": "new" | "proposed" | "corrected" | "accepted",
     "classes": [...], "checkpoint": ..., "params": {...}, "updated": ISO time,
     "labels_checksum": ...,
     "instances": [{"id", "class", "score", "state", "area", "bbox"}, ...]}

The map is written first and the JSON last, with a checksum of the map, so a
save interrupted between the two files is detected on load (the map is then
kept, and instances missing from the JSON count as edited).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.masks import InstanceInfo, Masks, instance_records
from ..io.files import InputError, write_json
from ..io.images import read_label_image
from ..io.results import write_instance_tiff, write_semantic_png
from .fingerprints import image_fingerprint

__all__ = [
    "corrections_folder",
    "delete_corrections",
    "load_corrections",
    "save_corrections",
    "user_data_dir",
]

FORMAT = "napari-irnet-corrections"
VERSION = 1
LABELS_FILE = "instances.tif"
BACKGROUND_FILE = "background.png"
STATE_FILE = "corrections.json"


def user_data_dir() -> Path:
    """``$NAPARI_IRNET_DATA_DIR``, else the platform's user data folder for napari-irnet."""
    env = os.environ.get("NAPARI_IRNET_DATA_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_data_dir("napari-irnet", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs comes with napari
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return Path(base) / "napari-irnet"


def _labels_checksum(labels: np.ndarray) -> str:
    a = np.ascontiguousarray(labels, dtype=np.int64)
    return hashlib.sha1(a.tobytes()).hexdigest()[:16]


def corrections_folder(
    image_name: str,
    image: np.ndarray | None = None,
    image_path: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    fingerprint: str | None = None,
) -> Path:
    """Where the corrections of one image live (see the module docstring).

    Parameters
    ----------
    image_name
        Display name of the image (used for images without a file).
    image
        The pixels; needed when there is no ``image_path``.
    image_path
        The image file, when the image was read from one.
    root
        Folder for images without a file (default :func:`user_data_dir`).
    fingerprint
        :func:`image_fingerprint` of ``image`` when already known.
    """
    if image_path is not None:
        p = Path(image_path)
        return p.parent / "napari-irnet" / p.name
    if image is None and fingerprint is None:
        raise ValueError("an image without a file needs its pixels to find its corrections")
    base = (Path(root) if root is not None else user_data_dir()) / "corrections"
    fingerprint = fingerprint or image_fingerprint(image)
    folder = base / fingerprint
    if not folder.is_dir() and base.is_dir():
        older = sorted(base.glob(f"*-{fingerprint}"))  # named after the layer by earlier versions
        if older:
            return older[0]
    return folder


def save_corrections(folder: str | os.PathLike[str], masks: Masks) -> Path:
    """Write ``masks`` into ``folder`` (created if needed), each file atomically.

    The records are made afresh from the instance map and the table
    (:func:`~napari_irnet.annotation.masks.instance_records`); ``masks.updated``
    is set to the time of the save.

    Returns the folder. Raises :class:`~napari_irnet.io.files.OutputError`
    when a file cannot be written; files already there stay intact then.
    """
    folder = Path(folder)
    labels = np.asarray(masks.labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    masks.updated = datetime.now(UTC).isoformat(timespec="seconds")
    write_instance_tiff(folder / LABELS_FILE, labels)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "image": {
            "name": masks.image_name,
            "shape": list(labels.shape),
            "fingerprint": masks.fingerprint,
            "data_fingerprint": masks.data_fingerprint,
        },
        "state": masks.state,
        "classes": list(masks.classes),
        "checkpoint": masks.checkpoint,
        "params": masks.params,
        "updated": masks.updated,
        "labels_checksum": _labels_checksum(labels),
        "instances": [_stored_record(r) for r in instance_records(labels, masks.table)],
    }
    bg = masks.background
    if bg is not None and np.asarray(bg).any():
        bg = np.asarray(bg, bool)
        if bg.shape != labels.shape:
            raise ValueError(f"background {bg.shape} and labels {labels.shape} differ in shape")
        write_semantic_png(folder / BACKGROUND_FILE, bg.astype(np.uint8), palette=False)
    else:
        (folder / BACKGROUND_FILE).unlink(missing_ok=True)
    write_json(folder / STATE_FILE, doc)
    return folder


def _stored_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record in the file's key order (id, class, score, state, area, bbox)."""
    return {k: record[k] for k in ("id", "class", "score", "state", "area", "bbox")}


def load_corrections(
    folder: str | os.PathLike[str],
    image: np.ndarray | None = None,
    *,
    shape: tuple[int, int] | None = None,
    fingerprints: tuple[str, ...] = (),
) -> Masks | None:
    """Read the corrections in ``folder`` as :class:`~napari_irnet.annotation.masks.Masks`; None when there are none.

    Parameters
    ----------
    image
        When given, the stored corrections must belong to it (same size, and
        the same pixels when a fingerprint was stored), else InputError.
    shape, fingerprints
        The same check without the pixels: the image's (H, W), and the
        fingerprints it may have been stored under (any one matches).

    Raises
    ------
    InputError
        Unreadable or foreign files, or corrections of another image; the
        message names the file.
    """
    folder = Path(folder)
    state_path, labels_path = folder / STATE_FILE, folder / LABELS_FILE
    if not state_path.is_file() and not labels_path.is_file():
        return None
    if not state_path.is_file():
        raise InputError(f"{state_path}: missing (the save of {labels_path} was interrupted?)")
    try:
        doc = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{state_path}: not readable corrections ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{state_path}: not a napari-irnet corrections file")
    if int(doc.get("version", 0)) > VERSION:
        raise InputError(f"{state_path}: version {doc.get('version')} is newer than this napari-irnet reads ({VERSION})")
    labels = read_label_image(labels_path)
    meta = doc.get("image", {})
    if image is not None:
        shape = tuple(np.asarray(image).shape[:2])
        fingerprints = (image_fingerprint(image),)
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise InputError(f"{labels_path}: corrections are {labels.shape[0]}x{labels.shape[1]} but the image is {shape[0]}x{shape[1]}")
    stored = {str(meta.get(k) or "") for k in ("fingerprint", "data_fingerprint")} - {""}
    if stored and fingerprints and not stored & set(fingerprints):
        raise InputError(f"{state_path}: these corrections belong to another version of the image (its pixels changed)")
    background = None
    if (folder / BACKGROUND_FILE).is_file():
        background = read_label_image(folder / BACKGROUND_FILE) > 0
        if background.shape != labels.shape:
            raise InputError(f"{folder / BACKGROUND_FILE}: {background.shape[0]}x{background.shape[1]}, the corrections {labels.shape[0]}x{labels.shape[1]}")
    if doc.get("labels_checksum") != _labels_checksum(labels):
        warnings.warn(
            f"{labels_path}: newer than {state_path.name} (a save was interrupted); "
            "instances not described there count as edited",
            UserWarning,
            stacklevel=2,
        )
    try:
        records = []
        for rec in doc.get("instances", []):
            info = InstanceInfo(str(rec["class"]), float(rec["score"]), str(rec["state"]))  # checks the state
            records.append({**rec, "id": int(rec["id"]), "class": info.class_name, "score": info.score, "state": info.state})
        masks = Masks(
            labels=labels,
            records=records,
            state=str(doc.get("state", "corrected")),
            image_name=str(meta.get("name", "")),
            fingerprint=str(meta.get("fingerprint", "")),
            data_fingerprint=str(meta.get("data_fingerprint", "")),
            classes=[str(c) for c in doc.get("classes", [])],
            checkpoint=doc.get("checkpoint"),
            params=doc.get("params"),
            updated=str(doc.get("updated", "")),
            background=background,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{state_path}: malformed corrections ({exc})") from exc
    return masks


def delete_corrections(folder: str | os.PathLike[str]) -> None:
    """Remove the stored corrections of one image (the folder itself too when empty)."""
    folder = Path(folder)
    for name in (STATE_FILE, LABELS_FILE, BACKGROUND_FILE):
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def summarise(masks: Masks) -> dict[str, int]:
    """Counts of instances per state (for status lines)."""
    present = set(int(i) for i in np.unique(masks.labels) if i)
    counts = {s: 0 for s in ("proposed", "edited", "accepted")}
    table = masks.table
    for i in present:
        info = table.get(i)
        counts[info.state if info else "edited"] += 1
    return counts
