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
on a batch of them (:func:`~napari_irnet.training.loop.cam_pixel_loss`), so
that corrections fix what the image-level labels could not teach it: where
each class is. The uncorrected images do not train the CAM network.

The loop is a generator (one progress dict per step) with a stop flag, and
can be resumed after an interruption from a resume file written every
``save_every`` steps and on stop. It only changes the model in memory: the
caller saves the result as a new checkpoint (atomically, next to the old one,
or as a new version in a :class:`VersionStore`), so a crash or a stop never
touches the checkpoint it started from.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from ..io.files import OutputError, atomic_path
from ..models.checkpoint import Model, load_checkpoint, model_fingerprint, save_checkpoint
from ..models.torch_files import CheckpointError, safe_torch_load, write_torch_file
from ..params import Params, TrainParams
from ..pipeline.inference import compute_irnet, resolve_device, strided_size
from ..pipeline.path_index import PathIndex
from ..pipeline.stages import IGNORE
from .loop import ClassMapDataset, LabelledImage, PolySchedule, RelationDataset, cam_step, estimate_displacement_mean, irn_step, make_optimizer, make_seeds
from .targets import class_map_target, displacement_target, relation_labels, to_grid

__all__ = ["FieldCheck", "VersionStore", "check_displacement_field", "correction_class_maps", "describe_reset", "finetune", "finetune_labels"]


def finetune_labels(
    model: Model,
    items: Sequence[LabelledImage],
    corrections: Sequence[np.ndarray | None],
    reviewed: Sequence[np.ndarray | None] | None = None,
    params: Params | None = None,
    device="auto",
    background: Sequence[np.ndarray | None] | None = None,
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
    background : (H, W) bool or None, one per item, optional
        The annotator background of a corrected image (pixels a person
        cleared): true background, never ignore.

    Yields
    ------
    (index, labels, strong) with ``labels`` (H, W) int32 (0 background, 255
    ignore, one value per instance or class) and ``strong`` True for a
    corrected image.
    """
    if len(corrections) != len(items):
        raise ValueError(f"{len(corrections)} corrections for {len(items)} images")
    reviewed = list(reviewed) if reviewed is not None else [None] * len(items)
    background = list(background) if background is not None else [None] * len(items)
    weak = [i for i, c in enumerate(corrections) if c is None]
    for i, (item, inst) in enumerate(zip(items, corrections)):
        if inst is None:
            continue
        if np.asarray(inst).shape != item.image.shape[:2]:
            raise ValueError(
                f"correction of {item.name!r} has shape {np.asarray(inst).shape}, its image {item.image.shape[:2]}"
            )
        yield i, relation_labels(inst, reviewed[i], background[i]), True
    if weak and model.cam is None:
        raise ValueError("images without corrections need the CAM network for their weak labels")
    for j, seeds in make_seeds(model, [items[i] for i in weak], params, device):
        yield weak[j], seeds.astype(np.int32), False


def correction_class_maps(
    corrections: Sequence[np.ndarray | None],
    instance_classes: Sequence[Mapping[int, str] | None],
    classes: Sequence[str],
    reviewed: Sequence[np.ndarray | None] | None = None,
    background: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray | None]:
    """Class maps of the corrected images for :func:`finetune` (None where there is nothing to learn).

    Parameters
    ----------
    corrections : (H, W) int or None, one per image
        Corrected instance maps, as for :func:`finetune_labels`.
    instance_classes : {instance id: class name} or None, one per image
        The class of each corrected instance; instances without one are
        ignored. A class the model does not know is an error.
    classes : the model's class names.
    reviewed : (H, W) bool or None, one per image, optional
        The reviewed part of each image; the rest is ignored.
    background : (H, W) bool or None, one per image, optional
        The annotator background: background (0), never ignored.

    Returns
    -------
    (H, W) int32 class maps (0 background, class + 1, 255 ignore), None for
    an image without a correction or without any known instance class.
    """
    if len(instance_classes) != len(corrections):
        raise ValueError(f"{len(instance_classes)} instance class tables for {len(corrections)} corrections")
    reviewed = list(reviewed) if reviewed is not None else [None] * len(corrections)
    background = list(background) if background is not None else [None] * len(corrections)
    index = {name: i for i, name in enumerate(classes)}
    out: list[np.ndarray | None] = []
    for n, (inst, table, seen, cleared) in enumerate(zip(corrections, instance_classes, reviewed, background)):
        unknown = sorted({str(v) for v in (table or {}).values() if v not in index})
        if inst is not None and unknown:
            raise ValueError(f"correction {n}: class {unknown[0]!r} is not one of the model's classes ({', '.join(classes)})")
        known = {int(k): index[v] for k, v in (table or {}).items()}
        out.append(None if inst is None or not known else class_map_target(inst, known, seen, cleared))
    return out


#: a displacement field whose vectors on the corrected instances are shorter than this share of
#: the vectors to their centroids, on average, counts as collapsed (the weak CoNSeP model's: 0.005)
COLLAPSED_LENGTH_RATIO = 0.2
#: fewer instance grid cells than this in the checked crops say nothing about the field
_MIN_CHECK_CELLS = 16


@dataclasses.dataclass(frozen=True)
class FieldCheck:
    """How IRNet's displacement field compares with the corrections' centroids.

    Lengths are means over the grid cells inside the corrected instances, in
    grid cells (stride 4).

    Attributes
    ----------
    predicted_length : mean length of the model's displacement vectors
    target_length : mean length of the vectors to each instance's centroid
        (:func:`~napari_irnet.training.targets.displacement_target`)
    error : mean length of their difference (a zero field's error is ``target_length``)
    cells : how many grid cells were compared
    """

    predicted_length: float
    target_length: float
    error: float
    cells: int

    @property
    def collapsed(self) -> bool:
        """The field is near zero where the corrections ask for vectors (:data:`COLLAPSED_LENGTH_RATIO`)."""
        return self.cells >= _MIN_CHECK_CELLS and self.predicted_length < COLLAPSED_LENGTH_RATIO * self.target_length

    def describe(self) -> str:
        return (f"mean displacement {self.predicted_length:.2f} grid cells on the corrected instances, "
                f"{self.target_length:.2f} to their centroids (error {self.error:.2f}, {self.cells} cells)")  # fmt: skip


def check_displacement_field(
    model: Model,
    items: Sequence[LabelledImage],
    labels: Sequence[np.ndarray],
    params: Params | None = None,
    device="auto",
    max_images: int = 4,
    crop: int = 512,
) -> FieldCheck:
    """Compare ``model.irn``'s displacement field with the centroids of corrected instances.

    Parameters
    ----------
    items, labels : corrected images and their relation labels
        (:func:`~napari_irnet.training.targets.relation_labels`: 0 background,
        255 ignore, one value per instance).
    max_images, crop : the first ``max_images`` images are checked, each on a
        window of at most ``crop`` x ``crop`` pixels that starts at its first
        corrected instance (the check costs a few inferences).

    Returns
    -------
    FieldCheck
        With ``collapsed`` True when the field has gone to zero, as a weak model
        trained on seeds spanning many objects does (BENCHMARKS.md, Human in the loop).
    """
    params = params or model.params
    sums = np.zeros(3)
    cells = 0
    for item, lab in list(zip(items, labels))[:max_images]:
        lab = np.asarray(lab)
        rows, cols = np.nonzero((lab != 0) & (lab != IGNORE))
        if rows.size == 0:
            continue
        # the window starts at the first instance row and column, moved back so that it fits the image
        y0 = min(int(rows.min()), max(0, lab.shape[0] - crop)) // 4 * 4
        x0 = min(int(cols.min()), max(0, lab.shape[1] - crop)) // 4 * 4
        image, lab = item.image[y0 : y0 + crop, x0 : x0 + crop], lab[y0 : y0 + crop, x0 : x0 + crop]
        instances = np.where(lab == IGNORE, 0, lab)
        target, valid = displacement_target(instances, 4)
        valid &= to_grid(lab, 4) != IGNORE
        if not valid.any():
            continue
        disp = compute_irnet(model.irn, image, params, device).displacement.numpy()[:, : valid.shape[0], : valid.shape[1]]
        sums += [
            np.linalg.norm(disp, axis=0)[valid].sum(),
            np.linalg.norm(target, axis=0)[valid].sum(),
            np.linalg.norm(disp - target, axis=0)[valid].sum(),
        ]
        cells += int(valid.sum())
    mean = sums / max(cells, 1)
    return FieldCheck(float(mean[0]), float(mean[1]), float(mean[2]), cells)


def describe_reset(entry: Mapping) -> str | None:
    """A sentence on what a fine-tuning run did to the displacement branch (its ``model.history`` entry), or None."""
    reset, check = entry.get("displacement_reset"), entry.get("field_check")
    if reset == "asked":
        return "the displacement branch started afresh (finetune_reset_displacement)"
    if reset == "collapsed":
        return (f"the displacement field had collapsed ({FieldCheck(**check).describe()}): "
                "its branch started afresh and learnt from the corrections")  # fmt: skip
    return None


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
    model.require("irn", task="fine-tuning")
    if not (len(items) == len(labels) == len(strong)):
        raise ValueError(f"{len(items)} images, {len(labels)} label maps and {len(strong)} strong flags differ")
    if not items:
        raise ValueError("no training images")
    if class_maps is not None and len(class_maps) != len(items):
        raise ValueError(f"{len(class_maps)} class maps for {len(items)} images")
    tp.validate()
    with_maps = [i for i in range(len(items)) if class_maps is not None and class_maps[i] is not None]
    train_cam = bool(tp.finetune_cam and model.cam is not None and with_maps)
    dev = resolve_device(device)
    start = model_fingerprint(model) if resume_file is not None else ""  # a resume file of another model is not used
    torch.manual_seed(tp.seed)
    order = [i for i in range(len(items)) for _ in range(tp.correction_weight if strong[i] else 1)]
    any_strong = any(bool(s) for s in strong)
    # the weak images' share of the displacement losses (None: the reference's, all pairs alike)
    weak_dp = float(tp.weak_displacement_weight) if any_strong and tp.weak_displacement_weight != 1.0 else None
    dataset = RelationDataset([items[i] for i in order], [labels[i] for i in order], tp, tp.seed)
    # the displacement branch starts afresh when asked, or when its field has collapsed where corrections ask for vectors
    reset, check = None, None
    if any_strong and tp.finetune_reset_displacement:
        reset = "asked"
    elif any_strong:
        corrected_idx = [i for i in range(len(items)) if strong[i]]
        check = check_displacement_field(model, [items[i] for i in corrected_idx], [labels[i] for i in corrected_idx], device=dev)
        reset = "collapsed" if check.collapsed else None
    net = model.irn.to(dev).train()
    if reset:
        net.reset_displacement_head()
    grid = strided_size((tp.irn_crop_size, tp.irn_crop_size), 4)
    index = PathIndex(tp.train_radius, grid)
    batch = max(1, min(tp.irn_batch_size, len(dataset)))
    steps_per_epoch = len(dataset) // batch
    max_step = steps_per_epoch * tp.finetune_epochs
    opt = make_optimizer(net.parameter_groups(), tp.finetune_learning_rate, tp)
    sched = PolySchedule(opt, max_step, tp.poly_power)
    cam_net = cam_opt = cam_sched = cam_data = None
    cam_batch = 1
    if train_cam:
        cam_data = ClassMapDataset([items[i] for i in with_maps], [class_maps[i] for i in with_maps], tp, tp.seed)
        cam_net = model.cam.to(dev).train()
        cam_batch = max(1, min(tp.cam_batch_size, len(cam_data)))
        # the classifier is no longer new: at the new-layer multiple its weights grew and the loss
        # diverged within 100 steps at lr 0.01 on 50 CoNSeP patches (BENCHMARKS.md, Human in the loop)
        cam_opt = make_optimizer(cam_net.parameter_groups(), tp.finetune_learning_rate, tp, new_layer_lr_mult=1.0)
        cam_sched = PolySchedule(cam_opt, max_step, tp.poly_power)
    digest = _config_digest(items, strong, tp, with_maps if train_cam else [], start)
    resume_file = Path(resume_file) if resume_file is not None else None
    step = 0
    last_loss = None
    losses_so_far: list[list[float]] = []  # [step, loss] of every step, kept in the resume file
    if resume_file is not None and resume_file.exists():
        try:  # a torn, foreign or planted file: say so (never unpickle code); the user deletes it to start over
            state = safe_torch_load(resume_file, "resume file", dev)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; delete it to start over") from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{resume_file}: not a napari-irnet resume file; delete it to start over")
        if state.get("digest") == digest:
            try:
                net.load_state_dict(state["irn_state"])
                opt.load_state_dict(state["optimizer"])
                if train_cam:
                    cam_net.load_state_dict(state["cam_state"])
                    cam_opt.load_state_dict(state["cam_optimizer"])
                step, last_loss = int(state["step"]), state.get("loss")
                losses_so_far = [[int(a), float(b)] for a, b in state.get("losses", [])]
            except (KeyError, RuntimeError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{resume_file}: a damaged resume file ({' '.join(str(exc).split())}); delete it to start over") from exc
            sched.step_count = step
            if train_cam:
                cam_sched.step_count = step

    def save_state(required: bool = False) -> None:
        """Write the resume file; a failure stops the run only when ``required`` (on stop), else warns."""
        if resume_file is None:
            return
        state = {"digest": digest, "step": step, "irn_state": net.state_dict(), "optimizer": opt.state_dict(),
                 "loss": record.get("loss", last_loss), "losses": losses_so_far}  # fmt: skip
        if train_cam:
            state["cam_state"], state["cam_optimizer"] = cam_net.state_dict(), cam_opt.state_dict()
        try:
            write_torch_file(state, resume_file)
        except OutputError as exc:
            if required:
                raise
            warnings.warn(f"{exc}; training goes on, the result is saved at the end", stacklevel=2)

    def cam_batch_at(n: int) -> list[int]:
        # batch n of an endless stream of shuffled passes over the class maps (a function of n, so resumable)
        per_pass = max(1, len(cam_data) // cam_batch)
        p, b = divmod(n, per_pass)
        perm = torch.randperm(len(cam_data), generator=torch.Generator().manual_seed(tp.seed * 7919 + p))
        cam_data.set_epoch(p)
        return perm[b * cam_batch : (b + 1) * cam_batch].tolist()

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
                save_state(required=True)
                net.eval()
                if train_cam:
                    cam_net.eval()
                yield {**record, "stage": "finetune", "step": step, "max_step": max_step, "stopped": True}
                return
            x, y = default_collate([dataset[i] for i in batches[b]])
            lr = sched.step()
            corrected = torch.tensor([bool(strong[order[i]]) for i in batches[b]])
            dp_weight = None if weak_dp is None else torch.where(corrected, 1.0, weak_dp)
            losses = irn_step(net, opt, x, y, index, dev, tp.amp, corrected, tp.centroid_loss_weight, dp_weight)
            if train_cam:
                cam_sched.step()
                cx, cy = default_collate([cam_data[i] for i in cam_batch_at(step)])
                losses["cam_loss"] = cam_step(cam_net, cam_opt, cx, cy, dev, tp.amp)
            step += 1
            seen += x.shape[0]
            elapsed = time.perf_counter() - t0
            record = {"stage": "finetune", "epoch": epoch, "step": step, "max_step": max_step, "lr": lr, "seconds": elapsed, **losses}
            record["images_per_second"] = seen / elapsed if elapsed > 0 else 0.0
            if step == resumed_from + 1:
                record["displacement_reset"] = reset
                if resumed_from:
                    record["resumed_from"] = resumed_from
                    record["earlier_losses"] = [list(p) for p in losses_so_far]
            losses_so_far.append([step, float(losses["loss"])])
            if save_every and step % save_every == 0:
                save_state()
            yield record
    save_state()  # kept until the caller has saved the result: a failed save loses no training
    estimate_displacement_mean(model, items, tp, dev)
    net.eval()
    if train_cam:
        cam_net.eval()
    model.history.append(
        {
            "stage": "finetune",
            "steps": step,
            "cam_trained": train_cam,
            "corrected_images": int(sum(bool(s) for s in strong)),
            "weak_images": int(sum(not s for s in strong)),
            "final_loss": record.get("loss", last_loss),
            "displacement_reset": reset,
            "field_check": dataclasses.asdict(check) if check is not None else None,
            "seconds": time.perf_counter() - t0,
        }
    )


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
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
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
