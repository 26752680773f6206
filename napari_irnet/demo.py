"""`make demo`: the main job end to end on the bundled sample data.

Shows the bundled sample images with their ground truth in napari. With
``--screenshot`` (used under Xvfb when there is no display) it writes the
results and a screenshot of the viewer to ``demo_output/`` and exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_SAMPLES = Path(__file__).resolve().parent.parent / "sample_data" / "cells"


def load_samples(folder: Path):
    from PIL import Image

    images = sorted((folder / "images").glob("*.png"))
    if not images:
        raise FileNotFoundError(f"{folder}: no sample images (run sample_data/make_sample_data.py)")
    out = []
    for p in images:
        img = np.asarray(Image.open(p).convert("RGB"))
        inst = np.asarray(Image.open(folder / "inst" / p.name)).astype(np.int32)
        out.append((p.stem, img, inst))
    return out


def show(samples, out_dir: Path, screenshot: bool) -> None:
    import napari

    viewer = napari.Viewer(title="napari-irnet demo", show=True)
    name, img, inst = samples[0]
    viewer.add_image(img, name=name, rgb=True)
    viewer.add_labels(inst, name="ground truth", opacity=0.5)
    viewer.reset_view()
    if screenshot:
        from qtpy.QtWidgets import QApplication

        for _ in range(10):
            QApplication.processEvents()
        path = out_dir / "demo_screenshot.png"
        viewer.screenshot(str(path), canvas_only=False)
        print(f"screenshot: {path}")
        viewer.close()
    else:
        napari.run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=Path, default=REPO_SAMPLES)
    ap.add_argument("--out", type=Path, default=Path("demo_output"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--screenshot", action="store_true", help="render under the current (virtual) display, save a screenshot and exit")
    mode.add_argument("--no-viewer", action="store_true", help="write results only")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(args.samples)
    print(f"{len(samples)} sample images from {args.samples}")
    if not args.no_viewer:
        show(samples, args.out, args.screenshot)
    print(f"results in {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
