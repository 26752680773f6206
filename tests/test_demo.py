"""The demo's training recipes and its score table (tiny models only: the real demo model is never trained here)."""

from __future__ import annotations

import json

import numpy as np

from napari_irnet import demo
from napari_irnet.io.images import read_label_image
from napari_irnet.io.results import write_class_legend, write_instance_tiff, write_instances_json, write_semantic_png


def _write_ground_truth_as_predictions(samples, pred_dir, classes):
    """Predictions equal to the samples' ground truth, in the files ``predict`` writes."""
    table = json.loads((samples / "instances.json").read_text())
    gt_classes = json.loads((samples / "labels.json").read_text())["classes"]
    write_class_legend(pred_dir, classes)
    for path in sorted((samples / "inst").glob("*.png")):
        inst = read_label_image(path)
        sem = read_label_image(samples / "sem" / path.name)
        to_model = np.array([0] + [classes.index(c) + 1 for c in gt_classes])
        write_instance_tiff(pred_dir / f"{path.stem}_instances.tif", inst)
        write_semantic_png(pred_dir / f"{path.stem}_semantic.png", to_model[sem].astype(np.uint8))
        records = []
        for i in (int(v) for v in np.unique(inst) if v):
            ys, xs = np.nonzero(inst == i)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            records.append({"id": i, "class": table[path.stem][str(i)], "score": 1.0, "bbox": bbox, "area": int(ys.size)})
        write_instances_json(pred_dir / f"{path.stem}_instances.json", records)


def test_score_table_gives_map_of_the_written_predictions(tmp_path):
    # the model's class order differs from the ground truth's: matched by name
    classes = ["blob", "round", "rod"]
    _write_ground_truth_as_predictions(demo.REPO_SAMPLES, tmp_path, classes)
    text = demo._score_table(tmp_path, demo.REPO_SAMPLES)
    assert "6 images" in text
    assert "| **mean** | **1.000** | **1.000** | **1.000** | **1.000** | **1.000** |" in text


def test_score_table_counts_missed_cells(tmp_path):
    classes = ["round", "rod", "blob"]
    _write_ground_truth_as_predictions(demo.REPO_SAMPLES, tmp_path, classes)
    first = sorted(tmp_path.glob("*_instances.tif"))[0]
    write_instance_tiff(first, np.zeros_like(read_label_image(first)))
    write_instances_json(first.with_name(first.name.replace(".tif", ".json")), [])
    text = demo._score_table(tmp_path, demo.REPO_SAMPLES)
    mean_row = next(line for line in text.splitlines() if line.startswith("| **mean**"))
    assert "**1.000**" not in mean_row.split("|")[3]  # AP@0.5 below 1: the first image's cells are missed


def test_recipe_trains_from_image_labels_and_reuses_a_cam_network(tmp_path, monkeypatch):
    tiny = demo.Recipe(
        "test", "tiny", None, 2,
        dict(cam_epochs=1, cam_batch_size=2, cam_crop_size=64, cam_resize_long=(60, 70),
             irn_epochs=1, irn_batch_size=2, irn_crop_size=96, irn_rescale=(0.375, 0.375), train_radius=5),
        "none", "seconds",
    )  # fmt: skip
    params = demo.demo_params().replace(cam_scales=(0.25,))
    first = demo.train(tmp_path / "a.pt", tiny, "cpu", params)
    assert first.untrained_networks() == []
    assert demo.training_recipe(first) == {"n_images": 2, "seed": demo.TRAIN_SEED}
    assert [h["stage"] for h in first.history[:3]] == ["demo", "cam", "irn"]
    second = demo.train(tmp_path / "b.pt", tiny, "cpu", params, cam_from=first)
    assert [h["stage"] for h in second.history[:3]] == ["demo", "cam", "irn"]  # the CAM network was not trained again
    for a, b in zip(first.cam.state_dict().values(), second.cam.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())
    assert demo._recipe_ok(second) and (tmp_path / "b.pt").is_file()
