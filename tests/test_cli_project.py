"""The project commands: init, predict --project, status, export; exit codes and messages."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from napari_irnet.cli import main
from napari_irnet.models.checkpoint import new_model, save_checkpoint
from napari_irnet.store.create import open_project
from napari_irnet.synthetic import CLASS_NAMES, write_dataset

FAST = ["--cam-scales", "1.0", "--walk-steps", "16", "--centroid-steps", "20", "--use-crf", "false"]


@pytest.fixture
def files(tmp_path, tiny_dataset):
    root = write_dataset(tiny_dataset[:4], tmp_path / "ds")
    torch.manual_seed(0)
    ckpt = save_checkpoint(new_model(list(CLASS_NAMES), "tiny"), tmp_path / "m.pt")
    return root, ckpt


def test_init_predict_status_export(tmp_path, files, capsys):
    root, ckpt = files
    proj = str(tmp_path / "P")
    assert main(["init", "--project", proj, "--images", str(root / "images"), "--labels", str(root / "labels.csv"), "--checkpoint", str(ckpt), *FAST]) == 0
    assert "created project" in capsys.readouterr().out
    assert open_project(proj).params.walk_steps == 16
    assert main(["predict", "--project", proj, "--limit", "2", "--device", "cpu"]) == 0
    assert "4 of 4 images need prediction (m.pt); predicting 2 (--limit)" in capsys.readouterr().out
    assert main(["status", "--project", proj, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["states"] == {"new": 2, "proposed": 2, "corrected": 0, "accepted": 0}
    assert status["need_prediction"] == 2 and status["checkpoint_found"]
    # resume: only the two left, then nothing
    assert main(["predict", "--project", proj, "--device", "cpu"]) == 0
    assert "2 of 4 images need prediction" in capsys.readouterr().out
    assert main(["predict", "--project", proj, "--device", "cpu"]) == 0
    assert "0 of 4 images need prediction" in capsys.readouterr().out
    project = open_project(proj)
    project.accept(project.names[0])
    assert main(["status", "--project", proj, "--list"]) == 0
    text = capsys.readouterr().out
    assert "accepted" in text and project.names[1] in text and "need prediction: 0" in text
    out = tmp_path / "export"
    assert main(["export", "--project", proj, "--out", str(out), "--format", "coco", "tif", "png", "voc", "--coco-results"]) == 0
    text = capsys.readouterr().out
    assert "coco  1 images" in text and "left out: 3 proposed" in text
    assert (out / "coco" / "instances.json").is_file() and (out / "coco" / "results.json").is_file()
    assert (out / "voc" / "SegmentationObject").is_dir() and (out / "tif" / "instances").is_dir()
    assert main(["export", "--project", proj, "--out", str(tmp_path / "e2"), "--states", "new"]) == 1


def test_bad_input_gives_exit_code_2_and_names_the_file(tmp_path, files, capsys):
    root, ckpt = files
    images = str(root / "images")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,classes\nsynth_0000.png,round;giraffe\n")
    assert main(["init", "--project", str(tmp_path / "P"), "--images", images, "--labels", str(bad)]) == 0  # giraffe becomes a class
    assert main(["init", "--project", str(tmp_path / "Q"), "--images", images, "--labels", str(bad), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "m.pt" in err and "giraffe" in err
    assert main(["init", "--project", str(tmp_path / "Q"), "--images", images, "--labels", str(bad), "--classes", "round", "rod"]) == 2
    assert "bad.csv, line 2" in capsys.readouterr().err
    # no checkpoint set
    assert main(["predict", "--project", str(tmp_path / "P")]) == 2
    assert "no checkpoint set" in capsys.readouterr().err
    # not a project
    assert main(["status", "--project", str(tmp_path)]) == 2
    assert "not a napari-irnet project" in capsys.readouterr().err
    # argument mix-ups are usage errors
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", str(ckpt)])
    assert "--images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--project", str(tmp_path / "P"), "--images", images])


def test_failed_images_and_read_only_output(tmp_path, files, capsys, monkeypatch):
    root, ckpt = files
    proj = str(tmp_path / "P")
    assert main(["init", "--project", proj, "--images", str(root / "images"), "--labels", str(root / "labels.csv"), "--checkpoint", str(ckpt), *FAST]) == 0
    (root / "images" / "synth_0002.png").write_bytes(b"garbage")
    assert main(["predict", "--project", proj, "--device", "cpu"]) == 2
    cap = capsys.readouterr()
    assert "predicted 3 images" in cap.out and "1 images failed" in cap.err and "synth_0002.png" in cap.err
    assert main(["status", "--project", proj]) == 0
    assert "failed on the last try: 1" in capsys.readouterr().out
    # a read-only export folder: a clear error, exit code 2
    import napari_irnet.io.files as io_module

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io_module.os, "replace", read_only)
    assert main(["export", "--project", proj, "--out", str(tmp_path / "x"), "--states", "proposed"]) == 2
    assert "instances.json: cannot write (Read-only file system)" in capsys.readouterr().err


def test_a_run_refused_by_the_lock_changes_nothing(tmp_path, files, capsys):
    root, ckpt = files
    proj = str(tmp_path / "P")
    assert main(["init", "--project", proj, "--images", str(root / "images"), "--labels", str(root / "labels.csv"), "--checkpoint", str(ckpt), *FAST]) == 0
    assert main(["predict", "--project", proj, "--limit", "1", "--device", "cpu"]) == 0
    other = tmp_path / "other.pt"
    other.write_bytes(ckpt.read_bytes())
    before = {p: p.read_bytes() for p in (tmp_path / "P").rglob("*") if p.is_file() and p.name != ".lock"}
    project = open_project(proj)
    capsys.readouterr()
    with project.batch_lock():  # another run is predicting
        assert main(["predict", "--project", proj, "--checkpoint", str(other), "--beta", "8", "--device", "cpu"]) == 2
    assert "another napari-irnet run is predicting" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in (tmp_path / "P").rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # neither the checkpoint nor the parameters were switched: no result became stale
    assert main(["status", "--project", proj, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["need_prediction"] == 3
    # once the lock is free the same command switches both and predicts
    assert main(["predict", "--project", proj, "--checkpoint", str(other), "--beta", "8", "--device", "cpu"]) == 0
    reopened = open_project(proj)
    assert reopened.params.beta == 8 and reopened.checkpoint_path == other.resolve()


def _readme_commands(heading: str) -> list[list[str]]:
    """The napari-irnet commands of the first bash block under a README heading, as argument lists."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    block = section[section.index("```bash") + len("```bash"): section.index("```", section.index("```bash") + 7)]
    return [shlex.split(line, comments=True)[1:] for line in block.splitlines() if line.startswith("napari-irnet ")]


def test_the_readme_project_example_runs_as_written(tmp_path, files, monkeypatch, capsys):
    import shutil

    root, ckpt = files
    monkeypatch.chdir(tmp_path)
    shutil.copytree(root / "images", tmp_path / "imgs")
    (tmp_path / "imgs" / "synth_0002.png").unlink()  # two images keep it quick with the default parameters
    (tmp_path / "imgs" / "synth_0003.png").unlink()
    lines = (root / "labels.csv").read_text().splitlines()
    (tmp_path / "labels.csv").write_text("\n".join(lines[:3]) + "\n")
    from napari_irnet.models.checkpoint import load_checkpoint, new_irnet

    model = load_checkpoint(ckpt)
    model.irn = new_irnet(model, "cam")
    save_checkpoint(model, tmp_path / "irnet.pt")
    commands = _readme_commands("## Projects: curating a dataset")
    assert [c[0] for c in commands] == ["init", "predict", "status", "export"]
    for args in commands:
        assert main(args) == 0, (args, capsys.readouterr().err)
    assert (tmp_path / "export" / "coco" / "instances.json").is_file()
    assert len(list((tmp_path / "export" / "voc" / "SegmentationObject").iterdir())) == 2
