"""``train-cam`` and ``train-irn``: the two networks from image-level labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_outputs, load_dataset, save_result
from .options import PARAM_HELP, add_dataclass_options, add_image_options, overrides, with_overrides

__all__ = ["add_train_commands", "cmd_train_cam", "cmd_train_irn"]


def cmd_train_cam(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_checkpoint, new_model
    from ..params import Params, TrainParams
    from ..training.cam import train_cam
    from .progress import track_training

    check_outputs(args.out)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
        if args.cam_output_stride is not None and args.cam_output_stride != model.cam_output_stride:
            raise ValueError(f"{args.checkpoint}: its CAM network has output stride {model.cam_output_stride}; "
                             f"--cam-output-stride {args.cam_output_stride} applies to a new network only")  # fmt: skip
        model.params = with_overrides(model.params, args, model.classes)
        model.train_params = with_overrides(model.train_params, args)
        classes, items = load_dataset(args.images, args.labels, model.classes, args.max_pixels)
    else:
        params, train_params = Params(**overrides(args, Params)), TrainParams(**overrides(args, TrainParams))
        classes, items = load_dataset(args.images, args.labels, max_pixels=args.max_pixels)
        params.check_classes(classes)
        weights = None if args.weights == "none" else args.weights
        import torch

        # new layers start from the training seed: reproducible, and equal in every torchrun process
        torch.manual_seed(train_params.seed)
        model = new_model(classes, args.backbone, weights, cam_output_stride=args.cam_output_stride or 16)
        model.params, model.train_params = params, train_params
    print(f"training the CAM network ({model.backbone}) on {len(items)} images, classes {classes}")
    track_training(train_cam(model, items, device=args.device), "CAM")
    return save_result(model, args.out)


def cmd_train_irn(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_checkpoint, new_irnet
    from ..training.irn import make_seeds, train_irn
    from .progress import progress_iter, track_training

    check_outputs(args.out)
    model = load_checkpoint(args.checkpoint)
    model.require("cam", task="train-irn")
    model.params = with_overrides(model.params, args, model.classes)
    model.train_params = with_overrides(model.train_params, args)
    _, items = load_dataset(args.images, args.labels, model.classes, args.max_pixels)
    import torch

    torch.manual_seed(model.train_params.seed)  # new heads: reproducible, equal in every torchrun process
    model.displacement_head = args.displacement_head
    model.irn = new_irnet(model, args.irn_backbone)
    seeds = [None] * len(items)
    for i, seed in progress_iter(make_seeds(model, items, device=args.device), len(items), "seeds"):
        seeds[i] = seed
    print(f"training IRNet on {len(items)} images")
    track_training(train_irn(model, items, seeds, device=args.device), "IRNet")
    return save_result(model, args.out)


def add_train_commands(sub) -> None:
    """Register ``train-cam`` and ``train-irn`` on the CLI's sub-parsers."""
    from ..models.registry import backbone_names
    from ..params import CAM_OUTPUT_STRIDES, DISPLACEMENT_HEADS, Params, TrainParams

    p = sub.add_parser("train-cam", help="train the CAM classifier from image-level labels")
    add_image_options(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--checkpoint", type=Path, help="continue from this checkpoint")
    p.add_argument("--backbone", default="resnet50", choices=backbone_names(), help="the backbone of both networks (default resnet50)")
    p.add_argument("--weights", default="imagenet", help="imagenet | none | PATH of torchvision-layout weights (default imagenet)")
    p.add_argument("--cam-output-stride", type=int, choices=CAM_OUTPUT_STRIDES,
                   help="the CAM network's grid: 16 pixels (the reference's; default) or 8, for objects a few 16-pixel "
                        "cells across such as nuclei (2.5 to 4 times the training time per step; saved in the checkpoint)")
    add_dataclass_options(p, TrainParams, "training parameters")
    add_dataclass_options(p, Params, PARAM_HELP)
    p.set_defaults(func=cmd_train_cam)

    p = sub.add_parser("train-irn", help="train IRNet on relations mined from the CAMs")
    add_image_options(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint with a trained CAM network")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--irn-backbone", default="imagenet", help="IRNet's frozen backbone: imagenet | cam (copy the CAM backbone) | none | PATH (default imagenet)")
    p.add_argument("--displacement-head", default="reference", choices=DISPLACEMENT_HEADS,
                   help="IRNet's last displacement layers: reference (1x1, loads the reference's weights) or "
                        "context (dilated 3x3, for objects a few grid cells across such as nuclei); default reference")
    add_dataclass_options(p, TrainParams, "training parameters")
    add_dataclass_options(p, Params, PARAM_HELP)
    p.set_defaults(func=cmd_train_irn)
