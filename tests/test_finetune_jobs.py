"""The Fine-tune panel's job without a viewer: stop and resume, versions, folders, a collapsed field."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from napari_irnet.synthetic import CLASS_NAMES


def _digest(path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _drain(gen):
    """Every record of a job generator, and what it returned."""
    records = []
    try:
        while True:
            records.append(next(gen))
    except StopIteration as stop:
        return records, stop.value


def test_job_stop_then_start_again_resumes_and_versions_chain(fast_checkpoint, cells_sample, monkeypatch):
    from napari_irnet._napari.finetune_jobs import TrainingImage, finetune_job, store_of, version_choices

    original = _digest(fast_checkpoint)
    images = [TrainingImage("cells", cells_sample.image, list(cells_sample.labels), cells_sample.instances, "accepted")]
    settings = {"finetune_epochs": 3}  # 3 steps

    polls = {"n": 0}

    def stop_after_first_step() -> bool:
        polls["n"] += 1
        return polls["n"] > 2  # one poll after the labels, one before step 1

    records, result = _drain(finetune_job(fast_checkpoint, images, settings, "cpu", stop_after_first_step))
    assert result.stopped and result.version is None and [r["step"] for r in records if r["stage"] == "finetune"] == [1]
    store, number = store_of(fast_checkpoint)
    assert number == 0 and store.versions() == [] and _digest(fast_checkpoint) == original
    # the same images and settings continue from the stopped step
    records, result = _drain(finetune_job(fast_checkpoint, images, settings, "cpu"))
    steps = [r for r in records if r["stage"] == "finetune"]
    assert [r["step"] for r in steps] == [2, 3] and steps[0]["resumed_from"] == 1
    assert result.version["version"] == 1 and not list(store.folder.glob("*.resume"))
    # fine-tuning a stored version adds to the same store, with that version as parent
    store2, number2 = store_of(result.path)
    assert store2.folder == store.folder and number2 == 1
    _, again = _drain(finetune_job(result.path, images, {"finetune_epochs": 1}, "cpu"))
    assert again.version["version"] == 2 and again.version["parent"] == 1
    assert [p for _, p in version_choices(again.path)] == [str(fast_checkpoint), str(store.folder / "v0001.pt"), str(store.folder / "v0002.pt")]


def test_job_refuses_no_corrections_and_reads_a_folder_like_the_cli(fast_checkpoint, cells_sample, tmp_path):
    from PIL import Image

    from napari_irnet._napari.finetune_jobs import FolderSource, TrainingImage, finetune_job, folder_images
    from napari_irnet.annotation.masks import Masks
    from napari_irnet.io.files import InputError
    from napari_irnet.store.folder import save_corrections

    weak_only = [TrainingImage("cells", cells_sample.image, list(cells_sample.labels))]
    with pytest.raises(InputError, match="corrected or accepted"):
        list(finetune_job(fast_checkpoint, weak_only, device="cpu"))
    # a folder: one image with the plugin's accepted corrections, one without
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(cells_sample.image).save(folder / "a.png")
    Image.fromarray(cells_sample.image[::-1].copy()).save(folder / "b.png")
    (tmp_path / "labels.csv").write_text("image,classes\na.png," + ";".join(cells_sample.labels) + "\nb.png," + cells_sample.labels[0] + "\n")
    save_corrections(folder / "napari-irnet" / "a.png", Masks.from_table(cells_sample.instances.astype(np.int32), {}, state="accepted", image_name="a.png"))
    found = folder_images(folder, tmp_path / "labels.csv", CLASS_NAMES)
    assert [(f.name, f.strong, f.state) for f in found] == [("a", True, "accepted"), ("b", False, "new")]
    assert [f.name for f in folder_images(folder, tmp_path / "labels.csv", CLASS_NAMES, weak=False)] == ["a"]
    source = FolderSource(folder, tmp_path / "labels.csv", weak=False)
    records = list(finetune_job(fast_checkpoint, [], {"finetune_epochs": 1}, "cpu", folder=source))
    assert any(r["stage"] == "finetune" for r in records)


def test_job_relearns_a_collapsed_field_and_says_so(fast_checkpoint, cells_sample, tmp_path):
    import torch

    from napari_irnet._napari.finetune_jobs import TrainingImage, finetune_job
    from napari_irnet.models.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(fast_checkpoint)
    with torch.no_grad():  # the field goes to zero everywhere
        for p in model.irn.fc_dp7.parameters():
            p.zero_()
        model.irn.mean_shift.running_mean.zero_()
    collapsed = save_checkpoint(model, tmp_path / "collapsed.pt")
    images = [TrainingImage("cells", cells_sample.image, list(cells_sample.labels), cells_sample.instances, "accepted")]
    records, result = _drain(finetune_job(collapsed, images, {"finetune_epochs": 1}, "cpu"))
    first = next(r for r in records if r["stage"] == "finetune")
    assert first["displacement_reset"] == "collapsed"
    assert result.note.startswith("the displacement field had collapsed (mean displacement 0.00 grid cells")
    assert result.version["note"].endswith("displacement relearnt (collapsed)")


def test_versions_of_the_bundled_model_go_to_the_user_data_folder(env):
    from pathlib import Path

    import napari_irnet
    from napari_irnet._napari.finetune_jobs import store_of

    bundled = Path(napari_irnet.__file__).parent / "data" / "demo_model.pt"
    store, number = store_of(bundled)
    assert number == 0 and (env / "data") in store.folder.parents  # never inside the installed package
