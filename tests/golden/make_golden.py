"""Make ``reference_outputs.npz``: the reference implementation's outputs on three small images.

Runs jiwoon-ahn/irn (from a checkout whose folder is given; its code is not
part of this repository) on CPU through ``benchmarks/reference_irn.py``, with
the deterministic weights of ``weights.py``, and keeps every stage's output for
``tests/test_reference_equivalence.py``. Needs pydensecrf (the reference
imports it)::

    python tests/golden/make_golden.py --reference PATH/TO/irn --commit COMMIT

See README.md beside this file for what is stored.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(HERE.parent)]

import reference_irn  # noqa: E402
from golden.weights import fingerprint, golden_model  # noqa: E402

from napari_irnet.models.checkpoint import import_reference  # noqa: E402
from napari_irnet.synthetic import make_sample  # noqa: E402

#: image sizes (not all multiples of 16 or 4, one square) and their 0-based VOC classes
SHAPES = ((88, 116), (96, 96), (70, 126))
CLASS_IDS = ((1, 6, 12), (2, 15), (7, 12, 18))
IMAGE_SEED = 7
OUT = HERE / "reference_outputs.npz"


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(IMAGE_SEED)
    return [make_sample(rng, f"golden_{i}", shape).image for i, shape in enumerate(SHAPES)]


def check_import(ref, model) -> None:
    """The reference-format state dicts import (``import_reference``) to exactly the golden weights."""
    cam_state, irn_state = reference_irn.reference_state_dicts(ref, model)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(cam_state, Path(tmp) / "res50_cam.pth")
        torch.save(irn_state, Path(tmp) / "res50_irn.pth")
        imported = import_reference(Path(tmp) / "res50_cam.pth", Path(tmp) / "res50_irn.pth")
    for ours, back in ((model.cam, imported.cam), (model.irn, imported.irn)):
        a, b = ours.state_dict(), back.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "import_reference changed the weights"


def check_coverage(outputs: list[dict]) -> None:
    """Every stage must have something to compare: classes, ignore pixels, clusters, instances."""
    for i, out in enumerate(outputs):
        seeds = out["seeds_plain"]
        assert len(out["class_ids"]) >= 2, f"image {i}: fewer than two classes"
        assert {0, 255} <= set(np.unique(seeds)), f"image {i}: seeds lack background or ignore pixels"
        assert len(set(np.unique(seeds)) - {0, 255}) >= 2, f"image {i}: seeds of fewer than two classes"
        assert (out["instance_scores"] > 0).sum() >= 2, f"image {i}: fewer than two scored instances"
        assert len(np.unique(out["semantic"])) >= 3, f"image {i}: semantic map of fewer than two classes"
    assert max(out["clusters"].max() for out in outputs) >= 2, "fewer than three clusters in every image"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, type=Path, help="folder of a checkout of jiwoon-ahn/irn")
    ap.add_argument("--commit", default="unknown", help="the reference's commit, recorded in the fixture")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        ref = reference_irn.load_reference(args.reference)
    except reference_irn.ReferenceMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = golden_model()
    check_import(ref, model)
    inputs = images()
    outputs = reference_irn.run_images(ref, model, inputs, CLASS_IDS)
    check_coverage(outputs)
    arrays = {"reference_commit": np.array(args.commit), "torch_version": np.array(torch.__version__)}
    arrays["fingerprint_cam"], arrays["fingerprint_irn"] = fingerprint(model.cam), fingerprint(model.irn)
    for i, (image, out) in enumerate(zip(inputs, outputs)):
        arrays[f"{i}_image"] = image
        arrays.update({f"{i}_{k}": v for k, v in out.items() if k != "seconds"})
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    for i, out in enumerate(outputs):
        print(f"image {i} {SHAPES[i]}: classes {list(out['class_ids'])}, clusters {out['clusters'].max() + 1}, "
              f"instances {len(out['instance_scores'])} ({(out['instance_scores'] > 0).sum()} scored)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
