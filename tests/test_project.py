"""The project store: creation, states, atomic commits, upgrades, and bad input."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import tifffile

import napari_irnet.store.create as create_module
import napari_irnet.store.project as project_module
import napari_irnet.store.revisions as revisions_module
from napari_irnet.io.files import InputError, OutputError
from napari_irnet.params import Params
from napari_irnet.store.create import create_project, open_project
from napari_irnet.store.project import ProjectError
from napari_irnet.synthetic import write_dataset


@pytest.fixture
def dataset(tmp_path, tiny_dataset):
    return write_dataset(tiny_dataset[:4], tmp_path / "ds")


@pytest.fixture
def project(tmp_path, dataset):
    return create_project(tmp_path / "P", dataset / "images", dataset / "labels.csv")


def _gt(sample):
    """Ground-truth instances and records of a synthetic sample."""
    records = [{"id": i, "class": c} for i, c in sample.instance_classes.items()]
    return sample.instances.astype(np.int32), records


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_create_and_open(project, dataset, tiny_dataset):
    assert project.classes == ["blob", "rod", "round"]  # sorted names seen in the CSV
    manifest = json.loads((project.root / "project.json").read_text())
    assert manifest["format"] == "napari-irnet-project" and manifest["format_version"] == 1
    assert manifest["image_dir"] == "../ds/images"  # relative: project and images can move together
    back = open_project(project.root)
    assert back.names == [f"{s.name}.png" for s in tiny_dataset[:4]]
    assert back.entry(back.names[0]).labels == tiny_dataset[0].labels
    assert (back.entry(back.names[0]).height, back.entry(back.names[0]).width) == (64, 64)
    assert back.params == Params()
    assert back.counts() == {"new": 4, "proposed": 0, "corrected": 0, "accepted": 0}
    assert back.pending("any-key") == back.names
    np.testing.assert_array_equal(back.read_image(back.names[1]), tiny_dataset[1].image)


def test_states_results_and_corrections(project, tiny_dataset):
    name = project.names[0]
    inst, records = _gt(tiny_dataset[0])
    scored = [{**r, "score": 0.5} for r in records]
    assert project.save_result(name, inst, scored, np.zeros_like(inst), "model-a", project.entry(name).labels)
    st = project.state(name)
    assert st.state == "proposed" and st.result["model"] == "model-a" and st.result["instances"] == len(records)
    assert not project.needs_prediction(name, "model-a")
    assert project.needs_prediction(name, "model-b")  # another checkpoint or other parameters
    masks = project.load_masks(name)
    np.testing.assert_array_equal(masks.labels, inst)
    assert [r["id"] for r in masks.records] == sorted(tiny_dataset[0].instance_classes)
    first = masks.records[0]
    ys, xs = np.nonzero(inst == first["id"])
    assert first["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] and first["area"] == len(ys)
    # new image-level labels make the proposal stale
    project.set_labels(name, ["round"])
    assert project.needs_prediction(name, "model-a")
    assert open_project(project.root).entry(name).labels == ["round"]

    # the annotator corrects it: prediction no longer touches it
    inst2 = inst.copy()
    inst2[inst2 == first["id"]] = 0
    project.save_correction(name, inst2, records)
    assert project.state(name).state == "corrected"
    assert not project.needs_prediction(name, "model-b")
    assert not project.save_result(name, inst, scored, np.zeros_like(inst), "model-b", None)
    masks = project.load_masks(name)
    assert masks.source == "correction" and first["id"] not in [r["id"] for r in masks.records]
    assert all(r["score"] == 1.0 for r in masks.records)
    lut = {r["id"]: project.classes.index(r["class"]) + 1 for r in masks.records}
    expected_sem = np.vectorize(lambda i: lut.get(i, 0))(inst2)
    np.testing.assert_array_equal(masks.semantic, expected_sem)
    np.testing.assert_array_equal(project.load_masks(name, "result").labels, inst)  # the model's is kept
    project.accept(name)
    assert project.state(name).state == "accepted"
    project.reopen(name)
    assert project.state(name).state == "corrected"
    # only the current result and correction remain on disk
    assert sorted(p.name for p in project.item_dir(name).iterdir()) == ["correction-000002", "result-000001", "state.json"]

    # accepting a proposal keeps the model's masks as the accepted ones
    other = project.names[1]
    inst3, rec3 = _gt(tiny_dataset[1])
    project.save_result(other, inst3, [{**r, "score": 0.7} for r in rec3], np.zeros_like(inst3), "m", None)
    project.accept(other)
    acc = project.load_masks(other)
    assert project.state(other).state == "accepted" and acc.source == "correction"
    np.testing.assert_array_equal(acc.labels, inst3)
    assert all(r["score"] == 0.7 for r in acc.records)
    with pytest.raises(ProjectError, match="nothing to accept"):
        project.accept(project.names[2])
    assert project.counts() == {"new": 2, "proposed": 0, "corrected": 1, "accepted": 1}


def test_correction_is_checked(project, tiny_dataset):
    name = project.names[0]
    inst, records = _gt(tiny_dataset[0])
    with pytest.raises(ValueError, match="unknown class 'giraffe'"):
        project.save_correction(name, inst, [{**records[0], "class": "giraffe"}, *records[1:]])
    with pytest.raises(ValueError, match="have no record"):
        project.save_correction(name, inst, records[1:])
    with pytest.raises(ValueError, match="shape"):
        project.save_correction(name, inst[:10], records)
    with pytest.raises(ValueError, match="state must be"):
        project.save_correction(name, inst, records, state="proposed")
    # class_id is an index into the project's classes
    project.save_correction(name, inst, [{"id": r["id"], "class_id": 2} for r in records], state="accepted")
    assert {r["class"] for r in project.load_masks(name).records} == {"round"}
    assert project.state(project.names[1]).state == "new"
    assert sorted(p.name for p in project.item_dir(project.names[1]).parent.iterdir()) == [name]


def test_failed_write_keeps_the_previous_correction(project, tiny_dataset, monkeypatch):
    """Disk full while saving a correction: the old one stays, nothing half-written is left."""
    name = project.names[0]
    inst, records = _gt(tiny_dataset[0])
    project.save_correction(name, inst, records)
    before_state = (project.item_dir(name) / "state.json").read_bytes()
    before_files = _files(project.root)

    calls = {"n": 0}
    real = revisions_module.write_instances_json

    def full_disk(path, recs):
        calls["n"] += 1
        with open(path.with_name(".partial.tmp"), "w") as f:  # what a dying writer leaves
            f.write("[")
        raise OutputError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr(revisions_module, "write_instances_json", full_disk)
    with pytest.raises(OutputError, match="No space left"):
        project.save_correction(name, np.zeros_like(inst), [])
    assert calls["n"] == 1
    assert (project.item_dir(name) / "state.json").read_bytes() == before_state
    assert _files(project.root) == before_files
    masks = open_project(project.root).load_masks(name)
    np.testing.assert_array_equal(masks.labels, inst)
    # and the same for a state file that cannot be replaced
    monkeypatch.setattr(revisions_module, "write_instances_json", real)
    import napari_irnet.io.files as io_module

    real_replace = io_module.os.replace

    def no_replace(src, dst):
        if str(dst).endswith("state.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(io_module.os, "replace", no_replace)
    with pytest.raises(OutputError, match=r"state\.json.*No space left"):
        project.save_correction(name, np.zeros_like(inst), [])
    assert (project.item_dir(name) / "state.json").read_bytes() == before_state
    assert _files(project.root) == before_files


def test_failed_manifest_write_keeps_the_manifest(project, monkeypatch):
    before = (project.root / "project.json").read_bytes()

    def full_disk(path, *args, **kwargs):
        raise OutputError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr(project_module, "write_json", full_disk)
    with pytest.raises(OutputError):
        project.set_params(Params(beta=3.0))
    assert project.params == Params()  # memory and disk agree
    assert (project.root / "project.json").read_bytes() == before
    with pytest.raises(OutputError):
        project.set_labels(project.names[0], [])
    assert open_project(project.root).entry(project.names[0]).labels == project.entry(project.names[0]).labels


def test_interrupted_write_leaves_a_consistent_project(project, tiny_dataset):
    """A process killed after writing a revision's files but before the state: the old state holds."""
    name = project.names[0]
    inst, records = _gt(tiny_dataset[0])
    project.save_correction(name, inst, records)
    # what a killed writer leaves: a complete but unreferenced revision, a half one, a temp file
    (project.item_dir(name) / "correction-000007").mkdir()
    (project.item_dir(name) / "correction-000007" / "instances.tif").write_bytes(b"II*\x00")
    (project.item_dir(name) / ".state.json.1234.tmp.json").write_text("{")
    back = open_project(project.root)
    assert back.state(name).state == "corrected"
    np.testing.assert_array_equal(back.load_masks(name).labels, inst)
    assert back.cleanup() == 2
    assert sorted(p.name for p in back.item_dir(name).iterdir()) == ["correction-000001", "state.json"]
    back.save_correction(name, inst, records, state="accepted")
    assert back.state(name).correction["rev"] == 2


def test_open_errors_and_upgrades(project, monkeypatch, tmp_path):
    root = project.root
    with pytest.raises(ProjectError, match="not a napari-irnet project"):
        open_project(tmp_path)
    with pytest.raises(ProjectError, match="project folder not found"):
        open_project(tmp_path / "nope")
    manifest = json.loads((root / "project.json").read_text())

    def write(**changes):
        (root / "project.json").write_text(json.dumps({**manifest, **changes}))

    write(format_version=7)
    with pytest.raises(ProjectError, match="version 7 was written by a newer napari-irnet.*upgrade napari-irnet"):
        open_project(root)
    write(format_version="one")
    with pytest.raises(ProjectError, match="must be a positive integer"):
        open_project(root)
    (root / "project.json").write_text('{"format": "napari-irnet-project", ')
    with pytest.raises(ProjectError, match=r"project\.json: project manifest is not valid JSON"):
        open_project(root)
    write()
    (root / "images.json").write_text("[]")
    with pytest.raises(ProjectError, match=r"images\.json: not an image table"):
        open_project(root)
    project.write_image_table()

    # this napari-irnet pretends to write format 3 and knows how to upgrade 2 -> 3 only
    def two_to_three(r, m):
        m["upgraded_from_2"] = True
        return m

    monkeypatch.setattr(create_module, "FORMAT_VERSION", 3)
    monkeypatch.setattr(create_module, "_UPGRADES", {2: two_to_three})
    write(format_version=2)
    upgraded = open_project(root)
    assert upgraded.manifest["format_version"] == 3 and upgraded.manifest["upgraded_from_2"]
    assert json.loads((root / "project.json").read_text())["format_version"] == 3
    assert json.loads((root / "project.json.v2.bak").read_text())["format_version"] == 2
    write(format_version=1)
    with pytest.raises(ProjectError, match="version 1 cannot be upgraded to 3.*no upgrade step"):
        open_project(root)


def test_batch_lock_allows_one_run(project):
    with project.batch_lock():
        with pytest.raises(ProjectError, match="another napari-irnet run is predicting"):
            with open_project(project.root).batch_lock():
                pass
    with project.batch_lock():  # released
        pass


# ---------------------------------------------------------------- bad input at init


def test_init_refuses_a_non_empty_folder(project, dataset):
    with pytest.raises(ProjectError, match="not an empty folder"):
        create_project(project.root, dataset / "images", dataset / "labels.csv")


def test_init_bad_images_are_named_and_can_be_left_out(tmp_path, dataset):
    images = dataset / "images"
    names = sorted(p.name for p in images.iterdir())
    data = (images / names[1]).read_bytes()
    (images / names[1]).write_bytes(data[: len(data) // 2])  # truncated
    (images / names[2]).write_bytes(b"not an image at all")  # corrupt
    nan = np.ones((64, 64), np.float32)
    nan[3, 4] = np.nan
    tifffile.imwrite(images / "nan.tif", nan)
    labels = dataset / "labels.csv"
    labels.write_text(labels.read_text() + "nan.tif,round\n")
    with pytest.raises(InputError) as err:
        create_project(tmp_path / "P", images, labels)
    msg = str(err.value)
    assert "3 image(s) cannot be used" in msg and names[1] in msg and names[2] in msg
    assert "nan.tif: 1 of 4096 pixel values are not finite" in msg
    assert not (tmp_path / "P").exists()
    notes = []
    proj = create_project(tmp_path / "P", images, dataset / "labels.csv", skip_bad_images=True, on_warning=notes.append)
    assert proj.names == [names[0], names[3]]
    assert len(notes) == 3 and all(n.startswith("left out:") for n in notes)


def test_init_image_size_limit(tmp_path, dataset):
    with pytest.raises(InputError, match=r"64 x 64 = 4,096 pixels, more than the limit of 1,000"):
        create_project(tmp_path / "P", dataset / "images", dataset / "labels.csv", max_pixels=1000)


def test_init_labels_problems(tmp_path, dataset):
    images = dataset / "images"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.csv: label file is empty"):
        create_project(tmp_path / "P1", images, empty)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"image_labels": {"a.png": ["round"],}}')
    with pytest.raises(InputError, match=r"bad\.json: malformed JSON at line 1"):
        create_project(tmp_path / "P2", images, bad_json)
    missing = tmp_path / "missing.csv"
    missing.write_text("image,classes\nsynth_0000.png,round\nghost.png,rod\n")
    with pytest.raises(InputError, match=r"missing\.csv: 1 listed image is not in .*ghost\.png"):
        create_project(tmp_path / "P3", images, missing)
    with pytest.raises(InputError, match=r"labels\.csv, line \d+: image .*: unknown class '(round|blob)'"):
        create_project(tmp_path / "P4", images, dataset / "labels.csv", classes=["rod"])
    assert not any((tmp_path / f"P{i}").exists() for i in range(1, 5))


def test_init_unlabelled_images(tmp_path, dataset):
    part = tmp_path / "part.csv"
    part.write_text("image,classes\nsynth_0000.png,round\n")
    notes = []
    proj = create_project(tmp_path / "P", dataset / "images", part, on_warning=notes.append)
    assert proj.names == ["synth_0000.png"] and "3 image(s)" in notes[0] and "left out" in notes[0]
    proj = create_project(tmp_path / "Q", dataset / "images", part, include_unlabelled=True, classes=["round", "rod"])
    assert len(proj.names) == 4 and proj.entry("synth_0001.png").labels is None
    assert proj.classes == ["round", "rod"]


def test_init_multichannel_tiff_needs_channels(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "five.tif", rng.integers(0, 4000, (5, 32, 40), dtype=np.uint16))
    labels = tmp_path / "l.csv"
    labels.write_text("image,classes\nfive.tif,cell\n")
    with pytest.raises(InputError, match=r"five\.tif: has 5 channels.*channels=\(i,\)"):
        create_project(tmp_path / "P", folder, labels)
    proj = create_project(tmp_path / "P", folder, labels, channels=(0, 2, 4))
    assert proj.channels == (0, 2, 4)
    image = open_project(proj.root).read_image("five.tif")  # 16-bit, scaled to 8-bit
    assert image.shape == (32, 40, 3) and image.dtype == np.uint8
    # the image changed on disk since it was added: clear error naming it
    tifffile.imwrite(folder / "five.tif", rng.integers(0, 4000, (5, 16, 16), dtype=np.uint16))
    with pytest.raises(InputError, match=r"five\.tif: image is 16 x 16 now but was 40 x 32"):
        proj.read_image("five.tif")


def test_project_module_imports_no_torch_or_gui():
    import subprocess
    import sys

    code = (
        "import sys, napari_irnet.store.project, napari_irnet.store.create, napari_irnet.store.image_store; "
        "bad = [m for m in ('torch', 'napari', 'qtpy', 'PyQt5', 'PyQt6') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_init_after_an_interrupted_init(tmp_path, dataset):
    root = tmp_path / "P"
    root.mkdir()
    (root / "images.json").write_text('{"images": [')  # killed before the manifest was written
    with pytest.raises(ProjectError, match="not a napari-irnet project"):
        open_project(root)
    assert create_project(root, dataset / "images", dataset / "labels.csv").names


def test_garbage_collection_never_deletes_through_links_nor_foreign_files(project, tiny_dataset, tmp_path):
    """An item folder that is a link (or holds links, or a user's files): only the store's own revisions go."""
    name, other = project.names[0], project.names[1]
    inst, records = _gt(tiny_dataset[0])
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "sub" / "data.csv").write_text("1,2")
    (user / "result-000005").mkdir()  # named like a revision, but behind a link: not the store's to delete
    (user / "result-000005" / "keep.txt").write_text("x")
    folder = project.item_dir(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(user, target_is_directory=True)
    project.save_correction(name, inst, records)
    project.save_correction(name, inst, records, state="accepted")  # the first revision is garbage now
    assert project.cleanup() == 0
    assert (user / "notes.txt").read_text() == "mine" and (user / "sub" / "data.csv").read_text() == "1,2"
    assert (user / "result-000005" / "keep.txt").is_file()
    # a real item folder: a link named like a revision and the user's own files stay; the store's garbage goes
    inst1, records1 = _gt(tiny_dataset[1])
    project.save_correction(other, inst1, records1)
    real = project.item_dir(other)
    (real / "correction-000009").symlink_to(user, target_is_directory=True)
    (real / "my-notes").mkdir()
    (real / "my-notes" / "n.txt").write_text("n")
    (real / "correction-000008").mkdir()  # what an interrupted write leaves
    project.save_correction(other, inst1, records1, state="accepted")
    left = sorted(p.name for p in real.iterdir())
    assert left == ["correction-000009", "correction-000010", "my-notes", "state.json"]
    assert (user / "notes.txt").is_file() and (real / "my-notes" / "n.txt").is_file()


def test_a_replaced_image_of_the_same_size_is_new_again_and_its_masks_are_kept(project, tiny_dataset, capsys):
    from PIL import Image

    from napari_irnet.cli import main

    name, same = project.names[0], project.names[1]
    for i, n in enumerate((name, same)):
        project.read_image(n)
        inst, records = _gt(tiny_dataset[i])
        project.save_correction(n, inst, records)
    path, path_same = project.image_path(name), project.image_path(same)
    old_rev = project.state(name).correction["rev"]
    # another image of the same size in its place; the other one re-saved with the same pixels
    Image.fromarray(np.asarray(tiny_dataset[2].image)).save(path)
    pixels = np.asarray(Image.open(path_same))
    Image.fromarray(pixels).save(path_same, compress_level=1)
    reopened = open_project(project.root)
    st = reopened.state(name)
    assert st.state == "new" and st.image_changed and st.correction is None
    assert reopened.load_masks(name) is None and reopened.needs_prediction(name)
    assert reopened.state(same).state == "corrected"  # same pixels, other bytes: its masks still fit
    assert main(["status", "--project", str(project.root), "--list"]) == 0
    out = capsys.readouterr().out
    assert "image changed since its masks were made: 1" in out and str(path) in out and "(image changed)" in out
    # masks for the new pixels: the earlier correction stays on disk, referenced, through later writes
    inst, records = _gt(tiny_dataset[2])
    reopened.save_result(name, inst, [{**r, "score": 0.5} for r in records], np.zeros_like(inst), "model", None)
    st = reopened.state(name)
    assert st.state == "proposed" and not st.image_changed
    assert st.replaced[0]["correction"]["rev"] == old_rev
    assert (reopened.item_dir(name) / f"correction-{old_rev:06d}" / "instances.tif").is_file()
    assert reopened.cleanup() == 0


def test_image_store_keeps_states_background_and_proposals(project, tiny_dataset):
    from napari_irnet.annotation.masks import InstanceInfo
    from napari_irnet.annotation.session import AnnotationSession
    from napari_irnet.store.image_store import ProjectImageStore

    name = project.names[1]
    inst, records = _gt(tiny_dataset[1])  # four instances
    store = ProjectImageStore(project, name)
    table = {r["id"]: InstanceInfo(r["class"], 0.5) for r in records}
    session = AnnotationSession(inst, table, classes=project.entry(name).labels)
    # a Run's proposal is stored as the image's result (state proposed), not as a correction
    assert store.save_proposal(session.to_masks(), np.zeros_like(inst), ["round", "rod", "blob"])
    assert project.state(name).state == "proposed" and store.load() is None
    first, second = [int(i) for i in np.unique(inst) if i][:2]
    session.delete([first])
    session.set_class([second], "rod")
    store.save(session.to_masks())
    back = store.load()
    assert project.state(name).state == "corrected"
    np.testing.assert_array_equal(back.background, inst == first)
    assert back.table[second] == InstanceInfo("rod", 0.5, "edited")
    assert {back.table[i].state for i in back.table if i != second} == {"proposed"}
    # a later proposal never replaces the correction
    assert not store.save_proposal(session.to_masks())
    project.accept(name)
    np.testing.assert_array_equal(store.load().background, inst == first)
    # Discard (nothing of the annotator's left): the result is current again, also after reopening
    store.clear()
    assert project.state(name).state == "proposed" and store.load() is None
    reopened = open_project(project.root)
    current = reopened.load_masks(name, "current")
    np.testing.assert_array_equal(current.labels, inst)
    assert current.source == "result" and current.background is None
    assert reopened.cleanup() == 1  # the discarded correction's folder
    assert not reopened.discard_correction(name)
