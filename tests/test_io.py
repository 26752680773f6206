"""Tests of napari_irnet.io.files: reading user files, atomic writing, result formats."""

from __future__ import annotations

import json
import os
import stat
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_irnet.io.files import InputError, OutputError, atomic_path, atomic_write
from napari_irnet.io.images import list_images, read_image, read_label_image
from napari_irnet.io.labels import ImageLabels, read_labels
from napari_irnet.io.results import read_instances_json, voc_palette, write_instance_tiff, write_instances_json, write_semantic_png


def _noise(shape, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def _touch_images(folder, names):
    folder.mkdir(exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(folder / name)


# ---------------------------------------------------------------- read_image


def test_png_rgb_round_trip(tmp_path):
    rgb = _noise((5, 7, 3))
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _noise((4, 6))
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (4, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_drops_alpha(tmp_path):
    rgba = _noise((3, 4, 4), seed=1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_16bit_tiff_robust_scaling(tmp_path):
    # 1001 values, so the 1st and 99.8th percentiles fall exactly on
    # sorted positions 10 and 998: 1100 and 10980
    values = (np.arange(1001) * 10 + 1000).astype(np.uint16)
    image = values.reshape(7, 143)
    tifffile.imwrite(tmp_path / "u16.tif", image)
    out = read_image(tmp_path / "u16.tif")
    assert out.shape == (7, 143, 3) and out.dtype == np.uint8
    expected = np.clip(np.rint((values.astype(float) - 1100) / (10980 - 1100) * 255), 0, 255)
    np.testing.assert_array_equal(out[:, :, 0].ravel(), expected.astype(np.uint8))
    flat = out[:, :, 0].ravel()
    assert flat[0] == 0 and flat[10] == 0  # below / at the low percentile
    assert flat[998] == 255 and flat[1000] == 255  # at / above the high percentile
    assert flat[257] == 64  # value 3570: a quarter of the range -> 63.75 -> 64
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_float_tiff_scaled_by_min_max(tmp_path):
    image = np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32)
    tifffile.imwrite(tmp_path / "f.tif", image)
    out = read_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(out[:, :, 1], [[0, 64], [128, 255]])


def test_float_tiff_with_nan_is_refused(tmp_path):
    image = np.ones((4, 4), np.float32)
    image[0, 0] = np.nan
    image[1, 2] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", image)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "nan.tif")
    msg = str(err.value)
    assert "nan.tif" in msg and "2 of 16" in msg and "not finite" in msg


def test_multichannel_tiff_needs_channels(tmp_path):
    stack = _noise((5, 4, 6), seed=2)
    tifffile.imwrite(tmp_path / "five.tif", stack)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "five.tif")
    msg = str(err.value)
    assert "five.tif" in msg and "has 5 channels" in msg
    assert "channels=(r, g, b)" in msg and "0..4" in msg


def test_multichannel_tiff_with_channels(tmp_path):
    stack = _noise((5, 4, 6), seed=2)
    tifffile.imwrite(tmp_path / "five.tif", stack)
    out = read_image(tmp_path / "five.tif", channels=(0, 2, 4))
    np.testing.assert_array_equal(out, np.stack([stack[0], stack[2], stack[4]], axis=-1))
    one = read_image(tmp_path / "five.tif", channels=(3,))
    np.testing.assert_array_equal(one, np.repeat(stack[3][:, :, None], 3, axis=2))


def test_channels_last_tiff_with_channels(tmp_path):
    stack = _noise((8, 9, 5), seed=3)
    tifffile.imwrite(tmp_path / "last.tif", stack)
    out = read_image(tmp_path / "last.tif", channels=(4, 1, 0))
    np.testing.assert_array_equal(out, stack[:, :, [4, 1, 0]])


def test_channel_index_out_of_range(tmp_path):
    tifffile.imwrite(tmp_path / "five.tif", _noise((5, 4, 6)))
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "five.tif", channels=(0, 1, 7))
    msg = str(err.value)
    assert "five.tif" in msg and "channel index 7" in msg and "5 channels" in msg


def test_channels_must_be_one_or_three(tmp_path):
    tifffile.imwrite(tmp_path / "five.tif", _noise((5, 4, 6)))
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "five.tif", channels=(0, 1))
    assert "five.tif" in str(err.value) and "got 2" in str(err.value)


def test_z_stack_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", _noise((6, 4, 4)), metadata={"axes": "ZYX"})
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "z.tif")
    msg = str(err.value)
    assert "z.tif" in msg and "stack of 6 z-planes" in msg and "not a 2D image" in msg


def test_4d_tiff_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "4d.tif", _noise((2, 3, 4, 4)), metadata={"axes": "ZCYX"})
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "4d.tif")
    assert "4d.tif" in str(err.value) and "4 dimensions" in str(err.value)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_png_is_refused(tmp_path):
    Image.fromarray(_noise((32, 32, 3))).save(tmp_path / "cut.png")
    _truncate(tmp_path / "cut.png")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "cut.png")
    msg = str(err.value)
    assert "cut.png" in msg and "not a readable image" in msg and "truncated" in msg


def test_truncated_jpeg_is_refused(tmp_path):
    Image.fromarray(_noise((32, 32, 3))).save(tmp_path / "cut.jpg", quality=95)
    _truncate(tmp_path / "cut.jpg")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "cut.jpg")
    msg = str(err.value)
    assert "cut.jpg" in msg and "not a readable image" in msg and "truncated" in msg.lower()


def test_random_bytes_png_is_refused(tmp_path):
    (tmp_path / "junk.png").write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "junk.png")
    assert "junk.png" in str(err.value) and "not a readable image" in str(err.value)


def test_corrupt_tiff_is_refused(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + np.random.default_rng(1).bytes(60))
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "junk.tif")
    assert "junk.tif" in str(err.value) and "not a readable TIFF" in str(err.value)


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "empty.png")
    assert "empty.png" in str(err.value) and "empty (0 bytes)" in str(err.value)


def test_zero_size_image_is_refused(tmp_path):
    with pytest.warns(UserWarning):  # tifffile: "writing zero-size array"
        tifffile.imwrite(tmp_path / "nopix.tif", np.zeros((0, 5), np.uint8))
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "nopix.tif")
    assert "nopix.tif" in str(err.value)


def test_missing_image_file(tmp_path):
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "nowhere.png")
    assert "nowhere.png" in str(err.value) and "not found" in str(err.value)


# ---------------------------------------------------------------- label images


def test_read_label_image_uint16_png_and_int32_tiff(tmp_path):
    labels = np.array([[0, 1], [300, 65535]], np.uint16)
    Image.fromarray(labels).save(tmp_path / "l.png")
    out = read_label_image(tmp_path / "l.png")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)
    big = np.array([[0, 70000]], np.int32)
    tifffile.imwrite(tmp_path / "l.tif", big)
    np.testing.assert_array_equal(read_label_image(tmp_path / "l.tif"), big)


def test_read_label_image_palette_gives_indices(tmp_path):
    idx = np.array([[0, 3], [15, 255]], np.uint8)
    img = Image.fromarray(idx)
    img.putpalette(voc_palette().tobytes())
    img.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "voc.png"), idx)


def test_read_label_image_refuses_rgb(tmp_path):
    Image.fromarray(_noise((4, 4, 3))).save(tmp_path / "colour.png")
    with pytest.raises(InputError) as err:
        read_label_image(tmp_path / "colour.png")
    assert "colour.png" in str(err.value) and "colour (RGB) image" in str(err.value)


# ---------------------------------------------------------------- image-level labels


def test_csv_labels(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "image,classes\n"
        "a.png, cell ; platelet \n"
        "b.png,\n"
        "\n"
        "c.png,platelet;platelet\n"
    )
    labels = read_labels(tmp_path / "labels.csv")
    assert labels == ImageLabels(
        classes=["cell", "platelet"],
        image_labels={"a.png": ["cell", "platelet"], "b.png": [], "c.png": ["platelet"]},
    )


def test_csv_labels_with_given_classes(tmp_path):
    (tmp_path / "labels.csv").write_text("image,classes\na.png,b_cls\n")
    labels = read_labels(tmp_path / "labels.csv", classes=["z_cls", "b_cls", "a_cls"])
    assert labels.classes == ["z_cls", "b_cls", "a_cls"]
    assert labels.image_labels == {"a.png": ["b_cls"]}


def test_json_labels(tmp_path):
    data = {"classes": ["wbc", "rbc"], "image_labels": {"x.tif": ["rbc"], "y.tif": ["wbc", "rbc"]}}
    (tmp_path / "labels.json").write_text(json.dumps(data))
    labels = read_labels(tmp_path / "labels.json")
    assert labels.classes == ["wbc", "rbc"]
    assert labels.image_labels == {"x.tif": ["rbc"], "y.tif": ["wbc", "rbc"]}
    assert labels.unlabelled == []


def test_empty_csv(tmp_path):
    (tmp_path / "empty.csv").write_text("  \n")
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "empty.csv")
    assert "empty.csv" in str(err.value) and "is empty" in str(err.value)


def test_csv_without_header(tmp_path):
    (tmp_path / "nohead.csv").write_text("a.png,cell\n")
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "nohead.csv")
    msg = str(err.value)
    assert "nohead.csv, line 1" in msg and "header" in msg and "'image'" in msg


def test_csv_row_missing_column(tmp_path):
    (tmp_path / "short.csv").write_text("image,classes\na.png,cell\nb.png\n")
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "short.csv")
    assert "short.csv, line 3" in str(err.value) and "1 field" in str(err.value)


def test_malformed_json(tmp_path):
    (tmp_path / "bad.json").write_text('{"classes": ["a"],\n "image_labels": {"x.png": ["a"]\n')
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "bad.json")
    msg = str(err.value)
    assert "bad.json" in msg and "malformed JSON at line" in msg


def test_json_wrong_type(tmp_path):
    data = {"classes": ["a"], "image_labels": {"x.png": "a"}}
    (tmp_path / "types.json").write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "types.json")
    msg = str(err.value)
    assert "types.json" in msg and "image_labels['x.png']" in msg and "must be a list" in msg


def test_unknown_class_json(tmp_path):
    data = {"classes": ["cell"], "image_labels": {"x.png": ["cell"], "y.png": ["dog"]}}
    (tmp_path / "unk.json").write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "unk.json")
    msg = str(err.value)
    assert "unk.json" in msg and "image_labels['y.png']" in msg and "unknown class 'dog'" in msg


def test_unknown_class_csv(tmp_path):
    (tmp_path / "unk.csv").write_text("image,classes\na.png,cell\nb.png,cell;dog\n")
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "unk.csv", classes=["cell"])
    msg = str(err.value)
    assert "unk.csv, line 3" in msg and "unknown class 'dog'" in msg
    assert "known classes: cell" in msg


def test_duplicate_row_csv(tmp_path):
    (tmp_path / "dup.csv").write_text("image,classes\na.png,cell\nb.png,\na.png,cell\n")
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "dup.csv")
    msg = str(err.value)
    assert "dup.csv, line 4" in msg and "'a.png' is listed twice" in msg and "line 2" in msg


def test_duplicate_key_json(tmp_path):
    (tmp_path / "dup.json").write_text(
        '{"classes": ["a"], "image_labels": {"x.png": ["a"], "x.png": []}}'
    )
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "dup.json")
    assert "dup.json" in str(err.value) and "'x.png' appears twice" in str(err.value)


def test_missing_images(tmp_path):
    _touch_images(tmp_path / "img", ["a.png"])
    rows = "".join(f"m{i:02d}.png,cell\n" for i in range(12))
    (tmp_path / "labels.csv").write_text("image,classes\na.png,cell\n" + rows)
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "labels.csv", image_dir=tmp_path / "img")
    msg = str(err.value)
    assert "labels.csv" in msg and "12 listed images are not in" in msg
    assert "m00.png" in msg and "m09.png" in msg and "m10.png" not in msg and "and 2 more" in msg


def test_unlabelled_images(tmp_path):
    _touch_images(tmp_path / "img", ["a.png", "b.tif", "c.jpg"])
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    (tmp_path / "labels.csv").write_text("image,classes\na.png,cell\n")
    with pytest.warns(UserWarning, match=r"2 images in .* have no labels in .*labels\.csv"):
        labels = read_labels(tmp_path / "labels.csv", image_dir=tmp_path / "img")
    assert labels.unlabelled == ["b.tif", "c.jpg"]
    assert labels.image_labels == {"a.png": ["cell"]}


def test_list_images(tmp_path):
    _touch_images(tmp_path, ["b.PNG", "a.tif", ".hidden.png"])
    (tmp_path / "c.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.PNG"]
    with pytest.raises(InputError) as err:
        list_images(tmp_path / "nope")
    assert "nope" in str(err.value) and "not found" in str(err.value)
    (tmp_path / "void").mkdir()
    with pytest.raises(InputError) as err:
        list_images(tmp_path / "void")
    assert "void" in str(err.value) and "no images" in str(err.value)


# ---------------------------------------------------------------- atomic writing


def test_atomic_write_keeps_target_when_writer_raises(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")

    def failing_writer(tmp):
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, failing_writer)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp.name.startswith(".")
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_output_error_when_parent_is_a_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OutputError) as err:
        atomic_write(tmp_path / "plain" / "out.txt", lambda tmp: tmp.write_text("y"))
    msg = str(err.value)
    assert "out.txt" in msg and "cannot write" in msg and "plain is not a folder" in msg
    assert isinstance(err.value, OSError) and err.value.filename.endswith("out.txt")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_read_only_folder_gives_output_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "out.tif").write_bytes(b"old")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not stop this user from writing (running as root?)")
        with pytest.raises(OutputError) as err:
            write_instance_tiff(folder / "out.tif", np.ones((2, 2), np.int32))
        assert "out.tif" in str(err.value) and "cannot write" in str(err.value)
        assert (folder / "out.tif").read_bytes() == b"old"
    finally:
        folder.chmod(stat.S_IRWXU)


# ---------------------------------------------------------------- result formats


def test_instance_tiff_round_trip_uint16(tmp_path):
    inst = np.array([[0, 1, 1], [2, 65535, 0]], np.int64)
    write_instance_tiff(tmp_path / "i.tif", inst)
    with tifffile.TiffFile(tmp_path / "i.tif") as tif:
        stored = tif.asarray()
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, inst)
    np.testing.assert_array_equal(read_label_image(tmp_path / "i.tif"), inst)


def test_instance_tiff_round_trip_uint32(tmp_path):
    inst = np.array([[0, 65536], [70000, 3]], np.int32)
    write_instance_tiff(tmp_path / "i.tif", inst)
    stored = tifffile.imread(tmp_path / "i.tif")
    assert stored.dtype == np.uint32
    np.testing.assert_array_equal(stored, inst)


def test_semantic_png_round_trip_keeps_indices(tmp_path):
    sem = np.array([[0, 1, 2], [20, 254, 255]], np.uint8)
    write_semantic_png(tmp_path / "s.png", sem)
    with Image.open(tmp_path / "s.png") as img:
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img), sem)
        palette = np.asarray(img.getpalette()[: 3 * 4], np.uint8).reshape(4, 3)
    np.testing.assert_array_equal(palette, [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]])
    np.testing.assert_array_equal(read_label_image(tmp_path / "s.png"), sem)
    write_semantic_png(tmp_path / "g.png", sem, palette=False)
    with Image.open(tmp_path / "g.png") as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), sem)


def test_voc_palette_known_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[5].tolist() == [128, 0, 128]
    assert pal[15].tolist() == [192, 128, 128]  # VOC "person"
    assert pal[255].tolist() == [224, 224, 192]  # VOC "void" border colour
    assert len({tuple(c) for c in pal.tolist()}) == 256
    np.testing.assert_array_equal(voc_palette(8), pal[:8])


def test_instances_json_round_trip(tmp_path):
    records = [
        {
            "id": np.int32(1),
            "class": "cell",
            "score": np.float32(0.5),
            "bbox": (0, 1, 4, 3),
            "area": np.int64(6),
        },
        {
            "id": 2,
            "class": "platelet",
            "score": 1.0,
            "bbox": np.array([2, 2, 3, 3]),
            "area": 1,
            "state": "accepted",
        },
    ]
    write_instances_json(tmp_path / "inst.json", records)
    back = read_instances_json(tmp_path / "inst.json")
    assert back == [
        {"id": 1, "class": "cell", "score": 0.5, "bbox": [0, 1, 4, 3], "area": 6},
        {
            "id": 2,
            "class": "platelet",
            "score": 1.0,
            "bbox": [2, 2, 3, 3],
            "area": 1,
            "state": "accepted",
        },
    ]
    with pytest.raises(ValueError, match=r"records\[0\] is missing area"):
        no_area = {"id": 1, "class": "c", "score": 0, "bbox": [0, 0, 1, 1]}
        write_instances_json(tmp_path / "bad.json", [no_area])
    assert not (tmp_path / "bad.json").exists()


def test_io_does_not_import_napari_or_qt():
    import subprocess

    code = (
        "import sys, napari_irnet.io.files; "
        "gui = ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6'); "
        "bad = [m for m in gui if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_disk_full_gives_output_error_and_keeps_target(tmp_path):
    import errno

    target = tmp_path / "inst.json"
    target.write_text("old")

    def full_disk(tmp):
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as err:
        atomic_write(target, full_disk)
    msg = str(err.value)
    assert "inst.json" in msg and "No space left on device" in msg
    assert err.value.errno == errno.ENOSPC
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inst.json"]


def test_json_ready_and_write_json(tmp_path):
    from napari_irnet.io.files import json_ready, write_json

    data = {1: (np.float32(0.5), np.int64(3)), "a": np.array([1.0, np.nan]), "b": float("inf")}
    ready = json_ready(data)
    assert ready == {"1": [0.5, 3], "a": [1.0, None], "b": None}
    assert type(ready["1"][1]) is int
    path = write_json(tmp_path / "sub" / "x.json", ready)
    assert json.loads(path.read_text()) == ready
    with pytest.raises(ValueError):  # strict JSON: NaN must go through json_ready first
        write_json(tmp_path / "bad.json", {"v": float("nan")})
    assert not (tmp_path / "bad.json").exists()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.json"]  # no temporary file left


@pytest.fixture(scope="module")
def huge_tiff(tmp_path_factory):
    """A 200 KB TIFF that declares 12032 x 12032 pixels (zeros, compressed tiles)."""
    path = tmp_path_factory.mktemp("huge") / "huge.tif"

    def tiles():
        for _ in range(47 * 47):
            yield np.zeros((256, 256), np.uint8)

    tifffile.imwrite(path, tiles(), shape=(12032, 12032), dtype="uint8", tile=(256, 256), compression="zlib")
    return path


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(huge_tiff, tmp_path):
    from napari_irnet.io.images import DEFAULT_MAX_PIXELS, image_size

    assert huge_tiff.stat().st_size < 1_000_000 and image_size(huge_tiff) == (12032, 12032)
    with pytest.raises(InputError, match=r"huge\.tif: image is 12032 x 12032 = 144,769,024 pixels, more than the limit of 67,108,864"):
        read_image(huge_tiff)
    assert DEFAULT_MAX_PIXELS == 8192 * 8192
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(small)
    with pytest.raises(InputError, match=r"small\.png: image is 30 x 40 = 1,200 pixels, more than the limit of 1,000.*--max-pixels"):
        read_image(small, max_pixels=1000)
    assert read_image(small, max_pixels=0).shape == (40, 30, 3)  # 0: no limit


def test_cli_predict_refuses_a_huge_image_with_a_message(huge_tiff, tmp_path, capsys):
    import shutil

    from napari_irnet.cli import main
    from napari_irnet.models.checkpoint import new_irnet, new_model, save_checkpoint

    model = new_model(["a"], "tiny")
    model.irn = new_irnet(model, "cam")
    ckpt = save_checkpoint(model, tmp_path / "m.pt")
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(huge_tiff, images / "huge.tif")
    code = main(["predict", "--images", str(images), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "huge.tif: image is 12032 x 12032" in err and "--max-pixels" in err
