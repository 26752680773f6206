"""The plugin's layers in the viewer: found by their metadata marker, created or updated, kept in step with an image.

Layers of one image are found by the plugin's metadata marker (never by
name, which the user may change), so renaming one is harmless and a deleted
one comes back at the next update. :class:`LayerSync` shows an
:class:`~napari_irnet._napari.context.ImageSession`'s stages (the layer
data comes from :mod:`napari_irnet._napari.layers`) and writes the
annotation's changes into its ``instances`` layer as one napari history
step each. No algorithm here.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ..annotation.history import LabelDiff
from ..annotation.masks import features_table
from . import layers
from .context import ImageSession

# attributes copied onto an existing layer when its stage is recomputed
_UPDATABLE = ("features", "contrast_limits", "colormap")


def find_layer(viewer_layers, image_id: str, stage: str, class_name: str | None = None):
    """The plugin's layer of ``stage`` for image ``image_id`` (None when there is none)."""
    for layer in viewer_layers:
        info = layers.stage_of(layer.metadata)
        if info is None or info.get("stage") != stage or info.get("image") != image_id:
            continue
        if class_name is not None and info.get("class_name") != class_name:
            continue
        return layer
    return None


def stage_layers(viewer_layers, image_id: str, stage: str) -> list:
    """Every layer of ``stage`` for image ``image_id`` (e.g. one CAM per class)."""
    out = []
    for layer in viewer_layers:
        info = layers.stage_of(layer.metadata)
        if info is not None and info.get("stage") == stage and info.get("image") == image_id:
            out.append(layer)
    return out


def _free_name(viewer, kwargs: dict) -> str:
    """The layer's stage name, or ``<stage> (<image name>)`` when another image's layer has it (never 'instances [1]')."""
    name = kwargs["name"]
    taken = {layer.name for layer in viewer.layers}
    if name not in taken:
        return name
    label = layers.stage_of(kwargs["metadata"]).get("image_name")
    return f"{name} ({label})" if label else name


def put_layer(viewer, layer_tuple: tuple, visible: bool | None = None) -> tuple[Any, bool]:
    """Update the plugin's layer for this stage, or add it; returns (layer, created)."""
    data, kwargs, kind = layer_tuple
    info = layers.stage_of(kwargs["metadata"])
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


class LayerSync:
    """The stage layers of the images of one viewer, kept in step with their sessions.

    ``visible(stage)`` says whether a new layer of ``stage`` starts shown
    (None: the layer's default); ``connect(layer, stage)`` is called with
    every layer put, created or found (e.g. the Project panel's
    ``instances``), so the panel can listen to it (it must connect
    idempotently). While :attr:`applying` is true the writes are the
    panel's own: the layers' events are to be ignored.
    """

    def __init__(self, viewer, visible: Callable[[str], bool | None], connect: Callable[[Any, str], None]) -> None:
        self.viewer = viewer
        self._visible = visible
        self._connect = connect
        self.applying = False
        # layers still to create for a shown session, one per turn of the event loop, then what follows
        self._pending: deque[tuple[Callable[[], tuple], str, ImageSession]] = deque()
        self._then: Callable[[], None] | None = None
        self._closed = False
        # the instance states a corrections layer was last drawn with
        self._outline_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def busy(self) -> bool:
        """True while a session's layers are still being added (see :meth:`show_all_stages`)."""
        return bool(self._pending) or self._then is not None

    def forget(self, image_id: str | None = None) -> None:
        """Drop the layers still to add (of one image, or all of them, and what was to follow)."""
        if image_id is None or any(session.image_id == image_id for _, _, session in self._pending):
            self._pending.clear()
            self._then = None

    def close(self) -> None:
        self.forget()
        self._closed = True

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Our own writes into layers: their events are ignored meanwhile."""
        self.applying = True
        try:
            yield
        finally:
            self.applying = False

    def find(self, session: ImageSession, stage: str):
        return find_layer(self.viewer.layers, session.image_id, stage)

    def put(self, tup, stage: str, session: ImageSession | None = None):
        """Create or update the layer of ``stage`` from a layer-data tuple."""
        return self._put(tup, stage, session)[0]

    def _put(self, tup, stage: str, session: ImageSession | None = None) -> tuple[Any, bool]:
        if session is not None:
            tup[1]["metadata"][layers.META_KEY]["image_name"] = session.image_name
        with self.writing():
            layer, created = put_layer(self.viewer, tup, visible=self._visible(stage))
        if stage == "corrections" and layer.contour != layers.OUTLINE_WIDTH:
            layer.contour = layers.OUTLINE_WIDTH
            layer.editable = False
        self._connect(layer, stage)
        return layer, created

    # ------------------------------------------------------------------ stages
    @staticmethod
    def _static_stages(session: ImageSession) -> list[tuple[Callable[[], tuple], str]]:
        """(layer tuple maker, stage) of CAM, boundary and displacement: they change only with a run."""
        out, classes, sid = session.result.outputs, session.model_classes, session.image_id
        cams = [(lambda tup=tup: tup, "CAM") for tup in layers.cam_layers(sid, out, classes)]
        return cams + [(lambda: layers.boundary_layer(sid, out), "boundary"), (lambda: layers.displacement_layer(sid, out), "displacement")]

    def put_static_stages(self, session: ImageSession) -> None:
        for make, stage in self._static_stages(session):
            self.put(make(), stage, session)

    def show_all_stages(self, session: ImageSession, then: Callable[[], None] | None = None) -> None:
        """Show every stage of ``session``, then call ``then()``.

        Layers that exist are updated at once; each new one is added in a
        turn of the event loop of its own: napari takes a few hundred
        milliseconds to set up a layer's drawing, and the ten or so layers of
        a first Run added in one turn froze the viewer for one to two seconds
        (``benchmarks/bench_interactive.py``, longest turn).
        """
        classes, sid = session.model_classes, session.image_id
        self._pending.extend((make, stage, session) for make, stage in self._static_stages(session))
        self._pending.extend(
            [
                (lambda: layers.seeds_layer(sid, session.prediction.seeds, classes), "seeds", session),
                (lambda: layers.semantic_layer(sid, session.prediction.semantic, classes), "semantic", session),
                (lambda: layers.instances_layer(sid, session.labels.copy(), session.table, classes), "instances", session),
                (lambda: layers.corrections_layer(sid, session.labels, session.table), "corrections", session),
                (lambda: layers.centroids_layer(sid, session.points, session.labels, session.table), "centroids", session),
            ]
        )
        self._then = then
        self._put_next()

    def _put_next(self) -> None:
        """Put the pending layers until one is created; the rest follow in the next turn."""
        if self._closed:
            return
        while self._pending:
            make, stage, session = self._pending.popleft()
            _, created = self._put(make(), stage, session)
            if created and self._pending:
                QTimer.singleShot(0, self._put_next)
                return
        then, self._then = self._then, None
        if then is not None:
            then()

    def put_seeds(self, session: ImageSession) -> None:
        self.put(layers.seeds_layer(session.image_id, session.prediction.seeds, session.model_classes), "seeds", session)

    def put_semantic(self, session: ImageSession) -> None:
        self.put(layers.semantic_layer(session.image_id, session.prediction.semantic, session.model_classes), "semantic", session)

    def put_centroids(self, session: ImageSession) -> None:
        self.put(layers.centroids_layer(session.image_id, session.points, session.labels, session.table), "centroids", session)

    def put_instances(self, session: ImageSession):
        tup = layers.instances_layer(session.image_id, session.labels.copy(), session.table, session.model_classes)
        layer = self.put(tup, "instances", session)
        self.put_corrections(session)
        return layer

    def put_corrections(self, session: ImageSession) -> None:
        """The outlines of the edited and accepted instances, set only when they or their colours change.

        A re-run keeps the protected instances as they are, so after a slider
        change the layer stays untouched: napari redraws the outlines of the
        whole image when its data is set (0.3 s at 3000²).
        """
        tup = layers.corrections_layer(session.image_id, session.labels, session.table)
        states = tuple(sorted((int(i), info.state) for i, info in session.table.items() if info.protected))
        layer = self.find(session, "corrections")
        if (
            layer is not None
            and self._outline_states.get(layer) == states
            and layer.data.shape == tup[0].shape
            and np.array_equal(layer.data, tup[0])
        ):
            return
        layer = self.put(tup, "corrections", session)
        self._outline_states[layer] = states

    def show_stage(self, session: ImageSession, stage: str, visible: bool) -> None:
        for layer in stage_layers(self.viewer.layers, session.image_id, stage):
            layer.visible = bool(visible)

    # ------------------------------------------------------------------ the instances
    def instances_layer(self, session: ImageSession | None):
        """The instances layer of an image, re-created if it was deleted."""
        if session is None:
            return None
        layer = self.find(session, "instances")
        if layer is None:
            layer = self.put_instances(session)
        return layer

    def activate_instances(self, session: ImageSession | None) -> None:
        """Make the instances layer the active one, in pan/zoom mode unless it is painting (first click picks)."""
        layer = self.instances_layer(session)
        if layer is None:
            return
        self.viewer.layers.selection.active = layer
        if layer.mode not in ("paint", "fill", "erase", "pan_zoom"):
            layer.mode = "pan_zoom"

    def write_labels(self, session: ImageSession, diff: LabelDiff) -> None:
        """The annotation's pixel change, as one napari history step (the layer is re-made if it does not fit)."""
        layer = self.find(session, "instances")
        if layer is None or layer.data.shape != session.labels.shape:
            self.put_instances(session)
            return
        values = diff.new.astype(layer.data.dtype)
        with self.writing(), layer.block_history():
            layer.data_setitem(diff.indices(), values)

    def refresh_features(self, session: ImageSession) -> None:
        """Features, colours and outlines of the instances, and the centroids' text, after a change."""
        layer = self.find(session, "instances")
        if layer is not None:
            feats = features_table(session.labels, session.table, session.annotation.default_class)
            layer.features = feats
            layers.update_instances_colormap(layer, session.table, session.model_classes, feats["index"][1:])
        self.put_corrections(session)
        pts = self.find(session, "centroids")
        if pts is not None and len(pts.data) == len(session.points):
            pts.features = layers.centroid_features(session.points, session.labels, session.table)

    def set_points(self, session: ImageSession) -> None:
        """Show the session's centroid points (when the layer holds others)."""
        layer = self.find(session, "centroids")
        points = session.points
        if layer is not None and (len(layer.data) != len(points) or not np.allclose(layer.data, points)):
            with self.writing():
                layer.data = points

    def points_of(self, session: ImageSession) -> np.ndarray | None:
        """The centroid points the layer holds now (y, x; None without a layer)."""
        layer = self.find(session, "centroids")
        if layer is None:
            return None
        return np.asarray(layer.data, dtype=np.float64).reshape(-1, 2)[:, -2:].copy()

    # ------------------------------------------------------------------ picks and the split line
    def show_picks(self, session: ImageSession) -> bool:
        """The picked points as a ``picks`` layer; True when the layer was just added."""
        pts = np.array([p for _, p in session.picks], dtype=np.float64).reshape(-1, 2)
        layer = self.find(session, "picks")
        if layer is None and len(pts) == 0:
            return False
        if layer is not None:
            layer.data = pts
            return False
        self.viewer.add_points(
            pts, name="picks", symbol="cross", size=9, face_color="red", border_color="white",
            metadata=layers.layer_meta("picks", session.image_id),
        )  # fmt: skip
        return True

    def split_line(self, session: ImageSession, create: bool = False):
        """The ``split line`` Shapes layer of the image (added when ``create``; else None without one)."""
        layer = self.find(session, "split line")
        if layer is None and create:
            layer = self.viewer.add_shapes(
                name="split line", edge_color="red", edge_width=2, face_color="transparent",
                metadata=layers.layer_meta("split line", session.image_id),
            )  # fmt: skip
        return layer
