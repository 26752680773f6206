"""How the Project panel's shown image meets the IRNet panel: through the viewer context, never its widgets.

The shown image becomes the context's image (and the project's checkpoint its
checkpoint, unless one is chosen), so the IRNet panel's Run and sliders work
on it. When the context says a Run starts on that image, the Project panel's
edits are stored in the project (which the Run reads) and its ``instances``
layer waits (not editable, its marker moved to :data:`HANDED_OVER`); the
IRNet panel's own ``instances`` layer of the image then takes its place and
is autosaved from then on. A Run that fails or is cancelled gives the layer
back.
"""

from __future__ import annotations

from collections.abc import Callable

from napari.layers import Labels
from qtpy.QtCore import QTimer

from . import layers
from .context import ImageSession, ViewerContext
from .project_autosave import Autosave

#: the stage a project instances layer is moved to while the IRNet panel makes its own
HANDED_OVER = "project instances"


class Handover:
    """The Project panel's side of sharing the shown image with the IRNet panel.

    ``shown()`` gives the shown image's layer and id (None, None: none);
    ``forget(layer)`` tells the panel a layer it added is no longer its own;
    ``refresh()`` updates the panel's controls.
    """

    def __init__(
        self,
        viewer,
        context: ViewerContext,
        autosave: Autosave,
        shown: Callable[[], tuple],
        current_name: Callable[[], str | None],
        forget: Callable[[object], None],
        refresh: Callable[[], None],
    ) -> None:
        self._viewer, self._context, self._autosave = viewer, context, autosave
        self._shown, self._current_name, self._forget, self._refresh = shown, current_name, forget, refresh
        self._waiting = None  # our instances layer while the IRNet panel runs on the image

    def events(self) -> dict[str, Callable]:
        """The context's events this listens to."""
        return {"run_started": self.on_run_started, "run_finished": self.on_run_finished}

    def panel_session(self) -> ImageSession | None:
        """The IRNet panel's session when it is on the shown image."""
        session = self._context.current
        _, image_id = self._shown()
        if session is None or image_id is None or session.image_id != image_id:
            return None
        return session

    def point_checkpoint(self, project) -> None:
        """The project's checkpoint, for the IRNet panel, unless one is chosen."""
        ckpt = project.checkpoint_path if project is not None else None
        if not self._context.checkpoint and ckpt is not None and ckpt.is_file():
            self._context.checkpoint = ckpt

    def point(self, project) -> None:
        """Let the IRNet panel work on the shown image."""
        layer, _ = self._shown()
        if layer is not None:
            self.point_checkpoint(project)
            self._context.image = layer

    def on_run_started(self, event) -> None:
        """A Run on our image: hand it the masks (stored in the project), let it make its own layer."""
        image_layer, _ = self._shown()
        if image_layer is None or event.layer != image_layer:
            return
        layer = self._autosave.layer
        if layer is None or self.panel_session() is not None:
            return  # its own layer already, or nothing to hand over
        self._autosave.save_now()  # the IRNet panel reads the image's corrections from the project
        meta = dict(layer.metadata)
        meta[layers.META_KEY] = {**meta[layers.META_KEY], "stage": HANDED_OVER}
        layer.metadata = meta
        layer.editable = False  # edits now would miss the run; back if the run fails
        self._waiting = layer

    def on_run_finished(self, event) -> None:
        layer, self._waiting = self._waiting, None
        if layer is not None and layer == self._autosave.layer and layer in self._viewer.layers:
            layer.editable = True  # the run failed or was cancelled: ours again

    def on_layer_inserted(self, event) -> None:
        """The IRNet panel added the ``instances`` layer of our image: autosave that one."""
        layer = event.value
        info = layers.stage_of(getattr(layer, "metadata", None))
        _, image_id = self._shown()
        if (image_id is None or not isinstance(layer, Labels) or info is None or info.get("stage") != "instances"
                or info.get("image") != image_id or layer == self._autosave.layer):  # fmt: skip
            return
        old = self._autosave.layer
        self._autosave.adopt(layer)
        self._autosave.person_change = False
        self._refresh()
        name = self._current_name()
        if name is not None:
            self._autosave.sync_state(name)  # the panel's Run stored its proposal in the project
        if old is not None and old in self._viewer.layers and layers.stage_of(old.metadata).get("stage") == HANDED_OVER:
            self._forget(old)
            QTimer.singleShot(0, lambda: self._drop_old(old, layer))

    def _drop_old(self, old, new) -> None:
        if old in self._viewer.layers:
            self._viewer.layers.remove(old)
        if new in self._viewer.layers:
            new.name = "instances"
