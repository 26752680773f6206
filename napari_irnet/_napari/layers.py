"""Stage results as napari layer-data tuples (presentation only, no algorithm).

Every layer carries ``metadata["napari_irnet"] = {"stage": ..., "image": ...}``
so the plugin recognises its own layers whatever their current name.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..annotation.masks import InstanceInfo, features_table, protected_lookup, table_from_records

STAGES = ("CAM", "seeds", "boundary", "displacement", "centroids", "instances", "corrections", "semantic")
#: stages shown when first added (the others start hidden)
VISIBLE_STAGES = ("centroids", "instances", "corrections")
#: one colour per class (by the class's index in the model's list); instances are shades of it
CLASS_COLOURS = ("#e6399b", "#2f8fe8", "#f2c12e", "#3cc46c", "#f07c28", "#9b5de5", "#12c2c2", "#c0392b")
#: outline colours of the corrected instances by state
STATE_COLOURS = {"edited": "#ff9900", "accepted": "#33dd55"}
#: grey of the seeds' "ignore" (255)
IGNORE_COLOUR = "#808080"
#: how the networks' 8-bit input is made from the layer's values
INTENSITY_MODES = {"as shown (contrast limits)": "contrast", "1st-99.8th percentile": "percentile", "full range": "range"}
META_KEY = "napari_irnet"
_CAM_COLORMAPS = ("magenta", "cyan", "yellow", "green", "red", "blue", "orange", "bop purple")
#: at most this many displacement arrows along the longer image side
_ARROWS_PER_SIDE = 24


def _meta(stage: str, image_name: str, **extra) -> dict:
    return {META_KEY: {"stage": stage, "image": image_name, **extra}}


layer_meta = _meta


def stage_of(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The plugin's marker in a layer's metadata (``stage``, ``image``, ...), or None."""
    if not metadata:
        return None
    info = metadata.get(META_KEY)
    return info if isinstance(info, dict) and "stage" in info else None


def image_id_of(layer) -> str:
    """The plugin's id of an image layer, kept in its metadata (given one at the first call)."""
    meta = layer.metadata
    info = meta.get(META_KEY) if isinstance(meta.get(META_KEY), dict) else None
    if info is not None and info.get("image_id"):
        return str(info["image_id"])
    new_id = uuid.uuid4().hex[:8]
    meta = dict(meta)
    meta[META_KEY] = {**(info or {}), "image_id": new_id}
    layer.metadata = meta
    return new_id


def image_labels_of(layer, known: Sequence[str]) -> list[str]:
    """The image-level labels an image layer carries (e.g. the sample's, a project image's) that are in ``known``."""
    if layer is None:
        return []
    info = layer.metadata.get(META_KEY)
    labels = list(info.get("labels", [])) if isinstance(info, dict) else []
    return [c for c in labels if c in known]


def parse_channels(text: str) -> tuple[int, ...] | None:
    """``"0 2 4"`` or ``"0,2,4"`` -> (0, 2, 4); empty -> None; one or three indices."""
    parts = [p for p in str(text or "").replace(",", " ").split() if p]
    if not parts:
        return None
    try:
        channels = tuple(int(p) for p in parts)
    except ValueError as exc:
        raise ValueError(f"channels must be whole numbers, e.g. '0' or '0 1 2', got {text!r}") from exc
    if len(channels) not in (1, 3):
        raise ValueError(f"give one channel (shown as gray) or three (red, green, blue), got {len(channels)}")
    return channels


def _as_hwc(a: np.ndarray, rgb: bool, channels: tuple[int, ...] | None) -> np.ndarray:
    """(H, W, 3) values from a layer's data: RGB(A), a 2D plane, or chosen planes of a (C, H, W) stack."""
    if rgb:
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise ValueError(f"expected an (H, W, 3) colour image, got shape {a.shape}")
        return a[..., :3]
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.ndim == 3:
        chosen = channels if channels is not None else ((0, 1, 2) if a.shape[0] >= 3 else (0,))
        bad = [c for c in chosen if not 0 <= c < a.shape[0]]
        if bad:
            raise ValueError(f"channel {bad[0]} does not exist: the image has {a.shape[0]} channels (0..{a.shape[0] - 1})")
        planes = [a[c] for c in chosen]
        return np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1)
    raise ValueError(f"expected a 2D image, an RGB image or a (channels, H, W) stack, got shape {a.shape}")


def image_to_rgb8(
    data: np.ndarray,
    rgb: bool,
    contrast_limits: Sequence[float] | None = None,
    mode: str = "contrast",
    channels: tuple[int, ...] | None = None,
) -> np.ndarray:
    """An image layer's pixels as (H, W, 3) uint8, as the networks expect them.

    RGB(A) keeps its first three channels; a 2D gray image is repeated into
    three channels; a (C, H, W) stack gives ``channels`` (one, shown as
    gray, or three; default the first three, or the first). 8-bit values
    are used as they are unless ``mode`` is ``"contrast"`` and
    ``contrast_limits`` differ from 0..255. Other types are scaled to 0..255:
    ``"contrast"`` between the layer's ``contrast_limits`` (what the
    annotator sees; without them as ``"range"``), ``"percentile"`` between
    the 1st and 99.8th percentiles, ``"range"`` between minimum and maximum.
    """
    a = _as_hwc(np.asarray(data), rgb, channels)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    limits = tuple(float(v) for v in contrast_limits) if contrast_limits is not None and mode == "contrast" else None
    if a.dtype == np.uint8 and (limits is None or limits == (0.0, 255.0)):
        return np.ascontiguousarray(a)
    f = a.astype(np.float32)
    if not np.all(np.isfinite(f)):
        raise ValueError("the image has NaN or infinite pixels")
    if limits is not None:
        lo, hi = limits
    elif mode == "percentile" and np.issubdtype(a.dtype, np.integer):
        lo, hi = (float(v) for v in np.percentile(f, (1.0, 99.8)))
    else:
        lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.ascontiguousarray(np.clip((f - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8))


def layer_to_rgb8(layer, mode: str = "contrast", channels: tuple[int, ...] | None = None) -> np.ndarray:
    """:func:`image_to_rgb8` of a napari Image layer, with its contrast limits."""
    return image_to_rgb8(layer.data, bool(layer.rgb), getattr(layer, "contrast_limits", None), mode, channels)


# --------------------------------------------------------------------------
# colours: instances by class (a shade per instance), outlines by state


def class_colour(class_index: int) -> np.ndarray:
    """RGBA (0..1) of a class, by its index in the model's class list."""
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(CLASS_COLOURS[int(class_index) % len(CLASS_COLOURS)])[0]


def instance_colour(class_index: int, label: int) -> np.ndarray:
    """The class colour in a shade fixed by the instance id (same id, same colour, across updates)."""
    base = class_colour(class_index)
    shade = 0.6 + 0.4 * (((int(label) * 2654435761) % 997) / 996.0)  # Knuth's multiplicative hash
    out = base.copy()
    out[:3] = np.clip(base[:3] * shade + (1 - shade) * 0.15, 0, 1)
    return out


def instance_colours(table: Mapping[int, InstanceInfo], classes: Sequence[str], ids: Sequence[int] = ()) -> dict:
    """``{id: RGBA}`` of the instances: each in its class's colour (key None: unknown class, gray; 0: transparent)."""
    index = {c: i for i, c in enumerate(classes)}
    colours: dict = {None: (0.6, 0.6, 0.6, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for i in set(int(k) for k in ids) | set(int(k) for k in table):
        info = table.get(i)
        if info is not None and info.class_name in index:
            colours[i] = instance_colour(index[info.class_name], i)
    return colours


def instances_colormap(table: Mapping[int, InstanceInfo], classes: Sequence[str], ids: Sequence[int] = ()):
    """A DirectLabelColormap of :func:`instance_colours`."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=instance_colours(table, classes, ids))


def update_instances_colormap(layer, table: Mapping[int, InstanceInfo], classes: Sequence[str], ids: Sequence[int] = ()) -> bool:
    """Give an instances layer the colours of :func:`instance_colours` unless it has them already; True when set.

    napari recomputes the colours of every pixel when a Labels layer's
    colormap is set (0.2 s for a 3000² map), while a slider's re-run mostly
    keeps the instances' ids and classes. The layer's colormap is kept when
    it gives every instance of ``colours`` the same colour (entries of ids no
    longer present do no harm: nothing is drawn with them).
    """
    from napari.utils.colormaps import DirectLabelColormap

    colours = instance_colours(table, classes, ids)
    current = layer.colormap
    if isinstance(current, DirectLabelColormap) and _has_colours(current.color_dict, colours):
        return False
    layer.colormap = DirectLabelColormap(color_dict=colours)
    return True


def _has_colours(color_dict: Mapping, colours: Mapping) -> bool:
    """Whether ``color_dict`` (a colormap's, a defaultdict: ``get`` adds nothing) has every entry of ``colours``."""
    for key, rgba in colours.items():
        have = color_dict.get(key)
        if have is None or not np.allclose(np.asarray(have, np.float64), np.asarray(rgba, np.float64), atol=1e-6):
            return False
    return True


def class_map_colormap(classes: Sequence[str]):
    """Seeds and semantic maps (class index + 1, 255 ignore) in the class colours of the legend."""
    from napari.utils.colormaps import DirectLabelColormap

    colours: dict = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0), 255: IGNORE_COLOUR}
    for i in range(len(classes)):
        colours[i + 1] = class_colour(i)
    return DirectLabelColormap(color_dict=colours)


def outline_colormap(table: Mapping[int, InstanceInfo]):
    """Outline colour of each edited or accepted instance (the ``corrections`` layer)."""
    from napari.utils.colormaps import DirectLabelColormap

    colours: dict = {None: STATE_COLOURS["edited"], 0: (0.0, 0.0, 0.0, 0.0)}
    for i, info in table.items():
        if info.state in STATE_COLOURS:
            colours[int(i)] = STATE_COLOURS[info.state]
    return DirectLabelColormap(color_dict=colours)


def legend_html(classes: Sequence[str], image_classes: Sequence[str] = ()) -> str:
    """The legend of the instances, seeds and semantic colours, and of the outlines."""
    shown = [c for c in classes if not image_classes or c in image_classes]
    swatch = '<span style="color:{}">■</span>&nbsp;{}'
    parts = [swatch.format(CLASS_COLOURS[classes.index(c) % len(CLASS_COLOURS)], c) for c in shown]
    outline = '<span style="color:{}">□</span>&nbsp;{}'
    parts += [outline.format(colour, state) for state, colour in STATE_COLOURS.items()]
    return " &nbsp;".join(parts)


def displacement_every(grid_shape: Sequence[int], per_side: int = _ARROWS_PER_SIDE) -> int:
    """Grid step that keeps about ``per_side`` arrows along the longer side."""
    return max(1, math.ceil(max(int(s) for s in grid_shape[-2:]) / per_side))


def displacement_vectors(displacement: np.ndarray, every: int = 2, stride: int = 4) -> np.ndarray:
    """(2, h, w) grid displacement -> napari Vectors data (N, 2, 2) in image pixels.

    Keeps every ``every``-th grid cell along each axis so arrows stay readable.
    """
    d = np.asarray(displacement)
    ys, xs = np.mgrid[0 : d.shape[1] : every, 0 : d.shape[2] : every]
    start = np.stack([ys.ravel(), xs.ravel()], axis=1) * stride + stride / 2
    vec = np.stack([d[0][ys, xs].ravel(), d[1][ys, xs].ravel()], axis=1) * stride
    return np.stack([start, vec], axis=1).astype(np.float32)


# --------------------------------------------------------------------------
# one function per stage: (data, kwargs, layer type)


def cam_layers(image_id: str, outputs, classes: Sequence[str]) -> list[tuple]:
    cams = outputs.cam.high_res.numpy()
    out = []
    for i, cid in enumerate(outputs.cam.class_ids):
        name = classes[int(cid)]
        kwargs = {
            "name": f"CAM {name}",
            "colormap": _CAM_COLORMAPS[i % len(_CAM_COLORMAPS)],
            "blending": "additive",
            "contrast_limits": (0.0, 1.0),
            "opacity": 0.6,
            "visible": False,
            "metadata": _meta("CAM", image_id, class_name=name),
        }
        out.append((cams[i], kwargs, "image"))
    return out


def seeds_layer(image_id: str, seeds: np.ndarray, classes: Sequence[str] = ()) -> tuple:
    kwargs = {"name": "seeds", "opacity": 0.5, "visible": False, "metadata": _meta("seeds", image_id)}
    if classes:
        kwargs["colormap"] = class_map_colormap(classes)
    return (np.asarray(seeds).astype(np.int32), kwargs, "labels")


def boundary_layer(image_id: str, outputs, stride: int = 4) -> tuple:
    kwargs = {
        "name": "boundary",
        "colormap": "gray_r",
        "contrast_limits": (0.0, 1.0),
        "scale": (stride, stride),
        "translate": (stride / 2 - 0.5, stride / 2 - 0.5),
        "opacity": 0.6,
        "visible": False,
        "metadata": _meta("boundary", image_id),
    }
    return (outputs.irn.boundary.numpy(), kwargs, "image")


def displacement_layer(image_id: str, outputs, stride: int = 4, every: int | None = None) -> tuple:
    disp = outputs.irn.displacement.numpy()
    every = displacement_every(disp.shape) if every is None else every
    kwargs = {
        "name": "displacement",
        "edge_width": 1.0,
        "edge_color": "orange",
        "length": 1.0,
        "vector_style": "arrow",
        "visible": False,
        "metadata": _meta("displacement", image_id, every=every),
    }
    return (displacement_vectors(disp, every, stride), kwargs, "vectors")


def centroid_features(points: np.ndarray, labels: np.ndarray, table: Mapping[int, InstanceInfo]) -> dict[str, np.ndarray]:
    """Class, instance id and state under each centroid (0 and "" on background), and the text shown."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts):
        ys = np.clip(np.rint(pts[:, 0]).astype(int), 0, labels.shape[0] - 1)
        xs = np.clip(np.rint(pts[:, 1]).astype(int), 0, labels.shape[1] - 1)
        ids = labels[ys, xs].astype(np.int64)
    else:
        ids = np.zeros(0, np.int64)
    cls = [table[int(i)].class_name if int(i) in table else "" for i in ids]
    state = [table[int(i)].state if int(i) in table else ("edited" if i else "") for i in ids]
    text = [f"{i} {c}".strip() if i else "" for i, c in zip(ids.tolist(), cls)]
    return {"instance": ids, "class": np.array(cls, dtype=object), "state": np.array(state, dtype=object),
            "text": np.array(text, dtype=object)}  # fmt: skip


def centroids_layer(image_id: str, points: np.ndarray, labels: np.ndarray, table: Mapping[int, InstanceInfo]) -> tuple:
    kwargs = {
        "name": "centroids",
        "size": 7,
        "face_color": "yellow",
        "border_color": "black",
        "features": centroid_features(points, labels, table),
        "text": {"string": "{text}", "size": 8, "color": "white", "anchor": "upper_left", "translation": (4, 4)},
        "metadata": _meta("centroids", image_id),
    }
    return (np.asarray(points, dtype=np.float64).reshape(-1, 2), kwargs, "points")


def instances_layer(
    image_id: str, labels: np.ndarray, table: Mapping[int, InstanceInfo], classes: Sequence[str] = ()
) -> tuple:
    features = features_table(labels, table)
    kwargs = {
        "name": "instances",
        "opacity": 0.6,
        "features": features,
        "colormap": instances_colormap(table, classes, features["index"][1:]),
        "metadata": _meta("instances", image_id, classes=list(classes)),
    }
    return (labels, kwargs, "labels")


def outline_data(labels: np.ndarray, table: Mapping[int, InstanceInfo]) -> np.ndarray:
    """The edited and accepted instances (ids) of ``labels``; 0 elsewhere."""
    marked = protected_lookup(labels, table, unlisted=True)  # painted without an entry: edited
    if not marked.any():
        return np.zeros(labels.shape, np.int32)
    return np.where(marked[labels], labels, 0).astype(np.int32)


#: outline width of the corrections layer (set on the layer: Labels takes no ``contour`` argument)
OUTLINE_WIDTH = 2


def corrections_layer(image_id: str, labels: np.ndarray, table: Mapping[int, InstanceInfo]) -> tuple:
    """Outlines of the edited (orange) and accepted (green) instances (set ``contour`` = OUTLINE_WIDTH on the layer)."""
    kwargs = {
        "name": "corrections",
        "opacity": 1.0,
        "colormap": outline_colormap(table),
        "blending": "translucent_no_depth",
        "metadata": _meta("corrections", image_id),
    }
    return (outline_data(labels, table), kwargs, "labels")


def semantic_layer(image_id: str, semantic: np.ndarray, classes: Sequence[str] = ()) -> tuple:
    kwargs = {"name": "semantic", "opacity": 0.5, "visible": False, "metadata": _meta("semantic", image_id, classes=list(classes))}
    if classes:
        kwargs["colormap"] = class_map_colormap(classes)
    return (semantic, kwargs, "labels")


def prediction_layers(
    image_name: str,
    outputs,
    prediction,
    classes: Sequence[str],
    stride: int = 4,
) -> list[tuple]:
    """LayerDataTuples for every stage of one image (see DESIGN.md, "Layers")."""
    labels = prediction.instances.labels
    table = table_from_records(prediction.instances.records, classes)
    return [
        *cam_layers(image_name, outputs, classes),
        seeds_layer(image_name, prediction.seeds, classes),
        boundary_layer(image_name, outputs, stride),
        displacement_layer(image_name, outputs, stride),
        centroids_layer(image_name, prediction.centre_points, labels, table),
        instances_layer(image_name, labels, table, classes),
        semantic_layer(image_name, prediction.semantic, classes),
    ]
