"""Batch prediction over a project: throughput, memory over a long run, and resumption after a kill.

    python benchmarks/bench_batch.py [--n 1000] [--size 512] [--threads 2]
                                     [--checkpoint PATH] [--preset fast|paper]
                                     [--kill-after 150] [--rss-every 100]
                                     [--out bench_output/batch]

1. Writes ``--n`` synthetic ``--size``² images and their labels CSV (made from
   40 images of the project's generator, each in up to 32 distinct variants:
   the 8 flips/rotations times 4 cyclic shifts; kept for the next run).
2. ``napari-irnet init`` a project over them.
3. Starts ``napari-irnet predict --project`` in a child process and kills it
   (SIGKILL, no chance to clean up) once ``--kill-after`` images are done.
4. Checks the killed project: every image is ``new`` or ``proposed`` and
   every proposal's masks load.
5. Resumes in this process with the same API the command uses, measuring
   images/s and the resident memory (RSS) every ``--rss-every`` images.
6. Checks that nothing was lost or redone: all images proposed, the ones
   finished before the kill untouched, and a third run finds nothing to do.

The model: ``--checkpoint`` if given, else a random ``tiny`` model (its
networks cost what a trained one costs, but it finds few instances, so the
random walk, whose cost grows with the instance count, is cheaper than on a
trained model). ``--preset fast`` (default) predicts with one CAM scale,
64 walk steps and 100 centroid steps; ``paper`` with the paper's parameters
(4 scales with flips, 256 steps, 300 centroid steps); no CRF either way.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
REPO = Path(__file__).resolve().parent.parent


def rss_mib(pid: int | None = None) -> float:
    """Resident set size in MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def make_images(folder: Path, n: int, size: int) -> Path:
    """``n`` distinct synthetic images and ``labels.csv``; reused when already there."""
    import numpy as np
    from PIL import Image

    from napari_irnet.synthetic import make_dataset

    stamp = folder / "done.json"
    want = {"n": n, "size": size, "recipe": 1}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return folder
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    n_base = min(n, 40)
    base = make_dataset(n_base, shape=(size, size), seed=7, prefix="base")
    shifts = [(0, 0), (size // 3, size // 5), (size // 2, size // 7), (size // 5, size // 2)]
    rows = []
    for i in range(n):
        sample = base[i % n_base]
        variant = i // n_base
        image = np.rot90(sample.image, variant % 4)
        if (variant // 4) % 2:
            image = image[:, ::-1]
        dy, dx = shifts[(variant // 8) % len(shifts)]
        image = np.roll(image, (dy, dx), axis=(0, 1))
        name = f"img_{i:05d}.png"
        Image.fromarray(np.ascontiguousarray(image)).save(images / name)
        rows.append((name, ";".join(sample.labels)))
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "classes"])
        w.writerows(rows)
    stamp.write_text(json.dumps(want))
    return folder


def count_done(project_dir: Path) -> int:
    """Images with a stored state (state files appear only when a result is committed)."""
    items = project_dir / "items"
    return sum(1 for _ in items.glob("*/state.json")) if items.is_dir() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--preset", choices=("fast", "paper"), default="fast")
    ap.add_argument("--kill-after", type=int, default=150)
    ap.add_argument("--rss-every", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=REPO / "bench_output" / "batch")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import shutil

    import torch

    torch.set_num_threads(args.threads)
    from napari_irnet.models.checkpoint import load_checkpoint, new_model, save_checkpoint
    from napari_irnet.params import Params
    from napari_irnet.store.batch import ProjectPrediction
    from napari_irnet.store.create import create_project, open_project
    from napari_irnet.synthetic import CLASS_NAMES

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = make_images(args.out / f"images_{args.n}_{args.size}", args.n, args.size)
    t_data = time.perf_counter() - t0
    if args.checkpoint:
        ckpt, model_desc = args.checkpoint, f"{args.checkpoint.name} ({load_checkpoint(args.checkpoint).backbone}, trained)"
    else:
        torch.manual_seed(0)
        ckpt = save_checkpoint(new_model(list(CLASS_NAMES), "tiny"), args.out / "random_tiny.pt")
        model_desc = "tiny backbone, random weights"
    if args.preset == "fast":
        params = Params(cam_scales=(1.0,), walk_steps=64, centroid_steps=100, use_crf=False)
    else:
        params = Params(use_crf=False)

    project_dir = args.out / "project"
    shutil.rmtree(project_dir, ignore_errors=True)
    t0 = time.perf_counter()
    project = create_project(project_dir, data / "images", data / "labels.csv", params=params, checkpoint=ckpt)
    t_init = time.perf_counter() - t0

    # ---- run 1: the command line, killed part way
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "napari_irnet.cli", "predict", "--project", str(project_dir), "--device", args.device]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    child_rss = []
    first_done_at = None
    while True:
        done = count_done(project_dir)
        if done and first_done_at is None:
            first_done_at = (time.perf_counter() - t0, done)
        if child.poll() is not None:
            raise SystemExit(f"the predict run ended before the kill: {child.stderr.read().decode()[-2000:]}")
        child_rss.append(rss_mib(child.pid))
        if done >= args.kill_after:
            child.send_signal(signal.SIGKILL)
            child.wait()
            break
        time.sleep(0.2)
    t_killed = time.perf_counter() - t0
    done_before = count_done(project_dir)

    # ---- check the killed project
    project = open_project(project_dir)
    states = project.states()
    proposed_before = {n for n, st in states.items() if st.state == "proposed"}
    assert set(st.state for st in states.values()) <= {"new", "proposed"}
    for n in proposed_before:
        assert project.load_masks(n) is not None
    leftovers = 0
    for n in project.names:
        folder = project.item_dir(n)
        if folder.is_dir():
            result = states[n].result
            keep = {"state.json"} | ({f"result-{int(result['rev']):06d}"} if result else set())
            leftovers += sum(1 for p in folder.iterdir() if p.name not in keep)
    snapshot = {n: (project.item_dir(n) / "state.json").read_bytes() for n in proposed_before}

    # ---- run 2: resume in this process, measuring speed and memory
    run = ProjectPrediction(project, device=args.device)
    to_do = set(run.names)
    assert to_do.isdisjoint(proposed_before) and len(to_do) + len(proposed_before) == args.n
    rows = []
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu_start = sum(os.times()[:2])
    start = time.perf_counter()
    last_t, last_i = start, 0
    rss_start = rss_mib()
    instances = 0
    for i, event in enumerate(run, start=1):
        assert event.status == "predicted", event
        instances += event.instances
        if i % args.rss_every == 0 or i == len(run):
            now = time.perf_counter()
            rows.append((i, now - start, (i - last_i) / (now - last_t), rss_mib()))
            last_t, last_i = now, i
    t_resume = time.perf_counter() - start
    cpu_per_image = (sum(os.times()[:2]) - cpu_start) / max(len(to_do), 1)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # ---- check: nothing lost, nothing redone
    project = open_project(project_dir)
    final = project.states()
    all_proposed = all(st.state == "proposed" for st in final.values())
    untouched = all((project.item_dir(n) / "state.json").read_bytes() == snapshot[n] for n in proposed_before)
    third = len(ProjectPrediction(project, device=args.device))

    cpu = os.cpu_count()
    print(f"## Batch prediction: {args.n} synthetic {args.size}x{args.size} images\n")
    print(f"- model: {model_desc}; parameters: preset `{args.preset}` ({'1 CAM scale, 64 walk steps, 100 centroid steps' if args.preset == 'fast' else 'paper: 4 CAM scales + flips, 256 walk steps, 300 centroid steps'}), no CRF")
    print(f"- device: {args.device}, torch threads {args.threads} (machine has {cpu} cores; shared, so times vary)")
    print(f"- load average (1 min) at the start and end of run 2: {load_start:.1f}, {load_end:.1f}; "
          f"run 2 used {cpu_per_image:.2f} CPU-seconds per image (user + system, all threads)")
    print(f"- data: {t_data:.0f} s to make or reuse the images; `init` (reads and checks every image): {t_init:.1f} s\n")
    print("| run | images | seconds | images/s | notes |")
    print("|---|---:|---:|---:|---|")
    startup = f"first image stored after {first_done_at[0]:.1f} s (start-up and model load)" if first_done_at else ""
    print(f"| 1: `napari-irnet predict --project`, SIGKILLed | {done_before} | {t_killed:.1f} | {done_before / t_killed:.2f} | {startup}; child RSS max {max(child_rss):.0f} MiB |")
    print(f"| 2: resumed (same API, in process) | {len(to_do)} | {t_resume:.1f} | {len(to_do) / t_resume:.2f} | {instances / max(len(to_do), 1):.1f} instances per image on average |")
    print(f"| 3: run again | {third} | - | - | nothing left to do |\n")
    print(f"### Memory over the resumed run (RSS at start {rss_start:.0f} MiB)\n")
    print("| images done | seconds | images/s (last window) | RSS MiB |")
    print("|---:|---:|---:|---:|")
    for i, t, rate, rss in rows:
        print(f"| {i} | {t:.1f} | {rate:.2f} | {rss:.0f} |")
    print("\n### Resumption after the kill\n")
    print("| check | result |")
    print("|---|---|")
    print(f"| images stored before the kill | {len(proposed_before)} |")
    print("| killed project opens; every stored proposal loads | yes |")
    print(f"| unreferenced leftovers of the killed write | {leftovers} (removed by the next write of that image) |")
    print(f"| resumed run predicted exactly the others | {len(to_do)} = {args.n} - {len(proposed_before)} |")
    print(f"| states of images done before the kill unchanged | {'yes' if untouched else 'NO'} |")
    print(f"| all {args.n} images proposed at the end | {'yes' if all_proposed else 'NO'} |")
    print(f"| a third run finds nothing to do | {'yes' if third == 0 else f'NO ({third})'} |")
    return 0 if (all_proposed and untouched and third == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
