"""The command line, ``napari-irnet``: one module per command group.

``main`` is the console script's entry point; ``python -m napari_irnet.cli``
runs it too.
"""

from .parser import main

__all__ = ["main"]
