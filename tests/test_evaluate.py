"""evaluate_folder on tiny synthetic predictions, one test per ground-truth layout, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_irnet.evaluation.evaluate import evaluate_folder, format_table
from napari_irnet.evaluation.metrics import instance_average_precision, semantic_confusion, semantic_miou
from napari_irnet.evaluation.overlap import InstanceSet, instances_from_label_map
from napari_irnet.io.files import InputError
from napari_irnet.io.results import write_instance_tiff, write_instances_json, write_semantic_png
from napari_irnet.synthetic import CLASS_NAMES, make_dataset, write_dataset

CLASSES = list(CLASS_NAMES)


@pytest.fixture(scope="module")
def samples():
    return make_dataset(3, shape=(64, 64), seed=5, density=2.0)


def write_prediction(folder, stem, instances, classes, scores, semantic=None):
    """Write one prediction the way ``predict`` does."""
    instances = np.asarray(instances, np.int32)
    records = []
    for i in (int(v) for v in np.unique(instances) if v):
        ys, xs = np.nonzero(instances == i)
        records.append(
            {
                "id": i,
                "class": classes[i],
                "score": scores[i],
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                "area": int(ys.size),
            }
        )
    if semantic is None:
        semantic = np.zeros(instances.shape, np.uint8)
        for i, name in classes.items():
            semantic[instances == i] = CLASSES.index(name) + 1
    write_instance_tiff(folder / f"{stem}_instances.tif", instances)
    write_instances_json(folder / f"{stem}_instances.json", records)
    write_semantic_png(folder / f"{stem}_semantic.png", semantic)


def make_predictions(samples, folder):
    """Image 0 perfect; image 1 with one instance missing and one class wrong; image 2 shifted by 2 px.

    Returns the in-memory InstanceSets and semantic maps written, for the expected numbers.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sets, sems = [], []
    for n, s in enumerate(samples):
        inst = s.instances.astype(np.int32).copy()
        cls = dict(s.instance_classes)
        if n == 1:
            ids = sorted(cls)
            inst[inst == ids[0]] = 0
            del cls[ids[0]]
            cls[ids[1]] = CLASSES[(CLASSES.index(cls[ids[1]]) + 1) % 3]
        if n == 2:
            inst = np.roll(inst, 2, axis=1)
        present = [int(i) for i in np.unique(inst) if i]
        cls = {i: cls[i] for i in present}
        scores = {i: float(v) for i, v in zip(present, rng.random(len(present)))}
        write_prediction(folder, s.name, inst, cls, scores)
        sets.append(instances_from_label_map(inst, {i: CLASSES.index(c) for i, c in cls.items()}, scores))
        sem = np.zeros(inst.shape, np.int64)
        for i, c in cls.items():
            sem[inst == i] = CLASSES.index(c) + 1
        sems.append(sem)
    return sets, sems


def expected_numbers(pred_sets, pred_sems, gt_sets, gt_sems):
    ap = instance_average_precision(pred_sets, gt_sets, (0.25, 0.5, 0.7, 0.75), num_classes=3)
    conf = sum(semantic_confusion(p, g, 4) for p, g in zip(pred_sems, gt_sems))
    return ap, semantic_miou(conf)[0]


def assert_same(results, ap, miou):
    for t in (0.25, 0.5, 0.7, 0.75):
        np.testing.assert_allclose(results["instance"][t]["AP"], ap[t]["AP"])
        assert results["instance"][t]["mAP"] == pytest.approx(ap[t]["mAP"])
    assert results["semantic"]["mIoU"] == pytest.approx(miou)


def gt_sets_of(samples, ignore=None):
    out = []
    for n, s in enumerate(samples):
        cls = {k: CLASSES.index(v) for k, v in s.instance_classes.items()}
        out.append(instances_from_label_map(s.instances, cls, ignore=None if ignore is None else ignore[n]))
    return out


def test_labels_folder(tmp_path, samples):
    gt_root = write_dataset(samples, tmp_path / "gt")
    pred_sets, pred_sems = make_predictions(samples, tmp_path / "pred")
    results = evaluate_folder(tmp_path / "pred", gt_root)
    assert results["gt_format"] == "labels" and results["classes"] == CLASSES  # from labels.json
    assert results["images"] == 3
    ap, miou = expected_numbers(pred_sets, pred_sems, gt_sets_of(samples), [s.semantic for s in samples])
    assert_same(results, ap, miou)
    assert 0 < results["instance"][0.5]["mAP"] < 1  # neither trivial nor broken
    assert results["n_gt"] == [int(v) for v in ap[0.25]["n_pos"]]
    # the perfect image alone scores 1 everywhere
    only_first = tmp_path / "pred1"
    only_first.mkdir()
    for f in (tmp_path / "pred").glob(f"{samples[0].name}_*"):
        (only_first / f.name).write_bytes(f.read_bytes())
    perfect = evaluate_folder(only_first, gt_root, only_predicted=True)
    assert perfect["instance"][0.75]["mAP"] == 1.0 and perfect["semantic"]["mIoU"] == 1.0
    assert perfect["images_without_prediction"] == 2 and perfect["images"] == 1
    table = format_table(results)
    assert "| **mean** |" in table and "AP@0.5" in table and all(c in table for c in CLASSES)


def test_labels_folder_with_integer_classes_and_meta(tmp_path, samples):
    # CoNSeP layout: instances.json holds class values (index + 1), class names in META.json
    gt_root = write_dataset(samples, tmp_path / "gt")
    (gt_root / "labels.json").unlink()
    (gt_root / "instances.json").write_text(
        json.dumps({s.name: {str(k): CLASSES.index(v) + 1 for k, v in s.instance_classes.items()} for s in samples})
    )
    (gt_root / "META.json").write_text(json.dumps({"classes": {"1": "round", "2": "rod", "3": "blob"}}))
    make_predictions(samples, tmp_path / "pred")
    a = evaluate_folder(tmp_path / "pred", gt_root)
    assert a["classes"] == CLASSES
    b = evaluate_folder(tmp_path / "pred", write_dataset(samples, tmp_path / "gt2"))
    assert a["instance"][0.5]["mAP"] == b["instance"][0.5]["mAP"]


def test_voc_folders_with_ignore_border(tmp_path, samples):
    root = tmp_path / "voc"
    ignores = []
    for s in samples:
        obj = s.instances.astype(np.uint8)
        cls = s.semantic.astype(np.uint8)
        # VOC's 255 border: the pixels of each object that touch another label
        border = np.zeros(obj.shape, bool)
        border[:-1] |= obj[:-1] != obj[1:]
        border[:, :-1] |= obj[:, :-1] != obj[:, 1:]
        border &= obj > 0
        obj[border], cls[border] = 255, 255
        ignores.append(border)
        write_semantic_png(root / "SegmentationObject" / f"{s.name}.png", obj)
        write_semantic_png(root / "SegmentationClass" / f"{s.name}.png", cls)
    pred_sets, pred_sems = make_predictions(samples, tmp_path / "pred")
    results = evaluate_folder(tmp_path / "pred", root, classes=CLASSES)
    assert results["gt_format"] == "voc"
    gt_sets = []
    for s, ign in zip(samples, ignores):
        inst = np.where(ign, 0, s.instances)
        cls = {k: CLASSES.index(v) for k, v in s.instance_classes.items() if (inst == k).any()}
        gt_sets.append(instances_from_label_map(inst, cls, ignore=ign))
    gt_sems = [np.where(ign, 255, s.semantic) for s, ign in zip(samples, ignores)]
    ap, miou = expected_numbers(pred_sets, pred_sems, gt_sets, gt_sems)
    assert_same(results, ap, miou)
    # the ignore border is honoured: the shifted image would lose more without it
    plain = instance_average_precision(pred_sets, gt_sets_of(samples), (0.75,), num_classes=3)[0.75]["mAP"]
    assert results["instance"][0.75]["mAP"] >= plain
    # default classes are VOC's: our class values 1..3 are aeroplane, bicycle, bird,
    # and the prediction records name other classes -> a clear error naming the file
    with pytest.raises(InputError, match=r"_instances\.json.*unknown class 'round'"):
        evaluate_folder(tmp_path / "pred", root)


def coco_json(samples, path, crowd_on=None):
    from pycocotools import mask as mask_utils

    images, anns = [], []
    for n, s in enumerate(samples, start=1):
        h, w = s.instances.shape
        images.append({"id": n, "file_name": f"{s.name}.png", "height": h, "width": w})
        for k, v in s.instance_classes.items():
            m = np.asfortranarray((s.instances == k).astype(np.uint8))
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": CLASSES.index(v) + 1,
                         "segmentation": rle, "area": int(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0})  # fmt: skip
    if crowd_on is not None:  # a crowd region in the top-left corner of image 1, on background
        m = np.zeros(samples[0].instances.shape, np.uint8)
        m[:4, :4] = 1
        m[samples[0].instances > 0] = 0
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "segmentation": rle,
                     "area": int(m.sum()), "bbox": [0, 0, 4, 4], "iscrowd": 1})  # fmt: skip
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)] + [{"id": 9, "name": "other"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco_json(tmp_path, samples):
    gt = coco_json(samples, tmp_path / "gt.json", crowd_on=0)
    pred_sets, pred_sems = make_predictions(samples, tmp_path / "pred")
    results = evaluate_folder(tmp_path / "pred", gt, classes=CLASSES)
    assert results["gt_format"] == "coco"
    crowd = np.zeros(samples[0].instances.shape, bool)
    crowd[:4, :4] = samples[0].instances[:4, :4] == 0
    ignores = [crowd] + [None] * (len(samples) - 1)
    gt_sets = gt_sets_of(samples, ignores)
    gt_sems = [np.where(crowd, 255, samples[0].semantic)] + [s.semantic for s in samples[1:]]
    ap, miou = expected_numbers(pred_sets, pred_sems, gt_sets, gt_sems)
    assert_same(results, ap, miou)
    # default classes: every category of the file, in id order
    assert evaluate_folder(tmp_path / "pred", gt)["classes"] == [*CLASSES, "other"]


def test_errors_name_the_file(tmp_path, samples):
    gt_root = write_dataset(samples, tmp_path / "gt")
    pred = tmp_path / "pred"
    make_predictions(samples, pred)
    name = samples[1].name
    # a record missing for an id in the map
    records = json.loads((pred / f"{name}_instances.json").read_text())
    (pred / f"{name}_instances.json").write_text(json.dumps(records[1:]))
    with pytest.raises(InputError, match=rf"{name}_instances\.json: no record for instance id"):
        evaluate_folder(pred, gt_root)
    (pred / f"{name}_instances.json").write_text("[{")
    with pytest.raises(InputError, match=rf"{name}_instances\.json: malformed JSON"):
        evaluate_folder(pred, gt_root)
    (pred / f"{name}_instances.json").write_text(json.dumps(records))
    # a prediction without ground truth
    write_prediction(pred, "stranger", samples[0].instances, {k: v for k, v in samples[0].instance_classes.items()},
                     {k: 0.5 for k in samples[0].instance_classes})  # fmt: skip
    with pytest.raises(InputError, match=r"stranger_instances\.tif: no ground truth for image 'stranger'"):
        evaluate_folder(pred, gt_root)
    for f in pred.glob("stranger_*"):
        f.unlink()
    # a size mismatch
    write_semantic_png(gt_root / "sem" / f"{name}.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match=rf"sem/{name}\.png: size \(10, 10\) differs"):
        evaluate_folder(pred, gt_root)
    # missing folders and unknown layouts
    with pytest.raises(InputError, match="nowhere: prediction folder not found"):
        evaluate_folder(tmp_path / "nowhere", gt_root)
    with pytest.raises(InputError, match="unknown ground-truth layout"):
        evaluate_folder(pred, tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(InputError, match="bad.json: not a COCO instances file"):
        evaluate_folder(pred, bad)


def test_cli_evaluate(tmp_path, samples, capsys):
    from napari_irnet.cli import main

    gt_root = write_dataset(samples, tmp_path / "gt")
    make_predictions(samples, tmp_path / "pred")
    out = tmp_path / "res" / "results.json"
    assert main(["evaluate", "--predictions", str(tmp_path / "pred"), "--ground-truth", str(gt_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| **mean** |" in printed and "AP@0.7" in printed
    data = json.loads(out.read_text())  # strict JSON: NaN written as null
    direct = evaluate_folder(tmp_path / "pred", gt_root)
    assert data["instance"]["0.5"]["mAP"] == pytest.approx(direct["instance"][0.5]["mAP"])
    assert data["semantic"]["mIoU"] == pytest.approx(direct["semantic"]["mIoU"])
    assert data["classes"] == CLASSES
    # the COCO layout through the CLI, with explicit format and classes
    gt = coco_json(samples, tmp_path / "gt.json")
    assert main(["evaluate", "--predictions", str(tmp_path / "pred"), "--ground-truth", str(gt),
                 "--gt-format", "coco", "--classes", *CLASSES]) == 0  # fmt: skip
    # bad input: exit code 2 and a message naming the file
    capsys.readouterr()
    assert main(["evaluate", "--predictions", str(tmp_path / "pred"), "--ground-truth", str(tmp_path / "missing")]) == 2
    assert "missing: ground truth not found" in capsys.readouterr().err
    assert main(["evaluate", "--predictions", str(tmp_path / "pred"), "--ground-truth", str(gt_root), "--gt-format", "voc"]) == 2
    assert "SegmentationObject: folder not found" in capsys.readouterr().err


def test_empty_prediction_set_is_an_error(tmp_path, samples):
    gt_root = write_dataset(samples, tmp_path / "gt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no predictions found"):
        evaluate_folder(tmp_path / "empty", gt_root)
    assert isinstance(InstanceSet(np.zeros((0, 2, 2), bool), []), InstanceSet)


def test_missing_predictions_count_as_empty_with_a_warning(tmp_path, samples):
    gt_root = write_dataset(samples, tmp_path / "gt")
    pred = tmp_path / "pred"
    pred.mkdir()
    write_prediction(pred, samples[0].name, samples[0].instances, dict(samples[0].instance_classes),
                     {k: 1.0 for k in samples[0].instance_classes})  # fmt: skip
    results = evaluate_folder(pred, gt_root)
    assert results["images"] == 3 and results["images_without_prediction"] == 2
    assert any("2 ground-truth image(s) have no prediction, scored as empty" in w and samples[1].name in w for w in results["warnings"])
    # the same as predicting nothing at all for the two others
    for s in samples[1:]:
        write_prediction(pred, s.name, np.zeros_like(s.instances), {}, {})
    empty = evaluate_folder(pred, gt_root)
    assert empty["images_without_prediction"] == 0
    for t in (0.25, 0.5, 0.75):
        assert results["instance"][t]["mAP"] == pytest.approx(empty["instance"][t]["mAP"])
    assert results["semantic"]["mIoU"] == pytest.approx(empty["semantic"]["mIoU"]) and results["semantic"]["mIoU"] < 0.9
    assert results["n_gt"] == empty["n_gt"]


def test_predictions_in_another_class_order_are_mapped_by_name(tmp_path, samples):
    """predict writes the semantic maps in the model's class order and says it in classes.json."""
    from napari_irnet.io.results import write_class_legend

    gt_root = write_dataset(samples, tmp_path / "gt")
    model_order = ["blob", "rod", "round"]  # train-cam's order on a labels CSV: sorted names
    pred = tmp_path / "pred"
    pred.mkdir()
    for s in samples:  # a perfect prediction, written as predict writes it
        sem = np.zeros(s.instances.shape, np.uint8)
        for i, c in s.instance_classes.items():
            sem[s.instances == i] = model_order.index(c) + 1
        write_prediction(pred, s.name, s.instances, dict(s.instance_classes), {k: 1.0 for k in s.instance_classes}, sem)
    write_class_legend(pred, model_order)
    results = evaluate_folder(pred, gt_root)
    assert results["semantic"]["mIoU"] == 1.0 and results["instance"][0.5]["mAP"] == 1.0
    assert results["prediction_classes"] == model_order and results["warnings"] == []
    # a predicted class the ground truth does not know, used in a map: an error naming the map and the class
    write_class_legend(pred, ["blob", "rod", "giraffe"])
    with pytest.raises(InputError, match=r"_semantic\.png: class value 3 is class 'giraffe' \(classes\.json\), which is not one"):
        evaluate_folder(pred, gt_root)
    # no legend (predictions of an older predict): the ground truth's order is assumed, and said
    (pred / "classes.json").unlink()
    results = evaluate_folder(pred, gt_root)
    assert results["semantic"]["mIoU"] < 1.0 and "classes.json not found" in results["warnings"][0]


def test_cli_predict_then_evaluate_scores_a_perfect_prediction_1(tmp_path, samples, monkeypatch, capsys):
    """The README's commands: train-cam's class order (sorted names) differs from the ground truth's."""
    import torch

    import napari_irnet.pipeline.predict as pipeline
    from napari_irnet.cli import main
    from napari_irnet.models.checkpoint import new_irnet, new_model, save_checkpoint
    from napari_irnet.pipeline.stages import InstanceResult

    gt_root = write_dataset(samples, tmp_path / "gt")
    torch.manual_seed(0)
    model = new_model(sorted(CLASSES), "tiny")
    model.irn = new_irnet(model, "cam")
    ckpt = save_checkpoint(model, tmp_path / "m.pt")
    by_shape = {s.image.tobytes(): s for s in samples}

    class Perfect:  # what predict returns for a model that is right everywhere, in its own class order
        def __init__(self, s, classes):
            records = [{"id": i, "class_id": classes.index(c), "score": 1.0, "bbox": [0, 0, 1, 1], "area": 1}
                       for i, c in s.instance_classes.items()]  # fmt: skip
            self.instances = InstanceResult(s.instances.astype(np.int32), records)
            self.semantic = np.zeros(s.instances.shape, np.int64)
            for i, c in s.instance_classes.items():
                self.semantic[s.instances == i] = classes.index(c) + 1

    monkeypatch.setattr(pipeline, "predict", lambda m, image, *a, **k: (None, Perfect(by_shape[image.tobytes()], m.classes)))
    out = tmp_path / "pred"
    assert main(["predict", "--images", str(gt_root / "images"), "--labels", str(gt_root / "labels.csv"),
                 "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    assert main(["evaluate", "--predictions", str(out), "--ground-truth", str(gt_root), "--out", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["semantic"]["mIoU"] == 1.0 and data["instance"]["0.5"]["mAP"] == 1.0
