"""Reader contribution: a project folder (one holding ``project.json``) opens the Project panel on it.

The reader adds no layer itself (it returns napari's "nothing to add"
sentinel): it docks Plugins ▸ napari-irnet ▸ Project (and the IRNet panel
when it is not open) and opens the project there, which shows the first
image to work on.
"""

from __future__ import annotations

from .project_jobs import is_project_folder


def get_project_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str) and not hasattr(path, "__fspath__"):
        return None
    if not is_project_folder(path):
        return None

    def reader(_path):
        import napari

        from .annotators import open_project_panels

        viewer = napari.current_viewer()
        if viewer is None:
            raise RuntimeError(f"{path}: a project opens in the viewer's Project panel; start napari first")
        if open_project_panels(viewer, path) is None:
            raise RuntimeError(f"{path}: not a usable napari-irnet project (see the notification)")
        return [(None,)]

    return reader
