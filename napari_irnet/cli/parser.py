"""Command line: ``napari-irnet train-cam | train-irn | predict | evaluate | finetune | import-reference | init | status | export``.

One module per command group registers its commands on the parser
(:mod:`~napari_irnet.cli.train`, :mod:`~napari_irnet.cli.predict`,
:mod:`~napari_irnet.cli.evaluate`, :mod:`~napari_irnet.cli.reference`,
:mod:`~napari_irnet.cli.project`, :mod:`~napari_irnet.cli.finetune`); the
options they share are in :mod:`~napari_irnet.cli.options`. :func:`main` runs
a command and turns the errors a user can fix into a message and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .evaluate import add_evaluate_command
from .finetune import add_finetune_command
from .options import option_text
from .predict import add_predict_command
from .project import add_project_commands
from .reference import add_import_reference_command
from .train import add_train_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="napari-irnet", description="Instance masks from image-level labels (IRNet).")
    sub = ap.add_subparsers(dest="command", required=True)
    add_train_commands(sub)
    add_predict_command(sub)
    add_evaluate_command(sub)
    add_import_reference_command(sub)
    add_project_commands(sub)  # init, status, export, and predict --project
    add_finetune_command(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    args = build_parser().parse_args(argv)
    from ..io.files import InputError, OutputError
    from ..models.torch_files import CheckpointError
    from ..params import ParamError
    from ..pipeline.inference import DeviceError, resolve_device
    from ..training.distributed import init_from_env, shutdown

    try:
        if hasattr(args, "device"):
            args.device = init_from_env(args.device)
            resolve_device(args.device)  # an unknown or absent device fails now, not after loading
        return args.func(args)
    except DeviceError as exc:
        print(f"error: --device {args.device}: {exc}", file=sys.stderr)
        return 2
    except ParamError as exc:
        print(f"error: {option_text(exc.name, exc.value)}: must be {exc.allowed}", file=sys.stderr)
        return 2
    except (InputError, OutputError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # any other file problem: name the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
