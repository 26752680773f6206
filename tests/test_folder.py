"""Per-image correction files: round trip, location, checks, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_irnet.annotation.masks import InstanceInfo, Masks
from napari_irnet.io.files import InputError
from napari_irnet.store.fingerprints import image_fingerprint
from napari_irnet.store.folder import corrections_folder, delete_corrections, load_corrections, save_corrections, summarise


def _corrections(image: np.ndarray) -> Masks:
    labels = np.zeros(image.shape[:2], np.int32)
    labels[2:6, 2:6] = 1
    labels[10:14, 3:9] = 5
    table = {1: InstanceInfo("round", 0.8, "accepted"), 5: InstanceInfo("rod", 1.0, "edited")}
    return Masks.from_table(labels, table, state="accepted", image_name="cells", fingerprint=image_fingerprint(image),
                            classes=["round", "rod"], checkpoint="m.pt", params={"beta": 10.0})


def test_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    folder = save_corrections(tmp_path / "c", _corrections(image))
    assert {p.name for p in folder.iterdir()} == {"instances.tif", "corrections.json"}
    back = load_corrections(folder, image)
    np.testing.assert_array_equal(back.labels, _corrections(image).labels)
    assert back.table == _corrections(image).table
    assert back.state == "accepted" and back.classes == ["round", "rod"] and back.params == {"beta": 10.0}
    assert back.updated
    assert summarise(back) == {"proposed": 0, "edited": 1, "accepted": 1}
    back.records.append({"id": 7, "class": "", "score": 1.0, "state": "edited"})  # an instance nobody gave a class
    assert back.instance_classes == {1: "round", 5: "rod"}
    doc = json.loads((folder / "corrections.json").read_text())
    assert doc["instances"][1] == {"id": 5, "class": "rod", "score": 1.0, "state": "edited", "area": 24, "bbox": [3, 10, 9, 14]}


def test_missing_folder_is_none_and_delete(tmp_path):
    assert load_corrections(tmp_path / "nothing") is None
    image = np.zeros((16, 20, 3), np.uint8)
    folder = save_corrections(tmp_path / "c", _corrections(image))
    delete_corrections(folder)
    assert load_corrections(folder) is None and not folder.exists()


def test_corrections_of_another_image_are_refused(tmp_path):
    image = np.zeros((16, 20, 3), np.uint8)
    folder = save_corrections(tmp_path / "c", _corrections(image))
    other = image.copy()
    other[0, 0] = 1
    with pytest.raises(InputError, match="another version"):
        load_corrections(folder, other)
    with pytest.raises(InputError, match="16x20"):
        load_corrections(folder, np.zeros((8, 8, 3), np.uint8))


def test_corrupt_or_foreign_files_name_the_file(tmp_path):
    image = np.zeros((16, 20, 3), np.uint8)
    folder = save_corrections(tmp_path / "c", _corrections(image))
    (folder / "corrections.json").write_text("{not json")
    with pytest.raises(InputError, match="corrections.json"):
        load_corrections(folder)
    (folder / "corrections.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not a napari-irnet"):
        load_corrections(folder)


def test_interrupted_save_keeps_the_newer_map_with_a_warning(tmp_path):
    from napari_irnet.io.results import write_instance_tiff

    image = np.zeros((16, 20, 3), np.uint8)
    folder = save_corrections(tmp_path / "c", _corrections(image))
    newer = _corrections(image).labels
    newer[0:2, 15:18] = 9  # a new painted instance, JSON not yet written
    write_instance_tiff(folder / "instances.tif", newer)
    with pytest.warns(UserWarning, match="interrupted"):
        back = load_corrections(folder, image)
    assert 9 in back.labels and 9 not in back.table


def test_failed_write_leaves_old_files(tmp_path, monkeypatch):
    import napari_irnet.store.folder as mod

    image = np.zeros((16, 20, 3), np.uint8)
    folder = save_corrections(tmp_path / "c", _corrections(image))
    before = (folder / "corrections.json").read_text()

    def boom(*_, **__):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod.json, "dumps", boom)
    changed = _corrections(image)
    changed.state = "corrected"
    with pytest.raises(RuntimeError):
        save_corrections(folder, changed)
    assert (folder / "corrections.json").read_text() == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_folder_next_to_an_image_file_or_in_the_data_dir(tmp_path, monkeypatch):
    assert corrections_folder("x", image_path=tmp_path / "imgs" / "a.png") == tmp_path / "imgs" / "napari-irnet" / "a.png"
    monkeypatch.setenv("NAPARI_IRNET_DATA_DIR", str(tmp_path / "data"))
    image = np.zeros((4, 4, 3), np.uint8)
    f = corrections_folder("synthetic cells", image)
    assert f.parent == tmp_path / "data" / "corrections"
    # keyed by the pixels alone: renaming the layer finds the same corrections
    assert f.name == image_fingerprint(image) and corrections_folder("renamed", image) == f
    assert corrections_folder("y", image, root=tmp_path / "r").parent == tmp_path / "r" / "corrections"
    with pytest.raises(ValueError):
        corrections_folder("z")
    with pytest.raises(ValueError):
        Masks(np.zeros((2, 2), np.int32), [], state="done")


def test_a_folder_named_by_an_older_version_is_still_found(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    older = tmp_path / "corrections" / f"synthetic_cells-{image_fingerprint(image)}"
    older.mkdir(parents=True)
    assert corrections_folder("another name", image, root=tmp_path) == older


def test_the_annotators_background_is_saved_loaded_and_cleared(tmp_path):
    from napari_irnet.store.image_store import FolderStore

    image = np.zeros((16, 16, 3), np.uint8)
    corr = _corrections(image)
    corr.background = np.zeros((16, 16), bool)
    corr.background[12:16, 10:16] = True
    store = FolderStore(tmp_path / "c", (16, 16), (image_fingerprint(image),))
    store.save(corr)
    back = store.load()
    np.testing.assert_array_equal(back.background, corr.background)
    assert back.table[5].state == "edited"
    corr.background[:] = False  # nothing cleared any more: no file
    store.save(corr)
    assert store.load().background is None and not (tmp_path / "c" / "background.png").exists()
    with pytest.raises(InputError, match="another version"):
        FolderStore(tmp_path / "c", (16, 16), ("0123456789abcdef",)).load()
    store.clear()
    assert store.load() is None


def test_the_command_line_finds_the_annotators_background_with_the_corrections(tmp_path):
    from napari_irnet.cli.finetune import find_correction

    image = np.zeros((16, 16, 3), np.uint8)
    corr = _corrections(image)
    corr.background = np.zeros((16, 16), bool)
    corr.background[12:, 12:] = True
    save_corrections(tmp_path / "a.png", corr)
    found = find_correction(tmp_path, "a.png", image)
    assert found.classes == {1: "round", 5: "rod"}
    np.testing.assert_array_equal(found.background, corr.background)
