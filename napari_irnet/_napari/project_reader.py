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

        viewer = napari.current_viewer()
        if viewer is None:
            raise RuntimeError(f"{path}: a project opens in the viewer's Project panel; start napari first")
        _, widget = viewer.window.add_plugin_dock_widget("napari-irnet", "Project")
        # Run and the corrections tools work on the shown image (napari gives the docked one if it is open)
        viewer.window.add_plugin_dock_widget("napari-irnet", "IRNet")
        if widget.open_project(path) is None:
            raise RuntimeError(f"{path}: not a usable napari-irnet project (see the notification)")
        return [(None,)]

    return reader
