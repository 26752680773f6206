"""Batch prediction over a project: resumable, failures recorded, checkpoints checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_irnet.store.revisions as revisions_module
from napari_irnet.io.files import OutputError
from napari_irnet.models.checkpoint import new_model, save_checkpoint
from napari_irnet.models.torch_files import CheckpointError
from napari_irnet.params import Params
from napari_irnet.store.batch import ProjectPrediction
from napari_irnet.store.create import create_project, open_project
from napari_irnet.store.project import ProjectError
from napari_irnet.synthetic import CLASS_NAMES, write_dataset

FAST = Params(cam_scales=(1.0,), walk_steps=16, centroid_steps=20, use_crf=False)


@pytest.fixture
def setup(tmp_path, tiny_dataset):
    root = write_dataset(tiny_dataset[:4], tmp_path / "ds")
    torch.manual_seed(0)
    ckpt = save_checkpoint(new_model(list(CLASS_NAMES), "tiny"), tmp_path / "m.pt")
    project = create_project(tmp_path / "P", root / "images", root / "labels.json", params=FAST, checkpoint=ckpt)
    return project, ckpt, root


def test_predicts_what_needs_it_and_resumes(setup, tiny_dataset):
    project, ckpt, _ = setup
    run = ProjectPrediction(project, device="cpu", limit=2)
    assert run.names == project.names[:2]
    events = list(run)
    assert [e.status for e in events] == ["predicted", "predicted"] and [e.total for e in events] == [2, 2]
    assert project.counts()["proposed"] == 2
    masks = project.load_masks(project.names[0])
    assert masks.labels.shape == (64, 64)
    assert {r["class"] for r in masks.records} <= set(tiny_dataset[0].labels)
    assert set(np.unique(masks.semantic)) <= {0} | {project.classes.index(c) + 1 for c in tiny_dataset[0].labels}
    first_state = (project.item_dir(project.names[0]) / "state.json").read_bytes()
    # the next run does only the rest; the one after that nothing
    rest = ProjectPrediction(open_project(project.root), device="cpu")
    assert rest.names == project.names[2:]
    assert len(list(rest)) == 2
    assert len(ProjectPrediction(project, device="cpu")) == 0
    assert (project.item_dir(project.names[0]) / "state.json").read_bytes() == first_state
    # corrected images are never predicted again, even with --force; proposed ones are
    inst = masks.labels
    project.save_correction(project.names[0], inst, masks.records)
    assert ProjectPrediction(project, device="cpu", force=True).names == project.names[1:]
    # other parameters make proposals stale
    stale = ProjectPrediction(project, device="cpu", params=FAST.replace(beta=5.0))
    assert stale.names == project.names[1:]
    assert open_project(project.root).params.beta != 5.0  # recorded only when a run starts, under the lock
    assert list(ProjectPrediction(project, device="cpu", params=FAST.replace(beta=5.0), limit=0)) == []
    assert open_project(project.root).params.beta == 5.0


def test_interrupted_run_loses_nothing(setup, monkeypatch):
    """A run stopped while storing its third image: two are kept, the third is redone, nothing else."""
    project, _, _ = setup
    real = revisions_module.write_semantic_png
    calls = {"n": 0}

    def dies_on_third(path, semantic, palette=True):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like Ctrl-C or a kill between two files
        return real(path, semantic, palette)

    monkeypatch.setattr(revisions_module, "write_semantic_png", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        list(ProjectPrediction(project, device="cpu"))
    monkeypatch.setattr(revisions_module, "write_semantic_png", real)
    back = open_project(project.root)
    assert [back.state(n).state for n in back.names] == ["proposed", "proposed", "new", "new"]
    assert not any(back.item_dir(back.names[2]).glob("result-*"))  # the half revision was removed
    assert ProjectPrediction(back, device="cpu").names == back.names[2:]


def test_disk_full_stops_the_run_and_keeps_the_results(setup, monkeypatch):
    project, _, _ = setup
    list(ProjectPrediction(project, device="cpu", limit=1))
    real = revisions_module.write_instance_tiff

    def full(path, instances):
        raise OutputError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr(revisions_module, "write_instance_tiff", full)
    with pytest.raises(OutputError, match=r"instances\.tif: cannot write \(No space left"):
        list(ProjectPrediction(project, device="cpu"))
    monkeypatch.setattr(revisions_module, "write_instance_tiff", real)
    assert [project.state(n).state for n in project.names] == ["proposed", "new", "new", "new"]
    assert project.load_masks(project.names[0]) is not None


def test_unreadable_image_is_recorded_and_the_run_goes_on(setup):
    project, _, root = setup
    bad = project.names[1]
    (root / "images" / bad).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    events = list(ProjectPrediction(project, device="cpu"))
    assert [e.status for e in events] == ["predicted", "failed", "predicted", "predicted"]
    assert bad in events[1].error and "not a readable image" in events[1].error
    st = project.state(bad)
    assert st.state == "new" and bad in st.error["message"]
    assert ProjectPrediction(project, device="cpu").names == [bad]  # retried next time


def test_checkpoint_problems_are_clear(setup, tmp_path):
    project, _, _ = setup
    other = save_checkpoint(new_model(["cat", "dog"], "tiny"), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: trained for classes \['cat', 'dog'\], which lack"):
        ProjectPrediction(project, checkpoint=other)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match=r"corrupt\.pt: not a readable checkpoint"):
        ProjectPrediction(project, checkpoint=corrupt)
    assert open_project(project.root).checkpoint_path.name == "m.pt"  # unchanged
    project.set_checkpoint(None)
    with pytest.raises(ProjectError, match="no checkpoint set"):
        ProjectPrediction(project)


def test_unlabelled_and_empty_label_images(tmp_path, tiny_dataset):
    root = write_dataset(tiny_dataset[:3], tmp_path / "ds")
    labels = tmp_path / "l.csv"
    labels.write_text("image,classes\nsynth_0000.png,\n")  # no classes: nothing to find
    ckpt = save_checkpoint(new_model(list(CLASS_NAMES), "tiny"), tmp_path / "m.pt")
    project = create_project(
        tmp_path / "P", root / "images", labels, classes=list(CLASS_NAMES), params=FAST, checkpoint=ckpt, include_unlabelled=True
    )
    assert [project.entry(n).labels for n in project.names] == [[], None, None]
    assert [e.status for e in ProjectPrediction(project, device="cpu")] == ["predicted"] * 3
    empty = project.load_masks(project.names[0])
    assert empty.records == [] and empty.labels.max() == 0
    assert project.state(project.names[1]).result["labels"] is None  # the classifier chose
    assert len(ProjectPrediction(project, device="cpu")) == 0


def test_model_in_memory_is_keyed_by_its_weights(setup):
    project, ckpt, _ = setup
    list(ProjectPrediction(project, device="cpu", limit=1))
    from napari_irnet.models.checkpoint import load_checkpoint

    same = load_checkpoint(ckpt)
    key = ProjectPrediction(project, same, device="cpu").model_key
    assert key == ProjectPrediction(project, load_checkpoint(ckpt), device="cpu").model_key
    torch.manual_seed(5)
    other = ProjectPrediction(project, new_model(list(CLASS_NAMES), "tiny"), device="cpu")
    assert other.model_key != key and other.names == project.names  # its proposal is stale for another model


def test_model_key_leaves_out_auto_precision_but_not_a_chosen_one():
    import hashlib
    import json

    from napari_irnet.params import Params
    from napari_irnet.store.fingerprints import model_key

    auto = model_key(None, Params(), fingerprint="f" * 32)
    earlier = Params().to_dict()
    del earlier["network_precision"]  # the parameters of a project made before the field
    assert auto == f"{'f' * 16}-{hashlib.sha256(json.dumps(earlier, sort_keys=True).encode()).hexdigest()[:8]}"
    assert model_key(None, Params(network_precision="float32"), fingerprint="f" * 32) != auto
    assert model_key(None, Params(network_precision="bfloat16"), fingerprint="f" * 32) != auto
