"""napari-irnet: instance masks from image-level labels with IRNet, with a person in the loop.

The engine imports neither napari nor Qt: :mod:`napari_irnet.models` (the
networks and checkpoints), :mod:`napari_irnet.pipeline` (from an image to
instances), :mod:`napari_irnet.training`, :mod:`napari_irnet.annotation` (one
image's corrections without Qt), :mod:`napari_irnet.store` (projects and
per-image folders), :mod:`napari_irnet.io` (files), :mod:`napari_irnet.evaluation`,
with :mod:`napari_irnet.params` (the parameter dataclasses) and
:mod:`napari_irnet.progress`; :mod:`napari_irnet.cli` is the command line;
the napari plugin (:mod:`napari_irnet._napari`) is declared in ``napari.yaml``;
:func:`annotate` and :func:`annotate_project` open it from a script.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP threads that spin while they wait for work collide with any other busy thread
# (another process, napari's own): on a shared 2-core machine the walk's many short
# operations ran up to hundreds of times slower (BENCHMARKS.md, Scale). Unless the user
# chose otherwise, waiting threads sleep; this must be set before torch is imported.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def __getattr__(name: str):
    """``annotate`` and ``annotate_project`` (the annotators from a script), imported with napari when first used."""
    if name in ("annotate", "annotate_project"):
        from ._napari import annotators

        return getattr(annotators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
