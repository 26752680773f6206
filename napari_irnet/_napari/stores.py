"""The one store of an image layer's corrections; no Qt here.

A project image (its layer's metadata names the project and the image, as
the Project panel sets them) is stored in the project; an image read from a
file in ``<dir>/napari-irnet/<file name>/``; any other image in the user data
folder, keyed by a fingerprint of its pixels (renaming the layer changes
nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..store.fingerprints import image_fingerprint
from ..store.folder import corrections_folder
from ..store.image_store import FolderStore
from .layers import META_KEY

#: metadata keys of a project image's layer (set by the Project panel)
PROJECT_KEY = "project"
PROJECT_IMAGE_KEY = "project_image"


def store_for_layer(layer, image: np.ndarray | None = None, fingerprint: str | None = None, projects: Callable[[str], Any] | None = None):
    """The one store of an image layer's corrections.

    - a project image: the project
      (:class:`~napari_irnet.store.image_store.ProjectImageStore`), opened by
      ``projects(root)`` (the viewer context's
      :meth:`~napari_irnet._napari.context.ViewerContext.project_at`, so
      that the panels share one; default: opened here);
    - an image read from a file: ``<dir>/napari-irnet/<file name>/``;
    - else: the user data folder, keyed by a fingerprint of the layer's pixels.

    ``image`` is the (H, W, 3) uint8 image the networks see; corrections
    stored under its fingerprint by earlier versions are accepted too.
    ``fingerprint`` is the layer data's :func:`image_fingerprint` when known.
    """
    info = (layer.metadata or {}).get(META_KEY)
    if isinstance(info, dict) and info.get(PROJECT_KEY) and info.get(PROJECT_IMAGE_KEY):
        from ..store.create import open_project
        from ..store.image_store import ProjectImageStore

        project = (projects or open_project)(info[PROJECT_KEY])
        return ProjectImageStore(project, str(info[PROJECT_IMAGE_KEY]))
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
