"""Bad input and misuse of the training, prediction and import commands: a message naming the file
and the problem, exit code 2, nothing lost (issue 17: untrusted pickles, outputs that cannot be
written, CAM-only checkpoints, nonsense values, progress in logs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from napari_irnet.cli import main
from napari_irnet.io.results import write_instance_tiff
from napari_irnet.models.checkpoint import load_checkpoint, new_irnet, new_model, save_checkpoint
from napari_irnet.synthetic import CLASS_NAMES, make_dataset, write_dataset

TINY_CAM = ["--backbone", "tiny", "--weights", "none", "--cam-epochs", "1", "--cam-batch-size", "2", "--cam-crop-size", "64",
            "--cam-resize-long", "56", "72"]  # fmt: skip
TINY_IRN = ["--irn-epochs", "1", "--irn-batch-size", "2", "--irn-crop-size", "64", "--train-radius", "5", "--cam-scales", "1.0",
            "--use-crf", "false", "--irn-backbone", "cam"]  # fmt: skip
TINY_FT = ["--finetune-epochs", "1", "--irn-batch-size", "2", "--irn-crop-size", "64", "--train-radius", "5", "--cam-scales", "1.0",
           "--use-crf", "false"]  # fmt: skip


class _Plant:
    """A pickle that creates ``marker`` when unpickled: what a planted file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path, marker):
    """Write a torch file at ``path`` that runs code (creates ``marker``) when fully unpickled."""
    torch.save({"format": "napari-irnet", "digest": "x", "step": 0, "payload": _Plant(marker)}, path)
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Four tiny images, a CAM-only checkpoint from ``train-cam``, an untrained full model, a correction."""
    root = tmp_path_factory.mktemp("ws")
    samples = make_dataset(4, shape=(64, 64), seed=123)
    ds = write_dataset(samples, root / "ds")
    data = ["--images", str(ds / "images"), "--labels", str(ds / "labels.json"), "--device", "cpu"]
    assert main(["train-cam", *data, "--out", str(root / "cam.pt"), *TINY_CAM]) == 0
    torch.manual_seed(0)
    model = new_model(list(CLASS_NAMES), "tiny")
    model.irn = new_irnet(model, "cam")
    save_checkpoint(model, root / "full.pt")
    corrections = root / "corrections"
    write_instance_tiff(corrections / f"{samples[1].name}.tif", samples[1].instances)
    return {"root": root, "data": data, "cam": root / "cam.pt", "full": root / "full.pt", "corrections": corrections}


def run(argv, capsys):
    """Exit code and standard error of the CLI (argparse errors included)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _no_training(monkeypatch):
    import napari_irnet.training.cam as cam
    import napari_irnet.training.finetune as ft
    import napari_irnet.training.irn as irn

    def trained(*a, **k):
        raise AssertionError("training started")

    for mod, name in ((cam, "train_cam"), (irn, "train_irn"), (ft, "finetune")):
        monkeypatch.setattr(mod, name, trained)


def _outputs(tmp_path, kind):
    """An ``--out`` of the given kind; ``kept`` is an existing file that must stay as it was."""
    if kind == "folder":
        (tmp_path / "outdir").mkdir()
        return tmp_path / "outdir"
    if kind == "under-a-file":
        (tmp_path / "afile").write_text("x")
        return tmp_path / "afile" / "model.pt"
    kept = tmp_path / "model.pt"
    kept.write_bytes(b"an earlier model")
    return kept


# ------------------------------------------------------------------ train-cam

TRAIN_CAM_CASES = [
    ("out-folder", "folder", [], r"outdir: is a folder"),
    ("out-under-file", "under-a-file", [], r"afile is not a folder"),
    ("epochs-0", "kept", ["--cam-epochs", "0"], r"--cam-epochs 0: must be an integer >= 1"),
    ("epochs-negative", "kept", ["--cam-epochs", "-2"], r"--cam-epochs -2: must be an integer >= 1"),
    ("lr-nan", "kept", ["--cam-learning-rate", "nan"], r"--cam-learning-rate nan: must be a positive number"),
    ("lr-inf", "kept", ["--cam-learning-rate", "inf"], r"--cam-learning-rate inf"),
    ("batch-0", "kept", ["--cam-batch-size", "0"], r"--cam-batch-size 0"),
    ("resize-reversed", "kept", ["--cam-resize-long", "72", "56"], r"--cam-resize-long 72 56: must be two integers"),
    ("momentum", "kept", ["--momentum", "1.5"], r"--momentum 1.5: must be in \[0, 1\)"),
    ("seed", "kept", ["--seed", "-1"], r"--seed -1"),
    ("crf-maybe", "kept", ["--use-crf", "maybe"], r"argument --use-crf: expected true or false"),
    ("amp-word", "kept", ["--amp", "perhaps"], r"argument --amp: expected true or false"),
    ("beta-nan", "kept", ["--beta", "nan"], r"--beta nan: must be positive"),
    ("device-unknown", "kept", ["--device", "gpu"], r"--device gpu: unknown device"),
    ("tiny-imagenet", "kept", ["--weights", "imagenet"], r"use `--weights none`"),
]


@pytest.mark.parametrize("kind, extra, message", [c[1:] for c in TRAIN_CAM_CASES], ids=[c[0] for c in TRAIN_CAM_CASES])
def test_train_cam_bad_input(ws, tmp_path, capsys, monkeypatch, kind, extra, message):
    _no_training(monkeypatch)
    out = _outputs(tmp_path, kind)
    argv = ["train-cam", *ws["data"], *TINY_CAM, "--out", out, *extra]
    code, err = run(argv, capsys)
    assert code == 2 and re.search(message, err), err
    if kind == "kept":
        assert out.read_bytes() == b"an earlier model"
    assert not list(tmp_path.rglob(".*.tmp*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(ws, tmp_path, capsys):
    code, err = run(["train-cam", *ws["data"], "--device", "cuda", *TINY_CAM, "--out", tmp_path / "m.pt"], capsys)
    assert code == 2 and "--device cuda" in err and "CUDA" in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that apply (not root)")
def test_read_only_output_folder_fails_before_training(ws, tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, err = run(["train-cam", *ws["data"], *TINY_CAM, "--out", folder / "m.pt"], capsys)
    finally:
        folder.chmod(0o755)
    assert code == 2 and "ro/m.pt: cannot write" in err


# ------------------------------------------------------------------ train-irn

TRAIN_IRN_CASES = [
    ("out-folder", "folder", "cam", [], r"outdir: is a folder"),
    ("out-under-file", "under-a-file", "cam", [], r"afile is not a folder"),
    ("epochs-0", "kept", "cam", ["--irn-epochs", "0"], r"--irn-epochs 0: must be an integer >= 1"),
    ("crop-tiny", "kept", "cam", ["--irn-crop-size", "8"], r"--irn-crop-size 8: must be an integer >= 32"),
    ("radius-0", "kept", "cam", ["--train-radius", "0"], r"--train-radius 0"),
    ("rescale-negative", "kept", "cam", ["--irn-rescale", "-1", "1"], r"--irn-rescale -1.0 1.0: must be two positive"),
    ("checkpoint-planted", "kept", "planted", [], r"planted\.pt: refused: the checkpoint holds Python objects"),
    ("checkpoint-no-cam", "kept", "no-cam", [], r"no-cam\.pt: this checkpoint has no CAM network.*napari-irnet train-cam"),
    ("checkpoint-folder", "kept", "folder", [], r"ckdir: checkpoint file not found"),
]


def _checkpoint(ws, tmp_path, kind):
    if kind in ("cam", "full"):
        return ws[kind]
    if kind == "planted":
        return plant(tmp_path / "planted.pt", tmp_path / "MARKER")
    if kind == "no-cam":
        model = load_checkpoint(ws["full"])
        model.cam = None
        return save_checkpoint(model, tmp_path / "no-cam.pt")
    if kind == "no-irn":
        model = load_checkpoint(ws["full"])
        model.irn = None
        return save_checkpoint(model, tmp_path / "no-irn.pt")
    if kind == "folder":
        (tmp_path / "ckdir").mkdir()
        return tmp_path / "ckdir"
    if kind == "truncated":
        (tmp_path / "torn.pt").write_bytes(ws["full"].read_bytes()[:2000])
        return tmp_path / "torn.pt"
    if kind == "hollow":  # the format key and nothing else
        torch.save({"format": "napari-irnet", "version": 1}, tmp_path / "hollow.pt")
        return tmp_path / "hollow.pt"
    if kind == "bad-state":
        obj = torch.load(ws["full"], weights_only=True)
        obj["irn_state"] = "weights"
        torch.save(obj, tmp_path / "bad-state.pt")
        return tmp_path / "bad-state.pt"
    if kind == "reference":
        torch.save({"resnet50.conv1.weight": torch.zeros(1)}, tmp_path / "res50_cam.pth")
        return tmp_path / "res50_cam.pth"
    raise AssertionError(kind)


@pytest.mark.parametrize("out_kind, ckpt, extra, message", [c[1:] for c in TRAIN_IRN_CASES], ids=[c[0] for c in TRAIN_IRN_CASES])
def test_train_irn_bad_input(ws, tmp_path, capsys, monkeypatch, out_kind, ckpt, extra, message):
    _no_training(monkeypatch)
    out = _outputs(tmp_path, out_kind)
    code, err = run(["train-irn", *ws["data"], *TINY_IRN, "--checkpoint", _checkpoint(ws, tmp_path, ckpt), "--out", out, *extra], capsys)
    assert code == 2 and re.search(message, err), err
    assert not (tmp_path / "MARKER").exists()
    if out_kind == "kept":
        assert out.read_bytes() == b"an earlier model"


# ------------------------------------------------------------------ finetune (output side)

FINETUNE_CASES = [
    ("out-is-input", "input", [], r"is the input checkpoint"),
    ("out-folder", "folder", [], r"outdir: is a folder"),
    ("resume-folder", "resume-folder", [], r"model\.pt\.resume: is a folder"),
    ("resume-planted", "resume-planted", [], r"model\.pt\.resume: refused: the resume file holds Python objects.*delete it"),
    ("epochs-0", "kept", ["--finetune-epochs", "0"], r"--finetune-epochs 0: must be an integer >= 1"),
    ("lr-nan", "kept", ["--finetune-learning-rate", "nan"], r"--finetune-learning-rate nan"),
    ("weight-0", "kept", ["--correction-weight", "0"], r"--correction-weight 0"),
    ("weak-weight", "kept", ["--weak-displacement-weight", "2"], r"--weak-displacement-weight 2.0: must be in \[0, 1\]"),
    ("cam-maybe", "kept", ["--finetune-cam", "maybe"], r"argument --finetune-cam: expected true or false"),
    ("cam-only", "cam-only", [], r"cam\.pt: this checkpoint has a trained CAM network but its IRNet was never trained.*train-irn"),
]


@pytest.mark.parametrize("kind, extra, message", [c[1:] for c in FINETUNE_CASES], ids=[c[0] for c in FINETUNE_CASES])
def test_finetune_bad_output(ws, tmp_path, capsys, kind, extra, message):
    start = ws["cam"] if kind == "cam-only" else tmp_path / "start.pt"
    if kind != "cam-only":
        start.write_bytes(ws["full"].read_bytes())
    before = start.read_bytes()
    out = {"input": start, "folder": None}.get(kind, tmp_path / "model.pt")
    if kind == "folder":
        out = _outputs(tmp_path, "folder")
    resume = out.with_name(out.name + ".resume")
    if kind == "resume-folder":
        resume.mkdir()
    if kind == "resume-planted":
        plant(resume, tmp_path / "MARKER")
    planted = resume.read_bytes() if kind == "resume-planted" else None
    if kind == "kept":
        out.write_bytes(b"an earlier model")
    argv = ["finetune", *ws["data"], *TINY_FT, "--checkpoint", start, "--corrections", ws["corrections"], "--out", out, *extra]
    code, err = run(argv, capsys)
    assert code == 2 and re.search(message, err), err
    assert start.read_bytes() == before
    assert not (tmp_path / "MARKER").exists()
    if planted is not None:
        assert resume.read_bytes() == planted
    if kind == "kept":
        assert out.read_bytes() == b"an earlier model"


# ------------------------------------------------------------------ predict (checkpoint side)

PREDICT_CASES = [
    ("cam-only", "cam", r"cam\.pt: this checkpoint has a trained CAM network but its IRNet was never trained.*"
                        r"napari-irnet train-irn --checkpoint \S*cam\.pt"),
    ("no-irn", "no-irn", r"no-irn\.pt: this checkpoint has no IRNet.*train-irn"),
    ("no-cam", "no-cam", r"no-cam\.pt: this checkpoint has no CAM network.*train-cam"),
    ("planted", "planted", r"planted\.pt: refused: the checkpoint holds Python objects"),
    ("truncated", "truncated", r"torn\.pt: not a readable checkpoint"),
    ("folder", "folder", r"ckdir: checkpoint file not found"),
    ("reference", "reference", r"res50_cam\.pth: not a napari-irnet checkpoint.*import-reference"),
    ("hollow", "hollow", r"hollow\.pt: damaged checkpoint \(its class names are None"),
    ("bad-state", "bad-state", r"bad-state\.pt: damaged checkpoint \(irn_state is not a dict of tensors\)"),
]


@pytest.mark.parametrize("command", ["predict", "init"])
@pytest.mark.parametrize("ckpt, message", [c[1:] for c in PREDICT_CASES], ids=[c[0] for c in PREDICT_CASES])
def test_predict_bad_checkpoint(ws, tmp_path, capsys, command, ckpt, message):
    out = tmp_path / "pred"
    ckpt = _checkpoint(ws, tmp_path, ckpt)
    if command == "predict":
        argv = ["predict", *ws["data"], "--checkpoint", ckpt, "--out", out]
    else:  # a project to predict with it
        argv = ["init", "--project", out, *ws["data"][:4], "--checkpoint", ckpt]
    code, err = run(argv, capsys)
    assert code == 2 and re.search(message, err), err
    assert not out.exists() and not (tmp_path / "MARKER").exists()


# ------------------------------------------------------------------ import-reference

IMPORT_CASES = [
    ("nothing", [], r"give --cam, --irn or both"),
    ("planted", ["--cam", "{planted}"], r"planted\.pt: refused: the state dict holds Python objects"),
    ("not-reference", ["--cam", "{full}"], r"full\.pt: not a reference-implementation state dict"),
    ("class-count", ["--cam", "{ref}", "--classes", "a", "b"], r"res50_cam\.pth: classifier has 3 classes but 2"),
    ("missing", ["--irn", "{tmp}/nope.pth"], r"nope\.pth: not a readable state dict"),
    ("out-folder", ["--cam", "{ref}", "--out", "{tmp}"], r": is a folder"),
]


@pytest.mark.parametrize("extra, message", [c[1:] for c in IMPORT_CASES], ids=[c[0] for c in IMPORT_CASES])
def test_import_reference_bad_input(ws, tmp_path, capsys, extra, message):
    ref = tmp_path / "res50_cam.pth"
    torch.save({"resnet50.conv1.weight": torch.zeros(1), "classifier.weight": torch.zeros(3, 2048, 1, 1)}, ref)
    names = {"planted": plant(tmp_path / "planted.pt", tmp_path / "MARKER"), "full": ws["full"], "ref": ref, "tmp": tmp_path}
    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier model")
    argv = ["import-reference", "--out", out, *[e.format(**names) for e in extra]]
    if "--out" in extra:  # the later --out wins
        argv = argv[:1] + argv[3:]
    code, err = run(argv, capsys)
    assert code == 2 and re.search(message, err), err
    assert out.read_bytes() == b"an earlier model" and not (tmp_path / "MARKER").exists()


# ------------------------------------------------------------------ a final write that fails


def _failing_writes(monkeypatch, fails):
    """Make checkpoint writes to paths for which ``fails(path)`` is true fail as on a full disk."""
    import napari_irnet.models.checkpoint as ck
    from napari_irnet.io.files import OutputError

    real = ck.write_torch_file

    def write(obj, path):
        if fails(Path(path)):
            raise OutputError(f"{path}: cannot write (No space left on device)")
        return real(obj, path)

    monkeypatch.setattr(ck, "write_torch_file", write)


def test_train_cam_saves_to_a_fallback_when_the_output_cannot_be_written(ws, env, capsys, monkeypatch):
    out = env / "models" / "cam.pt"
    _failing_writes(monkeypatch, lambda p: p == out)
    code, err = run(["train-cam", *ws["data"], *TINY_CAM, "--out", out], capsys)
    assert code == 2 and f"{out}: cannot write (No space left on device)" in err
    found = re.search(r"the trained model was saved to (\S+) instead", err)
    assert found, err
    saved = Path(found.group(1))
    assert saved.parent == env / "data" / "unsaved" and saved.name.startswith("cam-")
    assert load_checkpoint(saved).history[-1]["stage"] == "cam" and not out.exists()


def test_finetune_keeps_its_resume_file_until_the_result_is_written(ws, env, capsys, monkeypatch):
    start, out = ws["full"], env / "tuned.pt"
    resume = env / "tuned.pt.resume"
    argv = ["finetune", *ws["data"], *TINY_FT, "--checkpoint", start, "--corrections", ws["corrections"], "--out", out]
    _failing_writes(monkeypatch, lambda p: not p.name.endswith(".resume"))  # nowhere to save the result
    code, err = run(argv, capsys)
    assert code == 2 and "could not be saved anywhere" in err
    assert f"the training state is kept in {resume}" in err and resume.is_file() and not out.exists()
    monkeypatch.undo()
    code, err = run(argv, capsys)  # the same command again: resumes at the end and only saves
    assert code == 0, err
    assert load_checkpoint(out).history[-1]["stage"] == "finetune" and not resume.exists()


# ------------------------------------------------------------------ progress in a log


def test_training_prints_progress_lines_and_the_final_loss_off_a_terminal(ws, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_IRNET_PROGRESS_SECONDS", "0")
    assert main(["train-cam", *ws["data"], *TINY_CAM, "--out", str(tmp_path / "m.pt")]) == 0
    said = capsys.readouterr()
    lines = [line for line in said.err.splitlines() if line.startswith("CAM: ")]
    assert lines[0].startswith("CAM: 1/2 steps (50%), loss ") and lines[-1].startswith("CAM: 2/2 steps (100%), loss ")
    assert "steps/s" in lines[-1]
    assert re.search(r"^CAM: 2 steps in [\d.]+ s, final loss \d+\.\d{4}$", said.out, re.M), said.out


def test_progress_lines_come_every_few_seconds_not_every_step():
    import io

    from napari_irnet.cli.progress import Progress

    stream = io.StringIO()
    with Progress(100, "predict", "image", stream=stream, every=3600) as bar:
        for _ in range(100):
            bar.update(1, failed=0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("predict: 1/100 images (1%), failed 0, ")
    assert lines[1].startswith("predict: 100/100 images (100%)")


def test_the_walks_of_a_large_image_show_their_steps(monkeypatch, capsys):
    from test_cache import FAST, _two_blobs

    from napari_irnet.cli.progress import StepBars
    from napari_irnet.pipeline.cache import StageCache
    from napari_irnet.progress import Step

    monkeypatch.setenv("NAPARI_IRNET_PROGRESS_SECONDS", "0")
    bars = StepBars("big.tif")
    StageCache(_two_blobs(), FAST).update(progress=bars)
    bars.close()
    lines = capsys.readouterr().err.splitlines()
    walk = [line for line in lines if line.startswith("big.tif: instance walk: ")]
    assert walk and walk[-1].startswith("big.tif: instance walk: ") and "(100%)" in walk[-1]
    assert any(line.startswith(f"big.tif: semantic walk: {FAST.walk_steps}/{FAST.walk_steps} steps (100%)") for line in lines)
    assert not any("seeds" in line for line in lines)  # stages without a count are not shown
    bars = StepBars("grows")
    for step in (Step("instance walk", 1, 10), Step("instance walk", 10, 10), Step("instance walk", 15, 20)):
        bars(step)
    bars.close()
    assert capsys.readouterr().err.splitlines()[-1].startswith("grows: instance walk: 15/20 steps (75%)")


@pytest.mark.parametrize("word, value", [("TRUE", True), ("No", False), ("1", True), ("off", False), (" yes ", True)])
def test_bool_options_take_true_and_false_words(word, value):
    from napari_irnet.cli.parser import build_parser

    args = build_parser().parse_args(["predict", "--images", "i", "--checkpoint", "c", "--out", "o", "--use-crf", word])
    assert args.use_crf is value


def test_any_other_file_problem_is_a_message_not_a_traceback(ws, tmp_path, capsys, monkeypatch):
    out = tmp_path / "afile"
    out.write_text("keep")
    code, err = run(["predict", *ws["data"], "--checkpoint", ws["full"], "--out", out], capsys)
    assert code == 2 and f"{out} is not a folder" in err and "Traceback" not in err
    assert out.read_text() == "keep"
    # an OSError no command expects (here: a file the system refuses to read) names the file too

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("napari_irnet.io.images.read_image", refused)
    code, err = run(["predict", *ws["data"], "--checkpoint", ws["full"], "--out", tmp_path / "preds"], capsys)
    assert code == 2 and "Permission denied" in err and ".png: " in err and "Traceback" not in err
