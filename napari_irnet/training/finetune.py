"""Fine-tuning IRNet from a person's corrections (human in the loop).

Corrected or accepted images give exact relation labels
(:func:`~napari_irnet.training.targets.relation_labels`: pairs inside one instance
positive, pairs across instances or against background negative); the other
images keep the weak labels mined from the CAMs (confident seeds, "same class"
positive). :func:`finetune` continues training IRNet's boundary and
displacement heads on the mix, drawing every corrected image
``correction_weight`` times per epoch, from the current weights and at a lower
learning rate; with ``TrainParams.centroid_loss_weight`` > 0 the displacement
of corrected images is also regressed to the instance centroids
(:func:`~napari_irnet.training.losses.centroid_displacement_loss`).
Pixels a person did not review can be excluded with a mask.

The classes of the corrected instances give class maps
(:func:`~napari_irnet.training.targets.class_map_target`); with
``TrainParams.finetune_cam`` every step also trains the CAM network per pixel
on a batch of them (:func:`~napari_irnet.training.cam.cam_pixel_loss`), so
that corrections fix what the image-level labels could not teach it: where
each class is. The uncorrected images do not train the CAM network.

The loop is a generator (one progress dict per step) with a stop flag, and
can be resumed after an interruption from a resume file written every
``save_every`` steps and on stop. It only changes the model in memory: the
caller saves the result as a new checkpoint (atomically, next to the old one,
or as a new version in a :class:`~napari_irnet.models.versions.VersionStore`),
so a crash or a stop never touches the checkpoint it started from.

The labels and class maps come from :mod:`~napari_irnet.training.finetune_data`,
the check of the displacement field from :mod:`~napari_irnet.training.field_check`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from ..io.files import OutputError
from ..models.checkpoint import Model, model_fingerprint
from ..models.torch_files import CheckpointError, safe_torch_load, write_torch_file
from ..params import TrainParams
from ..pipeline.inference import resolve_device, strided_size
from ..pipeline.path_index import PathIndex
from .cam import cam_step
from .datasets import ClassMapDataset, LabelledImage, RelationDataset
from .field_check import FieldCheck, check_displacement_field
from .irn import estimate_displacement_mean, irn_step
from .loop import PolySchedule, make_optimizer

__all__ = ["finetune"]


def _config_digest(items: Sequence[LabelledImage], strong: Sequence[bool], tp: TrainParams, with_maps: Sequence[int], start: str) -> str:
    """Identifies a fine-tuning run (``start``: the starting model's fingerprint), so that a resume file is only used for the same run."""
    h = hashlib.sha256(start.encode())
    for item, s in zip(items, strong):
        h.update(f"{item.name}:{item.image.shape}:{int(s)};".encode())
    h.update(f"cam:{list(with_maps)};".encode())
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
    class_maps: Sequence[np.ndarray | None] | None = None,
) -> Iterator[dict]:
    """Continue training ``model.irn`` (and ``model.cam``) on corrected and weakly labelled images.

    Parameters
    ----------
    labels : (H, W) int, one per item
        Relation labels from :func:`finetune_labels`.
    strong : bool, one per item
        Which labels come from corrections; those images are drawn
        ``tp.correction_weight`` times per epoch.
    tp : TrainParams
        ``finetune_epochs``, ``finetune_learning_rate``, ``correction_weight``,
        ``finetune_cam`` and the IRNet and CAM crop, batch and augmentation
        settings. With at least one corrected image,
        ``weak_displacement_weight`` weighs the weak images' pairs in the
        displacement losses, and ``finetune_reset_displacement`` starts the
        displacement branch afresh before the first step
        (:meth:`~napari_irnet.models.networks.IRNet.reset_displacement_head`).
        Without it the branch starts afresh only when its field has collapsed
        on the corrected images (:func:`check_displacement_field`: vectors
        under :data:`COLLAPSED_LENGTH_RATIO` of the way to the centroids):
        such a field has nothing to keep, and fine-tuning does not move it.
    class_maps : (H, W) int or None, one per item, optional
        Class maps of the corrected images (0 background, class + 1, 255
        ignore; :func:`~napari_irnet.training.targets.class_map_target`). With
        ``tp.finetune_cam`` and a CAM network, each IRNet step is followed by
        a CAM step on a batch of ``tp.cam_batch_size`` of them (cycling
        through them in a fresh order each time they are used up) at the same
        learning rate and schedule, its classifier included (without the
        new-layer multiple, which made it diverge).
    should_stop : callable, optional
        Polled before every step; when it returns True the loop writes the
        resume file (if any), yields a last record with ``"stopped": True``
        and ends, leaving the weights as they are.
    resume_file : path, optional
        Where the training state (weights, optimiser, step) is kept every
        ``save_every`` steps; if it exists and belongs to the same run
        (same images, labels kind and parameters), training continues from
        it. It is written once more when the run completes and is not
        deleted: the caller deletes it once the result is saved (a failed
        save then loses nothing, and the same run again only saves). A file
        holding anything but plain data is refused, never unpickled.

    Yields
    ------
    dict
        ``stage`` ("finetune"), ``epoch``, ``step``, ``max_step``, ``lr``,
        the losses (``loss``, ``pos``, ``neg``, ``dp_fg``, ``dp_bg``),
        ``seconds``, ``images_per_second``; ``dp_centroid`` with a centroid
        loss weight and a corrected image in the batch; ``cam_loss`` when the
        CAM network trains too; on the first record, ``displacement_reset``
        (None, ``"asked"`` or ``"collapsed"``) and, for a resumed run,
        ``resumed_from`` and ``earlier_losses`` ([step, loss] of the steps
        before, as the resume file keeps them, so a loss plot starts where
        the interrupted run began). The entry appended to ``model.history`` keeps
        ``displacement_reset`` and ``field_check`` (the
        :class:`FieldCheck` as a dict, None when not made).
    """
    tp = tp or model.train_params
    _check_inputs(model, items, labels, strong, class_maps, tp)
    with_maps = [i for i in range(len(items)) if class_maps is not None and class_maps[i] is not None]
    train_cam = bool(tp.finetune_cam and model.cam is not None and with_maps)
    dev = resolve_device(device)
    start = model_fingerprint(model) if resume_file is not None else ""  # a resume file of another model is not used
    torch.manual_seed(tp.seed)
    order = [i for i in range(len(items)) for _ in range(tp.correction_weight if strong[i] else 1)]
    dataset = RelationDataset([items[i] for i in order], [labels[i] for i in order], tp, tp.seed)
    reset, check = _displacement_reset(model, items, labels, strong, tp, dev)
    run = _Run(model, dataset, tp, dev, reset)
    if train_cam:
        maps = [class_maps[i] for i in with_maps]
        run.add_cam(ClassMapDataset([items[i] for i in with_maps], maps, tp, tp.seed, scales=model.params.cam_scales), model)
    run.digest = _config_digest(items, strong, tp, with_maps if train_cam else [], start)
    run.resume_file = Path(resume_file) if resume_file is not None else None
    run.resume()
    corrected = [bool(strong[i]) for i in order]
    stopped = yield from run.steps(corrected, _weak_displacement_weight(strong, tp), should_stop, save_every)
    if stopped:
        return
    run.save_state()  # kept until the caller has saved the result: a failed save loses no training
    estimate_displacement_mean(model, items, tp, dev)
    run.eval()
    model.history.append(
        {
            "stage": "finetune",
            "steps": run.step,
            "cam_trained": train_cam,
            "corrected_images": int(sum(bool(s) for s in strong)),
            "weak_images": int(sum(not s for s in strong)),
            "final_loss": run.record.get("loss", run.last_loss),
            "displacement_reset": reset,
            "field_check": dataclasses.asdict(check) if check is not None else None,
            "seconds": time.perf_counter() - run.t0,
        }
    )


def _check_inputs(model: Model, items, labels, strong, class_maps, tp: TrainParams) -> None:
    """Refuse a model without IRNet, lists of different lengths, no images, bad parameters."""
    model.require("irn", task="fine-tuning")
    if not (len(items) == len(labels) == len(strong)):
        raise ValueError(f"{len(items)} images, {len(labels)} label maps and {len(strong)} strong flags differ")
    if not items:
        raise ValueError("no training images")
    if class_maps is not None and len(class_maps) != len(items):
        raise ValueError(f"{len(class_maps)} class maps for {len(items)} images")
    tp.validate()


def _weak_displacement_weight(strong: Sequence[bool], tp: TrainParams) -> float | None:
    """The weak images' share of the displacement losses (None: the reference's, all pairs alike)."""
    any_strong = any(bool(s) for s in strong)
    return float(tp.weak_displacement_weight) if any_strong and tp.weak_displacement_weight != 1.0 else None


def _displacement_reset(model: Model, items, labels, strong, tp: TrainParams, dev) -> tuple[str | None, FieldCheck | None]:
    """Whether the displacement branch starts afresh: when asked, or when its field has collapsed where corrections ask for vectors."""
    if not any(bool(s) for s in strong):
        return None, None
    if tp.finetune_reset_displacement:
        return "asked", None
    corrected = [i for i in range(len(items)) if strong[i]]
    check = check_displacement_field(model, [items[i] for i in corrected], [labels[i] for i in corrected], device=dev)
    return ("collapsed" if check.collapsed else None), check


class _Run:
    """One fine-tuning run: the networks, their optimisers and schedules, the step, the losses so far, the resume file."""

    def __init__(self, model: Model, dataset: RelationDataset, tp: TrainParams, dev, reset: str | None) -> None:
        self.tp, self.dev, self.dataset = tp, dev, dataset
        self.net = model.irn.to(dev).train()
        if reset:
            self.net.reset_displacement_head()
        self.index = PathIndex(tp.train_radius, strided_size((tp.irn_crop_size, tp.irn_crop_size), 4))
        self.batch = max(1, min(tp.irn_batch_size, len(dataset)))
        self.steps_per_epoch = len(dataset) // self.batch
        self.max_step = self.steps_per_epoch * tp.finetune_epochs
        self.opt = make_optimizer(self.net.parameter_groups(), tp.finetune_learning_rate, tp)
        self.sched = PolySchedule(self.opt, self.max_step, tp.poly_power)
        self.cam_net = self.cam_opt = self.cam_sched = self.cam_data = None
        self.cam_batch = 1
        self.reset = reset
        self.digest, self.resume_file = "", None
        self.step, self.last_loss = 0, None
        self.losses_so_far: list[list[float]] = []  # [step, loss] of every step, kept in the resume file
        self.record: dict = {}
        self.t0 = time.perf_counter()

    def add_cam(self, cam_data: ClassMapDataset, model: Model) -> None:
        """Train the CAM network too, per pixel on the corrected images' class maps."""
        tp = self.tp
        self.cam_data = cam_data
        self.cam_net = model.cam.to(self.dev).train()
        self.cam_batch = max(1, min(tp.cam_batch_size, len(cam_data)))
        # the classifier is no longer new: at the new-layer multiple its weights grew and the loss
        # diverged within 100 steps at lr 0.01 on 50 CoNSeP patches (BENCHMARKS.md, Human in the loop)
        self.cam_opt = make_optimizer(self.cam_net.parameter_groups(), tp.finetune_learning_rate, tp, new_layer_lr_mult=1.0)
        self.cam_sched = PolySchedule(self.cam_opt, self.max_step, tp.poly_power)

    def resume(self) -> None:
        """Continue from the resume file when it belongs to this run (a torn, foreign or planted one is an error, never unpickled)."""
        if self.resume_file is None or not self.resume_file.exists():
            return
        try:  # the user deletes it to start over
            state = safe_torch_load(self.resume_file, "resume file", self.dev)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; delete it to start over") from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.resume_file}: not a napari-irnet resume file; delete it to start over")
        if state.get("digest") != self.digest:
            return
        try:
            self.net.load_state_dict(state["irn_state"])
            self.opt.load_state_dict(state["optimizer"])
            if self.cam_net is not None:
                self.cam_net.load_state_dict(state["cam_state"])
                self.cam_opt.load_state_dict(state["cam_optimizer"])
            self.step, self.last_loss = int(state["step"]), state.get("loss")
            self.losses_so_far = [[int(a), float(b)] for a, b in state.get("losses", [])]
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.resume_file}: a damaged resume file ({' '.join(str(exc).split())}); delete it to start over") from exc
        self.sched.step_count = self.step
        if self.cam_net is not None:
            self.cam_sched.step_count = self.step

    def save_state(self, required: bool = False) -> None:
        """Write the resume file; a failure stops the run only when ``required`` (on stop), else warns."""
        if self.resume_file is None:
            return
        state = {"digest": self.digest, "step": self.step, "irn_state": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                 "loss": self.record.get("loss", self.last_loss), "losses": self.losses_so_far}  # fmt: skip
        if self.cam_net is not None:
            state["cam_state"], state["cam_optimizer"] = self.cam_net.state_dict(), self.cam_opt.state_dict()
        try:
            write_torch_file(state, self.resume_file)
        except OutputError as exc:
            if required:
                raise
            warnings.warn(f"{exc}; training goes on, the result is saved at the end", stacklevel=2)

    def cam_batch_at(self, n: int) -> list[int]:
        """Batch ``n`` of an endless stream of shuffled passes over the class maps (a function of ``n``, so resumable)."""
        per_pass = max(1, len(self.cam_data) // self.cam_batch)
        p, b = divmod(n, per_pass)
        perm = torch.randperm(len(self.cam_data), generator=torch.Generator().manual_seed(self.tp.seed * 7919 + p))
        self.cam_data.set_epoch(p)
        return perm[b * self.cam_batch : (b + 1) * self.cam_batch].tolist()

    def eval(self) -> None:
        self.net.eval()
        if self.cam_net is not None:
            self.cam_net.eval()

    def steps(self, corrected: Sequence[bool], weak_dp: float | None, should_stop, save_every: int):
        """Yield a record per step from where the run stands; returns True when ``should_stop`` stopped it."""
        tp, batch, per_epoch = self.tp, self.batch, self.steps_per_epoch
        resumed_from, seen = self.step, 0
        self.t0 = time.perf_counter()
        for epoch in range(self.step // per_epoch, tp.finetune_epochs):
            # the epoch's order depends on the epoch only, so a resumed run draws the same batches
            perm = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(tp.seed * 1000 + epoch))
            batches = perm[: per_epoch * batch].view(per_epoch, batch).tolist()
            self.dataset.set_epoch(epoch)
            for b in range(self.step - epoch * per_epoch, per_epoch):
                if should_stop is not None and should_stop():
                    self.save_state(required=True)
                    self.eval()
                    yield {**self.record, "stage": "finetune", "step": self.step, "max_step": self.max_step, "stopped": True}
                    return True
                seen += len(batches[b])
                losses, lr = self._train_step(batches[b], corrected, weak_dp)
                record = self._progress(epoch, lr, losses, seen, resumed_from)
                if save_every and self.step % save_every == 0:
                    self.save_state()
                yield record
        return False

    def _train_step(self, indices: list[int], corrected: Sequence[bool], weak_dp: float | None) -> tuple[dict, float]:
        """One IRNet step on the batch ``indices`` (and one CAM step when the CAM network trains); the losses and the rate."""
        tp = self.tp
        x, y = default_collate([self.dataset[i] for i in indices])
        lr = self.sched.step()
        flags = torch.tensor([corrected[i] for i in indices])
        dp_weight = None if weak_dp is None else torch.where(flags, 1.0, weak_dp)
        losses = irn_step(self.net, self.opt, x, y, self.index, self.dev, tp.amp, flags, tp.centroid_loss_weight, dp_weight)
        if self.cam_net is not None:
            self.cam_sched.step()
            cx, cy = default_collate([self.cam_data[i] for i in self.cam_batch_at(self.step)])
            losses["cam_loss"] = cam_step(self.cam_net, self.cam_opt, cx, cy, self.dev, tp.amp)
        self.step += 1
        return losses, lr

    def _progress(self, epoch: int, lr: float, losses: dict, seen: int, resumed_from: int) -> dict:
        """The step's record (the first one says what happened to the displacement branch and where a resumed run began)."""
        elapsed = time.perf_counter() - self.t0
        record = {"stage": "finetune", "epoch": epoch, "step": self.step, "max_step": self.max_step, "lr": lr, "seconds": elapsed, **losses}
        record["images_per_second"] = seen / elapsed if elapsed > 0 else 0.0
        if self.step == resumed_from + 1:
            record["displacement_reset"] = self.reset
            if resumed_from:
                record["resumed_from"] = resumed_from
                record["earlier_losses"] = [list(p) for p in self.losses_so_far]
        self.losses_so_far.append([self.step, float(losses["loss"])])
        self.record = record
        return record
