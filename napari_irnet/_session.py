"""What the widget knows about one image, and finding the plugin's layers.

No Qt here and no algorithm: an :class:`ImageSession` holds one image's
run result, its current instance map and table, its undo history and its
correction folder; :func:`find_layer` and :func:`put_layer` look layers up by
the plugin's metadata marker (never by name, which the user may change) and
create or update them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._jobs import RunResult
from ._layers import stage_of
from .core.corrections import image_fingerprint
from .core.edits import History, InstanceInfo
from .core.params import Params


@dataclass
class ImageSession:
    """One image the widget has run on."""

    image_id: str
    image_name: str
    image: np.ndarray  # (H, W, 3) uint8, what the networks saw
    image_path: str | None
    folder: Path  # where its corrections are stored
    result: RunResult
    labels: np.ndarray  # the instance map shown (the same array as the layer's data)
    table: dict[int, InstanceInfo]
    state: str = "proposed"
    params: Params = field(default_factory=Params)
    #: centroid points shown (image pixels, y x) and whether a person edited them
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    points_edited: bool = False
    history: History = field(default_factory=lambda: History(limit=50))
    #: copy of ``labels`` as last seen, to find what a brush stroke changed
    known: np.ndarray | None = None
    #: picked instances: (id, (y, x)) per click
    picks: list[tuple[int, tuple[float, float]]] = field(default_factory=list)
    #: the last pipeline result applied (instances before protection)
    prediction: Any = None
    #: classes offered for edits (the image's, then the model's others)
    edit_classes: list[str] = field(default_factory=list)

    #: fingerprint of ``image``'s pixels (computed once, on the first save)
    _fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """:func:`~napari_irnet.core.corrections.image_fingerprint` of the image, cached."""
        if self._fingerprint is None:
            self._fingerprint = image_fingerprint(self.image)
        return self._fingerprint

    @property
    def classes(self) -> list[str]:
        """The image's classes the networks ran with."""
        return list(self.result.classes)

    @property
    def model_classes(self) -> list[str]:
        return list(self.result.model.classes)

    #: ids present in ``labels`` as of the last features update (None: not known)
    present: np.ndarray | None = None

    def present_ids(self) -> np.ndarray:
        if self.present is None:
            ids = np.unique(self.labels)
            self.present = ids[ids != 0]
        return self.present

    def protected_count(self) -> int:
        """Instances a re-run keeps: edited, accepted, or painted by hand (not in the table)."""
        return sum(1 for i in self.present_ids().tolist() if i not in self.table or self.table[i].protected)


def find_layer(layers, image_id: str, stage: str, class_name: str | None = None):
    """The plugin's layer of ``stage`` for image ``image_id`` (None when there is none)."""
    for layer in layers:
        info = stage_of(layer.metadata)
        if info is None or info.get("stage") != stage or info.get("image") != image_id:
            continue
        if class_name is not None and info.get("class_name") != class_name:
            continue
        return layer
    return None


def stage_layers(layers, image_id: str, stage: str) -> list:
    """Every layer of ``stage`` for image ``image_id`` (e.g. one CAM per class)."""
    out = []
    for layer in layers:
        info = stage_of(layer.metadata)
        if info is not None and info.get("stage") == stage and info.get("image") == image_id:
            out.append(layer)
    return out


# attributes copied onto an existing layer when its stage is recomputed
_UPDATABLE = ("features", "contrast_limits")


def put_layer(viewer, layer_tuple: tuple, visible: bool | None = None) -> tuple[Any, bool]:
    """Update the plugin's layer for this stage, or add it; returns (layer, created)."""
    data, kwargs, kind = layer_tuple
    info = stage_of(kwargs["metadata"])
    layer = find_layer(viewer.layers, info["image"], info["stage"], info.get("class_name"))
    if layer is None:
        kw = dict(kwargs)
        if visible is not None:
            kw["visible"] = visible
        layer = getattr(viewer, f"add_{kind}")(data, **kw)
        return layer, True
    layer.data = data
    for name in _UPDATABLE:
        if name in kwargs:
            setattr(layer, name, kwargs[name])
    meta = dict(layer.metadata)
    meta[next(iter(kwargs["metadata"]))] = dict(info)
    layer.metadata = meta
    return layer, False
