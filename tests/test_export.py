"""Exports: COCO (pycocotools loads and evaluates it), label TIFF/PNG, VOC; round trips."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import relabel_sequential

from napari_irnet.io.results import voc_palette
from napari_irnet.store.create import create_project
from napari_irnet.store.export import ExportError, export_coco, export_label_images, export_voc, import_coco, import_label_images, import_voc
from napari_irnet.synthetic import write_dataset

# pycocotools' decoder trips numpy 2's copy-keyword deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def project(tmp_path, tiny_dataset):
    """Six images: 2 accepted, 2 corrected (one also with a model result), 1 proposed, 1 new."""
    samples = tiny_dataset[:6]
    root = write_dataset(samples, tmp_path / "ds")
    proj = create_project(tmp_path / "P", root / "images", root / "labels.json")
    for i, s in enumerate(samples[:5]):
        name = proj.names[i]
        inst = s.instances.astype(np.int32)
        # gaps in the ids, as after deleting instances in the viewer
        inst = np.where(inst > 0, inst * 3, 0)
        records = [{"id": k * 3, "class": c, "score": 0.25 + 0.1 * (k % 5)} for k, c in s.instance_classes.items()]
        if i in (3, 4):  # the model's proposal (a shifted copy, to differ from the truth)
            shifted = np.roll(inst, 2, axis=1)
            keep = [r for r in records if (shifted == r["id"]).any()]
            proj.save_result(name, shifted, keep, np.zeros_like(inst), "model", None)
        if i < 4:
            proj.save_correction(name, inst, records, state="accepted" if i < 2 else "corrected")
    return proj


def _expected(project, name, source="current"):
    masks = project.load_masks(name, source)
    inst, _, _ = relabel_sequential(masks.labels)
    by_old = {r["id"]: r["class"] for r in masks.records}
    order = sorted(by_old)
    return inst, {k + 1: by_old[old] for k, old in enumerate(order)}, masks


def test_coco_loads_evaluates_and_round_trips(project, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    summary = export_coco(project, tmp_path / "coco", results=True)
    assert summary.images == 4 and summary.left_out == {"proposed": 1, "new": 1}
    data = json.loads((tmp_path / "coco" / "instances.json").read_text())
    assert [c["name"] for c in data["categories"]] == project.classes
    assert [im["file_name"] for im in data["images"]] == project.names[:4]
    assert all("score" not in a for a in data["annotations"])  # corrections: annotator's masks
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "coco" / "instances.json"))
        dt = gt.loadRes(str(tmp_path / "coco" / "results.json"))
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # the same masks as predictions: perfect AP
    back = import_coco(tmp_path / "coco" / "instances.json")
    assert list(back) == project.names[:4]
    for name, got in back.items():
        inst, classes, _ = _expected(project, name)
        np.testing.assert_array_equal(got.instances, inst)
        assert got.classes == classes


def test_coco_of_model_results_has_scores_and_scores_against_corrections(project, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    export_coco(project, tmp_path / "gt", states=["corrected"])
    s = export_coco(project, tmp_path / "model", states=["corrected"], source="result", results=True)
    assert s.images == 1 and s.left_out == {"accepted": 2, "corrected without result": 1, "proposed": 1, "new": 1}
    data = json.loads((tmp_path / "model" / "instances.json").read_text())
    _, _, masks = _expected(project, project.names[3], "result")
    assert sorted(a["score"] for a in data["annotations"]) == sorted(r["score"] for r in masks.records)
    # evaluate the model's proposals against the annotator's corrections (image ids agree
    # only for the one image both exports hold)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt" / "instances.json"))
        results = json.loads((tmp_path / "model" / "results.json").read_text())
        gt_ids = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
        for r in results:
            r["image_id"] = gt_ids[data["images"][r["image_id"] - 1]["file_name"]]
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.params.imgIds = [gt_ids[project.names[3]]]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.0 <= ev.stats[0] < 1.0  # shifted by two pixels: not perfect


@pytest.mark.parametrize("fmt", ["tif", "png"])
def test_label_images_round_trip(project, tmp_path, fmt):
    summary = export_label_images(project, tmp_path / "out", (fmt,), states=["accepted", "corrected", "proposed"])
    assert summary.images == 5
    back = import_label_images(tmp_path / "out" / fmt)
    assert sorted(back) == sorted(n[:-4] for n in project.names[:5])
    for name in project.names[:5]:
        inst, classes, masks = _expected(project, name)
        got = back[name[:-4]]
        np.testing.assert_array_equal(got.instances, inst)
        np.testing.assert_array_equal(got.semantic, masks.semantic)
        assert got.classes == classes
    if fmt == "png":
        with Image.open(tmp_path / "out" / "png" / "semantic" / f"{project.names[0][:-4]}.png") as img:
            assert img.mode == "P"
        with Image.open(tmp_path / "out" / "png" / "instances" / f"{project.names[0][:-4]}.png") as img:
            assert img.mode.startswith("I")  # 16-bit
    legend = json.loads((tmp_path / "out" / fmt / "classes.json").read_text())
    assert legend["classes"] == {str(i + 1): c for i, c in enumerate(project.classes)}


def test_voc_round_trip_and_palette(project, tmp_path):
    out = tmp_path / "voc"
    summary = export_voc(project, out)
    assert summary.images == 4
    stems = (out / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    assert stems == [n[:-4] for n in project.names[:4]]
    assert (out / "class_names.txt").read_text().split() == ["background", *project.classes]
    with Image.open(out / "SegmentationObject" / f"{stems[0]}.png") as img:
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img.getpalette(), np.uint8).reshape(-1, 3), voc_palette())
    with Image.open(out / "JPEGImages" / f"{stems[0]}.jpg") as img:
        assert img.size == (64, 64)
    back = import_voc(out)
    for name in project.names[:4]:
        inst, classes, _ = _expected(project, name)
        got = back[name[:-4]]
        np.testing.assert_array_equal(got.instances, inst)
        assert got.classes == classes
        lut = np.zeros(inst.max() + 1, np.int32)
        for k, c in classes.items():
            lut[k] = project.classes.index(c) + 1
        np.testing.assert_array_equal(got.semantic, lut[inst])


def test_voc_refuses_more_than_254_instances(project, tmp_path):
    name = project.names[5]
    inst = np.zeros((64, 64), np.int32)
    inst.reshape(-1)[::4][:300] = np.arange(1, 301)  # 300 one-pixel instances
    project.save_correction(name, inst, [{"id": i, "class": "round"} for i in range(1, 301)])
    with pytest.raises(ExportError, match=rf"{name}: 300 instances do not fit VOC"):
        export_voc(project, tmp_path / "voc")
    assert not (tmp_path / "voc").exists()  # checked before anything is written
    assert export_label_images(project, tmp_path / "lab", ("tif",)).instances > 300


def test_export_names_clashing_stems(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "a.tif"):
        arr = np.zeros((8, 8), np.uint8)
        Image.fromarray(arr).save(folder / name)
    labels = tmp_path / "l.csv"
    labels.write_text("image,classes\na.png,x\na.tif,x\n")
    proj = create_project(tmp_path / "P", folder, labels)
    for n in proj.names:
        proj.save_correction(n, np.ones((8, 8), np.int32), [{"id": 1, "class": "x"}])
    export_label_images(proj, tmp_path / "out", ("tif",))
    assert sorted(p.name for p in (tmp_path / "out" / "tif" / "instances").glob("*.tif")) == ["a_png.tif", "a_tif.tif"]


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_again_into_a_folder_removes_only_its_own_stale_files(project, tmp_path, capsys):
    from napari_irnet.cli import main

    out = tmp_path / "out"
    base = ["export", "--project", str(project.root), "--out", str(out), "--format", "coco", "tif", "png", "voc"]
    assert main(base) == 0  # 4 images: 2 accepted, 2 corrected
    stems = [n.rsplit(".", 1)[0] for n in project.names]
    assert (out / "tif" / "instances" / f"{stems[3]}.tif").is_file() and (out / "voc" / "JPEGImages" / f"{stems[3]}.jpg").is_file()
    (out / "tif" / "README.txt").write_text("the annotator's notes")  # a user's file in the export
    assert main([*base, "--states", "accepted"]) == 0  # 2 images
    for fmt in ("tif", "png"):
        assert sorted(p.name for p in (out / fmt / "instances").iterdir()) == sorted(
            f"{s}.{ext}" for s in stems[:2] for ext in (fmt, "json")
        )
        assert sorted(p.name for p in (out / fmt / "semantic").iterdir()) == [f"{s}.{fmt}" for s in stems[:2]]
    assert sorted(p.stem for p in (out / "voc" / "SegmentationObject").iterdir()) == stems[:2]
    assert sorted(p.stem for p in (out / "voc" / "JPEGImages").iterdir()) == stems[:2]
    assert (out / "voc" / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split() == stems[:2]
    assert (out / "tif" / "README.txt").read_text() == "the annotator's notes"
    assert set(import_label_images(out / "png")) == set(stems[:2])
    # without images this time: the old JPEGs are the previous export's, and go
    assert main([*base[:-3], "voc", "--states", "accepted", "--no-images"]) == 0
    assert not (out / "voc" / "JPEGImages").exists()
    # a folder with files no export wrote: refused (exit 2, named), nothing touched
    foreign = tmp_path / "foreign"
    (foreign / "coco").mkdir(parents=True)
    (foreign / "coco" / "instances.json").write_text("an older export, or someone's file")
    before = _tree(foreign)
    capsys.readouterr()
    assert main(["export", "--project", str(project.root), "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert f"{foreign / 'coco'}: the folder holds files that no napari-irnet export wrote" in err
    assert _tree(foreign) == before
