"""The project store: a folder of images, their labels, results and corrections.

A project is a folder::

    project.json                 manifest: format version, classes, parameters,
                                 checkpoint in use, image folder, channels
    images.json                  the image list: name, image-level labels, size
    items/<name>/state.json      one image's state (new / proposed / corrected /
                                 accepted), which result and correction are current
    items/<name>/result-000001/      the model's proposal, and
    items/<name>/correction-000001/  the annotator's masks, each holding
        instances.tif   uint16/uint32 instance ids (0 = background)
        instances.json  one record per instance: id, class, score, bbox, area
        semantic.png    class index + 1 per pixel (0 = background), VOC palette

``<name>`` is the image's file name with unsafe characters quoted (see
:func:`item_folder_name`). An image without ``state.json`` is *new*.

Consistency. Every file is written through :func:`~napari_irnet.io.files.atomic_path`
(a temporary file, then a rename). Masks are never overwritten in place: a
new result or correction goes to a new revision folder, and only once all its
files are complete does the image's ``state.json`` (one atomic rename) point
to it; older revisions are deleted afterwards. A process killed at any moment
therefore leaves every image either as it was or with its new revision
complete; at worst an unreferenced revision folder stays behind, which the
next write of that image (or :meth:`Project.cleanup`) removes. A failed write
(disk full, read-only folder) raises :class:`~napari_irnet.io.files.OutputError`
and leaves the previous state as it was.

States and who may change them:

- ``new``: nothing yet (or the last prediction failed; ``error`` says why).
- ``proposed``: the model's result is current; batch prediction may replace it.
- ``corrected``: the annotator saved masks (:meth:`Project.save_correction`);
  prediction never touches it again.
- ``accepted``: the annotator accepted the masks (:meth:`Project.accept`).

An image *needs prediction* (:meth:`Project.needs_prediction`) when it is
``new``, or ``proposed`` by another model (checkpoint contents or parameters
changed) or for other image-level labels than it has now.

Pure numpy / json: importing this module never imports torch, napari or Qt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.masks import IMAGE_STATES, Masks, instance_boxes
from ..io.files import MAX_NAMES_SHOWN, InputError, OutputError, atomic_write, name_list, read_json, write_json
from ..io.images import DEFAULT_MAX_PIXELS, check_pixels, image_size, list_images, read_image, read_label_image
from ..io.labels import ImageLabels, read_labels
from ..io.results import read_instances_json, write_instance_tiff, write_instances_json, write_semantic_png
from ..params import Params
from .folder import image_fingerprint

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMAT_VERSION",
    "ImageEntry",
    "ItemState",
    "Project",
    "ProjectError",
    "create_project",
    "file_fingerprint",
    "image_size",
    "item_folder_name",
    "open_project",
]

PROJECT_FORMAT = "napari-irnet-project"
#: the project layout this version writes; older ones are upgraded on opening
FORMAT_VERSION = 1
MANIFEST = "project.json"
IMAGE_TABLE = "images.json"
ITEMS = "items"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
_MASK_FILES = ("instances.tif", "instances.json", "semantic.png")
#: what the store writes into an item folder besides state.json: revision folders and temporary files
_REVISION = re.compile(r"(result|correction)-[0-9]{6,}")
_TEMP_FILE = re.compile(r"\..+\.[0-9a-f]+\.tmp(\.[A-Za-z0-9]+)?")
#: a correction's annotator background (1 where the annotator cleared pixels)
BACKGROUND_FILE = "background.png"

#: upgrade steps: ``_UPGRADES[v](root, manifest)`` turns a format-``v`` project
#: into format ``v + 1`` and returns the new manifest (without writing it).
#: Steps must be idempotent: a step interrupted part way is run again.
_UPGRADES: dict[int, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {}


class ProjectError(ValueError):
    """A project folder that cannot be used as asked; the message names the file."""


# --------------------------------------------------------------------------
# plain records


@dataclass
class ImageEntry:
    """One image of the project.

    Attributes
    ----------
    name
        File name inside the project's image folder (also the image's key).
    labels
        Image-level class names, or ``None`` when the image has no labels
        (then the classifier picks the classes at prediction time).
    height, width
        Size in pixels, recorded when the image was added.
    """

    name: str
    labels: list[str] | None
    height: int
    width: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": self.labels, "height": self.height, "width": self.width}


@dataclass
class ItemState:
    """The stored state of one image (``items/<name>/state.json``).

    ``result`` and ``correction`` are ``None`` or a dict with ``rev`` (the
    revision folder number), ``time`` and ``instances`` (count); a result
    also has ``model`` (see :meth:`Project.model_key`) and ``labels`` (the
    image-level labels it was predicted for, ``None`` if the classifier
    chose them) and ``classes`` (the classes used). ``error`` is ``None`` or
    ``{"message", "time"}`` from the last failed prediction. Results and
    corrections also record ``image``: the fingerprint of the pixels they
    were made for, with the file's size and modification time. ``replaced``
    lists the results and corrections of earlier contents of the image file
    (kept on disk, no longer used): ``{"time", "result", "correction"}``.
    """

    state: str = "new"
    result: dict[str, Any] | None = None
    correction: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    replaced: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def image_changed(self) -> bool:
        """The image file changed since its masks were made, and it has none for its new pixels yet."""
        return bool(self.replaced) and self.result is None and self.correction is None

    def to_dict(self) -> dict[str, Any]:
        out = {"state": self.state, "result": self.result, "correction": self.correction, "error": self.error}
        if self.replaced:
            out["replaced"] = self.replaced
        return out


# --------------------------------------------------------------------------
# helpers


def timestamp() -> str:
    """The local time, as the store writes it (``2024-05-01T12:00:00+0200``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _read_json(path: Path, what: str) -> Any:
    """A store file's JSON; a damaged project's file is a :class:`ProjectError` naming it."""
    return read_json(path, what, ProjectError, "{what} is not valid JSON (line {line}, column {column}: {msg})")


def item_folder_name(name: str) -> str:
    """The folder name of an image's items: its name with ``/``, ``%`` etc. quoted."""
    return urllib.parse.quote(name, safe=" .-_+,()[]@=")


def _store_path(target: Path, root: Path) -> str:
    """``target`` relative to ``root`` (so a moved project keeps working), POSIX style."""
    try:
        return Path(os.path.relpath(target.resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return target.resolve().as_posix()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HASH_CACHE: dict[tuple[str, int, int], str] = {}
#: pixel fingerprints of image files: (path, (size, mtime_ns), channels) -> fingerprint
_PIXEL_FINGERPRINTS: dict[tuple[str, tuple[int, int], tuple[int, ...] | None], str] = {}


def _file_signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's contents (cached by path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = _sha256(p)
    return _HASH_CACHE[key]


def _revisions(st: ItemState, replaced: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(kind, info) of the current result and correction, with ``replaced`` also the set-aside ones."""
    parts = [("result", st.result), ("correction", st.correction)]
    if replaced:
        parts += [(kind, old.get(kind)) for old in st.replaced for kind in ("result", "correction")]
    return [(kind, part) for kind, part in parts if part]


# --------------------------------------------------------------------------
# the project


class Project:
    """An open project folder. Use :func:`create_project` or :func:`open_project`.

    The manifest and the image table are read when the project is opened;
    per-image states are read from disk each time they are asked for, so a
    command line run and a viewer can work on one project.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], images: list[ImageEntry]):
        self.root = root
        self.manifest = manifest
        self.images = images
        self._index = {e.name: e for e in images}

    # ------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return f"Project({str(self.root)!r}, {len(self.images)} images, classes={self.classes})"

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def params(self) -> Params:
        return Params.from_dict(self.manifest["params"])

    @property
    def channels(self) -> tuple[int, ...] | None:
        ch = self.manifest.get("channels")
        return None if ch is None else tuple(int(c) for c in ch)

    @property
    def max_pixels(self) -> int:
        return int(self.manifest.get("max_pixels", DEFAULT_MAX_PIXELS))

    @property
    def image_dir(self) -> Path:
        return (self.root / self.manifest["image_dir"]).resolve()

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.images]

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint in use, or None when none is set."""
        ckpt = self.manifest.get("checkpoint")
        if not ckpt:
            return None
        return (self.root / ckpt["path"]).resolve()

    def entry(self, name: str) -> ImageEntry:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"{self.root}: no image named {name!r} in this project") from None

    def image_path(self, name: str) -> Path:
        return self.image_dir / self.entry(name).name

    def item_dir(self, name: str) -> Path:
        self.entry(name)
        return self.root / ITEMS / item_folder_name(name)

    def read_image(self, name: str) -> np.ndarray:
        """The image as (H, W, 3) uint8, with the project's channel choice and size limit.

        Raises
        ------
        InputError
            Unreadable image, over ``max_pixels``, or a size other than the
            one recorded when it was added.
        """
        entry = self.entry(name)
        path = self.image_dir / entry.name
        size = image_size(path)
        check_pixels(path, size, self.max_pixels, hint="raise the project's limit (init --max-pixels)")
        with contextlib.suppress(OSError):
            sig = _file_signature(path)
        image = read_image(path, self.channels, max_pixels=self.max_pixels)
        if image.shape[:2] != (entry.height, entry.width):
            raise InputError(
                f"{path}: image is {image.shape[1]} x {image.shape[0]} now but was "
                f"{entry.width} x {entry.height} when it was added to the project {self.root}"
            )
        with contextlib.suppress(OSError, UnboundLocalError):
            if _file_signature(path) == sig:  # the file did not change while it was read
                _PIXEL_FINGERPRINTS[(str(path.resolve()), sig, self.channels)] = image_fingerprint(image)
        return image

    # ------------------------------------------------------------ manifest
    def _write_manifest(self) -> None:
        self.manifest["modified"] = timestamp()
        write_json(self.root / MANIFEST, self.manifest)

    def _write_images(self) -> None:
        write_json(self.root / IMAGE_TABLE, {"images": [e.to_dict() for e in self.images]})

    def set_params(self, params: Params) -> None:
        """Save new pipeline parameters (``proposed`` results made with others become stale)."""
        params.validate()
        old = self.manifest["params"]
        self.manifest["params"] = params.to_dict()
        try:
            self._write_manifest()
        except BaseException:
            self.manifest["params"] = old
            raise

    def set_checkpoint(self, path: str | os.PathLike[str] | None) -> None:
        """Use this checkpoint from now on (``None``: none). Its classes are not checked here."""
        old = self.manifest.get("checkpoint")
        if path is None:
            self.manifest["checkpoint"] = None
        else:
            p = Path(path)
            if not p.is_file():
                raise ProjectError(f"{p}: checkpoint file not found")
            self.manifest["checkpoint"] = {"path": _store_path(p, self.root)}
        try:
            self._write_manifest()
        except BaseException:
            self.manifest["checkpoint"] = old
            raise

    def set_labels(self, name: str, labels: Sequence[str] | None) -> None:
        """Change an image's image-level labels (its proposal becomes stale)."""
        entry = self.entry(name)
        new = None if labels is None else self._check_labels(name, labels)
        old = entry.labels
        entry.labels = new
        try:
            self._write_images()
        except BaseException:
            entry.labels = old
            raise

    def _check_labels(self, name: str, labels: Sequence[str]) -> list[str]:
        unknown = [c for c in labels if c not in self.classes]
        if unknown:
            raise ValueError(
                f"{name}: unknown class {unknown[0]!r}; this project's classes: {name_list(self.classes, 50)}"
            )
        return list(dict.fromkeys(labels))

    def model_key(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        params: Params | None = None,
        fingerprint: str | None = None,
    ) -> str | None:
        """What identifies a result's model: the checkpoint's contents and the parameters.

        ``fingerprint`` stands for the checkpoint's contents when the model
        is not (or not yet) a file, e.g. from :func:`~napari_irnet.store.batch.model_fingerprint`.
        ``None`` when no fingerprint, no checkpoint is given nor set, or its file is missing.
        """
        if fingerprint is None:
            path = Path(checkpoint) if checkpoint is not None else self.checkpoint_path
            if path is None or not path.is_file():
                return None
            fingerprint = file_fingerprint(path)
        params = params or self.params
        phash = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()
        return f"{fingerprint[:16]}-{phash[:8]}"

    # ------------------------------------------------------------ states
    def state(self, name: str) -> ItemState:
        """The stored state of one image (``new`` when nothing was stored)."""
        path = self.item_dir(name) / STATE_FILE
        if not path.is_file():
            return ItemState()
        data = _read_json(path, "image state file")
        if not isinstance(data, dict) or data.get("state") not in IMAGE_STATES:
            raise ProjectError(f"{path}: not a valid image state file (state must be one of {', '.join(IMAGE_STATES)})")
        replaced = data.get("replaced") or []
        st = ItemState(data["state"], data.get("result"), data.get("correction"), data.get("error"), list(replaced))
        return self._set_aside_stale_masks(name, st)

    # ------------------------------------------------------------ image contents
    def image_fingerprint(self, name: str) -> dict[str, Any] | None:
        """What identifies the image's current pixels: ``{"fingerprint", "size", "mtime_ns"}``.

        The fingerprint is :func:`~napari_irnet.store.folder.image_fingerprint`
        of the pixels as :meth:`read_image` gives them (decoded once per file
        version and remembered); ``size`` and ``mtime_ns`` are the file's, so
        an unchanged file is recognised without decoding it. None when the
        image cannot be read.
        """
        path = self.image_path(name)
        try:
            sig = _file_signature(path)
            key = (str(path.resolve()), sig, self.channels)
            if key not in _PIXEL_FINGERPRINTS:
                self.read_image(name)  # remembers the fingerprint
            fingerprint = _PIXEL_FINGERPRINTS[key]
        except (OSError, InputError, KeyError):
            return None
        return {"fingerprint": fingerprint, "size": sig[0], "mtime_ns": sig[1]}

    def _same_image(self, name: str, made_for: dict[str, Any]) -> bool:
        """Whether the image file still holds the pixels a result or correction was made for."""
        try:
            if _file_signature(self.image_path(name)) == (made_for.get("size"), made_for.get("mtime_ns")):
                return True
        except OSError:
            return True  # a missing image file says nothing about its masks
        now = self.image_fingerprint(name)
        return now is None or now["fingerprint"] == made_for.get("fingerprint")

    def _set_aside_stale_masks(self, name: str, st: ItemState) -> ItemState:
        """Move a result or correction made for other pixels than the image file holds now to ``replaced``.

        The image counts as new again (or keeps what still fits it); the
        masks stay on disk, referenced from ``replaced``, and the state file
        says so at its next write.
        """
        stale = {kind: part for kind, part in _revisions(st) if "image" in part and not self._same_image(name, part["image"])}
        if not stale:
            return st
        st.replaced = [*st.replaced, {"time": timestamp(), "result": stale.get("result"), "correction": stale.get("correction")}]
        if "result" in stale:
            st.result = None
        if "correction" in stale:
            st.correction = None
        if st.correction is None:
            st.state = "proposed" if st.result is not None else "new"
        return st

    def states(self) -> dict[str, ItemState]:
        """Every image's state, in project order."""
        return {name: self.state(name) for name in self.names}

    def counts(self) -> dict[str, int]:
        """How many images are in each state."""
        out = dict.fromkeys(IMAGE_STATES, 0)
        for st in self.states().values():
            out[st.state] += 1
        return out

    def needs_prediction(self, name: str, model_key: str | None = None, state: ItemState | None = None) -> bool:
        """True for a ``new`` image, or a ``proposed`` one made by another model or for other labels.

        ``model_key`` is the key of the model that would predict (see
        :meth:`model_key`); ``None`` only counts ``new`` images.
        """
        st = state if state is not None else self.state(name)
        if st.state == "new":
            return True
        if st.state != "proposed" or model_key is None or st.result is None:
            return False
        return st.result.get("model") != model_key or st.result.get("labels") != self.entry(name).labels

    def pending(self, model_key: str | None = None) -> list[str]:
        """Names of the images that need prediction, in project order."""
        return [n for n, st in self.states().items() if self.needs_prediction(n, model_key, st)]

    def _write_state(self, name: str, st: ItemState) -> None:
        write_json(self.item_dir(name) / STATE_FILE, {"name": name, **st.to_dict()})

    def _new_rev(self, name: str, kind: str, st: ItemState) -> tuple[int, Path]:
        used = [0]
        for part in (st.result, st.correction):
            if part:
                used.append(int(part["rev"]))
        folder = self.item_dir(name)
        if folder.is_dir():
            for p in folder.iterdir():
                prefix, _, number = p.name.partition("-")
                if prefix in ("result", "correction") and number.isdigit():
                    used.append(int(number))
        rev = max(used) + 1
        return rev, folder / f"{kind}-{rev:06d}"

    def _write_masks(self, target: Path, masks: Masks) -> None:
        target.mkdir(parents=True, exist_ok=False)
        write_instance_tiff(target / "instances.tif", masks.labels)
        write_instances_json(target / "instances.json", masks.records)
        write_semantic_png(target / "semantic.png", masks.semantic)
        if masks.background is not None and masks.background.any():
            write_semantic_png(target / BACKGROUND_FILE, masks.background.astype(np.uint8), palette=False)

    def _commit(self, name: str, kind: str, masks: Masks, update: Callable[[ItemState, dict[str, Any]], bool]) -> bool:
        """Write ``masks`` as a new revision, then let ``update`` change the state and save it.

        ``update(state, info)`` gets the freshly read state and the new
        revision's info; it returns False to drop the revision instead.
        """
        st = self.state(name)
        rev, target = self._new_rev(name, kind, st)
        try:
            self._write_masks(target, masks)
        except FileExistsError as exc:  # a concurrent writer took this number
            raise ProjectError(f"{target}: revision folder exists already; is another process writing {name!r}?") from exc
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        info = {"rev": rev, "time": timestamp(), "instances": len(masks.records)}
        made_for = self.image_fingerprint(name)
        if made_for is not None:  # the pixels these masks belong to: a replaced image file makes them stale
            info["image"] = made_for
        try:
            st = self.state(name)  # re-read: a viewer may have saved meanwhile
            if not update(st, info):
                shutil.rmtree(target, ignore_errors=True)
                return False
            self._write_state(name, st)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        self._collect_garbage(name, st)
        return True

    def _collect_garbage(self, name: str, st: ItemState | None = None) -> int:
        """Delete what the store wrote and no longer references: revision folders, temporary files.

        Only entries named as the store names them (``result-NNNNNN``,
        ``correction-NNNNNN``, :func:`~napari_irnet.io.files.atomic_path`'s
        ``.<name>.<hex>.tmp...``) are deleted, never through a symbolic link:
        an item folder that is a link, or an entry that is one, is left alone,
        and so is anything else in the folder.
        """
        folder = self.item_dir(name)
        if folder.is_symlink() or folder.parent.is_symlink() or not folder.is_dir():
            return 0
        st = st or self.state(name)
        keep = {f"{kind}-{int(part['rev']):06d}" for kind, part in _revisions(st, replaced=True)}
        removed = 0
        for p in folder.iterdir():
            if p.name in keep or p.is_symlink():
                continue
            own_revision = _REVISION.fullmatch(p.name) is not None and p.is_dir()
            own_temp = _TEMP_FILE.fullmatch(p.name) is not None and p.is_file()
            if not (own_revision or own_temp):
                continue
            with contextlib.suppress(OSError):
                if own_revision:
                    shutil.rmtree(p)  # does not follow links inside
                else:
                    p.unlink()
                removed += 1
        return removed

    def cleanup(self) -> int:
        """Remove leftovers of interrupted writes in every image folder; returns how many."""
        items = self.root / ITEMS
        if not items.is_dir():
            return 0
        known = {item_folder_name(n): n for n in self.names}
        return sum(self._collect_garbage(known[p.name]) for p in items.iterdir() if p.name in known)

    # ------------------------------------------------------------ writing masks
    def save_result(
        self,
        name: str,
        instances: np.ndarray,
        records: list[dict[str, Any]],
        semantic: np.ndarray,
        model_key: str | None,
        labels_used: Sequence[str] | None,
    ) -> bool:
        """Store the model's proposal for an image and mark it ``proposed``.

        Parameters
        ----------
        instances : (H, W) int
            Instance ids, 0 background.
        records : list of dict
            Per instance: ``id``, ``class`` (a project class name), ``score``;
            ``bbox`` and ``area`` are recomputed from ``instances``.
        semantic : (H, W) int
            Project class index + 1, 0 background.
        model_key
            :meth:`model_key` of the model that made it.
        labels_used
            The image-level labels the prediction was made for (the image's
            table labels, ``None`` when the classifier chose).

        Returns
        -------
        bool
            False (and nothing changed) when the image is ``corrected`` or
            ``accepted``: an annotator's work is never replaced by a prediction.
        """
        st = self.state(name)
        if st.state in ("corrected", "accepted"):
            return False
        masks = self._masks(name, instances, records, semantic, source="result", default_score=None)
        classes = sorted({r["class"] for r in masks.records}, key=self.classes.index)

        def update(cur: ItemState, info: dict[str, Any]) -> bool:
            if cur.state in ("corrected", "accepted"):
                return False
            info.update(model=model_key, labels=None if labels_used is None else list(labels_used), classes=classes)
            cur.state, cur.result, cur.error = "proposed", info, None
            return True

        return self._commit(name, "result", masks, update)

    def record_error(self, name: str, message: str) -> None:
        """Remember why an image could not be predicted (its state does not change)."""
        st = self.state(name)
        st.error = {"message": str(message), "time": timestamp()}
        self._write_state(name, st)

    def save_correction(
        self,
        name: str,
        instances: np.ndarray,
        records: list[dict[str, Any]],
        semantic: np.ndarray | None = None,
        state: str = "corrected",
        background: np.ndarray | None = None,
    ) -> None:
        """Store the annotator's masks for an image; the way every edit is saved.

        Parameters
        ----------
        instances : (H, W) int
            Instance ids, 0 background (ids need not be contiguous).
        records : list of dict
            One per instance id in ``instances``: ``id`` and ``class`` (a
            project class name; or ``class_id``, an index into the project's
            classes); ``score`` is kept when given (default 1.0); other keys
            are kept too. ``bbox`` and ``area`` are recomputed.
        semantic : (H, W) int, optional
            Class index + 1; by default derived from the instances.
        state
            ``"corrected"`` (default) or ``"accepted"``.
        background : (H, W) bool, optional
            The annotator background: pixels the annotator cleared (stored
            with the correction, honoured by every later prediction).

        Raises
        ------
        ValueError
            A bad state, an instance without a record, an unknown class, a
            map of the wrong size.
        OutputError
            The masks could not be written; the previous correction is kept.
        """
        if state not in ("corrected", "accepted"):
            raise ValueError(f"state must be 'corrected' or 'accepted', got {state!r}")
        masks = self._masks(name, instances, records, semantic, source="correction", default_score=1.0)
        if background is not None:
            bg = np.asarray(background, bool)
            if bg.shape != masks.labels.shape:
                raise ValueError(f"{name}: background has shape {bg.shape}, the image is {masks.labels.shape}")
            masks.background = bg & (masks.labels == 0)

        def update(cur: ItemState, info: dict[str, Any]) -> bool:
            cur.state, cur.correction = state, info
            return True

        self._commit(name, "correction", masks, update)

    def accept(self, name: str) -> None:
        """Accept an image's current masks (a proposal is copied to a correction first)."""
        st = self.state(name)
        if st.state == "accepted":
            return
        if st.correction is None:
            if st.result is None:
                raise ProjectError(f"{name}: nothing to accept yet (state {st.state!r}); predict or correct it first")
            masks = self.load_masks(name, "result")
            self.save_correction(name, masks.labels, masks.records, masks.semantic, state="accepted", background=masks.background)
            return
        st.state = "accepted"
        self._write_state(name, st)

    def reopen(self, name: str) -> None:
        """Take back an acceptance: ``accepted`` becomes ``corrected``."""
        st = self.state(name)
        if st.state != "accepted":
            raise ProjectError(f"{name}: only an accepted image can be reopened (state {st.state!r})")
        st.state = "corrected"
        self._write_state(name, st)

    def _masks(
        self,
        name: str,
        instances: np.ndarray,
        records: list[dict[str, Any]],
        semantic: np.ndarray | None,
        source: str,
        default_score: float | None,
    ) -> Masks:
        entry = self.entry(name)
        inst = np.asarray(instances)
        if inst.shape != (entry.height, entry.width):
            raise ValueError(f"{name}: instance map has shape {inst.shape}, the image is {(entry.height, entry.width)}")
        if not np.issubdtype(inst.dtype, np.integer) or (inst.size and inst.min() < 0):
            raise ValueError(f"{name}: instance map must hold non-negative integers")
        inst = inst.astype(np.int32 if inst.max(initial=0) < 2**31 else np.int64)
        boxes = instance_boxes(inst)
        by_id: dict[int, dict[str, Any]] = {}
        for r in records:
            by_id[int(r["id"])] = dict(r)
        missing = [i for i in boxes if i not in by_id]
        if missing:
            raise ValueError(f"{name}: instance id(s) {name_list([str(i) for i in missing])} have no record (class)")
        out = []
        for i, (bbox, area) in boxes.items():
            rec = by_id[i]
            cls = rec.get("class")
            if cls is None and "class_id" in rec:
                cid = int(rec["class_id"])
                if not 0 <= cid < len(self.classes):
                    raise ValueError(f"{name}: instance {i} has class_id {cid}, outside 0..{len(self.classes) - 1}")
                cls = self.classes[cid]
            if cls not in self.classes:
                raise ValueError(
                    f"{name}: instance {i} has unknown class {cls!r}; this project's classes: {name_list(self.classes, 50)}"
                )
            score = rec.get("score", default_score)
            if score is None:
                raise ValueError(f"{name}: instance {i} has no score")
            rec.pop("class_id", None)
            rec.update(id=i, bbox=bbox, area=area, score=float(score))
            rec["class"] = cls
            out.append(rec)
        if semantic is None:
            lut = np.zeros(int(inst.max(initial=0)) + 1, np.uint8)
            for rec in out:
                lut[rec["id"]] = self.classes.index(rec["class"]) + 1
            sem = lut[inst]
        else:
            sem = np.asarray(semantic)
            if sem.shape != inst.shape:
                raise ValueError(f"{name}: semantic map has shape {sem.shape}, the image is {inst.shape}")
            if sem.size and (sem.min() < 0 or sem.max() > len(self.classes)):
                raise ValueError(f"{name}: semantic values must be 0..{len(self.classes)} (class index + 1)")
            sem = sem.astype(np.uint8)
        return Masks(inst, out, semantic=sem, source=source)

    # ------------------------------------------------------------ reading masks
    def load_masks(self, name: str, which: str = "current") -> Masks | None:
        """The masks of an image: ``"current"`` (the correction if any, else the
        result), ``"result"`` or ``"correction"``; None when there are none.

        Raises
        ------
        ProjectError
            A referenced file is missing or unreadable (damaged project).
        """
        if which not in ("current", "result", "correction"):
            raise ValueError(f"which must be 'current', 'result' or 'correction', got {which!r}")
        st = self.state(name)
        kind = which
        if which == "current":
            kind = "correction" if st.correction else "result"
        info = st.correction if kind == "correction" else st.result
        if not info:
            return None
        folder = self.item_dir(name) / f"{kind}-{int(info['rev']):06d}"
        try:
            instances = read_label_image(folder / "instances.tif")
            records = read_instances_json(folder / "instances.json")
            semantic = read_label_image(folder / "semantic.png").astype(np.uint8)
            background = read_label_image(folder / BACKGROUND_FILE) > 0 if (folder / BACKGROUND_FILE).is_file() else None
        except InputError as exc:
            raise ProjectError(f"damaged project {self.root}: {exc}") from exc
        return Masks(instances, records, st.state, background, semantic, source=kind)

    # ------------------------------------------------------------ locking
    @contextlib.contextmanager
    def batch_lock(self) -> Iterator[None]:
        """Hold the project's batch lock (one batch run per project at a time).

        Raises
        ------
        ProjectError
            Another process holds it.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        path = self.root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                other = os.pread(fd, 64, 0).decode(errors="replace").strip()
                raise ProjectError(
                    f"{self.root}: another napari-irnet run is predicting in this project"
                    f"{f' (process {other})' if other else ''}; wait for it or stop it"
                ) from None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock


# --------------------------------------------------------------------------
# creating and opening


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
    root = Path(root)
    image_dir = Path(image_dir)
    if root.exists():
        # an empty folder, or what an interrupted init leaves (no manifest yet), may be used
        leftovers = {IMAGE_TABLE, LOCK_FILE}
        if not root.is_dir() or any(
            p.name not in leftovers and not p.name.startswith(".") for p in root.iterdir()
        ):
            raise ProjectError(f"{root}: exists and is not an empty folder; choose a new project folder")
    if isinstance(labels, ImageLabels):
        table = labels
        if not table.unlabelled and image_dir.is_dir():
            listed = set(table.image_labels)
            table.unlabelled = [p.name for p in list_images(image_dir) if p.name not in listed]
    elif labels is not None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below
            table = read_labels(labels, image_dir, classes=classes)
    else:
        if not classes:
            raise ValueError("without a labels file the project's classes must be given")
        table = ImageLabels(list(classes), {}, [p.name for p in list_images(image_dir)])
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
    chosen = tuple(int(c) for c in channels) if channels is not None else None
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
    params = params or Params()
    manifest: dict[str, Any] = {
        "format": PROJECT_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": timestamp(),
        "modified": timestamp(),
        "classes": project_classes,
        "params": params.to_dict(),
        "checkpoint": None,
        "image_dir": _store_path(image_dir, root),
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
        manifest["checkpoint"] = {"path": _store_path(p, root)}
    # the image table first, the manifest last: a folder without a manifest is
    # not a project, so an interrupted creation is simply not one
    project._write_images()
    project._write_manifest()
    return project


def _upgrade(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
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
    manifest = _read_json(path, "project manifest")
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
    table = _read_json(root / IMAGE_TABLE, "image table")
    if not isinstance(table, dict) or not isinstance(table.get("images"), list):
        raise ProjectError(f"{root / IMAGE_TABLE}: not an image table (expected {{'images': [...]}})")
    images = []
    for i, e in enumerate(table["images"]):
        try:
            images.append(ImageEntry(str(e["name"]), None if e["labels"] is None else list(e["labels"]), int(e["height"]), int(e["width"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProjectError(f"{root / IMAGE_TABLE}: entry {i} is malformed ({exc!r})") from exc
    return Project(root, manifest, images)


def semantic_for_project(semantic: np.ndarray, model_classes: Sequence[str], project_classes: Sequence[str]) -> np.ndarray:
    """A semantic map of model class index + 1 as project class index + 1 (classes the project lacks: 0)."""
    lut = np.zeros(len(model_classes) + 1, np.uint8)
    for i, cls in enumerate(model_classes):
        if cls in project_classes:
            lut[i + 1] = list(project_classes).index(cls) + 1
    return lut[np.asarray(semantic)]
