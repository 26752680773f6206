"""Recently used checkpoints, remembered between napari sessions.

Stored as a JSON list in ``recent_checkpoints.json`` under
``$NAPARI_IRNET_CONFIG_DIR`` when set, else the platform's user config folder
for napari-irnet. Missing or unreadable files just mean "no recent
checkpoints"; a failed write is ignored (it is a convenience).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io.files import OutputError, atomic_write

MAX_RECENT = 10
FILE_NAME = "recent_checkpoints.json"
#: the demo checkpoint shipped with the package (trained by ``make demo``)
BUNDLED_DEMO = Path(__file__).resolve().parent.parent / "data" / "demo_model.pt"


def config_dir() -> Path:
    env = os.environ.get("NAPARI_IRNET_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_config_dir("napari-irnet", appauthor=False))
    except ImportError:  # pragma: no cover
        return Path.home() / ".config" / "napari-irnet"


def recent_checkpoints() -> list[str]:
    """Recent checkpoint paths, newest first, only those that still exist."""
    path = config_dir() / FILE_NAME
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    return [str(p) for p in items if isinstance(p, str) and Path(p).is_file()][:MAX_RECENT]


def remember_checkpoint(path: str | os.PathLike[str]) -> list[str]:
    """Put ``path`` first in the recent list (the bundled demo is not stored); returns the list."""
    p = str(Path(path).expanduser().resolve())
    items = [x for x in recent_checkpoints() if x != p]
    if Path(p) != BUNDLED_DEMO:
        items.insert(0, p)
    items = items[:MAX_RECENT]
    try:
        atomic_write(config_dir() / FILE_NAME, lambda tmp: tmp.write_text(json.dumps(items, indent=1), encoding="utf-8"))
    except OutputError:
        pass
    return items


def checkpoint_choices() -> list[tuple[str, str]]:
    """(label, path) pairs for the checkpoint menu: recent files, then the bundled demo."""
    choices = [(_label(p), p) for p in recent_checkpoints()]
    if BUNDLED_DEMO.is_file():
        choices.append(("demo model (bundled)", str(BUNDLED_DEMO)))
    return choices


def _label(path: str) -> str:
    p = Path(path)
    parent = p.parent.name
    return f"{p.name}  ({parent})" if parent else p.name
