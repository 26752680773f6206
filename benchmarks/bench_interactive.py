"""Time from a live-parameter change to the updated ``instances`` layer.

    python benchmarks/bench_interactive.py [--backbone tiny|resnet18] [--size 512] [--threads 2]
                                           [--instances 12] [--classes 3] [--repeat 5] [--viewer]
    python benchmarks/bench_interactive.py --demo --size 3000 --viewer   # a large image as a user has it

Networks run once with random weights (their cost does not matter here: a
parameter change never re-runs them). As in ``bench_pipeline.py``, the
displacement field is replaced by one pointing at ``--instances`` centres so
the walk propagates a realistic classes x clusters channels. With
``--demo`` the bundled demo model runs on the sample cells tiled to
``--size`` instead (its own outputs: about one cell per 100 x 100 pixels),
and ``--viewer`` also times the widget's Run from the button to the last
layer. Above 1024² the goals are those of large images: 0.5 s for changes
after the walk, 5 s for changes that re-run it.

For each change the script times what the widget does:

- *core*: :meth:`StageCache.update` with the new value (the stages below it),
  without the semantic walk, as the widget's worker does before it shows
  the instances; the semantic walk follows (*semantic layer after*);
- *layer*: the main-thread work after it, as in the widget: the proposal as an
  instance table merged into the image's ``AnnotationSession`` (corrections
  and ids kept, the undo step), the changed pixels written into a napari
  ``Labels`` layer with its features and class colours, the outlines of the
  corrected instances (plus the seeds, semantic or centroids layer when
  those stages changed).

With ``--viewer`` (needs a display or Xvfb) it also drives the real widget in
a napari window: set the slider, wait until the instances layer holds the
new result (for seeds and semantic changes: until the widget is idle), Qt
events processed, the widget's debounce included.

Prints a markdown table; times in seconds, median of ``--repeat``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: change -> (parameter, two values alternated, goal in seconds)
CHANGES = [
    ("instance bg threshold", "instance_bg_threshold", (0.30, 0.35), 0.1),
    ("min fragment size", "min_fragment_fraction", (0.002, 0.004), 0.1),
    ("semantic bg threshold", "semantic_bg_threshold", (0.30, 0.35), 0.1),
    ("seed fg threshold", "seed_fg_threshold", (0.35, 0.40), 0.1),
    ("cluster threshold", "cluster_threshold", (2.0, 3.0), 1.0),
    ("β", "beta", (8.0, 12.0), 1.0),
    ("walk steps", "walk_steps", (240, 272), 1.0),
    ("move a centroid", None, None, 1.0),
]


def _field(h: int, w: int, n: int, seed: int = 0):
    """A displacement field (2, h, w) towards ``n`` random centres (the shape a trained IRNet's takes)."""
    import numpy as np
    import torch

    from napari_irnet.synthetic import centre_field

    centres = np.random.default_rng(seed).uniform([2, 2], [h - 3, w - 3], size=(n, 2))
    return torch.from_numpy(centre_field((h, w), centres)[0])


def setup(args):
    """Model, image and network outputs with a realistic displacement field.

    With ``--demo``: the bundled demo model on the sample cells tiled to
    ``--size`` (its own outputs, about one cell per 100 x 100 pixels).
    """
    import numpy as np
    import torch

    if args.demo:
        from bench_scale import tiled_sample

        from napari_irnet.models.checkpoint import load_checkpoint
        from napari_irnet.pipeline.predict import run_networks

        model = load_checkpoint(ROOT / "napari_irnet" / "data" / "demo_model.pt")
        image = tiled_sample(args.size)[0]
        outputs = run_networks(model, image, model.class_ids(model.classes), model.params, "cpu")
        return model, image, outputs, np

    from napari_irnet.models.checkpoint import new_irnet, new_model
    from napari_irnet.params import Params
    from napari_irnet.pipeline.predict import run_networks
    from napari_irnet.synthetic import make_dataset

    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(max(args.classes, 1))]
    model = new_model(classes, args.backbone)
    model.irn = new_irnet(model, "cam")
    model.params = Params(use_crf=False, cam_scales=(1.0,), min_fragment_fraction=0.001)
    image = make_dataset(1, shape=(args.size, args.size), seed=3)[0].image
    outputs = run_networks(model, image, list(range(args.classes)), model.params, "cpu")
    h, w = outputs.irn.displacement.shape[1:]
    outputs.irn.displacement = _field(h, w, args.instances)
    return model, image, outputs, np


def bench_core(args) -> dict[str, tuple[list[str], float, float, float]]:
    """change -> (stages re-run, median core and layer-update times to instances, then semantic)."""
    import napari
    import numpy as np

    from napari_irnet._napari import layers as _layers
    from napari_irnet.annotation.masks import features_table, table_from_records
    from napari_irnet.annotation.session import AnnotationSession
    from napari_irnet.pipeline.cache import StageCache

    model, image, outputs, _ = setup(args)
    cache = StageCache(outputs, model.params, image, "cpu")
    pred = cache.update()
    session = AnnotationSession.from_prediction(pred, model.classes)
    inst_layer = napari.layers.Labels(session.labels.copy(), features=features_table(session.labels, session.table))
    outline_layer = napari.layers.Labels(_layers.outline_data(session.labels, session.table))
    seeds_layer = napari.layers.Labels(pred.seeds.astype(np.int32))
    sem_layer = napari.layers.Labels(pred.semantic)
    pts_layer = napari.layers.Points(pred.centre_points)
    params = model.params
    points = np.asarray(pred.centre_points, dtype=np.float64)
    results = {}
    for name, field, values, _goal in CHANGES:
        core_t, layer_t, sem_t, stages = [], [], [], []
        for k in range(args.repeat):
            # as the widget's worker: instances first, the semantic walk after
            if field is None:
                moved = points.copy()
                moved[0] += (6.0, 6.0) if k % 2 == 0 else (-6.0, -6.0)
                t0 = time.perf_counter()
                pred = cache.update(params, centre_points=moved, with_semantic=False)
            else:
                p = params.replace(**{field: values[k % 2]})
                t0 = time.perf_counter()
                pred = cache.update(p, with_semantic=False)
            t1 = time.perf_counter()
            done = set(cache.last_recomputed)
            new_centres = bool(done & {"centroids", "clusters"}) and field is not None
            if new_centres or len(pts_layer.data) != len(pred.centre_points):  # a cached stage may bring other centres back
                pts_layer.data = pred.centre_points  # before the features: the count of points may change
            if done & {"centroids", "clusters", "iwalk", "instances"}:
                ptable = table_from_records(pred.instances.records, model.classes)
                record = session.apply_proposal(pred.instances.labels, ptable)
                if record.diff is not None:
                    inst_layer.data_setitem(record.diff.indices(), record.diff.new.astype(np.int32))
                feats = features_table(session.labels, session.table)
                inst_layer.features = feats
                _layers.update_instances_colormap(inst_layer, session.table, model.classes, feats["index"][1:])  # as the widget
                outline = _layers.outline_data(session.labels, session.table)
                if not np.array_equal(outline, outline_layer.data):  # as the widget: unchanged outlines are not set again
                    outline_layer.data = outline
                pts_layer.features = _layers.centroid_features(pred.centre_points, session.labels, session.table)
            if "seeds" in done:
                seeds_layer.data = pred.seeds.astype(np.int32)
            t2 = time.perf_counter()
            pred = cache.update()  # the semantic walk, if the change needs it
            sem_done = set(cache.last_recomputed)
            if sem_done:
                sem_layer.data = pred.semantic
            t3 = time.perf_counter()
            core_t.append(t1 - t0)
            layer_t.append(t2 - t1)
            sem_t.append(t3 - t2)
            stages = sorted(done | sem_done)
        cache.update(params)  # back to the start
        cache.reset_points()
        cache.update(params)
        results[name] = (stages, statistics.median(core_t), statistics.median(layer_t), statistics.median(sem_t))
    return results


def bench_viewer(args) -> dict[str, float]:
    """change -> median seconds from setting the widget's slider to the updated instances layer."""
    import napari
    from qtpy.QtWidgets import QApplication

    import napari_irnet._napari.jobs as jobs
    from napari_irnet.models.checkpoint import save_checkpoint

    model, image, outputs, _ = setup(args)
    run_networks = jobs.run_networks

    def with_field(*a, **k):  # the widget's run gets the same displacement field as above
        out = run_networks(*a, **k)
        out.irn.displacement = outputs.irn.displacement
        return out

    if not args.demo:
        jobs.run_networks = with_field
    tmp = Path(tempfile.mkdtemp(prefix="bench_interactive_"))
    os.environ["NAPARI_IRNET_CONFIG_DIR"] = str(tmp / "config")
    os.environ["NAPARI_IRNET_DATA_DIR"] = str(tmp / "data")
    ckpt = save_checkpoint(model, tmp / "model.pt")
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(image, name="image", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-irnet", "IRNet")
    widget.set_checkpoint(ckpt)

    longest = [0.0]  # the longest the event loop waited between two turns: is the viewer responsive?

    def wait(cond, timeout=600.0):
        t0 = last = time.perf_counter()
        while not cond():
            app.processEvents()
            time.sleep(0.001)  # like an idle event loop: leave the CPU to the worker
            now = time.perf_counter()
            longest[0] = max(longest[0], now - last)
            last = now
            if now - t0 > timeout:
                raise TimeoutError(widget.status.value)
        app.processEvents()

    wait(lambda: widget.idle)
    widget.classes.value = model.classes[: args.classes]
    t0 = time.perf_counter()
    widget.run()
    wait(lambda: widget.idle and widget.session is not None)
    run_seconds = time.perf_counter() - t0

    changes: list = []  # the annotation's change events: the widget has written the new instances
    widget.session.annotation.connect(changes.append)

    results = {}
    for name, field, values, _goal in CHANGES:
        times = []
        for k in range(args.repeat):
            changes.clear()
            touches_instances = not name.startswith(("seed", "semantic"))
            t0 = time.perf_counter()
            if field is None:
                pts = widget.session.points.copy()
                pts[0] += (6.0, 6.0) if k % 2 == 0 else (-6.0, -6.0)
                widget.move_centroids(pts)
            else:
                widget.param_widgets[field].value = values[k % 2]
            if touches_instances:  # until the layer shows the new instances (drawn: Qt events processed)
                wait(lambda: bool(changes))
            else:  # seeds or semantic only: until the widget is idle
                wait(lambda: widget.idle)
            times.append(time.perf_counter() - t0)
            wait(lambda: widget.idle)
        results[name] = statistics.median(times)
        widget.reset_params()
        widget.reset_centroids()
        wait(lambda: widget.idle)
    viewer.close()
    jobs.run_networks = run_networks
    results["Run (networks and every stage)"] = run_seconds
    results["longest event-loop turn"] = longest[0]
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tiny", choices=["tiny", "resnet18", "resnet50"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--instances", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--viewer", action="store_true", help="also time the real widget in a napari window (display or Xvfb)")
    ap.add_argument("--demo", action="store_true", help="the bundled demo model on the tiled sample cells (its own outputs) instead of random weights")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    core = bench_core(args)
    viewer = bench_viewer(args) if args.viewer else {}
    what = "the demo model on the tiled sample cells" if args.demo else (
        f"{args.backbone} backbone (random weights), {args.classes} classes x {args.instances} centres")
    print(f"\n{args.size}x{args.size} image, {what}, {torch.get_num_threads()} threads, median of {args.repeat}\n")
    head = "| change | stages re-run | core to instances (s) | layer update (s) | **to updated instances (s)** | semantic layer after (s) |"
    sep = "|---|---|---|---|---|---|"
    if viewer:
        head += " widget in napari: slider to layer (s) |"
        sep += "---|"
    head += " goal (instances) |"
    sep += "---|"
    print(head)
    print(sep)
    for name, _field, _values, goal in CHANGES:
        if args.size > 1024:  # the goals of large images: post-walk changes 0.5 s, walk changes 5 s
            goal = 0.5 if goal < 1 else 5.0
        stages, core_s, layer_s, sem = core[name]
        row = f"| {name} | {', '.join(stages) or '–'} | {core_s:.3f} | {layer_s:.3f} | **{core_s + layer_s:.3f}** | {sem:.3f} |"
        if viewer:
            row += f" {viewer[name]:.3f} |"
        row += f" ≤ {goal:g} |"
        print(row)
    if "Run (networks and every stage)" in viewer:
        print(f"\nRun in the widget (networks and every stage, to idle): {viewer['Run (networks and every stage)']:.1f} s")
        print(f"Longest turn of the viewer's event loop while the widget worked: {1000 * viewer['longest event-loop turn']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
