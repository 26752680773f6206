"""Cheap stages after the networks: seeds, centroids, clusters, walk, instances.

Each stage is a plain function of arrays plus :class:`~napari_irnet.params.Params`
values, following the reference implementation's ``cam_to_ir_label``,
``make_ins_seg_labels`` and ``make_sem_seg_labels`` steps (jiwoon-ahn/irn; see
``irnet-method.md`` sections 1.4, 1.9 and 1.10). Grid maps are on the stride-4
grid (h = ceil(H/4), w = ceil(W/4)); full maps are (H, W).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.measure import label as connected_components

from ..annotation.masks import instance_boxes, label_counts
from .threads import side_by_side

IGNORE = 255

_crf_notice_given = False


def _dense_crf(image: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray | None:
    """Reference dense CRF (gt_prob 0.7, Gaussian 3/3, bilateral 50/5/10, 10 steps), or None without pydensecrf."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError:
        return None
    h, w = labels.shape
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=0.7, zero_unsure=False))
    d.addPairwiseGaussian(sxy=3, compat=3)
    rgb = np.array(image, dtype=np.uint8, order="C")  # a writable copy: pydensecrf refuses read-only buffers
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=rgb, compat=10)
    q = d.inference(10)
    return np.argmax(np.array(q).reshape((n_labels, h, w)), axis=0)


#: Felzenszwalb's graph segmentation of the seed refinement without pydensecrf (image pixels)
SEGMENT_SCALE, SEGMENT_SIGMA, SEGMENT_MIN_SIZE = 300.0, 0.8, 50
#: larger images are segmented in squares of this side (pixels), so that the segmentation's
#: memory is that of one square (scikit-image's graph of a 4096² image takes gigabytes)
SEGMENT_TILE = 1024


def crf_available() -> bool:
    """True when pydensecrf is installed (the seeds are then refined by the reference's dense CRF)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def image_segments(image: np.ndarray) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segments of ``image``: (H, W) int32 ids of regions of like colour.

    A uniform background becomes a few large segments and each object of
    another colour its own, so a vote inside the segments moves label edges
    onto colour edges, as the dense CRF's bilateral term does. Images larger
    than :data:`SEGMENT_TILE` are segmented square by square (ids unique over
    the image; no segment crosses a square's edge), the squares side by side
    in ``torch.get_num_threads()`` threads (scikit-image's segmentation runs
    without Python's lock: 2.0x faster on two cores, the same ids).
    """
    from skimage.segmentation import felzenszwalb

    image = np.asarray(image)
    h, w = image.shape[:2]
    corners = [(y, x) for y in range(0, h, SEGMENT_TILE) for x in range(0, w, SEGMENT_TILE)]

    def segment(corner: tuple[int, int]) -> np.ndarray:
        y, x = corner
        return felzenszwalb(image[y : y + SEGMENT_TILE, x : x + SEGMENT_TILE], scale=SEGMENT_SCALE, sigma=SEGMENT_SIGMA, min_size=SEGMENT_MIN_SIZE)

    out = np.empty((h, w), np.int32)
    first = 0
    for (y, x), part in zip(corners, side_by_side(segment, corners)):  # in order, each square freed once placed
        out[y : y + SEGMENT_TILE, x : x + SEGMENT_TILE] = part + first
        first += int(part.max()) + 1
    return out


def segment_vote(segments: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Every pixel takes the most frequent label of its segment (ties: the lower label)."""
    index = segments.ravel().astype(np.int64) * n_labels + labels.ravel()
    counts = label_counts(index, minlength=(int(segments.max()) + 1) * n_labels).reshape(-1, n_labels)
    return counts.argmax(axis=1)[segments]


def _warn_no_crf() -> None:
    global _crf_notice_given
    if not _crf_notice_given:
        warnings.warn(
            "pydensecrf is not installed: seeds are refined by a vote in image segments instead of the dense CRF "
            "(pip install 'napari-irnet[crf]' for the reference's CRF)",
            stacklevel=4,
        )
        _crf_notice_given = True


def seeds_from_cams(
    cams: np.ndarray | torch.Tensor,
    class_ids: Sequence[int],
    fg_threshold: float | Sequence[float] = 0.30,
    bg_threshold: float = 0.05,
    image: np.ndarray | None = None,
    use_crf: bool = True,
    segments: np.ndarray | None = None,
) -> np.ndarray:
    """Confident seeds from normalised CAMs (reference ``cam_to_ir_label``).

    Parameters
    ----------
    cams : (C, H, W) float
        Per-class maps in [0, 1] (any resolution; full resolution in training).
    class_ids : (C,) ints
        0-based class of each map.
    fg_threshold : float, or (C,) floats
        Confident foreground where the highest map is above ``fg_threshold``,
        or above its own entry when one is given per map (1 or more: that
        class never seeds; see :meth:`Params.seed_fg_thresholds`).
    bg_threshold : float
        Confident background where every class stays below ``bg_threshold``.
    image : (H, W, 3) uint8, optional
        Needed for the refinement; without it seeds are not refined.
    use_crf : bool
        Refine both label maps along the image's edges: the reference's
        dense CRF when pydensecrf is installed, else a vote of the labels in
        Felzenszwalb segments of the image (:func:`segment_vote`; measured
        against the CRF in BENCHMARKS.md).
    segments : (H, W) int, optional
        :func:`image_segments` of ``image``, when the caller keeps them (they
        do not depend on the thresholds); made here when needed otherwise.

    Returns
    -------
    (H, W) uint8: 0 background, class id + 1 foreground, 255 ignore.
    """
    cams = cams.detach().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams)
    keys = np.pad(np.asarray(class_ids, dtype=np.int64) + 1, (1, 0)).astype(np.uint8)
    h, w = cams.shape[-2:]
    if cams.shape[0] == 0:
        return np.zeros((h, w), np.uint8)
    crf = use_crf and image is not None
    # without the refinement every pixel is decided alone: bands of rows keep the temporaries small
    rows = h if crf else max(1, (1 << 22) // max(1, w * (cams.shape[0] + 1)))
    seeds = np.empty((h, w), np.uint8)
    # ``segments``: the image's segments, made once when the refinement needs them

    if np.ndim(fg_threshold):
        if len(fg_threshold) != cams.shape[0]:
            raise ValueError(f"{len(fg_threshold)} foreground thresholds for {cams.shape[0]} CAMs")
        # indexed by ``best`` (1-based map index; entry 0 is never used), in the maps' own type
        # so that equal entries compare exactly as the single threshold does
        kind = cams.dtype if cams.dtype.kind == "f" else np.float64
        fg_threshold = np.concatenate([[np.inf], np.asarray(fg_threshold, np.float64)]).astype(kind)

    def labelled(peak: np.ndarray, best: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
        nonlocal segments
        # the reference's argmax over [threshold, maps...]: a tie with the threshold goes to it
        arg = np.where(peak > (threshold[best] if np.ndim(threshold) else threshold), best, 0)
        if crf:
            refined = _dense_crf(image, arg, keys.shape[0])
            if refined is None:
                _warn_no_crf()
                segments = image_segments(image) if segments is None else segments
                refined = segment_vote(segments, arg, keys.shape[0])
            arg = refined
        return keys[arg]

    for r0 in range(0, h, rows):
        peak, best = torch.max(torch.from_numpy(np.ascontiguousarray(cams[:, r0 : r0 + rows])), dim=0)  # the first maximum
        peak, best = peak.numpy(), best.numpy() + 1
        fg = labelled(peak, best, fg_threshold)
        bg = labelled(peak, best, bg_threshold)
        fg[fg == 0] = np.where(bg[fg == 0] == 0, 0, IGNORE)
        seeds[r0 : r0 + rows] = fg
    return seeds


def find_centroids(displacement: np.ndarray | torch.Tensor, steps: int = 300, chunk: int = 1 << 15) -> np.ndarray:
    """Move every grid pixel along the displacement field ``steps`` times.

    Bilinear interpolation of the field between floor/ceil corners, positions
    clipped to the grid after each step, rounded at the end (reference
    ``find_centroids_with_refinement``). Pixels move independently, so they
    are processed ``chunk`` at a time through all the steps: the working
    arrays stay in the processor's cache (about twice as fast on a 1024²
    grid as the whole grid at once, and the same result; at most
    ``chunk`` pixels, fewer when that gives every thread one). The chunks run
    side by side in ``torch.get_num_threads()`` threads (NumPy's operations
    release Python's lock: 1.8x faster on two cores, the same positions).

    Parameters
    ----------
    displacement : (2, h, w) float, (dy, dx) in grid units

    Returns
    -------
    (2, h, w) int32 array: the final (y, x) of each pixel.
    """
    d = displacement.detach().cpu().numpy() if isinstance(displacement, torch.Tensor) else np.asarray(displacement)
    d = d.astype(np.float32)
    h, w = d.shape[1:]
    dy_map, dx_map = d[0].ravel(), d[1].ravel()
    out = np.empty((2, h * w), np.int32)

    def move(s: int) -> None:
        cy, cx = (v.astype(np.float32) for v in np.divmod(np.arange(s, min(s + chunk, h * w), dtype=np.int64), w))
        for _ in range(steps):
            y0, x0 = np.floor(cy).astype(np.int32), np.floor(cx).astype(np.int32)
            y1, x1 = np.ceil(cy).astype(np.int32), np.ceil(cx).astype(np.int32)
            fy, fx = cy - y0, cx - x0
            w11, w01 = fy * fx, (1 - fy) * fx
            w10, w00 = fy * (1 - fx), (1 - fy) * (1 - fx)
            i11, i01, i10, i00 = y1 * w + x1, y0 * w + x1, y1 * w + x0, y0 * w + x0
            # in place: the positions stay float32 as the reference's do (its += rounds every
            # step); kept in float64, most cells of a tangled field can end elsewhere
            # (tests/test_reference_equivalence.py)
            cy += dy_map[i11] * w11 + dy_map[i01] * w01 + dy_map[i10] * w10 + dy_map[i00] * w00
            cx += dx_map[i11] * w11 + dx_map[i01] * w01 + dx_map[i10] * w10 + dx_map[i00] * w00
            np.clip(cy, 0, h - 1, out=cy)
            np.clip(cx, 0, w - 1, out=cx)
        out[0, s : s + chunk] = np.round(cy)
        out[1, s : s + chunk] = np.round(cx)

    chunk = max(1, min(chunk, -(-h * w // max(1, torch.get_num_threads()))))  # small grids too give every thread a chunk
    for _ in side_by_side(move, range(0, h * w, chunk)):
        pass
    return out.reshape(2, h, w)


def cluster_centroids(
    centroids: np.ndarray, displacement: np.ndarray | torch.Tensor, threshold: float = 2.5
) -> np.ndarray:
    """Group pixels by the weak-displacement region their centroid lands in.

    The 4-connected components of ``|D| < threshold`` are the instance centres;
    pixels whose centroid lands outside every centre share one extra cluster
    (reference ``cluster_centroids``).

    Returns
    -------
    (h, w) int32: cluster index 0..K-1, contiguous, in the order of the
    components (the shared "no centre" cluster first when present).
    """
    d = displacement.detach().cpu().numpy() if isinstance(displacement, torch.Tensor) else np.asarray(displacement)
    strength = np.sqrt(d[0] ** 2 + d[1] ** 2)
    # 4-connected components, as scikit-image labels a bool mask, without its first-call import of
    # skimage.morphology (0.1 s, a fifth of a 512² image's post-processing)
    centres, _ = ndimage.label(strength < threshold)
    clusters = centres[centroids[0], centroids[1]]
    _, contiguous = np.unique(clusters, return_inverse=True)
    return contiguous.reshape(clusters.shape).astype(np.int32)


def centroid_points(centroids: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Mean final position (y, x) of each cluster, grid units: (K, 2) float."""
    k = int(clusters.max()) + 1 if clusters.size else 0
    counts = np.bincount(clusters.ravel(), minlength=k).astype(np.float64)
    ys = np.bincount(clusters.ravel(), weights=centroids[0].ravel(), minlength=k)
    xs = np.bincount(clusters.ravel(), weights=centroids[1].ravel(), minlength=k)
    return np.stack([ys, xs], axis=1) / np.maximum(counts, 1)[:, None]


def instance_cams(cams: torch.Tensor, clusters: np.ndarray) -> torch.Tensor:
    """(C, h, w) CAMs x (h, w) clusters -> (C*K, h, w), plane c*K + k = CAM c inside cluster k."""
    k = int(clusters.max()) + 1
    masks = F.one_hot(torch.from_numpy(clusters.astype(np.int64)).to(cams.device), k)
    masks = masks.permute(2, 0, 1).to(cams.dtype)
    return (cams[:, None] * masks[None]).reshape(-1, *cams.shape[-2:])


def propagate(
    scores: torch.Tensor, boundary: torch.Tensor, beta: float = 10.0, steps: int = 256, radius: int = 5
) -> torch.Tensor:
    """Random walk of (P, h, w) score maps over boundary-aware affinities (same shape out)."""
    from .random_walk import random_walk

    if scores.shape[0] == 0:
        return scores.clone()
    return random_walk(scores, boundary.to(scores.device, scores.dtype), beta=beta, steps=steps, radius=radius)


def upsampled_argmax(walk: torch.Tensor, shape: tuple[int, int], chunk: int | None = None):
    """Bilinear x4 upsampling of (P, h, w), cropped to ``shape``, reduced on the fly.

    Returns (best value (H, W), best plane (H, W), global max) without holding
    all P full-resolution planes at once: ``chunk`` planes at a time (default:
    as many as make 16 Mi values, at least one).
    """
    H, W = shape
    h, w = walk.shape[-2:]
    chunk = chunk or max(1, (1 << 24) // max(1, 16 * h * w))
    best = torch.full((H, W), -1.0, dtype=walk.dtype, device=walk.device)
    arg = torch.zeros((H, W), dtype=torch.int32, device=walk.device)
    gmax = torch.zeros((), dtype=walk.dtype, device=walk.device)
    for start in range(0, walk.shape[0], chunk):
        part = F.interpolate(walk[None, start : start + chunk], size=(4 * h, 4 * w), mode="bilinear", align_corners=False)[0, :, :H, :W]
        val, idx = part.max(dim=0)
        better = val > best
        best = torch.where(better, val, best)
        arg = torch.where(better, (idx + start).to(torch.int32), arg)
        gmax = torch.maximum(gmax, val.max())
    return best, arg, gmax


@dataclass
class InstanceResult:
    """Instances of one image.

    Attributes
    ----------
    labels : (H, W) int32
        Instance ids 1..M, 0 = background.
    records : list of dict
        One per instance, in id order: ``id``, ``class_id`` (0-based),
        ``score`` (max normalised walk score in the instance; 0 for fragments
        under ``min_fragment_fraction`` of the image, as in the reference),
        ``bbox`` [x0, y0, x1, y1] with exclusive x1/y1, ``area`` (pixels).
    """

    labels: np.ndarray
    records: list[dict] = field(default_factory=list)


def assign_instances(
    walk: torch.Tensor,
    plane_classes: Sequence[int],
    image_shape: tuple[int, int],
    bg_threshold: float = 0.25,
    min_fragment_fraction: float = 0.01,
) -> InstanceResult:
    """Pixels to instances after the walk (reference steps 6-8 of ``make_ins_seg_labels``).

    ``walk`` (P, h, w) holds the propagated instance CAMs, plane p of class
    ``plane_classes[p]``. Scores are normalised by the global maximum of the
    upsampled maps; a pixel whose best normalised score is under
    ``bg_threshold`` is background; every 4-connected component of pixels won
    by one plane is an instance.
    """
    argmax = upsampled_argmax(walk, image_shape) if walk.shape[0] else None
    return assign_from_argmax(argmax, plane_classes, image_shape, bg_threshold, min_fragment_fraction)


def assign_from_argmax(
    argmax: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    plane_classes: Sequence[int],
    image_shape: tuple[int, int],
    bg_threshold: float = 0.25,
    min_fragment_fraction: float = 0.01,
) -> InstanceResult:
    """:func:`assign_instances` from the output of :func:`upsampled_argmax` (None: no planes).

    Split out so that a threshold change does not redo the upsampling.
    """
    H, W = image_shape
    if argmax is None:
        return InstanceResult(np.zeros((H, W), np.int32), [])
    best, arg, gmax = argmax
    gmax = float(gmax) if float(gmax) > 0 else 1.0
    norm = (best / gmax).cpu().numpy()
    plane = arg.cpu().numpy().astype(np.int32, copy=False) + 1
    # under the threshold, and argmax ties against the background plane (as torch.argmax does): background
    plane[norm <= bg_threshold] = 0
    keys = np.asarray(plane_classes, dtype=np.int64)
    return _components(plane, norm, min_fragment_fraction, lambda key: int(keys[key - 1]))


def label_maximum(values: np.ndarray, labels: np.ndarray | torch.Tensor, count: int) -> np.ndarray:
    """The maximum of ``values`` over each label 1..``count`` of ``labels`` (same shape): ``(count,)``.

    ``labels`` may also be given as the flat int64 tensor of its values (to
    share one index between several calls).

    One pass over the pixels (a scatter-max), where ``scipy.ndimage.maximum``
    sorts them: 30 ms instead of 0.5 s for 700 instances in a 3000² map.
    Labels absent from the map get the lowest value of the dtype.
    """
    if count == 0:
        return np.zeros(0, dtype=values.dtype)
    index = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(labels).reshape(-1).astype(np.int64, copy=False))
    flat = torch.from_numpy(np.ascontiguousarray(values).reshape(-1))
    low = torch.finfo(flat.dtype).min if flat.dtype.is_floating_point else torch.iinfo(flat.dtype).min
    out = torch.full((count + 1,), low, dtype=flat.dtype)
    out.scatter_reduce_(0, index, flat, reduce="amax")
    return out[1:].numpy()


def _components(key_map: np.ndarray, score_map: np.ndarray, min_fragment_fraction: float, class_of) -> InstanceResult:
    """The 4-connected components of equal non-zero ``key_map`` values as instances.

    Records: id (1..M, raster order), ``class_of(key)``, score (maximum of
    ``score_map`` inside; 0 under ``min_fragment_fraction`` of the image),
    bbox ``[x0, y0, x1, y1]`` (end exclusive) and area in pixels.
    """
    H, W = key_map.shape
    components = connected_components(key_map, connectivity=1, background=0)  # int64
    labels = components.astype(np.int32)
    min_area = min_fragment_fraction * H * W
    boxes = instance_boxes(labels)
    ids = list(boxes)
    index = torch.from_numpy(components.reshape(-1))  # one int64 index for both scatters
    peaks = label_maximum(score_map, index, len(ids))
    keys = label_maximum(key_map, index, len(ids))  # one key per component
    records = []
    for i, peak, key in zip(ids, peaks, keys):
        bbox, area = boxes[i]
        score = 0.0 if area < min_area else float(peak)
        records.append({"id": i, "class_id": class_of(int(key)), "score": score, "bbox": bbox, "area": area})
    return InstanceResult(labels, records)


@dataclass
class Prediction:
    """Every stage's result for one image.

    Attributes
    ----------
    class_ids : (C,) int array
        0-based classes of the image (the CAM planes).
    seeds : (H, W) uint8
        0 background, class id + 1, 255 ignore.
    centroids : (2, h, w) int32
        Final grid position of every pixel after the centroid refinement.
    clusters : (h, w) int32
        Cluster index of every grid pixel.
    centre_points : (K, 2) float
        Mean centroid of each cluster in image pixels (y, x).
    instances : InstanceResult
        Instance label map (H, W) and per-instance records.
    semantic : (H, W) int32
        Class id + 1, 0 background.
    """

    class_ids: np.ndarray
    seeds: np.ndarray
    centroids: np.ndarray
    clusters: np.ndarray
    centre_points: np.ndarray
    instances: InstanceResult
    semantic: np.ndarray


def semantic_from_walk(
    walk: torch.Tensor, class_ids: Sequence[int], image_shape: tuple[int, int], bg_threshold: float = 0.25
) -> np.ndarray:
    """Semantic labels from the walked class CAMs (reference ``make_sem_seg_labels``).

    Returns (H, W) int32: class id + 1, 0 = background.
    """
    argmax = upsampled_argmax(walk, image_shape) if walk.shape[0] else None
    return semantic_from_argmax(argmax, class_ids, image_shape, bg_threshold)


def semantic_from_argmax(
    argmax: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    class_ids: Sequence[int],
    image_shape: tuple[int, int],
    bg_threshold: float = 0.25,
) -> np.ndarray:
    """:func:`semantic_from_walk` from the output of :func:`upsampled_argmax` (None: no planes)."""
    H, W = image_shape
    if argmax is None:
        return np.zeros((H, W), np.int32)
    best, arg, gmax = argmax
    gmax = float(gmax) if float(gmax) > 0 else 1.0
    keys = np.asarray(class_ids, dtype=np.int32) + 1
    out = keys[arg.cpu().numpy()]
    out[(best / gmax).cpu().numpy() <= bg_threshold] = 0
    return out.astype(np.int32)


def cam_class_map(cams_high_res: torch.Tensor, class_ids: Sequence[int], threshold: float = 0.15) -> np.ndarray:
    """CAM-only semantic map: argmax against a constant background plane (reference ``eval_cam``)."""
    cams = cams_high_res.detach().cpu().numpy() if isinstance(cams_high_res, torch.Tensor) else cams_high_res
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[-2:], np.int32)
    keys = np.pad(np.asarray(class_ids, dtype=np.int32) + 1, (1, 0))
    arg = np.argmax(np.concatenate([np.full((1,) + cams.shape[-2:], threshold, cams.dtype), cams]), axis=0)
    return keys[arg]


def instances_from_class_map(
    class_map: np.ndarray,
    score_map: np.ndarray | None = None,
    min_fragment_fraction: float = 0.01,
) -> InstanceResult:
    """Instances as the connected components of a semantic map (a baseline without displacement).

    Every 4-connected region of pixels sharing one class is an instance, so
    touching objects of a class merge: this is what IRNet's displacement
    field is there to avoid. Used for the benchmark baselines "CAM
    thresholded + connected components" (with :func:`cam_class_map`) and
    "random walk without displacement" (with :func:`semantic_from_walk`).

    Parameters
    ----------
    class_map : (H, W) int
        Class id + 1 per pixel, 0 = background.
    score_map : (H, W) float, optional
        Per-pixel confidence; an instance's score is its maximum inside the
        component. Default: 1 for every instance.
    min_fragment_fraction : float
        Components smaller than this fraction of the image get score 0, as
        in :func:`assign_from_argmax`.

    Returns
    -------
    InstanceResult
        Ids 1..M in raster order of the components; records as in
        :func:`assign_from_argmax`.
    """
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise ValueError(f"class_map must be 2-D, got shape {class_map.shape}")
    H, W = class_map.shape
    if score_map is None:
        score_map = np.ones((H, W), np.float32)
    score_map = np.asarray(score_map, dtype=np.float64)
    if score_map.shape != class_map.shape:
        raise ValueError(f"score_map {score_map.shape} and class_map {class_map.shape} differ in shape")
    return _components(class_map, score_map, min_fragment_fraction, lambda key: key - 1)
