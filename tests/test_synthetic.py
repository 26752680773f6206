"""The synthetic data generator behind the demo set and the unit-test data."""

from __future__ import annotations

import csv
import json

import numpy as np

from napari_irnet.synthetic import CLASS_NAMES, make_dataset, write_dataset


def test_same_seed_same_images_other_seed_other_images():
    a = make_dataset(3, shape=(64, 64), seed=5)
    b = make_dataset(3, shape=(64, 64), seed=5)
    c = make_dataset(3, shape=(64, 64), seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.instances, y.instances)
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(a, c))


def test_annotations_are_consistent():
    for s in make_dataset(20, shape=(96, 96), seed=1):
        ids = np.unique(s.instances)
        ids = ids[ids > 0]
        assert list(ids) == list(range(1, len(ids) + 1)), "ids are contiguous"
        assert set(s.instance_classes) == set(ids.tolist())
        for iid, cls in s.instance_classes.items():
            sem = np.unique(s.semantic[s.instances == iid])
            assert list(sem) == [CLASS_NAMES.index(cls) + 1]
        assert ((s.semantic > 0) == (s.instances > 0)).all()
        assert s.labels == [c for c in CLASS_NAMES if c in s.instance_classes.values()]
        assert s.image.dtype == np.uint8 and s.image.shape == (96, 96, 3)


def test_classes_vary_touch_and_differ_in_size():
    samples = make_dataset(30, shape=(128, 128), seed=2)
    subsets = {tuple(s.labels) for s in samples}
    assert len(subsets) >= 4, "images hold varying subsets of the classes"
    assert any(len(s.labels) == 1 for s in samples) and any(len(s.labels) == 3 for s in samples)
    # touching instances: two different non-zero ids on 4-neighbouring pixels
    touching = 0
    areas = {c: [] for c in CLASS_NAMES}
    for s in samples:
        a, b = s.instances[:, 1:], s.instances[:, :-1]
        touching += int(((a != b) & (a > 0) & (b > 0)).sum())
        for iid, cls in s.instance_classes.items():
            areas[cls].append(int((s.instances == iid).sum()))
    assert touching > 0
    med = {c: np.median(v) for c, v in areas.items()}
    assert med["round"] < med["rod"] < med["blob"], med


def test_illumination_is_uneven_and_noisy():
    s = make_dataset(1, shape=(128, 128), seed=9)[0]
    bg = s.image[s.instances == 0].astype(float)
    assert bg.std(axis=0).mean() > 3, "background carries noise and shading"


def test_write_dataset_layout(tmp_path):
    from PIL import Image

    samples = make_dataset(4, shape=(48, 48), seed=3)
    root = write_dataset(samples, tmp_path / "ds")
    with open(root / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [f"{s.name}.png" for s in samples]
    assert rows[0]["classes"].split(";") == samples[0].labels
    meta = json.loads((root / "labels.json").read_text())
    assert meta["classes"] == list(CLASS_NAMES)
    inst = np.array(Image.open(root / "inst" / f"{samples[1].name}.png"))
    np.testing.assert_array_equal(inst, samples[1].instances)
    img = np.array(Image.open(root / "images" / f"{samples[1].name}.png"))
    np.testing.assert_array_equal(img, samples[1].image)


def test_centre_field_points_every_pixel_at_its_nearest_centre():
    import numpy as np

    from napari_irnet.synthetic import centre_field

    centres = np.array([[1.0, 1.0], [6.0, 8.5]])
    disp, owner = centre_field((8, 10), centres)
    assert disp.shape == (2, 8, 10) and disp.dtype == np.float32
    assert owner[0, 0] == 0 and owner[7, 9] == 1
    yy, xx = np.mgrid[0:8, 0:10]
    np.testing.assert_allclose(yy + disp[0], centres[owner, 0])
    np.testing.assert_allclose(xx + disp[1], centres[owner, 1])
    d = [(yy - cy) ** 2 + (xx - cx) ** 2 for cy, cx in centres]
    assert np.all(np.minimum(d[0], d[1]) == np.where(owner == 0, d[0], d[1]))
