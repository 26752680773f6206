"""Reading images and label images: any size and type, checked, as the networks take them.

:func:`read_image` gives (H, W, 3) uint8 RGB from PNG, JPEG, BMP or TIFF of any bit depth and
channel count (:func:`image_size` and :func:`check_pixels` refuse images too large before
decoding them); :func:`read_label_image` gives an int32 label map; :func:`list_images` the
images of a folder. Pure numpy / Pillow / tifffile.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .files import InputError, describe_error, existing_file

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "check_pixels",
    "image_files",
    "image_size",
    "list_images",
    "read_image",
    "read_label_image",
]


#: file name endings recognised as images (compared case-insensitively)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


_TIFF_SUFFIXES = (".tif", ".tiff")


#: percentiles used to scale integer images that are not 8-bit
_ROBUST_PERCENTILES = (1.0, 99.8)


#: how a user picks channels, in the command line's words first
_CHANNELS_HINT = "`--channels I` or `--channels R G B` (channels=(i,) or channels=(r, g, b) in Python)"


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
    p = existing_file(path, "image file")
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
        raise InputError(f"{p}: not a readable image file ({describe_error(exc)})") from exc


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
    p = existing_file(path, "image file")
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
        raise InputError(f"{path}: not a readable image file ({describe_error(exc)})") from exc


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
        raise InputError(f"{path}: not a readable TIFF file ({describe_error(exc)})") from exc
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
    found = image_files(f)
    if not found:
        raise InputError(
            f"{f}: folder contains no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return found


def image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


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
    p = existing_file(path, "label image")
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
            raise InputError(f"{p}: not a readable image file ({describe_error(exc)})") from exc
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
