"""Recently used checkpoints are remembered between sessions (no GUI needed)."""

from __future__ import annotations

from napari_irnet._napari import recent as _recent


def test_recent_checkpoints_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_IRNET_CONFIG_DIR", str(tmp_path / "cfg"))
    assert _recent.recent_checkpoints() == []
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    _recent.remember_checkpoint(a)
    _recent.remember_checkpoint(b)
    _recent.remember_checkpoint(a)
    assert _recent.recent_checkpoints() == [str(a.resolve()), str(b.resolve())]
    b.unlink()  # files that are gone are not offered
    assert _recent.recent_checkpoints() == [str(a.resolve())]
    paths = [p for _, p in _recent.checkpoint_choices()]
    assert paths[0] == str(a.resolve()) and paths[-1] == str(_recent.BUNDLED_DEMO)
    _recent.remember_checkpoint(_recent.BUNDLED_DEMO)  # the bundled model is always offered, never stored
    assert _recent.recent_checkpoints() == [str(a.resolve())]
    (tmp_path / "cfg" / _recent.FILE_NAME).write_text("{broken")
    assert _recent.recent_checkpoints() == []
