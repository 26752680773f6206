"""Every command of the plugin's manifest names an importable object (its modules may move)."""

from __future__ import annotations

import importlib


def test_every_manifest_python_name_imports():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-irnet")
    names = [c.python_name for c in pm.contributions.commands]
    assert len(names) == 8
    for name in names:
        module, attr = name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
