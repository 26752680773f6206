"""Image-level labels: which classes each image contains, from a CSV or JSON file.

:func:`read_labels` reads and checks them (unknown classes, duplicates, images missing from the
folder, each named with the file and where in it).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import InputError, describe_error, existing_file, name_list
from .images import image_files

__all__ = [
    "check_class_list",
    "ImageLabels",
    "read_labels",
]


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
    p = existing_file(path, "label file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: label file is not UTF-8 text ({describe_error(exc)})") from exc
    except OSError as exc:
        raise InputError(f"{p}: cannot read label file ({describe_error(exc)})") from exc
    if not text.strip():
        raise InputError(f"{p}: label file is empty")
    allowed = None if classes is None else check_class_list(p, list(classes), "classes argument")
    suffix = p.suffix.lower()
    as_json = suffix == ".json" or (suffix != ".csv" and text.lstrip().startswith("{"))
    if as_json:
        labels = _parse_json_labels(p, text, allowed)
    else:
        labels = _parse_csv_labels(p, text, allowed)
    if image_dir is not None:
        labels.unlabelled = _check_against_folder(p, labels, Path(image_dir))
    return labels


def check_class_list(path: Path, names: list[Any], where: str) -> list[str]:
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{path}: {where}[{i}] must be a non-empty class name, got {name!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{path}: {where} lists a class twice: {name_list(repeated)}")
    return list(names)


def _unknown_class_error(where: str, name: str, allowed: Sequence[str]) -> InputError:
    """``where`` starts with the file name, e.g. ``'labels.csv, line 3: image 'a.png''``."""
    return InputError(
        f"{where}: unknown class {name!r}; known classes: {name_list(list(allowed), 50)}"
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
            f"{path}, line {reader.line_num}: malformed CSV ({describe_error(exc)})"
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
        file_classes = check_class_list(path, data["classes"], "'classes'")
        if allowed is not None:
            extra = [c for c in file_classes if c not in allowed]
            if extra:
                raise InputError(
                    f"{path}: 'classes' has names that are not expected here: "
                    f"{name_list(extra)}; expected classes: {name_list(allowed, 50)}"
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
            f"not in {folder}: {name_list(missing)}"
        )
    listed = {Path(name).as_posix() for name in labels.image_labels}
    unlabelled = [f.name for f in image_files(folder) if f.name not in listed]
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} image{'s' if len(unlabelled) != 1 else ''} in {folder} "
            f"{'have' if len(unlabelled) != 1 else 'has'} no labels in {path}: "
            f"{name_list(unlabelled)}",
            UserWarning,
            stacklevel=3,
        )
    return unlabelled
