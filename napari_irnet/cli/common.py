"""What several commands share besides their options: a training set from a folder, checked and saved outputs."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["check_outputs", "load_dataset", "save_elsewhere", "save_result"]


def load_dataset(images_dir: Path, labels_file: Path, classes: list[str] | None = None, max_pixels: int | None = None):
    """Training items from an image folder and a labels file."""
    from ..io.images import DEFAULT_MAX_PIXELS, read_image
    from ..io.labels import read_labels
    from ..training.datasets import LabelledImage

    labels = read_labels(labels_file, images_dir, classes=classes)
    if labels.unlabelled:
        print(f"note: {len(labels.unlabelled)} image(s) in {images_dir} have no labels and are not used", file=sys.stderr)
    items = []
    for name, names in labels.image_labels.items():
        image = read_image(images_dir / name, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        items.append(LabelledImage(Path(name).stem, image, [labels.classes.index(c) for c in names]))
    return labels.classes, items


def save_result(model, out: Path, resume: Path | None = None) -> int:
    """Save the trained ``model`` to ``out`` from rank 0; returns the exit code.

    The resume file, if any, is deleted only once the model is safely written.
    When ``out`` cannot be written (disk full, folder gone or read-only), the
    model goes to a fallback file instead, the message says where, and the
    exit code is 2: the training is never lost to a failed write.
    """
    from ..io.files import OutputError
    from ..models.checkpoint import save_checkpoint
    from ..training.distributed import barrier, is_main

    code = 0
    if is_main():
        try:
            save_checkpoint(model, out)
            print(f"saved {out}")
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
            if save_elsewhere(model, out) is None and resume is not None and resume.is_file():
                print(f"the training state is kept in {resume}: run the same command again once {out} "
                      "can be written (it resumes at the end and only saves)", file=sys.stderr)  # fmt: skip
                resume = None
        if resume is not None:
            resume.unlink(missing_ok=True)
    barrier()
    return code


def save_elsewhere(model, out: Path) -> Path | None:
    """Save ``model`` to the user data folder's ``unsaved/``, else the temporary folder; say where."""
    import datetime
    import tempfile

    from ..io.files import OutputError
    from ..models.checkpoint import save_checkpoint
    from ..store.folder import user_data_dir

    name = f"{out.stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}{out.suffix or '.pt'}"
    for folder in (user_data_dir() / "unsaved", Path(tempfile.gettempdir())):
        try:
            path = save_checkpoint(model, folder / name)
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(f"the trained model was saved to {path} instead: move it where you want it", file=sys.stderr)
        return path
    print("error: the trained model could not be saved anywhere", file=sys.stderr)
    return None


def check_outputs(*paths: Path) -> None:
    """Fail now, not after training, when an output file cannot be written."""
    from ..io.files import check_writable

    for path in paths:
        check_writable(path)
