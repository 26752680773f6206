"""Regenerate the committed demo images in sample_data/cells from the generator.

Usage: python sample_data/make_sample_data.py
The images are deterministic (seed 2026): rerunning rewrites identical files.
"""

from pathlib import Path

from napari_irnet.demo import DEMO_SCALE, DEMO_SHAPE
from napari_irnet.synthetic import make_dataset, write_dataset

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "cells"
    write_dataset(make_dataset(6, shape=DEMO_SHAPE, seed=2026, prefix="cells", scale=DEMO_SCALE), out)
    print(f"wrote {out}")
