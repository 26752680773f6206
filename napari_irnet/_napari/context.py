"""What the IRNet panel knows about one image, its correction store, and finding the plugin's layers.

No Qt here and no algorithm: an :class:`ImageSession` holds one image's
run result, its :class:`~napari_irnet.core.annotation.AnnotationSession`
(instances, table, annotator background, undo: the edit rules live there),
the centroid points and parameters shown, and the store its corrections go
to; :func:`store_for_layer` picks that store (the project for a project
image, else the per-image folder keyed by the file or by the pixels);
:func:`find_layer` and :func:`put_layer` look layers up by the plugin's
metadata marker (never by name, which the user may change) and create or
update them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.annotation import AnnotationSession
from ..core.corrections import FolderStore, corrections_folder, image_fingerprint
from ..core.edits import History, InstanceInfo
from ..core.params import Params
from .jobs import RunResult
from .layers import META_KEY, stage_of

#: metadata keys of a project image's layer (set by the Project panel)
PROJECT_KEY = "project"
PROJECT_IMAGE_KEY = "project_image"

_projects: dict[str, Any] = {}  # project root -> the Project opened for it (one per folder)


def project_of(root: str | os.PathLike[str]):
    """The project at ``root`` (opened once per folder and shared)."""
    from ..core.project import open_project

    key = str(Path(root).resolve())
    if key not in _projects:
        _projects[key] = open_project(key)
    return _projects[key]


def share_project(project) -> None:
    """Let :func:`project_of` return this open project (the Project panel's) for its folder."""
    _projects[str(Path(project.root).resolve())] = project


def store_for_layer(layer, image: np.ndarray | None = None, fingerprint: str | None = None):
    """The one store of an image layer's corrections.

    - a project image (its metadata names the project and the image): the
      project (:class:`~napari_irnet.core.project.ProjectImageStore`);
    - an image read from a file: ``<dir>/napari-irnet/<file name>/``;
    - else: the user data folder, keyed by a fingerprint of the layer's
      pixels (renaming the layer changes nothing).

    ``image`` is the (H, W, 3) uint8 image the networks see; corrections
    stored under its fingerprint by earlier versions are accepted too.
    ``fingerprint`` is the layer data's :func:`image_fingerprint` when known.
    """
    info = (layer.metadata or {}).get(META_KEY)
    if isinstance(info, dict) and info.get(PROJECT_KEY) and info.get(PROJECT_IMAGE_KEY):
        from ..core.project import ProjectImageStore

        return ProjectImageStore(project_of(info[PROJECT_KEY]), str(info[PROJECT_IMAGE_KEY]))
    data = np.asarray(layer.data)
    path = getattr(getattr(layer, "source", None), "path", None)
    shape = tuple(image.shape[:2]) if image is not None else tuple(data.shape[:2])
    fingerprint = fingerprint or image_fingerprint(data)
    prints = (fingerprint,) + ((image_fingerprint(image),) if image is not None else ())
    if path is not None:
        folder = corrections_folder(layer.name, image_path=path)
    else:
        folder = corrections_folder(layer.name, fingerprint=fingerprint)
    return FolderStore(folder, shape, prints)


@dataclass
class ImageSession:
    """One image the panel has run on: the run result, the annotation, what is shown."""

    image_id: str
    image_name: str
    image: np.ndarray  # (H, W, 3) uint8, what the networks saw
    store: Any  # FolderStore or ProjectImageStore: where its corrections go
    result: RunResult
    annotation: AnnotationSession
    params: Params = field(default_factory=Params)
    #: centroid points shown (image pixels, y x) and whether a person edited them
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    points_edited: bool = False
    #: picked instances: (id, (y, x)) per click
    picks: list[tuple[int, tuple[float, float]]] = field(default_factory=list)
    #: the last pipeline result applied (instances before the corrections)
    prediction: Any = None
    #: fingerprint of the layer's own data (stored as the corrections' ``data_fingerprint``)
    fingerprint: str = ""
    #: fingerprint of ``image``, the networks' input (computed at the first save)
    input_fingerprint: str = ""

    # the annotation's parts, as the panel and tests read them
    @property
    def labels(self) -> np.ndarray:
        return self.annotation.labels

    @property
    def table(self) -> dict[int, InstanceInfo]:
        return self.annotation.table

    @property
    def state(self) -> str:
        return self.annotation.state

    @property
    def history(self) -> History:
        return self.annotation.history

    @property
    def folder(self) -> Path | None:
        """The corrections folder (None for a project image: the project is its store)."""
        return getattr(self.store, "folder", None)

    @property
    def classes(self) -> list[str]:
        """The image's classes the networks ran with."""
        return list(self.result.classes)

    @property
    def model_classes(self) -> list[str]:
        return list(self.result.model.classes)

    @property
    def edit_classes(self) -> list[str]:
        """Classes offered for edits: the image's first, then the model's others."""
        return list(dict.fromkeys(self.classes + self.model_classes))


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
_UPDATABLE = ("features", "contrast_limits", "colormap")


def _free_name(viewer, kwargs: dict) -> str:
    """The layer's stage name, or ``<stage> (<image name>)`` when another image's layer has it (never 'instances [1]')."""
    name = kwargs["name"]
    taken = {layer.name for layer in viewer.layers}
    if name not in taken:
        return name
    label = stage_of(kwargs["metadata"]).get("image_name")
    return f"{name} ({label})" if label else name


def put_layer(viewer, layer_tuple: tuple, visible: bool | None = None) -> tuple[Any, bool]:
    """Update the plugin's layer for this stage, or add it; returns (layer, created)."""
    data, kwargs, kind = layer_tuple
    info = stage_of(kwargs["metadata"])
    layer = find_layer(viewer.layers, info["image"], info["stage"], info.get("class_name"))
    if layer is None:
        kw = dict(kwargs)
        if visible is not None:
            kw["visible"] = visible
        kw["name"] = _free_name(viewer, kw)
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
