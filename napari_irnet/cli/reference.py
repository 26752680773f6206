"""``import-reference``: weights trained with the reference implementation (jiwoon-ahn/irn) as a checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import check_outputs

__all__ = ["add_import_reference_command", "cmd_import_reference"]


def cmd_import_reference(args: argparse.Namespace) -> int:
    from ..models.checkpoint import VOC_CLASSES, import_reference, save_checkpoint

    if args.cam is None and args.irn is None:
        print("error: give --cam, --irn or both (the reference's res50_cam.pth, res50_irn.pth)", file=sys.stderr)
        return 2
    check_outputs(args.out)
    classes = args.classes or list(VOC_CLASSES)
    model = import_reference(args.cam, args.irn, classes)
    save_checkpoint(model, args.out)
    print(f"saved {args.out} (preset 'reference')")
    return 0


def add_import_reference_command(sub) -> None:
    """Register ``import-reference`` on the CLI's sub-parsers."""
    p = sub.add_parser("import-reference", help="convert reference-implementation weights (res50_cam.pth, res50_irn.pth)")
    p.add_argument("--cam", type=Path, help="res50_cam.pth")
    p.add_argument("--irn", type=Path, help="res50_irn.pth")
    p.add_argument("--classes", nargs="+", help="class names in the classifier's order (default: the 20 VOC classes)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_import_reference)
