"""The annotators from a script: napari_irnet.annotate and annotate_project open a viewer's panels."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.viewer

WAIT_MS = 30_000


def test_annotate_an_array_runs_on_it_with_the_given_classes(make_napari_viewer_proxy, qtbot, fast_checkpoint, cells_sample):
    import napari_irnet

    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="not this one")
    classes = list(cells_sample.labels)[:1]
    panel = napari_irnet.annotate(cells_sample.image, fast_checkpoint, classes=classes, name="cells", run=True, viewer=viewer)
    qtbot.waitUntil(lambda: panel.idle and panel.session is not None, timeout=WAIT_MS)
    assert panel.viewer.__wrapped__ is viewer.__wrapped__ and panel.image.value.name == "cells"  # (napari's proxies)
    assert panel.session.image_name == "cells" and panel.session.classes == classes
    assert str(panel.checkpoint.value) == str(fast_checkpoint)
    assert panel.session.labels.shape == (96, 96)


def test_annotate_a_file_keeps_its_corrections_next_to_it(make_napari_viewer_proxy, qtbot, fast_checkpoint, cells_sample, tmp_path):
    from PIL import Image

    from napari_irnet import annotate

    path = tmp_path / "imgs" / "cells.png"
    path.parent.mkdir()
    Image.fromarray(cells_sample.image).save(path)
    viewer = make_napari_viewer_proxy()
    panel = annotate(path, fast_checkpoint, classes=list(cells_sample.labels), run=True, viewer=viewer)
    qtbot.waitUntil(lambda: panel.idle and panel.session is not None, timeout=WAIT_MS)
    panel.accept()
    assert panel.session.folder == tmp_path / "imgs" / "napari-irnet" / "cells.png"
    assert (panel.session.folder / "corrections.json").is_file()


def test_annotate_project_shows_the_first_image_to_work_on_in_both_panels(make_napari_viewer_proxy, qtbot, fast_checkpoint, env, tiny_dataset):
    from napari_irnet import annotate_project
    from napari_irnet.store.create import create_project
    from napari_irnet.synthetic import write_dataset

    ds = write_dataset(tiny_dataset[:2], env / "ds")
    create_project(env / "P", ds / "images", ds / "labels.csv", checkpoint=fast_checkpoint)
    viewer = make_napari_viewer_proxy()
    project_panel = annotate_project(env / "P", fast_checkpoint, viewer=viewer)
    qtbot.waitUntil(lambda: project_panel.idle and project_panel.image_layer is not None, timeout=WAIT_MS)
    assert project_panel.current_name == project_panel.project.names[0]
    context = project_panel.context  # the one both panels share
    assert context.image == project_panel.image_layer and context.checkpoint == str(fast_checkpoint)
    _, panel = viewer.window.add_plugin_dock_widget("napari-irnet", "IRNet")  # the one docked already
    assert panel.image.value == project_panel.image_layer and str(panel.checkpoint.value) == str(fast_checkpoint)
    with pytest.raises(ValueError, match="not a usable napari-irnet project"):
        annotate_project(env / "ds", viewer=viewer)
