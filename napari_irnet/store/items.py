"""What a project records about each image: its entry in the image table and its state file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["ImageEntry", "ItemState"]


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
    also has ``model`` (see :meth:`~napari_irnet.store.project.Project.model_key`) and ``labels`` (the
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

    def revisions(self, replaced: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """(kind, info) of the current result and correction, with ``replaced`` also the set-aside ones."""
        parts = [("result", self.result), ("correction", self.correction)]
        if replaced:
            parts += [(kind, old.get(kind)) for old in self.replaced for kind in ("result", "correction")]
        return [(kind, part) for kind, part in parts if part]

    def to_dict(self) -> dict[str, Any]:
        out = {"state": self.state, "result": self.result, "correction": self.correction, "error": self.error}
        if self.replaced:
            out["replaced"] = self.replaced
        return out
