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

Inside a project, the project is the image's one store instead
(:class:`~napari_irnet.store.project.ProjectImageStore`); both stores offer
the same ``load`` / ``save`` / ``clear`` (:class:`FolderStore` here).

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.edits import InstanceInfo, instance_records
from ..io.files import InputError, write_json
from ..io.images import read_label_image
from ..io.results import write_instance_tiff, write_semantic_png

__all__ = [
    "IMAGE_STATES",
    "Corrections",
    "FolderStore",
    "corrections_folder",
    "delete_corrections",
    "image_fingerprint",
    "load_corrections",
    "save_corrections",
    "user_data_dir",
]

FORMAT = "napari-irnet-corrections"
VERSION = 1
#: states of one image, in the order of the work on it
IMAGE_STATES = ("new", "proposed", "corrected", "accepted")
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


def image_fingerprint(image: np.ndarray) -> str:
    """A short hash of an image's shape, type and pixels (16 hex digits)."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha1(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


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


@dataclass
class Corrections:
    """Everything stored for one image.

    Attributes
    ----------
    labels : (H, W) int32
        The instance map as the person left it.
    instances : dict id -> InstanceInfo
        Class, score and state of each instance.
    state : str
        Image state, one of :data:`IMAGE_STATES`.
    image_name, fingerprint
        Which image (fingerprint of its pixels as the networks saw them, 8-bit
        RGB as :func:`~napari_irnet.io.images.read_image` gives them; "" when unknown).
    classes : list of str
        The image-level classes used.
    checkpoint : str or None
        Checkpoint that produced the proposals.
    params : dict or None
        ``Params.to_dict()`` of the proposals.
    updated : str
        ISO time of the save (set by :func:`save_corrections`).
    background : (H, W) bool or None
        The annotator background: pixels a person cleared (deleted or erased);
        re-runs never fill them and fine-tuning takes them as background.
    """

    labels: np.ndarray
    instances: dict[int, InstanceInfo]
    state: str = "corrected"
    image_name: str = ""
    fingerprint: str = ""
    classes: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    params: dict[str, Any] | None = None
    updated: str = ""
    background: np.ndarray | None = None
    #: fingerprint of the image layer's own data (any type; stable when only the display changes)
    data_fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.state not in IMAGE_STATES:
            raise ValueError(f"image state must be one of {IMAGE_STATES}, got {self.state!r}")

    @property
    def instance_classes(self) -> dict[int, str]:
        """``{instance id: class name}`` of the instances that have a class."""
        return {int(i): info.class_name for i, info in self.instances.items() if info.class_name}


def save_corrections(folder: str | os.PathLike[str], corrections: Corrections) -> Path:
    """Write ``corrections`` into ``folder`` (created if needed), each file atomically.

    Returns the folder. Raises :class:`~napari_irnet.io.files.OutputError`
    when a file cannot be written; files already there stay intact then.
    """
    folder = Path(folder)
    labels = np.asarray(corrections.labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    corrections.updated = datetime.now(UTC).isoformat(timespec="seconds")
    write_instance_tiff(folder / LABELS_FILE, labels)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "image": {
            "name": corrections.image_name,
            "shape": list(labels.shape),
            "fingerprint": corrections.fingerprint,
            "data_fingerprint": corrections.data_fingerprint,
        },
        "state": corrections.state,
        "classes": list(corrections.classes),
        "checkpoint": corrections.checkpoint,
        "params": corrections.params,
        "updated": corrections.updated,
        "labels_checksum": _labels_checksum(labels),
        "instances": [_stored_record(r) for r in instance_records(labels, corrections.instances)],
    }
    bg = corrections.background
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
) -> Corrections | None:
    """Read the corrections in ``folder``; None when there are none.

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
    instances: dict[int, InstanceInfo] = {}
    try:
        for rec in doc.get("instances", []):
            instances[int(rec["id"])] = InstanceInfo(str(rec["class"]), float(rec["score"]), str(rec["state"]))
        corrections = Corrections(
            labels=labels,
            instances=instances,
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
    return corrections


def delete_corrections(folder: str | os.PathLike[str]) -> None:
    """Remove the stored corrections of one image (the folder itself too when empty)."""
    folder = Path(folder)
    for name in (STATE_FILE, LABELS_FILE, BACKGROUND_FILE):
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def summarise(corrections: Corrections) -> dict[str, int]:
    """Counts of instances per state (for status lines)."""
    present = set(int(i) for i in np.unique(corrections.labels) if i)
    counts = {s: 0 for s in ("proposed", "edited", "accepted")}
    for i in present:
        info = corrections.instances.get(i)
        counts[info.state if info else "edited"] += 1
    return counts



@dataclass
class FolderStore:
    """The corrections of one image in its own folder (an image outside a project).

    ``shape`` and ``fingerprints`` check that stored corrections belong to
    the image (see :func:`load_corrections`).
    """

    folder: Path
    shape: tuple[int, int] | None = None
    fingerprints: tuple[str, ...] = ()

    def __str__(self) -> str:
        return str(self.folder)

    def load(self) -> Corrections | None:
        """The stored corrections, None when there are none (InputError when they are unusable)."""
        return load_corrections(self.folder, shape=self.shape, fingerprints=self.fingerprints)

    def save(self, corrections: Corrections) -> None:
        """Store the corrections (OutputError when that fails; the old files stay)."""
        save_corrections(self.folder, corrections)

    def clear(self) -> None:
        """Nothing left to store (a pure proposal): remove the files."""
        delete_corrections(self.folder)

    def save_proposal(self, corrections: Corrections, *_, **__) -> bool:
        """A proposal is not stored outside a project (a Run makes it again)."""
        return False

    def stamp(self) -> tuple[int, int] | None:
        """(mtime in ns, size) of the state file, to notice a change; None when there is none."""
        return file_stamp(self.folder / STATE_FILE)


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file; None when it does not exist."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
