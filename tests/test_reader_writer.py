"""Reader and writer contributions: label images in, instance TIFF and COCO JSON out."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_irnet._napari.reader import get_reader
from napari_irnet._napari.writer import write_instances_coco, write_instances_tiff
from napari_irnet.annotation.masks import InstanceInfo
from napari_irnet.io.coco import coco_from_instances
from napari_irnet.io.images import read_label_image
from napari_irnet.io.results import write_instance_tiff


def _labels() -> np.ndarray:
    labels = np.zeros((30, 40), np.int32)
    labels[2:10, 3:12] = 1
    labels[15:25, 20:35] = 4
    return labels


def test_reader_opens_label_tiff_and_palette_png(tmp_path):
    tif = write_instance_tiff(tmp_path / "a_instances.tif", _labels())
    reader = get_reader(str(tif))
    (data, kwargs, kind), = reader(str(tif))
    assert kind == "labels" and kwargs["name"] == "a_instances"
    np.testing.assert_array_equal(data, _labels())
    png = tmp_path / "b_semantic.png"
    img = Image.fromarray(_labels().astype(np.uint8), mode="L").convert("P")
    img.save(png)
    (data, _, kind), = get_reader([str(png)])(str(png))
    assert kind == "labels" and set(np.unique(data)) == {0, 1, 4}


def test_reader_declines_colour_images_and_other_files(tmp_path):
    rgb = tmp_path / "photo_mask.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(rgb)
    assert get_reader(str(rgb)) is None
    assert get_reader(str(tmp_path / "missing_instances.tif")) is None
    assert get_reader(str(tmp_path / "x.csv")) is None
    assert get_reader([str(rgb), str(rgb)]) is None


def test_manifest_offers_reader_for_label_names_only():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-irnet")
    readers = {r.command: r for r in pm.contributions.readers}
    reader = readers["napari-irnet.get_reader"]
    assert "*instances.tif" in reader.filename_patterns and "*.png" not in reader.filename_patterns
    project = readers["napari-irnet.get_project_reader"]  # project folders only, never files
    assert project.accepts_directories and not project.filename_patterns
    exts = {e for w in pm.contributions.writers for e in w.filename_extensions}
    assert {".tif", ".json"} <= exts
    assert pm.contributions.widgets and pm.contributions.sample_data


def _meta() -> dict:
    feats = pd.DataFrame(
        {"index": [0, 1, 4], "class": ["", "round", "rod"], "score": [0.0, 0.7, 1.0], "state": ["background", "proposed", "edited"]}
    )
    return {
        "name": "instances",
        "features": feats,
        "metadata": {"napari_irnet": {"stage": "instances", "image": "x", "classes": ["round", "rod", "blob"], "image_name": "cells.png"}},
    }


def test_tiff_writer_round_trip(tmp_path):
    (out,) = write_instances_tiff(str(tmp_path / "inst.tif"), _labels(), _meta())
    np.testing.assert_array_equal(read_label_image(out), _labels())


def test_coco_writer_loads_in_pycocotools_and_masks_round_trip(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    (out,) = write_instances_coco(str(tmp_path / "inst.json"), _labels(), _meta())
    doc = json.loads(open(out).read())
    assert [c["name"] for c in doc["categories"]] == ["round", "rod", "blob"]
    assert doc["images"][0]["file_name"] == "cells.png"
    coco = COCO(out)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert {a["id"] for a in anns} == {1, 4}
    by_id = {a["id"]: a for a in anns}
    assert by_id[4]["category_id"] == 2 and by_id[4]["state"] == "edited"
    assert by_id[1]["bbox"] == [3.0, 2.0, 9.0, 8.0] and by_id[1]["area"] == 72
    for i, ann in by_id.items():
        np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), _labels() == i)


def test_coco_without_classes_uses_one_category():
    doc = coco_from_instances(_labels())
    assert [c["name"] for c in doc["categories"]] == ["object"]
    doc = coco_from_instances(_labels(), {1: InstanceInfo("rod")}, ["round"])
    assert [c["name"] for c in doc["categories"]] == ["round", "rod"]
    with pytest.raises(ValueError):
        coco_from_instances(np.zeros((2, 2, 2), np.int32))
