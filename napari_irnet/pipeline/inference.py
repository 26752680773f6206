"""Network inference at any image size: multi-scale CAMs and IRNet outputs.

These are the two expensive, cached stages of the pipeline. Everything after
them (:mod:`napari_irnet.pipeline.stages`) is cheap and re-runs whenever a
parameter changes.

Images larger than ``Params.tile_size`` are cut into overlapping tiles whose
origins are multiples of 16 pixels, so tile outputs align with the stride-4 grid
and the CAM network's (stride 16, or 8: ``CAMNet.output_stride``); each tile contributes the centre of its output, without the
half-overlap margins. GroupNorm in the IRNet heads makes tiled outputs depend
slightly on the tile extent: a modelling change, not a bug (see
``irnet-method.md`` section 5.2).

``Params.network_precision`` runs the networks' convolutions in bfloat16
(``torch.autocast``) where the device has bfloat16 matrix units: the maps
change by up to about 5 % of their range, 96 to 97 % of the instances are
found again and mAP^r moves by about a point either way on the tiled sample
cells (BENCHMARKS.md, "Networks in bfloat16"); every output is float32.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..models.networks import CAMNet, IRNet, network_layout, normalize_image
from ..params import Params


class DeviceError(RuntimeError, ValueError):
    """A device that is unknown or not on this machine; the message names it."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> CUDA when available, else Apple MPS when available, else CPU.

    Raises
    ------
    DeviceError
        For a name torch does not know, or a device this machine lacks.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise DeviceError(f"device {device!r} was asked for but {why}: use cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} was asked for but there are {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...)")
    elif dev.type == "mps" and not _mps_available():
        raise DeviceError(f"device {device!r} was asked for but Apple MPS is not available here: use cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return dev


def device_choices() -> list[str]:
    """The device names a user can pick here: ``auto``, ``cpu``, then ``cuda`` and ``mps`` when present."""
    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
    if _mps_available():
        choices.append("mps")
    return choices


def describe_device(choice: str) -> str:
    """The device ``choice`` resolves to, as text; ``unavailable (why)`` when it cannot be used."""
    try:
        return str(resolve_device(choice))
    except RuntimeError as exc:
        return f"unavailable ({exc})"


def bfloat16_units(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 matrix units (CPU: Intel AMX; CUDA: compute capability 8.0 or later)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # no public query in torch yet
        return bool(amx()) if amx is not None else False
    return False


def network_dtype(params: Params, device: torch.device) -> torch.dtype:
    """The number format ``params.network_precision`` picks on ``device`` (float32 or bfloat16).

    ``"auto"`` is bfloat16 where :func:`bfloat16_units` says the device has
    them, except with ``preset="reference"`` (which reproduces the
    reference's float32 outputs); devices other than the CPU and CUDA always
    run float32.
    """
    choice = params.network_precision
    if choice == "auto":
        choice = "bfloat16" if params.preset != "reference" and bfloat16_units(device) else "float32"
    return torch.bfloat16 if choice == "bfloat16" and device.type in ("cpu", "cuda") else torch.float32


def network_precision(params: Params, device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which the networks run in :func:`network_dtype`; cast their outputs with ``.float()``."""
    dtype = network_dtype(params, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def strided_size(shape: Sequence[int], stride: int = 4) -> tuple[int, int]:
    """Grid size ceil(H/stride), ceil(W/stride) as in the reference."""
    return ((shape[0] - 1) // stride + 1, (shape[1] - 1) // stride + 1)


def image_to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> normalised (1, 3, H, W) float32 on ``device``."""
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return normalize_image(t.to(device)).unsqueeze(0)


def network_input(image: np.ndarray, device: torch.device, tile: int) -> tuple[torch.Tensor, Callable | None]:
    """The networks' input and what each tile needs before the network.

    An image that fits one tile is normalised whole (:func:`image_to_tensor`);
    a larger one stays 8-bit and each tile is normalised on its own (the same
    values, a quarter of the memory: 1.8 GB less for the 1.5× CAM scale of an
    8192² image).
    """
    if image.shape[0] <= tile and image.shape[1] <= tile:
        return image_to_tensor(image, device), None
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device).permute(2, 0, 1)[None]
    return pixels, lambda t: normalize_image(t.contiguous())


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Bicubic PIL rescale to round(H*s), round(W*s), as the reference does."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def _tile_layout(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Origins (multiples of 16) and extent of the fewest tiles of at most ``tile`` covering ``length``.

    The tiles are spread evenly, each as short as the overlap allows, so a
    2048 px side takes three tiles of 784 px rather than three of 1024 px.
    Consecutive tiles share at least ``overlap`` pixels.
    """
    if length <= tile:
        return [0], length
    n = max(2, math.ceil((length - overlap) / max(16, tile - overlap)))
    while True:
        extent = min(tile, 16 * math.ceil((length + (n - 1) * overlap) / n / 16) + 16)
        last = 16 * math.ceil((length - extent) / 16)
        starts = [16 * math.floor(i * last / (n - 1) / 16) for i in range(n - 1)] + [last]
        if all(b - a <= extent - overlap for a, b in zip(starts, starts[1:])):
            return starts, extent
        n += 1


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    stride: int,
    tile: int,
    overlap: int,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply a fully convolutional ``fn`` to (1, 3, H, W) in overlapping tiles.

    ``fn`` maps a (1, 3, h, w) input to (1, C, ceil(h/stride), ceil(w/stride)).
    Returns (1, C, ceil(H/stride), ceil(W/stride)). Without tiling (both sides
    at most ``tile``) this is exactly ``fn(x)``. ``prepare``, when given, is
    applied to every tile before ``fn`` (e.g. the normalisation of 8-bit
    pixels).
    """
    if prepare is not None:
        fn = lambda t, f=fn: f(prepare(t))  # noqa: E731
    H, W = x.shape[-2:]
    if H <= tile and W <= tile:
        return fn(x)
    tile = max(64, tile // 16 * 16)
    (ys, th), (xs, tw) = _tile_layout(H, tile, overlap), _tile_layout(W, tile, overlap)
    out_h, out_w = strided_size((H, W), stride)
    out = None
    half = overlap // 2 // stride
    for y0 in ys:
        for x0 in xs:
            part = fn(x[..., y0 : y0 + th, x0 : x0 + tw])
            if out is None:
                out = part.new_zeros(part.shape[:2] + (out_h, out_w))
            gy, gx = y0 // stride, x0 // stride
            ph, pw = part.shape[-2:]
            top = 0 if y0 == ys[0] else half
            left = 0 if x0 == xs[0] else half
            bottom = ph if y0 == ys[-1] else ph - half
            right = pw if x0 == xs[-1] else pw - half
            out[..., gy + top : gy + bottom, gx + left : gx + right] = part[..., top:bottom, left:right]
    return out


@dataclass
class CAMOutput:
    """Class activation maps of the classes present in one image.

    Attributes
    ----------
    class_ids : (C,) int array
        0-based indices into the model's class list, one per map.
    strided : (C, h, w) float32 tensor
        Stride-4 maps, h = ceil(H/4), each divided by its own maximum.
    high_res : (C, H, W) float32 tensor
        Full-resolution maps, each divided by its own maximum.
    """

    class_ids: np.ndarray
    strided: torch.Tensor
    high_res: torch.Tensor


@torch.no_grad()
def compute_cams(
    model: CAMNet,
    image: np.ndarray,
    class_ids: Sequence[int],
    params: Params = Params(),
    device: str | torch.device | None = "auto",
) -> CAMOutput:
    """Multi-scale + flip CAMs (reference ``make_cam``) of the given classes.

    Parameters
    ----------
    model : CAMNet
    image : (H, W, 3) uint8 array
    class_ids : sequence of int
        Classes whose maps are kept (the image-level labels), 0-based.
    params : Params
        ``cam_scales``, ``tile_size``, ``tile_overlap`` and
        ``network_precision`` are used.
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    H, W = image.shape[:2]
    size4 = strided_size((H, W), 4)
    stride = getattr(model, "output_stride", 16)  # each CAM cell covers stride x stride pixels
    size_up = (stride * math.ceil(H / stride), stride * math.ceil(W / stride))
    ids = np.asarray(list(class_ids), dtype=np.int64)
    strided = torch.zeros((len(ids),) + size4, device=dev)
    high = torch.zeros((len(ids),) + size_up, device=dev)
    if len(ids) == 0:
        return CAMOutput(ids, strided.cpu(), high[:, :H, :W].cpu())
    sel = torch.from_numpy(ids).to(dev)

    def cam_with_flip(t: torch.Tensor) -> torch.Tensor:
        with network_precision(params, dev):
            both = model.cam(network_layout(torch.cat([t, t.flip(-1)], dim=0)))
        both = both.float()
        return (both[0] + both[1].flip(-1)).unsqueeze(0)

    for s in params.cam_scales:
        x, prepare = network_input(rescale_image(image, s), dev, params.tile_size)
        cam = run_tiled(cam_with_flip, x, stride, params.tile_size, params.tile_overlap, prepare)[:, sel]
        del x
        strided += F.interpolate(cam, size4, mode="bilinear", align_corners=False)[0]
        for c in range(cam.shape[1]):  # one class at a time: a full-size temporary of one map, not of all
            high[c] += F.interpolate(cam[:, c : c + 1], size_up, mode="bilinear", align_corners=False)[0, 0]
    high = high[:, :H, :W]
    strided /= F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5
    high /= F.adaptive_max_pool2d(high, (1, 1)) + 1e-5
    return CAMOutput(ids, strided.float().cpu(), high.float().cpu())


@dataclass
class IRNetOutput:
    """IRNet outputs of one image on the stride-4 grid.

    Attributes
    ----------
    boundary : (h, w) float32 tensor in [0, 1]
        Class-boundary probability, flip-averaged logits through a sigmoid.
    displacement : (2, h, w) float32 tensor
        Displacement to the instance centroid (dy, dx) in grid units, from the
        unflipped image, mean-shift corrected.
    """

    boundary: torch.Tensor
    displacement: torch.Tensor


@torch.no_grad()
def compute_irnet(
    model: IRNet,
    image: np.ndarray,
    params: Params = Params(),
    device: str | torch.device | None = "auto",
) -> IRNetOutput:
    """Boundary map and displacement field (reference ``EdgeDisplacement``).

    With ``params.preset == "reference"`` the input is zero-padded (in
    normalised space) to 512x512 as the reference does, which changes the
    GroupNorm statistics; images larger than 512 cannot be reproduced that way
    and are run unpadded with a warning.
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    H, W = image.shape[:2]
    h, w = strided_size((H, W), 4)
    x, prepare = network_input(image, dev, params.tile_size)

    def both(t: torch.Tensor) -> torch.Tensor:
        th, tw = t.shape[-2:]
        # flip first, then pad: the reference's data loader flips and its network
        # pads, so both halves carry their padding at the bottom and the right
        pair = torch.cat([t, t.flip(-1)], dim=0)
        if params.preset == "reference":
            if th <= 512 and tw <= 512:
                pair = F.pad(pair, [0, 512 - tw, 0, 512 - th])
            else:
                warnings.warn("preset 'reference' pads to 512x512; this image is larger and runs unpadded", stacklevel=3)
        with network_precision(params, dev):
            edge, disp = model(network_layout(pair))
        edge, disp = edge.float(), disp.float()
        gh, gw = strided_size((th, tw), 4)
        edge, disp = edge[..., :gh, :gw], disp[..., :gh, :gw]
        edge = edge[0] / 2 + edge[1].flip(-1) / 2
        return torch.cat([edge, disp[0]], dim=0).unsqueeze(0)

    out = run_tiled(both, x, 4, params.tile_size, params.tile_overlap, prepare)[0, :, :h, :w]
    return IRNetOutput(torch.sigmoid(out[0]).float().cpu(), out[1:3].float().cpu())


@dataclass
class NetworkOutputs:
    """The cached outputs of both networks for one image (CPU tensors).

    ``class_names`` is the model's class list (``cam.class_ids`` index it),
    for the parameters given per class name (:attr:`Params.seed_class_thresholds`);
    empty when the outputs come from elsewhere.
    """

    image_shape: tuple[int, int]
    cam: CAMOutput
    irn: IRNetOutput
    class_names: tuple[str, ...] = ()
