"""Make the demo checkpoint bundled with the plugin (``napari_irnet/data/demo_model.pt``).

    python benchmarks/bench_demo.py --recipe quick   # trains, chooses Params on validation images, scores test images
    python docs/make_demo_checkpoint.py [bench_output/demo/quick/model_chosen.pt]

The demo model (EfficientNet-Lite0 with ImageNet weights, trained on
synthetic cells from image-level labels only, its post-processing chosen on
separate validation images) is copied with its floating-point weights stored
as float16 to halve the file; loading casts them back to float32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from napari_irnet.models.checkpoint import load_checkpoint

    src = Path(argv[0]) if argv else ROOT / "bench_output" / "demo" / "quick" / "model_chosen.pt"
    dst = ROOT / "napari_irnet" / "data" / "demo_model.pt"
    obj = torch.load(src, map_location="cpu", weights_only=True)
    for key in ("cam_state", "irn_state"):
        if obj.get(key) is not None:
            obj[key] = {k: v.half() if v.is_floating_point() else v for k, v in obj[key].items()}
    obj["history"] = list(obj.get("history", [])) + [{"stage": "bundled", "weights": "float16"}]
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, dst)
    load_checkpoint(dst)  # check that it loads
    print(f"{dst.relative_to(ROOT)}: {dst.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
