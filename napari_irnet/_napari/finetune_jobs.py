"""The Fine-tune panel's background work as plain functions and a generator.

No napari and no Qt here (the panel wraps :func:`finetune_job` in a
``thread_worker`` at the GUI edge; tests and scripts can call it directly).
It gathers the training images (images shown in the viewer whose stored
corrections are corrected or accepted, and optionally a folder of images with
a labels file, found the way ``napari-irnet finetune`` finds them), calls
:func:`napari_irnet.training.finetune_data.finetune_labels` and
:func:`~napari_irnet.training.finetune.finetune`, and stores the result as a new
version in a :class:`~napari_irnet.models.versions.VersionStore` next to the
checkpoint it started from. The starting checkpoint is never written.

Versions: fine-tuning ``cells.pt`` stores ``cells.versions/v0001.pt``,
``v0002.pt``, ... with ``versions.json``; a version's ``parent`` is the
version it started from, 0 for the original checkpoint. Fine-tuning a stored
version adds to the same store.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .llvm_guard import avoid_llvm_clash

avoid_llvm_clash()  # before anything imports torchvision (see _llvm_guard)
import torchvision  # noqa: E402,F401  (imported here once, not first inside a worker thread)

from ..io.files import InputError  # noqa: E402
from ..models.checkpoint import load_checkpoint  # noqa: E402
from ..models.versions import VersionStore  # noqa: E402
from ..params import Params, TrainParams  # noqa: E402
from ..pipeline.inference import resolve_device  # noqa: E402
from ..store.folder import load_corrections, user_data_dir  # noqa: E402
from ..training.datasets import LabelledImage  # noqa: E402
from ..training.field_check import describe_reset  # noqa: E402
from ..training.finetune import finetune  # noqa: E402
from ..training.finetune_data import correction_class_maps, finetune_labels  # noqa: E402

#: image states whose corrections train the model
USABLE_STATES = ("corrected", "accepted")
#: the TrainParams fields the panel sets
PANEL_TRAIN_PARAMS = (
    "finetune_epochs",
    "finetune_learning_rate",
    "correction_weight",
    "weak_displacement_weight",
    "finetune_reset_displacement",
    "finetune_cam",
)
_VERSION_FILE = re.compile(r"^v(\d{4,})\.pt$")


@dataclass
class TrainingImage:
    """One image for fine-tuning.

    ``instances`` is the corrected instance map (None: weak labels from the
    CAMs); ``classes`` the image-level class names; ``instance_classes`` the
    class name of each corrected instance (for the CAM network's class maps;
    None when unknown).
    """

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    classes: list[str]
    instances: np.ndarray | None = None
    state: str = "new"
    source: str = ""  # the image file, or "" for an image without one
    instance_classes: dict[int, str] | None = None
    #: the annotator background of the correction (true background in the targets)
    background: np.ndarray | None = None

    @property
    def strong(self) -> bool:
        return self.instances is not None


def viewer_image(name: str, image: np.ndarray, store, source: str = "") -> TrainingImage | None:
    """An image shown in the viewer with its stored corrections, None when it has none usable.

    ``store`` is the image's correction store (the one the IRNet panel
    saves into: :class:`~napari_irnet.store.image_store.FolderStore`, or
    :class:`~napari_irnet.store.image_store.ProjectImageStore` for a project
    image). Raises :class:`~napari_irnet.io.files.InputError` for unreadable
    or foreign corrections.
    """
    return training_image(name, image, store.load(), source)


def training_image(name: str, image: np.ndarray, stored, source: str = "") -> TrainingImage | None:
    """A :class:`TrainingImage` from stored corrections (any store), None when they are not corrected or accepted."""
    if stored is None or stored.state not in USABLE_STATES:
        return None
    table = stored.instance_classes
    classes = list(dict.fromkeys(list(stored.classes) + list(table.values())))
    return TrainingImage(name, image, classes, stored.labels, stored.state, source, table, stored.background)


def folder_images(
    images_dir: str | os.PathLike[str],
    labels_file: str | os.PathLike[str],
    classes: Sequence[str],
    corrections_dir: str | os.PathLike[str] | None = None,
    weak: bool = True,
) -> list[TrainingImage]:
    """The images of a labels file with their corrections, as ``napari-irnet finetune`` finds them.

    Corrections come from ``corrections_dir`` (default ``<images>/napari-irnet``,
    where the plugin keeps them): the plugin's per-image folders or plain label
    images. With ``weak`` the images without a correction come too (weak
    labels from the CAMs).
    """
    from ..cli.finetune import find_correction
    from ..io.images import read_image
    from ..io.labels import read_labels

    images_dir = Path(images_dir)
    folder = Path(corrections_dir) if corrections_dir else images_dir / "napari-irnet"
    labels = read_labels(labels_file, images_dir, classes=list(classes))
    out = []
    for file, names in labels.image_labels.items():
        image = read_image(images_dir / file)
        found = find_correction(folder, file, image) if folder.is_dir() else None
        if found is None and not weak:
            continue
        inst, table, background = (found.labels, found.classes, found.background) if found is not None else (None, None, None)
        state = "corrected" if inst is not None else "new"
        if inst is not None and (folder / file).is_dir():
            stored = load_corrections(folder / file, image)
            state = stored.state if stored is not None else state
        out.append(TrainingImage(Path(file).stem, image, list(names), inst, state, str(images_dir / file), table, background))
    return out


@dataclass
class FolderSource:
    """A folder of images with a labels file (and where their corrections are)."""

    images_dir: Path
    labels_file: Path
    corrections_dir: Path | None = None
    weak: bool = True

    def load(self, classes: Sequence[str]) -> list[TrainingImage]:
        return folder_images(self.images_dir, self.labels_file, classes, self.corrections_dir, self.weak)


def same_image(a: str, b: str) -> bool:
    """Whether two image file paths name the same file ("" never does)."""
    try:
        return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


# ---------------------------------------------------------------------------
# versions


def store_of(checkpoint: str | os.PathLike[str]) -> tuple[VersionStore, int]:
    """The version store for ``checkpoint`` and its version number there (0: the original).

    A stored version (``<x>.versions/v0003.pt``) belongs to its own store;
    any other checkpoint gets ``<stem>.versions/`` next to it, or, when that
    folder cannot be written (e.g. the bundled demo model), one under the
    user data folder.
    """
    p = Path(checkpoint).expanduser()
    m = _VERSION_FILE.match(p.name)
    if m and (p.parent / VersionStore.INDEX).is_file():
        return VersionStore(p.parent), int(m.group(1))
    folder = p.parent / f"{p.stem}.versions"
    if not _writable(folder) or _inside_package(p):
        digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]
        folder = user_data_dir() / "versions" / f"{p.stem}-{digest}.versions"
    return VersionStore(folder), 0


def _inside_package(path: Path) -> bool:
    """True for a file installed with napari-irnet (the bundled demo model): never write next to it."""
    package = Path(__file__).resolve().parent.parent
    try:
        path.resolve().relative_to(package)
    except ValueError:
        return False
    return True


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK)


def original_of(checkpoint: str | os.PathLike[str]) -> Path | None:
    """The original checkpoint of a store (the file the store is named after), when it still exists."""
    store, number = store_of(checkpoint)
    if number == 0:
        return Path(checkpoint).expanduser()
    name = store.folder.name.removesuffix(".versions")
    for suffix in (".pt", ".pth"):
        cand = store.folder.parent / f"{name}{suffix}"
        if cand.is_file():
            return cand
    return None


def version_label(checkpoint: str | os.PathLike[str]) -> str:
    """A short name for a checkpoint: ``v3`` for a stored version, else its file name."""
    p = Path(checkpoint)
    m = _VERSION_FILE.match(p.name)
    if m and (p.parent / VersionStore.INDEX).is_file():
        return f"v{int(m.group(1))}"
    return p.stem


def version_choices(checkpoint: str | os.PathLike[str] | None) -> list[tuple[str, str]]:
    """(label, path) for the original checkpoint and every stored version, newest last."""
    if not checkpoint:
        return []
    store, _ = store_of(checkpoint)
    choices = []
    original = original_of(checkpoint)
    if original is not None:
        choices.append((f"original ({original.name})", str(original)))
    try:
        records = store.versions()
    except Exception:  # an unreadable index: only the original then
        records = []
    for r in records:
        path = store.folder / r["file"]
        if path.is_file():
            parent = r.get("parent")
            src = "original" if parent in (0, None) else f"v{parent}"
            note = f", {r['note']}" if r.get("note") else ""
            created = str(r.get("created", ""))[:16].replace("T", " ")
            choices.append((f"v{r['version']} ({created}, from {src}{note})", str(path)))
    return choices


# ---------------------------------------------------------------------------
# the job


@dataclass
class FinetuneResult:
    """What a fine-tuning run gives the panel."""

    stopped: bool
    device: str
    steps: int
    checkpoint: str  # where it started
    version: dict | None = None  # the new version's record (None when stopped)
    path: str | None = None  # the new version's file
    losses: list[float] = field(default_factory=list)
    note: str | None = None  # what happened to the displacement branch (core.finetune.describe_reset)


def finetune_job(
    checkpoint: str | os.PathLike[str],
    images: Sequence[TrainingImage],
    settings: dict | None = None,
    device: str = "auto",
    should_stop: Callable[[], bool] | None = None,
    params: Params | None = None,
    resume: bool = True,
    folder: FolderSource | None = None,
) -> Iterator[dict]:
    """Fine-tune the checkpoint's IRNet on ``images``; store the result as a new version.

    Yields ``{"stage": "loading"}``, then ``{"stage": "labels", "done", "total"}``
    per image, then every record of :func:`~napari_irnet.training.finetune.finetune`
    (``stage`` "finetune", ``step``, ``max_step``, ``loss``, ...). Returns a
    :class:`FinetuneResult`.

    ``settings`` overrides TrainParams fields (the panel's
    :data:`PANEL_TRAIN_PARAMS`);
    the others come from the checkpoint. When ``should_stop()`` becomes true
    the run ends at its next step without a new version; with ``resume``, the
    training state is kept in the store so that a new run on the same images
    with the same settings continues from there. ``folder`` adds the images of
    a folder (those already among ``images``, by file, are not added twice).
    """
    yield {"stage": "loading"}
    dev = resolve_device(device)
    checkpoint = Path(checkpoint).expanduser()
    model = load_checkpoint(checkpoint)  # a fresh copy: the IRNet panel's cached model stays as it is
    model.require("irn", task="fine-tuning")
    images = list(images)
    if folder is not None:
        more = folder.load(model.classes)
        images += [m for m in more if not any(same_image(m.source, im.source) for im in images)]
    if not images:
        raise InputError("no images to fine-tune on: accept or correct an image first (IRNet panel), or give a folder")
    if not any(im.strong for im in images):
        raise InputError("none of the images has a corrected or accepted instance map")
    tp = model.train_params
    if settings:
        unknown = set(settings) - set(TrainParams.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training parameter(s): {', '.join(sorted(unknown))}")
        tp = TrainParams.from_dict({**tp.to_dict(), **settings})
    model.train_params = tp
    params = params or model.params
    items, corrections = [], []
    for im in images:
        unknown = [c for c in im.classes if c not in model.classes]
        if unknown and not im.strong:
            raise InputError(f"{im.name}: class(es) {unknown} unknown to {checkpoint.name} (it knows {model.classes})")
        ids = [model.classes.index(c) for c in im.classes if c in model.classes]
        items.append(LabelledImage(im.name, im.image, ids))
        corrections.append(None if im.instances is None else np.asarray(im.instances))
    result = FinetuneResult(stopped=False, device=str(dev), steps=0, checkpoint=str(checkpoint))
    labels: list[np.ndarray | None] = [None] * len(items)
    strong = [False] * len(items)
    done = 0
    backgrounds = [im.background for im in images]
    for i, lab, is_strong in finetune_labels(model, items, corrections, params=params, device=dev, background=backgrounds):
        labels[i], strong[i] = lab, is_strong
        done += 1
        yield {"stage": "labels", "done": done, "total": len(items)}
        if should_stop is not None and should_stop():
            result.stopped = True
            return result
    store, parent = store_of(checkpoint)
    resume_file = store.folder / f"finetune-from-{'original' if parent == 0 else f'v{parent:04d}'}.resume" if resume else None
    class_maps = correction_class_maps(corrections, [im.instance_classes for im in images], model.classes, background=backgrounds)
    run = finetune(model, items, labels, strong, tp, dev, should_stop=should_stop, resume_file=resume_file, class_maps=class_maps)
    for record in run:
        if record.get("stopped"):
            result.stopped = True
            return result
        result.steps = int(record["step"])
        result.losses.append(float(record["loss"]))
        yield record
    n_strong = sum(strong)
    note = f"{n_strong} corrected + {len(items) - n_strong} weak, {tp.finetune_epochs} ep, lr {tp.finetune_learning_rate:g}"
    result.note = describe_reset(model.history[-1])
    if model.history[-1].get("displacement_reset"):
        note += f", displacement relearnt ({model.history[-1]['displacement_reset']})"
    result.version = store.save(model, note=note, parent=parent)
    result.path = str(store.folder / result.version["file"])
    if resume_file is not None:  # kept by finetune until the version is safely written
        resume_file.unlink(missing_ok=True)
    return result
