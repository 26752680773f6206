"""The Fine-tune panel's images: the viewer's images with corrected or accepted corrections, and a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, FileEdit, PushButton, Select
from napari.layers import Image

from ...io.files import InputError
from ...store.project import ProjectError
from .. import layers
from ..context import ViewerContext
from ..finetune_jobs import FolderSource, TrainingImage, viewer_image
from ..stores import store_for_layer
from . import Section


class TrainingImages(Section):
    """The image layers whose stored corrections are corrected or accepted (chosen ones train), and an optional folder.

    The corrections are read from each image's one store (the store the IRNet panel saves into).
    """

    def __init__(self, viewer, context: ViewerContext) -> None:
        super().__init__(labels=True)
        self._viewer, self._context = viewer, context
        self._found: dict[str, TrainingImage] = {}  # layer name -> image with corrections
        self._seen: set[str] = set()
        #: layer name -> (its data, RGB image, store, the store's stamp, result): see refresh
        self._cache: dict[str, tuple] = {}
        self.skipped: dict[str, str] = {}  # layer name -> why its corrections are not used
        self.images = Select(label="viewer images", name="images", choices=self._choices)
        self.images.tooltip = "Image layers whose corrections are saved as corrected or accepted (IRNet panel)"
        self.images.native.setMaximumHeight(110)
        self.refresh_button = PushButton(text="Refresh", name="refresh_button", tooltip="Look again for corrected and accepted images")
        self.images_dir = FileEdit(label="images folder", name="images_dir", mode="d", value=None, nullable=True)
        self.images_dir.tooltip = "Optional: a folder of images too, as for `napari-irnet finetune`"
        self.labels_file = FileEdit(label="labels file", name="labels_file", mode="r", filter="Labels (*.csv *.json)", value=None, nullable=True)
        self.corrections_dir = FileEdit(label="corrections", name="corrections_dir", mode="d", value=None, nullable=True)
        self.corrections_dir.tooltip = "Where the folder's corrections are (empty: <images folder>/napari-irnet)"
        self.weak = CheckBox(text="uncorrected folder images too", name="weak", value=True)
        self.weak.tooltip = "Also train on the folder's images without corrections, with their weak labels from the CAMs"
        self.extend([self.images, self.refresh_button, self.images_dir, self.labels_file, self.corrections_dir, self.weak])

    def _choices(self, *_) -> list[tuple[str, str]]:
        return [(f"{name}  ({t.state})", name) for name, t in self._found.items()]

    def _look_at(self, layer) -> tuple | str | None:
        """(data, image, store, stamp, result) of an image layer, reading its corrections again only when they changed.

        A string says why the layer is skipped; None: not an image to train on.
        """
        entry = self._cache.get(layer.name)
        if entry is None or entry[0] is not layer.data:
            # converting and fingerprinting the pixels is the costly part: once per data array
            try:
                image = self._networks_input(layer)
            except ValueError:
                return None
            try:
                store = store_for_layer(layer, image, projects=self._context.project_at)
            except (ProjectError, OSError) as exc:
                return str(exc)
            entry = (layer.data, image, store, None, None)
        _, image, store, stamp, result = entry
        now = store.stamp()
        if now != stamp or now is None:  # the corrections changed (or cannot be stamped): read them again
            path = getattr(getattr(layer, "source", None), "path", None)
            try:
                result = viewer_image(layer.name, image, store, str(path or ""))
            except (InputError, OSError, ValueError) as exc:
                result = exc
        return (layer.data, image, store, now, result)

    def _networks_input(self, layer) -> np.ndarray:
        """The layer's 8-bit pixels as the networks take them: those the IRNet panel ran on (with its
        intensity and channel choice) when it did, else the layer's as shown."""
        info = getattr(layer, "metadata", {}).get(layers.META_KEY)
        session = self._context.session(info.get("image_id") if isinstance(info, dict) else None)
        shape = np.shape(layer.data)
        if session is not None and session.image.shape[:2] == (shape[:2] if layer.rgb else shape[-2:]):
            return session.image
        return layers.layer_to_rgb8(layer)

    def refresh(self, *_) -> list[str]:
        """Look for image layers with corrected or accepted corrections; returns their names.

        Newly found images are chosen; the choice of the others stays.
        """
        found: dict[str, TrainingImage] = {}
        skipped: dict[str, str] = {}
        cache: dict[str, tuple] = {}
        for layer in list(self._viewer.layers):
            if not isinstance(layer, Image) or layer.multiscale or layers.stage_of(layer.metadata) is not None:
                continue
            entry = self._look_at(layer)
            if isinstance(entry, str):
                skipped[layer.name] = entry
            if not isinstance(entry, tuple):
                continue
            cache[layer.name] = entry
            result = entry[-1]
            if isinstance(result, Exception):
                skipped[layer.name] = str(result)
            elif result is not None:
                found[layer.name] = result
        self._cache = cache
        before = set(self.images.value)
        new = [n for n in found if n not in self._seen]
        self._found, self.skipped = found, skipped
        self._seen |= set(found)
        self.images.reset_choices()
        self.images.value = [n for n in found if n in before or n in new]
        return list(found)

    def selected(self) -> list[TrainingImage]:
        return [self._found[n] for n in self.images.value if n in self._found]

    def folder_source(self) -> FolderSource | None:
        """The folder of images to train on too (None: none); raises InputError when it is half given."""
        images_dir, labels = self.images_dir.value, self.labels_file.value
        if not images_dir and not labels:
            return None
        if not images_dir or not labels:
            raise InputError("a folder of images needs both the images folder and the labels file")
        corr = self.corrections_dir.value
        return FolderSource(Path(images_dir), Path(labels), Path(corr) if corr else None, bool(self.weak.value))

    def enable(self, enabled: bool) -> None:
        for control in (self.images_dir, self.labels_file, self.corrections_dir):
            control.enabled = enabled
