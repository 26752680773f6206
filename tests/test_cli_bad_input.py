"""Bad input and misuse, command by command, as a new user meets them.

Every case: exit code 2, a message naming the file (or option) and the
problem, and every file that was there before is still there, unchanged.
Each case runs in a fresh copy of one small world: a dataset, checkpoints,
a project with proposals and a correction, a prediction folder, an export.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from napari_irnet.cli import main
from napari_irnet.io.results import write_class_legend, write_semantic_png
from napari_irnet.models.checkpoint import new_irnet, new_model, save_checkpoint
from napari_irnet.store.create import create_project, open_project
from napari_irnet.synthetic import CLASS_NAMES, make_dataset, write_dataset

FAST = ["--cam-scales", "1.0", "--walk-steps", "16", "--centroid-steps", "20", "--use-crf", "false"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    samples = make_dataset(4, shape=(64, 64), seed=123)
    ds = write_dataset(samples, w / "ds")
    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    model.irn = new_irnet(model, "cam")
    save_checkpoint(model, w / "m.pt")
    save_checkpoint(new_model(["cat", "dog"], "tiny"), w / "pets.pt")
    (w / "garbage.pt").write_bytes(b"not a checkpoint")
    (w / "afile").write_text("a file, not a folder")
    args = ["--checkpoint", str(w / "m.pt"), *FAST]
    assert main(["init", "--project", str(w / "P"), "--images", str(ds / "images"), "--labels", str(ds / "labels.csv"), *args]) == 0
    assert main(["predict", "--project", str(w / "P"), "--limit", "2", "--device", "cpu"]) == 0
    project = open_project(w / "P")
    first = project.names[0]
    project.save_correction(first, samples[0].instances, [{"id": k, "class": c} for k, c in samples[0].instance_classes.items()])
    # a project without a checkpoint, and one with a class the checkpoint does not know, corrected
    create_project(w / "Pn", ds / "images", ds / "labels.csv")
    pg = create_project(w / "Pg", ds / "images", ds / "labels.csv", classes=[*CLASS_NAMES, "giraffe"])
    pg.save_correction(first, samples[0].instances, [{"id": k, "class": "giraffe"} for k in samples[0].instance_classes])
    assert main(["predict", "--images", str(ds / "images"), "--labels", str(ds / "labels.csv"), "--out", str(w / "pred"),
                 "--device", "cpu", *args]) == 0  # fmt: skip
    assert main(["export", "--project", str(w / "P"), "--out", str(w / "E"), "--format", "coco", "tif",
                 "--states", "proposed", "corrected"]) == 0  # fmt: skip
    return w


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def _run(world, tmp_path, monkeypatch, capsys, prepare, args, expected):
    """Copy the world, let ``prepare`` spoil it, run ``args`` there: exit 2, ``expected`` said, nothing lost."""
    here = tmp_path / "w"
    shutil.copytree(world, here, symlinks=True)
    monkeypatch.chdir(here)
    if prepare is not None:
        prepare(here)
    before = _tree(here)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    after = _tree(here)
    assert {k: after.get(k) for k in before} == before
    return here, after


def _command(name, defaults, extra, *tail):
    """``name`` with the ``defaults`` options, those in ``extra`` replacing them (None: left out), the rest of ``extra`` added."""
    args, rest = dict(defaults), []
    it = iter(extra)
    for a in it:
        if a in args:
            args[a] = next(it)
        else:
            rest.append(a)
    return [name, *[x for k, v in args.items() if v is not None for x in (k, v)], *rest, *tail]


def _item(here, project="P", index=0):
    p = open_project(here / project)
    return p.item_dir(p.names[index])


def _write(path, text):
    return lambda here: (here / path).write_text(text)


# ---------------------------------------------------------------- evaluate

_SEM = "pred/synth_0001_semantic.png"

EVALUATE = {
    "prediction folder missing": (None, ["--predictions", "nope"], ["nope: prediction folder not found"]),
    "prediction folder is a file": (None, ["--predictions", "afile"], ["afile: is not a folder"]),
    "ground truth missing": (None, ["--ground-truth", "missing"], ["missing: ground truth not found"]),
    "malformed records": (_write("pred/synth_0001_instances.json", "[{"), [], ["synth_0001_instances.json: malformed JSON"]),
    "malformed class legend": (_write("pred/classes.json", "["), [], ["classes.json: malformed JSON"]),
    "class legend without classes": (_write("pred/classes.json", '{"classes": [1]}'), [], ["classes.json: expected"]),
    "a predicted class the ground truth lacks": (
        lambda h: (write_class_legend(h / "pred", ["giraffe", "rod", "blob"]), write_semantic_png(h / _SEM, np.ones((64, 64), np.uint8))),
        [], ["synth_0001_semantic.png: class value 1 is class 'giraffe'"],
    ),
    "semantic map missing": (lambda h: (h / _SEM).unlink(), [], ["synth_0001_semantic.png: label image not found"]),
    "semantic map of another size": (lambda h: write_semantic_png(h / _SEM, np.zeros((9, 9), np.uint8)), [],
                                     ["synth_0001_semantic.png: size (9, 9) differs from the instance map"]),  # fmt: skip
    "prediction without ground truth": (
        lambda h: shutil.copy(h / "pred/synth_0001_instances.tif", h / "pred/stranger_instances.tif"),
        [], ["stranger_instances.tif: no ground truth for image 'stranger'"],
    ),
    "a class given twice": (None, ["--classes", "round", "round", "blob"], ["the classes given for it list 'round' twice"]),
    "--out is a folder": (None, ["--out", "pred"], ["pred: cannot write"]),
    "--out in a file": (None, ["--out", "afile/r.json"], ["afile/r.json: cannot write (", "afile is not a folder"]),
}


@pytest.mark.parametrize("case", list(EVALUATE))
def test_evaluate_bad_input(world, tmp_path, monkeypatch, capsys, case):
    prepare, extra, expected = EVALUATE[case]
    cmd = _command("evaluate", {"--predictions": "pred", "--ground-truth": "ds"}, extra)
    _run(world, tmp_path, monkeypatch, capsys, prepare, cmd, expected)


# ---------------------------------------------------------------- export


def _damage_correction(here):
    folder = next(p for p in _item(here).iterdir() if p.name.startswith("correction-"))
    (folder / "instances.tif").unlink()


EXPORT = {
    "project missing": (None, ["--project", "nope"], ["nope: project folder not found"]),
    "not a project": (None, ["--project", "ds"], ["ds: not a napari-irnet project"]),
    "--out is a file": (None, ["--out", "afile"], ["afile/coco/instances.json: cannot write", "Not a directory"]),
    "--out holds other files": (lambda h: (h / "F" / "coco").mkdir(parents=True) or (h / "F/coco/notes.txt").write_text("mine"),
                                ["--out", "F"], ["F/coco: the folder holds files that no napari-irnet export wrote"]),  # fmt: skip
    "malformed export list": (_write("E/coco/.napari-irnet-export.json", "{"), [], ["E/coco/.napari-irnet-export.json: not a readable export list"]),
    "a correction's masks missing": (_damage_correction, [], ["damaged project", "instances.tif: label image not found"]),
    "malformed state file": (lambda h: (_item(h) / "state.json").write_text("{"), [], ["state.json: image state file is not valid JSON"]),
}


@pytest.mark.parametrize("case", list(EXPORT))
def test_export_bad_input(world, tmp_path, monkeypatch, capsys, case):
    prepare, extra, expected = EXPORT[case]
    cmd = _command("export", {"--project": "P", "--out": "E"}, extra, "--format", "coco", "tif", "--states", "proposed", "corrected")
    _run(world, tmp_path, monkeypatch, capsys, prepare, cmd, expected)


# ---------------------------------------------------------------- predict (folder)


def _spoil_image(here):
    shutil.copytree(here / "ds/images", here / "imgs")
    (here / "imgs/synth_0002.png").write_bytes((here / "imgs/synth_0002.png").read_bytes()[:200])  # truncated


PREDICT = {
    "image folder missing": (None, ["--images", "nope", "--labels", None], ["nope: image folder not found"]),
    "checkpoint missing": (None, ["--checkpoint", "none.pt"], ["none.pt: checkpoint file not found"]),
    "not a checkpoint": (None, ["--checkpoint", "garbage.pt"], ["garbage.pt: not a readable checkpoint"]),
    "labels for another model": (None, ["--checkpoint", "pets.pt"], ["ds/labels.csv, line 2", "unknown class"]),
    "labels of a missing image": (_write("l.csv", "image,classes\nsynth_0000.png,round\nghost.png,rod\n"), ["--labels", "l.csv"], ["l.csv", "ghost.png"]),
    "a truncated image": (_spoil_image, ["--images", "imgs", "--labels", None, "--out", "pred2"], ["imgs/synth_0002.png: "]),
    "--out is a file": (None, ["--out", "afile"], ["afile/classes.json: cannot write", "afile is not a folder"]),
    "--out holds another model's predictions": (lambda h: write_class_legend(h / "pred", ["blob", "rod", "round"]), [],
                                                ["pred/classes.json: the predictions in this folder are for the classes"]),  # fmt: skip
    "a parameter out of range": (None, ["--beta", "-1"], ["--beta -1.0: must be positive"]),
    "a class threshold for a class the model lacks": (None, ["--seed-class-thresholds", "round=0.4", "giraffe=0.5"],
                                                      ["--seed-class-thresholds round=0.4 giraffe=0.5: must be keyed by the model's classes",
                                                       "not giraffe"]),  # fmt: skip
    "a class threshold out of range": (None, ["--seed-class-thresholds", "round=1.5"], ["--seed-class-thresholds round=1.5: must be"]),
    "--out is the image folder": (None, ["--out", "ds/images"], ["ds/images: is the image folder"]),
}


@pytest.mark.parametrize("case", list(PREDICT))
def test_predict_folder_bad_input(world, tmp_path, monkeypatch, capsys, case):
    prepare, extra, expected = PREDICT[case]
    defaults = {"--images": "ds/images", "--labels": "ds/labels.csv", "--checkpoint": "m.pt", "--out": "pred"}
    cmd = _command("predict", defaults, extra, "--device", "cpu", *FAST)
    _run(world, tmp_path, monkeypatch, capsys, prepare, cmd, expected)


def test_predict_folder_keeps_every_image_apart(world, tmp_path, monkeypatch, capsys):
    """a.png and a.jpg, and sub/a.png in a labels file: three sets of files, none overwritten."""
    from PIL import Image

    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    src = np.asarray(Image.open(world / "ds/images/synth_0000.png"))
    for name in ("a.png", "a.jpg", "sub/a.png"):
        Image.fromarray(src).save(images / name)
    (tmp_path / "l.csv").write_text("image,classes\na.png,round\na.jpg,rod\nsub/a.png,blob\n")
    out = tmp_path / "out"
    assert main(["predict", "--images", str(images), "--labels", str(tmp_path / "l.csv"), "--checkpoint", str(world / "m.pt"),
                 "--out", str(out), "--device", "cpu", *FAST]) == 0  # fmt: skip
    assert "a.jpg -> a_jpg_*" in capsys.readouterr().err
    stems = sorted(p.name[: -len("_instances.tif")] for p in out.glob("*_instances.tif"))
    assert stems == ["a_jpg", "a_png", "sub__a"]
    assert all((out / f"{s}_semantic.png").is_file() and (out / f"{s}_instances.json").is_file() for s in stems)
    # without labels, the folder's own images: both of a.png and a.jpg
    assert main(["predict", "--images", str(images), "--checkpoint", str(world / "m.pt"), "--out", str(tmp_path / "o2"),
                 "--device", "cpu", *FAST]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "o2").glob("*_instances.tif")) == ["a_jpg_instances.tif", "a_png_instances.tif"]


# ---------------------------------------------------------------- predict --project

PREDICT_PROJECT = {
    "project missing": (None, ["--project", "nope"], ["nope: project folder not found"]),
    "no checkpoint set": (None, ["--project", "Pn"], ["Pn: no checkpoint set"]),
    "checkpoint missing": (None, ["--checkpoint", "none.pt"], ["none.pt: checkpoint file not found"]),
    "not a checkpoint": (None, ["--checkpoint", "garbage.pt"], ["garbage.pt: not a readable checkpoint"]),
    "a checkpoint for other classes": (None, ["--checkpoint", "pets.pt"], ["pets.pt", "round"]),
    "a parameter out of range": (None, ["--beta", "-1"], ["--beta -1.0: must be positive"]),
    "a negative limit": (None, ["--limit", "-1"], ["limit must be 0 or more, got -1"]),
    "malformed state file": (lambda h: (_item(h, index=1) / "state.json").write_text("{"), [], ["state.json: image state file is not valid JSON"]),
}


@pytest.mark.parametrize("case", list(PREDICT_PROJECT))
def test_predict_project_bad_input(world, tmp_path, monkeypatch, capsys, case):
    prepare, extra, expected = PREDICT_PROJECT[case]
    cmd = _command("predict", {"--project": "P"}, extra, "--device", "cpu")
    _run(world, tmp_path, monkeypatch, capsys, prepare, cmd, expected)


# ---------------------------------------------------------------- init


def _truncate(here):
    shutil.copytree(here / "ds/images", here / "imgs")
    (here / "imgs/synth_0001.png").write_bytes((here / "imgs/synth_0001.png").read_bytes()[:300])


INIT = {
    "image folder missing": (None, ["--images", "nope"], ["nope: image folder not found"]),
    "labels missing": (None, ["--labels", "nope.csv"], ["nope.csv: label file not found"]),
    "a class the checkpoint lacks": (_write("l.csv", "image,classes\nsynth_0000.png,round;giraffe\n"),
                                     ["--labels", "l.csv", "--checkpoint", "m.pt"], ["m.pt: trained for classes", "giraffe"]),  # fmt: skip
    "labels of a missing image": (_write("l.csv", "image,classes\nghost.png,round\n"), ["--labels", "l.csv"], ["l.csv", "ghost.png"]),
    "a truncated image": (_truncate, ["--images", "imgs"], ["imgs/synth_0001.png: "]),
    "an existing project": (None, ["--project", "P"], ["P: exists and is not an empty folder"]),
    "not a checkpoint": (None, ["--checkpoint", "garbage.pt"], ["garbage.pt: not a readable checkpoint"]),
    "a class given twice": (None, ["--classes", "round", "round", "rod", "blob"], ["lists a class twice: round"]),
    "a parameter out of range": (None, ["--beta", "-1"], ["--beta -1.0: must be positive"]),
}


@pytest.mark.parametrize("case", list(INIT))
def test_init_bad_input(world, tmp_path, monkeypatch, capsys, case):
    prepare, extra, expected = INIT[case]
    cmd = _command("init", {"--project": "Q", "--images": "ds/images", "--labels": "ds/labels.csv"}, extra)
    here, _ = _run(world, tmp_path, monkeypatch, capsys, prepare, cmd, expected)
    assert not (here / "Q").exists()


# ---------------------------------------------------------------- finetune --project


def _replace_image(here):
    from PIL import Image

    project = open_project(here / "P")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(project.image_path(project.names[0]))


FINETUNE = {
    "project missing": (None, ["--project", "nope"], ["nope: project folder not found"]),
    "nothing corrected": (None, ["--project", "Pn"], ["Pn: no corrected or accepted image to fine-tune from"]),
    "a corrected class the checkpoint lacks": (None, ["--project", "Pg"], ["/instances.json: instance", "'giraffe', which the checkpoint"]),
    "--project with --images": (None, ["--images", "ds/images"], ["--project fine-tunes from the project's own images"]),
    "not a checkpoint": (None, ["--checkpoint", "garbage.pt"], ["garbage.pt: not a readable checkpoint"]),
    "a corrected image replaced by another size": (_replace_image, [], ["synth_0000.png: image is 32 x 32 now but was 64 x 64"]),
}


@pytest.mark.parametrize("case", list(FINETUNE))
def test_finetune_project_bad_input(world, tmp_path, monkeypatch, capsys, case):
    prepare, extra, expected = FINETUNE[case]
    cmd = _command("finetune", {"--checkpoint": "m.pt", "--project": "P", "--out": "tuned.pt"}, extra, "--device", "cpu")
    here, _ = _run(world, tmp_path, monkeypatch, capsys, prepare, cmd, expected)
    assert not (here / "tuned.pt").exists()
