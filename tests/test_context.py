"""The viewer context the panels share: Qt-free, evented, one per viewer."""

from __future__ import annotations

import os
import subprocess
import sys

from napari_irnet._napari.context import ViewerContext


def _record(emitter) -> list:
    seen: list = []
    emitter.connect(lambda event: seen.append(event.value))
    return seen


def test_importing_the_context_imports_no_qt():
    code = "import sys, napari_irnet._napari.context, napari_irnet._napari.stores; print(sorted(m for m in ('qtpy', 'PyQt5', 'PyQt6', 'PySide6') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_each_change_is_told_once(tmp_path):
    context = ViewerContext()
    images, checkpoints, devices = _record(context.events.image), _record(context.events.checkpoint), _record(context.events.device)
    layer = object()
    context.image = layer
    context.image = layer  # the same: no event
    context.checkpoint = tmp_path / "a.pt"
    context.checkpoint = str(tmp_path / "a.pt")
    context.device = "cpu"
    context.device = "cpu"
    context.checkpoint = None
    assert images == [layer] and devices == ["cpu"]
    assert checkpoints == [str(tmp_path / "a.pt"), ""] and context.checkpoint == ""


def test_sessions_current_and_runs():
    class Session:  # what the context reads of an ImageSession
        def __init__(self, image_id):
            self.image_id = image_id

    context = ViewerContext()
    current = _record(context.events.current)
    started, finished = [], []
    context.events.run_started.connect(lambda e: started.append((e.image_id, e.layer)))
    context.events.run_finished.connect(lambda e: finished.append((e.image_id, e.ok)))
    a, b = Session("a"), Session("b")
    context.add(a)
    context.add(b)
    context.current = a
    assert context.session("a") is a and set(context.sessions) == {"a", "b"} and context.session(None) is None
    assert context.drop("b") is b and context.current is a  # another image's session: the current one stays
    assert context.drop("a") is a and context.current is None
    assert current == [a, None]
    context.start_run("a", "layer")
    assert context.running == "a"
    context.end_run("a", "layer", ok=False)
    assert context.running is None and started == [("a", "layer")] and finished == [("a", False)]


def test_one_project_object_per_folder(tmp_path, tiny_dataset):
    from napari_irnet.store.create import create_project
    from napari_irnet.synthetic import write_dataset

    ds = write_dataset(tiny_dataset[:2], tmp_path / "ds")
    project = create_project(tmp_path / "P", ds / "images", ds / "labels.csv")
    context = ViewerContext()
    opened = context.project_at(tmp_path / "P")
    assert opened is not project and context.project_at(str(tmp_path / "P")) is opened
    context.project = project  # the Project panel's: every store of its images uses it
    assert context.project_at(tmp_path / "P" / ".." / "P") is project


def test_the_panels_of_one_viewer_share_one_context():
    import wrapt
    from napari.components import ViewerModel

    viewer, other = ViewerModel(), ViewerModel()
    context = ViewerContext.of(viewer)
    assert ViewerContext.of(wrapt.ObjectProxy(viewer)) is context  # napari hands a plugin widget such a proxy
    assert ViewerContext.of(other) is not context
