"""Human in the loop on CoNSeP: how much do k corrected patches improve IRNet?

    python benchmarks/bench_hitl.py [--ks 0 5 10 20 50] [--weak-images 100] [--finetune-epochs 2 | --finetune-steps 200]
                                    [bench_quality options, e.g. --backbone efficientnet_lite0]

Starts from the weakly supervised models of ``benchmarks/bench_quality.py``
(the CAM network and the IRNet trained from CAM seeds, reused from its cache
``bench_output/quality/consep_512`` or trained there first), then simulates an
annotator: the ground-truth instances of k training patches, with their
classes, are taken as their corrections. For every k, the weak model is
fine-tuned with :func:`napari_irnet.training.finetune.finetune` on those k patches
(exact relation labels, drawn ``correction_weight`` times per epoch; their
class maps train the CAM network per pixel, ``TrainParams.finetune_cam``)
plus a fixed subset of ``--weak-images`` uncorrected patches with their CAM
seeds, and scored on the test patches (instance mAP^r at 0.5 and 0.7,
semantic mIoU, VOC protocol) with its own CAMs and IRNet outputs. k = 0 is
the same fine-tuning budget without corrections, the fair control. The
corrected patches are nested (the 5 of k = 5 are among the 10 of k = 10, ...)
and spread over the training tiles. The upper bound is bench_quality's (c):
both networks trained from the masks of all training patches.

Prints a markdown table (with the fine-tuned CAM network's own mIoU, to tell
its part from IRNet's), writes ``hitl/hitl.json`` and ``hitl/hitl.png``
(mAP^r 0.5 and mIoU against k; ``hitl_<tag>.*`` with ``--tag``) to the
output folder (``--figure-dir`` copies the plot); with
``--displacement-head context`` the weak and fully supervised IRNets have
the context head, and the folder is ``hitl_context``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_quality as bq  # noqa: E402


def _float_keys(d: dict) -> dict:
    """JSON object hook: the IoU thresholds of the mAP tables back to float keys."""
    return {float(k) if k.replace(".", "", 1).isdigit() else k: v for k, v in d.items()}


def pick_corrected(items, k_max: int, seed: int = 0) -> list[int]:
    """Indices of k_max training patches, round-robin over tiles, in a fixed random order."""
    rng = np.random.default_rng(seed)
    tiles: dict[str, list[int]] = {}
    for i in rng.permutation(len(items)):
        tiles.setdefault(items[i].name.rsplit("_", 1)[0], []).append(int(i))
    order, queues = [], [tiles[t] for t in sorted(tiles)]
    while len(order) < k_max and any(queues):
        for q in queues:
            if q and len(order) < k_max:
                order.append(q.pop(0))
    return order


def plot(rows: list[dict], upper: dict | None, path: Path, size=(560, 380)) -> None:
    """mAP^r 0.5 and mIoU (%) against k as a PNG line chart (PIL only), the upper bound as dashes."""
    from PIL import Image, ImageDraw

    series = (("mAP@0.5", "mAP^r 0.5", (0, 90, 200)), ("mIoU", "mIoU", (0, 150, 60)))
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, size[0] - 20, 40, size[1] - 50
    ks = [r["k"] for r in rows]
    values = [100 * r[key] for r in rows for key, _, _ in series if r[key] == r[key]]
    values += [100 * upper[key] for key, _, _ in series if upper and upper[key] == upper[key]]
    ymax = max(values + [1.0]) * 1.15
    xs = {k: left + (right - left) * i / max(1, len(ks) - 1) for i, k in enumerate(ks)}

    def y(v: float) -> float:
        return bottom - (bottom - top) * v / ymax

    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    for t in np.linspace(0, ymax, 5):
        draw.line([(left - 4, y(t)), (left, y(t))], fill="black")
        draw.text((8, y(t) - 6), f"{t:.1f}", fill="black")
    for k, x in xs.items():
        draw.text((x - 6, bottom + 6), str(k), fill="black")
    draw.text(((left + right) / 2 - 80, bottom + 24), "k corrected training patches", fill="black")
    draw.text((left, 6), "CoNSeP test, % (dashed: fully supervised)", fill="black")
    for n, (key, label, colour) in enumerate(series):
        draw.text((left + 10 + 120 * n, 22), label, fill=colour)
        if upper and upper[key] == upper[key]:
            for x0 in range(left, right, 12):
                draw.line([(x0, y(100 * upper[key])), (min(x0 + 6, right), y(100 * upper[key]))], fill=colour)
        points = [(xs[r["k"]], y(100 * r[key])) for r in rows if r[key] == r[key]]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    img.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 5, 10, 20, 50])
    ap.add_argument("--weak-images", type=int, default=100, help="uncorrected patches in every fine-tuning set")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-steps", type=int, default=0,
                    help="instead of --finetune-epochs: as many epochs as give at least this many steps, for every k alike")
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--finetune-seed", type=int, default=0, help="TrainParams.seed of the fine-tuning (crops, order, fresh layers)")
    ap.add_argument("--correction-weight", type=int, default=4)
    ap.add_argument("--weak-displacement-weight", type=float, default=1.0,
                    help="weight of the uncorrected patches' pairs in the displacement losses (TrainParams.weak_displacement_weight)")
    ap.add_argument("--reset-displacement", action="store_true",
                    help="start the displacement branch afresh when there are corrections (TrainParams.finetune_reset_displacement)")
    ap.add_argument("--skip-upper-bound", action="store_true", help="do not train or score the fully supervised networks")
    ap.add_argument("--no-finetune-cam", action="store_true", help="fine-tune IRNet only (the CAM network stays the weak one)")
    own, rest = ap.parse_known_args(argv)
    args = bq.parse_args(["--dataset", "consep", *rest])
    data = args.data or bq.ROOT.parent / "shared" / "data" / "consep"
    if not data.is_dir():
        print(f"skipped: no data at {data} (see the shared data README; the benchmark needs CoNSeP)")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    from napari_irnet.io.files import json_ready, write_json
    from napari_irnet.pipeline.inference import resolve_device
    from napari_irnet.training.datasets import LabelledImage
    from napari_irnet.training.finetune import finetune
    from napari_irnet.training.targets import class_map_target, relation_labels

    device = resolve_device(args.device)
    out = bq.output_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    classes, train = bq.load_consep(data, "train", args.long_side, args.train_limit)
    _, test = bq.load_consep(data, "test", args.long_side, args.test_limit)
    params = bq.make_params(args)
    cam_key = "_".join(f"{s:g}" for s in params.cam_scales)

    cam_model = bq.get_cam_model(args, classes, train, out, timings)
    cam_model.params = params
    cams = {}
    cams.update(bq.get_cams(cam_model, train, params, device, out / f"cams_train_{cam_key}.pt", timings, "train"))
    cams.update(bq.get_cams(cam_model, test, params, device, out / f"cams_test_{cam_key}.pt", timings, "test"))
    seeds = bq.get_seeds(train, cams, params, classes, out / f"seeds_{cam_key}_{params.seed_fg_threshold:g}_{params.seed_bg_threshold:g}.npz")
    weak_name = bq.weak_irn_name(args, params)
    weak = bq.get_irn_model(args, cam_model, train, seeds, out / f"irn_{weak_name}.pt", "weak", timings)
    full_labels = [relation_labels(it.gt_inst_work) for it in train]
    hitl = out / f"hitl{bq._head_suffix(args)}"  # this benchmark's own caches and results
    hitl.mkdir(exist_ok=True)
    irn_full = cams_full = None
    if not own.skip_upper_bound:
        name = bq.full_irn_name(args)
        full = bq.get_irn_model(args, cam_model, train, full_labels, out / f"irn_{name}.pt", "full", timings, instances=True)
        irn_full = bq.get_irn_outputs(full, test, params, device, out / f"irn_{name}_test.pt", timings, "full_test")
        cam_full = bq.get_cam_model(args, classes, train, out, timings, from_masks=True)
        cams_full = bq.get_cams(cam_full, test, params, device, out / f"cams_full_test_{cam_key}.pt", timings, "full_test")

    ks = sorted(set(own.ks))
    corrected = pick_corrected(train, max(ks))
    rng = np.random.default_rng(1)
    pool = [i for i in rng.permutation(len(train)) if i not in set(corrected)]
    weak_subset = [int(i) for i in pool[: own.weak_images]]
    tp = bq.train_params(args)
    tp.finetune_epochs, tp.finetune_learning_rate, tp.correction_weight = own.finetune_epochs, own.finetune_lr, own.correction_weight
    tp.finetune_cam = not own.no_finetune_cam
    tp.seed = own.finetune_seed
    tp.weak_displacement_weight = own.weak_displacement_weight
    tp.finetune_reset_displacement = own.reset_displacement

    def score(irn_outputs, test_cams, with_upper: bool = False) -> tuple[dict, dict | None]:
        """The IRNet scores (with the CAM's own mIoU as ``cam_mIoU``) and the upper bound's."""
        full = irn_full if with_upper else None
        res, _, _ = bq.evaluate_split(test, test_cams, irn_outputs, full, params, device, classes, cams_full=cams_full, baselines=False)
        return {**res["IRNet"], "cam_mIoU": res["CAM"]["mIoU"]}, res.get("(c) upper bound")

    rows = []
    # the weak model's and the upper bound's scores depend only on the cached models and the post-processing
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    base_file = hitl / f"scores_{weak_name}_{'with' if irn_full is not None else 'no'}_upper_{digest}.json"
    if base_file.exists():
        base, upper = json.loads(base_file.read_text(), object_hook=_float_keys)
        bq._log(f"weak model and upper bound scores from {base_file.name}")
    else:
        bq._log("scoring the weak model (no fine-tuning)")
        base, upper = score(bq.get_irn_outputs(weak, test, params, device, out / f"irn_{weak_name}_test.pt", timings, "weak_test"), cams, True)
        write_json(base_file, json_ready([base, upper]))
    rows.append({"k": "weak", "mAP@0.5": base["mAP"][0.5], "mAP@0.7": base["mAP"][0.7], "mIoU": base["mIoU"], "cam_mIoU": base["cam_mIoU"],
                 "minutes": 0.0, "images": 0})  # fmt: skip
    for k in ks:
        strong_idx = corrected[:k]
        idx = strong_idx + weak_subset
        items = [LabelledImage(train[i].name, train[i].image, train[i].class_ids) for i in idx]
        labels = [full_labels[i] for i in strong_idx] + [seeds[i].astype(np.int32) for i in weak_subset]
        strong = [True] * k + [False] * len(weak_subset)
        class_maps = [class_map_target(train[i].gt_inst_work, train[i].gt_labels) for i in strong_idx] + [None] * len(weak_subset)
        if not items:
            bq._log(f"k={k}: nothing to fine-tune on (no corrected and no uncorrected patches): the weak model's row stands")
            continue
        tp_k = copy.deepcopy(tp)
        if own.finetune_steps:  # the same number of steps for every k: the epochs follow the set's size
            draws = k * tp.correction_weight + len(weak_subset)
            tp_k.finetune_epochs = -(-own.finetune_steps // max(1, draws // max(1, min(tp.irn_batch_size, draws))))
        model = copy.deepcopy(weak)
        t0 = time.perf_counter()
        history = bq._run_loop(finetune(model, items, labels, strong, tp_k, device, class_maps=class_maps), f"fine-tune k={k}", every=20)
        minutes = (time.perf_counter() - t0) / 60
        outputs = bq.get_irn_outputs(model, test, params, device, hitl / f"irn_k{k}_test.pt", timings, f"k{k}")
        test_cams = cams
        if model.history[-1].get("cam_trained"):
            test_cams = bq.get_cams(model, test, params, device, hitl / f"cams_k{k}_test.pt", timings, f"k{k}")
            (hitl / f"cams_k{k}_test.pt").unlink()  # they depend on this run's fine-tuning
        res, _ = score(outputs, test_cams)
        rows.append({
            "k": k, "mAP@0.5": res["mAP"][0.5], "mAP@0.7": res["mAP"][0.7], "mIoU": res["mIoU"], "cam_mIoU": res["cam_mIoU"], "minutes": minutes,
            "images": len(items), "epochs": tp_k.finetune_epochs, "steps": history[-1]["step"] if history else 0,
            "images_per_second": history[-1].get("images_per_second") if history else None,
            "cam_trained": bool(model.history[-1].get("cam_trained")),
        })  # fmt: skip
        bq._log(f"k={k}: mAP@0.5 {res['mAP'][0.5]:.3f}, mAP@0.7 {res['mAP'][0.7]:.3f}, mIoU {res['mIoU']:.3f}, CAM mIoU {res['cam_mIoU']:.3f}")
        (hitl / f"irn_k{k}_test.pt").unlink(missing_ok=True)  # outputs depend on this run's fine-tuning
    nan = float("nan")
    ub = {"mAP@0.5": upper["mAP"][0.5], "mAP@0.7": upper["mAP"][0.7], "mIoU": upper["mIoU"]} if upper else {"mAP@0.5": nan, "mAP@0.7": nan, "mIoU": nan}

    print(f"\nCoNSeP test ({len(test)} patches), fine-tuned from the weak model; {len(weak_subset)} uncorrected patches "
          f"in every fine-tuning set, {f'{own.finetune_steps}+ steps' if own.finetune_steps else f'{tp.finetune_epochs} epochs'}, lr {tp.finetune_learning_rate:g}, "
          f"corrected patches drawn {tp.correction_weight}x, weak displacement weight {tp.weak_displacement_weight:g}, displacement branch reset: {tp.finetune_reset_displacement}; CAM network fine-tuned from the class maps: {tp.finetune_cam}; "
          f"device {device}, {args.threads} threads\n")  # fmt: skip
    print("| k corrected | mAP^r 0.5 | mAP^r 0.7 | mIoU | CAM mIoU | % of upper bound (0.5) | fine-tune minutes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        frac = r["mAP@0.5"] / ub["mAP@0.5"] * 100 if ub["mAP@0.5"] == ub["mAP@0.5"] and ub["mAP@0.5"] else nan
        print(f"| {r['k']} | {r['mAP@0.5']:.3f} | {r['mAP@0.7']:.3f} | {r['mIoU']:.3f} | {r['cam_mIoU']:.3f} | {frac:.0f}% | {r['minutes']:.1f} |")
    print(f"| fully supervised (all {len(train)} patches) | {ub['mAP@0.5']:.3f} | {ub['mAP@0.7']:.3f} | {ub['mIoU']:.3f} | | 100% | |")
    record = {"rows": rows, "upper_bound": ub, "corrected": [train[i].name for i in corrected], "weak_subset": len(weak_subset),
              "train_params": tp.to_dict(), "params": params.to_dict(), "device": str(device), "threads": args.threads}  # fmt: skip
    name = f"hitl{'_' + args.tag if args.tag else ''}"
    write_json(hitl / f"{name}.json", json_ready(record))
    plot([r for r in rows if r["k"] != "weak"], ub if upper else None, hitl / f"{name}.png")
    if args.figure_dir:
        args.figure_dir.mkdir(parents=True, exist_ok=True)
        (args.figure_dir / f"{name}_consep.png").write_bytes((hitl / f"{name}.png").read_bytes())
    print(f"\nwrote {hitl / (name + '.json')} and {hitl / (name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
