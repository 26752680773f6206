"""Keep triton's LLVM away from an OpenGL driver's LLVM in the viewer's process.

``import torchvision`` imports ``torch._dynamo``, which imports ``triton``
when it is installed (CUDA builds of torch ship it). Loading triton's native
library into a process where an LLVM-based OpenGL driver is already loaded
(Mesa llvmpipe, as under Xvfb, or radeonsi) crashes the process with a
segmentation fault. The plugin's widget is always imported after napari has
created its OpenGL canvas, so before the first torch import there it calls
:func:`avoid_llvm_clash`: when the process already holds ``libLLVM`` and
triton is not loaded yet, triton is marked as unavailable, which torch
handles like a build without triton (only ``torch.compile``'s GPU code
generation needs it; napari-irnet does not use it). Nothing changes in
processes without an LLVM-based GL driver (the command line, GPU servers).
"""

from __future__ import annotations

import sys
from pathlib import Path


def llvm_loaded() -> bool:
    """True on Linux when a ``libLLVM`` shared library is mapped into this process."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return "libLLVM" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def avoid_llvm_clash() -> bool:
    """Mark triton unavailable if loading it now could crash; returns True when it did."""
    if "triton" in sys.modules or "torch._dynamo" in sys.modules:
        return False
    if not llvm_loaded():
        return False
    sys.modules["triton"] = None  # "import triton" now raises ImportError
    return True
