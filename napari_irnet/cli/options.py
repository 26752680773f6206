"""The command line's shared options, in one place.

Parameter options are generated from :class:`~napari_irnet.params.Params`
and :class:`~napari_irnet.params.TrainParams` (:func:`add_dataclass_options`):
the field ``beta`` is ``--beta``, ``seed_fg_threshold`` is
``--seed-fg-threshold``, and so on, the same names the Python API and the
napari widgets use; :func:`with_overrides` applies the ones given. The
options every command on a folder of images takes are :func:`add_image_options`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

__all__ = [
    "PARAM_HELP",
    "add_dataclass_options",
    "add_image_options",
    "add_max_pixels_option",
    "bool_option",
    "class_value",
    "option_text",
    "overrides",
    "with_overrides",
]

PARAM_HELP = "pipeline parameters (defaults: the checkpoint's, else the paper's)"

TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def bool_option(text: str) -> bool:
    """A bool option's value: true/false, yes/no, on/off or 1/0 (any case); anything else is an error."""
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"expected true or false (or yes/no, on/off, 1/0), not {text!r}")


def class_value(text: str) -> tuple[str, float]:
    """A ``CLASS=VALUE`` option word: the class name (which may hold ``=``) and a number."""
    name, _, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not name or number is None:
        raise argparse.ArgumentTypeError(f"expected CLASS=NUMBER, not {text!r}")
    return name, number


def add_dataclass_options(parser: argparse.ArgumentParser, cls, title: str, skip=()) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is dict:  # a value per class: NAME=VALUE ...
            group.add_argument(flag, dest=f.name, type=class_value, nargs="+", default=None, metavar="CLASS=VALUE",
                               help="per class, e.g. inflammatory=0.4 (default none)")  # fmt: skip
        elif isinstance(default, bool):
            group.add_argument(flag, dest=f.name, type=bool_option, default=None, metavar="BOOL", help=f"true or false (default {str(default).lower()})")
        elif isinstance(default, tuple):
            kind = type(default[0])
            group.add_argument(flag, dest=f.name, type=kind, nargs="+", default=None, help=f"(default {' '.join(map(str, default))})")
        else:
            group.add_argument(flag, dest=f.name, type=type(default), default=None, help=f"(default {default})")


def overrides(args: argparse.Namespace, cls) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            if f.default_factory is dict:
                value = dict(value)
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def with_overrides(base, args: argparse.Namespace, classes=None):
    """A copy of a ``Params`` or ``TrainParams`` with the options given on the command line.

    With ``classes`` (the model's), parameters given per class must name them
    (:meth:`~napari_irnet.params.Params.check_classes`).
    """
    out = dataclasses.replace(base, **overrides(args, type(base)))
    return out.check_classes(classes) if classes is not None and hasattr(out, "check_classes") else out


def add_max_pixels_option(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels``: larger images are refused before they are decoded."""
    from ..io.images import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images of more than N pixels, before decoding them (default {DEFAULT_MAX_PIXELS:,}: 8192 x 8192; 0: no limit)")  # fmt: skip


def add_image_options(parser: argparse.ArgumentParser, need_labels: bool = True) -> None:
    """``--images``, ``--labels``, ``--device`` and ``--max-pixels``: a command on a folder of images."""
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--labels", type=Path, required=need_labels, help="image-level labels: CSV (image,classes with ';') or JSON")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    add_max_pixels_option(parser)


def option_text(name: str, value: Any) -> str:
    """A parameter as it is written on the command line: ``--cam-resize-long 56 72``, ``--use-crf false``."""
    if isinstance(value, dict):
        value = " ".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, (tuple, list)):
        value = " ".join(map(str, value))
    elif isinstance(value, bool):
        value = str(value).lower()
    return f"--{name.replace('_', '-')} {value}"
