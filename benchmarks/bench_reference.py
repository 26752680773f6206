"""Side by side with the reference implementation (jiwoon-ahn/irn) on real photos: agreement and time.

Both run on CPU in this process with the same deterministic ResNet-50 weights
(``tests/golden/weights.py``): the reference through its own step functions
(``benchmarks/reference_irn.py``), given them as its state dicts; we through
``import_reference`` of those same state-dict files, ``preset="reference"``
and the reference's defaults (CRF seeds included). Each photo runs at full
size and as a 320x240 crop of its centre. Agreement is measured on our whole
chain from the image (no stage is given the reference's result), except the
walks, which are also measured from the reference's clusters, so that a moved
cluster cell does not hide how close the walk itself is.

Usage (needs pydensecrf, which the reference imports, and a checkout of it)::

    OMP_NUM_THREADS=2 python benchmarks/bench_reference.py --reference PATH/TO/irn

The reference gets ``torch.set_flush_denormal(True)``: its dense transition
matrix is full of denormal numbers, and without it its walk is many times
slower. The reference's outputs and times are kept in
``bench_output/reference_irn/`` and reused (``--cache ''`` reruns it). Prints a
markdown table; skips (exit 0) with a message when the data or the reference
is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import reference_irn  # noqa: E402
from golden.weights import golden_model  # noqa: E402

from napari_irnet.models.checkpoint import VOC_CLASSES, import_reference  # noqa: E402
from napari_irnet.pipeline.predict import postprocess, run_networks, walk_instances  # noqa: E402
from napari_irnet.pipeline.stages import propagate  # noqa: E402

#: two photos with three classes each, the smallest full-size ones with several classes
#: (the reference's dense walk holds an N x N matrix of the N = H/4 x W/4 grid cells)
PHOTOS = ("train_000000000049", "train_000000000260")
CROP = (240, 320)


def _photo(data: Path, name: str) -> tuple[np.ndarray, list[int]]:
    from PIL import Image

    image = np.asarray(Image.open(data / "JPEGImages" / f"{name}.jpg").convert("RGB"))
    labels = json.loads((data / "image_level_labels.json").read_text())["image_labels"][name]
    return image, sorted(VOC_CLASSES.index(c) for c in labels)


def _centre_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    y0, x0 = max(0, (h - size[0]) // 2), max(0, (w - size[1]) // 2)
    return np.ascontiguousarray(image[y0 : y0 + size[0], x0 : x0 + size[1]])


def _imported_model(ref, model):
    """Our model read by ``import_reference`` from the reference-format files of ``model``'s weights."""
    cam_state, irn_state = reference_irn.reference_state_dicts(ref, model)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(cam_state, Path(tmp) / "res50_cam.pth")
        torch.save(irn_state, Path(tmp) / "res50_irn.pth")
        return import_reference(Path(tmp) / "res50_cam.pth", Path(tmp) / "res50_irn.pth")


def _ours(model, image, class_ids) -> tuple[object, object, float]:
    start = time.perf_counter()
    outputs = run_networks(model, image, class_ids, model.params, "cpu")
    prediction = postprocess(outputs, model.params, image, "cpu")
    return outputs, prediction, time.perf_counter() - start


def _masks(labels: np.ndarray) -> set[bytes]:
    return {np.packbits(labels == i).tobytes() for i in range(1, int(labels.max()) + 1)}


def _agreement(model, ref: dict, outputs, prediction) -> dict:
    """Per-stage agreement of our chain with the reference's outputs of one image."""

    def max_diff(a, b) -> float:
        return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())

    ours_walk = walk_instances(outputs, ref["clusters"], model.params).numpy()
    p = model.params
    sem_walk = propagate(outputs.cam.strided, outputs.irn.boundary, p.beta, p.walk_steps, p.radius).numpy()
    ours_masks, ref_masks = _masks(prediction.instances.labels), _masks(ref["instances"])
    return {
        "cam": max_diff(outputs.cam.high_res, ref["cam_high_res"]),
        "seeds": 100 * float((prediction.seeds == ref["seeds_crf"]).mean()),
        "boundary": max_diff(outputs.irn.boundary, ref["boundary"]),
        "displacement": max_diff(outputs.irn.displacement, ref["displacement"]),
        "centroids": 100 * float((prediction.centroids == ref["centroids"]).all(0).mean()),
        "clusters": 100 * float((prediction.clusters == ref["clusters"]).mean()),
        "instance_walk": max_diff(ours_walk, ref["instance_walk"]),
        "semantic_walk": max_diff(sem_walk, ref["semantic_walk"]),
        "instances": f"{len(ours_masks & ref_masks)}/{len(ref_masks)} ({len(ours_masks)})",
        "semantic": 100 * float((prediction.semantic == ref["semantic"]).mean()),
    }


def _run_reference(ref, nets, image, class_ids, cache: Path | None) -> dict:
    """The reference's outputs and times, kept in ``cache`` (its walks take minutes on a full photo)."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            out = {k: z[k] for k in z.files if not k.startswith("seconds_")}
            out["seconds"] = {k[len("seconds_"):]: float(z[k]) for k in z.files if k.startswith("seconds_")}
        return out
    torch.set_flush_denormal(True)
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            out = reference_irn.run_image(ref, nets, image, class_ids, Path(tmp))
    finally:
        torch.set_flush_denormal(False)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        seconds = {f"seconds_{k}": v for k, v in out["seconds"].items()}
        np.savez(cache, **{k: v for k, v in out.items() if k != "seconds"}, **seconds)
    return out


HEADER = ("| photo | size | CAM | seeds (CRF) | boundary | displacement | centroids | clusters "
          "| instance walk | semantic walk | instances at IoU 1.0 | semantic | reference s (walks) | ours s | speed-up |")  # fmt: skip


def _row(name: str, image: np.ndarray, a: dict, ref_s: dict, ours_s: float) -> str:
    total = sum(v for k, v in ref_s.items() if k != "walks")
    return (f"| {name} | {image.shape[1]}x{image.shape[0]} | {a['cam']:.1e} | {a['seeds']:.2f}% | {a['boundary']:.1e} "
            f"| {a['displacement']:.1e} | {a['centroids']:.2f}% | {a['clusters']:.2f}% | {a['instance_walk']:.1e} "
            f"| {a['semantic_walk']:.1e} | {a['instances']} | {a['semantic']:.3f}% | {total:.1f} ({ref_s['walks']:.1f}) "
            f"| {ours_s:.1f} | {total / ours_s:.0f}x |")  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="folder of a checkout of jiwoon-ahn/irn")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "coco_voc")
    ap.add_argument("--photos", nargs="+", default=list(PHOTOS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crops-only", action="store_true", help="skip the full-size photos (minutes each for the reference)")
    ap.add_argument("--cache", default=str(ROOT / "bench_output" / "reference_irn"),
                    help="where the reference's outputs and times are kept and reused ('' to always rerun)")  # fmt: skip
    args = ap.parse_args(argv)
    if not (args.data / "JPEGImages").is_dir():
        print(f"skipped: no coco_voc data at {args.data} (see the shared data README)")
        return 0
    try:
        ref = reference_irn.load_reference(args.reference)
    except reference_irn.ReferenceMissing as exc:
        print(f"skipped: {exc}")
        return 0
    torch.set_num_threads(args.threads)
    golden = golden_model()
    model = _imported_model(ref, golden)
    nets = reference_irn.prepare(ref, golden)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {model.params.preset!r}\n")
    print(HEADER)
    print("|" + " --- |" * (HEADER.count("|") - 1))
    for name in args.photos:
        photo, class_ids = _photo(args.data, name)
        for image in ([] if args.crops_only else [photo]) + [_centre_crop(photo, CROP)]:
            cache = Path(args.cache) / f"{name}_{image.shape[1]}x{image.shape[0]}.npz" if args.cache else None
            ref_out = _run_reference(ref, nets, image, class_ids, cache)
            outputs, prediction, ours_s = _ours(model, image, class_ids)
            print(_row(name, image, _agreement(model, ref_out, outputs, prediction), ref_out["seconds"], ours_s), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
