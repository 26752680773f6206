"""Reading user files and writing results, with errors that name the file.

Everything a user points the tool at (images, label images, image-level
label tables) is read here and checked; anything wrong becomes an
:class:`InputError` whose message names the file and the problem, so the
command line can print it and the viewer can show it without crashing.
Everything written goes through :func:`atomic_path`: a temporary file in the
target's folder, renamed over the target only once it is complete, so an
interrupted or failed write never leaves a half-written file behind.

Pure numpy / Pillow / tifffile: importing this module never imports napari
or Qt.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

__all__ = [
    "CLASS_LEGEND",
    "IMAGE_SUFFIXES",
    "ImageLabels",
    "InputError",
    "OutputError",
    "atomic_path",
    "atomic_write",
    "check_writable",
    "list_images",
    "output_stems",
    "read_class_legend",
    "read_image",
    "read_instances_json",
    "read_label_image",
    "read_labels",
    "voc_palette",
    "write_class_legend",
    "write_instance_tiff",
    "write_instances_json",
    "write_semantic_png",
]

#: file name endings recognised as images (compared case-insensitively)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")
#: percentiles used to scale integer images that are not 8-bit
_ROBUST_PERCENTILES = (1.0, 99.8)
#: how a user picks channels, in the command line's words first
_CHANNELS_HINT = "`--channels I` or `--channels R G B` (channels=(i,) or channels=(r, g, b) in Python)"
#: how many names an error or warning lists before it says "and N more"
_MAX_NAMES_SHOWN = 10


class InputError(ValueError):
    """A file given by the user cannot be used; the message names the file and why."""


class OutputError(OSError):
    """A result could not be written; the message names the file and why.

    ``filename`` holds the target path and ``errno`` the underlying error
    number when there was one.
    """

    def __str__(self) -> str:
        # OSError would print "[Errno N] strerror: filename" once errno is set
        return str(self.args[0]) if self.args else super().__str__()


# --------------------------------------------------------------------------
# small helpers


def _describe(exc: BaseException) -> str:
    """One line describing an exception raised by a library."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _name_list(names: Sequence[str], limit: int = _MAX_NAMES_SHOWN) -> str:
    """``'a, b, c'`` or ``'a, b, ... and 12 more'`` for long lists."""
    shown = ", ".join(str(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... and {len(names) - limit} more"
    return shown


def _existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a Path, or raise InputError if it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: {what} not found (no such file)")
    if not p.is_file():
        raise InputError(f"{p}: {what} is not a file")
    return p


# --------------------------------------------------------------------------
# images


#: largest image (pixels) that is read unless a larger limit is given: 8192 x 8192, about 8 GB
#: of working memory through the whole pipeline (BENCHMARKS.md, Scale)
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels.

    Raises
    ------
    InputError
        Missing or unreadable file.
    """
    p = _existing_file(path, "image file")
    try:
        if p.suffix.lower() in _TIFF_SUFFIXES:
            with tifffile.TiffFile(p) as tif:
                if not tif.series:
                    raise InputError(f"{p}: not a readable TIFF file (it contains no image)")
                series = tif.series[0]
                shape, axes = series.shape, str(series.axes)
            if "Y" in axes and "X" in axes:
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
            big = sorted(shape, reverse=True)[:2]
            return (int(big[0]), int(big[1])) if len(big) == 2 else (int(big[0]), 1)
        with Image.open(p) as img:
            width, height = img.size
        return int(height), int(width)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{p}: not a readable image file ({_describe(exc)})") from exc


def check_pixels(path: str | os.PathLike[str], size: tuple[int, int], max_pixels: int, hint: str = "raise it with --max-pixels") -> None:
    """Refuse an image of ``size`` (height, width) over ``max_pixels`` with a message naming ``path``."""
    h, w = size
    if max_pixels and h * w > max_pixels:
        raise InputError(
            f"{path}: image is {w} x {h} = {h * w:,} pixels, more than the limit of {max_pixels:,} "
            f"(max_pixels); {hint} if the machine has the memory, or split the image into tiles"
        )


def read_image(
    path: str | os.PathLike[str], channels: tuple[int, ...] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an image file as an 8-bit RGB array.

    PNG, JPEG and BMP (and anything else Pillow opens) are read with Pillow,
    ``.tif``/``.tiff`` with tifffile. Conversions:

    - grayscale ``(H, W)`` is repeated into three equal channels;
    - RGBA drops its alpha channel (so does any 4-channel image unless
      ``channels`` says otherwise); palette images are expanded to colours;
    - ``uint8`` values are kept as they are; boolean images become 0 / 255;
    - any other integer type (16-bit, 32-bit, signed) is scaled robustly by
      the image's own intensities: the 1st percentile maps to 0, the 99.8th
      percentile to 255, values outside are clipped (all selected channels
      share one scale, so colours keep their balance; if the two
      percentiles coincide, the minimum and maximum are used instead);
    - floating-point images are scaled linearly from their minimum (0) to
      their maximum (255); NaN or infinite pixels are an error;
    - an image whose selected values are all equal becomes all zeros.

    A TIFF with an extra axis (``(C, H, W)`` or ``(H, W, C)``, told apart by
    the TIFF's axis metadata, else by which end is shorter) is read as
    colour when that axis has 3 or 4 entries; otherwise ``channels`` must say
    which to use. An axis the file declares as Z (depth) or T (time) is a
    stack, not colour, and is refused unless ``channels`` picks planes.

    Parameters
    ----------
    path
        The image file.
    channels
        Indices along the channel axis to use: one index (shown as gray) or
        three (used as red, green, blue), e.g. ``(0, 2, 4)``. ``None`` picks
        automatically as described above. Also applies to RGB(A) images
        (``(0,)`` gives the red channel as gray); a 2D image has one
        channel, index 0.
    max_pixels
        Images with more pixels (height × width, from the file's header,
        before anything is decoded) are refused; 0: no limit.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` ``uint8``, C-contiguous.

    Raises
    ------
    InputError
        Missing, empty, corrupt or truncated file; more than ``max_pixels``;
        NaN/inf pixels; a channel count that needs ``channels``; a 3D stack;
        an unsupported pixel type. The message names the file and the problem.
    """
    p = _existing_file(path, "image file")
    if channels is not None:
        channels = _check_channel_request(p, channels)
    if p.stat().st_size == 0:
        raise InputError(f"{p}: image file is empty (0 bytes)")
    check_pixels(p, image_size(p), max_pixels)
    if p.suffix.lower() in _TIFF_SUFFIXES:
        array, axes = _read_tiff(p)
        array, channel_axis = _locate_channel_axis(p, array, axes, channels)
    else:
        array = _read_with_pillow(p)
        channel_axis = 2 if array.ndim == 3 else None
    if array.size == 0:
        raise InputError(f"{p}: image has no pixels (shape {array.shape})")
    selected = _select_channels(p, array, channel_axis, channels)
    scaled = _scale_to_uint8(p, selected)
    if scaled.shape[2] == 1:
        scaled = np.repeat(scaled, 3, axis=2)
    return np.ascontiguousarray(scaled)


def _check_channel_request(path: Path, channels: Sequence[int]) -> tuple[int, ...]:
    """Validate the shape of a ``channels`` argument (ranges are checked later)."""
    try:
        chosen = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        raise InputError(
            f"{path}: channels must be a tuple of 1 or 3 integer indices, got {channels!r}"
        ) from None
    if any(isinstance(c, bool) for c in channels) or any(
        isinstance(c, float) and not float(c).is_integer() for c in channels
    ):
        raise InputError(f"{path}: channels must be integer indices, got {channels!r}")
    if len(chosen) not in (1, 3):
        raise InputError(
            f"{path}: channels must name 1 channel (gray) or 3 (red, green, blue), "
            f"got {len(chosen)}: {chosen}"
        )
    return chosen


def _read_with_pillow(path: Path) -> np.ndarray:
    """Decode a non-TIFF image fully; returns (H, W) or (H, W, C) channels last."""
    try:
        with Image.open(path) as img:
            # load() decodes every byte now, so a truncated file raises here
            # instead of silently giving a partly grey image later.
            img.load()
            return _pillow_pixels(img)
    except InputError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise InputError(f"{path}: not a readable image file ({_describe(exc)})") from exc


def _pillow_pixels(img: Image.Image) -> np.ndarray:
    """Pixels of an opened Pillow image in a mode numpy understands."""
    mode = img.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("LA", "La"):
        img = img.getchannel(0)
    elif mode == "RGBa":
        img = img.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    return np.array(img)


def _read_tiff(path: Path) -> tuple[np.ndarray, str]:
    """First series of a TIFF and its axis letters (tifffile's convention)."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"{path}: not a readable TIFF file (it contains no image)")
            series = tif.series[0]
            array = series.asarray()
            axes = str(series.axes)
    except InputError:
        raise
    except Exception as exc:  # TiffFileError, ValueError, struct.error, OSError, ...
        raise InputError(f"{path}: not a readable TIFF file ({_describe(exc)})") from exc
    if len(axes) != array.ndim:
        axes = "Q" * array.ndim
    return array, axes


def _squeeze(array: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Drop length-1 axes other than Y and X (keeping at least two axes)."""
    keep = [
        i for i, (n, a) in enumerate(zip(array.shape, axes)) if n != 1 or a in "YX"
    ]
    if len(keep) < 2:
        keep = list(range(array.ndim))[-2:]
    if len(keep) == array.ndim:
        return array, axes
    array = array.reshape(tuple(array.shape[i] for i in keep))
    return array, "".join(axes[i] for i in keep)


def _locate_channel_axis(
    path: Path, array: np.ndarray, axes: str, channels: tuple[int, ...] | None
) -> tuple[np.ndarray, int | None]:
    """Decide which axis of a TIFF holds channels; refuse stacks and >3D data."""
    array, axes = _squeeze(array, axes)
    if array.ndim == 2:
        return array, None
    if array.ndim > 3:
        raise InputError(
            f"{path}: image has {array.ndim} dimensions (shape {array.shape}, axes {axes}); "
            "expected a 2D image with at most one channel axis"
        )
    extra = [i for i, a in enumerate(axes) if a not in "YX"]
    # tifffile names axes it knows nothing about Q or I (and then calls the
    # last two Y and X whatever they are), so only a real name is trusted
    named = len(extra) == 1 and axes[extra[0]] not in "QI" and sorted(axes) == sorted(
        axes[extra[0]] + "XY"
    )
    if named:
        axis = extra[0]
    else:  # no usable axis names: the shorter end is the channel axis
        axis = 0 if array.shape[0] <= array.shape[-1] else 2
    letter = axes[axis]
    count = array.shape[axis]
    if channels is None:
        if letter in "ZT":
            kind = "z-planes" if letter == "Z" else "time points"
            raise InputError(
                f"{path}: is a stack of {count} {kind} (shape {array.shape}, axes {axes}), "
                "not a 2D image; save one plane or a projection, or pick planes with "
                f"{_CHANNELS_HINT}, indices 0..{count - 1}"
            )
        if count not in (1, 3, 4):
            what = "channels" if letter in "CS" else "channels or planes"
            raise InputError(
                f"{path}: has {count} {what} along axis {axis} (shape {array.shape}); "
                "only 1, 3 or 4 are read without help: choose one channel shown as gray or "
                f"three for red, green, blue ({_CHANNELS_HINT}), indices 0..{count - 1}"
            )
    return array, axis


def _select_channels(
    path: Path, array: np.ndarray, channel_axis: int | None, channels: tuple[int, ...] | None
) -> np.ndarray:
    """(H, W, 1) or (H, W, 3) view of the channels to show."""
    if channel_axis is None:
        array = array[:, :, None]
    else:
        array = np.moveaxis(array, channel_axis, -1)
    count = array.shape[2]
    if channels is not None:
        bad = [c for c in channels if not 0 <= c < count]
        if bad:
            raise InputError(
                f"{path}: channel index {bad[0]} is out of range: the image has {count} "
                f"channel{'s' if count != 1 else ''} (indices 0..{count - 1})"
            )
        return array[:, :, list(channels)]
    if count == 4:
        return array[:, :, :3]  # drop alpha
    if count in (1, 3):
        return array
    raise InputError(  # Pillow modes with 2 bands end up here
        f"{path}: has {count} channels; choose them with {_CHANNELS_HINT}"
    )


def _scale_to_uint8(path: Path, array: np.ndarray) -> np.ndarray:
    """Map any numeric pixel type to uint8 as documented in :func:`read_image`."""
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(dtype, np.integer):
        lo, hi = np.percentile(array, _ROBUST_PERCENTILES)
        if hi <= lo:
            lo, hi = array.min(), array.max()
        return _linear_to_uint8(array, float(lo), float(hi))
    if np.issubdtype(dtype, np.floating):
        finite = np.isfinite(array)
        bad = int(array.size - np.count_nonzero(finite))
        if bad:
            raise InputError(
                f"{path}: {bad} of {array.size} pixel values are not finite (NaN or "
                "infinity); replace them (e.g. with 0) before loading"
            )
        return _linear_to_uint8(array, float(array.min()), float(array.max()))
    raise InputError(f"{path}: unsupported pixel type {dtype}")


def _linear_to_uint8(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo`` -> 0, ``hi`` -> 255, clipped and rounded; all zeros when ``hi <= lo``."""
    if not hi > lo:
        return np.zeros(array.shape, np.uint8)
    small = array.dtype.itemsize <= 2 or array.dtype == np.float32
    work = array.astype(np.float32 if small else np.float64)
    work -= lo
    work *= 255.0 / (hi - lo)
    np.clip(work, 0.0, 255.0, out=work)
    return np.rint(work).astype(np.uint8)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside a folder, sorted by name.

    Files ending in one of :data:`IMAGE_SUFFIXES` (any letter case) count;
    hidden files (name starting with ``.``, e.g. temporary files of
    :func:`atomic_path` or macOS ``._`` files) and sub-folders do not.

    Parameters
    ----------
    folder
        The folder to list.

    Returns
    -------
    list of pathlib.Path
        At least one path.

    Raises
    ------
    InputError
        The folder is missing, is not a folder, or holds no image.
    """
    f = Path(folder)
    if not f.exists():
        raise InputError(f"{f}: image folder not found")
    if not f.is_dir():
        raise InputError(f"{f}: is not a folder")
    found = _image_files(f)
    if not found:
        raise InputError(
            f"{f}: folder contains no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return found


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


# --------------------------------------------------------------------------
# label images


def read_label_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an instance or semantic label image.

    Accepted: single-channel TIFF or PNG of unsigned or signed integers
    (``uint8``, ``uint16``, ``int32``, ...), boolean masks, floats holding
    whole numbers, and palette PNGs (mode ``P``, VOC style), whose palette
    indices are the labels (the colours are ignored). An RGB(A) image whose
    three colour channels are equal is read as gray; a true colour image is
    refused, since colours are not label ids.

    Parameters
    ----------
    path
        A ``.tif``/``.tiff`` (read with tifffile) or any file Pillow opens.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` ``int32``, values >= 0.

    Raises
    ------
    InputError
        Missing, empty or corrupt file, a colour image, more than two
        dimensions, non-integer or negative values, or values above
        2**31 - 1. The message names the file.
    """
    p = _existing_file(path, "label image")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: label image file is empty (0 bytes)")
    if p.suffix.lower() in _TIFF_SUFFIXES:
        array, axes = _read_tiff(p)
        array, axes = _squeeze(array, axes)
        colour = array.ndim == 3 and array.shape[2] in (3, 4)
    else:
        try:
            with Image.open(p) as img:
                img.load()
                colour = img.mode not in ("1", "L", "P", "I", "F") and not img.mode.startswith(
                    "I;16"
                )
                if img.mode in ("LA", "PA", "La"):
                    img = img.getchannel(0)
                    colour = False
                array = np.array(img)
        except Exception as exc:
            raise InputError(f"{p}: not a readable image file ({_describe(exc)})") from exc
        colour = colour and array.ndim == 3
    if colour:
        rgb = array[:, :, :3]
        red = rgb[:, :, 0]
        if not (np.array_equal(red, rgb[:, :, 1]) and np.array_equal(red, rgb[:, :, 2])):
            raise InputError(
                f"{p}: is a colour (RGB) image, not a label image; save labels as a "
                "single-channel integer TIFF/PNG or a palette (mode P) PNG"
            )
        array = rgb[:, :, 0]
    if array.ndim != 2:
        raise InputError(f"{p}: a label image must be 2D, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{p}: label image has no pixels (shape {array.shape})")
    return _labels_to_int32(p, array)


def _labels_to_int32(path: Path, array: np.ndarray) -> np.ndarray:
    dtype = array.dtype
    if dtype == np.bool_:
        return array.astype(np.int32)
    if np.issubdtype(dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"{path}: label image holds non-integer values ({dtype})")
    elif not np.issubdtype(dtype, np.integer):
        raise InputError(f"{path}: unsupported pixel type {dtype} for a label image")
    low, high = array.min(), array.max()
    if low < 0:
        raise InputError(f"{path}: label image has negative values (minimum {low})")
    if high > np.iinfo(np.int32).max:
        raise InputError(f"{path}: label value {high} is too large (maximum 2**31 - 1)")
    return array.astype(np.int32)


# --------------------------------------------------------------------------
# image-level labels


@dataclass
class ImageLabels:
    """Image-level labels: which classes each image contains.

    Attributes
    ----------
    classes
        Class names, in the order that defines their indices.
    image_labels
        Image file name (as written in the label file) -> its class names
        (no repeats; an empty list means the image shows none of the classes).
    unlabelled
        Names of image files found in the image folder that the label file
        does not mention (only filled when an image folder was given).
    """

    classes: list[str]
    image_labels: dict[str, list[str]]
    unlabelled: list[str] = field(default_factory=list)


def read_labels(
    path: str | os.PathLike[str],
    image_dir: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
) -> ImageLabels:
    """Read image-level labels from a CSV or JSON file.

    CSV (``.csv``): a header row with the columns ``image`` and ``classes``
    (other columns are ignored), then one row per image; class names are
    separated by ``;``, surrounding whitespace is stripped, an empty cell
    means no classes. Without ``classes`` the class list is the sorted set
    of names seen.

    JSON (``.json``): ``{"classes": [...], "image_labels": {image: [class,
    ...]}}``; names are used exactly as written. Every class used must be in
    ``"classes"`` (when the key is missing, the sorted set of names seen).

    Other suffixes are read as JSON if the text starts with ``{``, else as CSV.

    Parameters
    ----------
    path
        The label file.
    image_dir
        If given, every listed image must exist there (else InputError), and
        images there without a row are returned in ``unlabelled`` with a
        ``UserWarning``.
    classes
        The allowed class names, in index order. Any other name is an error;
        for JSON, the file's own class list must be part of it. The returned
        ``classes`` is then this list.

    Returns
    -------
    ImageLabels

    Raises
    ------
    InputError
        Empty file, missing header or column, malformed JSON, wrong types,
        duplicate images, unknown class names, images missing on disk. The
        message names the file and the line (CSV) or key (JSON).
    """
    p = _existing_file(path, "label file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: label file is not UTF-8 text ({_describe(exc)})") from exc
    except OSError as exc:
        raise InputError(f"{p}: cannot read label file ({_describe(exc)})") from exc
    if not text.strip():
        raise InputError(f"{p}: label file is empty")
    allowed = None if classes is None else _check_class_list(p, list(classes), "classes argument")
    suffix = p.suffix.lower()
    as_json = suffix == ".json" or (suffix != ".csv" and text.lstrip().startswith("{"))
    if as_json:
        labels = _parse_json_labels(p, text, allowed)
    else:
        labels = _parse_csv_labels(p, text, allowed)
    if image_dir is not None:
        labels.unlabelled = _check_against_folder(p, labels, Path(image_dir))
    return labels


def _check_class_list(path: Path, names: list[Any], where: str) -> list[str]:
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{path}: {where}[{i}] must be a non-empty class name, got {name!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{path}: {where} lists a class twice: {_name_list(repeated)}")
    return list(names)


def _unknown_class_error(where: str, name: str, allowed: Sequence[str]) -> InputError:
    """``where`` starts with the file name, e.g. ``'labels.csv, line 3: image 'a.png''``."""
    return InputError(
        f"{where}: unknown class {name!r}; known classes: {_name_list(list(allowed), 50)}"
    )


def _parse_csv_labels(path: Path, text: str, allowed: list[str] | None) -> ImageLabels:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    image_col = classes_col = -1
    first_line: dict[str, int] = {}
    image_labels: dict[str, list[str]] = {}
    seen: set[str] = set()
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                missing = [c for c in ("image", "classes") if c not in header]
                if missing:
                    raise InputError(
                        f"{path}, line {line}: expected a header row with the columns "
                        f"'image' and 'classes' (e.g. 'image,classes'); missing "
                        f"{', '.join(repr(m) for m in missing)} in {','.join(row)!r}"
                    )
                image_col, classes_col = header.index("image"), header.index("classes")
                continue
            if len(row) <= max(image_col, classes_col):
                raise InputError(
                    f"{path}, line {line}: has {len(row)} field(s) but the header has "
                    f"{len(header)} ({','.join(header)}); leave the classes cell empty "
                    "for an image without classes ('name.png,')"
                )
            image = row[image_col].strip()
            if not image:
                raise InputError(f"{path}, line {line}: empty image name")
            if image in first_line:
                raise InputError(
                    f"{path}, line {line}: image {image!r} is listed twice "
                    f"(first on line {first_line[image]})"
                )
            names: list[str] = []
            for name in (n.strip() for n in row[classes_col].split(";")):
                if not name or name in names:
                    continue
                if allowed is not None and name not in allowed:
                    where = f"{path}, line {line}: image {image!r}"
                    raise _unknown_class_error(where, name, allowed)
                names.append(name)
            first_line[image] = line
            image_labels[image] = names
            seen.update(names)
    except csv.Error as exc:
        raise InputError(
            f"{path}, line {reader.line_num}: malformed CSV ({_describe(exc)})"
        ) from exc
    if not image_labels:
        raise InputError(f"{path}: label file has a header but no image rows")
    return ImageLabels(
        classes=list(allowed) if allowed is not None else sorted(seen),
        image_labels=image_labels,
    )


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _parse_json_labels(path: Path, text: str, allowed: list[str] | None) -> ImageLabels:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except _DuplicateKey as exc:
        raise InputError(
            f"{path}: key {exc.key!r} appears twice in one JSON object (duplicate image?)"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: the top level must be an object with the keys 'classes' and "
            f"'image_labels', got a JSON {type(data).__name__}"
        )
    if "image_labels" not in data:
        raise InputError(f"{path}: missing key 'image_labels' (image name -> list of classes)")
    entries = data["image_labels"]
    if not isinstance(entries, dict):
        raise InputError(
            f"{path}: 'image_labels' must be an object mapping image names to class lists, "
            f"got a JSON {type(entries).__name__}"
        )
    file_classes: list[str] | None = None
    if "classes" in data:
        if not isinstance(data["classes"], list):
            raise InputError(
                f"{path}: 'classes' must be a list of class names, got a JSON "
                f"{type(data['classes']).__name__}"
            )
        file_classes = _check_class_list(path, data["classes"], "'classes'")
        if allowed is not None:
            extra = [c for c in file_classes if c not in allowed]
            if extra:
                raise InputError(
                    f"{path}: 'classes' has names that are not expected here: "
                    f"{_name_list(extra)}; expected classes: {_name_list(allowed, 50)}"
                )
    known = allowed if allowed is not None else file_classes
    image_labels: dict[str, list[str]] = {}
    seen: set[str] = set()
    for image, names in entries.items():
        where = f"image_labels[{image!r}]"
        if not image.strip():
            raise InputError(f"{path}: {where}: empty image name")
        if not isinstance(names, list):
            raise InputError(
                f"{path}: {where} must be a list of class names, got a JSON {type(names).__name__}"
            )
        clean: list[str] = []
        for name in names:
            if not isinstance(name, str) or not name:
                raise InputError(
                    f"{path}: {where}: class names must be non-empty strings, got {name!r}"
                )
            if known is not None and name not in known:
                raise _unknown_class_error(f"{path}: {where}", name, known)
            if name not in clean:
                clean.append(name)
        image_labels[image] = clean
        seen.update(clean)
    if not image_labels:
        raise InputError(f"{path}: 'image_labels' is empty")
    return ImageLabels(
        classes=list(known) if known is not None else sorted(seen), image_labels=image_labels
    )


def _check_against_folder(path: Path, labels: ImageLabels, folder: Path) -> list[str]:
    """Raise for listed images missing in ``folder``; return unlabelled image names."""
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder not found (images of {path})")
    missing = [name for name in labels.image_labels if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"{path}: {len(missing)} listed image{'s are' if len(missing) != 1 else ' is'} "
            f"not in {folder}: {_name_list(missing)}"
        )
    listed = {Path(name).as_posix() for name in labels.image_labels}
    unlabelled = [f.name for f in _image_files(folder) if f.name not in listed]
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} image{'s' if len(unlabelled) != 1 else ''} in {folder} "
            f"{'have' if len(unlabelled) != 1 else 'has'} no labels in {path}: "
            f"{_name_list(unlabelled)}",
            UserWarning,
            stacklevel=3,
        )
    return unlabelled


# --------------------------------------------------------------------------
# atomic writing


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or _describe(exc)
    err = OutputError(f"{path}: cannot write ({reason})")
    err.filename = str(path)
    err.errno = exc.errno
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file all at once: yield a temporary path, rename it over ``path``.

    The temporary file is in the target's folder (so the rename is atomic)
    and is hidden, named ``.<name>.<random>.tmp<suffix>`` so writers that
    choose a format by suffix still work. It is not created in advance: the
    body writes it. On success it is flushed to disk and renamed over
    ``path``; on any exception it is deleted and ``path`` is left as it was.
    Missing parent folders are created.

    Parameters
    ----------
    path
        The final file.

    Yields
    ------
    pathlib.Path
        Where the body must write.

    Raises
    ------
    OutputError
        Any OSError while creating the folder, writing, or renaming (read-only
        folder, disk full, ...), with the target named. Other exceptions from
        the body pass through unchanged.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # some part of the folder path is a file
        blocker = exc.filename or target.parent
        err = OutputError(f"{target}: cannot write ({blocker} is not a folder)")
        err.filename, err.errno = str(target), exc.errno
        raise err from exc
    except OSError as exc:
        raise _output_error(target, exc) from exc
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputError(f"{target}: cannot write (the writer produced no file)")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _output_error(target, exc) from exc
        raise
    _sync_folder(target.parent)


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`OutputError` unless a file can be written at ``path`` now.

    For long work (training): a folder given as the file, a part of the
    folder path that is a file, a read-only folder or file system fail here,
    before the work starts, rather than after it. A probe file is created and
    removed in the nearest existing folder; nothing else is created.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target}: is a folder; give a file name (e.g. {target / 'model.pt'})")
    if target.exists() and not target.is_file():
        raise OutputError(f"{target}: exists and is not a regular file")
    folder = target.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        err = OutputError(f"{target}: cannot write ({folder} is not a folder)")
        err.filename = str(target)
        raise err
    probe = folder / f".{target.name}.{secrets.token_hex(4)}.probe"
    try:
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise _output_error(target, exc) from exc
    return target


def _sync_folder(folder: Path) -> None:
    """Make a rename durable where the platform allows it (best effort)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` and move the result to ``path`` (see :func:`atomic_path`).

    Parameters
    ----------
    path
        The final file.
    writer
        Writes the complete file at the path it is given.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON data: dict keys as str, numpy scalars and arrays
    as plain numbers and lists, tuples as lists, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as strict JSON (no NaN), atomically (see :func:`atomic_path`).

    Raises
    ------
    ValueError
        ``data`` holds a non-finite float (pass it through :func:`json_ready` first).
    OutputError
        The file could not be written.
    """
    text = json.dumps(data, indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------
# writing results


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map.

    Label ``i`` gets its colour by dealing out its bits: bit 0 of ``i`` to red,
    bit 1 to green, bit 2 to blue, then the next three bits one place lower in
    each channel, and so on, starting from each channel's highest bit. So 0 is
    black, 1 is (128, 0, 0), 2 is (0, 128, 0), 3 is (128, 128, 0), 255 is
    (224, 224, 192).

    Parameters
    ----------
    n
        Number of colours, 1..256.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` ``uint8``, row ``i`` the RGB colour of label ``i``.
    """
    if not 1 <= n <= 256:
        raise ValueError(f"voc_palette: n must be between 1 and 256, got {n}")
    index = np.arange(n, dtype=np.int64)
    colours = np.zeros((n, 3), dtype=np.int64)
    for level in range(8):  # three bits of the index per level
        for channel in range(3):
            bit = (index >> (3 * level + channel)) & 1
            colours[:, channel] |= bit << (7 - level)
    return colours.astype(np.uint8)


def _as_label_array(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) array, got shape {array.shape}")
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} has negative values (minimum {array.min()})")
    return array


def write_instance_tiff(path: str | os.PathLike[str], instances: np.ndarray) -> Path:
    """Write an instance label map as a zlib-compressed TIFF, atomically.

    Parameters
    ----------
    path
        The ``.tif`` file to write.
    instances
        ``(H, W)`` non-negative integers, 0 = background, k = instance k.
        Stored as ``uint16`` when the maximum is below 65536, else ``uint32``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        Not 2D, not integer, negative, or an id of 2**32 or more.
    OutputError
        The file could not be written.
    """
    array = _as_label_array(instances, "instances")
    top = int(array.max()) if array.size else 0
    if top >= 2**32:
        raise ValueError(f"instances: id {top} does not fit in uint32")
    out = array.astype(np.uint16 if top < 65536 else np.uint32)
    return atomic_write(
        path,
        lambda tmp: tifffile.imwrite(tmp, out, compression="zlib", photometric="minisblack"),
    )


def write_semantic_png(
    path: str | os.PathLike[str], semantic: np.ndarray, palette: bool = True
) -> Path:
    """Write a class map as an 8-bit PNG, atomically.

    Parameters
    ----------
    path
        The ``.png`` file to write.
    semantic
        ``(H, W)`` integers in 0..255 (``uint8`` or any integer type), the
        class index of each pixel (VOC: 0 background, 255 ignore).
    palette
        ``True``: a palette PNG (mode ``P``) with :func:`voc_palette`; the
        stored values are the class indices, which viewers show in colour.
        ``False``: a plain gray PNG (mode ``L``) with the same values.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        Not 2D, not integer, or values outside 0..255.
    OutputError
        The file could not be written.
    """
    array = _as_label_array(semantic, "semantic")
    if array.size and int(array.max()) > 255:
        raise ValueError(f"semantic: values must be 0..255, got maximum {array.max()}")
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))  # mode L
    if palette:
        img.putpalette(voc_palette(256).tobytes())  # turns it into mode P, same values
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


_RECORD_KEYS = ("id", "class", "score", "bbox", "area")


def _plain_record(index: int, record: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of one instance record, checked."""
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"records[{index}] is missing {', '.join(missing)}")
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[str(key)] = value
    bbox = out["bbox"]
    if isinstance(bbox, tuple):
        bbox = list(bbox)
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError(f"records[{index}]['bbox'] must be [x0, y0, x1, y1], got {bbox!r}")
    out["bbox"] = [int(v) for v in np.asarray(bbox).tolist()]
    out["id"] = int(out["id"])
    out["area"] = int(out["area"])
    out["score"] = float(out["score"])
    out["class"] = str(out["class"])
    if not math.isfinite(out["score"]):
        raise ValueError(f"records[{index}]['score'] is not finite: {out['score']}")
    return out


def write_instances_json(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> Path:
    """Write per-instance records as a JSON list, atomically.

    Parameters
    ----------
    path
        The ``.json`` file to write.
    records
        One dict per instance with at least ``id`` (int, the value in the
        instance label map), ``class`` (str), ``score`` (float), ``bbox``
        (``[x0, y0, x1, y1]`` in pixels: x = column, y = row; ``x0, y0``
        inclusive, ``x1, y1`` exclusive, so width = ``x1 - x0``) and
        ``area`` (int, pixel count). Other keys are kept. numpy scalars and
        arrays are converted to plain numbers and lists.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        A record lacks a key, has a malformed bbox or a non-finite score.
    OutputError
        The file could not be written.
    """
    return write_json(path, [_plain_record(i, r) for i, r in enumerate(records)])


def read_instances_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read records written by :func:`write_instances_json`.

    Returns
    -------
    list of dict
        The records, with the keys described there.

    Raises
    ------
    InputError
        Missing file, malformed JSON, not a list of objects with the
        required keys.
    """
    p = _existing_file(path, "instances file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{p}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read instances file ({_describe(exc)})") from exc
    if not isinstance(data, list):
        raise InputError(f"{p}: expected a JSON list of instance records")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise InputError(f"{p}: record {i} is not an object")
        missing = [k for k in _RECORD_KEYS if k not in record]
        if missing:
            raise InputError(f"{p}: record {i} is missing {', '.join(missing)}")
    return data


# --------------------------------------------------------------------------
# class legends

#: the file beside predictions and label-image exports that names the class values
CLASS_LEGEND = "classes.json"


def write_class_legend(folder: str | os.PathLike[str], classes: Sequence[str]) -> Path:
    """Write ``<folder>/classes.json``: which class each value of the semantic maps stands for.

    ``{"background": 0, "classes": {"1": name, "2": name, ...}, ...}``, the
    values being class index + 1 in ``classes``' order. ``predict`` writes it
    beside its predictions (in the model's class order) and the label-image
    export beside its maps (in the project's), so that readers map the
    values to classes by name, never by position.
    """
    legend = {
        "background": 0,
        "classes": {str(i + 1): str(c) for i, c in enumerate(classes)},
        "semantic": "class index + 1, 0 = background",
        "instances": "instance id, 0 = background",
    }
    return write_json(Path(folder) / CLASS_LEGEND, legend)


def read_class_legend(path: str | os.PathLike[str]) -> list[str]:
    """The class names of a ``classes.json`` (see :func:`write_class_legend`), in value order.

    Raises
    ------
    InputError
        Missing or malformed file, values that are not 1..N, a name twice.
    """
    p = _existing_file(path, "class legend")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read class legend ({_describe(exc)})") from exc
    table = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise InputError(f"{p}: expected {{\"classes\": {{\"1\": name, \"2\": name, ...}}}}")
    try:
        by_value = {int(k): v for k, v in table.items()}
    except ValueError:
        raise InputError(f"{p}: 'classes' keys must be the class values 1, 2, ...") from None
    if sorted(by_value) != list(range(1, len(by_value) + 1)):
        raise InputError(f"{p}: 'classes' must number the classes 1..N, got {sorted(by_value)}")
    return _check_class_list(p, [by_value[v] for v in sorted(by_value)], "classes")


def output_stems(names: Sequence[str]) -> dict[str, str]:
    """A distinct file stem for each image name, for the files written about it.

    The stem is the name without its suffix, sub-folders joined by ``__``
    (``sub/a.png`` -> ``sub__a``); names whose stems would clash (``a.png``
    and ``a.jpg``; also ``a.png`` and ``A.png``, which are one file on some
    file systems) keep their suffix (``a_png``, ``a_jpg``), and any clash
    left gets ``-2``, ``-3``, ...
    """

    def plain(name: str) -> str:
        return Path(name).with_suffix("").as_posix().replace("/", "__")

    def counts(stems) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in stems:
            out[s.casefold()] = out.get(s.casefold(), 0) + 1
        return out

    first = {n: plain(n) for n in names}
    seen = counts(first.values())
    stems = {n: (s if seen[s.casefold()] == 1 else n.replace("/", "__").replace(".", "_")) for n, s in first.items()}
    taken: set[str] = set()
    for n, s in stems.items():
        candidate, k = s, 1
        while candidate.casefold() in taken:
            k += 1
            candidate = f"{s}-{k}"
        taken.add(candidate.casefold())
        stems[n] = candidate
    return stems
