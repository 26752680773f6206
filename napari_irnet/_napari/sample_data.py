"""napari sample-data contribution: File > Open Sample > napari-irnet."""

from __future__ import annotations

import numpy as np

from ..synthetic import make_dataset


def sample_cells():
    """A 256x256 synthetic cell image with its ground-truth instances.

    Returns napari LayerDataTuples: the RGB image and the ground-truth
    instance labels (hidden, for comparison).
    """
    from ..demo import DEMO_SCALE, DEMO_SHAPE

    # the cell size the bundled demo checkpoint was trained on
    sample = make_dataset(1, shape=DEMO_SHAPE, seed=7, prefix="sample", scale=DEMO_SCALE)[0]
    meta = {"napari_irnet": {"role": "sample", "labels": sample.labels}}
    return [
        (sample.image, {"name": "synthetic cells", "rgb": True, "metadata": meta}, "image"),
        (
            sample.instances.astype(np.int32),
            {"name": "ground truth", "visible": False, "metadata": meta},
            "labels",
        ),
    ]
