"""Run the reference implementation of IRNet (jiwoon-ahn/irn) on CPU, recording every stage.

Used by ``tests/golden/make_golden.py`` (the golden fixtures of
``tests/test_reference_equivalence.py``) and ``benchmarks/bench_reference.py``
(the side-by-side on real photos). The reference's code is not part of this
repository: pass the folder of a checkout of it. Importing it needs
``pydensecrf`` (its ``misc/imutils.py`` imports it at start).

The reference is driven through its own per-step worker functions
(``step/make_cam.py``, ``cam_to_ir_label.py``, ``make_ins_seg_labels.py``,
``make_sem_seg_labels.py``), with its own data sets and data loaders, one
image at a time, under these patches (all undone afterwards):

- ``.cuda()`` is the identity and ``torch.cuda.device`` a no-op context, so
  everything runs on the CPU;
- it sees two GPUs and runs as worker 0: its progress print, made by the last
  worker only, divides by ``len(data) // 20``, which is 0 for fewer than 20
  images (with ``num_workers=0`` its data loaders stay in this process);
- its backbone is built without downloading ImageNet weights (the given state
  dicts replace them), and its data sets read the given arrays and labels
  instead of VOC files and ``voc12/cls_labels.npy``;
- numpy 2: ``np.bool`` (removed) is ``bool``, and the image size reaches
  its instance and semantic steps as plain ints (numpy no longer takes a
  size-1 array as a slice bound).

Its functions are wrapped to record what it does not save: the IRNet outputs,
the centroids, the clusters and both walks, and the time of each step.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

#: the reference's step modules and networks, imported from its checkout
_MODULES = ("voc12.dataloader", "misc.imutils", "misc.indexing", "net.resnet50", "net.resnet50_cam",
            "net.resnet50_irn", "step.make_cam", "step.cam_to_ir_label", "step.make_ins_seg_labels",
            "step.make_sem_seg_labels")  # fmt: skip
#: the reference's defaults (run_sample.py)
DEFAULTS = dict(cam_scales=(1.0, 0.5, 1.5, 2.0), conf_fg_thres=0.30, conf_bg_thres=0.05, beta=10, exp_times=8,
                ins_seg_bg_thres=0.25, sem_seg_bg_thres=0.25)  # fmt: skip
#: the reference's names are integers read as "YYYY_NNNNNN"; image i gets FIRST_NAME + i
FIRST_NAME = 2000_000001


class ReferenceMissing(RuntimeError):
    """The reference checkout or pydensecrf cannot be used; the message says why."""


@contextlib.contextmanager
def _patched(*changes):
    """Set ``(obj, attr, value)`` for the duration, then restore what was there."""
    missing = object()
    saved = [(obj, attr, getattr(obj, attr, missing)) for obj, attr, _ in changes]
    try:
        for obj, attr, value in changes:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, old in reversed(saved):
            if old is missing:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)


def load_reference(root: str | Path) -> SimpleNamespace:
    """Import the reference's modules from the checkout at ``root``."""
    root = Path(root).resolve()
    if not (root / "step" / "make_ins_seg_labels.py").is_file():
        raise ReferenceMissing(f"{root}: not a checkout of jiwoon-ahn/irn (no step/make_ins_seg_labels.py)")
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError as exc:
        raise ReferenceMissing(f"the reference needs pydensecrf (pip install pydensecrf2): {exc}") from exc
    if not hasattr(np, "bool"):
        np.bool = bool  # misc/pyutils.py uses it as a default argument
    sys.path.insert(0, str(root))
    cwd = os.getcwd()
    os.chdir(root)  # voc12/dataloader.py loads voc12/cls_labels.npy at import
    try:
        mods = {name.split(".")[-1]: importlib.import_module(name) for name in _MODULES}
    finally:
        os.chdir(cwd)
    return SimpleNamespace(root=root, **mods)


def _reference_networks(ref: SimpleNamespace):
    original = ref.resnet50.resnet50
    with _patched((ref.resnet50, "resnet50", lambda pretrained=True, **kw: original(pretrained=False, **kw))):
        return ref.resnet50_cam.CAM(), ref.resnet50_irn.EdgeDisplacement()


def _our_name(ref_name: str) -> str:
    if ref_name == "mean_shift.running_mean":
        return "fc_dp7.4.running_mean"
    return "backbone." + ref_name[len("resnet50."):] if ref_name.startswith("resnet50.") else ref_name


def reference_state_dicts(ref: SimpleNamespace, model) -> tuple[dict, dict]:
    """The CAM and IRNet weights of ``model`` (a napari-irnet ``Model``) as the reference's state dicts.

    Every tensor of the reference's networks is set from ``model`` (checked),
    and the dicts carry all its aliases (``stage*``, ``backbone.*``,
    ``edge_layers.*``...) as its own ``res50_cam.pth``/``res50_irn.pth`` do.
    """
    out = []
    for ref_net, ours in zip(_reference_networks(ref), (model.cam, model.irn)):
        state = ours.state_dict()
        named = dict(ref_net.named_parameters())
        named.update(ref_net.named_buffers())
        with torch.no_grad():
            for name, tensor in named.items():
                tensor.copy_(state[_our_name(name)])
        out.append({k: v.clone() for k, v in ref_net.state_dict().items()})
    return out[0], out[1]


def _one_hot_to_map(one_hot: np.ndarray) -> np.ndarray:
    return np.argmax(one_hot, axis=0).astype(np.int32)


class _Recorder:
    """Wraps reference functions to keep their results (and the walk's time)."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.walk_seconds = 0.0

    def keep(self, key: str, fn, convert=lambda v: v):
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            self.values[key] = convert(result)
            return result

        return wrapped

    def walk(self, key: str, fn):
        def wrapped(x, edge, *args, **kwargs):
            start = time.perf_counter()
            rw = fn(x, edge, *args, **kwargs)
            self.walk_seconds += time.perf_counter() - start
            self.values[key] = rw[:, 0].numpy().copy()
            return rw

        return wrapped


def _int_sizes(loader_class):
    """A data loader whose batches carry ``size`` as (H, W) ints, for numpy 2."""

    def loader(*args, **kwargs):
        for pack in loader_class(*args, **kwargs):
            pack["size"] = tuple(int(s) for s in pack["size"])
            yield pack

    return loader


def _cpu_patches():
    return (
        (torch.Tensor, "cuda", lambda self, *a, **k: self),
        (torch.nn.Module, "cuda", lambda self, *a, **k: self),
        (torch.cuda, "device", lambda *a, **k: contextlib.nullcontext()),
        (torch.cuda, "device_count", lambda: 2),
    )


def _data_patches(ref: SimpleNamespace, image: np.ndarray, class_ids) -> tuple:
    labels = np.zeros((1, len(ref.dataloader.CAT_LIST)), np.float32)
    labels[0, list(class_ids)] = 1.0
    return (
        (ref.dataloader, "load_img_name_list", lambda path: np.array([FIRST_NAME], np.int32)),
        (ref.dataloader, "load_image_label_list_from_npy", lambda names: labels),
        (ref.dataloader, "imageio", SimpleNamespace(imread=lambda path: image.copy())),
    )


def _args(workdir: Path, **extra) -> SimpleNamespace:
    dirs = {k: str(workdir / k) for k in ("cam_out_dir", "ir_label_out_dir", "ins_seg_out_dir", "sem_seg_out_dir")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    return SimpleNamespace(num_workers=0, **DEFAULTS, **dirs, **extra)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path)).copy()


def _instances(detected: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's detections as one label map (1..n in its order), scores and classes."""
    labels = np.zeros(shape, np.int32)
    for i, mask in enumerate(detected["mask"], start=1):
        if (labels[mask] != 0).any():
            raise AssertionError("the reference's instance masks overlap")
        labels[mask] = i
    return labels, np.asarray(detected["score"], np.float32), np.asarray(detected["class"], np.int64)


def run_image(ref: SimpleNamespace, nets, image: np.ndarray, class_ids, workdir: Path) -> dict:
    """Every stage of the reference on one (H, W, 3) uint8 image with 0-based ``class_ids``.

    ``nets``: the reference's (CAM, EdgeDisplacement) with weights loaded, in
    eval mode. Returns the stage outputs (numpy) and ``seconds`` per step.
    """
    cam_net, irn_net = nets
    name = ref.dataloader.decode_int_filename(FIRST_NAME)
    args = _args(workdir)
    rec = _Recorder()
    seconds = {}

    def keep_outputs(module, inputs, outputs) -> None:  # a hook that returns something replaces the outputs
        rec.values.setdefault("irn", tuple(o.numpy().copy() for o in outputs))

    hook = irn_net.register_forward_hook(keep_outputs)
    ins, sem, idx = ref.make_ins_seg_labels, ref.make_sem_seg_labels, ref.indexing
    try:
        with _patched(*_cpu_patches(), *_data_patches(ref, image, class_ids)):
            msf = ref.dataloader.VOC12ClassificationDatasetMSF
            start = time.perf_counter()
            ref.make_cam._work(0, cam_net, [msf("list", "root", scales=args.cam_scales)], args)
            seconds["cam"] = time.perf_counter() - start
            plain = ref.dataloader.VOC12ImageDataset("list", "root", img_normal=None, to_torch=False)
            seeds_args = SimpleNamespace(**{**vars(args), "num_workers": 2})  # its progress print: last worker only
            start = time.perf_counter()
            ref.cam_to_ir_label._work(0, [plain], seeds_args)
            seconds["seeds"] = time.perf_counter() - start
            seeds_crf = _read_png(Path(args.ir_label_out_dir) / f"{name}.png")
            with _patched((ref.imutils, "crf_inference_label", lambda img, labels, *a, **k: labels)):
                ref.cam_to_ir_label._work(0, [plain], seeds_args)
            seeds_plain = _read_png(Path(args.ir_label_out_dir) / f"{name}.png")
            one = [msf("list", "root", scales=(1.0,))]
            with _patched(
                (ins, "find_centroids_with_refinement", rec.keep("centroids", ins.find_centroids_with_refinement)),
                (ins, "cluster_centroids", rec.keep("clusters", ins.cluster_centroids, _one_hot_to_map)),
                (idx, "propagate_to_edge", rec.walk("instance_walk", idx.propagate_to_edge)),
                (ins, "DataLoader", _int_sizes(ins.DataLoader)),
            ):
                start = time.perf_counter()
                ins._work(0, irn_net, one, args)
                seconds["instances"] = time.perf_counter() - start
            with _patched(
                (idx, "propagate_to_edge", rec.walk("semantic_walk", idx.propagate_to_edge)),
                (sem, "DataLoader", _int_sizes(sem.DataLoader)),
            ):
                start = time.perf_counter()
                sem._work(0, irn_net, one, args)
                seconds["semantic"] = time.perf_counter() - start
    finally:
        hook.remove()
    seconds["walks"] = rec.walk_seconds
    cams = np.load(Path(args.cam_out_dir) / f"{name}.npy", allow_pickle=True).item()
    detected = np.load(Path(args.ins_seg_out_dir) / f"{name}.npy", allow_pickle=True).item()
    instances, scores, classes = _instances(detected, image.shape[:2])
    boundary, displacement = rec.values["irn"]
    return {
        "class_ids": np.asarray(cams["keys"], np.int64),
        "cam_strided": np.asarray(cams["cam"], np.float32),
        "cam_high_res": np.asarray(cams["high_res"], np.float32),
        "seeds_crf": seeds_crf,
        "seeds_plain": seeds_plain,
        "boundary": boundary[0],
        "displacement": displacement,
        "centroids": rec.values["centroids"].astype(np.int32),
        "clusters": rec.values["clusters"],
        "instance_walk": rec.values["instance_walk"],
        "semantic_walk": rec.values["semantic_walk"],
        "instances": instances,
        "instance_scores": scores,
        "instance_classes": classes,
        "semantic": _read_png(Path(args.sem_seg_out_dir) / f"{name}.png"),
        "seconds": seconds,
    }


def prepare(ref: SimpleNamespace, model) -> tuple:
    """The reference's networks loaded (as its steps load them) with the weights of ``model``."""
    cam_state, irn_state = reference_state_dicts(ref, model)
    cam_net, irn_net = _reference_networks(ref)
    cam_net.load_state_dict(cam_state, strict=True)
    irn_net.load_state_dict(irn_state, strict=False)
    cam_net.eval()  # as its steps do (its train() overrides return None: no chaining)
    irn_net.eval()
    return cam_net, irn_net


def run_images(ref: SimpleNamespace, model, images, class_ids) -> list[dict]:
    """:func:`run_image` for each image (with its class ids) in a temporary folder."""
    nets = prepare(ref, model)
    out = []
    with torch.no_grad():
        for image, ids in zip(images, class_ids):
            with tempfile.TemporaryDirectory() as tmp:
                out.append(run_image(ref, nets, image, ids, Path(tmp)))
    return out
