"""Fine-tuning IRNet from a person's corrections (human in the loop).

Corrected or accepted images give exact relation labels
(:func:`~napari_irnet.core.targets.relation_labels`: pairs inside one instance
positive, pairs across instances or against background negative); the other
images keep the weak labels mined from the CAMs (confident seeds, "same class"
positive). :func:`finetune` continues training IRNet's boundary and
displacement heads on the mix, drawing every corrected image
``correction_weight`` times per epoch, from the current weights and at a lower
learning rate. Pixels a person did not review can be excluded with a mask.

The loop is a generator (one progress dict per step) with a stop flag, and
can be resumed after an interruption from a resume file written every
``save_every`` steps and on stop. It only changes the model in memory: the
caller saves the result as a new checkpoint (atomically, next to the old one,
or as a new version in a :class:`VersionStore`), so a crash or a stop never
touches the checkpoint it started from.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from .checkpoint import CheckpointError, Model, _atomic_torch_save, load_checkpoint, save_checkpoint
from .inference import resolve_device, strided_size
from .io import atomic_path
from .params import Params, TrainParams
from .path_index import PathIndex
from .targets import relation_labels
from .training import (
    LabelledImage,
    PolySchedule,
    RelationDataset,
    _optimizer,
    estimate_displacement_mean,
    irn_step,
    make_seeds,
)

__all__ = ["VersionStore", "finetune", "finetune_labels"]


def finetune_labels(
    model: Model,
    items: Sequence[LabelledImage],
    corrections: Sequence[np.ndarray | None],
    reviewed: Sequence[np.ndarray | None] | None = None,
    params: Params | None = None,
    device="auto",
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """Relation labels for every image: exact where corrected, CAM seeds elsewhere.

    Parameters
    ----------
    items : LabelledImage
        The images with their image-level labels.
    corrections : (H, W) int or None, one per item
        A corrected or accepted instance map (0 = background), or None for an
        image nobody corrected.
    reviewed : (H, W) bool or None, one per item, optional
        The part of a corrected image a person reviewed (default: all of it).

    Yields
    ------
    (index, labels, strong) with ``labels`` (H, W) int32 (0 background, 255
    ignore, one value per instance or class) and ``strong`` True for a
    corrected image.
    """
    if len(corrections) != len(items):
        raise ValueError(f"{len(corrections)} corrections for {len(items)} images")
    reviewed = list(reviewed) if reviewed is not None else [None] * len(items)
    weak = [i for i, c in enumerate(corrections) if c is None]
    for i, (item, inst) in enumerate(zip(items, corrections)):
        if inst is None:
            continue
        if np.asarray(inst).shape != item.image.shape[:2]:
            raise ValueError(
                f"correction of {item.name!r} has shape {np.asarray(inst).shape}, its image {item.image.shape[:2]}"
            )
        yield i, relation_labels(inst, reviewed[i]), True
    if weak and model.cam is None:
        raise ValueError("images without corrections need the CAM network for their weak labels")
    for j, seeds in make_seeds(model, [items[i] for i in weak], params, device):
        yield weak[j], seeds.astype(np.int32), False


def _config_digest(items: Sequence[LabelledImage], strong: Sequence[bool], tp: TrainParams) -> str:
    """Identifies a fine-tuning run, so that a resume file is only used for the same run."""
    h = hashlib.sha256()
    for item, s in zip(items, strong):
        h.update(f"{item.name}:{item.image.shape}:{int(s)};".encode())
    h.update(json.dumps(tp.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def finetune(
    model: Model,
    items: Sequence[LabelledImage],
    labels: Sequence[np.ndarray],
    strong: Sequence[bool],
    tp: TrainParams | None = None,
    device="auto",
    should_stop: Callable[[], bool] | None = None,
    resume_file: str | Path | None = None,
    save_every: int = 50,
) -> Iterator[dict]:
    """Continue training ``model.irn`` on corrected and weakly labelled images.

    Parameters
    ----------
    labels : (H, W) int, one per item
        Relation labels from :func:`finetune_labels`.
    strong : bool, one per item
        Which labels come from corrections; those images are drawn
        ``tp.correction_weight`` times per epoch.
    tp : TrainParams
        ``finetune_epochs``, ``finetune_learning_rate``, ``correction_weight``
        and the IRNet crop, batch and augmentation settings.
    should_stop : callable, optional
        Polled before every step; when it returns True the loop writes the
        resume file (if any), yields a last record with ``"stopped": True``
        and ends, leaving the weights as they are.
    resume_file : path, optional
        Where the training state (weights, optimiser, step) is kept every
        ``save_every`` steps; if it exists and belongs to the same run
        (same images, labels kind and parameters), training continues from
        it. It is deleted when the run completes.

    Yields
    ------
    dict
        ``stage`` ("finetune"), ``epoch``, ``step``, ``max_step``, ``lr``,
        the losses (``loss``, ``pos``, ``neg``, ``dp_fg``, ``dp_bg``),
        ``seconds``, ``images_per_second``; ``resumed_from`` on the first
        record of a resumed run.
    """
    tp = tp or model.train_params
    if model.irn is None:
        raise ValueError("the model has no IRNet to fine-tune (train it first)")
    if not (len(items) == len(labels) == len(strong)):
        raise ValueError(f"{len(items)} images, {len(labels)} label maps and {len(strong)} strong flags differ")
    if not items:
        raise ValueError("no training images")
    dev = resolve_device(device)
    torch.manual_seed(tp.seed)
    order = [i for i in range(len(items)) for _ in range(tp.correction_weight if strong[i] else 1)]
    dataset = RelationDataset([items[i] for i in order], [labels[i] for i in order], tp, tp.seed)
    net = model.irn.to(dev).train()
    grid = strided_size((tp.irn_crop_size, tp.irn_crop_size), 4)
    index = PathIndex(tp.train_radius, grid)
    batch = max(1, min(tp.irn_batch_size, len(dataset)))
    steps_per_epoch = len(dataset) // batch
    max_step = steps_per_epoch * tp.finetune_epochs
    opt = _optimizer(net.parameter_groups(), tp.finetune_learning_rate, tp)
    sched = PolySchedule(opt, max_step, tp.poly_power)
    digest = _config_digest(items, strong, tp)
    resume_file = Path(resume_file) if resume_file is not None else None
    step = 0
    if resume_file is not None and resume_file.exists():
        try:
            state = torch.load(resume_file, map_location=dev, weights_only=False)
        except Exception as exc:  # a torn or foreign file: say so, start over
            raise CheckpointError(f"{resume_file}: cannot read the resume file ({exc}); delete it to start over") from exc
        if state.get("digest") == digest:
            net.load_state_dict(state["irn_state"])
            opt.load_state_dict(state["optimizer"])
            step = int(state["step"])
            sched.step_count = step

    def save_state() -> None:
        if resume_file is not None:
            state = {
                "digest": digest,
                "step": step,
                "irn_state": net.state_dict(),
                "optimizer": opt.state_dict(),
            }
            _atomic_torch_save(state, resume_file)

    resumed_from = step
    t0 = time.perf_counter()
    seen = 0
    record: dict = {}
    for epoch in range(step // steps_per_epoch, tp.finetune_epochs):
        # the epoch's order depends on the epoch only, so a resumed run draws the same batches
        perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(tp.seed * 1000 + epoch))
        batches = perm[: steps_per_epoch * batch].view(steps_per_epoch, batch).tolist()
        dataset.set_epoch(epoch)
        for b in range(step - epoch * steps_per_epoch, steps_per_epoch):
            if should_stop is not None and should_stop():
                save_state()
                net.eval()
                yield {**record, "stage": "finetune", "step": step, "max_step": max_step, "stopped": True}
                return
            x, y = default_collate([dataset[i] for i in batches[b]])
            lr = sched.step()
            losses = irn_step(net, opt, x, y, index, dev, tp.amp)
            step += 1
            seen += x.shape[0]
            elapsed = time.perf_counter() - t0
            record = {"stage": "finetune", "epoch": epoch, "step": step, "max_step": max_step, "lr": lr, "seconds": elapsed, **losses}
            record["images_per_second"] = seen / elapsed if elapsed > 0 else 0.0
            if resumed_from and step == resumed_from + 1:
                record["resumed_from"] = resumed_from
            if save_every and step % save_every == 0:
                save_state()
            yield record
    estimate_displacement_mean(model, items, tp, dev)
    net.eval()
    model.history.append(
        {
            "stage": "finetune",
            "steps": step,
            "corrected_images": int(sum(bool(s) for s in strong)),
            "weak_images": int(sum(not s for s in strong)),
            "final_loss": record.get("loss"),
            "seconds": time.perf_counter() - t0,
        }
    )
    if resume_file is not None and resume_file.exists():
        resume_file.unlink()


class VersionStore:
    """A folder of model versions with an index, for roll-back.

    Layout: ``versions.json`` (a list of records: ``version``, ``file``,
    ``created``, ``parent``, ``note``) and one checkpoint per version,
    ``v0001.pt``, ``v0002.pt``, ... Files are written atomically, the index
    last, so an interrupted save leaves the store as it was.
    """

    INDEX = "versions.json"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def versions(self) -> list[dict]:
        """Every version's record, oldest first."""
        path = self.folder / self.INDEX
        if not path.exists():
            return []
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable version index ({exc})") from exc
        if not isinstance(records, list):
            raise CheckpointError(f"{path}: the version index must be a JSON list")
        return records

    def latest(self) -> dict | None:
        records = self.versions()
        return records[-1] if records else None

    def save(self, model: Model, note: str = "", parent: int | None = None) -> dict:
        """Store ``model`` as the next version; returns its record."""
        records = self.versions()
        number = (records[-1]["version"] + 1) if records else 1
        record = {
            "version": number,
            "file": f"v{number:04d}.pt",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "parent": parent if parent is not None else (records[-1]["version"] if records else None),
            "note": note,
        }
        save_checkpoint(model, self.folder / record["file"])
        with atomic_path(self.folder / self.INDEX) as tmp:
            tmp.write_text(json.dumps(records + [record], indent=1))
        return record

    def path(self, version: int) -> Path:
        for record in self.versions():
            if record["version"] == version:
                return self.folder / record["file"]
        raise CheckpointError(f"{self.folder}: no version {version} (have {[r['version'] for r in self.versions()]})")

    def load(self, version: int | None = None, device: str = "cpu") -> Model:
        """Load one version (default: the latest)."""
        if version is None:
            latest = self.latest()
            if latest is None:
                raise CheckpointError(f"{self.folder}: no model versions stored yet")
            version = latest["version"]
        return load_checkpoint(self.path(version), device=device)
