"""Fingerprints: of an image's pixels, of a file's contents, and the pixels of image files remembered.

A project records, with every result and correction, the fingerprint of the
pixels they were made for, so that an image file replaced by another is
noticed (:meth:`~napari_irnet.store.project.Project.image_fingerprint`); a
per-image folder is keyed by it for an image without a file. A checkpoint's
fingerprint identifies the model of a result.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["file_fingerprint", "file_signature", "image_fingerprint", "model_key", "remember_pixels", "remembered_pixels"]

_HASH_CACHE: dict[tuple[str, int, int], str] = {}
#: pixel fingerprints of image files: (path, (size, mtime_ns), channels) -> fingerprint
_PIXEL_FINGERPRINTS: dict[tuple[str, tuple[int, int], tuple[int, ...] | None], str] = {}


def image_fingerprint(image: np.ndarray) -> str:
    """A short hash of an image's shape, type and pixels (16 hex digits)."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha1(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_signature(path: Path) -> tuple[int, int]:
    """(size, mtime in ns) of a file: it changed when they changed."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's contents (cached by path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = _sha256(p)
    return _HASH_CACHE[key]


def remember_pixels(path: Path, signature: tuple[int, int], channels: tuple[int, ...] | None, image: np.ndarray) -> None:
    """Remember the fingerprint of the pixels read from ``path`` (with that signature and channel choice)."""
    _PIXEL_FINGERPRINTS[(str(path.resolve()), signature, channels)] = image_fingerprint(image)


def remembered_pixels(path: Path, signature: tuple[int, int], channels: tuple[int, ...] | None) -> str | None:
    """The fingerprint :func:`remember_pixels` kept for that file version, or None."""
    return _PIXEL_FINGERPRINTS.get((str(path.resolve()), signature, channels))


def model_key(checkpoint: str | os.PathLike[str] | None, params, fingerprint: str | None = None) -> str | None:
    """What identifies a result's model: the checkpoint's contents (or ``fingerprint``) and the parameters (``Params``).

    None when there is neither a fingerprint nor an existing checkpoint file.
    """
    if fingerprint is None:
        if checkpoint is None or not Path(checkpoint).is_file():
            return None
        fingerprint = file_fingerprint(checkpoint)
    values = params.to_dict()
    # "auto" precision, like the device, is how the machine runs the networks, not a
    # different model; left out, the keys of projects made before the field stay valid
    if values.get("network_precision") == "auto":
        del values["network_precision"]
    phash = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return f"{fingerprint[:16]}-{phash[:8]}"
