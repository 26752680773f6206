"""``evaluate``: predictions scored against ground truth (instance mAP^r, semantic mIoU)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_evaluate_command", "cmd_evaluate"]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate_folder, format_table
    from ..io.files import json_ready, write_json

    results = evaluate_folder(
        args.predictions, args.ground_truth, classes=args.classes, gt_format=args.gt_format, only_predicted=args.only_predicted
    )
    for message in results["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    print(format_table(results), end="")
    if args.out is not None:
        write_json(args.out, json_ready(results))
        print(f"wrote {args.out}")
    return 0


def add_evaluate_command(sub) -> None:
    """Register ``evaluate`` on the CLI's sub-parsers."""
    from ..evaluation.ground_truth import GT_FORMATS

    p = sub.add_parser("evaluate", help="score predictions (instance mAP^r, semantic mIoU) against ground truth")
    p.add_argument("--predictions", type=Path, required=True, help="folder written by predict (<name>_instances.tif/.json, <name>_semantic.png)")
    p.add_argument("--ground-truth", type=Path, required=True, help="VOC folder (SegmentationObject/, SegmentationClass/), label folder (inst/ [sem/, instances.json]) or COCO .json")
    p.add_argument("--gt-format", default="auto", choices=GT_FORMATS, help="ground-truth layout (default: auto, from what the path holds)")
    p.add_argument("--classes", nargs="+", help="the ground truth's class names in the order of its class values 1, 2, ... (default: from the ground truth; VOC: the 20 VOC classes); the predictions' order comes from their classes.json")
    p.add_argument("--only-predicted", action="store_true", help="score only the images that have predictions (default: a ground-truth image without one counts as empty, with a warning)")
    p.add_argument("--out", type=Path, help="write every number as JSON here (NaN as null)")
    p.set_defaults(func=cmd_evaluate)
