"""The walk's threading on a shared machine: OpenMP threads against side-by-side walks.

    python benchmarks/bench_threads.py [--grid 362] [--walks 4] [--steps 32]

A walk step is 69 short multiply-adds. This script walks ``--walks``
independent one-channel maps on a ``--grid``² grid in four ways, each in a
fresh process, alone and beside a second process that keeps one core busy:

- *OpenMP, default wait*: one walk after another, each operation spread over
  2 OpenMP threads, with libgomp's default wait (threads spin for a while
  before they sleep): what napari-irnet did at first;
- *OpenMP, passive wait*: the same with ``OMP_WAIT_POLICY=PASSIVE``;
- *side by side*: the walks in 2 Python threads of one torch thread each
  (:func:`napari_irnet.pipeline.random_walk.iter_walks`): how the instance
  walk's canvases run;
- *rows shared*: one walk after another, each one's rows split over 2
  threads that meet once per step: how one walk of a few maps runs (the
  semantic walk).

Prints seconds (wall clock) and processor seconds of the walking process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {
    "OpenMP, default wait": {"OMP_WAIT_POLICY": ""},
    "OpenMP, passive wait": {"OMP_WAIT_POLICY": "PASSIVE"},
    "side by side": {"OMP_WAIT_POLICY": "PASSIVE"},
    "rows shared": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def _child(mode: str, grid: int, walks: int, steps: int) -> None:
    import resource

    sys.path.insert(0, str(ROOT))
    import torch

    from napari_irnet.pipeline.random_walk import iter_transition, iter_walks, make_walker, transition_weights
    from napari_irnet.progress import run_steps

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    weights = transition_weights(torch.rand(grid, grid, generator=gen) * 0.5)
    maps = [torch.rand(1, grid, grid, generator=gen) for _ in range(walks)]
    t0 = time.perf_counter()
    walker = make_walker(weights)
    if mode == "side by side":
        run_steps(iter_walks([lambda x=x: walker(x, steps) for x in maps], steps, "walk", torch.device("cpu"), threads=2))
    elif mode == "rows shared":
        for x in maps:
            run_steps(iter_transition(x, weights, steps, method="stencil", threads=2))
    else:
        with torch.no_grad():
            for x in maps:  # one walk on this thread: OpenMP inside each operation
                walking = walker(x, steps)
                for _ in walking:
                    pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": usage.ru_utime + usage.ru_stime}))


def _busy() -> subprocess.Popen:
    code = "import torch\ntorch.set_num_threads(1)\na = torch.rand(64, 64)\nwhile True:\n    a = (a @ a).clamp_(0, 1) + 0.001\n"
    return subprocess.Popen([sys.executable, "-c", code])


def _run(mode: str, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", **MODES[mode])
    cmd = [sys.executable, __file__, "--child", mode, "--grid", str(args.grid), "--walks", str(args.walks), "--steps", str(args.steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=362)
    ap.add_argument("--walks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.grid, args.walks, args.steps)
        return
    print(f"{args.walks} walks of one map on a {args.grid}² grid, {args.steps} steps each; load average before {os.getloadavg()[0]:.2f}\n")
    print("| threading | alone: s (processor s) | beside a busy process: s (processor s) |")
    print("|---|---|---|")
    for mode in MODES:
        alone = _run(mode, args)
        busy = _busy()
        try:
            shared = _run(mode, args)
        finally:
            busy.kill()
        print(f"| {mode} | {alone['wall']:.2f} ({alone['cpu']:.1f}) | {shared['wall']:.2f} ({shared['cpu']:.1f}) |", flush=True)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
