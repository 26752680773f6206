"""The IRNet panel's keys: bound on the viewer while the panel is docked, and on each ``instances`` layer.

Shift-M merge, Shift-S split, Shift-D delete, Shift-C set class, Shift-N
next free id (then paint), Shift-A accept, Shift-K clear picks, Ctrl-Z undo,
Ctrl-Shift-Z redo. A layer's own keymap shadows the viewer's, hence the
binding on the ``instances`` layer too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

SHORTCUTS = {
    "merge": "Shift-M",
    "split": "Shift-S",
    "delete": "Shift-D",
    "set_class": "Shift-C",
    "next_id": "Shift-N",
    "accept": "Shift-A",
    "clear_picks": "Shift-K",
    "undo": "Control-Z",
    "redo": "Control-Shift-Z",
}
#: how the shortcuts are written on the buttons
_KEY_TEXT = {"Shift-": "⇧", "Control-": "Ctrl+"}


def key_text(action: str) -> str:
    """The shortcut of ``action`` as a button shows it (``⇧M``, ``Ctrl+Z``)."""
    keys = SHORTCUTS[action]
    for long, short in _KEY_TEXT.items():
        keys = keys.replace(long, short)
    return keys


def bind_keys(provider, actions: Mapping[str, Callable[[], object]]) -> None:
    """Bind the shortcuts of ``actions`` (action name -> function) on ``provider`` (the viewer, or a layer)."""
    for action, func in actions.items():
        provider.bind_key(SHORTCUTS[action], lambda _obj, f=func: f(), overwrite=True)


def unbind_keys(provider) -> None:
    for key in SHORTCUTS.values():
        try:
            provider.bind_key(key, None, overwrite=True)
        except Exception:  # noqa: BLE001 - a viewer being torn down
            pass
