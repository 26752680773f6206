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

A project is made and opened by :mod:`napari_irnet.store.create`; its
revision folders are :mod:`napari_irnet.store.revisions`; the per-image
records are :mod:`napari_irnet.store.items`. Pure numpy / json: importing this
module never imports torch, napari or Qt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.masks import IMAGE_STATES, Masks
from ..io.files import InputError, name_list, read_json, write_json
from ..io.images import DEFAULT_MAX_PIXELS, check_pixels, image_size, read_image
from ..params import Params
from .fingerprints import file_signature, model_key, remember_pixels, remembered_pixels
from .items import ImageEntry, ItemState
from .lock import exclusive_lock
from .revisions import checked_masks, collect_garbage, new_revision, read_revision, write_revision

__all__ = [
    "IMAGE_TABLE",
    "ITEMS",
    "MANIFEST",
    "STATE_FILE",
    "Project",
    "ProjectError",
    "item_folder_name",
    "read_store_json",
    "store_path",
    "timestamp",
]

MANIFEST = "project.json"
IMAGE_TABLE = "images.json"
ITEMS = "items"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"


class ProjectError(ValueError):
    """A project folder that cannot be used as asked; the message names the file."""


def timestamp() -> str:
    """The local time, as the store writes it (``2024-05-01T12:00:00+0200``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_store_json(path: Path, what: str) -> Any:
    """A store file's JSON; a damaged project's file is a :class:`ProjectError` naming it."""
    return read_json(path, what, ProjectError, "{what} is not valid JSON (line {line}, column {column}: {msg})")


def item_folder_name(name: str) -> str:
    """The folder name of an image's items: its name with ``/``, ``%`` etc. quoted."""
    return urllib.parse.quote(name, safe=" .-_+,()[]@=")


def store_path(target: Path, root: Path) -> str:
    """``target`` relative to ``root`` (so a moved project keeps working), POSIX style."""
    try:
        return Path(os.path.relpath(target.resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return target.resolve().as_posix()


class Project:
    """An open project folder. Use :func:`~napari_irnet.store.create.create_project` or :func:`~napari_irnet.store.create.open_project`.

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

    def _shape(self, name: str) -> tuple[int, int]:
        entry = self.entry(name)
        return (entry.height, entry.width)

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
            sig = file_signature(path)
        image = read_image(path, self.channels, max_pixels=self.max_pixels)
        if image.shape[:2] != (entry.height, entry.width):
            raise InputError(
                f"{path}: image is {image.shape[1]} x {image.shape[0]} now but was "
                f"{entry.width} x {entry.height} when it was added to the project {self.root}"
            )
        with contextlib.suppress(OSError, UnboundLocalError):
            if file_signature(path) == sig:  # the file did not change while it was read
                remember_pixels(path, sig, self.channels, image)
        return image

    # ------------------------------------------------------------ manifest
    def write_manifest(self) -> None:
        """Write ``project.json`` (atomically), with the time of the change."""
        self.manifest["modified"] = timestamp()
        write_json(self.root / MANIFEST, self.manifest)

    def write_image_table(self) -> None:
        """Write ``images.json`` (atomically)."""
        write_json(self.root / IMAGE_TABLE, {"images": [e.to_dict() for e in self.images]})

    def set_params(self, params: Params) -> None:
        """Save new pipeline parameters (``proposed`` results made with others become stale)."""
        params.validate()
        old = self.manifest["params"]
        self.manifest["params"] = params.to_dict()
        try:
            self.write_manifest()
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
            self.manifest["checkpoint"] = {"path": store_path(p, self.root)}
        try:
            self.write_manifest()
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
            self.write_image_table()
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
        return model_key(checkpoint if checkpoint is not None else self.checkpoint_path, params or self.params, fingerprint)

    # ------------------------------------------------------------ states
    def state(self, name: str) -> ItemState:
        """The stored state of one image (``new`` when nothing was stored)."""
        path = self.item_dir(name) / STATE_FILE
        if not path.is_file():
            return ItemState()
        data = read_store_json(path, "image state file")
        if not isinstance(data, dict) or data.get("state") not in IMAGE_STATES:
            raise ProjectError(f"{path}: not a valid image state file (state must be one of {', '.join(IMAGE_STATES)})")
        replaced = data.get("replaced") or []
        st = ItemState(data["state"], data.get("result"), data.get("correction"), data.get("error"), list(replaced))
        return self._set_aside_stale_masks(name, st)

    # ------------------------------------------------------------ image contents
    def image_fingerprint(self, name: str) -> dict[str, Any] | None:
        """What identifies the image's current pixels: ``{"fingerprint", "size", "mtime_ns"}``.

        The fingerprint is :func:`~napari_irnet.store.fingerprints.image_fingerprint`
        of the pixels as :meth:`read_image` gives them (decoded once per file
        version and remembered); ``size`` and ``mtime_ns`` are the file's, so
        an unchanged file is recognised without decoding it. None when the
        image cannot be read.
        """
        path = self.image_path(name)
        try:
            sig = file_signature(path)
            fingerprint = remembered_pixels(path, sig, self.channels)
            if fingerprint is None:
                self.read_image(name)  # remembers the fingerprint
                fingerprint = remembered_pixels(path, sig, self.channels)
        except (OSError, InputError):
            return None
        if fingerprint is None:
            return None
        return {"fingerprint": fingerprint, "size": sig[0], "mtime_ns": sig[1]}

    def _same_image(self, name: str, made_for: dict[str, Any]) -> bool:
        """Whether the image file still holds the pixels a result or correction was made for."""
        try:
            if file_signature(self.image_path(name)) == (made_for.get("size"), made_for.get("mtime_ns")):
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
        stale = {kind: part for kind, part in st.revisions() if "image" in part and not self._same_image(name, part["image"])}
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

    # ------------------------------------------------------------ revisions
    def _write_state(self, name: str, st: ItemState) -> None:
        write_json(self.item_dir(name) / STATE_FILE, {"name": name, **st.to_dict()})

    def _commit(self, name: str, kind: str, masks: Masks, update: Callable[[ItemState, dict[str, Any]], bool]) -> bool:
        """Write ``masks`` as a new revision, then let ``update`` change the state and save it.

        ``update(state, info)`` gets the freshly read state and the new
        revision's info; it returns False to drop the revision instead.
        """
        st = self.state(name)
        rev, target = new_revision(self.item_dir(name), kind, st)
        try:
            write_revision(target, masks)
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
        """Delete what the store wrote for an image and no longer references (see :func:`~napari_irnet.store.revisions.collect_garbage`)."""
        folder = self.item_dir(name)
        if folder.is_symlink() or folder.parent.is_symlink() or not folder.is_dir():
            return 0
        return collect_garbage(folder, st or self.state(name))

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
        masks = checked_masks(name, instances, records, semantic, self.classes, self._shape(name), "result", None)
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
        masks = checked_masks(name, instances, records, semantic, self.classes, self._shape(name), "correction", 1.0)
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

    def discard_correction(self, name: str) -> bool:
        """Drop an image's correction: its result (the model's proposal) is current again.

        The annotator asked for it (the IRNet panel's Discard). The state
        becomes ``proposed`` (``new`` without a result); the correction's
        revision folder is no longer referenced and goes with the next
        :meth:`cleanup`. Returns False when there was no correction.
        """
        st = self.state(name)
        if st.correction is None:
            return False
        st.correction = None
        st.state = "proposed" if st.result else "new"
        self._write_state(name, st)
        return True

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
            return read_revision(folder, st.state, kind)
        except InputError as exc:
            raise ProjectError(f"damaged project {self.root}: {exc}") from exc

    # ------------------------------------------------------------ locking
    def batch_lock(self):
        """A context manager holding the project's batch lock (one batch run at a time); ProjectError when another process holds it."""
        return exclusive_lock(self.root / LOCK_FILE, ProjectError, f"{self.root}: another napari-irnet run is predicting in this project")
