"""Screenshots of the plugin at work, for the README (``docs/images/``).

    python docs/make_screenshots.py            # re-runs itself under xvfb-run when there is no display

Opens the sample image (File ▸ Open Sample ▸ napari-irnet ▸ Synthetic cells),
docks the IRNet widget with the bundled demo checkpoint, presses Run, and
saves the whole window with every stage layer, then one canvas view per
stage (the image plus that stage), the correction tools splitting an
instance along a drawn line, and the feedback after a few corrections
(instances in their class's colours, outlines of edited and accepted
instances, id and class under each centroid, the legend and the status
line): a deleted proposal, a changed class, and a missed object added by
Shift+click (click to add).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"


def _wait(widget, app, timeout: float = 300.0) -> None:
    start = time.time()
    while True:
        app.processEvents()
        if widget.idle:
            break
        if time.time() - start > timeout:
            raise TimeoutError(f"the widget is still busy after {timeout} s: {widget.status.value}")
        time.sleep(0.02)
    for _ in range(10):
        app.processEvents()


def _shrink(path: Path) -> None:
    """Store the screenshot with a 256-colour palette (a third of the size, same look)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def _only(viewer, keep: set[str]) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in keep


def main() -> int:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_irnet._napari.layers import stage_of
    from napari_irnet._napari.recent import BUNDLED_DEMO

    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_IRNET_DATA_DIR", str(ROOT / "bench_output" / "screenshot-data"))
    os.environ.setdefault("NAPARI_IRNET_CONFIG_DIR", str(ROOT / "bench_output" / "screenshot-config"))
    shutil.rmtree(os.environ["NAPARI_IRNET_DATA_DIR"], ignore_errors=True)  # start without stored corrections

    viewer = napari.Viewer(title="napari-irnet", show=True)
    app = QApplication.instance()
    viewer.window.resize(1600, 1000)
    viewer.open_sample("napari-irnet", "synthetic_cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-irnet", "IRNet")
    widget.set_checkpoint(BUNDLED_DEMO)
    _wait(widget, app)
    widget.run()
    _wait(widget, app)
    print(widget.status.value)

    def by_stage(stage: str):
        return [layer for layer in viewer.layers if (stage_of(layer.metadata) or {}).get("stage") == stage]

    def shot(name: str, canvas_only: bool) -> None:
        """The whole window, or just the layers' extent (export_figure)."""
        viewer.reset_view()
        for _ in range(20):
            app.processEvents()
        path = OUT / name
        if canvas_only:
            viewer.export_figure(str(path), scale_factor=2)
        else:
            viewer.screenshot(str(path), canvas_only=False)
        _shrink(path)
        print(path.relative_to(ROOT))

    image = "synthetic cells"
    # the whole window: every stage in the layer list, instances and centroids shown
    viewer.layers.selection.active = by_stage("instances")[0]
    shot("window.png", canvas_only=False)

    # one canvas view per stage
    views = {
        "CAM": [layer.name for layer in by_stage("CAM")],
        "seeds": ["seeds"],
        "boundary": ["boundary"],
        "displacement": ["displacement"],
        "centroids": ["centroids"],
        "instances": ["instances", "centroids"],
        "semantic": ["semantic"],
    }
    for stage, names in views.items():
        _only(viewer, {image, *names})
        if stage == "CAM":
            viewer.layers[image].opacity = 0.4
        shot(f"stage_{stage}.png", canvas_only=True)
        viewer.layers[image].opacity = 1.0

    # corrections: a split line across the largest instance, then Split
    _only(viewer, {image, "instances", "centroids"})
    inst = by_stage("instances")[0]
    labels = inst.data
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    if len(ids):
        ys, xs = np.nonzero(labels == ids[areas.argmax()])
        x = float(np.median(xs))
        widget.draw_split_line()
        line_layer = by_stage("split line")[0]
        line_layer.add_paths([np.array([[ys.min() - 8.0, x - 6.0], [ys.max() + 8.0, x + 6.0]])])
        line_layer.mode = "pan_zoom"
        bar = widget.root_native_widget.verticalScrollBar()  # show the correction tools
        bar.setValue(bar.maximum())
        shot("corrections_line.png", canvas_only=False)
        widget.split()
        viewer.layers.selection.active = inst
        shot("corrections_split.png", canvas_only=True)
    _feedback(viewer, widget, by_stage, shot, image)
    viewer.close()
    return 0


def _missed_object(truth, labels):
    """The innermost pixel of the ground-truth object that no instance covers best (None when all are found)."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    best, point = 0.0, None
    for g in np.unique(truth[truth > 0]):
        mask = truth == g
        free = mask & (labels == 0)
        if free.sum() < 0.6 * mask.sum():
            continue
        dist = distance_transform_edt(mask)
        dist[~free] = 0
        if dist.max() > best:
            best, point = float(dist.max()), np.unravel_index(np.argmax(dist), dist.shape)
    return point


def _feedback(viewer, widget, by_stage, shot, image) -> None:
    """A few corrections, then the window and the canvas with the feedback layers."""
    import numpy as np

    inst = by_stage("instances")[0]
    _only(viewer, {image, "instances", "corrections", "centroids"})
    labels = np.asarray(inst.data)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    if len(ids) >= 2:
        widget.pick_at(np.argwhere(labels == ids[areas.argmin()])[0])  # the smallest proposal: a fragment
        widget.delete_picked()
        other = [c for c in widget.session.edit_classes if c != widget.session.table[int(ids[areas.argmax()])].class_name]
        widget.pick_at(np.argwhere(labels == ids[areas.argmax()])[0])
        widget.set_class_of_picked(other[0] if other else None)
    truth = viewer.layers["ground truth"].data if "ground truth" in [ly.name for ly in viewer.layers] else None
    point = _missed_object(truth, np.asarray(inst.data)) if truth is not None else None
    if point is not None:
        widget.add_at(point)
    bar = widget.root_native_widget.verticalScrollBar()
    bar.setValue(bar.maximum())
    shot("feedback_window.png", canvas_only=False)
    shot("feedback.png", canvas_only=True)


if __name__ == "__main__":
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", sys.executable, *sys.argv]
        sys.exit(subprocess.call(cmd))
    sys.exit(main())
