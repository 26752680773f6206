"""Deterministic generator of synthetic multi-class "cell" images.

The generator builds the bundled demo set (``sample_data/``) and the tiny data
sets of the unit tests. Every image comes with its image-level labels (the set
of classes present), a ground-truth instance map and a semantic map, so the
whole weakly supervised pipeline can be trained and scored without any
external data.

Three classes of distinct shape, size and texture:

``round``
    small discs (radius 4-7 px), magenta, granular texture;
``rod``
    elongated ellipses (half axes 9-15 by 3-5 px) at random angles, blue, striped
    along the long axis;
``blob``
    large irregular bodies (mean radius 11-17 px, wavy outline), violet, with a
    dark inner nucleus.

Instances touch and overlap (a later instance occludes an earlier one), each
image holds a random non-empty subset of the classes, and the image has
uneven illumination, a darker membrane at every instance edge and Gaussian
noise.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("round", "rod", "blob")

_BASE_COLOUR = {
    "round": np.array([0.85, 0.25, 0.65]),
    "rod": np.array([0.20, 0.35, 0.85]),
    "blob": np.array([0.50, 0.25, 0.60]),
}
_BACKGROUND_COLOUR = np.array([0.95, 0.88, 0.86])


@dataclass
class SyntheticSample:
    """One synthetic image with its annotations.

    Attributes
    ----------
    name : str
        Identifier, e.g. ``"synth_0003"``.
    image : (H, W, 3) uint8 array
        RGB image.
    instances : (H, W) uint16 array
        Instance ids, 0 = background, ids 1..M contiguous.
    semantic : (H, W) uint8 array
        Class index + 1 per pixel (0 = background), indices into ``classes``.
    instance_classes : dict of int to str
        Class name of every instance id.
    classes : tuple of str
        All class names of the data set (the order of the semantic indices).
    """

    name: str
    image: np.ndarray
    instances: np.ndarray
    semantic: np.ndarray
    instance_classes: dict[int, str]
    classes: tuple[str, ...] = field(default=CLASS_NAMES)

    @property
    def labels(self) -> list[str]:
        """Image-level labels: the classes present, in data-set order."""
        present = set(self.instance_classes.values())
        return [c for c in self.classes if c in present]


def _disc_mask(yy, xx, cy, cx, r):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _shape_mask(rng: np.random.Generator, cls: str, yy, xx, cy, cx, scale: float):
    if cls == "round":
        r = rng.uniform(4.0, 7.0) * scale
        return _disc_mask(yy, xx, cy, cx, r)
    if cls == "rod":
        a = rng.uniform(9.0, 15.0) * scale
        b = rng.uniform(3.0, 5.0) * scale
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if cls == "blob":
        r0 = rng.uniform(11.0, 17.0) * scale
        dy, dx = yy - cy, xx - cx
        phi = np.arctan2(dy, dx)
        radius = np.full_like(phi, r0)
        for k in (2, 3, 5):
            radius += r0 * rng.uniform(0.03, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        return dy**2 + dx**2 <= radius**2
    raise ValueError(f"unknown synthetic class {cls!r}")


def _texture(rng: np.random.Generator, cls: str, yy, xx, mask, cy, cx, scale: float):
    """Multiplicative brightness texture (H, W) for one instance."""
    h, w = mask.shape
    tex = np.ones((h, w))
    if cls == "round":
        tex = 1.0 + 0.25 * (rng.random((h, w)) - 0.5)
    elif cls == "rod":
        ys, xs = np.nonzero(mask)
        # stripes along the long axis: a sinusoid across the principal direction
        cov = np.cov(np.stack([ys, xs])) if len(ys) > 2 else np.eye(2)
        evals, evecs = np.linalg.eigh(cov)
        minor = evecs[:, 0]
        proj = (yy - cy) * minor[0] + (xx - cx) * minor[1]
        tex = 1.0 + 0.2 * np.sin(proj * 2 * np.pi / (2.5 * scale))
    elif cls == "blob":
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        nucleus = d <= rng.uniform(3.5, 5.5) * scale
        tex = np.where(nucleus, 0.55, 1.05)
    return tex


def make_sample(
    rng: np.random.Generator,
    name: str,
    shape: tuple[int, int] = (128, 128),
    classes: tuple[str, ...] = CLASS_NAMES,
    density: float = 1.0,
    noise: float = 0.04,
    scale: float = 1.0,
) -> SyntheticSample:
    """Draw one synthetic image.

    Parameters
    ----------
    rng : numpy Generator
        Source of randomness (the only one used: same state, same image).
    name : str
        Identifier of the sample.
    shape : (H, W)
        Image size in pixels.
    classes : tuple of str
        Class names to draw from (a subset of :data:`CLASS_NAMES`).
    density : float
        Multiplier on the number of instances per class.
    noise : float
        Standard deviation of the additive Gaussian noise (image range 0..1).
    scale : float
        Multiplier on every object size (pixels per unit of cell size); the
        number of objects shrinks with its square so coverage stays similar.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    area_factor = (h * w) / (128 * 128) * density / scale**2

    n_present = rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]) if len(classes) >= 3 else len(classes)
    n_present = min(n_present, len(classes))
    present = sorted(rng.choice(len(classes), size=n_present, replace=False))
    counts = {"round": (4, 9), "rod": (3, 6), "blob": (1, 3)}

    to_draw: list[str] = []
    for ci in present:
        cls = classes[ci]
        lo, hi = counts[cls]
        n = max(1, int(round(rng.integers(lo, hi + 1) * area_factor)))
        to_draw += [cls] * n
    rng.shuffle(to_draw)

    instances = np.zeros((h, w), np.int32)
    colour = np.tile(_BACKGROUND_COLOUR, (h, w, 1))
    owners: list[str] = []
    centres: list[tuple[float, float, float]] = []
    full_masks: list[np.ndarray] = []
    for cls in to_draw:
        for _attempt in range(20):
            cy, cx = rng.uniform(4, h - 4), rng.uniform(4, w - 4)
            mask = _shape_mask(rng, cls, yy, xx, cy, cx, scale)
            if mask.sum() < 12 * scale**2:
                continue
            r_eq = np.sqrt(mask.sum() / np.pi)
            # touching and partial overlap are fine, near-complete overlap is not
            if all(np.hypot(cy - oy, cx - ox) >= 0.75 * (r_eq + orr) for oy, ox, orr in centres):
                break
        else:
            continue
        centres.append((cy, cx, r_eq))
        iid = len(owners) + 1
        owners.append(cls)
        full_masks.append(mask)
        instances[mask] = iid
        tex = _texture(rng, cls, yy, xx, mask, cy, cx, scale)
        tint = _BASE_COLOUR[cls] * rng.uniform(0.9, 1.1)
        colour[mask] = np.clip(tint[None, :] * tex[mask][:, None], 0, 1)

    # drop instances that ended up mostly hidden, then make ids contiguous
    keep: dict[int, str] = {}
    out = np.zeros((h, w), np.uint16)
    for iid, cls in enumerate(owners, start=1):
        visible = instances == iid
        if visible.sum() < max(10, 0.3 * full_masks[iid - 1].sum()):
            colour[visible] = _BACKGROUND_COLOUR
            continue
        new_id = len(keep) + 1
        keep[new_id] = cls
        out[visible] = new_id

    # a darker membrane on every instance edge (4-neighbourhood change)
    edge = np.zeros((h, w), bool)
    edge[1:, :] |= out[1:, :] != out[:-1, :]
    edge[:-1, :] |= out[1:, :] != out[:-1, :]
    edge[:, 1:] |= out[:, 1:] != out[:, :-1]
    edge[:, :-1] |= out[:, 1:] != out[:, :-1]
    edge &= out > 0
    colour[edge] *= 0.7

    # uneven illumination: a smooth multiplicative field
    gy, gx = rng.uniform(-0.25, 0.25, size=2)
    illum = 1.0 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5)
    illum += 0.08 * np.sin(2 * np.pi * (yy / h * rng.uniform(0.5, 1.5) + rng.uniform(0, 1)))
    colour = colour * illum[..., None]
    colour += rng.normal(0.0, noise, colour.shape)
    image = (np.clip(colour, 0, 1) * 255).round().astype(np.uint8)

    semantic = np.zeros((h, w), np.uint8)
    for iid, cls in keep.items():
        semantic[out == iid] = classes.index(cls) + 1
    return SyntheticSample(name, image, out, semantic, keep, tuple(classes))


def centre_field(shape: tuple[int, int], centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An ideal displacement field for a Voronoi partition: every pixel points at its nearest centre.

    Parameters
    ----------
    shape : (h, w)
        Grid size (IRNet's stride-4 grid when used as a displacement field).
    centres : (K, 2) float
        Centre positions (y, x) in grid units.

    Returns
    -------
    displacement : (2, h, w) float32
        (dy, dx) from each pixel to its centre, grid units.
    owner : (h, w) int
        Index of each pixel's centre.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dist = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    owner = dist.argmin(0)
    return np.stack([centres[owner, 0] - yy, centres[owner, 1] - xx]).astype(np.float32), owner


def make_dataset(
    n: int,
    shape: tuple[int, int] = (128, 128),
    seed: int = 0,
    prefix: str = "synth",
    **kwargs,
) -> list[SyntheticSample]:
    """Draw ``n`` samples; the same ``seed`` always gives the same images."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, f"{prefix}_{i:04d}", shape, **kwargs) for i in range(n)]


def write_dataset(samples: list[SyntheticSample], folder: str | Path) -> Path:
    """Write samples in the project's folder layout.

    Layout: ``images/<name>.png`` (RGB), ``inst/<name>.png`` (uint16 instance
    ids), ``sem/<name>.png`` (uint8 class index + 1), ``labels.csv``
    (``image,classes`` with ``;`` between classes), ``labels.json``
    (``{"classes": [...], "image_labels": {...}}``) and ``instances.json``
    (``{name: {instance id: class}}``). Returns the folder.
    """
    from PIL import Image

    folder = Path(folder)
    for sub in ("images", "inst", "sem"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    classes = list(samples[0].classes) if samples else list(CLASS_NAMES)
    for s in samples:
        Image.fromarray(s.image).save(folder / "images" / f"{s.name}.png")
        Image.fromarray(s.instances.astype(np.uint16)).save(folder / "inst" / f"{s.name}.png")
        Image.fromarray(s.semantic).save(folder / "sem" / f"{s.name}.png")
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "classes"])
        for s in samples:
            writer.writerow([f"{s.name}.png", ";".join(s.labels)])
    (folder / "labels.json").write_text(
        json.dumps(
            {"classes": classes, "image_labels": {f"{s.name}.png": s.labels for s in samples}},
            indent=1,
        )
    )
    (folder / "instances.json").write_text(
        json.dumps({s.name: {str(k): v for k, v in s.instance_classes.items()} for s in samples}, indent=1)
    )
    return folder
