"""The local instance walk against the global one: same instances, same scores?

    python benchmarks/bench_walk_agreement.py --cells 512 1024
    python benchmarks/bench_walk_agreement.py --consep bench_output/quality/consep_512

Every image is post-processed twice from the same network outputs, with
``instance_walk="global"`` (every instance over the whole image, as the
reference does) and ``"local"`` (windows, ``pipeline/instance_walk.py``), and
the two compared:

- *pixels agreeing*: the share of pixels given the same plane (class and
  cluster) or background by both, at the model's instance background level;
- *instances*: how many each finds;
- mAP^r at IoU 0.5 of each against the ground truth (PASCAL VOC protocol,
  the scorer of ``bench_quality.py``);
- the seconds from the network outputs to the instances with each.

Data: ``--cells S ...``: the bundled sample cells tiled to S × S with the
bundled demo model (about one cell per 100 × 100 pixels); ``--consep DIR``:
the CoNSeP test patches at the quality benchmark's working size, from the
network outputs ``bench_quality.py --dataset consep`` cached in ``DIR`` (CAMs
``cams_test_*.pt`` and every ``irn_*_test.pt``, with the parameters saved in
the matching ``irn_*.pt`` checkpoint). Goals (issue #21): ≥ 99.5 % of the
pixels agreeing and mAP^r 0.5 within 0.2 points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _both(outputs, params, image=None) -> dict:
    """Post-process with each walk; returns {method: (prediction, walk seconds)}."""
    from napari_irnet.pipeline.cache import StageCache

    out = {}
    for method in ("global", "local"):
        cache = StageCache(outputs, params.replace(instance_walk=method), image)
        t0 = time.perf_counter()
        pred = cache.update(with_semantic=False)
        out[method] = (pred, cache, time.perf_counter() - t0)
    return out


def _agreement(both: dict, threshold: float) -> tuple[int, int]:
    """(pixels agreeing, pixels) of the two walks' assignments at ``threshold``."""
    a = both["global"][1]._slots["iwalk"].value
    b = both["local"][1]._slots["iwalk"].value
    if a is None or b is None:
        same = (a is None) == (b is None)
        n = both["global"][0].instances.labels.size
        return (n if same else 0), n
    fa, fb = (a[0] / a[2]).numpy() >= threshold, (b[0] / b[2]).numpy() >= threshold
    same = (fa == fb) & (~fa | (a[1].numpy() == b[1].numpy()))
    return int(same.sum()), int(same.size)


def consep(cache_dir: Path, data: Path, long_side: int, limit: int) -> list[str]:
    import torch
    from bench_quality import Scorer, load_consep

    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.pipeline.inference import CAMOutput, IRNetOutput, NetworkOutputs

    classes, items = load_consep(data, "test", long_side, limit)
    if not sorted(cache_dir.glob("cams_test_*.pt")):
        raise SystemExit(f"{cache_dir}: no cams_test_*.pt: run bench_quality.py --dataset consep first")
    rows = []
    for irn_file in sorted(cache_dir.glob("irn_*_test.pt")):
        name = irn_file.stem.removeprefix("irn_").removesuffix("_test")
        checkpoint = cache_dir / f"irn_{name}.pt"
        if not checkpoint.is_file():
            continue
        # the upper bound's IRNet goes with its own CAMs (trained from masks), as in bench_quality
        cam_files = sorted(cache_dir.glob("cams_full_test_*.pt")) if name.startswith("full") else []
        cam_files = cam_files or sorted(cache_dir.glob("cams_test_*.pt"))
        cams = torch.load(cam_files[0], weights_only=True)
        params = load_checkpoint(checkpoint).params
        irn = torch.load(irn_file, weights_only=True)
        scorers = {m: Scorer(len(classes)) for m in ("global", "local")}
        agree = total = 0
        counts = {"global": 0, "local": 0}
        seconds = {"global": 0.0, "local": 0.0}
        for it in items:
            strided, high = cams[it.name]
            boundary, displacement = irn[it.name]
            outputs = NetworkOutputs(it.image.shape[:2], CAMOutput(np.asarray(it.class_ids), strided.float(), high.float()),
                                     IRNetOutput(boundary.float(), displacement.float()))  # fmt: skip
            both = _both(outputs, params)
            a, n = _agreement(both, params.instance_bg_threshold)
            agree, total = agree + a, total + n
            for m, (pred, _, sec) in both.items():
                scorers[m].add(it, np.zeros(it.image.shape[:2], np.int32), pred.instances)
                counts[m] += len(pred.instances.records)
                seconds[m] += sec
        ap = {m: 100 * scorers[m].result()["mAP"][0.5] for m in scorers}
        rows.append(f"| CoNSeP test, {len(items)} patches at {long_side} px, IRNet {name}, {cam_files[0].stem} | {counts['local']} / {counts['global']} | "
                    f"{100 * agree / total:.3f} % | {ap['local']:.2f} / {ap['global']:.2f} | {seconds['local']:.1f} / {seconds['global']:.1f} |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def cells(sizes: list[int]) -> list[str]:
    from bench_quality import Scorer
    from bench_scale import tiled_sample_item

    from napari_irnet.models.checkpoint import load_checkpoint
    from napari_irnet.pipeline.predict import run_networks

    model = load_checkpoint(ROOT / "napari_irnet" / "data" / "demo_model.pt")
    params = model.params
    rows = []
    for size in sizes:
        image, item = tiled_sample_item(size, model.classes)
        outputs = run_networks(model, image, item.class_ids, params, "cpu")
        both = _both(outputs, params, image)
        a, n = _agreement(both, params.instance_bg_threshold)
        ap = {}
        for m, (pred, _, _) in both.items():
            scorer = Scorer(len(model.classes))
            scorer.add(item, pred.semantic if pred.semantic is not None else np.zeros(image.shape[:2], np.int32), pred.instances)
            ap[m] = 100 * scorer.result()["mAP"][0.5]
        counts = {m: len(both[m][0].instances.records) for m in both}
        rows.append(f"| sample cells tiled to {size}², demo model | {counts['local']} / {counts['global']} | {100 * a / n:.3f} % | "
                    f"{ap['local']:.2f} / {ap['global']:.2f} | {both['local'][2]:.1f} / {both['global'][2]:.1f} |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="*", default=[], metavar="S")
    ap.add_argument("--consep", type=Path, metavar="DIR", help="bench_quality.py's cache folder of CoNSeP")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "consep")
    ap.add_argument("--long-side", type=int, default=512)
    ap.add_argument("--limit", type=int, default=0, help="only the first N test patches")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| images | instances local / global | pixels agreeing | mAP^r 0.5 local / global | seconds to instances local / global |")
    print("|---|---|---|---|---|", flush=True)
    cells(args.cells)
    if args.consep:
        if not args.data.is_dir():
            print(f"{args.data}: no CoNSeP data here: skipped")
            return
        consep(args.consep, args.data, args.long_side, args.limit)


if __name__ == "__main__":
    main()
