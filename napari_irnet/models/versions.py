"""Model versions beside a checkpoint, for roll-back: ``cells.pt`` -> ``cells.versions/v0001.pt``, ... with ``versions.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from ..io.files import atomic_path
from .checkpoint import Model, load_checkpoint, save_checkpoint
from .torch_files import CheckpointError

__all__ = [
    "VersionStore",
]


class VersionStore:
    """A folder of model versions with an index, for roll-back.

    Layout: ``versions.json`` (a list of records: ``version``, ``file``,
    ``created``, ``parent``, ``note``) and one checkpoint per version,
    ``v0001.pt``, ``v0002.pt``, ... Files are written atomically, the index
    last, so an interrupted save leaves the store as it was.
    """

    INDEX = "versions.json"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def versions(self) -> list[dict]:
        """Every version's record, oldest first."""
        path = self.folder / self.INDEX
        if not path.exists():
            return []
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable version index ({exc})") from exc
        if not isinstance(records, list):
            raise CheckpointError(f"{path}: the version index must be a JSON list")
        return records

    def latest(self) -> dict | None:
        records = self.versions()
        return records[-1] if records else None

    def save(self, model: Model, note: str = "", parent: int | None = None) -> dict:
        """Store ``model`` as the next version; returns its record."""
        records = self.versions()
        number = (records[-1]["version"] + 1) if records else 1
        record = {
            "version": number,
            "file": f"v{number:04d}.pt",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "parent": parent if parent is not None else (records[-1]["version"] if records else None),
            "note": note,
        }
        save_checkpoint(model, self.folder / record["file"])
        with atomic_path(self.folder / self.INDEX) as tmp:
            tmp.write_text(json.dumps(records + [record], indent=1))
        return record

    def path(self, version: int) -> Path:
        for record in self.versions():
            if record["version"] == version:
                return self.folder / record["file"]
        raise CheckpointError(f"{self.folder}: no version {version} (have {[r['version'] for r in self.versions()]})")

    def load(self, version: int | None = None, device: str = "cpu") -> Model:
        """Load one version (default: the latest)."""
        if version is None:
            latest = self.latest()
            if latest is None:
                raise CheckpointError(f"{self.folder}: no model versions stored yet")
            version = latest["version"]
        return load_checkpoint(self.path(version), device=device)
