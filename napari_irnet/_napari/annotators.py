"""The annotators as functions: a viewer with the IRNet panel (or the Project panel) docked, from a script.

    import napari
    import napari_irnet

    panel = napari_irnet.annotate("cells.png", checkpoint="model.pt", classes=["round"], run=True)
    napari.run()          # or, in a script: wait for panel.idle, then panel.pick_at(...), panel.accept(), ...

    project_panel = napari_irnet.annotate_project("cells.irnet")
    napari.run()

Each returns its panel (its viewer is ``panel.viewer``); the panels' public
methods (``run``, ``pick_at``, ``merge_picked``, ``accept``, ``next``, ...)
are the same as the buttons. The work runs in background workers, as in the
viewer: a script waits for ``panel.idle`` (processing Qt events) before it
reads the result.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .layers import META_KEY

if TYPE_CHECKING:  # pragma: no cover
    from .irnet_widget import IRNetWidget
    from .project_widget import ProjectWidget

PLUGIN = "napari-irnet"


def _viewer(viewer):
    if viewer is not None:
        return viewer
    import napari

    return napari.Viewer()


def _add_image(viewer, image, name: str | None, classes: Sequence[str] | None):
    """The image as a layer: a file opened by napari (its corrections then go next to it), or an array."""
    meta = {META_KEY: {"labels": list(classes)}} if classes else {}
    if isinstance(image, (str, os.PathLike)):
        from napari.layers import Image

        layers = viewer.open(os.fspath(image), plugin="napari")
        layer = next((ly for ly in layers or () if isinstance(ly, Image)), None)
        if layer is None:
            raise ValueError(f"{image}: napari opens no image from this file")
        if name:
            layer.name = name
        if meta:
            layer.metadata = {**layer.metadata, **meta}
        return layer
    data = np.asarray(image)
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    return viewer.add_image(data, name=name or "image", rgb=rgb, metadata=meta)


def _wait(panel, timeout: float = 600.0) -> None:
    """Process Qt events until the panel is idle (its checkpoint read)."""
    from qtpy.QtWidgets import QApplication

    app, start = QApplication.instance(), time.monotonic()
    while not panel.idle:
        app.processEvents()
        time.sleep(0.005)
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"napari-irnet: the panel is still busy after {timeout:.0f} s: {panel.status.value}")


def annotate(
    image,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    run: bool = False,
    viewer=None,
    block: bool = False,
) -> IRNetWidget:
    """Open ``image`` with the IRNet panel docked on it; returns the panel.

    ``image`` is an image file (opened by napari's reader, so its corrections
    go to ``<dir>/napari-irnet/<file name>/``) or an array ((H, W),
    (H, W, 3) or (channels, H, W)). ``checkpoint`` defaults to the panel's
    (the last one used, else the bundled demo model); ``classes`` are the
    image-level labels (default: the classifier decides). With ``run`` the
    checkpoint is read and the networks start at once (in the background).
    ``viewer`` defaults to a new one; ``block`` starts napari's event loop
    (returning when the viewer is closed).
    """
    viewer = _viewer(viewer)
    layer = _add_image(viewer, image, name, classes)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "IRNet")
    panel.context.image = layer
    if checkpoint is not None:
        panel.set_checkpoint(checkpoint)
    if run:
        _wait(panel)  # the checkpoint's classes decide which of ``classes`` it knows
        panel.run()
    if block:
        import napari

        napari.run()
    return panel


def open_project_panels(viewer, path: str | os.PathLike[str]) -> ProjectWidget | None:
    """Dock the Project panel and the IRNet panel (napari gives the docked ones when they are open) and open the project.

    Returns the Project panel, or None when the project cannot be opened (a notification says why).
    """
    _, project_panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Project")
    viewer.window.add_plugin_dock_widget(PLUGIN, "IRNet")  # Run and the corrections tools work on the shown image
    return project_panel if project_panel.open_project(path) is not None else None


def annotate_project(
    path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    viewer=None,
    block: bool = False,
) -> ProjectWidget:
    """Open the project folder ``path`` in the Project panel, with the IRNet panel; returns the Project panel.

    The first image to work on is shown (the first one not accepted).
    ``checkpoint`` defaults to the one the IRNet panel would take (the
    project's when it has none chosen). Raises ValueError when the folder is
    not a usable project.
    """
    viewer = _viewer(viewer)
    if checkpoint is not None:
        from .context import ViewerContext

        ViewerContext.of(viewer).checkpoint = checkpoint
    panel = open_project_panels(viewer, path)
    if panel is None:
        raise ValueError(f"{path}: not a usable napari-irnet project (see the notification)")
    if block:
        import napari

        napari.run()
    return panel


__all__ = ["annotate", "annotate_project", "open_project_panels"]
